#!/usr/bin/env python
"""Engine benchmark: the workloads W1-W5 of bench/README.md, gradserve against a careful
hand-written NumPy derivative (and autograd when it is importable), in the same run.

    python bench/bench_engine.py                 # all workloads, ~1 s of timing per entry
    python bench/bench_engine.py --quick         # shorter timing budget
    python bench/bench_engine.py --only W1,W3    # a subset
    python bench/bench_engine.py --profile       # also: plan size, time per op kind, cProfile

Every result is checked against the hand-written one (np.allclose) before anything is timed;
an implementation that disagrees is reported as WRONG and not timed. Timings are medians of
many repetitions (time.perf_counter, after warm-up, garbage collector off while timing, as
`timeit` does). Peak extra memory is measured separately with tracemalloc (NumPy reports its
data allocations to it), as the peak traced bytes during one call above the bytes traced
before it (the call's results included).
"""

from __future__ import annotations

import os

# One BLAS thread, as for the peer figures in bench/README.md, and so that other processes on a
# 2-core machine do not stall multi-threaded matmuls. Set before NumPy loads; an explicit setting
# in the environment wins. OPENBLAS_CORETYPE is deliberately left alone.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import collections
import cProfile
import gc
import io
import itertools
import math
import platform
import pstats
import statistics
import sys
import time
import tracemalloc

import numpy as np

import gradserve as gs
import gradserve.numpy as gnp

try:  # autograd is optional
    import autograd
    import autograd.numpy as anp
    from autograd.differential_operators import make_jvp as ag_make_jvp
except ImportError:  # pragma: no cover - depends on the machine
    autograd = None

MiB = 1024.0 * 1024.0


# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------


class Timer:
    """Timing settings; `__call__` times one function alone (median wall time over repetitions
    that fill `budget` seconds, at least `min_reps`, at most `max_reps`, after `warmup` untimed
    calls). The workloads use `time_interleaved` instead."""

    def __init__(self, budget: float, min_reps: int, max_reps: int, warmup: int):
        self.budget, self.min_reps, self.max_reps, self.warmup = budget, min_reps, max_reps, warmup

    def __call__(self, fn):
        for _ in range(self.warmup):
            fn()
        gc.collect()
        enabled = gc.isenabled()
        gc.disable()
        try:
            times = []
            faults = _minor_faults()
            deadline = time.perf_counter() + self.budget
            while len(times) < self.min_reps or (
                len(times) < self.max_reps and time.perf_counter() < deadline
            ):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            faults = (_minor_faults() - faults) / len(times)
        finally:
            if enabled:
                gc.enable()
        return Timing(statistics.median(times), len(times), min(times), faults)


def time_interleaved(timer, fns):
    """Median and best of each of `fns`, timed in interleaved rounds (each fn once per round,
    or a few times if it is fast; the order rotating), so that load from other processes hits
    all of them alike and their ratios stay meaningful on a busy machine. Stops after
    `min_reps` rounds once the budget (per fn) is used, or after `max_reps` rounds."""
    per_round = []
    for fn in fns:
        for _ in range(timer.warmup):
            t0 = time.perf_counter()
            fn()
            took = time.perf_counter() - t0
        # fast functions run several times per round (about 2 ms' worth), for more samples
        per_round.append(max(1, min(50, int(2e-3 / max(took, 1e-9)))))
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    times = [[] for _ in fns]
    faults = [0] * len(fns)
    try:
        deadline = time.perf_counter() + timer.budget * len(fns)
        rounds = 0
        while rounds < timer.min_reps or (
            rounds < timer.max_reps and time.perf_counter() < deadline
        ):
            for j in range(len(fns)):
                k = (j + rounds) % len(fns)
                for _ in range(per_round[k]):
                    f0 = _minor_faults()
                    t0 = time.perf_counter()
                    fns[k]()
                    times[k].append(time.perf_counter() - t0)
                    faults[k] += _minor_faults() - f0
            rounds += 1
    finally:
        if enabled:
            gc.enable()
    return [Timing(statistics.median(t), len(t), min(t), f / len(t)) for t, f in zip(times, faults)]


