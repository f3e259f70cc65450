"""Four ways to a derivative (by hand, numerically, symbolically, automatically), measured:
the numbers, table and plots of docs/four-ways.md.

    python examples/four_ways.py --out docs

prints the tables (Markdown) and writes DIR/four_ways_steps.png (finite-difference error
against the step) and DIR/four_ways_swell.png (expression size against composition depth).
Needs SymPy (the `symbolic` extra) and, for the plots, matplotlib (the `examples` extra).

The reference ("exact") derivatives are computed at 50 significant digits with mpmath (which
SymPy installs): from the hand-written derivative for the seed function, by mpmath's own
high-precision differentiation for the chain. Times are the best of several runs of a warm
engine (its plans compiled); the symbolic time is one run with SymPy's cache cleared.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import mpmath
import numpy as np
import sympy
from gradserve.engine.numerical import default_step

import gradserve as gs
import gradserve.numpy as gnp

POINT = (2.0, 5.0)
NUMERICAL = (  # (row label, method, richardson)
    ("forward differences", "forward", False),
    ("central differences", "central", False),
    ("complex step", "complex", False),
    ("Richardson (central at h, h/2, h/4)", "central", True),
)


def seed(x1, x2):
    return gnp.log(x1) + x1 * x2 - gnp.sin(x2)


def by_hand(x1, x2, lib=math):
    """The derivative written out: d/dx1 = 1/x1 + x2, d/dx2 = x1 - cos(x2)."""
    return (1 / x1 + x2, x1 - lib.cos(x2))


def chain(*x):
    """A repeated composition that uses its running value twice per step (so its expression
    tree doubles with every step while the graph grows by four nodes): one input per step."""
    y = x[0]
    for xi in x[1:]:
        y = gnp.sin(y) * xi + gnp.cos(y)
    return y


def chain_mp(*x):
    y = x[0]
    for xi in x[1:]:
        y = mpmath.sin(y) * xi + mpmath.cos(y)
    return y


def chain_point(n):
    return tuple(0.5 + 0.4 * math.sin(1.0 + i) for i in range(n))


def exact_chain_gradient(point):
    with mpmath.workdps(50):
        n = len(point)
        x = [mpmath.mpf(v) for v in point]
        return tuple(
            float(mpmath.diff(chain_mp, x, tuple(int(j == i) for j in range(n)))) for i in range(n)
        )


def exact_seed_gradient(x1, x2):
    with mpmath.workdps(50):
        return tuple(float(g) for g in by_hand(mpmath.mpf(x1), mpmath.mpf(x2), lib=mpmath))


def best_time(fn, repeats):
    fn()  # warm: compile the engine's plans
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def symbolic_gradient(graph):
    """(seconds, the simplified derivatives, lambdified, their SymPy op count), SymPy's
    cache cleared first so the time is that of the work."""
    sympy.core.cache.clear_cache()
    start = time.perf_counter()
    derivatives = [gs.symbolic_derivative(graph, wrt=i) for i in range(len(graph.inputs))]
    seconds = time.perf_counter() - start
    symbols = [sympy.Symbol(name, real=True) for name in graph.input_names]
    fns = [sympy.lambdify(symbols, d, "math") for d in derivatives]
    return seconds, derivatives, fns, sum(sympy.count_ops(d) for d in derivatives)


def _seconds(s):
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.0f} µs"


def _error(got, exact):
    return max(abs(float(g) - e) for g, e in zip(got, exact))


def _evaluations(method, richardson, n):
    if richardson:
        return f"{6 * n} evaluations of f"
    return {
        "forward": f"{n + 1} evaluations of f",
        "central": f"{2 * n} evaluations of f",
        "complex": f"{n} evaluations of f (complex)",
    }[method]


def gradient_rows(graph, point, exact, repeats=5, symbolic=True, hand=None):
    """One row per way: label, the gradient, its error, the work, the time, the size."""
    n = len(point)
    tree, nodes = gs.expression_size(graph)
    rows = []
    if hand is not None:
        grad = hand(*point)
        rows.append(("by hand", grad, _error(grad, exact), "the derivative written out", None, "—"))
    for label, method, richardson in NUMERICAL:

        def run(method=method, richardson=richardson):
            return gs.numeric_grad(graph, *point, method=method, richardson=richardson)

        grad = run()
        rows.append(
            (
                label,
                grad,
                _error(grad, exact),
                _evaluations(method, richardson, n),
                best_time(run, repeats),
                f"graph: {nodes} nodes",
            )
        )
    if symbolic:
        seconds, _, fns, ops = symbolic_gradient(graph)
        grad = tuple(fn(*point) for fn in fns)
        rows.append(
            (
                "symbolic (SymPy: diff, simplify)",
                grad,
                _error(grad, exact),
                f"{n} derivative expression(s)",
                seconds,
                f"tree of f: {tree} nodes; derivatives: {ops} ops",
            )
        )
    engine = gs.Engine()
    argnums = tuple(range(n))

    def run():
        return engine.grad(graph, *point, argnums=argnums)

    grad = run()
    rows.append(
        (
            "automatic (reverse mode, `Engine.grad`)",
            grad,
            _error(grad, exact),
            "1 forward + 1 reverse pass",
            best_time(run, repeats),
            f"graph: {nodes} nodes",
        )
    )
    return rows


def seed_table(repeats=5) -> str:
    graph = gs.trace(seed, *POINT)
    exact = exact_seed_gradient(*POINT)
    rows = gradient_rows(graph, POINT, exact, repeats, hand=by_hand)
    lines = [
        "| way | ∂f/∂x1 | ∂f/∂x2 | max abs error | work | time | size |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, grad, err, work, seconds, size in rows:
        lines.append(
            f"| {label} | {float(grad[0]):.16g} | {float(grad[1]):.16g} | {err:.1e} | {work}"
            f" | {'—' if seconds is None else _seconds(seconds)} | {size} |"
        )
    return "\n".join(lines)


def chain_table(n=4, repeats=5, symbolic=True) -> str:
    point = chain_point(n)
    graph = gs.trace(chain, *point)
    exact = exact_chain_gradient(point)
    rows = gradient_rows(graph, point, exact, repeats, symbolic=symbolic)
    lines = ["| way | max abs error | work | time | size |", "|---|---|---|---|---|"]
    for label, _, err, work, seconds, size in rows:
        lines.append(f"| {label} | {err:.1e} | {work} | {_seconds(seconds)} | {size} |")
    return "\n".join(lines)


def growth_table(depths=(1, 2, 3, 4, 8, 16, 32, 64), symbolic_upto=3, repeats=3) -> str:
    """The chain at growing depth (inputs = depth + 1): sizes, and the time of the symbolic,
    the central-difference and the reverse-mode gradient."""
    engine = gs.Engine()
    lines = [
        "| depth | inputs | graph nodes | tree nodes | symbolic | central differences | reverse mode |",
        "|---|---|---|---|---|---|---|",
    ]
    for depth in depths:
        point = chain_point(depth + 1)
        graph = gs.trace(chain, *point)
        tree, nodes = gs.expression_size(graph)
        symbolic = _seconds(symbolic_gradient(graph)[0]) if depth <= symbolic_upto else "—"
        central = best_time(lambda: gs.numeric_grad(graph, *point), repeats)
        argnums = tuple(range(len(point)))
        reverse = best_time(lambda: engine.grad(graph, *point, argnums=argnums), repeats)
        lines.append(
            f"| {depth} | {len(point)} | {nodes} | {tree:,} | {symbolic} | {_seconds(central)}"
            f" | {_seconds(reverse)} |"
        )
    return "\n".join(lines)


def tables(chain_inputs=4, depths=(1, 2, 3, 4, 8, 16, 32, 64), symbolic_upto=3, repeats=5):
    """The page's three tables, as Markdown."""
    return "\n\n".join(
        [
            f"**The seed function at {POINT}**\n\n" + seed_table(repeats),
            f"**The chain with {chain_inputs} inputs**\n\n" + chain_table(chain_inputs, repeats),
            "**The chain as it grows**\n\n" + growth_table(depths, symbolic_upto, repeats),
        ]
    )


