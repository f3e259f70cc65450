"""The Minimize RPC: gs.minimize run on the server, streaming each step to the client.

The loop is gs.minimize's own code (gradserve.optimize.run) with the server's engine as its
backend, so its result is the in-process one. It runs in a thread of its own while the RPC's
handler relays what it puts on a queue: a MinimizeStep per entry of the history, a
MinimizeCallback where gs.minimize calls a callback (only when the client has one: it then
answers each, and `stop` stops the loop as a callback raising StopIteration does), and the
MinimizeResult last.

Limits, as for every call: the whole loop is one call in flight (--max-concurrent-rpcs); each
engine call of a step takes a compute slot and is checked against --max-request-memory and the
engine's tape budget (--max-tape-bytes); the stop check between ops ends the loop when the
client cancels (CANCELLED) or the deadline passes (DEADLINE_EXCEEDED), and so does the check
between steps. gradserve_minimize_loops_total counts the loops by how they ended."""

from __future__ import annotations

import logging
import queue
import threading
import time

import grpc
from gradserve.v1 import service_pb2 as pb

from gradserve.minimize_wire import data_map, fill_result, from_datum, from_map
from gradserve.protocol import MINIMIZE, fill_tensor, result_array

from . import metrics as m
from .errors import Failure, Stopped

log = logging.getLogger("gradserve.server")
_INVALID = grpc.StatusCode.INVALID_ARGUMENT
# scipy.optimize.minimize's keyword arguments that are data and have no field of their own
# (its others are functions, or are fields: bounds, constraints, tol).
_DATA_KWARGS = frozenset({"hess"})


class _EngineSteps:
    """The Engine's methods as gs.minimize calls them, each run as a step of the call: a
    compute slot, the stop check between ops, the memory bound and the tape budget."""

    def __init__(self, engine, call):
        self.engine = engine
        self.call = call
        self.tape_bytes = 0  # the largest tape of a step

    def _run(self, fn, graph, *args, **kwargs):
        result = self.call.run(fn, graph, *args, **kwargs)
        self.tape_bytes = max(self.tape_bytes, self.call.stats.tape_bytes)
        return result

    def evaluate(self, graph, *args):
        return self._run(self.engine.evaluate, graph, *args)

    def value_and_grad(self, graph, *args, argnums=0):
        return self._run(self.engine.value_and_grad, graph, *args, argnums=argnums)

    def hvp(self, graph, primals, tangents, argnums=None):
        return self._run(self.engine.hvp, graph, primals, tangents, argnums=argnums)

    def hessian(self, graph, *args, argnums=0):
        return self._run(self.engine.hessian, graph, *args, argnums=argnums)


def _kwargs(problem) -> dict:
    """gs.minimize's keyword arguments from the problem's fields."""
    from scipy.optimize import Bounds, LinearConstraint

    kwargs = {}
    for name, datum in problem.kwargs.items():
        if name not in _DATA_KWARGS:
            raise Failure(
                _INVALID,
                f"kwargs[{name!r}]: gs.minimize takes no keyword argument {name!r} that is "
                f"data (it takes {', '.join(sorted(_DATA_KWARGS))})",
                "TypeError",
                f"kwargs[{name!r}]",
            )
        kwargs[name] = from_datum(datum)
    if problem.HasField("lower") != problem.HasField("upper"):
        raise Failure(_INVALID, "bounds need both lower and upper", "ValueError", "bounds")
    if problem.HasField("lower"):
        kwargs["bounds"] = Bounds(result_array(problem.lower), result_array(problem.upper))
    if problem.HasField("tol"):
        kwargs["tol"] = problem.tol
    if problem.constraints:
        kwargs["constraints"] = [
            LinearConstraint(
                result_array(c.A), result_array(c.lb), result_array(c.ub), c.keep_feasible
            )
            for c in problem.constraints
        ]
    return kwargs


def _options(problem) -> dict:
    options = from_map(problem.options)
    options.pop("disp", None)  # SciPy would print on the server's stdout
    return options


