"""Four results that used to be wrong, each against NumPy (values) and against the limit or
the analytic derivative: std of one element, abs of complex numbers, var/std of complex data,
and inner for every rank combination. The complex step keeps its extensions for real data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp

RNG = np.random.default_rng(0)

# ---- std of a single element: identically 0, so every derivative is 0 ------------------------


def test_std_of_one_scalar_has_zero_derivatives(backend):
    graph = gs.trace(gnp.std, 3.5)
    assert backend.evaluate(graph, 3.5) == 0.0
    assert backend.grad(graph, 3.5) == 0.0  # was nan (reverse mode)
    assert backend.hessian(graph, 3.5) == 0.0  # was nan
    assert backend.jvp(graph, (3.5,), (1.0,))[1] == 0.0
    assert backend.vjp(graph, (3.5,), 1.0)[1][0] == 0.0
    assert backend.hvp(graph, (3.5,), (1.0,))[0] == 0.0


@pytest.mark.parametrize("keepdims", [False, True])
def test_std_along_an_axis_of_length_one(backend, keepdims):
    x = np.array([[1.0, -2.0, 3.0]])
    graph = gs.trace(lambda x: gnp.sum(gnp.std(x, axis=0, keepdims=keepdims) * 2.0), x)
    assert backend.evaluate(graph, x) == 0.0
    np.testing.assert_array_equal(backend.grad(graph, x), np.zeros((1, 3)))
    H = backend.hessian(graph, x)
    assert H.shape == (1, 3, 1, 3)
    np.testing.assert_array_equal(H, 0.0)
    # along the other axis (3 elements) the derivatives are the usual ones
    other = gs.trace(lambda x: gnp.std(x, axis=1)[0], x)
    g = backend.grad(other, x)
    np.testing.assert_allclose(g, (x - x.mean()) / (3 * x.std()), rtol=1e-12)


def test_std_of_one_element_keeps_nan_and_numpy_values():
    eng = gs.Engine()
    graph = gs.trace(lambda x: gnp.std(x, axis=0), np.ones((1, 2)))
    for x in (np.array([[np.nan, 1.0]]), np.array([[np.inf, -4.0]])):
        with np.errstate(invalid="ignore"):
            np.testing.assert_array_equal(eng.evaluate(graph, x), np.std(x, axis=0))
    assert gnp.std(np.array([3.5])) == 0.0
    z = gs.trace(gnp.std, np.ones(1, complex))
    assert z.outputs[0].spec.dtype == "float64"
    assert eng.evaluate(z, np.array([1 + 2j])) == 0.0


# ---- abs of complex numbers: NumPy's modulus; the extension only inside the complex step ------


def test_abs_of_complex_is_the_modulus(backend):
    graph = gs.trace(gnp.abs, 1j)
    assert graph.outputs[0].spec.dtype == "float64"
    assert backend.evaluate(graph, 1.1 + 1.2j) == pytest.approx(1.6278820596099706, abs=0)
    z = np.array([3 + 4j, -1 - 1j, 0j, -2 + 0j])
    arr = gs.trace(lambda z: abs(z), z)
    np.testing.assert_array_equal(backend.evaluate(arr, z), np.abs(z))
    assert gnp.abs(np.complex128(1.1 + 1.2j)) == np.abs(1.1 + 1.2j)  # concrete


def test_abs_of_complex_derivatives(backend):
    z0 = 3 + 4j
    graph = gs.trace(lambda z: 2.0 * gnp.abs(z), 1j)
    _, (ct,) = backend.vjp(graph, (z0,), 1.0)
    assert ct == pytest.approx(2 * np.conj(z0) / 5)  # JAX's convention: conj(z) / |z|
    _, t = backend.jvp(graph, (z0,), (1j,))
    assert t == pytest.approx(2 * 4 / 5)  # Re(conj(z) dz) / |z|
    _, (at_zero,) = backend.vjp(graph, (0j,), 1.0)
    assert at_zero == 0


def test_complex_step_through_abs_still_uses_the_extension(backend):
    x = np.array([0.5, -1.0, 2.0, -0.25])
    graph = gs.trace(lambda x: gnp.sum(gnp.abs(gnp.sin(x)) * x + abs(x - 1.0) ** 3), x)
    report = backend.check_grad(graph, x, method="complex")
    assert report.ok and report.max_rel_error < 1e-13


# ---- var and std of complex data: real, NumPy's mean(|x - m|**2) ----------------------------


@pytest.mark.parametrize("fn", [gnp.var, gnp.std])
@pytest.mark.parametrize("axis, ddof", [(None, 0), (0, 0), (1, 1), ((0, 1), 0)])
def test_var_std_of_complex_data_match_numpy(backend, fn, axis, ddof):
    z = RNG.normal(size=(3, 4)) + 1j * RNG.normal(size=(3, 4))
    graph = gs.trace(lambda z: fn(z, axis=axis, ddof=ddof), z)
    ref = getattr(np, fn.__name__)(z, axis=axis, ddof=ddof)
    assert all(p.spec.dtype == "float64" for p in graph.outputs)
    np.testing.assert_allclose(backend.evaluate(graph, z), ref, rtol=1e-13)
    np.testing.assert_allclose(fn(z, axis=axis, ddof=ddof), ref, rtol=1e-13)  # concrete


def test_var_of_complex_data_derivatives(backend):
    z = np.array([1 + 2j, 3 - 1j, 0.5 + 0.5j, -1j])
    graph = gs.trace(gnp.var, z)
    g = backend.grad(graph, z)
    np.testing.assert_allclose(g, 2 * np.conj(z - z.mean()) / z.size, rtol=1e-13)
    # the derivative along a direction: 2 Re(conj(z - m) . dz) / n
    dz = np.array([0.3 - 1j, 1j, 2.0, -0.5 + 0.5j])
    _, t = backend.jvp(graph, (z,), (dz,))
    d = z - z.mean()
    assert t == pytest.approx(2 * np.real(np.vdot(d, dz - dz.mean())) / z.size)
    # smooth: the Hessian along dz is finite even at constant data
    (hv,) = backend.hvp(graph, (np.full(4, 1 + 1j),), (dz,))
    assert np.all(np.isfinite(hv))
    std = gs.trace(gnp.std, z)
    np.testing.assert_allclose(backend.grad(std, z), g / (2 * np.std(z)), rtol=1e-12)


@pytest.mark.parametrize("fn", [gnp.var, gnp.std])
def test_complex_step_of_var_and_std_of_real_data(backend, fn):
    """Real data under the complex step stays the holomorphic mean((x - m)**2)."""
    x = RNG.normal(size=(3, 5))
    graph = gs.trace(lambda x: gnp.sum(fn(x, axis=1, ddof=1) * gnp.arange(3.0)), x)
    report = backend.check_grad(graph, x, method="complex")
    assert report.ok and report.max_rel_error < 1e-12


# ---- inner: NumPy's semantics for every rank -----------------------------------------------

SHAPES = {0: (), 1: (3,), 2: (4, 3), 3: (2, 5, 3)}


@pytest.mark.parametrize("na, nb", list(itertools.product(range(4), range(4))))
def test_inner_matches_numpy(na, nb):
    a = RNG.normal(size=SHAPES[na])
    b = RNG.normal(size=(6, 3) if nb == 2 else SHAPES[nb])
    ref = np.inner(a, b)
    eng = gs.Engine()
    graph = gs.trace(gnp.inner, a, b)
    out = eng.evaluate(graph, a, b)
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-13)
    np.testing.assert_allclose(gnp.inner(a, b), ref, rtol=1e-13)
    loss = gs.trace(lambda a, b: gnp.sum(gnp.sin(gnp.inner(a, b))), a, b)
    assert eng.check_grad(loss, a, b).ok
    assert eng.check_grad(loss, a, b, method="complex").ok


def test_inner_of_a_scalar_and_a_matrix_is_not_transposed(backend):
    B = np.arange(12.0).reshape(4, 3)
    graph = gs.trace(gnp.inner, 1.5, B)
    np.testing.assert_array_equal(backend.evaluate(graph, 1.5, B), 1.5 * B)
    loss = gs.trace(lambda s, B: gnp.sum(gnp.inner(s, B) * B), 1.5, B)
    gs_, gB = backend.grad(loss, 1.5, B, argnums=(0, 1))
    assert gs_ == pytest.approx(np.sum(B * B))
    np.testing.assert_allclose(gB, 2 * 1.5 * B)


def test_inner_refuses_mismatched_last_axes():
    with pytest.raises(ValueError):
        gs.trace(gnp.inner, np.ones((2, 3)), np.ones(4))