def step_errors(steps):
    """{label: errors of ∂f/∂x2 of the seed at POINT, one per relative step}."""
    graph = gs.trace(seed, *POINT)
    exact = exact_seed_gradient(*POINT)[1]
    out = {}
    for label, method, richardson in NUMERICAL:
        out[label] = np.array(
            [
                abs(
                    float(
                        gs.numeric_grad(
                            graph, *POINT, method=method, step=s, richardson=richardson
                        )[1]
                    )
                    - exact
                )
                for s in steps
            ]
        )
    return out


def plot_steps(path, steps=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.logspace(-16, 0, 97) if steps is None else steps
    h = steps * max(1.0, abs(POINT[1]))  # the step taken along x2
    floor = 1e-17  # an error of exactly 0 drawn here, on the log scale
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = {
        "forward differences": "C0",
        "central differences": "C1",
        "complex step": "C2",
        "Richardson (central at h, h/2, h/4)": "C3",
    }
    for label, errors in step_errors(steps).items():
        ax.loglog(h, np.maximum(errors, floor), label=label, color=styles[label], lw=1.4)
    eps = np.finfo(float).eps
    for (_, method, richardson), color in zip(NUMERICAL, styles.values()):
        if method == "complex":
            continue
        h0 = default_step(method, richardson, eps) * max(1.0, POINT[1])
        ax.axvline(h0, color=color, ls=":", lw=1)
    ax.set_xlabel("step h along x2 (dotted: the default steps)")
    ax.set_ylabel("|error| of ∂f/∂x2 at (2, 5) (0 drawn at 1e-17)")
    ax.set_title("f = ln(x1) + x1·x2 − sin(x2): truncation (right) against round-off (left)")
    ax.set_ylim(floor / 2, 10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_swell(path, depths=range(1, 41)):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [gs.expression_size(gs.trace(chain, *chain_point(d + 1))) for d in depths]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    ax.semilogy(list(depths), [t for t, _ in sizes], "o-", ms=3, label="expression tree nodes")
    ax.semilogy(list(depths), [g for _, g in sizes], "s-", ms=3, label="graph nodes")
    ax.set_xlabel("depth of the composition y ← sin(y)·xᵢ + cos(y)")
    ax.set_ylabel("nodes (log scale)")
    ax.set_title("Expression swell: the tree doubles per step, the graph adds four nodes")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=".", help="directory for the two PNGs (default .)")
    parser.add_argument("--no-plots", action="store_true", help="print the tables only")
    opts = parser.parse_args(argv)
    print(tables())
    if not opts.no_plots:
        out = Path(opts.out)
        out.mkdir(parents=True, exist_ok=True)
        plot_steps(out / "four_ways_steps.png")
        plot_swell(out / "four_ways_swell.png")
        print(f"\nwrote {out / 'four_ways_steps.png'} and {out / 'four_ways_swell.png'}")


if __name__ == "__main__":
    main()
