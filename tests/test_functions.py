"""Function transformations (engine/functions.py): gs.grad, value_and_grad, jacobian, jacfwd,
jacrev, hessian, jvp, vjp, hvp, with JAX's semantics, on the in-process Engine and a live
Client; pytrees in and out, has_aux, composition to any order, caching per signature."""

from __future__ import annotations

import doctest
from collections import namedtuple

import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp

Params = namedtuple("Params", ["w", "b"])


@pytest.fixture(params=["engine", "client"])
def backend(request):
    if request.param == "engine":
        return gs.Engine()
    return request.getfixturevalue("remote")


def central(f, x, h=1e-6):
    """Central differences of a scalar function of an array."""
    x = np.asarray(x, dtype=float)
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        e = np.zeros_like(x)
        e[i] = h
        g[i] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def loss(p, x):
    return gnp.sum(gnp.tanh(x @ p.w + p.b) ** 2)


def loss_np(w, b, x):
    return np.sum(np.tanh(x @ w + b) ** 2)


X = np.array([[0.3, -0.2, 0.5], [1.0, 0.4, -0.7]])
P = Params(np.array([0.1, -0.3, 0.2]), 0.05)


# ---- grad and value_and_grad ------------------------------------------------------------------


def test_grad_of_a_namedtuple_matches_finite_differences(backend):
    g = gs.grad(loss, backend=backend)(P, X)
    assert isinstance(g, Params)
    assert np.allclose(g.w, central(lambda w: loss_np(w, P.b, X), P.w), atol=1e-7)
    assert np.isclose(g.b, central(lambda b: loss_np(P.w, b, X), P.b), atol=1e-7)


def test_value_and_grad_of_dicts_and_lists_with_argnums(backend):
    def f(d, xs):
        return gnp.sum(d["a"] * xs[0]) + d["c"][1] * gnp.sum(xs[1] ** 2)

    d = {"a": np.array([1.0, 2.0]), "c": (None, 3.0)}
    xs = [np.array([4.0, 5.0]), np.array([1.0, -1.0, 2.0])]
    value, (gd, gxs) = gs.value_and_grad(f, argnums=(0, 1), backend=backend)(d, xs)
    assert value == 14.0 + 3.0 * 6.0
    assert set(gd) == {"a", "c"} and gd["c"][0] is None
    assert np.allclose(gd["a"], [4.0, 5.0]) and gd["c"][1] == 6.0
    assert isinstance(gxs, list) and np.allclose(gxs[0], [1.0, 2.0])
    assert np.allclose(gxs[1], [6.0, -6.0, 12.0])
    # a negative argnums counts from the end
    assert np.allclose(gs.grad(f, argnums=-1, backend=backend)(d, xs)[0], [1.0, 2.0])


def test_has_aux(backend):
    def f(x):
        y = gnp.sin(x)
        return gnp.sum(y), {"y": y, "n": (x.shape[0], None)}

    x = np.array([0.0, 1.0])
    g, aux = gs.grad(f, has_aux=True, backend=backend)(x)
    assert np.allclose(g, np.cos(x)) and np.allclose(aux["y"], np.sin(x))
    assert aux["n"][0] == 2 and aux["n"][1] is None
    (value, aux), g2 = gs.value_and_grad(f, has_aux=True, backend=backend)(x)
    assert np.isclose(value, np.sin(1.0)) and np.allclose(g2, g)
    with pytest.raises(TypeError, match="pair"):
        gs.grad(lambda x: gnp.sin(x), has_aux=True)(1.0)


def test_grad_refuses_non_scalar_outputs_and_integer_arguments():
    with pytest.raises(TypeError, match="one real scalar"):
        gs.grad(gnp.sin)(np.ones(2))
    with pytest.raises(TypeError, match="float or complex"):
        gs.grad(lambda x: x * 1.0)(3)
    with pytest.raises(ValueError, match="out of range"):
        gs.grad(gnp.sin, argnums=1)(1.0)


