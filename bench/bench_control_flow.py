"""Reverse mode through a loop: stored residuals, recomputation, tape budgets (README: "Control
flow and tape memory").

RNN, 64 units, 2000 steps, written as gs.scan with the loss summed in the carry; gradient
with respect to the weights, the inputs and the initial state, against a hand-written NumPy
backprop through time (which keeps h_t of every step). Rows:
- plain: the default, the scan keeps its body's residuals per step;
- recompute: the scan keeps only the carry entering each step and its reverse pass evaluates
  the body again (what `recomputing()` forces; a second-order program under a budget its
  residuals would pass runs so);
- budget 1/k: max_tape_bytes = plain's tape / k, met with a checkpointing loop tape.
Then the same RNN as a while_loop, whose loop tape keeps per iteration the body's residuals
and the carry it gives (residuals), or the carry entering it (recompute).
Every gradserve row is timed interleaved with the NumPy baseline, call by call, so that load
from other processes hits both alike; "x numpy" is the median of those per-call ratios, and
"x plain" a row's x numpy over plain's.

With --profile, also a cProfile of three plain gradient calls, by own time (where the rest of
the gap to NumPy goes).

    OPENBLAS_NUM_THREADS=1 python bench/bench_control_flow.py [--steps 2000] [--repeat 7] [--profile]
"""

import argparse
import contextlib
import cProfile
import pstats
import time

import numpy as np
from gradserve.engine.ops.loops import recomputing

import gradserve as gs
import gradserve.numpy as gnp


def rnn_loss(W, U, h0, xs):
    def step(carry, x):
        h, total = carry
        h = gnp.tanh(W @ h + U @ x)
        return (h, total + gnp.sum(h * h)), ()

    (_, total), _ = gs.scan(step, (h0, 0.0), xs)
    return total


def rnn_args(hidden: int, steps: int, seed: int = 0) -> tuple:
    """W, U, h0 and the inputs xs (steps x 8) of the benchmark RNN."""
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((hidden, hidden)) / np.sqrt(hidden),
        rng.standard_normal((hidden, 8)) / np.sqrt(8),
        rng.standard_normal(hidden) * 0.1,
        rng.standard_normal((steps, 8)),
    )


def numpy_bptt(W, U, h0, xs):
    hs = [h0]
    for x in xs:
        hs.append(np.tanh(W @ hs[-1] + U @ x))
    loss = sum(float(h @ h) for h in hs[1:])
    gW, gU, gx = np.zeros_like(W), np.zeros_like(U), np.zeros_like(xs)
    gh = np.zeros_like(h0)
    for t in range(len(xs), 0, -1):
        gh = gh + 2 * hs[t]
        ga = gh * (1 - hs[t] ** 2)
        gW += np.outer(ga, hs[t - 1])
        gU += np.outer(ga, xs[t - 1])
        gx[t - 1] = U.T @ ga
        gh = W.T @ ga
    return loss, (gW, gU, gh, gx)


