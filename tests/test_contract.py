"""The public API contract (docs/api.md), run against every `backend` of conftest.py (the
in-process Engine, and a Client talking to a live server when the service adds it). These tests
use only the public API on `backend`: expected values are closed forms, identities, or finite
differences computed here from `backend.evaluate` / `backend.grad`."""

import math
import warnings

import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp


def seed_f(x1, x2):
    return gnp.log(x1) + x1 * x2 - gnp.sin(x2)


def fd_gradient(backend, graph, args, i, h=1e-6):
    """Central differences of backend.evaluate along every element of args[i]."""
    args = [np.asarray(a, dtype=float) for a in args]
    x = args[i]
    grad = np.zeros(x.shape)
    for j in np.ndindex(*x.shape):
        step = h * max(1.0, abs(x[j]))
        plus, minus = x.copy(), x.copy()
        plus[j] += step
        minus[j] -= step
        f_plus = backend.evaluate(graph, *args[:i], plus, *args[i + 1 :])
        f_minus = backend.evaluate(graph, *args[:i], minus, *args[i + 1 :])
        grad[j] = (f_plus - f_minus) / (2 * step)
    return grad


def fd_jacobian(backend, graph, args, i, output=None, h=1e-6):
    args = [np.asarray(a, dtype=float) for a in args]
    x = args[i]

    def f(*a):
        out = backend.evaluate(graph, *a)
        return np.asarray(out if output is None else out[output], dtype=float)

    out_shape = f(*args).shape
    jac = np.zeros(out_shape + x.shape)
    for j in np.ndindex(*x.shape):
        step = h * max(1.0, abs(x[j]))
        plus, minus = x.copy(), x.copy()
        plus[j] += step
        minus[j] -= step
        jac[(Ellipsis,) + j] = (
            f(*args[:i], plus, *args[i + 1 :]) - f(*args[:i], minus, *args[i + 1 :])
        ) / (2 * step)
    return jac


def fd_hessian(backend, graph, args, i, h=1e-5):
    """Finite differences of the backend's gradient."""
    args = [np.asarray(a, dtype=float) for a in args]
    x = args[i]
    hess = np.zeros(x.shape + x.shape)
    for j in np.ndindex(*x.shape):
        step = h * max(1.0, abs(x[j]))
        plus, minus = x.copy(), x.copy()
        plus[j] += step
        minus[j] -= step
        g_plus = backend.grad(graph, *args[:i], plus, *args[i + 1 :], argnums=i)
        g_minus = backend.grad(graph, *args[:i], minus, *args[i + 1 :], argnums=i)
        hess[(Ellipsis,) + j] = (g_plus - g_minus) / (2 * step)
    return hess


# ---- the seed's worked examples ----------------------------------------------------------------

SEED_VALUE = math.log(2.0) + 10.0 - math.sin(5.0)
SEED_GRAD = (5.5, 2.0 - math.cos(5.0))


@pytest.mark.parametrize(
    "specs",
    [
        (2.0, 5.0),
        (gs.Spec((), "float64"), gs.Spec((), "float64")),
        (np.float64(2.0), np.array(5.0)),
    ],
    ids=["numbers", "specs", "numpy"],
)
def test_seed_example(backend, specs):
    graph = gs.trace(seed_f, *specs)
    assert [p.name for p in graph.inputs] == ["x1", "x2"]
    value = backend.evaluate(graph, 2.0, 5.0)
    assert float(value) == pytest.approx(SEED_VALUE, rel=1e-14)
    assert pytest.approx(11.652071455223084) == SEED_VALUE
    value, (g1, g2) = backend.value_and_grad(graph, 2.0, 5.0, argnums=(0, 1))
    assert float(value) == pytest.approx(SEED_VALUE, rel=1e-14)
    assert float(g1) == pytest.approx(SEED_GRAD[0], rel=1e-14)
    assert float(g2) == pytest.approx(SEED_GRAD[1], rel=1e-14)
    assert float(g2) == pytest.approx(1.7163378145367738)


def test_seed_example_argnums_forms(backend):
    graph = gs.trace(seed_f, 2.0, 5.0)
    # an int argnums gives one array; a tuple gives a tuple
    g0 = backend.grad(graph, 2.0, 5.0)
    assert not isinstance(g0, tuple) and np.shape(g0) == ()
    assert float(g0) == pytest.approx(SEED_GRAD[0])
    g1 = backend.grad(graph, 2.0, 5.0, argnums=1)
    assert float(g1) == pytest.approx(SEED_GRAD[1])
    (only,) = backend.grad(graph, 2.0, 5.0, argnums=(1,))
    assert float(only) == pytest.approx(SEED_GRAD[1])
    swapped = backend.grad(graph, 2.0, 5.0, argnums=(1, 0))
    assert [float(g) for g in swapped] == pytest.approx([SEED_GRAD[1], SEED_GRAD[0]])
    neg = backend.grad(graph, 2.0, 5.0, argnums=-1)
    assert float(neg) == pytest.approx(SEED_GRAD[1])


