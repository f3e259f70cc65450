"""Two scalings in a row (a negation, a product with a splat) recorded as one product when the
product of their numbers is exact (engine/simplify.py, `fold_scales`): derivative graphs lose
their chains of constant factors and give the same values to the last bit (where no
intermediate overflows or underflows)."""

from __future__ import annotations

import numpy as np

import gradserve as gs
import gradserve.numpy as gnp


def ops(graph):
    """The ops a plan of the graph runs (nodes nothing reads do not run)."""
    return [n.op for n in gs.Engine()._one_pass_plan(graph, "evaluate").nodes]


def test_a_negation_of_a_negation_is_the_value():
    graph = gs.trace(lambda x: gnp.negative(-x) + 1.0, np.ones(3))
    assert ops(graph) == ["add"]


def test_power_of_two_factors_fold_into_one_product():
    x = np.array([0.3, -1.7, 2.5e-8, 1e300])
    graph = gs.trace(lambda x: -(100.0 * (2.0 * x)), x)
    assert ops(graph).count("multiply") == 1 and "negative" not in ops(graph)
    # bit for bit what NumPy gives for the unfolded chain
    assert np.array_equal(gs.Engine().evaluate(graph, x), -(100.0 * (2.0 * x)))


def test_factors_whose_product_may_round_are_kept_apart():
    x = np.array([0.1, 0.7, 1.3])
    graph = gs.trace(lambda x: 3.0 * (0.1 * x), x)
    assert ops(graph).count("multiply") == 2
    assert np.array_equal(gs.Engine().evaluate(graph, x), 3.0 * (0.1 * x))


def test_float32_keeps_its_dtype():
    x = np.array([1.5, -2.0], np.float32)
    graph = gs.trace(lambda x: -(4.0 * x), x)
    out = gs.Engine().evaluate(graph, x)
    assert out.dtype == np.float32
    assert np.array_equal(out, -(4.0 * x))


def test_rosenbrock_hvp_has_no_chains_of_factors_and_matches_the_closed_form():
    def rosenbrock(x):
        return gnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    n = 50
    rng = np.random.default_rng(4)
    x, v = rng.uniform(-1.5, 2.0, n), rng.standard_normal(n)
    graph = gs.trace(rosenbrock, x)
    eng = gs.Engine()
    (got,) = eng.hvp(graph, (x,), (v,))
    a, b, va, vb = x[:-1], x[1:], v[:-1], v[1:]
    want = np.zeros(n)
    want[:-1] = (1200 * a * a - 400 * b + 2) * va - 400 * a * vb
    want[1:] += 200 * vb - 400 * a * va
    assert np.allclose(got, want, rtol=1e-12, atol=1e-10)
    (plan,) = [p for k, p in eng._plans.items() if k[1] == "hvp"]
    nodes = {name: node for node in plan.nodes for name in node.outputs}
    for node in plan.nodes:  # no scaling reads another scaling's result
        if node.op == "negative":
            assert all(nodes.get(n) is None or nodes[n].op != "negative" for n in node.inputs)
    assert [n.op for n in plan.nodes].count("negative") <= 1