@pytest.mark.parametrize(
    "f, third",
    [
        (gnp.sin, lambda x: -np.cos(x)),
        (gnp.exp, np.exp),
        (lambda x: 3 * x**4 - 2 * x**3 + x, lambda x: 72 * x - 12),
    ],
    ids=["sin", "exp", "polynomial"],
)
def test_third_derivatives_match_closed_forms(backend, f, third):
    d3 = gs.grad(gs.grad(gs.grad(f)), backend=backend)
    for x in (0.5, -1.25):
        assert np.isclose(d3(x), third(x), rtol=1e-12)


def test_closures_over_traced_values_are_differentiated_by_the_enclosing_transform():
    # d/dx [x * d/dy (x * y)] = d/dx x**2 = 2x (no perturbation confusion)
    f = gs.grad(lambda x: x * gs.grad(lambda y: x * y)(1.0))
    assert f(3.0) == 6.0


# ---- jacobian and hessian --------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fwd", "rev", "auto"])
def test_jacobian_of_pytrees(backend, mode):
    def f(p, t):
        return {"x": p["r"] * gnp.cos(t), "v": gnp.stack([p["r"] * t, t * t])}

    p, t = {"r": 2.0}, 0.5
    J = gs.jacobian(f, argnums=(0, 1), mode=mode, backend=backend)(p, t)
    assert np.isclose(J["x"][0]["r"], np.cos(t)) and np.isclose(J["x"][1], -2.0 * np.sin(t))
    assert np.allclose(J["v"][0]["r"], [t, 0.0]) and np.allclose(J["v"][1], [2.0, 2 * t])
    assert J["v"][1].shape == (2,)


def test_jacobian_blocks_have_out_then_in_shapes_and_match_differences(backend):
    A = np.arange(6.0).reshape(2, 3) / 5

    def f(x):
        return gnp.sin(A @ x)  # (2,) from (3, 2)

    x = np.array([[0.1, 0.2], [0.3, -0.4], [0.5, 0.6]])
    for jac in (gs.jacfwd, gs.jacrev):
        J = jac(f, backend=backend)(x)
        assert J.shape == (2, 2, 3, 2)
        for i in np.ndindex(2, 2):
            assert np.allclose(J[i], central(lambda x: np.sin(A @ x)[i], x), atol=1e-7)


def test_jacobian_of_grad_is_the_hessian(backend):
    def f(x):
        return gnp.sum(gnp.exp(x[:2] * x[1:])) + gnp.sum(x**3)

    x = np.array([0.2, -0.4, 0.7])
    H = gs.hessian(f, backend=backend)(x)
    assert np.allclose(gs.jacobian(gs.grad(f), backend=backend)(x), H)
    assert np.allclose(H, H.T)
    assert np.allclose(gs.jacfwd(gs.jacrev(f))(x), H)
    numeric = np.stack([central(lambda x: np.asarray(gs.grad(f)(x))[i], x) for i in range(3)])
    assert np.allclose(H, numeric, atol=1e-6)


def test_hessian_with_argnums_tuple_nests_tuples():
    H = gs.hessian(lambda x, y: x * x * y, argnums=(0, 1))(2.0, 3.0)
    assert [[float(b) for b in row] for row in H] == [[6.0, 4.0], [4.0, 0.0]]


# ---- jvp, vjp, hvp ----------------------------------------------------------------------------


def test_jvp_of_pytrees(backend):
    def f(p, x):
        return {"y": gnp.tanh(x @ p.w + p.b), "n": [gnp.sum(p.w**2)]}

    tangent = Params(np.array([1.0, 0.0, 0.0]), 0.5)
    out, t = gs.jvp(f, (P, X), (tangent, np.zeros_like(X)), backend=backend)
    assert np.allclose(out["y"], np.tanh(X @ P.w + P.b))
    z = X @ P.w + P.b
    assert np.allclose(t["y"], (1 - np.tanh(z) ** 2) * (X[:, 0] + 0.5))
    assert np.isclose(t["n"][0], 2 * P.w[0])
    with pytest.raises(TypeError, match="structure"):
        gs.jvp(f, (P, X), (P,))