@pytest.mark.parametrize("x, y", [(3.0, 4.0), (-1.5, 0.25), (0.0, 7.0)])
def test_xy_plus_6(backend, x, y):
    graph = gs.trace(lambda x, y: x * y + 6, 1.0, 1.0)
    value, (gx, gy) = backend.value_and_grad(graph, x, y, argnums=(0, 1))
    assert float(value) == pytest.approx(x * y + 6)
    assert float(gx) == pytest.approx(y) and float(gy) == pytest.approx(x)
    hess = backend.hessian(graph, x, y, argnums=(0, 1))
    assert [[float(h) for h in row] for row in hess] == [[0.0, 1.0], [1.0, 0.0]]


@pytest.mark.parametrize("x1, x2", [(0.5, 2.0), (-3.0, 1.25), (math.pi, 0.0)])
def test_sin_x1_plus_x1_x2(backend, x1, x2):
    graph = gs.trace(lambda x1, x2: gnp.sin(x1) + x1 * x2, 1.0, 1.0)
    value, (g1, g2) = backend.value_and_grad(graph, x1, x2, argnums=(0, 1))
    assert float(value) == pytest.approx(math.sin(x1) + x1 * x2, abs=1e-15)
    assert float(g1) == pytest.approx(math.cos(x1) + x2, abs=1e-15)
    assert float(g2) == pytest.approx(x1, abs=1e-15)
    hess = backend.hessian(graph, x1, x2, argnums=(0, 1))
    np.testing.assert_allclose(
        np.array([[float(h) for h in row] for row in hess]),
        [[-math.sin(x1), 1.0], [1.0, 0.0]],
        atol=1e-15,
    )


# ---- evaluate / grad / value_and_grad on arrays -----------------------------------------------

A = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])


def quad(x, y):
    # 0.5 x^T (A^T A) x + sum(sin(y) * x)
    r = A @ x
    return 0.5 * gnp.sum(r * r) + gnp.sum(gnp.sin(y) * x)


def test_evaluate_grad_value_and_grad_closed_form(backend):
    x, y = np.array([0.3, -1.0, 2.0]), np.array([0.1, 0.2, 0.3])
    graph = gs.trace(quad, x, y)
    value = backend.evaluate(graph, x, y)
    r = A @ x
    assert float(value) == pytest.approx(0.5 * r @ r + np.sin(y) @ x)
    gx = backend.grad(graph, x, y)
    np.testing.assert_allclose(gx, A.T @ r + np.sin(y), rtol=1e-13)
    value2, (gx2, gy2) = backend.value_and_grad(graph, x, y, argnums=(0, 1))
    assert float(value2) == pytest.approx(float(value))
    np.testing.assert_allclose(gx2, gx, rtol=1e-13)
    np.testing.assert_allclose(gy2, np.cos(y) * x, rtol=1e-13)
    np.testing.assert_allclose(gy2, fd_gradient(backend, graph, [x, y], 1), rtol=1e-7, atol=1e-9)


def test_several_outputs_evaluate_is_a_tuple(backend):
    x = np.array([0.5, 1.5])
    graph = gs.trace(lambda x: (gnp.sin(x), gnp.sum(x * x)), x)
    out = backend.evaluate(graph, x)
    assert isinstance(out, tuple) and len(out) == 2
    np.testing.assert_allclose(out[0], np.sin(x))
    assert float(out[1]) == pytest.approx(x @ x)
    with pytest.raises(TypeError):  # grad needs a single scalar output
        backend.grad(graph, x)


def test_grad_of_non_scalar_output_is_an_error(backend):
    graph = gs.trace(lambda x: gnp.sin(x), np.ones(3))
    with pytest.raises(TypeError):
        backend.grad(graph, np.ones(3))
    with pytest.raises(TypeError):
        backend.hessian(graph, np.ones(3))


# ---- vjp / jvp ---------------------------------------------------------------------------------


def two_outputs(x, y):
    return gnp.sin(x) * y[:, None], gnp.sum(x * x) + y[0]