def interleaved(fn, baseline, repeat):
    """Median seconds of `fn` and of `baseline`, called alternately, and the median of the
    per-round ratios fn / baseline."""
    fn(), baseline()  # warm: plans compiled, caches filled
    times, base = [], []
    for _ in range(repeat):
        for run, into in ((fn, times), (baseline, base)):
            start = time.perf_counter()
            run()
            into.append(time.perf_counter() - start)
    ratios = np.array(times) / np.array(base)
    return float(np.median(times)), float(np.median(base)), float(np.median(ratios))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--profile", action="store_true")
    opts = parser.parse_args()
    H, T = opts.hidden, opts.steps
    args = rnn_args(H, T)
    graph = gs.trace(rnn_loss, *args)
    argnums = (0, 1, 2, 3)
    hand_tape = (T + 1) * H * 8  # hs: h_0 .. h_T

    plain = gs.Engine()
    reference = plain.grad(graph, *args, argnums=argnums)
    _, by_hand = numpy_bptt(*args)
    for a, b in zip(reference, by_hand):
        assert np.allclose(a, b, rtol=1e-9, atol=1e-12), "gradserve and NumPy BPTT disagree"
    plain_tape = plain.last_stats.tape_bytes

    def numpy_call():
        numpy_bptt(*args)

    same_mode = contextlib.nullcontext
    rows = [("plain", plain, None, same_mode), ("recompute", gs.Engine(), None, recomputing)]
    for fraction in (4, 20, 100):
        budget = plain_tape // fraction
        rows.append((f"budget 1/{fraction}", gs.Engine(max_tape_bytes=budget), budget, same_mode))

    print(f"RNN {H} units, {T} steps; gradient w.r.t. W, U, h0 and xs")
    print(
        f"{'run':<14}{'median ms':>10}{'numpy ms':>10}{'x numpy':>9}{'x plain':>9}{'tape bytes':>12}"
        f"{'x hand':>8}{'budget':>10}{'recomputed ops':>16}  same gradient"
    )
    print(f"{'numpy BPTT':<14}{'':>10}{'':>10}{'':>9}{'':>9}{hand_tape:>12}{1:>8.2f}")
    plain_ratio = None
    for name, engine, budget, mode in rows:

        def call(engine=engine, mode=mode):
            with mode():  # recomputing() is in effect when the call is made
                return engine.grad(graph, *args, argnums=argnums)

        grads = call()
        same = all(np.array_equal(a, b) for a, b in zip(grads, reference))
        seconds, numpy_seconds, ratio = interleaved(call, numpy_call, opts.repeat)
        stats = engine.last_stats
        plain_ratio = plain_ratio or ratio
        print(
            f"{name:<14}{seconds * 1e3:>10.1f}{numpy_seconds * 1e3:>10.1f}{ratio:>9.2f}"
            f"{ratio / plain_ratio:>9.2f}"
            f"{stats.tape_bytes:>12}{stats.tape_bytes / hand_tape:>8.2f}"
            f"{'-' if budget is None else budget:>10}{stats.recomputed_ops:>16}"
            f"  {'-' if name == 'plain' else 'bit for bit' if same else 'DIFFERS'}"
        )
        if name == "plain":
            print(
                f"{'':<14}target: plain <= 1.5x numpy: {'met' if ratio <= 1.5 else 'missed'}; "
                f"tape <= hand-written's: {'met' if stats.tape_bytes <= hand_tape else 'missed'}"
            )
        if name == "budget 1/20":
            met = ratio / plain_ratio <= 3
            print(f"{'':<14}target: 1/20 budget <= 3x plain time: {'met' if met else 'missed'}")

    while_rows(args, numpy_call, opts.repeat)

    if opts.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(3):
            plain.grad(graph, *args, argnums=argnums)
        profiler.disable()
        print("\ncProfile of 3 plain gradient calls (own time):")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def while_rnn_loss(W, U, h0, xs, n):
    """The same RNN as a while_loop over the first n rows (a trip count known at run time)."""

    def step(c):
        h, total, i = c
        h = gnp.tanh(W @ h + U @ xs[i])
        return h, total + gnp.sum(h * h), i + 1

    return gs.while_loop(lambda c: c[2] < n, step, (h0, 0.0, 0))[1]


def while_rows(args, numpy_call, repeat):
    """The RNN as a while_loop: its loop tape keeps the body's residuals per iteration (the
    default) or the carry entering each one, the body evaluated again (`recomputing()`)."""
    n = np.int64(args[3].shape[0])
    graph = gs.trace(while_rnn_loss, *args, n)
    argnums = (0, 1, 2, 3)
    print("\nThe same RNN as a while_loop (trip count from the data)")
    reference = None
    for name, mode in (("residuals", contextlib.nullcontext), ("recompute", recomputing)):
        engine = gs.Engine()

        def call(engine=engine, mode=mode):
            with mode():
                return engine.grad(graph, *args, n, argnums=argnums)

        grads = call()
        reference = reference or grads
        same = all(np.array_equal(a, b) for a, b in zip(grads, reference))
        seconds, numpy_seconds, ratio = interleaved(call, numpy_call, repeat)
        print(
            f"{name:<14}{seconds * 1e3:>10.1f}{numpy_seconds * 1e3:>10.1f}{ratio:>9.2f}"
            f"{'':>9}{engine.last_stats.tape_bytes:>12}"
            f"  {'-' if name == 'residuals' else 'bit for bit' if same else 'DIFFERS'}"
        )


if __name__ == "__main__":
    main()
