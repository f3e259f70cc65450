#!/usr/bin/env python
"""First-call benchmark: the first `Engine().value_and_grad` of W1's graph (bench_engine.py's
chain of 2000 scalar ops), tracing excluded: transforms, validation, planning, compile() and
the run.

    python bench/bench_compile.py              # median of 7 samples, each in a fresh process
    python bench/bench_compile.py --samples 11

Every sample runs in a fresh Python process (fresh graph, fresh Engine, empty caches), so each
timing is a genuine first compile. Each sample also times, in the same process: the steady
state (median of repeated calls on the compiled plan), and the first call of the same graph on
a second, fresh Engine (which finds the plan in the process's shared cache), and the CPU time
of the first call (process time: on a machine other processes keep busy, the wall-clock time
stretches and this does not). The split by phase comes from timers wrapped around the engine's
functions (exclusive time: a phase's time excludes the phases nested in it); "digest" is the
digest of the graph (its canonical encoding: engine/canonical.py, or Graph.to_bytes), "run" includes the
interpreted first run (a plan is compiled only once it is reused, so "compile" is zero here).
Then the second call (still interpreted) and what compiling the plan's function cost when a
later steady call (the 25th run) did it.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import json
import statistics
import subprocess
import sys
import time

PHASES = ("transforms", "validation", "digest", "planning", "compile", "run", "other")


def _instrument():
    """Wrap the engine's phases with exclusive timers; returns the totals dict."""
    import gradserve.engine.canonical as canonical_mod
    import gradserve.engine.engine as engine_mod
    import gradserve.engine.graph as graph_mod
    import gradserve.engine.plan as plan_mod
    import gradserve.engine.transforms as transforms_mod
    import gradserve.engine.validate as validate_mod

    totals = dict.fromkeys(PHASES, 0.0)
    stack = []  # [phase, start, nested time]

    def timed(phase, fn):
        def wrapper(*args, **kwargs):
            stack.append([phase, time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                _, start, nested = stack.pop()
                elapsed = time.perf_counter() - start
                totals[phase] += elapsed - nested
                if stack:
                    stack[-1][2] += elapsed

        return wrapper

    transforms_mod.jvp = timed("transforms", transforms_mod.jvp)
    transforms_mod.vjp = timed("transforms", transforms_mod.vjp)
    engine_mod.vjp = transforms_mod.vjp
    engine_mod.jvp = transforms_mod.jvp
    validate_mod.check_graph = timed("validation", validate_mod.check_graph)
    canonical_mod.encode = timed("digest", canonical_mod.encode)
    graph_mod.Graph.to_bytes = timed("digest", graph_mod.Graph.to_bytes)
    plan_mod.Plan.__init__ = timed("planning", plan_mod.Plan.__init__)
    plan_mod.Plan._compile = timed("compile", plan_mod.Plan._compile)
    plan_mod.Plan.run = timed("run", plan_mod.Plan.run)
    return totals


def one_sample(steady_reps: int) -> dict:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gc

    from bench_engine import W1_X0, w1_chain

    import gradserve as gs
    import gradserve.numpy as gnp

    totals = _instrument()
    start = time.perf_counter()
    graph = gs.trace(w1_chain(gnp), W1_X0)
    trace = time.perf_counter() - start
    for k in totals:
        totals[k] = 0.0
    gc.collect()
    engine = gs.Engine()
    start, cpu_start = time.perf_counter(), time.process_time()
    first_value = engine.value_and_grad(graph, W1_X0)
    first = time.perf_counter() - start
    first_cpu = time.process_time() - cpu_start
    phases = dict(totals)
    phases["other"] = first - sum(v for k, v in phases.items() if k != "other")

    for k in totals:
        totals[k] = 0.0
    start = time.perf_counter()
    engine.value_and_grad(graph, W1_X0)
    second_call = time.perf_counter() - start  # still interpreted (plan.INTERPRETED_RUNS)
    times = []
    for _ in range(steady_reps):
        start = time.perf_counter()
        value = engine.value_and_grad(graph, W1_X0)
        times.append(time.perf_counter() - start)
    assert value == first_value

    start = time.perf_counter()
    second_engine_value = gs.Engine().value_and_grad(graph, W1_X0)
    second_engine = time.perf_counter() - start
    assert second_engine_value == first_value
    compiled = totals["compile"]  # the generated function, compiled on a later run
    return {
        "second_call": second_call,
        "compiled": compiled,
        "trace": trace,
        "first_cpu": first_cpu,
        "first": first,
        "phases": phases,
        "steady": statistics.median(times),
        "second_engine": second_engine,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=7, help="fresh processes (default 7)")
    parser.add_argument("--steady-reps", type=int, default=200)
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.one:
        print(json.dumps(one_sample(opts.steady_reps)))
        return
    samples = []
    for _ in range(opts.samples):
        out = subprocess.run(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--one",
                "--steady-reps",
                str(opts.steady_reps),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        samples.append(json.loads(out.stdout.strip().splitlines()[-1]))
    med = statistics.median
    first = med(s["first"] for s in samples)
    steady = med(s["steady"] for s in samples)
    second = med(s["second_engine"] for s in samples)
    print(f"W1 (2000 scalar ops) first value_and_grad, fresh process x {len(samples)}")
    print(
        f"  first call       median {first * 1e3:8.1f} ms"
        f"  (min {min(s['first'] for s in samples) * 1e3:.1f},"
        f" max {max(s['first'] for s in samples) * 1e3:.1f})"
    )
    for phase in PHASES:
        print(f"    {phase:<12}   median {med(s['phases'][phase] for s in samples) * 1e3:8.1f} ms")
    print(
        f"  first call CPU   median {med(s['first_cpu'] for s in samples) * 1e3:8.1f} ms"
        "  (process time: what the call itself used of a busy machine)"
    )
    print(
        f"  trace (gs.trace) median {med(s['trace'] for s in samples) * 1e3:8.1f} ms"
        "  (before the first call, not in it)"
    )
    print(
        f"  second call      median {med(s['second_call'] for s in samples) * 1e3:8.2f} ms"
        "  (the plan's steps run from their list: not compiled yet)"
    )
    print(
        f"  compile()        median {med(s['compiled'] for s in samples) * 1e3:8.1f} ms"
        "  (generating and compiling the plan's function, at its 25th run)"
    )
    print(f"  steady call      median {steady * 1e6:8.1f} us")
    print(f"  first / steady   {first / steady:8.0f} x")
    print(f"  second Engine, same graph, first call: median {second * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
