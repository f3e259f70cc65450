"""Admission control: how many Gradients calls the server holds at once (--max-concurrent-rpcs)
and how much memory one call may use (--max-request-memory).

Overload. A call that finds `max_concurrent_rpcs` Gradients calls already in the server
(computing, or queued for one of the `workers` compute slots) is refused at once with
RESOURCE_EXHAUSTED, an ErrorInfo of reason "Overloaded" and a RetryInfo whose retry_delay is
the time the calls ahead of it should take (their mean compute time so far, per compute slot),
instead of joining an unbounded queue. Health checks and reflection are not counted.

Memory. A call's memory is estimated before anything is allocated for it, in two steps:
- from the request's declared tensors (shape x itemsize of the inline ones, the cached size of
  those named by digest) before any is decoded: where "arguments";
- from the plans the engine will run (Engine.plan_stats: every array alive at once in the
  schedule, arguments included) plus the results (from the graph's output specs and the
  method: a Jacobian block is out.size * in.size elements, a Hessian's in.size ** 2) held and
  encoded in the reply: where "request memory".
Loop tapes grow while the call runs: the call is stopped when the estimate plus what its loop
tapes hold passes the bound. Each refusal is RESOURCE_EXHAUSTED with an ErrorInfo of reason
"LimitError" (the client raises gs.LimitError) whose metadata names the limit and the bytes,
and a BadRequest naming the field."""

from __future__ import annotations

import contextlib
import threading
import weakref

import grpc
from gradserve.engine import LimitError

from . import metrics as m
from .errors import Failure

OVERLOADED = "overloaded"
REQUEST_MEMORY = "request_memory"
REASONS = (OVERLOADED, REQUEST_MEMORY)  # the label values of gradserve_refused_requests_total

MIN_RETRY_DELAY = 0.05  # seconds
MAX_RETRY_DELAY = 30.0


def default_max_concurrent(workers: int) -> int:
    """4 x workers: each compute slot busy, and three calls waiting for each."""
    return 4 * workers


def default_request_memory() -> int | None:
    """Half the memory this process may use: the cgroup's limit (v2 memory.max, v1
    memory.limit_in_bytes) when there is one, else the machine's; None when neither is known.
    A call that needs more would put every other call at risk of the OOM killer."""
    known = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    known.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:  # "max", or v1's "no limit" (~2^63)
            known.append(int(text))
    return min(known) // 2 if known else None


def _itemsize(dtype: str) -> int:
    return {"complex128": 16, "float64": 8, "int64": 8, "float32": 4, "int32": 4, "bool": 1}.get(
        dtype, 8
    )


def _nbytes(spec) -> int:
    return spec.size * _itemsize(spec.dtype)


def _block_bytes(out_spec, in_spec) -> int:
    return out_spec.size * in_spec.size * max(_itemsize(out_spec.dtype), _itemsize(in_spec.dtype))


def _nums(graph, argnums) -> tuple:
    n = len(graph.inputs)
    if argnums is None:  # vjp, jvp, hvp: every input
        return tuple(range(n))
    indices = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    return tuple(i % n for i in indices if -n <= i < n)


def result_bytes(method: str, graph, argnums=0) -> int:
    """Bytes of the results of `method` (an Engine method's name) on `graph`, from its specs;
    `argnums` as the method takes it (None: its default, 0 or, for vjp and hvp, every input)."""
    inputs = [p.spec for p in graph.inputs]
    outputs = [p.spec for p in graph.outputs]
    if method == "evaluate":
        return sum(_nbytes(s) for s in outputs)
    if method == "jvp":
        return 2 * sum(_nbytes(s) for s in outputs)
    if method == "vjp":  # argnums None: one cotangent per input, else per selected input
        return sum(_nbytes(s) for s in outputs) + sum(
            _nbytes(inputs[i]) for i in _nums(graph, argnums)
        )
    if method == "hvp":
        return sum(_nbytes(inputs[i]) for i in _nums(graph, argnums))
    if method == "check_grad":  # the analytic and the numerical gradient
        return 2 * sum(_nbytes(s) for s in inputs if s.dtype in ("float64", "float32"))
    nums = _nums(graph, 0 if argnums is None else argnums)
    if method in ("value_and_grad", "grad"):
        return sum(_nbytes(s) for s in outputs) + sum(_nbytes(inputs[i]) for i in nums)
    if method == "jacobian":
        return sum(_block_bytes(o, inputs[i]) for o in outputs for i in nums)
    if method == "hessian":
        return sum(_block_bytes(inputs[i], inputs[j]) for i in nums for j in nums)
    return 0