def test_vjp_single_output(backend):
    x = np.array([0.5, -1.0, 2.0])
    graph = gs.trace(lambda x, w: gnp.exp(x) * w, x, x)
    w = np.array([1.0, 2.0, 3.0])
    v = np.array([0.1, -0.2, 0.3])
    out, cts = backend.vjp(graph, (x, w), v)
    np.testing.assert_allclose(out, np.exp(x) * w)
    assert isinstance(cts, tuple) and len(cts) == 2
    np.testing.assert_allclose(cts[0], v * np.exp(x) * w)
    np.testing.assert_allclose(cts[1], v * np.exp(x))


def test_vjp_jvp_several_outputs(backend):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=3), rng.normal(size=2)
    graph = gs.trace(two_outputs, x, y)
    v0, v1 = rng.normal(size=(2, 3)), 0.7
    outs, (cx, cy) = backend.vjp(graph, (x, y), (v0, v1))
    assert isinstance(outs, tuple) and len(outs) == 2
    np.testing.assert_allclose(outs[0], np.sin(x) * y[:, None])
    np.testing.assert_allclose(cx, np.cos(x) * (v0 * y[:, None]).sum(0) + v1 * 2 * x, rtol=1e-12)
    np.testing.assert_allclose(cy, (v0 * np.sin(x)).sum(1) + np.array([v1, 0.0]), rtol=1e-12)

    u = (rng.normal(size=3), rng.normal(size=2))
    outs, (t0, t1) = backend.jvp(graph, (x, y), u)
    np.testing.assert_allclose(
        t0, np.cos(x) * u[0] * y[:, None] + np.sin(x) * u[1][:, None], rtol=1e-12
    )
    assert float(t1) == pytest.approx(2 * x @ u[0] + u[1][0])
    # <v, J u> = <J^T v, u>
    lhs = np.sum(v0 * t0) + v1 * float(t1)
    rhs = cx @ u[0] + cy @ u[1]
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_jvp_single_output_returns_arrays(backend):
    graph = gs.trace(seed_f, 2.0, 5.0)
    out, tangent = backend.jvp(graph, (2.0, 5.0), (1.0, 0.0))
    assert float(out) == pytest.approx(SEED_VALUE)
    assert float(tangent) == pytest.approx(SEED_GRAD[0])
    _, tangent = backend.jvp(graph, (2.0, 5.0), (0.3, -0.4))
    assert float(tangent) == pytest.approx(0.3 * SEED_GRAD[0] - 0.4 * SEED_GRAD[1])


def test_vjp_gives_zero_cotangent_for_integer_input(backend):
    graph = gs.trace(lambda x, n: x * n, np.ones(2), np.array([1, 2]))
    _out, (cx, cn) = backend.vjp(graph, (np.array([1.5, 2.5]), np.array([3, 4])), np.ones(2))
    np.testing.assert_allclose(cx, [3.0, 4.0])
    assert np.shape(cn) == (2,) and not np.any(cn)


# ---- jacobian ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fwd", "rev", "auto"])
def test_jacobian_closed_form(backend, mode):
    x = np.array([[0.2, -0.4, 1.0], [0.5, 0.1, -2.0]])
    graph = gs.trace(lambda x: gnp.tanh(x), x)
    jac = backend.jacobian(graph, x, mode=mode)
    assert jac.shape == (2, 3, 2, 3)
    want = np.zeros((2, 3, 2, 3))
    for i, j in np.ndindex(2, 3):
        want[i, j, i, j] = 1 - np.tanh(x[i, j]) ** 2
    np.testing.assert_allclose(jac, want, atol=1e-15)

    matrix = gs.trace(lambda v: A @ v, np.ones(3))
    np.testing.assert_allclose(backend.jacobian(matrix, np.array([1.0, 2.0, 3.0]), mode=mode), A)


