"""gs.minimize with a gs.Client backend: the loop runs on the server (the Minimize RPC).

The problem goes in one message (the graph and large fixed inputs by digest once the server
has them, as other calls send them); the server streams a MinimizeStep per step, shown on the
progress bar here, and the result. With a callback, the server also streams x and the solver's
state where gs.minimize calls it and waits for this side's answer, so the callback sees what it
would see in-process and stopping (True or StopIteration) ends the loop at the same step.
Leaving early (an exception in the callback, KeyboardInterrupt) cancels the call, which stops
the loop on the server."""

from __future__ import annotations

import queue
import time

import grpc
import numpy as np
from gradserve.v1 import service_pb2 as pb

from gradserve.minimize_wire import NotData, data_map, from_map, result_fields
from gradserve.optimize import (
    _bounds,
    _call_user,
    _progress_bar,
    _wants_result,
    show_step,
    user_form,
)
from gradserve.protocol import MINIMIZE, fill_tensor, method_path, result_array

from . import client as _client

_LOCAL = "pass server_side=False to run the loop here, with one call per evaluation"


def _not_data(what: str, exc) -> TypeError:
    return TypeError(
        f"gs.minimize(server_side=True) sends the loop to the server, and {what} is not data "
        f"({exc}): {_LOCAL}"
    )


def _problem(x0, method, options, kwargs, has_callback) -> pb.MinimizeProblem:
    """The MinimizeProblem without its graph and fixed inputs."""
    from scipy.optimize import LinearConstraint

    if not isinstance(method, str):
        raise _not_data("a callable method", "a function")
    if "jac" in kwargs:
        raise TypeError("gs.minimize computes the gradient with the backend; do not pass jac")
    kwargs = dict(kwargs)
    problem = pb.MinimizeProblem(method=method, callback=has_callback)
    fill_tensor(problem.x0.tensor, x0)
    for name, value in (options or {}).items():
        try:
            data_map(problem.options, [(name, value)])
        except NotData as exc:
            raise _not_data(f"option {name!r}", exc) from None
    bounds = kwargs.pop("bounds", None)
    if bounds is not None:
        lower, upper = _bounds(bounds, x0.size)
        fill_tensor(problem.lower, np.array(lower, dtype=np.float64))
        fill_tensor(problem.upper, np.array(upper, dtype=np.float64))
    tol = kwargs.pop("tol", None)
    if tol is not None:
        problem.tol = float(tol)
    constraints = kwargs.pop("constraints", None)
    if constraints is not None:
        if not isinstance(constraints, (list, tuple)):
            constraints = [constraints]
        for c in constraints:
            if not isinstance(c, LinearConstraint):
                raise _not_data(
                    f"a constraint of type {type(c).__name__}",
                    "only a LinearConstraint is; a function constraint is code",
                )
            msg = problem.constraints.add()
            a = np.atleast_2d(np.asarray(c.A, dtype=np.float64))
            fill_tensor(msg.A, a)
            fill_tensor(msg.lb, np.broadcast_to(np.asarray(c.lb, np.float64), a.shape[:1]))
            fill_tensor(msg.ub, np.broadcast_to(np.asarray(c.ub, np.float64), a.shape[:1]))
            msg.keep_feasible = bool(np.any(c.keep_feasible))
    for name, value in kwargs.items():
        try:
            data_map(problem.kwargs, [(name, value)])
        except NotData as exc:
            raise _not_data(f"the keyword argument {name!r}", exc) from None
    return problem


