"""Guarded singular points: `where(guard, f(x), c)` where f or its derivative is infinite or
undefined outside the guard. The unselected branch must contribute exactly 0 (not 0 * inf =
nan) to every derivative, in forward and reverse mode, to first and second order, on scalars
(the engine's scalar fast path) and on arrays. Expected values are closed forms."""

import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp

ENG = gs.Engine()


def _guarded(x, inside, fn):
    """fn(x) where `inside`, else 0, without evaluating fn outside."""
    x = np.asarray(x, dtype=float)
    with np.errstate(all="ignore"):
        return np.where(inside(x), fn(np.where(inside(x), x, 1.0)), 0.0)


def _pos(x):
    return x > 0


def _inside_unit(x):
    return np.abs(x) < 1


# name: (form, guard, first derivative, second derivative, points: guard edge first)
FORMS = {
    "log": (
        lambda x: gnp.where(x > 0, gnp.log(x), 0.0),
        _pos,
        lambda x: 1 / x,
        lambda x: -1 / x**2,
        [0.0, 0.25, 4.0],
    ),
    "log_in_false_branch": (
        lambda x: gnp.where(x <= 0, 0.0, gnp.log(x)),
        _pos,
        lambda x: 1 / x,
        lambda x: -1 / x**2,
        [0.0, 0.25, 4.0],
    ),
    "log_of_square": (
        lambda x: gnp.where(x != 0, gnp.log(x * x), 0.0),
        lambda x: x != 0,
        lambda x: 2 / x,
        lambda x: -2 / x**2,
        [0.0, -0.5, 4.0],
    ),
    "log1p": (
        lambda x: gnp.where(x > -1, gnp.log1p(x), 0.0),
        lambda x: x > -1,
        lambda x: 1 / (1 + x),
        lambda x: -1 / (1 + x) ** 2,
        [-1.0, 0.25, 3.0],
    ),
    "sqrt": (
        lambda x: gnp.where(x > 0, gnp.sqrt(x), 0.0),
        _pos,
        lambda x: 0.5 * x**-0.5,
        lambda x: -0.25 * x**-1.5,
        [0.0, 0.25, 4.0],
    ),
    "power_half": (
        lambda x: gnp.where(x > 0, x**0.5, 0.0),
        _pos,
        lambda x: 0.5 * x**-0.5,
        lambda x: -0.25 * x**-1.5,
        [0.0, 0.25, 4.0],
    ),
    "power_negative": (
        lambda x: gnp.where(x > 0, x**-1.5, 0.0),
        _pos,
        lambda x: -1.5 * x**-2.5,
        lambda x: 3.75 * x**-3.5,
        [0.0, 0.25, 4.0],
    ),
    "arcsin": (
        lambda x: gnp.where(gnp.abs(x) < 1, gnp.arcsin(x), 0.0),
        _inside_unit,
        lambda x: 1 / np.sqrt(1 - x * x),
        lambda x: x / (1 - x * x) ** 1.5,
        [1.0, -1.0, 0.5],
    ),
    "arccos": (
        lambda x: gnp.where(gnp.abs(x) < 1, gnp.arccos(x), 0.0),
        _inside_unit,
        lambda x: -1 / np.sqrt(1 - x * x),
        lambda x: -x / (1 - x * x) ** 1.5,
        [1.0, -1.0, 0.5],
    ),
    "reciprocal": (
        lambda x: gnp.where(x != 0, 1.0 / x, 0.0),
        lambda x: x != 0,
        lambda x: -1 / x**2,
        lambda x: 2 / x**3,
        [0.0, 0.25, -4.0],
    ),
}


def _expected(name):
    _, guard, d1, d2, points = FORMS[name]
    x = np.array(points)
    return x, _guarded(x, guard, d1), _guarded(x, guard, d2)


def _assert_equal_to(actual, want):
    """Within rounding of the closed form, and exactly 0 where the closed form is 0."""
    actual = np.asarray(actual)
    assert np.all(np.isfinite(actual)), actual
    np.testing.assert_allclose(actual, want, rtol=1e-13, atol=0)