@pytest.mark.parametrize("mode", ["fwd", "rev", "auto"])
@pytest.mark.parametrize("n_in, n_out", [(2, 5), (5, 2), (3, 3)])
def test_jacobian_modes_agree_with_finite_differences(backend, mode, n_in, n_out):
    rng = np.random.default_rng(n_in * 10 + n_out)
    w = rng.normal(size=(n_out, n_in))
    x = rng.normal(size=n_in)
    graph = gs.trace(lambda x: gnp.sin(w @ x) * gnp.sum(x * x), x)
    jac = backend.jacobian(graph, x, mode=mode)
    assert jac.shape == (n_out, n_in)
    np.testing.assert_allclose(jac, fd_jacobian(backend, graph, [x], 0), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("mode", ["fwd", "rev", "auto"])
def test_jacobian_tuples(backend, mode):
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=3), rng.normal(size=2)
    graph = gs.trace(two_outputs, x, y)
    jac = backend.jacobian(graph, x, y, argnums=(0, 1), mode=mode)
    # one entry per output, each a tuple with one block per argnum
    assert isinstance(jac, tuple) and len(jac) == 2
    assert all(isinstance(row, tuple) and len(row) == 2 for row in jac)
    assert jac[0][0].shape == (2, 3, 3) and jac[0][1].shape == (2, 3, 2)
    assert jac[1][0].shape == (3,) and jac[1][1].shape == (2,)
    for k in range(2):
        for i in range(2):
            np.testing.assert_allclose(
                jac[k][i], fd_jacobian(backend, graph, [x, y], i, output=k), rtol=1e-6, atol=1e-8
            )
    # int argnums: one block per output
    by_x = backend.jacobian(graph, x, y, mode=mode)
    assert isinstance(by_x, tuple) and len(by_x) == 2
    np.testing.assert_allclose(by_x[0], jac[0][0])
    np.testing.assert_allclose(by_x[1], jac[1][0])
    # a single output with tuple argnums: a tuple of blocks
    single = gs.trace(lambda x, y: gnp.outer(x, y), x, y)
    blocks = backend.jacobian(single, x, y, argnums=(0, 1), mode=mode)
    assert (
        isinstance(blocks, tuple) and blocks[0].shape == (3, 2, 3) and blocks[1].shape == (3, 2, 2)
    )
    np.testing.assert_allclose(
        blocks[1], fd_jacobian(backend, single, [x, y], 1), rtol=1e-6, atol=1e-8
    )


def test_jacobian_scalar_in_scalar_out(backend):
    graph = gs.trace(seed_f, 2.0, 5.0)
    for mode in ("fwd", "rev", "auto"):
        jac = backend.jacobian(graph, 2.0, 5.0, argnums=(0, 1), mode=mode)
        assert [float(j) for j in jac] == pytest.approx(list(SEED_GRAD))


def test_jacobian_bad_mode(backend):
    graph = gs.trace(lambda x: x * 2, 1.0)
    with pytest.raises(ValueError):
        backend.jacobian(graph, 1.0, mode="sideways")


# ---- hvp / hessian ---------------------------------------------------------------------------------


def rosenbrock(x):
    return gnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def rosenbrock_hessian(x):
    n = len(x)
    h = np.zeros((n, n))
    for i in range(n - 1):
        h[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
        h[i + 1, i + 1] += 200
        h[i, i + 1] += -400 * x[i]
        h[i + 1, i] += -400 * x[i]
    return h


def test_hessian_closed_form(backend):
    x = np.array([-1.2, 1.0, 0.7, 0.3])
    graph = gs.trace(rosenbrock, x)
    hess = backend.hessian(graph, x)
    assert hess.shape == (4, 4)
    np.testing.assert_allclose(hess, rosenbrock_hessian(x), rtol=1e-12)


def test_hessian_against_finite_differences_of_gradient(backend):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 2))
    w = rng.normal(size=(2, 2))
    graph = gs.trace(lambda x: gnp.sum(gnp.exp(x @ w) * gnp.tanh(x)) + gs.nn.logsumexp(x), x)
    hess = backend.hessian(graph, x)
    assert hess.shape == (2, 2, 2, 2)
    np.testing.assert_allclose(hess, fd_hessian(backend, graph, [x], 0), rtol=1e-6, atol=1e-7)
    flat = hess.reshape(4, 4)
    np.testing.assert_allclose(flat, flat.T, rtol=1e-12, atol=1e-14)


def test_hessian_tuple_argnums(backend):
    graph = gs.trace(lambda x, y: gnp.sum(gnp.sin(x) * y) + gnp.sum(y**3), np.ones(2), np.ones(2))
    x, y = np.array([0.3, 1.1]), np.array([-0.5, 2.0])
    hess = backend.hessian(graph, x, y, argnums=(0, 1))
    assert isinstance(hess, tuple) and all(isinstance(row, tuple) for row in hess)
    np.testing.assert_allclose(hess[0][0], np.diag(-np.sin(x) * y), atol=1e-15)
    np.testing.assert_allclose(hess[0][1], np.diag(np.cos(x)), atol=1e-15)
    np.testing.assert_allclose(hess[1][0], np.diag(np.cos(x)), atol=1e-15)
    np.testing.assert_allclose(hess[1][1], np.diag(6 * y), atol=1e-15)