def minimize_on_server(client, graph, x0, fixed, method, options, progress, layout, kwargs):
    """gs.minimize's result, computed by the server `client` talks to."""
    kwargs = dict(kwargs)
    callback = kwargs.pop("callback", None)
    problem = _problem(x0, method, options, kwargs, callback is not None)
    wants_result = callback is not None and _wants_result(callback)
    shape = graph.inputs[0].spec.shape

    def user(flat):
        return user_form(flat, shape, layout)

    timeout = client.timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    digest = graph.digest
    send_body = not client._by_digest(("g", digest))
    tensors = _client._Tensors(client, digest, "args", list(fixed))
    force_inline: set = set()
    stub = client._channel.stream_stream(method_path(MINIMIZE))
    unary = client._channel.unary_stream(method_path(MINIMIZE))
    maxiter = (options or {}).get("maxiter")
    bar = _progress_bar(progress, maxiter, method)
    # No bar (progress=False, or stderr is not a terminal) and no callback: nothing here shows
    # the steps, so none are sent (the result's history has them).
    problem.result_only = bar is None and callback is None
    delay = client.backoff
    try:
        retries, resent = client.retries, False
        while True:
            if send_body:
                problem.graph.body = graph.to_bytes()
            else:
                problem.graph.digest = digest
            del problem.args[:]
            tensors.fill(problem.args, force_inline)
            first = pb.MinimizeRequest(problem=problem).SerializeToString()
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            stream = _Stream(stub, unary, first, callback is not None, remaining, client._metadata)
            try:
                result = stream.run(bar, callback, wants_result, user)
            except grpc.RpcError as err:
                if stream.received:
                    raise _client._exception(err, MINIMIZE, timeout) from None
                code = err.code()
                missing = _client._missing(err) if code == grpc.StatusCode.NOT_FOUND else None
                if missing and not resent:  # send the bodies, once
                    resent = True
                    send_body = client._forget_missing(missing, force_inline) or send_body
                    continue
                hint = _client._retry_delay(err) if code == _client._EXHAUSTED else None
                if retries == 0 or (code != grpc.StatusCode.UNAVAILABLE and hint is None):
                    raise _client._exception(err, MINIMIZE, timeout) from None
                retries -= 1
                pause = client._pause(delay, hint)
                if deadline is not None and time.monotonic() + pause >= deadline:
                    raise _client._exception(err, MINIMIZE, timeout) from None
                time.sleep(pause)
                delay *= 2
                continue
            break
    finally:
        if bar is not None:
            bar.close()
    with client._lock:
        client._known_graphs.add(digest)
    return _result(result, user, graph.inputs[0].spec.size)


class _Stream:
    """One Minimize call: the first request, then (with a callback) one answer per
    MinimizeCallback."""

    def __init__(self, stub, unary, first, answering, timeout, metadata):
        self.answers: queue.Queue = queue.Queue()
        self.received = 0
        if answering:
            self.call = stub(self._requests(first), timeout=timeout, metadata=metadata)
        else:  # one request: as a unary-stream call, without a thread to send requests
            self.call = unary(first, timeout=timeout, metadata=metadata)

    def _requests(self, first):
        yield first
        while (answer := self.answers.get()) is not None:
            yield answer

    def run(self, bar, callback, wants_result, user):
        """The MinimizeResult, after showing each step and calling `callback` where the loop
        does; the call is cancelled if this ends any other way."""
        result = None
        try:
            for data in self.call:
                self.received += 1
                msg = pb.MinimizeProgress.FromString(data)
                kind = msg.WhichOneof("kind")
                if kind == "record":
                    r = msg.record
                    show_step(bar, r.step, r.loss, r.grad_norm)
                elif kind == "callback":
                    self.answers.put(self._call_back(msg.callback, callback, wants_result, user))
                elif kind == "result":
                    result = msg.result
            if result is None:
                raise _client.ServiceError(f"{MINIMIZE}: the stream ended without a result")
            return result
        finally:
            self.answers.put(None)
            if result is None:
                self.call.cancel()

    @staticmethod
    def _call_back(c, callback, wants_result, user) -> bytes:
        g = user(result_array(c.jac)) if c.HasField("jac") else None
        try:
            _call_user(callback, wants_result, user(result_array(c.x)), c.fun, g, from_map(c.state))
            stop = False
        except StopIteration:
            stop = True
        return pb.MinimizeRequest(stop=stop).SerializeToString()


def _result(msg, user, size):
    from scipy.optimize import OptimizeResult

    fields = result_fields(msg)
    res = OptimizeResult(fields)
    if res.x.size == size:
        res.x = user(res.x)
    if "jac" in res and res.jac.size == size:
        res.jac = user(res.jac)
    return res