def _minor_faults():
    """Minor page faults of this process so far (first touches of freshly mapped memory)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    except (ImportError, OSError):
        return 0


class Timing:
    def __init__(self, median, reps, best, faults=0.0):
        self.median, self.reps, self.best, self.faults = median, reps, best, faults


class Measured(float):
    """A median time (seconds) that also carries the best repetition."""

    def __new__(cls, median, best):
        self = super().__new__(cls, median)
        self.best = best
        return self


def best_of(t, scale=1.0):
    return None if t is None else getattr(t, "best", float(t)) * scale


def peak_extra_bytes(fn) -> int:
    """Peak bytes traced by tracemalloc during one call of `fn`, above the bytes traced just
    before it (what the call allocates at its worst, results included)."""
    fn()  # warm caches (plans, etc.) outside the measurement
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
        del result
    finally:
        tracemalloc.stop()
    return max(0, peak - before)


def tree_allclose(a, b, rtol, atol):
    if isinstance(a, (tuple, list)):
        return (
            isinstance(b, (tuple, list))
            and len(a) == len(b)
            and all(tree_allclose(x, y, rtol, atol) for x, y in zip(a, b))
        )
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=rtol, atol=atol))


def _tree_copy(a):
    if isinstance(a, (tuple, list)):
        return type(a)(_tree_copy(x) for x in a)
    return np.array(a, copy=True)


def tree_max_rel_err(a, b):
    if isinstance(a, (tuple, list)):
        return max(tree_max_rel_err(x, y) for x, y in zip(a, b))
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        return float("inf")
    scale = np.maximum(np.abs(b), np.finfo(float).tiny)
    return float(np.max(np.abs(a - b) / scale)) if a.size else 0.0


# ---------------------------------------------------------------------------------------------
# W1: a chain of 2000 scalar ops, value and gradient
# ---------------------------------------------------------------------------------------------

W1_REPEATS = 200  # 10 ops each: 2000 ops
W1_OPS = 10 * W1_REPEATS
W1_X0 = 0.5


def w1_chain(np_module):
    """The W1 chain written once, for gradserve.numpy or autograd.numpy."""

    def chain(x):
        for _ in range(W1_REPEATS):
            t = x * x
            t = t + 1
            t = np_module.log(t)
            t = -t
            t = np_module.exp(t)
            t = t * 0.1
            s = np_module.sin(x)
            s = s * 1.0001
            x = s + t
            x = x + 0.05
        return x

    return chain


def w1_hand_value_and_grad(x):
    """Pure-Python `math` forward pass keeping (x, x*x+1, exp(-log(x*x+1))) per step, then
    the reverse sweep."""
    log, exp, sin, cos = math.log, math.exp, math.sin, math.cos
    tape = []
    push = tape.append
    for _ in range(W1_REPEATS):
        t1 = x * x + 1
        e = exp(-log(t1))
        push((x, t1, e))
        x = sin(x) * 1.0001 + e * 0.1 + 0.05
    value = x
    g = 1.0
    for x, t1, e in reversed(tape):
        # x_new = 1.0001*sin(x) + 0.1*exp(-log(x*x + 1)) + 0.05
        g = g * 1.0001 * cos(x) - g * 0.1 * e / t1 * 2.0 * x
    return value, g


def w1_hand_value(x):
    log, exp, sin = math.log, math.exp, math.sin
    for _ in range(W1_REPEATS):
        x = sin(x) * 1.0001 + exp(-log(x * x + 1)) * 0.1 + 0.05
    return x


# ---------------------------------------------------------------------------------------------
# W2 / W4: Rosenbrock
# ---------------------------------------------------------------------------------------------


def rosenbrock_gs(x):
    return gnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def rosenbrock_ag(x):
    return anp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def rosenbrock_hand_value(x):
    a = x[:-1]
    d = x[1:] - a**2
    e = 1 - a
    return np.sum(100 * d**2 + e**2)


def rosenbrock_hand_value_and_grad(x):
    """The same expression, then a hand-written backward pass: one gradient buffer, no
    scatter; residuals d = x[1:] - x[:-1]**2 and e = 1 - x[:-1]."""
    a = x[:-1]
    d = x[1:] - a * a
    e = 1 - a
    value = np.sum(100 * d**2 + e**2)
    g = np.empty_like(x)
    g[:-1] = -400 * d * a - 2 * e
    g[-1] = 0.0
    g[1:] += 200 * d
    return value, g


def rosenbrock_hand_hvp(x, v):
    """Closed form: the Hessian is tridiagonal,
    H[i,i] = 1200 x_i^2 - 400 x_{i+1} + 2 (i < n-1) + 200 (i > 0), H[i,i+1] = H[i+1,i] = -400 x_i."""
    a, b = x[:-1], x[1:]
    va, vb = v[:-1], v[1:]
    out = np.empty_like(x)
    out[:-1] = (1200 * a * a - 400 * b + 2) * va - 400 * a * vb
    out[-1] = 0.0
    out[1:] += 200 * vb - 400 * a * va
    return out


# ---------------------------------------------------------------------------------------------
# W3: MLP 784-512-512-10, tanh, batch 256, softmax cross-entropy with a stable logsumexp
# ---------------------------------------------------------------------------------------------

W3_SIZES = (784, 512, 512, 10)
W3_BATCH = 256


def w3_data():
    rng = np.random.default_rng(3)
    params = []
    for fan_in, fan_out in itertools.pairwise(W3_SIZES):
        params.append(rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in))
        params.append(rng.standard_normal(fan_out) * 0.1)
    X = rng.standard_normal((W3_BATCH, W3_SIZES[0]))
    labels = rng.integers(0, W3_SIZES[-1], W3_BATCH)
    Y = np.eye(W3_SIZES[-1])[labels]
    return params, X, Y


def w3_gs_fn(W1, b1, W2, b2, W3, b3, X, Y):
    h1 = gnp.tanh(X @ W1 + b1)
    h2 = gnp.tanh(h1 @ W2 + b2)
    z = h2 @ W3 + b3
    return gnp.mean(gs.nn.logsumexp(z, axis=1) - gnp.sum(z * Y, axis=1))


def w3_ag_fn(W1, b1, W2, b2, W3, b3, X, Y):
    h1 = anp.tanh(anp.dot(X, W1) + b1)
    h2 = anp.tanh(anp.dot(h1, W2) + b2)
    z = anp.dot(h2, W3) + b3
    m = anp.max(z, axis=1, keepdims=True)
    lse = anp.log(anp.sum(anp.exp(z - m), axis=1)) + m[:, 0]
    return anp.mean(lse - anp.sum(z * Y, axis=1))


def w3_hand_forward(W1, b1, W2, b2, W3, b3, X, Y):
    """Forward pass; returns (loss, residuals): the arrays the backward pass reads that are not
    inputs (h1, h2 and the softmax p)."""
    a1 = X @ W1
    a1 += b1
    h1 = np.tanh(a1, out=a1)
    a2 = h1 @ W2
    a2 += b2
    h2 = np.tanh(a2, out=a2)
    z = h2 @ W3
    z += b3
    m = z.max(axis=1, keepdims=True)
    p = np.exp(z - m)
    s = p.sum(axis=1, keepdims=True)
    lse = np.log(s) + m
    loss = np.mean(lse[:, 0] - np.einsum("ij,ij->i", z, Y))
    p /= s
    return loss, (h1, h2, p)


def w3_hand_backward(residuals, W1, b1, W2, b2, W3, b3, X, Y):
    h1, h2, p = residuals
    n = X.shape[0]
    dz = (p - Y) / n
    gW3 = h2.T @ dz
    gb3 = dz.sum(axis=0)
    da2 = dz @ W3.T
    da2 *= 1 - h2 * h2
    gW2 = h1.T @ da2
    gb2 = da2.sum(axis=0)
    da1 = da2 @ W2.T
    da1 *= 1 - h1 * h1
    gW1 = X.T @ da1
    gb1 = da1.sum(axis=0)
    return gW1, gb1, gW2, gb2, gW3, gb3


def w3_hand_value_and_grad(*args):
    loss, residuals = w3_hand_forward(*args)
    return loss, w3_hand_backward(residuals, *args)


def w3_hand_value(W1, b1, W2, b2, W3, b3, X, Y):
    h1 = np.tanh(X @ W1 + b1)
    h2 = np.tanh(h1 @ W2 + b2)
    z = h2 @ W3 + b3
    m = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(axis=1)) + m[:, 0]
    return np.mean(lse - np.einsum("ij,ij->i", z, Y))


# ---------------------------------------------------------------------------------------------
# W5: Jacobian of tanh(A @ x) * x, 200 -> 200
# ---------------------------------------------------------------------------------------------

W5_N = 200


def w5_data():
    rng = np.random.default_rng(5)
    return rng.standard_normal((W5_N, W5_N)) / np.sqrt(W5_N), rng.standard_normal(W5_N)


def w5_hand_jacobian(A, x):
    """Closed form: J = diag(tanh(Ax)) + (x * (1 - tanh(Ax)^2))[:, None] * A."""
    t = np.tanh(A @ x)
    J = (x * (1 - t * t))[:, None] * A
    J.flat[:: W5_N + 1] += t
    return J


# ---------------------------------------------------------------------------------------------
# Runner
# ---------------------------------------------------------------------------------------------


class Row:
    """One line of the summary: a measured quantity and its target."""

    def __init__(
        self,
        workload,
        metric,
        gs_value,
        hand_value,
        ag_value,
        unit,
        target_text,
        met,
        ratio=None,
        gs_best=None,
        best_ratio=None,
    ):
        self.workload, self.metric = workload, metric
        self.gs_best, self.best_ratio = gs_best, best_ratio
        self.gs_value, self.hand_value, self.ag_value = gs_value, hand_value, ag_value
        self.unit, self.target_text, self.met, self.ratio = unit, target_text, met, ratio


class Bench:
    def __init__(self, timer: Timer, profile: bool):
        self.timer, self.profile = timer, profile
        self.rows: list[Row] = []
        self.profiles: dict = {}
        self.eng = gs.Engine()

    # -- helpers ---------------------------------------------------------------------------

    def check(self, name, got, want, rtol=1e-7, atol=0.0):
        ok = tree_allclose(got, want, rtol, atol)
        err = tree_max_rel_err(got, want)
        print(f"  check {name:<34s} {'ok' if ok else 'WRONG':5s} (max rel err {err:.1e})")
        return ok

    def check_stable(self, name, call, inputs):
        """The engine may reuse buffers: a result must survive the next call, and the inputs
        must come out of a call untouched."""
        before = [np.array(a, copy=True) for a in inputs]
        first = call()
        kept = _tree_copy(first)
        call()
        ok = tree_allclose(first, kept, 0.0, 0.0) and all(
            np.array_equal(a, b) for a, b in zip(inputs, before)
        )
        print(
            f"  check {name + ' stable':<34s} {'ok' if ok else 'WRONG':5s} "
            "(results survive the next call, inputs untouched)"
        )
        return ok

    def time_group(self, entries, scale=1.0, unit="ms"):
        """entries: {label: fn or None}; the fns are timed interleaved. Returns {label:
        Measured or None} (None for entries not run, e.g. after a failed check)."""
        live = {label: fn for label, fn in entries.items() if fn is not None}
        timings = dict(zip(live, time_interleaved(self.timer, list(live.values()))))
        factor = {"ms": 1e3, "us": 1e6}[unit]
        out = {}
        for label in entries:
            t = timings.get(label)
            if t is None:
                out[label] = None
                continue
            print(
                f"  time  {label:<34s} {t.median * factor / scale:10.3f} {unit}"
                f"  (median of {t.reps}, best {t.best * factor / scale:.3f}; "
                f"{t.faults:.0f} page faults per call)"
            )
            out[label] = Measured(t.median / scale, t.best / scale)
        return out

    def plan_summary(self, label, before_keys):
        """The plans the engine compiled for this workload: steps and the ops they run."""
        if not self.profile:
            return
        try:
            new = [(k, p) for k, p in self.eng._plans.items() if k not in before_keys]
            out = []
            for key, plan in new:
                ops = collections.Counter(node.op for node in plan.nodes)
                out.append((key[1:], len(plan.steps), ops, plan.stats))
        except Exception:
            out = []
        self.profiles.setdefault(label, {})["plans"] = out

    def profile_call(self, label, fn, reps):
        if not self.profile:
            return
        fn()
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(reps):
            fn()
        prof.disable()
        stream = io.StringIO()
        pstats.Stats(prof, stream=stream).sort_stats("tottime").print_stats(14)
        self.profiles.setdefault(label, {})["cprofile"] = (reps, stream.getvalue())
        self.profiles[label]["per_op"] = per_op_times(self.eng, fn, label)

    # -- workloads -------------------------------------------------------------------------

    def plan_keys(self):
        return set(getattr(self.eng, "_plans", {}))

    def w1(self):
        print(f"W1: chain of {W1_OPS} scalar ops, value and gradient")
        keys = self.plan_keys()
        graph = gs.trace(w1_chain(gnp), W1_X0)
        eng = self.eng
        want = w1_hand_value_and_grad(W1_X0)
        gs_call = lambda: eng.value_and_grad(graph, W1_X0)  # noqa: E731
        ok = self.check("gradserve value_and_grad", gs_call(), want, rtol=1e-9)
        ok = ok and self.check_stable("gradserve value_and_grad", gs_call, [])
        # the gradient is ~1e-46 here (the map contracts), so compare relatively, with atol 0
        ag = None
        if autograd is not None:
            ag = autograd.value_and_grad(w1_chain(anp))
            if not self.check("autograd value_and_grad", ag(W1_X0), want, rtol=1e-9):
                ag = None
        t = self.time_group(
            {
                "hand-written (math) value+grad": lambda: w1_hand_value_and_grad(W1_X0),
                "gradserve value+grad": gs_call if ok else None,
                "gradserve evaluate": (lambda: eng.evaluate(graph, W1_X0)) if ok else None,
                "autograd value+grad": (lambda: ag(W1_X0)) if ag else None,
            },
            scale=W1_OPS,
            unit="us",
        )
        t_hand, t_gs = t["hand-written (math) value+grad"], t["gradserve value+grad"]
        t_gs_val, t_ag = t["gradserve evaluate"], t["autograd value+grad"]
        self.plan_summary("W1", keys)
        self.profile_call("W1", gs_call, 20)
        us = lambda t: None if t is None else t * 1e6  # noqa: E731
        self.rows.append(
            Row(
                "W1",
                "value+grad, µs per op",
                us(t_gs),
                us(t_hand),
                us(t_ag),
                "µs",
                "<= 3 µs/op",
                None if t_gs is None else t_gs * 1e6 <= 3.0,
                gs_best=best_of(t_gs, 1e6),
            )
        )
        self.rows.append(Row("W1", "evaluate, µs per op", us(t_gs_val), None, None, "µs", "", None))

    def w2(self):
        n = 10**6
        print(f"W2: Rosenbrock value+grad, n = {n}")
        keys = self.plan_keys()
        x = np.random.default_rng(2).uniform(-1.5, 2.0, n)
        graph = gs.trace(rosenbrock_gs, gs.Spec((n,), "float64"))
        eng = self.eng
        want = rosenbrock_hand_value_and_grad(x)
        gs_call = lambda: eng.value_and_grad(graph, x)  # noqa: E731
        ok = self.check("gradserve value_and_grad", gs_call(), want, rtol=1e-9, atol=1e-9)
        ok = ok and self.check_stable("gradserve value_and_grad", gs_call, [x])
        ag = None
        if autograd is not None:
            ag = autograd.value_and_grad(rosenbrock_ag)
            if not self.check("autograd value_and_grad", ag(x), want, rtol=1e-9, atol=1e-9):
                ag = None
        t = self.time_group(
            {
                "hand-written value+grad": lambda: rosenbrock_hand_value_and_grad(x),
                "hand-written value only": lambda: rosenbrock_hand_value(x),
                "gradserve value+grad": gs_call if ok else None,
                "gradserve evaluate": (lambda: eng.evaluate(graph, x)) if ok else None,
                "autograd value+grad": (lambda: ag(x)) if ag else None,
            }
        )
        t_hand, t_gs, t_ag = (
            t["hand-written value+grad"],
            t["gradserve value+grad"],
            t["autograd value+grad"],
        )
        mem_gs = peak_extra_bytes(gs_call) if ok else None
        mem_hand = peak_extra_bytes(lambda: rosenbrock_hand_value_and_grad(x))
        print(
            f"  peak extra memory: gradserve {fmt_mib(mem_gs)}, hand-written {fmt_mib(mem_hand)}"
            f"; engine stats {eng.last_stats}"
        )
        self.plan_summary("W2", keys)
        self.profile_call("W2", gs_call, 10)
        self.rows.append(ratio_row("W2", "value+grad", t_gs, t_hand, t_ag, 1.5))
        self.rows.append(
            Row("W2", "peak extra memory", mib(mem_gs), mib(mem_hand), None, "MiB", "", None)
        )

    def w3(self):
        print("W3: MLP 784-512-512-10, tanh, batch 256, softmax cross-entropy; grad wrt 6 params")
        keys = self.plan_keys()
        params, X, Y = w3_data()
        args = (*params, X, Y)
        graph = gs.trace(w3_gs_fn, *args)
        eng = self.eng
        argnums = tuple(range(6))
        want = w3_hand_value_and_grad(*args)
        gs_call = lambda: eng.value_and_grad(graph, *args, argnums=argnums)  # noqa: E731
        got = gs_call()
        ok = self.check("gradserve value_and_grad", got, want, rtol=1e-7, atol=1e-12)
        ok = ok and self.check_stable("gradserve value_and_grad", gs_call, args)
        tape_gs, entries_gs = eng.last_stats.tape_bytes, eng.last_stats.tape_entries
        peak_gs_stats = eng.last_stats.peak_bytes
        _, residuals = w3_hand_forward(*args)
        tape_hand = sum(r.nbytes for r in residuals)
        ag = None
        if autograd is not None:
            ag = autograd.value_and_grad(w3_ag_fn, argnum=argnums)
            if not self.check("autograd value_and_grad", ag(*args), want, rtol=1e-7, atol=1e-12):
                ag = None
        t = self.time_group(
            {
                "hand-written value+grad": lambda: w3_hand_value_and_grad(*args),
                "hand-written value only": lambda: w3_hand_value(*args),
                "gradserve value+grad": gs_call if ok else None,
                "gradserve evaluate": (lambda: eng.evaluate(graph, *args)) if ok else None,
                "autograd value+grad": (lambda: ag(*args)) if ag else None,
                "autograd value only": (lambda: w3_ag_fn(*args)) if ag else None,
            }
        )
        t_hand, t_hand_val = t["hand-written value+grad"], t["hand-written value only"]
        t_gs, t_gs_val = t["gradserve value+grad"], t["gradserve evaluate"]
        t_ag, t_ag_val = t["autograd value+grad"], t["autograd value only"]
        mem_gs = peak_extra_bytes(gs_call) if ok else None
        mem_hand = peak_extra_bytes(lambda: w3_hand_value_and_grad(*args))
        mem_ag = peak_extra_bytes(lambda: ag(*args)) if ag else None
        print(
            f"  tape: gradserve {tape_gs} B in {entries_gs} entries ({mib(tape_gs):.2f} MiB); "
            f"hand-written keeps {tape_hand} B ({mib(tape_hand):.2f} MiB: h1, h2, softmax)"
        )
        print(
            f"  peak extra memory (tracemalloc): gradserve {fmt_mib(mem_gs)}, hand-written "
            f"{fmt_mib(mem_hand)}, autograd {fmt_mib(mem_ag)}; gradserve peak_bytes stat "
            f"{mib(peak_gs_stats):.2f} MiB"
        )
        self.plan_summary("W3", keys)
        self.profile_call("W3", gs_call, 10)
        if self.profile:
            self.profiles["W3"]["tape"] = tape_listing(graph, argnums)
        self.rows.append(ratio_row("W3", "value+grad", t_gs, t_hand, t_ag, 1.0))
        div = lambda a, b: None if a is None or b is None else a / b  # noqa: E731
        self.rows.append(
            Row(
                "W3",
                "value+grad ÷ value",
                div(t_gs, t_gs_val),
                div(t_hand, t_hand_val),
                div(t_ag, t_ag_val),
                "x",
                "",
                None,
            )
        )
        self.rows.append(
            Row(
                "W3",
                "tape bytes (MiB)",
                mib(tape_gs),
                mib(tape_hand),
                None,
                "MiB",
                "<= hand-written",
                tape_gs <= tape_hand,
                ratio=tape_gs / tape_hand,
            )
        )
        self.rows.append(
            Row("W3", "peak extra memory", mib(mem_gs), mib(mem_hand), mib(mem_ag), "MiB", "", None)
        )

    def w4(self):
        n = 10**5
        print(f"W4: Rosenbrock Hessian-vector product, n = {n}")
        keys = self.plan_keys()
        rng = np.random.default_rng(4)
        x, v = rng.uniform(-1.5, 2.0, n), rng.standard_normal(n)
        graph = gs.trace(rosenbrock_gs, gs.Spec((n,), "float64"))
        eng = self.eng
        want = rosenbrock_hand_hvp(x, v)
        gs_call = lambda: eng.hvp(graph, (x,), (v,))  # noqa: E731
        ok = self.check("gradserve hvp", gs_call()[0], want, rtol=1e-9, atol=1e-8)
        ok = ok and self.check_stable("gradserve hvp", gs_call, [x, v])
        ag = None
        if autograd is not None:
            ag = autograd.hessian_vector_product(rosenbrock_ag)
            if not self.check("autograd hvp (rev-over-rev)", ag(x, v), want, rtol=1e-9, atol=1e-8):
                ag = None
        t = self.time_group(
            {
                "hand-written (closed form) hvp": lambda: rosenbrock_hand_hvp(x, v),
                "gradserve hvp": gs_call if ok else None,
                "autograd hvp": (lambda: ag(x, v)) if ag else None,
            }
        )
        t_hand, t_gs, t_ag = (
            t["hand-written (closed form) hvp"],
            t["gradserve hvp"],
            t["autograd hvp"],
        )
        self.plan_summary("W4", keys)
        self.profile_call("W4", gs_call, 20)
        self.rows.append(ratio_row("W4", "HVP", t_gs, t_hand, t_ag, 1.5))

    def w5(self):
        print(f"W5: Jacobian of tanh(A@x)*x, {W5_N} -> {W5_N}")
        keys = self.plan_keys()
        A, x = w5_data()
        graph = gs.trace(lambda x: gnp.tanh(A @ x) * x, x)
        eng = self.eng
        want = w5_hand_jacobian(A, x)
        jac = fwd_jac = None
        if autograd is not None:
            f = lambda x: anp.tanh(anp.dot(A, x)) * x  # noqa: E731
            jac = autograd.jacobian(f)
            basis = np.eye(W5_N)

            def forward_jacobian(x):  # forward mode: one JVP per basis vector
                jvp = ag_make_jvp(f)(x)
                return np.stack([jvp(e)[1] for e in basis], axis=1)

            fwd_jac = forward_jacobian
            if not self.check("autograd jacobian (rev)", jac(x), want, rtol=1e-9, atol=1e-12):
                jac = None
            if not self.check(
                "autograd jacobian (fwd, make_jvp)", fwd_jac(x), want, rtol=1e-9, atol=1e-12
            ):
                fwd_jac = None
        calls = {}
        for mode in ("fwd", "rev"):
            gs_call = lambda mode=mode: eng.jacobian(graph, x, mode=mode)  # noqa: E731
            ok = self.check(f"gradserve jacobian ({mode})", gs_call(), want, rtol=1e-9, atol=1e-12)
            ok = ok and self.check_stable(f"gradserve jacobian ({mode})", gs_call, [x])
            calls[mode] = gs_call if ok else None
        t = self.time_group(
            {
                "hand-written (closed form)": lambda: w5_hand_jacobian(A, x),
                "gradserve jacobian (fwd)": calls["fwd"],
                "gradserve jacobian (rev)": calls["rev"],
                "autograd jacobian (fwd)": (lambda: fwd_jac(x)) if fwd_jac else None,
                "autograd jacobian (rev)": (lambda: jac(x)) if jac else None,
            }
        )
        t_hand = t["hand-written (closed form)"]
        for mode in ("fwd", "rev"):
            t_gs, t_ag = t[f"gradserve jacobian ({mode})"], t[f"autograd jacobian ({mode})"]
            self.rows.append(
                Row(
                    "W5",
                    f"Jacobian ({mode})",
                    ms(t_gs),
                    ms(t_hand),
                    ms(t_ag),
                    "ms",
                    "<= 1.5x hand",
                    None if t_gs is None else t_gs <= 1.5 * t_hand,
                    ratio=None if t_gs is None else t_gs / t_hand,
                    gs_best=best_of(t_gs, 1e3),
                    best_ratio=None if t_gs is None else t_gs.best / t_hand.best,
                )
            )
        self.plan_summary("W5", keys)
        for mode, gs_call in calls.items():
            if gs_call is not None:
                self.profile_call(f"W5-{mode}", gs_call, 50)


def ms(t):
    return None if t is None else t * 1e3


def mib(b):
    return None if b is None else b / MiB


def fmt_mib(b):
    return "n/a" if b is None else f"{b / MiB:.2f} MiB"


def ratio_row(workload, metric, t_gs, t_hand, t_ag, target):
    ratio = None if t_gs is None else t_gs / t_hand
    return Row(
        workload,
        metric,
        ms(t_gs),
        ms(t_hand),
        ms(t_ag),
        "ms",
        f"<= {target}x hand",
        None if ratio is None else ratio <= target,
        ratio=ratio,
        gs_best=best_of(t_gs, 1e3),
        best_ratio=None if t_gs is None else t_gs.best / t_hand.best,
    )


def tape_listing(graph, argnums):
    """The residuals of the gradient program: forward values that backward steps read, after
    the planner's rematerialization. Uses engine internals; None if they changed."""
    try:
        from gradserve.engine.plan import rematerialize
        from gradserve.engine.transforms import Program, vjp

        program = vjp(Program(graph), argnums, seed_ones=True)
        nodes, boundary = rematerialize(
            list(program.graph.nodes), program.boundary, program.graph.output_names
        )
        made = {o: node for node in nodes[:boundary] for o in node.outputs}
        readers: dict = {}
        for node in nodes[boundary:]:
            for name in node.inputs:
                if name in made:
                    readers.setdefault(name, []).append(node.op)
        out = []
        for name, ops in readers.items():
            spec = program.graph.avals[name]
            node = made[name]
            out.append(
                f"{name} = {node.op}({', '.join(node.inputs)}) {spec.shape} "
                f"{spec.nbytes} B, read by {', '.join(ops)}"
            )
        return out
    except Exception as exc:
        return [f"tape listing unavailable ({type(exc).__name__}: {exc})"]


