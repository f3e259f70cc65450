"""The four ways to a derivative: gs.numeric_grad (finite differences, the complex step,
Richardson extrapolation) behind check_grad; gs.to_sympy, gs.symbolic_derivative and
gs.expression_size; and examples/four_ways.py, which makes docs/four-ways.md's numbers."""

from __future__ import annotations

import doctest
import importlib.util
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy

import gradserve as gs
import gradserve.numpy as gnp

ROOT = Path(__file__).resolve().parent.parent
ENG = gs.Engine()


def seed(x1, x2):
    return gnp.log(x1) + x1 * x2 - gnp.sin(x2)


SEED = gs.trace(seed, 2.0, 5.0)
SEED_GRAD = (1 / 2.0 + 5.0, 2.0 - math.cos(5.0))


# ---- numeric_grad ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, richardson, tolerance",
    [
        ("forward", False, 1e-6),
        ("central", False, 1e-9),
        ("complex", False, 1e-15),
        ("central", True, 1e-12),
        ("forward", True, 1e-9),
    ],
)
def test_numeric_grad_matches_the_gradient(method, richardson, tolerance):
    d1, d2 = gs.numeric_grad(SEED, 2.0, 5.0, method=method, richardson=richardson)
    assert abs(float(d1) - SEED_GRAD[0]) < tolerance
    assert abs(float(d2) - SEED_GRAD[1]) < tolerance
    graph = gs.trace(lambda x, y: gnp.sum(gnp.exp(gnp.sin(x)) * y), np.ones(5), np.ones(5))
    x, y = np.linspace(-1, 2, 5), np.linspace(0.5, 1.5, 5)
    got = gs.numeric_grad(graph, x, y, method=method, richardson=richardson)
    want = ENG.grad(graph, x, y, argnums=(0, 1))
    for g, w in zip(got, want):
        assert g.shape == w.shape == (5,)
        np.testing.assert_allclose(g, w, rtol=0, atol=tolerance * 10)


def test_numeric_grad_one_float_input_gives_an_array_several_a_tuple():
    one = gs.trace(lambda x: gnp.sum(x**3), np.ones(3))
    got = gs.numeric_grad(one, np.arange(3.0), method="complex")
    assert isinstance(got, np.ndarray) and got.shape == (3,)
    np.testing.assert_allclose(got, 3 * np.arange(3.0) ** 2, atol=1e-30)
    # the int input is held fixed, and not in the result
    with_index = gs.trace(lambda x, i: x[i] ** 2, np.ones(3), np.int64(0))
    got = gs.numeric_grad(with_index, np.arange(3.0), np.int64(2), method="complex")
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, [0.0, 0.0, 4.0])
    assert isinstance(gs.numeric_grad(SEED, 2.0, 5.0), tuple)
    float32 = gs.trace(lambda x: gnp.sum(gnp.sin(x)), np.ones(2, np.float32))
    got = gs.numeric_grad(float32, np.array([0.1, 0.2], np.float32))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.cos([0.1, 0.2]), rtol=1e-3)


def test_numeric_grad_step_changes_the_error_as_theory_says():
    exact = SEED_GRAD[1]

    def error(**kw):
        return abs(float(gs.numeric_grad(SEED, 2.0, 5.0, **kw)[1]) - exact)

    # forward's error is O(h), central's O(h^2): ten times the step, ten (a hundred) times
    assert 5 < error(method="forward", step=1e-3) / error(method="forward", step=1e-4) < 20
    assert 50 < error(method="central", step=1e-2) / error(method="central", step=1e-3) < 200
    # Richardson's O(h^6)
    assert 1e4 < error(richardson=True, step=0.2) / error(richardson=True, step=0.04) < 1e5
    # the complex step does not care
    assert error(method="complex", step=1e-100) == error(method="complex") == 0.0