def request_memory(engine, method: str, graph, argnums=None, mode="auto", check_method="central"):
    """(total bytes, {part: bytes}, Engine.plan_stats) a call of `method` on `graph` is estimated to allocate:
    the working memory of its plans (Engine.plan_stats().peak_bytes: every array alive at once,
    arguments and outputs included) and its results again (held while the reply is encoded; for
    the passes of a Jacobian or Hessian, the blocks of the passes before as well)."""
    stats = engine.plan_stats(graph, method, argnums=argnums, mode=mode, check_method=check_method)
    results = result_bytes(method, graph, argnums)
    passes = 2 if method in ("jacobian", "hessian", "check_grad") else 1
    parts = {"working": stats.peak_bytes, "results": passes * results}
    return sum(parts.values()), parts, stats


class Admission:
    """The calls in the server, the compute-time average behind the retry hint, and the
    memory bound. Shared by every call of one Servicer."""

    def __init__(self, engine, workers: int, max_concurrent=None, max_request_memory=None):
        self.engine = engine
        self.workers = max(1, int(workers))
        self.max_concurrent = None if not max_concurrent else int(max_concurrent)
        self.max_request_memory = None if not max_request_memory else int(max_request_memory)
        self.inflight = 0  # Gradients calls in the server (admitted, not yet answered)
        self.queued = 0  # of those, waiting for a compute slot
        self._mean_seconds = 0.1  # moving average of compute time per call
        self._lock = threading.Lock()
        # (id(graph), method, options) -> (weakref to the graph, estimate, plan tape): the
        # estimate is fixed by the graph and the options, and building it costs more than a
        # tiny call's compute
        self._estimates: dict = {}
        for reason in REASONS:
            m.REFUSED.labels(reason)

    # -- overload -----------------------------------------------------------------------------

    def enter(self) -> bool:
        """Count a new call in; False (not counted) when the server already holds its limit."""
        with self._lock:
            if self.max_concurrent is not None and self.inflight >= self.max_concurrent:
                return False
            self.inflight += 1
            return True

    def leave(self):
        with self._lock:
            self.inflight -= 1

    @contextlib.contextmanager
    def waiting(self):
        """Around a call's wait for a compute slot (gradserve_queue_depth)."""
        with self._lock:
            self.queued += 1
        m.QUEUE_DEPTH.inc()
        try:
            yield
        finally:
            with self._lock:
                self.queued -= 1
            m.QUEUE_DEPTH.dec()

    def computed(self, seconds: float):
        """One call's compute time, for the retry hint (exponential moving average)."""
        with self._lock:
            self._mean_seconds += 0.2 * (seconds - self._mean_seconds)

    def retry_delay(self) -> float:
        """When a slot should be free for a refused call: the calls ahead of it (one per
        slot computing, and those queued) over the slots, at the mean compute time."""
        with self._lock:
            ahead = self.inflight
            mean = self._mean_seconds
        delay = mean * max(1.0, ahead / self.workers)
        return min(MAX_RETRY_DELAY, max(MIN_RETRY_DELAY, delay))

    def overloaded(self, method: str) -> Failure:
        m.REFUSED.labels(OVERLOADED).inc()
        delay = self.retry_delay()
        return Failure(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{method}: the server is overloaded ({self.max_concurrent} calls in progress or "
            f"queued, --max-concurrent-rpcs); retry in {delay:.2f} s",
            "Overloaded",
            metadata={"limit": "max_concurrent_rpcs", "max_concurrent_rpcs": self.max_concurrent},
            retry_delay=delay,
        )

    # -- memory -------------------------------------------------------------------------------

    def _refuse(self, where: str, needed: int, what: str) -> Failure:
        m.REFUSED.labels(REQUEST_MEMORY).inc()
        return Failure(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"{where}: {what} {needed} bytes, over the server's bound of "
            f"{self.max_request_memory} bytes per call (--max-request-memory)",
            "LimitError",
            where,
            metadata={
                "limit": "max_request_memory",
                "max_request_memory": self.max_request_memory,
                "requested_bytes": needed,
            },
        )

    def check_declared(self, fields, cache, views=None, request_bytes=None):
        """Before decoding: the tensors the request declares (inline: shape x itemsize; by
        digest: the cached array it pins) against the bound. `fields`: (name, TensorRefs);
        `views`: {(name, index): data} of tensors whose data is held apart from the message;
        `request_bytes`: the size of the request, when known.
        A tensor whose data cannot fill its shape is left to the decoder (GraphError)."""
        bound = self.max_request_memory
        if bound is None:
            return
        # Inline tensors count only what their data fills, which the request carried: without
        # digests, a request within the bound declares no more than it.
        if (
            request_bytes is not None
            and request_bytes <= bound
            and not any(ref.WhichOneof("ref") == "digest" for _, refs in fields for ref in refs)
        ):
            return
        views = views or {}
        total = 0
        for name, refs in fields:
            for i, ref in enumerate(refs):
                kind = ref.WhichOneof("ref")
                if kind == "tensor":
                    size = 1
                    for d in ref.tensor.shape:
                        size *= max(0, d)
                    nbytes = size * _itemsize(ref.tensor.dtype)
                    data = views.get((name, i))
                    if nbytes <= (ref.tensor.ByteSize() if data is None else len(data)):
                        total += nbytes
                elif kind == "digest":
                    total += cache.nbytes_of("t" + ref.digest)
        if total > bound:
            raise self._refuse("arguments", total, "the request's tensors take")

    def check_call(self, method: str, graph, kwargs) -> tuple:
        """Before running: the call's estimate (request_memory) against the bound. Returns
        (the estimate, the tape its plans hold), (0, 0) without a bound."""
        if self.max_request_memory is None:
            return 0, 0
        argnums = kwargs.get("argnums")  # None: the method's default
        mode = kwargs.get("mode", "auto")
        check_method = kwargs.get("method", "central")
        key = (id(graph), method, argnums, mode, check_method)
        known = self._estimates.get(key)
        if known is not None and known[0]() is graph and known[1] <= self.max_request_memory:
            return known[1], known[2]
        total, parts, stats = request_memory(
            self.engine, method, graph, argnums=argnums, mode=mode, check_method=check_method
        )
        if total > self.max_request_memory:
            shown = " + ".join(f"{name} {nbytes}" for name, nbytes in parts.items())
            raise self._refuse("request memory", total, f"the call would take {shown} =")
        if len(self._estimates) >= 4096:
            self._estimates.clear()
        self._estimates[key] = (weakref.ref(graph), total, stats.tape_bytes)
        return total, stats.tape_bytes

    def check_running(self, estimate: int, loop_bytes: int):
        """While running: the estimate plus what the call's loop tapes hold now."""
        bound = self.max_request_memory
        if bound is not None and loop_bytes > 0 and estimate + loop_bytes > bound:
            m.REFUSED.labels(REQUEST_MEMORY).inc()
            raise LimitError(
                f"the call's loop tapes grew to {loop_bytes} bytes, which with its other "
                f"{estimate} bytes is over the server's bound of {bound} bytes per call "
                "(--max-request-memory); a tape budget (--max-tape-bytes) makes loops "
                "checkpoint instead",
                "request memory",
            )
