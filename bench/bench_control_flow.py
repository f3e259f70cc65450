"""Reverse mode through a loop under a tape budget (README: "Control flow and tape memory").

RNN, 64 units, 2000 steps, written as gs.scan with the loss summed in the carry; gradient
with respect to the weights, the inputs and the initial state. Prints median time and tape of
the plain gradient and under budgets of 1/4, 1/20 and 1/100 of its tape, with ratios, and a
hand-written NumPy backprop through time as the baseline.

    OPENBLAS_NUM_THREADS=1 python bench/bench_control_flow.py [--steps 2000] [--repeat 5]
"""

import argparse
import time

import numpy as np

import gradserve as gs
import gradserve.numpy as gnp


def rnn_loss(W, U, h0, xs):
    def step(carry, x):
        h, total = carry
        h = gnp.tanh(W @ h + U @ x)
        return (h, total + gnp.sum(h * h)), ()

    (_, total), _ = gs.scan(step, (h0, 0.0), xs)
    return total


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


def median_seconds(fn, repeat):
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    opts = parser.parse_args()
    rng = np.random.default_rng(0)
    H, T = opts.hidden, opts.steps
    args = (
        rng.standard_normal((H, H)) / np.sqrt(H),
        rng.standard_normal((H, 8)) / np.sqrt(8),
        rng.standard_normal(H) * 0.1,
        rng.standard_normal((T, 8)),
    )
    graph = gs.trace(rnn_loss, *args)
    argnums = (0, 1, 2, 3)

    plain = gs.Engine()
    reference = plain.grad(graph, *args, argnums=argnums)
    _, by_hand = numpy_bptt(*args)
    for a, b in zip(reference, by_hand):
        assert np.allclose(a, b, rtol=1e-9, atol=1e-12), "gradserve and NumPy BPTT disagree"
    plain_time = median_seconds(lambda: plain.grad(graph, *args, argnums=argnums), opts.repeat)
    plain_tape = plain.last_stats.tape_bytes
    numpy_time = median_seconds(lambda: numpy_bptt(*args), opts.repeat)

    print(f"RNN {H} units, {T} steps; gradient w.r.t. W, U, h0 and xs")
    print(
        f"{'run':<18}{'median ms':>11}{'x plain':>9}{'x numpy':>9}{'tape bytes':>12}"
        f"{'budget':>11}{'recomputed ops':>16}  same gradient"
    )
    print(f"{'numpy BPTT':<18}{numpy_time * 1e3:>11.1f}{numpy_time / plain_time:>9.2f}{1:>9.2f}")
    print(
        f"{'plain':<18}{plain_time * 1e3:>11.1f}{1:>9.2f}{plain_time / numpy_time:>9.2f}"
        f"{plain_tape:>12}{'-':>11}{0:>16}  -"
    )
    for fraction in (4, 20, 100):
        budget = plain_tape // fraction
        engine = gs.Engine(max_tape_bytes=budget)
        grads = engine.grad(graph, *args, argnums=argnums)
        same = all(np.array_equal(a, b) for a, b in zip(grads, reference))
        seconds = median_seconds(lambda: engine.grad(graph, *args, argnums=argnums), opts.repeat)
        stats = engine.last_stats
        print(
            f"{'budget 1/' + str(fraction):<18}{seconds * 1e3:>11.1f}{seconds / plain_time:>9.2f}"
            f"{seconds / numpy_time:>9.2f}{stats.tape_bytes:>12}{budget:>11}"
            f"{stats.recomputed_ops:>16}  {'bit for bit' if same else 'DIFFERS'}"
        )
        if fraction == 20:
            print(
                f"{'':<18}target: 1/20 budget <= 3x plain time: "
                f"{'met' if seconds / plain_time <= 3 else 'missed'}"
            )


if __name__ == "__main__":
    main()