def test_richardson_beats_central_differences_by_orders_of_magnitude():
    graph = gs.trace(lambda x: gnp.sum(gnp.exp(gnp.sin(x)) * gnp.cos(x) * x), np.ones(8))
    x = np.linspace(-2.0, 3.0, 8)
    exact = ENG.grad(graph, x)
    assert np.allclose(exact, gs.numeric_grad(graph, x, method="complex"), rtol=0, atol=1e-14)
    central = np.max(np.abs(gs.numeric_grad(graph, x) - exact))
    richardson = np.max(np.abs(gs.numeric_grad(graph, x, richardson=True) - exact))
    assert central > 1e-11  # central differences' error at their best step
    assert richardson * 100 < central  # two orders of magnitude at least
    assert richardson < 1e-12


def test_numeric_grad_refuses_bad_arguments():
    with pytest.raises(ValueError, match="method"):
        gs.numeric_grad(SEED, 2.0, 5.0, method="richardson")  # numeric_grad: richardson=True
    with pytest.raises(ValueError, match="complex"):
        gs.numeric_grad(SEED, 2.0, 5.0, method="complex", richardson=True)
    for step in (0.0, -1e-3, math.inf, math.nan):
        with pytest.raises(ValueError, match="step"):
            gs.numeric_grad(SEED, 2.0, 5.0, step=step)
    with pytest.raises(TypeError, match="step"):
        gs.numeric_grad(SEED, 2.0, 5.0, step="1e-3")
    with pytest.raises(TypeError, match="richardson"):
        gs.numeric_grad(SEED, 2.0, 5.0, richardson="yes")
    with pytest.raises(TypeError, match="one real scalar output"):
        gs.numeric_grad(gs.trace(lambda x: x * 2, np.ones(2)), np.ones(2))
    with pytest.raises(TypeError, match="floating-point input"):
        gs.numeric_grad(gs.trace(lambda i: i * 2.0, np.int64(1)), np.int64(1))
    with pytest.raises(TypeError, match="gs.Engine"):
        gs.numeric_grad(SEED, 2.0, 5.0, engine=object())


def test_check_grad_reports_what_numeric_grad_computes():
    graph = gs.trace(lambda x, y: gnp.sum(gnp.tanh(x) * y**2), np.ones(3), np.ones(3))
    x, y = np.array([0.3, -1.0, 2.0]), np.array([1.5, 0.2, -0.7])
    for method in ("forward", "central", "complex"):
        report = ENG.check_grad(graph, x, y, method=method)
        want = gs.numeric_grad(graph, x, y, method=method, engine=ENG)
        for got, w in zip(report.numeric, want):
            np.testing.assert_array_equal(got, w)
    report = ENG.check_grad(graph, x, y, method="richardson")
    want = gs.numeric_grad(graph, x, y, richardson=True)
    for got, w in zip(report.numeric, want):
        np.testing.assert_array_equal(got, w)


def test_check_grad_richardson_in_process_and_over_the_wire(remote):
    graph = gs.trace(lambda x: gnp.sum(gnp.exp(gnp.sin(x)) * x), np.ones(3))
    x = np.array([0.3, 1.7, -2.2])
    for backend in (ENG, remote):
        reports = {
            m: backend.check_grad(graph, x, method=m)
            for m in ("forward", "central", "complex", "richardson")
        }
        assert all(r.ok for r in reports.values())
        assert reports["richardson"].method == "richardson"
        assert reports["richardson"].max_abs_error * 100 < reports["central"].max_abs_error
        with pytest.raises(ValueError, match="richardson"):
            backend.check_grad(graph, x, method="extrapolated")
    local = ENG.check_grad(graph, x, method="richardson")
    wire = remote.check_grad(graph, x, method="richardson")
    np.testing.assert_array_equal(local.numeric[0], wire.numeric[0])
    assert ENG.plan_stats(graph, "check_grad", check_method="richardson").peak_bytes > 0


