"""The plans of one process, shared by its Engines: an Engine made per request, per test or
per `gs.minimize` call finds the plans an earlier Engine compiled for the same graph.

Keyed by the graph's digest, the call's signature (method, argnums, pass) and what an Engine's
options change in a plan (whether loops are differentiated through loop tapes: under a
`max_tape_bytes` budget). A plan may serve several threads at once: what a call writes into
(its values, its buffer pool) is per call or per thread.

Bounded by count and by an estimate of the bytes each plan keeps (`plan_bytes`), least recently
used dropped first; a plan over the byte bound alone is not kept here (its Engine keeps it)."""

from __future__ import annotations

import threading
from collections import OrderedDict

from .plan import Plan

# What the steps of a plan cost in memory besides arrays (tuples, partials, slot lists), per step.
STEP_BYTES = 400


def plan_bytes(plan: Plan) -> int:
    """What keeping `plan` costs, roughly: its constants and precomputed arrays, the working
    arrays of a call (`peak_bytes`, a bound on what its buffer pool holds per thread) and its
    steps."""
    arrays = sum(a.nbytes for a in plan.graph.constants.values())
    arrays += sum(a.nbytes for a in plan.precomputed.values())
    return arrays + plan.stats.peak_bytes + STEP_BYTES * len(plan.steps)


class PlanCache:
    """A thread-safe LRU of plans, bounded by `max_plans` and `max_bytes`."""

    def __init__(self, max_plans: int = 512, max_bytes: int = 256 << 20):
        self.max_plans = max_plans
        self.max_bytes = max_bytes
        self._plans: OrderedDict = OrderedDict()  # key -> (plan, bytes)
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self):
        return len(self._plans)

    @property
    def nbytes(self) -> int:
        """The estimated bytes of the plans kept."""
        return self._bytes

    def get(self, key) -> Plan | None:
        with self._lock:
            entry = self._plans.get(key)
            if entry is None:
                return None
            self._plans.move_to_end(key)
            return entry[0]

    def put(self, key, plan: Plan):
        size = plan_bytes(plan)
        with self._lock:
            old = self._plans.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if size > self.max_bytes:
                return
            self._plans[key] = (plan, size)
            self._bytes += size
            while len(self._plans) > self.max_plans or self._bytes > self.max_bytes:
                _, (_, dropped) = self._plans.popitem(last=False)
                self._bytes -= dropped

    def clear(self):
        with self._lock:
            self._plans.clear()
            self._bytes = 0


# The process's cache: every Engine looks here before compiling a plan.
shared = PlanCache()