@pytest.mark.parametrize("name", sorted(FORMS))
def test_guarded_form_reverse_mode(name):
    form = FORMS[name][0]
    x, d1, _ = _expected(name)
    total = gs.trace(lambda x: gnp.sum(form(x)), x)
    value, grad = ENG.value_and_grad(total, x)
    assert np.isfinite(value)
    _assert_equal_to(grad, d1)
    elementwise = gs.trace(form, x)
    _, (ct,) = ENG.vjp(elementwise, (x,), np.ones(3))
    _assert_equal_to(ct, d1)
    _assert_equal_to(np.diag(ENG.jacobian(elementwise, x, mode="rev")), d1)
    off_diagonal = ENG.jacobian(elementwise, x, mode="rev") - np.diag(d1)
    _assert_equal_to(off_diagonal, np.zeros((3, 3)))


@pytest.mark.parametrize("name", sorted(FORMS))
def test_guarded_form_forward_mode(name):
    form = FORMS[name][0]
    x, d1, _ = _expected(name)
    elementwise = gs.trace(form, x)
    _, tangent = ENG.jvp(elementwise, (x,), (np.ones(3),))
    _assert_equal_to(tangent, d1)
    _assert_equal_to(ENG.jacobian(elementwise, x, mode="fwd"), np.diag(d1))


@pytest.mark.parametrize("name", sorted(FORMS))
def test_guarded_form_second_order(name):
    form = FORMS[name][0]
    x, _, d2 = _expected(name)
    total = gs.trace(lambda x: gnp.sum(form(x)), x)
    _assert_equal_to(ENG.hessian(total, x), np.diag(d2))
    (hv,) = ENG.hvp(total, (x,), (np.ones(3),))
    _assert_equal_to(hv, d2)


@pytest.mark.parametrize("name", sorted(FORMS))
def test_guarded_form_on_scalars(name):
    """0-d values take the engine's scalar path (NumPy scalars, not arrays)."""
    form = FORMS[name][0]
    x, d1, d2 = _expected(name)
    graph = gs.trace(form, 1.0)
    for point, want1, want2 in zip(x, d1, d2):
        _assert_equal_to(ENG.grad(graph, point), want1)
        _assert_equal_to(ENG.jvp(graph, (point,), (1.0,))[1], want1)
        _assert_equal_to(ENG.hessian(graph, point), want2)
        _assert_equal_to(ENG.hvp(graph, (point,), (1.0,))[0], want2)


# ---- two inputs: a guarded quotient, a guarded power with a traced exponent ---------------------


def _quotient(x, y):
    return gnp.sum(gnp.where(x != 0, y / x, 0.0))


def test_guarded_quotient_first_order():
    x, y = np.array([0.0, 0.5, -2.0]), np.array([1.5, 2.0, 0.25])
    inside = x != 0
    safe = np.where(inside, x, 1.0)
    dx, dy = np.where(inside, -y / safe**2, 0.0), np.where(inside, 1 / safe, 0.0)
    graph = gs.trace(_quotient, x, y)
    gx, gy = ENG.grad(graph, x, y, argnums=(0, 1))
    _assert_equal_to(gy, dy)
    _assert_equal_to(gx, dx)
    _, tangent = ENG.jvp(graph, (x, y), (np.ones(3), np.ones(3)))
    _assert_equal_to(tangent, np.sum(dx + dy))
    for mode in ("fwd", "rev"):
        jx, jy = ENG.jacobian(graph, x, y, argnums=(0, 1), mode=mode)
        _assert_equal_to(jx, dx)
        _assert_equal_to(jy, dy)


def test_guarded_quotient_second_order():
    x, y = np.array([0.0, 0.5, -2.0]), np.array([1.5, 2.0, 0.25])
    inside = x != 0
    safe = np.where(inside, x, 1.0)
    hxx = np.diag(np.where(inside, 2 * y / safe**3, 0.0))
    hxy = np.diag(np.where(inside, -1 / safe**2, 0.0))
    graph = gs.trace(_quotient, x, y)
    (gxx, gxy), (gyx, gyy) = ENG.hessian(graph, x, y, argnums=(0, 1))
    _assert_equal_to(gxx, hxx)
    _assert_equal_to(gxy, hxy)
    _assert_equal_to(gyx, hxy)
    _assert_equal_to(gyy, np.zeros((3, 3)))
    hx, hy = ENG.hvp(graph, (x, y), (np.ones(3), np.ones(3)))
    _assert_equal_to(hx, hxx.sum(1) + hxy.sum(1))
    _assert_equal_to(hy, hxy.sum(0))