def test_hvp(backend):
    x = np.array([-1.2, 1.0, 0.7, 0.3])
    v = np.array([0.5, -1.0, 2.0, 0.25])
    graph = gs.trace(rosenbrock, x)
    (hv,) = backend.hvp(graph, (x,), (v,))
    np.testing.assert_allclose(hv, rosenbrock_hessian(x) @ v, rtol=1e-12)
    # and against a difference of gradients along v
    h = 1e-6
    fd = (backend.grad(graph, x + h * v) - backend.grad(graph, x - h * v)) / (2 * h)
    np.testing.assert_allclose(hv, fd, rtol=1e-6)


def test_hvp_several_inputs(backend):
    graph = gs.trace(seed_f, 2.0, 5.0)
    # H = [[-1/x1^2, 1], [1, sin x2]]
    hv = backend.hvp(graph, (2.0, 5.0), (1.0, 2.0))
    assert isinstance(hv, tuple) and len(hv) == 2
    assert float(hv[0]) == pytest.approx(-0.25 + 2.0)
    assert float(hv[1]) == pytest.approx(1.0 + 2.0 * math.sin(5.0))
    hess = backend.hessian(graph, 2.0, 5.0, argnums=(0, 1))
    np.testing.assert_allclose(
        [[float(h) for h in row] for row in hess], [[-0.25, 1.0], [1.0, math.sin(5.0)]], rtol=1e-14
    )


# ---- check_grad ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["forward", "central", "complex", "richardson"])
def test_check_grad_ok_on_correct_graphs(backend, method):
    graphs = [
        (gs.trace(seed_f, 2.0, 5.0), (2.0, 5.0)),
        (gs.trace(rosenbrock, np.ones(4)), (np.array([-1.2, 1.0, 0.7, 0.3]),)),
        (
            gs.trace(
                lambda x, y: gnp.sum(gnp.abs(x) * gnp.maximum(x, y)) + gs.nn.logsumexp(x),
                np.ones(3),
                np.ones(3),
            ),
            (np.array([0.5, -1.5, 2.0]), np.array([1.0, -2.0, 1.0])),
        ),
    ]
    for graph, args in graphs:
        report = backend.check_grad(graph, *args, method=method)
        assert report.ok
        # errors relative to the gradient's size (rosenbrock's is about 200)
        scale = max(
            1.0,
            *(
                float(np.max(np.abs(backend.grad(graph, *args, argnums=i))))
                for i in range(len(args))
            ),
        )
        tolerance = {"forward": 1e-6, "central": 1e-9, "complex": 1e-14, "richardson": 1e-12}[
            method
        ]
        assert 0 <= report.max_abs_error < tolerance * scale
        assert 0 <= report.max_rel_error < max(tolerance, 1e-15) * 10


