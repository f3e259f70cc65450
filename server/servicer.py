"""The Gradients service: decode a request, resolve digests, run the engine, encode the reply.

Handlers are registered with no (de)serializers, so they receive the raw request bytes and
decode them themselves: whatever the bytes, the reply is a status code from the documented set
(INVALID_ARGUMENT, RESOURCE_EXHAUSTED, NOT_FOUND, DEADLINE_EXCEEDED, CANCELLED), never an
exception escaping into grpc (which would answer UNKNOWN or INTERNAL)."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
from gradserve.engine import Engine, Graph
from gradserve.v1 import service_pb2 as pb

from gradserve.protocol import (
    GRAPH_RESOURCE,
    MINIMIZE,
    SERVICE,
    SERVICE_NAME,
    TENSOR_RESOURCE,
    from_tensor,
    proto_digest,
    split_tensor_data,
    tensor_field_parts,
    value_parts,
)

from . import metrics as m
from . import minimize
from .admission import Admission
from .cache import ByteLRU
from .errors import Failure, Stopped, failure_from_exception, to_status

log = logging.getLogger("gradserve.server")
_DIGEST = re.compile(r"[0-9a-f]{64}\Z")
_INVALID = grpc.StatusCode.INVALID_ARGUMENT
# Requests at least this big have their large tensors' data viewed where it arrived
# (split_tensor_data) instead of copied out of the parsed message.
LARGE_REQUEST_BYTES = 16384
_TENSOR_REF = pb.TensorRef.DESCRIPTOR


class _Call:
    """One request in flight: its stop check, timing and the engine's stats."""

    def __init__(self, servicer, method, context):
        self.servicer = servicer
        self.method = method
        self.cancelled = False
        self.deadline = None
        self.compute_seconds = 0.0
        self.stats = None
        self.held = 0  # tape bytes this call has added to the in-use gauge
        self.memory = 0  # the call's memory estimate (admission.request_memory), when bounded
        self.static_tape = 0  # the tape its plan holds; loop tapes hold the rest of `held`
        self.pending = []  # (digest future, array) of tensors sent with `remember`
        self.shared = None  # the request's shared memory (server.shm.CallMemory), if any
        self.views = {}  # (field name, index) -> the data of a large inline tensor
        self.request_bytes = None  # the size of the request as received
        try:
            remaining = context.time_remaining()
        except Exception:
            remaining = None
        if remaining is not None and remaining < 1e8:
            self.deadline = time.monotonic() + remaining
        if not context.add_callback(self._terminated):
            self.cancelled = True

    def _terminated(self):
        # Called when the RPC ends: after our reply normally, earlier when the client cancels
        # or the deadline passes (or the server stops after its grace period).
        self.cancelled = True

    def __call__(self):
        """The engine's should_stop: called between ops. Also keeps gradserve_tape_bytes_in_use
        up to date with what this call's tape holds."""
        held = self.servicer.engine.tape_bytes_in_use
        if held != self.held:
            m.TAPE_IN_USE.inc(held - self.held)
            self.held = held
            if self.memory:
                self.servicer.admission.check_running(self.memory, held - self.static_tape)
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise Stopped("the deadline passed", deadline=True)
        if self.cancelled:
            # grpc ends the RPC (and calls _terminated) both when the client cancels and when
            # the client's deadline passes: a call ended at (about) its deadline is a
            # DEADLINE_EXCEEDED, not a CANCELLED.
            if self.deadline_passed():
                raise Stopped("the deadline passed", deadline=True)
            raise Stopped("the call was cancelled")

    def deadline_passed(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline - 0.1

    # -- resolving digests --------------------------------------------------------------------

    def resolve(self, graph_ref, *fields):
        """The graph and, for each (name, repeated TensorRef) field, its arrays (None for an
        empty ref). Unknown digests are collected and reported together as NOT_FOUND."""
        views = self.views
        self.servicer.admission.check_declared(
            fields, self.servicer.cache, views, self.request_bytes
        )
        missing = []
        graph = self.servicer.graph(graph_ref, missing)
        arrays = [
            [
                self.servicer.tensor(
                    ref, f"{name}[{i}]", missing, self.pending, views.get((name, i)), self.shared
                )
                for i, ref in enumerate(refs)
            ]
            for name, refs in fields
        ]
        if missing:
            raise Failure(
                grpc.StatusCode.NOT_FOUND,
                f"unknown digest(s): {', '.join(d[:12] + '...' for _, d in missing)}; "
                "send the body",
                "NotFound",
                missing=missing,
            )
        return graph, arrays

    # -- running ------------------------------------------------------------------------------

    def run(self, fn, graph, *args, **kwargs):
        servicer = self.servicer
        slots = servicer.slots
        self.memory, self.static_tape = servicer.admission.check_call(fn.__name__, graph, kwargs)
        if not slots.acquire(blocking=False):
            with servicer.admission.waiting():
                while not slots.acquire(timeout=0.05):  # queued: honour deadline/cancellation
                    self()
        start = time.perf_counter()
        try:
            result = fn(graph, *args, should_stop=self, **kwargs)
            self.stats = servicer.engine.last_stats
        finally:
            self.compute_seconds = time.perf_counter() - start
            servicer.admission.computed(self.compute_seconds)
            if self.held:
                m.TAPE_IN_USE.dec(self.held)
                self.held = 0
            slots.release()
        return result

    def fill_stats(self, msg: pb.CallStats):
        s = self.stats
        msg.SetInParent()
        msg.tape_bytes = s.tape_bytes
        msg.tape_entries = s.tape_entries
        msg.peak_bytes = s.peak_bytes
        msg.recomputed_ops = s.recomputed_ops
        msg.compute_seconds = self.compute_seconds


class _Reply:
    """A reply message and its array fields, encoded last (once the stats are in): the
    arrays are hand-encoded after the message, one copy of each array's bytes."""

    def __init__(self, msg, **fields):
        self.msg = msg
        self.fields = fields  # name -> ("value" | "tensor" | "tensors", result)

    def to_bytes(self) -> bytes:
        msg = self.msg
        numbers = msg.DESCRIPTOR.fields_by_name
        parts = [msg.SerializeToString()]
        for name, (kind, obj) in self.fields.items():
            number = numbers[name].number
            if kind == "value":
                parts += value_parts(number, obj)
            elif kind == "tensor":
                parts += tensor_field_parts(number, obj)
            else:
                for t in obj:
                    parts += tensor_field_parts(number, t)
        return b"".join(parts)


def _argnums(req, absent=0):
    if not req.HasField("argnums"):
        return absent
    indices = tuple(req.argnums.indices)
    if req.argnums.is_tuple:
        return indices
    if len(indices) != 1:
        raise Failure(
            _INVALID,
            f"argnums is an int but carries {len(indices)} indices",
            "ValueError",
            "argnums",
        )
    return indices[0]


def failed(method: str, exc: Exception, what: str, admitted: bool, start: float, context):
    """A failed call's status code name and its status (for `context.abort_with_status`),
    logged (redacted). `what` names what a cancellation or deadline stopped."""
    if isinstance(exc, Stopped):
        failure = Failure(
            grpc.StatusCode.DEADLINE_EXCEEDED if exc.deadline else grpc.StatusCode.CANCELLED,
            f"{method}: {exc}; the {what} was stopped",
            "DeadlineExceeded" if exc.deadline else "Cancelled",
        )
    else:
        failure = failure_from_exception(exc)
    code = failure.code.name
    level = logging.INFO if code == "NOT_FOUND" else logging.WARNING
    if not admitted:
        level = logging.DEBUG  # a flood of them: gradserve_refused_requests_total
    if code == "INTERNAL":
        # the traceback may quote values: at DEBUG only (the line below is redacted)
        log.debug("%s INTERNAL: unexpected server error", method, exc_info=True)
    log.log(
        level,
        "%s %s peer=%s %.1fms: %s: %s",
        method,
        code,
        context.peer(),
        (time.perf_counter() - start) * 1e3,
        failure.reason or code,
        redact(failure.message),
    )
    return code, to_status(failure)


class Servicer:
    def __init__(
        self,
        engine: Engine,
        cache_bytes: int,
        workers: int,
        max_concurrent_rpcs: int | None = None,
        max_request_memory: int | None = None,
        shared_memory=None,
    ):
        self.engine = engine
        self.shared_memory = shared_memory  # server.shm.SharedMemoryRegistry, or None
        self.limits = engine.limits
        self.cache = ByteLRU(cache_bytes, on_change=m.cache_changed)
        self.slots = threading.BoundedSemaphore(workers)
        self.hasher = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gradserve-hash")
        self.admission = Admission(engine, workers, max_concurrent_rpcs, max_request_memory)
        m.initialise()
        m.count_inflight(self.admission)

    @property
    def inflight(self) -> int:
        """Gradients calls being handled (for draining)."""
        return self.admission.inflight

    # -- the cache ----------------------------------------------------------------------------

    def _lookup(self, kind, digest, resource, missing):
        if not _DIGEST.match(digest):
            raise Failure(
                _INVALID,
                f"{digest[:80]!r} is not a lowercase hex sha256 digest",
                "GraphError" if kind == "g" else "ValueError",
                "graph.digest" if kind == "g" else "tensor digest",
            )
        value = self.cache.get(kind + digest)
        if value is None:
            m.CACHE_MISSES.inc()
            missing.append((resource, digest))
        else:
            m.CACHE_HITS.inc()
        return value

    def graph(self, ref, missing):
        kind = ref.WhichOneof("ref")
        if kind == "digest":
            return self._lookup("g", ref.digest, GRAPH_RESOURCE, missing)
        if kind != "body":
            raise Failure(
                _INVALID,
                "graph: the request names no graph (neither body nor digest)",
                "GraphError",
                "graph",
            )
        body = ref.body
        key = "g" + hashlib.sha256(body).hexdigest()
        graph = self.cache.get(key)
        if graph is None:
            graph = Graph.from_bytes(body, self.limits)
            size = len(body) + sum(c.nbytes for c in graph.constants.values())
            self.cache.put(key, graph, size)
        return graph

    def tensor(self, ref, where, missing, pending=None, data=None, shared=None):
        """`data`: the tensor's bytes when held apart from the message (split_tensor_data);
        `shared`: the request's shared memory (server.shm.CallMemory), if any."""
        kind = ref.WhichOneof("ref")
        if kind == "digest":
            return self._lookup("t", ref.digest, TENSOR_RESOURCE, missing)
        if kind == "shared_memory":
            if shared is None:
                raise Failure(
                    _INVALID,
                    "a tensor in shared memory needs the request's shared_memory.lease",
                    "ValueError",
                    f"{where}.shared_memory",
                )
            return shared.array(ref.shared_memory, where, self.limits)
        if kind != "tensor":
            return None
        array = from_tensor(ref.tensor, self.limits, where, data)
        if ref.remember and pending is not None:
            # Hash it while the engine computes (sha256 releases the GIL); stored on probation
            # when the call ends (see ByteLRU).
            pending.append((self.hasher.submit(proto_digest, ref.tensor, data), array))
        return array

    def store_pending(self, pending):
        for future, array in pending:
            try:
                digest = future.result()
            except Exception:
                continue
            if isinstance(array.base, bytes) and len(array.base) > array.nbytes:
                # A view into the whole request (split_tensor_data): the cache keeps a copy of
                # its own bytes rather than pin the request's other tensors uncharged.
                array = array.copy()
                array.flags.writeable = False
            self.cache.put("t" + digest, array, array.nbytes, probation=True)

    # -- the methods --------------------------------------------------------------------------

    def evaluate(self, req, call):
        graph, (args,) = call.resolve(req.graph, ("args", req.args))
        out = call.run(self.engine.evaluate, graph, *args)
        return _Reply(pb.EvaluateResponse(), outputs=("value", out))

    def value_and_grad(self, req, call):
        graph, (args,) = call.resolve(req.graph, ("args", req.args))
        argnums = _argnums(req)
        value, grad = call.run(self.engine.value_and_grad, graph, *args, argnums=argnums)
        return _Reply(pb.ValueAndGradResponse(), value=("tensor", value), grad=("value", grad))

    def vjp(self, req, call):
        graph, (primals, cts) = call.resolve(
            req.graph, ("primals", req.primals), ("cotangents", req.cotangents)
        )
        argnums = _argnums(req, None)
        out, input_cts = call.run(
            self.engine.vjp, graph, tuple(primals), tuple(cts), argnums=argnums
        )
        return _Reply(
            pb.VjpResponse(), outputs=("value", out), input_cotangents=("tensors", input_cts)
        )

    def jvp(self, req, call):
        graph, (primals, tangents) = call.resolve(
            req.graph, ("primals", req.primals), ("tangents", req.tangents)
        )
        argnums = _argnums(req, None)
        out, out_tangents = call.run(
            self.engine.jvp, graph, tuple(primals), tuple(tangents), argnums=argnums
        )
        return _Reply(
            pb.JvpResponse(), outputs=("value", out), output_tangents=("value", out_tangents)
        )

    def jacobian(self, req, call):
        graph, (args,) = call.resolve(req.graph, ("args", req.args))
        argnums = _argnums(req)
        mode = req.mode if req.HasField("mode") else "auto"
        jac = call.run(self.engine.jacobian, graph, *args, argnums=argnums, mode=mode)
        return _Reply(pb.JacobianResponse(), jacobian=("value", jac))

    def hvp(self, req, call):
        graph, (primals, tangents) = call.resolve(
            req.graph, ("primals", req.primals), ("tangents", req.tangents)
        )
        argnums = _argnums(req, None)
        out = call.run(self.engine.hvp, graph, tuple(primals), tuple(tangents), argnums=argnums)
        return _Reply(pb.HvpResponse(), tangents=("tensors", out))

    def hessian(self, req, call):
        graph, (args,) = call.resolve(req.graph, ("args", req.args))
        argnums = _argnums(req)
        hess = call.run(self.engine.hessian, graph, *args, argnums=argnums)
        return _Reply(pb.HessianResponse(), hessian=("value", hess))

    def check_grad(self, req, call):
        graph, (args,) = call.resolve(req.graph, ("args", req.args))
        method = req.method if req.HasField("method") else "central"
        report = call.run(self.engine.check_grad, graph, *args, method=method)
        reply = pb.CheckGradResponse(
            method=report.method,
            max_abs_error=report.max_abs_error,
            max_rel_error=report.max_rel_error,
            ok=bool(report.ok),
        )
        return _Reply(
            reply, analytic=("tensors", report.analytic), numeric=("tensors", report.numeric)
        )

    def shared_memory_call(self, msg, should_stop):
        if self.shared_memory is None:
            raise Failure(
                _INVALID, "this server has no shared memory", "ValueError", "shared_memory"
            )
        return self.shared_memory.begin(msg, should_stop)

    # -- plumbing -----------------------------------------------------------------------------

    def _handle(self, method, request_cls, compute, request_bytes, context, ref_fields=None):
        """`ref_fields`: {number: name} of the request's TensorRef fields."""
        start = time.perf_counter()
        admitted = self.admission.enter()
        code = "OK"
        try:
            if not admitted:
                raise self.admission.overloaded(method)
            views = {}
            size = len(request_bytes)
            if ref_fields and size >= LARGE_REQUEST_BYTES:
                request_bytes, views = split_tensor_data(
                    request_bytes, ref_fields, LARGE_REQUEST_BYTES
                )
            try:
                request = request_cls.FromString(request_bytes)
            except Exception as exc:
                raise Failure(
                    _INVALID,
                    f"the request is not a valid gradserve.v1."
                    f"{request_cls.__name__} message ({exc})",
                    "ValueError",
                    "request",
                ) from None
            call = _Call(self, method, context)
            call.views = views
            call.request_bytes = size
            if request.HasField("shared_memory"):
                call.shared = self.shared_memory_call(request.shared_memory, call)
            try:
                reply = compute(request, call)
                if call.shared is not None:
                    call.shared.place(reply)
            finally:
                if call.pending:
                    self.store_pending(call.pending)
                if call.shared is not None:
                    call.shared.release()
            call.stats = call.stats or self.engine.last_stats
            call.fill_stats(reply.msg.stats)
            series = m.series(method)
            series.tape_bytes.observe(call.stats.tape_bytes)
            series.tape_entries.observe(call.stats.tape_entries)
            if call.stats.recomputed_ops:
                series.recomputed_ops.inc(call.stats.recomputed_ops)
            return reply.to_bytes()
        except Exception as exc:
            code, status = failed(method, exc, "computation", admitted, start, context)
            context.abort_with_status(status)
        finally:
            if admitted:
                self.admission.leave()
            series = m.series(method)
            series.duration.observe(time.perf_counter() - start)
            (series.ok if code == "OK" else m.REQUESTS.labels(method, code)).inc()

    def handler(self) -> grpc.GenericRpcHandler:
        """Every method of the service (from its descriptor), each handled by the method of
        this class of the same name in snake case (ValueAndGrad -> value_and_grad)."""

        def make(method):
            if method.name == MINIMIZE:  # streams: gradserve.server.minimize
                return grpc.stream_stream_rpc_method_handler(
                    lambda requests, context: minimize.handle(self, requests, context)
                )
            request_cls = getattr(pb, method.input_type.name)
            compute = getattr(self, _snake_case(method.name))
            ref_fields = {
                f.number: f.name for f in method.input_type.fields if f.message_type is _TENSOR_REF
            }

            def handle(request_bytes, context):
                return self._handle(
                    method.name, request_cls, compute, request_bytes, context, ref_fields
                )

            return grpc.unary_unary_rpc_method_handler(handle)

        return grpc.method_handlers_generic_handler(
            SERVICE_NAME, {method.name: make(method) for method in SERVICE.methods}
        )


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|b'(?:[^'\\]|\\.)*'")


def redact(message: str, limit: int = 300) -> str:
    """A failure's message for the log: quoted text (names, values, bytes from the request:
    node and input names, op names, digests, reprs) elided, and at most `limit` characters;
    the client gets the whole message. No tensor content or graph body reaches the log."""
    text = _QUOTED.sub("'…'", message)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= limit else text[:limit] + " ..."


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