def test_guarded_power_with_traced_exponent_at_zero_base():
    """d/dy x**y = x**y log x, d/dx = y x**(y-1): both 0 at x = 0 behind the guard, to
    second order; closed forms elsewhere."""
    x, y = np.array([0.0, 0.5, 2.0]), np.array([1.5, 2.0, 0.5])
    graph = gs.trace(lambda x, y: gnp.sum(gnp.where(x > 0, x**y, 0.0)), x, y)
    inside = x > 0
    s = np.where(inside, x, 1.0)
    log = np.log(s)
    dx = np.where(inside, y * s ** (y - 1), 0.0)
    dy = np.where(inside, s**y * log, 0.0)
    hxx = np.where(inside, y * (y - 1) * s ** (y - 2), 0.0)
    hxy = np.where(inside, s ** (y - 1) * (1 + y * log), 0.0)
    hyy = np.where(inside, s**y * log**2, 0.0)
    gx, gy = ENG.grad(graph, x, y, argnums=(0, 1))
    _assert_equal_to(gx, dx)
    _assert_equal_to(gy, dy)
    _, tangent = ENG.jvp(graph, (x, y), (np.ones(3), np.ones(3)))
    np.testing.assert_allclose(tangent, np.sum(dx + dy), rtol=1e-13)
    (gxx, gxy), (gyx, gyy) = ENG.hessian(graph, x, y, argnums=(0, 1))
    _assert_equal_to(gxx, np.diag(hxx))
    _assert_equal_to(gxy, np.diag(hxy))
    _assert_equal_to(gyx, np.diag(hxy))
    _assert_equal_to(gyy, np.diag(hyy))


# ---- a guarded norm ------------------------------------------------------------------------------


def _norm(x):
    s = gnp.sum(x * x)
    return gnp.where(s > 0, gnp.sqrt(s), 0.0)


def test_guarded_norm_at_zero_every_mode():
    zero = np.zeros(3)
    graph = gs.trace(_norm, zero)
    assert float(ENG.evaluate(graph, zero)) == 0.0
    _assert_equal_to(ENG.grad(graph, zero), zero)
    _assert_equal_to(ENG.jvp(graph, (zero,), (np.ones(3),))[1], 0.0)
    _assert_equal_to(ENG.jacobian(graph, zero, mode="fwd"), zero)
    _assert_equal_to(ENG.jacobian(graph, zero, mode="rev"), zero)
    _assert_equal_to(ENG.hessian(graph, zero), np.zeros((3, 3)))
    _assert_equal_to(ENG.hvp(graph, (zero,), (np.ones(3),))[0], zero)


def test_guarded_norm_away_from_zero_closed_form():
    x = np.array([3.0, 0.0, 4.0])
    graph = gs.trace(_norm, x)
    r = 5.0
    _assert_equal_to(ENG.grad(graph, x), x / r)
    _assert_equal_to(ENG.jvp(graph, (x,), (np.ones(3),))[1], np.sum(x) / r)
    hessian = (np.eye(3) - np.outer(x, x) / r**2) / r
    np.testing.assert_allclose(ENG.hessian(graph, x), hessian, rtol=1e-13, atol=1e-17)
    np.testing.assert_allclose(
        ENG.hvp(graph, (x,), (np.ones(3),))[0], hessian.sum(1), rtol=1e-13, atol=1e-17
    )


def test_power_with_zero_base_under_an_infinite_slope():
    """sqrt(x**y): at x = 0 the cotangent reaching the power is infinite (sqrt's slope at 0)
    while d(x**y)/dy = x**y log x is 0 (0**y is 0 for every y > 0): the product must be 0."""
    x, y = np.array([0.0, 4.0]), np.array([3.0, 3.0])
    graph = gs.trace(lambda x, y: gnp.sum(gnp.sqrt(x**y)), x, y)
    gx, gy = ENG.grad(graph, x, y, argnums=(0, 1))
    # sqrt(x**3) = x**1.5: d/dx = 1.5 sqrt(x); d/dy = x**1.5 log(x) / 2
    _assert_equal_to(gx, [0.0, 3.0])
    _assert_equal_to(gy, [0.0, 8.0 * np.log(4.0) / 2])
    scalar = gs.trace(lambda x, y: gnp.sqrt(x**y), 1.0, 1.0)
    gx, gy = ENG.grad(scalar, 0.0, 3.0, argnums=(0, 1))
    _assert_equal_to(gx, 0.0)
    _assert_equal_to(gy, 0.0)