def test_check_grad_at_a_singular_point_is_not_ok(backend):
    graph = gs.trace(lambda x: gnp.sqrt(x), 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for method in ("forward", "central", "complex"):
            assert not backend.check_grad(graph, -1.0, method=method).ok


def test_check_grad_method_accuracy_ordering(backend):
    graph = gs.trace(lambda x: gnp.sum(gnp.exp(gnp.sin(x)) * x), np.ones(3))
    x = np.array([0.3, 1.7, -2.2])
    errors = {
        m: backend.check_grad(graph, x, method=m).max_abs_error
        for m in ("forward", "central", "complex")
    }
    assert errors["complex"] <= errors["central"] < errors["forward"]
    assert errors["complex"] < 1e-13


@pytest.mark.parametrize("method", ["forward", "central", "complex"])
def test_check_grad_ok_with_large_higher_derivatives(backend, method):
    # sin(x e^x) at x = 2: the first derivative is -13.3, the third about 2e4, and the central
    # difference's truncation error follows the third
    graph = gs.trace(lambda x: gnp.sin(gnp.exp(x) * x), 1.0)
    report = backend.check_grad(graph, 2.0, method=method)
    assert report.ok
    assert report.max_rel_error < 1e-5


def test_check_grad_complex_step_through_logaddexp_and_softplus(backend):
    graph = gs.trace(
        lambda x, y: gnp.sum(gnp.logaddexp(x, y) + gs.nn.softplus(x * y)), np.ones(3), np.ones(3)
    )
    x, y = np.array([0.5, -3.0, 2.0]), np.array([1.0, 0.2, -7.0])
    report = backend.check_grad(graph, x, y, method="complex")
    assert report.ok and report.max_rel_error < 1e-12


def test_check_grad_bad_method(backend):
    graph = gs.trace(lambda x: x * x, 1.0)
    with pytest.raises(ValueError):
        backend.check_grad(graph, 1.0, method="backward")


# ---- NaN safety ------------------------------------------------------------------------------------


def test_sqrt_behind_where_at_zero(backend):
    graph = gs.trace(lambda x: gnp.where(x > 0, gnp.sqrt(x), 0.0), 1.0)
    value, grad = backend.value_and_grad(graph, 0.0)
    assert float(value) == 0.0 and float(grad) == 0.0
    assert float(backend.grad(graph, 4.0)) == pytest.approx(0.25)
    vec = gs.trace(lambda x: gnp.sum(gnp.where(x > 0, gnp.sqrt(x), 0.0)), np.ones(3))
    np.testing.assert_allclose(backend.grad(vec, np.array([0.0, 1.0, 4.0])), [0.0, 0.5, 0.25])
    (hv,) = backend.hvp(vec, (np.array([0.5, 1.0, 4.0]),), (np.ones(3),))
    np.testing.assert_allclose(hv, -0.25 * np.array([0.5, 1.0, 4.0]) ** -1.5)


def test_sqrt_behind_where_second_order_at_zero(backend):
    vec = gs.trace(lambda x: gnp.sum(gnp.where(x > 0, gnp.sqrt(x), 0.0)), np.ones(3))
    (hv,) = backend.hvp(vec, (np.array([0.0, 1.0, 4.0]),), (np.ones(3),))
    np.testing.assert_allclose(hv, [0.0, -0.25, -1 / 32])


def test_norm_behind_guard_at_zero(backend):
    def norm(x):
        s = gnp.sum(x * x)
        return gnp.where(s > 0, gnp.sqrt(s), 0.0)

    graph = gs.trace(norm, np.ones(3))
    value, grad = backend.value_and_grad(graph, np.zeros(3))
    assert float(value) == 0.0
    np.testing.assert_array_equal(grad, np.zeros(3))
    np.testing.assert_allclose(backend.grad(graph, np.array([3.0, 0.0, 4.0])), [0.6, 0.0, 0.8])


def test_abs_at_zero_behind_guard(backend):
    graph = gs.trace(lambda x: gnp.where(x != 0, gnp.abs(x) ** 0.5, 0.0), 1.0)
    value, grad = backend.value_and_grad(graph, 0.0)
    assert float(value) == 0.0 and np.isfinite(grad) and float(grad) == 0.0
    assert float(backend.grad(graph, -4.0)) == pytest.approx(-0.25)
    bare = gs.trace(lambda x: gnp.abs(x), 1.0)
    assert np.isfinite(backend.grad(bare, 0.0))


def test_logsumexp_all_minus_inf(backend):
    x = np.full(4, -np.inf)
    graph = gs.trace(lambda x: gs.nn.logsumexp(x), x)
    value, grad = backend.value_and_grad(graph, x)
    assert float(value) == -np.inf
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad, np.zeros(4))
    # a row of -inf next to a finite row
    rows = np.array([[-np.inf, -np.inf], [0.0, np.log(3.0)]])
    graph = gs.trace(lambda x: gnp.sum(gs.nn.logsumexp(x, axis=1)[1:]), rows)
    value, grad = backend.value_and_grad(graph, rows)
    assert float(value) == pytest.approx(np.log(4.0))
    np.testing.assert_allclose(grad, [[0.0, 0.0], [0.25, 0.75]])
    keep = gs.trace(
        lambda x: gnp.sum(gs.nn.logsumexp(x, axis=-1, keepdims=True) * np.array([[0.0], [1.0]])),
        rows,
    )
    value, grad = backend.value_and_grad(keep, rows)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, [[0.0, 0.0], [0.25, 0.75]])


def test_maximum_minimum_at_ties(backend):
    for op in (gnp.maximum, gnp.minimum):
        graph = gs.trace(lambda x, y: op(x, y), 1.0, 1.0)
        gx, gy = backend.grad(graph, 2.0, 2.0, argnums=(0, 1))
        assert np.isfinite(gx) and np.isfinite(gy)
        assert float(gx) + float(gy) == pytest.approx(1.0)  # d/dt op(t, t) = 1
        assert float(gx) == pytest.approx(0.5)
    red = gs.trace(lambda x: gnp.max(x), np.ones(3))
    grad = backend.grad(red, np.array([1.0, 3.0, 3.0]))
    assert np.all(np.isfinite(grad)) and grad.sum() == pytest.approx(1.0) and grad[0] == 0.0


# ---- NumPy's warnings never leak ------------------------------------------------------------------