@pytest.mark.parametrize("method", ["richardson"])
def test_check_grad_richardson_flags_a_wrong_gradient_and_singular_points(method):
    graph = gs.trace(lambda x: gnp.sqrt(x), 1.0)
    assert not ENG.check_grad(graph, -1.0, method=method).ok
    assert ENG.check_grad(graph, 2.0, method=method).ok
    # large higher derivatives: sin(x e^x) at 2
    report = ENG.check_grad(gs.trace(lambda x: gnp.sin(gnp.exp(x) * x), 1.0), 2.0, method=method)
    assert report.ok and report.max_rel_error < 1e-6


# ---- to_sympy, symbolic_derivative ---------------------------------------------------------------


def test_to_sympy_of_the_seed_and_its_derivative():
    x1, x2 = sympy.symbols("x1 x2", real=True)
    assert gs.to_sympy(SEED) == sympy.log(x1) + x1 * x2 - sympy.sin(x2)
    assert gs.symbolic_derivative(SEED, wrt=0) == 1 / x1 + x2
    assert gs.symbolic_derivative(SEED, wrt="x2") == x1 - sympy.cos(x2)
    assert gs.symbolic_derivative(SEED, wrt=-1) == x1 - sympy.cos(x2)


def test_derivative_of_xy_plus_6_is_y():
    graph = gs.trace(lambda x, y: x * y + 6, 2.0, 5.0)
    assert gs.symbolic_derivative(graph) == sympy.Symbol("y", real=True)
    assert gs.to_sympy(graph) - 6 == sympy.Symbol("x", real=True) * sympy.Symbol("y", real=True)


def many_ops(x, y):
    return (
        gnp.exp(x) * gnp.log1p(y**2) / (1 + gnp.square(y))
        - gnp.expm1(x * 0.5)
        + gnp.sqrt(gnp.abs(x) + 1) * gnp.tanh(y)
        + gnp.arctan(x) * gnp.sinh(y) / gnp.cosh(x)
        + gnp.tan(x / 4)
        + gnp.arcsin(gnp.sin(y) / 2)
        + gnp.arccos(x / 5)
        + gnp.maximum(x, y) * gnp.minimum(x, 2 * y)
        + gnp.where(x > y, x**3, -y)
        + gnp.logaddexp(x, y)
        + (-x) ** 2
        + gnp.power(gnp.abs(y) + 1, x)
        + gnp.sign(y) * x
    )


def test_symbolic_derivative_agrees_with_the_engine_at_random_points():
    graph = gs.trace(many_ops, 0.5, 0.7)
    x, y = sympy.symbols("x y", real=True)
    expr = gs.to_sympy(graph)

    def derivative(symbol):  # sign's derivative is DiracDelta: 0 away from 0
        d = sympy.diff(expr, symbol).replace(sympy.DiracDelta, lambda *a: sympy.S.Zero)
        return sympy.lambdify((x, y), d, "numpy")

    value = sympy.lambdify((x, y), expr, "numpy")
    dx, dy = derivative(x), derivative(y)
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.uniform(-2, 2, 2)
        if abs(a - b) < 1e-3 or abs(a - 2 * b) < 1e-3 or abs(b) < 1e-3:
            continue  # ties and kinks
        got_value, (ga, gb) = ENG.value_and_grad(graph, a, b, argnums=(0, 1))
        assert value(a, b) == pytest.approx(float(got_value), rel=1e-12)
        assert dx(a, b) == pytest.approx(float(ga), rel=1e-10, abs=1e-12)
        assert dy(a, b) == pytest.approx(float(gb), rel=1e-10, abs=1e-12)


def test_symbolic_derivative_simplifies_and_matches_the_engine():
    graph = gs.trace(
        lambda x, y: gnp.sin(x) ** 2 + gnp.cos(x) ** 2 + x * gnp.exp(y) / gnp.exp(y), 0.3, 0.4
    )
    assert gs.symbolic_derivative(graph, "x") == 1
    assert gs.symbolic_derivative(graph, "y") == 0
    graph = gs.trace(lambda x, y: gnp.exp(x * y) * gnp.cos(x + y), 0.3, 0.4)
    d = sympy.lambdify(sympy.symbols("x y", real=True), gs.symbolic_derivative(graph, 1))
    for a, b in [(0.3, 0.4), (-1.2, 2.0), (3.0, -0.5)]:
        assert d(a, b) == pytest.approx(float(ENG.grad(graph, a, b, argnums=1)), rel=1e-12)