def test_vjp_fn_applied_twice(backend):
    def f(p, x):
        return (x @ p.w + p.b, gnp.sum(p.w))

    out, pullback = gs.vjp(f, P, X, backend=backend)
    assert np.allclose(out[0], X @ P.w + P.b) and np.isclose(out[1], np.sum(P.w))
    for scale in (1.0, 2.0):
        ct_p, ct_x = pullback((scale * np.ones(2), scale * 0.5))
        assert isinstance(ct_p, Params)
        assert np.allclose(ct_p.w, scale * (X.sum(axis=0) + 0.5))
        assert np.isclose(ct_p.b, scale * 2.0)
        assert np.allclose(ct_x, scale * np.outer(np.ones(2), P.w))
    with pytest.raises(TypeError, match="structure"):
        pullback(np.ones(2))


def test_vjp_gives_zeros_for_integer_leaves():
    out, pullback = gs.vjp(lambda x, n: x * n, 2.0, 3)
    ct_x, ct_n = pullback(1.0)
    assert out == 6.0 and ct_x == 3.0 and ct_n == 0 and ct_n.dtype == np.int64


def test_hvp(backend):
    def f(p, x):
        return gnp.sum(p["a"] ** 3 * x) + p["b"] * gnp.sum(x**2)

    p = {"a": np.array([1.0, 2.0]), "b": 0.5}
    x = np.array([3.0, -1.0])
    hp, hx = gs.hvp(f, (p, x), ({"a": np.ones(2), "b": 1.0}, np.zeros(2)), backend=backend)
    assert np.allclose(hp["a"], 6 * p["a"] * x) and hp["b"] == 0.0
    assert np.allclose(hx, 3 * p["a"] ** 2 + 2 * x)


# ---- composition inside traces ----------------------------------------------------------------


def test_forward_over_reverse_and_reverse_over_reverse():
    def f(x):
        return gnp.sum(gnp.sin(x) * x)

    x = np.array([0.3, 1.1])
    H = np.diag(2 * np.cos(x) - x * np.sin(x))
    v = np.array([1.0, -2.0])
    _, fwd_rev = gs.jvp(gs.grad(f), (x,), (v,))
    assert np.allclose(fwd_rev, H @ v)
    rev_rev = gs.grad(lambda x: gnp.sum(gs.grad(f)(x) * v))(x)
    assert np.allclose(rev_rev, H @ v)
    _, pull = gs.vjp(gs.grad(f), x)
    assert np.allclose(pull(v)[0], H @ v)


def test_transforms_inside_control_flow():
    def body(c, x):
        return c + gs.grad(lambda y: gnp.sin(y) * x)(c), None

    g = gs.trace(lambda c, xs: gs.scan(body, c, xs)[0], 0.1, gs.Spec((3,)))
    xs = np.array([0.5, 1.0, 1.5])
    c = 0.1
    for x in xs:
        c = c + np.cos(c) * x
    assert np.isclose(gs.Engine().evaluate(g, 0.1, xs), c)
    branch = gs.trace(lambda x: gs.cond(x > 0, gs.grad(gnp.exp), gs.grad(gnp.sin), x), 1.0)
    assert np.isclose(gs.Engine().evaluate(branch, 1.0), np.e)
    assert np.isclose(gs.Engine().evaluate(branch, -1.0), np.cos(-1.0))
    assert np.isclose(gs.grad(gs.grad(lambda x: gs.cond(x > 0, gnp.exp, gnp.sin, x)))(1.0), np.e)


def test_a_graph_with_a_nested_gradient_round_trips_and_runs_on_a_server(remote):
    def f(x, w):
        return (
            gnp.sum(gs.grad(lambda x: gnp.sum(gnp.sin(x * w) ** 2))(x))
            + gs.hessian(lambda v: gnp.sum(v**4))(x)[0, 0]
        )

    graph = gs.trace(f, gs.Spec((3,)), gs.Spec((3,)))
    again = gs.Graph.from_bytes(graph.to_bytes())
    assert again.digest == graph.digest
    x, w = np.array([0.1, 0.2, 0.3]), np.array([1.0, 2.0, -1.0])
    expected = np.sum(2 * np.sin(x * w) * np.cos(x * w) * w) + 12 * x[0] ** 2
    assert np.isclose(remote.evaluate(again, x, w), expected)
    assert np.isclose(gs.Engine().evaluate(again, x, w), expected)
    # and the graph is differentiated again, there too
    g = remote.grad(again, x, w)
    assert np.allclose(g, central(lambda x: gs.Engine().evaluate(graph, x, w), x), atol=1e-6)