def test_no_numpy_warnings_leak(backend):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cases = [
            (lambda x: gnp.log(x), 0.0),
            (lambda x: 1.0 / x, 0.0),
            (lambda x: x / x, 0.0),
            (lambda x: gnp.sqrt(x), -1.0),
            (lambda x: gnp.exp(x), 1000.0),
            (lambda x: gnp.arcsin(x), 2.0),
            (lambda x: x**0.5, -1.0),
            (lambda x: gnp.where(x > 0, gnp.log(x), 0.0), 0.0),
            (lambda x: gnp.where(x > 0, gnp.sqrt(x), 0.0), 0.0),
            (lambda x: gs.nn.logsumexp(gnp.stack([x, x])), -np.inf),
            (lambda x: gnp.maximum(x, 1.0) * gnp.log(x), 0.0),
        ]
        for fn, at in cases:
            graph = gs.trace(fn, 1.0)
            backend.evaluate(graph, at)
            backend.value_and_grad(graph, at)
            backend.jvp(graph, (at,), (1.0,))
            backend.vjp(graph, (at,), 1.0)
            backend.hessian(graph, at)
            backend.check_grad(graph, at if np.isfinite(at) and at > 0.5 else 2.0, method="complex")
        log = gs.trace(lambda x: gnp.log(x), 0.0)
        assert float(backend.evaluate(log, 0.0)) == -np.inf


# ---- bad arguments ----------------------------------------------------------------------------------


@pytest.fixture
def xy_graph():
    return gs.trace(lambda x, y: gnp.sum(x * y), np.ones(3), np.ones(3))


def test_wrong_argument_count_is_type_error(backend, xy_graph):
    with pytest.raises(TypeError):
        backend.evaluate(xy_graph, np.ones(3))
    with pytest.raises(TypeError):
        backend.evaluate(xy_graph, np.ones(3), np.ones(3), np.ones(3))
    with pytest.raises(TypeError):
        backend.grad(xy_graph, np.ones(3))
    with pytest.raises(TypeError):
        backend.vjp(xy_graph, (np.ones(3),), 1.0)
    with pytest.raises(TypeError):
        backend.jvp(xy_graph, (np.ones(3), np.ones(3)), (np.ones(3),))


def test_wrong_shape_is_value_error_naming_the_input(backend, xy_graph):
    with pytest.raises(ValueError, match="'y'|\\by\\b"):
        backend.evaluate(xy_graph, np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="'x'|\\bx\\b"):
        backend.grad(xy_graph, np.ones((3, 1)), np.ones(3))
    with pytest.raises(ValueError, match="'y'|\\by\\b"):
        backend.jvp(xy_graph, (np.ones(3), np.ones(3)), (np.ones(3), np.ones(2)))
    with pytest.raises(ValueError):
        backend.vjp(xy_graph, (np.ones(3), np.ones(3)), np.ones(2))
    with pytest.raises(ValueError):
        backend.evaluate(xy_graph, 1.0, np.ones(3))


def test_wrong_dtype_is_type_error(backend, xy_graph):
    with pytest.raises(TypeError, match="'x'|\\bx\\b"):
        backend.evaluate(xy_graph, np.ones(3) * 1j, np.ones(3))
    with pytest.raises(TypeError):
        backend.grad(xy_graph, np.ones(3), np.array(["a", "b", "c"]))
    ints = gs.trace(lambda n: n * 2, np.array([1, 2]))
    with pytest.raises(TypeError):
        backend.evaluate(ints, np.array([1.5, 2.5]))  # float does not convert safely to int


def test_argnums_on_integer_input_is_type_error(backend):
    graph = gs.trace(lambda x, n: x * n, 1.0, 3)
    assert float(backend.grad(graph, 2.0, 3)) == 3.0
    with pytest.raises(TypeError):
        backend.grad(graph, 2.0, 3, argnums=1)
    with pytest.raises(TypeError):
        backend.value_and_grad(graph, 2.0, 3, argnums=(0, 1))
    with pytest.raises(TypeError):
        backend.jacobian(graph, 2.0, 3, argnums=1)
    flags = gs.trace(lambda x, b: gnp.where(b, x, 0.0), 1.0, True)
    with pytest.raises(TypeError):
        backend.grad(flags, 2.0, True, argnums=1)


def test_not_a_graph(backend):
    with pytest.raises(TypeError):
        backend.evaluate("not a graph", 1.0)


# ---- float32 over the API ---------------------------------------------------------------------------