def test_to_sympy_constants_comparisons_and_conversions():
    graph = gs.trace(
        lambda x, i, b: (
            gnp.where(gnp.logical_and(x > 0, b), x**0.5, 0.1 * x) + i + x.astype(np.float32)
        ),
        2.0,
        np.int64(3),
        np.True_,
    )
    expr = gs.to_sympy(graph)
    x, i, b = sympy.Symbol("x", real=True), sympy.Symbol("i", integer=True), sympy.Symbol("b")
    assert expr.has(sympy.Piecewise) and expr.free_symbols == {x, i, b}
    assert sympy.sqrt(x) in expr.atoms(sympy.Pow)  # 0.5 is 1/2, exactly
    assert expr.subs({x: 4, i: 3, b: True}) == 2 + 3 + 4
    assert expr.subs({x: -1, i: 0, b: True}) == pytest.approx(-1.1)
    several = gs.trace(lambda x: (x + 1, gnp.sum(x) * 2), 1.0)  # a tuple; a scalar's sum
    assert gs.to_sympy(several) == (x + 1, 2 * x)
    assert gs.symbolic_derivative(several) == (1, 2)


@pytest.mark.parametrize(
    "fn, args, op",
    [
        (lambda x: gnp.sum(x), (np.ones(3),), "reduce_sum"),
        (lambda x, w: w @ x, (np.ones(3), np.ones((2, 3))), "einsum"),
        (lambda x: gnp.round(x), (1.0,), "round"),
        (lambda x: gs.cond(x > 0, lambda v: v, lambda v: -v, x), (1.0,), "cond"),
    ],
)
def test_to_sympy_names_the_op_it_cannot_express(fn, args, op):
    graph = gs.trace(fn, *args)
    with pytest.raises(TypeError, match=f"'{op}'"):
        gs.to_sympy(graph)
    with pytest.raises(TypeError, match=f"'{op}'"):
        gs.symbolic_derivative(graph)


def test_symbolic_derivative_refuses_bad_wrt():
    with pytest.raises(ValueError, match="no input"):
        gs.symbolic_derivative(SEED, wrt="x3")
    with pytest.raises(ValueError, match="range"):
        gs.symbolic_derivative(SEED, wrt=2)
    with pytest.raises(TypeError, match="wrt"):
        gs.symbolic_derivative(SEED, wrt=1.0)
    graph = gs.trace(lambda x, i: x * i, 1.0, np.int64(2))
    with pytest.raises(TypeError, match="not a float"):
        gs.symbolic_derivative(graph, wrt="i")
    with pytest.raises(TypeError, match="gs.Graph"):
        gs.to_sympy(lambda x: x)


def test_symbolic_functions_without_sympy_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sympy", None)  # import sympy raises ImportError
    with pytest.raises(ImportError, match=r"gradserve\[symbolic\]"):
        gs.to_sympy(SEED)
    with pytest.raises(ImportError, match=r"gradserve\[symbolic\]"):
        gs.symbolic_derivative(SEED)
    assert gs.expression_size(SEED) == (9, 5)  # needs no SymPy


def test_importing_gradserve_does_not_import_sympy():
    import subprocess

    code = "import sys, gradserve; print('sympy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---- expression_size -----------------------------------------------------------------------------


def built_tree(graph):
    """The expanded expression tree, built: nested (op, children) tuples."""
    producer = {}
    for node in graph.nodes:
        for out in node.outputs:
            producer[out] = node

    def build(value):
        node = producer.get(value)
        if node is None:
            return (value, ())
        return (node.op, tuple(build(v) for v in node.inputs))

    return [build(v) for v in graph.output_names]


def count(tree):
    return 1 + sum(count(child) for child in tree[1])