class _Loop:
    """gs.minimize in a thread; what it reports, on a queue."""

    def __init__(self, servicer, call, requests, problem, graph, x0, args):
        self.servicer = servicer
        self.call = call
        self.requests = requests
        self.problem = problem
        self.graph = graph
        self.x0 = x0
        self.args = args
        self.out = queue.Queue()
        self.backend = _EngineSteps(servicer.engine, call)
        self.steps = 0

    def start(self):
        if self.problem.result_only and not self.problem.callback:
            self._run()  # nothing to stream before the result: no thread to hand over to
        else:
            threading.Thread(target=self._run, name="gradserve-minimize", daemon=True).start()

    def _run(self):
        from gradserve.optimize import prepare, run

        outcome, last = "error", None
        try:
            p = self.problem
            kwargs = _kwargs(p)
            if p.callback:
                kwargs["callback"] = self._callback
            x0, fixed = prepare(self.graph, self.x0, self.args, copy=False)
            res = run(
                self.graph,
                x0,
                fixed,
                p.method or "L-BFGS-B",
                self.backend,
                _options(p),
                False,
                on_step=self._step,
                **kwargs,
            )
            last = pb.MinimizeProgress()
            fill_result(last.result, res)
            outcome = "converged" if res.success else "stopped"
        except Stopped as exc:
            outcome, last = ("deadline" if exc.deadline else "cancelled"), exc
        except BaseException as exc:  # every failure goes back to the client
            last = exc
        finally:
            # counted before the client can see the end of the loop
            m.MINIMIZE_LOOPS.labels(outcome).inc()
            m.MINIMIZE_STEPS.inc(self.steps)
            self.out.put(last)

    def _step(self, step, loss, grad_norm, nfev, seconds):
        self.call()  # cancelled or past the deadline: stop here, between steps
        self.steps = step
        if self.problem.result_only:
            return
        msg = pb.MinimizeProgress()
        r = msg.record
        r.step, r.loss, r.grad_norm, r.nfev, r.time = step, loss, grad_norm, nfev, seconds
        self.out.put(msg)

    def _callback(self, intermediate_result):
        r = intermediate_result
        msg = pb.MinimizeProgress()
        c = msg.callback
        fill_tensor(c.x, r.x.reshape(-1))
        c.fun = float(r.fun)
        state = dict(r)
        del state["x"]
        jac = state.pop("jac", None)
        if jac is not None:
            fill_tensor(c.jac, jac.reshape(-1))
        data_map(c.state, state.items(), skip_non_data=True)
        self.out.put(msg)
        try:
            answer = next(self.requests, None)
        except grpc.RpcError:
            answer = None
        if answer is None:  # the client went away without answering
            self.call()
            raise Stopped("the client closed the stream")
        try:
            stop = pb.MinimizeRequest.FromString(answer).stop
        except Exception:
            raise Failure(
                _INVALID, "an answer is not a MinimizeRequest", "ValueError", "stop"
            ) from None
        return stop

    def messages(self):
        """What the loop reports until its result (a failure is raised)."""
        while True:
            try:
                item = self.out.get(timeout=0.5)
            except queue.Empty:
                continue  # a cancelled loop ends at its next stop check
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.HasField("result"):
                return


def handle(servicer, requests, context):
    """The Minimize handler: raw request bytes in, raw MinimizeProgress bytes out."""
    from .servicer import _Call, failed

    start = time.perf_counter()
    admission = servicer.admission
    admitted = admission.enter()
    code = "OK"
    loop = None
    try:
        if not admitted:
            raise admission.overloaded(MINIMIZE)
        first = next(requests, None)
        try:
            request = pb.MinimizeRequest.FromString(first or b"")
        except Exception as exc:
            raise Failure(
                _INVALID,
                f"the request is not a valid gradserve.v1.MinimizeRequest message ({exc})",
                "ValueError",
                "request",
            ) from None
        if not request.HasField("problem"):
            raise Failure(_INVALID, "the first MinimizeRequest carries no problem", "ValueError")
        problem = request.problem
        call = _Call(servicer, MINIMIZE, context)
        try:
            graph, (x0, args) = call.resolve(
                problem.graph, ("x0", [problem.x0]), ("args", problem.args)
            )
        finally:
            if call.pending:
                servicer.store_pending(call.pending)
        if x0[0] is None:
            raise Failure(_INVALID, "the problem has no x0", "ValueError", "x0")
        loop = _Loop(servicer, call, requests, problem, graph, x0[0], args)
        loop.start()
        for msg in loop.messages():
            yield msg.SerializeToString()
    except GeneratorExit:  # gRPC closed the stream: the client cancelled it or went away
        code = "CANCELLED"
        raise
    except Exception as exc:
        code, status = failed(MINIMIZE, exc, "loop", admitted, start, context)
        context.abort_with_status(status)
    finally:
        if admitted:
            admission.leave()
        series = m.series(MINIMIZE)
        series.duration.observe(time.perf_counter() - start)
        if code == "OK" and loop is not None:
            series.tape_bytes.observe(loop.backend.tape_bytes)
        (series.ok if code == "OK" else m.REQUESTS.labels(MINIMIZE, code)).inc()
