"""W1 (bench/README.md: a chain of 2000 scalar ops, value and gradient) through
`gs.value_and_grad(fun)` on a cached signature, against the graph call it wraps:
`Engine.value_and_grad(gs.trace(fun, x0), x0)`. Prints both medians and their ratio.

    python bench/bench_functions.py            # ~2 s of timing per entry
    python bench/bench_functions.py --quick
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import gc
import statistics
import time

import numpy as np
from bench_engine import W1_X0, w1_chain

import gradserve as gs
import gradserve.numpy as gnp


def median_seconds(call, budget: float) -> float:
    """Median of repeated calls (after warm-up, garbage collector off while timing)."""
    for _ in range(5):
        call()
    times = []
    gc.disable()
    try:
        end = time.perf_counter() + budget
        while time.perf_counter() < end or len(times) < 20:
            start = time.perf_counter()
            call()
            times.append(time.perf_counter() - start)
    finally:
        gc.enable()
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter timing budget")
    args = parser.parse_args()
    budget = 0.5 if args.quick else 2.0

    chain = w1_chain(gnp)
    engine = gs.Engine()
    graph = gs.trace(chain, W1_X0)
    transformed = gs.value_and_grad(chain, backend=engine)

    direct = engine.value_and_grad(graph, W1_X0)
    wrapped = transformed(W1_X0)
    assert np.allclose(direct[0], wrapped[0]) and np.allclose(direct[1], wrapped[1])

    # interleave the two, twice, so that drift of the machine affects both alike
    graph_times, function_times = [], []
    for _ in range(2):
        graph_times.append(median_seconds(lambda: engine.value_and_grad(graph, W1_X0), budget))
        function_times.append(median_seconds(lambda: transformed(W1_X0), budget))
    t_graph, t_function = min(graph_times), min(function_times)
    print(f"W1 value_and_grad, {len(graph.nodes)} nodes")
    print(f"  Engine.value_and_grad(graph, x)     median {t_graph * 1e6:9.1f} us")
    print(f"  gs.value_and_grad(fun)(x), cached   median {t_function * 1e6:9.1f} us")
    print(f"  ratio                               {t_function / t_graph:9.3f}x")


if __name__ == "__main__":
    main()