def composed(depth):
    def f(x):
        for _ in range(depth):
            x = gnp.sin(x) * gnp.cos(x) + x  # x used three times
        return x

    return gs.trace(f, 0.5)


def test_expression_size_counts_the_built_tree_exactly():
    for depth in range(7):
        graph = composed(depth)
        tree, nodes = gs.expression_size(graph)
        assert tree == sum(count(t) for t in built_tree(graph))
        assert nodes == len(graph.nodes) == 4 * depth
        assert tree == 3 ** (depth + 1) - 2  # T(k) = 4 + 3 T(k - 1), T(0) = 1
    assert gs.expression_size(SEED) == (9, 5)
    several = gs.trace(lambda x, y: (x * y, gnp.sin(x * y)), 1.0, 2.0)
    assert gs.expression_size(several) == (3 + 4, 2)


def test_expression_size_grows_exponentially_while_the_graph_grows_linearly():
    sizes = [gs.expression_size(composed(depth)) for depth in (10, 20, 40, 80)]
    assert [nodes for _, nodes in sizes] == [40, 80, 160, 320]
    trees = [tree for tree, _ in sizes]
    assert trees[-1] == 3**81 - 2  # about 4e38: counted, never built
    for small, large in itertools.pairwise(trees):
        assert large > small**1.9


def test_the_api_examples_run():
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    globs = {"gs": gs, "gnp": gnp, "np": np}
    found = 0
    for fn in (gs.numeric_grad, gs.to_sympy, gs.symbolic_derivative, gs.expression_size):
        for test in doctest.DocTestFinder().find(fn, globs=dict(globs)):
            found += len(test.examples)
            runner.run(test)
    assert found >= 8 and runner.summarize(verbose=False).failed == 0


# ---- examples/four_ways.py -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def four_ways():
    spec = importlib.util.spec_from_file_location("four_ways", ROOT / "examples" / "four_ways.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_four_ways_script_tables(four_ways):
    seed_table = four_ways.seed_table(repeats=1)
    lines = seed_table.splitlines()
    assert len(lines) == 2 + 7  # by hand, four numerical, symbolic, automatic
    assert lines[2].startswith("| by hand | 5.5 | 1.716337814536774 |")
    chain = four_ways.chain_table(3, repeats=1, symbolic=False)
    assert len(chain.splitlines()) == 2 + 5
    growth = four_ways.growth_table(depths=(1, 2), symbolic_upto=1, repeats=1)
    assert "| 2 | 3 | 8 | 19 | — |" in growth


def test_four_ways_script_plots(four_ways, tmp_path):
    pytest.importorskip("matplotlib")
    four_ways.plot_steps(tmp_path / "steps.png", steps=np.logspace(-12, 0, 7))
    four_ways.plot_swell(tmp_path / "swell.png", depths=range(1, 6))
    for name in ("steps.png", "swell.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")


def test_the_page_embeds_what_the_script_makes():
    page = (ROOT / "docs" / "four-ways.md").read_text()
    assert "python examples/four_ways.py --out docs" in page
    for name in ("four_ways_steps.png", "four_ways_swell.png"):
        assert f"]({name})" in page
        assert (ROOT / "docs" / name).read_bytes().startswith(b"\x89PNG")


def test_float32_inputs_set_the_step_and_tolerance():
    graph = gs.trace(
        lambda x: gnp.sum(gnp.astype(gnp.sin(x) * x, "float64")), np.ones(4, np.float32)
    )
    x = np.linspace(0.1, 1.0, 4).astype(np.float32)
    for method in ("forward", "central", "richardson", "complex"):
        assert gs.Engine().check_grad(graph, x, method=method).ok, method
    assert np.all(np.isfinite(gs.numeric_grad(graph, x, method="forward")))


def test_a_nan_difference_shows_in_the_report():
    report = gs.Engine().check_grad(gs.trace(gnp.sqrt, 0.0), 0.0)
    assert not report.ok and np.isnan(report.max_abs_error) and np.isnan(report.max_rel_error)
