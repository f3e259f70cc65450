"""Forward mode through a long loop: memory held and time, against hand-written NumPy forward
mode (README: "Control flow and tape memory").

RNN, 64 units, 2000 steps, written as gs.scan with the loss summed in the carry; a JVP along
a random direction of W, U, h0 and xs. Rows:
- jvp: one scan of the body's JVP, the tangent carry beside the carry (what jvp does);
- stacking jvp: the JVP reverse mode transposes (`transforms.linearizing`): the primal scan
  stacks the body's residuals per step and a second scan reads them (what jvp did before);
- numpy: h and its tangent advanced together by hand, nothing kept.
Memory: `peak_bytes` of the call's schedule over its arguments and tangents, and the peak
tracemalloc sees during one call. Time: each gradserve row interleaved with the NumPy
baseline, call by call; "x numpy" is the median of the per-call ratios.

    OPENBLAS_NUM_THREADS=1 python bench/bench_forward_memory.py [--steps 2000] [--repeat 7]
"""

import argparse
import contextlib
import time
import tracemalloc

import numpy as np
from bench_control_flow import rnn_args, rnn_loss
from gradserve.engine.transforms import linearizing

import gradserve as gs


def numpy_forward(args, tangents):
    """The loss and its directional derivative, h and dh advanced together."""
    (W, U, h, xs), (dW, dU, dh, dxs) = args, tangents
    total, dtotal = 0.0, 0.0
    for x, dx in zip(xs, dxs):
        a = W @ h + U @ x
        da = dW @ h + W @ dh + dU @ x + U @ dx
        h = np.tanh(a)
        dh = (1 - h * h) * da
        total += h @ h
        dtotal += 2 * (h @ dh)
    return total, dtotal


def peak_during(call):
    tracemalloc.start()
    call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def interleaved(fn, baseline, repeat):
    fn(), baseline()
    times, base = [], []
    for _ in range(repeat):
        for run, into in ((fn, times), (baseline, base)):
            start = time.perf_counter()
            run()
            into.append(time.perf_counter() - start)
    return float(np.median(times)), float(np.median(base)), float(np.median(np.divide(times, base)))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    opts = parser.parse_args()
    H, T = opts.hidden, opts.steps
    args = rnn_args(H, T)
    rng = np.random.default_rng(1)
    tangents = tuple(rng.standard_normal(np.shape(a)) for a in args)
    graph = gs.trace(rnn_loss, *args)
    inputs = 2 * sum(a.nbytes for a in args)

    joint, stacking = gs.Engine(), gs.Engine()
    value, tangent = joint.jvp(graph, args, tangents)
    with linearizing():  # the plan is built (and cached) here: calls later run it
        stacked = stacking.jvp(graph, args, tangents)
    by_hand = numpy_forward(args, tangents)
    assert np.allclose([value, tangent], by_hand, rtol=1e-9), "gradserve and NumPy disagree"
    same = all(np.array_equal(a, b) for a, b in zip((value, tangent), stacked))

    def numpy_call():
        numpy_forward(args, tangents)

    print(f"RNN {H} units, {T} steps; JVP along W, U, h0 and xs")
    print(
        f"{'run':<14}{'median ms':>10}{'numpy ms':>10}{'x numpy':>9}{'tape':>6}"
        f"{'peak over args':>16}{'tracemalloc peak':>18}"
    )
    print(f"{'numpy':<14}{'':>10}{'':>10}{'':>9}{0:>6}{'-':>16}{peak_during(numpy_call):>18}")
    for name, engine in (("jvp", joint), ("stacking jvp", stacking)):

        def call(engine=engine):
            with linearizing() if engine is stacking else contextlib.nullcontext():
                engine.jvp(graph, args, tangents)

        seconds, numpy_seconds, ratio = interleaved(call, numpy_call, opts.repeat)
        peak = peak_during(call)
        stats = engine.last_stats
        print(
            f"{name:<14}{seconds * 1e3:>10.1f}{numpy_seconds * 1e3:>10.1f}{ratio:>9.2f}"
            f"{stats.tape_bytes:>6}{stats.peak_bytes - inputs:>16}{peak:>18}"
        )
    print(f"jvp and stacking jvp: {'bit for bit' if same else 'DIFFER'}")
    print(f"one step's h and tanh output, for scale: {2 * H * 8} bytes; x steps: {2 * H * 8 * T}")


if __name__ == "__main__":
    main()