# ---- tracing once per signature ---------------------------------------------------------------


def test_traced_once_per_signature():
    calls = []

    def f(p):
        calls.append(1)
        return gnp.sum(p["x"] ** 2) * p["s"]

    df = gs.grad(f)
    for s in (1.0, 2.0, 3.0):  # Python floats are traced, not static
        assert np.allclose(df({"x": np.ones(2), "s": s})["x"], 2 * s)
    assert len(calls) == 1
    df({"x": np.ones(3), "s": 1.0})  # a new shape
    assert len(calls) == 2
    df({"x": np.ones(3, dtype=np.float32), "s": 1.0})  # a new dtype
    assert len(calls) == 3
    df({"x": np.ones(2), "s": 5.0})
    gs.value_and_grad(f)  # another transformed function has its own cache
    assert len(calls) == 3


def test_jvp_and_vjp_cache_per_function():
    calls = []

    def f(x):
        calls.append(1)
        return gnp.sin(x)

    for x in (0.1, 0.2):
        gs.jvp(f, (x,), (1.0,))
        gs.vjp(f, x)[1](1.0)
        gs.hvp(lambda x: gnp.sum(f(x)), (np.ones(2),), (np.ones(2),))
    assert len(calls) == 2 + 2  # jvp once, vjp once, hvp per new lambda


def test_cache_is_bounded():
    df = gs.grad(lambda x: gnp.sum(x))
    for n in range(1, 300):
        df(np.ones(n))
    assert len(df._cache.entries) == 256


def test_engine_and_client_agree(remote):
    f = gs.value_and_grad(loss, argnums=(0, 1))
    a = f(P, X)
    b = gs.value_and_grad(loss, argnums=(0, 1), backend=remote)(P, X)
    assert np.isclose(a[0], b[0])
    for x, y in zip(gs.engine.pytree.flatten(a[1])[0], gs.engine.pytree.flatten(b[1])[0]):
        assert np.allclose(x, y)


def test_docstring_examples_run():
    from gradserve.engine import functions

    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    tests = []
    for name in ("grad", "value_and_grad", "jacobian", "hessian", "jvp", "vjp", "hvp"):
        tests += finder.find(getattr(functions, name), globs={"gs": gs, "gnp": gnp, "np": np})
    assert sum(len(t.examples) for t in tests) >= 7
    for test in tests:
        runner.run(test)
    assert runner.summarize(verbose=False).failed == 0


def test_concrete_tangents_take_the_primals_dtype_inside_a_trace():
    def body(c, _):
        _, t = gs.jvp(gnp.sin, (c,), (np.ones(2),))
        return c + 0.1 * t, None

    graph = gs.trace(lambda c: gs.scan(body, c, None, length=3)[0], np.ones(2, np.float32))
    assert graph.outputs[0].spec.dtype == "float32"


def test_masked_arrays_of_other_shapes_are_other_signatures():
    g = gs.grad(lambda x: gnp.sum(x**2))
    np.testing.assert_array_equal(g(np.ma.array([1.0, 2.0])), [2.0, 4.0])
    np.testing.assert_array_equal(g(np.ma.array([1.0, 2.0, 3.0])), [2.0, 4.0, 6.0])


def test_a_closure_bound_to_another_value_is_traced_again():
    def make():
        scale = np.ones(2)

        def f(x):
            return gnp.sum(x * scale)

        def rebind(value):
            nonlocal scale
            scale = value

        return f, rebind

    f, rebind = make()
    g = gs.grad(f)
    np.testing.assert_array_equal(g(np.ones(2)), [1.0, 1.0])
    rebind(np.full(2, 5.0))
    np.testing.assert_array_equal(g(np.ones(2)), [5.0, 5.0])