def test_float32_round_trip(backend):
    x = np.array([0.5, 1.5], np.float32)
    graph = gs.trace(lambda x: gnp.sum(gnp.sin(x) * x), x)
    value, grad = backend.value_and_grad(graph, x)
    assert np.asarray(value).dtype == np.float32 and np.asarray(grad).dtype == np.float32
    np.testing.assert_allclose(grad, np.cos(x) * x + np.sin(x), rtol=1e-6)


# ---- last_stats -----------------------------------------------------------------------------------------


def test_last_stats(backend):
    x = np.random.default_rng(0).normal(size=200)
    graph = gs.trace(lambda x: gnp.sum(gnp.sin(gnp.exp(gnp.tanh(x)))), x)
    backend.value_and_grad(graph, x)
    stats = backend.last_stats
    assert stats.tape_bytes > 0 and stats.tape_entries >= 1
    assert stats.peak_bytes >= stats.tape_bytes
    backend.evaluate(graph, x)
    stats = backend.last_stats
    assert stats.tape_bytes == 0 and stats.tape_entries == 0
    assert stats.peak_bytes >= x.nbytes


# ---- edge cases -------------------------------------------------------------------------------------


def test_identity_and_constant_outputs(backend):
    ident = gs.trace(lambda x: x, 2.0)
    value, grad = backend.value_and_grad(ident, 3.0)
    assert float(value) == 3.0 and float(grad) == 1.0
    assert float(backend.hessian(ident, 3.0)) == 0.0
    for mode in ("fwd", "rev"):
        assert float(backend.jacobian(ident, 3.0, mode=mode)) == 1.0
    const = gs.trace(lambda x: np.float64(3.0) + 0 * x, 1.0)
    value, grad = backend.value_and_grad(const, 5.0)
    assert float(value) == 3.0 and float(grad) == 0.0


def test_same_value_output_twice(backend):
    graph = gs.trace(lambda x: (x, x), np.ones(2))
    _, (ct,) = backend.vjp(graph, (np.array([1.0, 2.0]),), (np.ones(2), np.array([2.0, 3.0])))
    np.testing.assert_array_equal(ct, [3.0, 4.0])
    for mode in ("fwd", "rev"):
        jac = backend.jacobian(graph, np.ones(2), mode=mode)
        np.testing.assert_array_equal(jac[0], np.eye(2))
        np.testing.assert_array_equal(jac[1], np.eye(2))


def test_zero_size_input(backend):
    graph = gs.trace(lambda x, y: gnp.sum(x**2) + y * y, np.ones(0), 1.0)
    value, (gx, gy) = backend.value_and_grad(graph, np.ones(0), 3.0, argnums=(0, 1))
    assert float(value) == 9.0 and gx.shape == (0,) and float(gy) == 6.0
    for mode in ("fwd", "rev"):
        assert backend.jacobian(graph, np.ones(0), 3.0, mode=mode).shape == (0,)
    assert backend.hessian(graph, np.ones(0), 3.0).shape == (0, 0)
    for method in ("forward", "central", "complex"):
        assert backend.check_grad(graph, np.ones(0), 3.0, method=method).ok


def test_traced_integer_index_jacobian(backend):
    graph = gs.trace(lambda x, i: gnp.sin(x[i]), np.ones(4), np.array([0, 2]))
    x = np.arange(4.0)
    want = np.zeros((2, 4))
    want[0, 3] = want[1, 3] = np.cos(3.0)
    for mode in ("fwd", "rev"):
        np.testing.assert_allclose(backend.jacobian(graph, x, np.array([3, 3]), mode=mode), want)


def test_complex_inputs_vjp_jvp(backend):
    graph = gs.trace(lambda z: z * z, np.ones(2, complex))
    z = np.array([1j, 2.0])
    out, tangent = backend.jvp(graph, (z,), (np.array([1.0, 1j]),))
    np.testing.assert_allclose(out, z * z)
    np.testing.assert_allclose(tangent, 2 * z * np.array([1.0, 1j]))
    _, (ct,) = backend.vjp(graph, (z,), np.array([1.0, 1j]))
    np.testing.assert_allclose(ct, 2 * z * np.array([1.0, 1j]))  # JAX's convention: ct * f'(z)


def test_repeated_argnums(backend):
    graph = gs.trace(lambda x, y: gnp.sum(x * y), np.ones(2), np.ones(2))
    g1, g2 = backend.grad(graph, np.ones(2), np.arange(2.0), argnums=(1, 1))
    np.testing.assert_array_equal(g1, np.ones(2))
    np.testing.assert_array_equal(g2, np.ones(2))