def per_op_times(eng, fn, label):
    """Time spent per op kind: every step function of the plans `fn` runs is wrapped, for a
    few calls, in a timer (relies on Plan.steps being tuples whose first item is the step's
    function and fifth the buffers it gives back to the pool, in the order of Plan.nodes, and
    on a plan recompiling when its steps are set; returns a message if that changed)."""
    try:
        plans = list(eng._plans.values())
        totals = collections.defaultdict(float)
        counts = collections.Counter()
        saved = {id(plan): plan.steps for plan in plans}

        def timed(step_fn, op):
            def run(*args, **kwargs):
                t0 = time.perf_counter()
                try:
                    return step_fn(*args, **kwargs)
                finally:
                    totals[op] += time.perf_counter() - t0
                    counts[op] += 1

            return run

        n_runs = 10
        fn()
        try:
            for plan in plans:
                if len(plan.steps) != len(plan.nodes):
                    raise RuntimeError("steps and nodes do not line up")
                if any(len(step) != 5 for step in plan.steps):
                    raise RuntimeError("steps are not (function, ..., pooled buffers) tuples")
                plan.steps = [
                    (timed(step[0], node.op),) + tuple(step[1:])
                    for step, node in zip(plan.steps, plan.nodes)
                ]
            for _ in range(n_runs):
                fn()
            # The executor's own cost: every step replaced by one returning the value it
            # returned before (recorded on one call), so only the loop and the call remain.
            recorded = {}

            def recording(step_fn, key):
                def run(*args, **kwargs):
                    recorded[key] = value = step_fn(*args, **kwargs)
                    return value

                return run

            for plan in plans:
                plan.steps = [
                    (recording(step[0], (id(plan), k)),) + tuple(step[1:])
                    for k, step in enumerate(saved[id(plan)])
                ]
            fn()
            # Nothing goes back to the buffer pool meanwhile (the fifth item, the buffers a
            # step gives back, emptied): the same recorded arrays come back on every call.
            for plan in plans:
                plan.steps = [
                    ((lambda *a, _v=recorded.get((id(plan), k)), **kw: _v),)
                    + tuple(step[1:4])
                    + ((),)
                    for k, step in enumerate(saved[id(plan)])
                ]
            fn()
            times = []
            for _ in range(max(n_runs, 30)):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            bare = statistics.median(times)
        finally:
            for plan in plans:
                plan.steps = saved[id(plan)]
        times = []
        for _ in range(max(n_runs, 30)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        wall = statistics.median(times)
        overhead = 0.0
        for _ in range(10000):
            a = time.perf_counter()
            overhead += time.perf_counter() - a
        overhead /= 10000
        return (
            {op: (totals[op] / n_runs, counts[op] // n_runs) for op in totals},
            overhead,
            wall,
            bare,
        )
    except Exception as exc:
        return f"per-op timing unavailable ({type(exc).__name__}: {exc})"


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def fmt(v, unit):
    if v is None:
        return "—"
    if unit == "x":
        return f"{v:.2f}"
    if unit == "µs":
        return f"{v:.3f}"
    return f"{v:.3f}" if v < 100 else f"{v:.1f}"


def print_summary(rows):
    print()
    print(
        "Summary (medians; ratio = gradserve / hand-written; targets judged on medians, bests "
        "shown as a check against machine noise)"
    )
    header = (
        "workload",
        "metric",
        "gradserve",
        "hand-written",
        "autograd",
        "ratio",
        "target",
        "status",
        "gradserve best",
        "ratio of bests",
    )
    table = [header]
    for r in rows:
        unit = "" if r.unit == "x" else f" {r.unit}"
        status = (
            ""
            if r.met is None and not r.target_text
            else ("WRONG/not run" if r.met is None else ("met" if r.met else "MISSED"))
        )
        table.append(
            (
                r.workload,
                r.metric,
                fmt(r.gs_value, r.unit) + ("" if r.gs_value is None else unit),
                fmt(r.hand_value, r.unit) + ("" if r.hand_value is None else unit),
                fmt(r.ag_value, r.unit) + ("" if r.ag_value is None else unit),
                "—" if r.ratio is None else f"{r.ratio:.2f}x",
                r.target_text or "",
                status,
                "" if r.gs_best is None else fmt(r.gs_best, r.unit) + unit,
                "" if r.best_ratio is None else f"{r.best_ratio:.2f}x",
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for k, row in enumerate(table):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")


def print_profiles(profiles):
    for label, info in profiles.items():
        print()
        print(f"=== profile {label} ===")
        for key, n_steps, ops, stats in info.get("plans", []):
            top = ", ".join(f"{op} {c}" for op, c in ops.most_common())
            print(
                f"  plan {key}: {n_steps} steps; tape {stats.tape_bytes} B / "
                f"{stats.tape_entries} entries; peak {stats.peak_bytes} B"
            )
            print(f"    ops: {top}")
        if info.get("tape"):
            print("  tape entries (forward values the backward pass reads):")
            for line in info["tape"]:
                print("    " + line)
        per_op = info.get("per_op")
        if isinstance(per_op, tuple):
            table, overhead, wall, bare = per_op
            total = sum(t for t, _ in table.values())
            steps = sum(c for _, c in table.values())
            print(
                f"  one call: {wall * 1e3:.3f} ms (median of 30); the same call with every step "
                f"replaced by a function returning its recorded result: {bare * 1e3:.3f} ms = "
                f"{bare / max(steps, 1) * 1e9:.0f} ns per step of executor loop and call overhead"
            )
            print(
                f"  time inside the steps, by op kind (a timer around each step, which adds "
                f"~{overhead * 1e9:.0f} ns; total {total * 1e3:.3f} ms):"
            )
            for op, (t, c) in sorted(table.items(), key=lambda kv: -kv[1][0]):
                print(f"    {op:<14s} {c:6d} steps  {t * 1e3:9.3f} ms  {t / c * 1e6:9.2f} µs/step")
        elif per_op:
            print("  " + per_op)
        if "cprofile" in info:
            reps, text = info["cprofile"]
            print(f"  cProfile over {reps} calls (sorted by own time):")
            lines = [line for line in text.splitlines() if line.strip()]
            start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
            for line in lines[max(0, start - 1) :]:
                print("    " + line)


def load_average():
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


ROWS_MARK = "@@bench-rows@@ "


def run_isolated(wanted, opts):
    """Each workload in a fresh interpreter: glibc's malloc adapts its mmap and trim thresholds
    to the sizes a process has freed, so a workload's time depends on what ran before it in the
    same process (W4 and W5 ran 2-5x faster after W2). A fresh process per workload makes the
    figures independent of order."""
    import json
    import subprocess

    rows = []
    for w in wanted:
        cmd = [sys.executable, os.path.abspath(__file__), "--only", w, "--child"]
        cmd += ["--quick"] if opts.quick else []
        cmd += ["--profile"] if opts.profile else []
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        for line in proc.stdout.splitlines():
            if line.startswith(ROWS_MARK):
                rows.extend(Row(**d) for d in json.loads(line[len(ROWS_MARK) :]))
            else:
                print(line)
        if proc.returncode:
            print(f"  {w}: the benchmark process failed with exit status {proc.returncode}")
        sys.stdout.flush()
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short timing budget")
    parser.add_argument("--only", default="", help="comma-separated workloads, e.g. W1,W3")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print plan sizes, time per op kind and cProfile of gradserve",
    )
    parser.add_argument(
        "--same-process",
        action="store_true",
        help="run all workloads in this process (default: one fresh process each)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    wanted = [w.strip().upper() for w in opts.only.split(",") if w.strip()] or [
        "W1",
        "W2",
        "W3",
        "W4",
        "W5",
    ]
    unknown = set(wanted) - {"W1", "W2", "W3", "W4", "W5"}
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    if not opts.child:
        print(
            f"python {platform.python_version()}, numpy {np.__version__}, "
            f"autograd {getattr(autograd, '__version__', 'installed') if autograd else 'not installed'}, "
            f"{platform.machine()}, {'quick' if opts.quick else 'full'} run, "
            f"{'one process' if opts.same_process else 'a fresh process per workload'}, "
            f"load average {load_average()}, OPENBLAS_NUM_THREADS="
            f"{os.environ.get('OPENBLAS_NUM_THREADS')}, OPENBLAS_CORETYPE="
            f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')}"
        )
        print()
        sys.stdout.flush()
    if not opts.child and not opts.same_process:
        rows = run_isolated(wanted, opts)
        profiles = {}
    else:
        timer = (
            Timer(budget=0.3, min_reps=7, max_reps=2000, warmup=2)
            if opts.quick
            else Timer(budget=1.5, min_reps=21, max_reps=20000, warmup=5)
        )
        bench = Bench(timer, opts.profile)
        for w in wanted:
            getattr(bench, w.lower())()
            print()
        rows, profiles = bench.rows, bench.profiles
    if opts.child:
        if opts.profile:
            print_profiles(profiles)
            print()
        import json

        print(ROWS_MARK + json.dumps([vars(r) for r in rows]))
        return 0
    print_summary(rows)
    print(
        f"load average at the end: {load_average()} (other processes on the machine widen the "
        "spread between median and best; compare ratios from the same run)"
    )
    if opts.profile and opts.same_process:
        print_profiles(profiles)
    return 0


if __name__ == "__main__":
    sys.exit(main())