# g(x) with g finite and g' infinite at the guard's edge, times a factor in a second input:
# name: (g, its guard, the guard in NumPy, g in NumPy, g' in NumPy, points)
MIXED = {
    "sqrt": (gnp.sqrt, lambda x: x > 0, _pos, np.sqrt, lambda x: 0.5 * x**-0.5, [0.0, 0.25, 4.0]),
    "power_half": (
        lambda x: x**0.5,
        lambda x: x > 0,
        _pos,
        np.sqrt,
        lambda x: 0.5 * x**-0.5,
        [0.0, 0.25, 4.0],
    ),
    "arcsin": (
        gnp.arcsin,
        lambda x: gnp.abs(x) < 1,
        _inside_unit,
        np.arcsin,
        lambda x: 1 / np.sqrt(1 - x * x),
        [1.0, -1.0, 0.5],
    ),
}


@pytest.mark.parametrize("name", sorted(MIXED))
def test_guarded_mixed_second_derivative(name):
    """f = where(guard, g(x) sin(y), 0): d/dy of df/dx = g'(x) cos(y), 0 outside the guard.
    The y-tangent of the cotangent reaching g is an actual zero array there (not a symbolic
    zero), so g's rule differentiated again must give 0 * inf = 0. (An hvp along y only:
    along x, d/dx of df/dy = d/dx (g(x) cos y) multiplies the zero cotangent by g's infinite
    slope in a plain product, outside the documented guarantee.)"""
    g, guard, np_guard, np_g, np_dg, points = MIXED[name]
    x, y = np.array(points), np.array([0.3, -1.2, 2.0])
    graph = gs.trace(lambda x, y: gnp.sum(gnp.where(guard(x), g(x) * gnp.sin(y), 0.0)), x, y)
    ty = np.array([1.0, -0.5, 2.0])
    hx, hy = ENG.hvp(graph, (x, y), (np.zeros(3), ty))
    _assert_equal_to(hx, _guarded(x, np_guard, np_dg) * np.cos(y) * ty)
    _assert_equal_to(hy, -_guarded(x, np_guard, np_g) * np.sin(y) * ty)
    hxy = ENG.hessian(graph, x, y, argnums=(0, 1))[0][1]  # d/dy of df/dx
    _assert_equal_to(hxy, np.diag(_guarded(x, np_guard, np_dg) * np.cos(y)))


# ---- the zero-safe products replace only 0 * inf, 0 * nan, 0 / 0 -------------------------------


@pytest.mark.parametrize("y", [0.5, -1.0])
def test_unguarded_power_slope_at_zero_base_stays_infinite(y):
    """d(x**y)/dx at x = 0 is y * 0**(y-1), +inf for y = 0.5 and -inf for y = -1: a nonzero
    tangent times an infinite slope is no 0 * inf, so it is not zeroed, on scalars and arrays."""
    with np.errstate(divide="ignore"):
        want = y * np.float64(0.0) ** (y - 1)
    scalar = gs.trace(lambda x: gnp.power(x, y), 1.0)
    assert ENG.grad(scalar, 0.0) == want
    assert ENG.jvp(scalar, (0.0,), (1.0,))[1] == want
    array = gs.trace(lambda x: gnp.power(x, y), np.zeros(2))
    _, (ct,) = ENG.vjp(array, (np.zeros(2),), np.ones(2))
    np.testing.assert_array_equal(ct, [want, want])
    np.testing.assert_array_equal(ENG.jvp(array, (np.zeros(2),), (np.ones(2),))[1], [want, want])


def test_quotient_tangent_keeps_the_sign_of_a_zero():
    """The tangent of x / y is exactly tx / y where that is finite: a zero tangent over a
    negative y is -0.0, as in NumPy, on scalars as on arrays."""
    x, y, tx, ty = np.ones(2), np.array([-2.0, 2.0]), np.array([0.0, -0.0]), np.zeros(2)
    want = (tx - ty * (x / y)) / y  # -0.0 both times
    assert np.all(want == 0) and np.all(np.signbit(want))
    scalar = gs.trace(lambda x, y: x / y, 1.0, 1.0)
    for k in range(2):
        got = ENG.jvp(scalar, (x[k], y[k]), (tx[k], ty[k]))[1]
        assert got == 0 and np.signbit(got)
    array = gs.trace(lambda x, y: x / y, x, y)
    got = ENG.jvp(array, (x, y), (tx, ty))[1]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.signbit(got), np.signbit(want))
