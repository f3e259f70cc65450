"""Prometheus metrics (names are part of the public contract; README lists each).

They live in the default registry, next to the client library's process/platform/GC
collectors, and are served by prometheus_client's own HTTP server on --metrics-port."""

from __future__ import annotations

import weakref

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics

from gradserve.protocol import METHODS, MINIMIZE

disable_created_metrics()  # no *_created series: they double the scrape for nothing

_BYTE_BUCKETS = tuple(float(1 << k) for k in range(10, 36, 2))  # 1 KiB .. 16 GiB, x4
_ENTRY_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 100000, 1000000)
_SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)

REQUESTS = Counter(
    "gradserve_requests", "Requests by RPC method and gRPC status code.", ["method", "code"]
)
DURATION = Histogram(
    "gradserve_request_duration_seconds",
    "Wall time of a request in the server, decoding to reply.",
    ["method"],
    buckets=_SECONDS_BUCKETS,
)
TAPE_BYTES = Histogram(
    "gradserve_tape_bytes",
    "Largest bytes of residuals a request's reverse pass held (one observation "
    "per successful request).",
    ["method"],
    buckets=_BYTE_BUCKETS,
)
TAPE_ENTRIES = Histogram(
    "gradserve_tape_entries",
    "Residual arrays held for a request's reverse pass (one observation per successful request).",
    ["method"],
    buckets=_ENTRY_BUCKETS,
)
TAPE_IN_USE = Gauge(
    "gradserve_tape_bytes_in_use", "Tape bytes of the requests computing now (tapes alive)."
)
INFLIGHT = Gauge("gradserve_inflight_requests", "Requests being handled now.")
RECOMPUTED_OPS = Counter(
    "gradserve_recomputed_ops",
    "Ops run again by checkpointed loops under the tape budget "
    "(--max-tape-bytes) instead of being held on the tape.",
    ["method"],
)
QUEUE_DEPTH = Gauge("gradserve_queue_depth", "Requests waiting for a compute slot (--workers) now.")
REFUSED = Counter(
    "gradserve_refused_requests",
    "Requests refused with RESOURCE_EXHAUSTED before computing: overloaded (over "
    "--max-concurrent-rpcs) or request_memory (over --max-request-memory).",
    ["reason"],
)
CACHE_ENTRIES = Gauge(
    "gradserve_graph_cache_entries", "Entries (graphs and large tensors) in the digest cache."
)
CACHE_BYTES = Gauge("gradserve_graph_cache_bytes", "Bytes charged to the digest cache.")
CACHE_HITS = Counter("gradserve_graph_cache_hits", "Digests found in the cache.")
CACHE_MISSES = Counter(
    "gradserve_graph_cache_misses", "Digests not found in the cache (answered NOT_FOUND)."
)

MINIMIZE_LOOPS = Counter(
    "gradserve_minimize_loops",
    "Optimisation loops run by Minimize, by how they ended: converged (success), stopped "
    "(by the client's callback or a limit of the method, such as maxiter), cancelled, "
    "deadline, error.",
    ["outcome"],
)
MINIMIZE_STEPS = Counter("gradserve_minimize_steps", "Steps of the loops run by Minimize.")
MINIMIZE_OUTCOMES = ("converged", "stopped", "cancelled", "deadline", "error")


class _Series:
    """The labelled children of one method (labels() is a dict lookup under a lock)."""

    def __init__(self, method):
        self.duration = DURATION.labels(method)
        self.tape_bytes = TAPE_BYTES.labels(method)
        self.tape_entries = TAPE_ENTRIES.labels(method)
        self.recomputed_ops = RECOMPUTED_OPS.labels(method)
        self.ok = REQUESTS.labels(method, "OK")


_SERIES: dict = {}


def series(method) -> _Series:
    found = _SERIES.get(method)
    if found is None:
        found = _SERIES[method] = _Series(method)
    return found


_ADMISSIONS: weakref.WeakSet = weakref.WeakSet()


def count_inflight(admission):
    """gradserve_inflight_requests is read from the servers' admission counters when scraped,
    rather than kept by two locked gauge updates per call."""
    _ADMISSIONS.add(admission)
    INFLIGHT.set_function(lambda: sum(a.inflight for a in _ADMISSIONS))


def cache_changed(entries: int, nbytes: int):
    CACHE_ENTRIES.set(entries)
    CACHE_BYTES.set(nbytes)


def initialise():
    """Create every labelled series at zero so dashboards see them before traffic."""
    for outcome in MINIMIZE_OUTCOMES:
        MINIMIZE_LOOPS.labels(outcome)
    for method in (*METHODS, MINIMIZE):
        DURATION.labels(method)
        TAPE_BYTES.labels(method)
        TAPE_ENTRIES.labels(method)
        RECOMPUTED_OPS.labels(method)
        REQUESTS.labels(method, "OK")
