"""gnp.linalg against numpy.linalg: values, JVP, VJP and whole Jacobians (both modes, so every
batch rule) against central differences of NumPy's functions; second order against
differences of the engine's gradient; float32; stacks of matrices; the wire and the client;
the norm's derivative at 0; failing factorizations giving nan."""

import numpy as np
import pytest
from test_ops import check_op

import gradserve as gs
import gradserve.numpy as gnp

ENG = gs.Engine()
la = gnp.linalg


def well_conditioned(rng, shape):
    """Random matrices with singular values well away from 0."""
    m, n = shape[-2:]
    a = rng.normal(size=shape) * 0.5
    k = min(m, n)
    a[..., range(k), range(k)] += 2.0 + np.arange(k)  # a dominant, distinct diagonal
    return a


def normal(rng, shape):
    return rng.normal(size=shape)


def spd(rng, shape):
    b = rng.normal(size=shape)
    return b @ np.swapaxes(b, -1, -2) + shape[-1] * np.eye(shape[-1])


def symmetric_distinct(rng, shape):
    """Symmetric, eigenvalues 1, 2.5, 4, ... (distinct) in random bases."""
    n = shape[-1]
    q, _ = np.linalg.qr(rng.normal(size=shape))
    w = 1.0 + 1.5 * np.arange(n)
    return (q * w[..., None, :]) @ np.swapaxes(q, -1, -2)


def symmetrized(fn):
    """A NumPy function of the matrix whose lower triangle is that of a (what NumPy's
    cholesky and eigh read)."""

    def wrapped(a, *rest):
        low = np.tril(a)
        return fn(low + np.swapaxes(np.tril(a, -1), -1, -2), *rest)

    return wrapped


def projectors(u, vh):
    """u[:, k] vh[k, :] for each k: free of the sign of each singular pair."""
    return np.einsum("...ik,...kj->...kij", u, vh)


def gprojectors(u, vh):
    return gnp.einsum("...ik,...kj->...kij", u, vh)


def parts(z):
    """Real and imaginary parts, stacked: a real function of a complex result."""
    return gnp.stack([gnp.real(z), gnp.imag(z)])


def np_parts(z):
    return np.stack([np.real(z), np.imag(z)])


RTOL, ATOL = 1e-5, 1e-6

# name: (gnp function, NumPy function, one maker per argument, shapes per argument)
CASES = {
    "solve_matrix": (la.solve, np.linalg.solve, [well_conditioned, normal], [(3, 3), (3, 2)]),
    "solve_vector": (la.solve, np.linalg.solve, [well_conditioned, normal], [(3, 3), (3,)]),
    "solve_stack": (la.solve, np.linalg.solve, [well_conditioned, normal], [(2, 3, 3), (2, 3, 2)]),
    "solve_broadcast": (la.solve, np.linalg.solve, [well_conditioned, normal], [(2, 3, 3), (3, 1)]),
    "inv": (la.inv, np.linalg.inv, [well_conditioned], [(3, 3)]),
    "inv_stack": (la.inv, np.linalg.inv, [well_conditioned], [(2, 2, 2)]),
    "det": (la.det, np.linalg.det, [well_conditioned], [(3, 3)]),
    "det_stack": (la.det, np.linalg.det, [well_conditioned], [(2, 3, 3)]),
    "det_1x1": (la.det, np.linalg.det, [well_conditioned], [(1, 1)]),
    "slogdet_logabsdet": (
        lambda a: la.slogdet(a).logabsdet,
        lambda a: np.linalg.slogdet(a).logabsdet,
        [well_conditioned],
        [(2, 3, 3)],
    ),
    "slogdet_negative": (
        lambda a: la.slogdet(-a)[1] * la.slogdet(-a)[0],
        lambda a: np.linalg.slogdet(-a)[1] * np.linalg.slogdet(-a)[0],
        [well_conditioned],
        [(3, 3)],
    ),
    "cholesky": (la.cholesky, symmetrized(np.linalg.cholesky), [spd], [(3, 3)]),
    "cholesky_stack": (la.cholesky, symmetrized(np.linalg.cholesky), [spd], [(2, 3, 3)]),
    "cholesky_upper": (
        lambda a: la.cholesky(a, upper=True),
        symmetrized(lambda a: np.linalg.cholesky(a, upper=True)),
        [spd],
        [(3, 3)],
    ),
    "eigh_values": (
        lambda a: la.eigh(a)[0],
        symmetrized(lambda a: np.linalg.eigh(a)[0]),
        [symmetric_distinct],
        [(2, 3, 3)],
    ),
    "eigh_vectors_squared": (
        lambda a: la.eigh(a)[1] ** 2,
        symmetrized(lambda a: np.linalg.eigh(a)[1] ** 2),
        [symmetric_distinct],
        [(4, 4)],
    ),
    "eigh_projectors": (
        lambda a: gprojectors(la.eigh(a)[1], la.eigh(a)[1].T),
        symmetrized(lambda a: projectors(np.linalg.eigh(a)[1], np.linalg.eigh(a)[1].T)),
        [symmetric_distinct],
        [(3, 3)],
    ),
    "eigh_upper": (
        lambda a: la.eigh(a, UPLO="U").eigenvalues,
        lambda a: np.linalg.eigh(a, UPLO="U").eigenvalues,
        [symmetric_distinct],
        [(3, 3)],
    ),
    "eigvalsh": (
        la.eigvalsh,
        symmetrized(np.linalg.eigvalsh),
        [symmetric_distinct],
        [(2, 3, 3)],
    ),
    "eigvalsh_upper": (
        lambda a: la.eigvalsh(a, "U"),
        lambda a: np.linalg.eigvalsh(a, "U"),
        [symmetric_distinct],
        [(3, 3)],
    ),
    "eigvals_parts": (
        lambda a: parts(la.eigvals(a)),
        lambda a: np_parts(np.linalg.eigvals(a)),
        [normal],
        [(2, 4, 4)],
    ),
    "eigvals_real_squared": (
        lambda a: gnp.sum(gnp.real(la.eigvals(a)) ** 2),
        lambda a: np.sum(np.real(np.linalg.eigvals(a)) ** 2),
        [normal],
        [(4, 4)],
    ),
    "eig_vectors_squared": (
        lambda a: parts(la.eig(a).eigenvectors ** 2),  # free of LAPACK's sign
        lambda a: np_parts(np.linalg.eig(a).eigenvectors ** 2),
        [normal],
        [(2, 3, 3)],
    ),
    "eig_symmetric_vectors": (
        lambda a: parts(la.eig(a)[1] ** 2),
        lambda a: np_parts(np.linalg.eig(a)[1].astype(complex) ** 2),
        [symmetric_distinct],
        [(3, 3)],
    ),
    "svd_values": (
        lambda a: la.svd(a, compute_uv=False),
        lambda a: np.linalg.svd(a, compute_uv=False),
        [well_conditioned],
        [(2, 4, 3)],
    ),
    "svd_square": (
        lambda a: gprojectors(*la.svd(a, full_matrices=False)[::2]),
        lambda a: projectors(*np.linalg.svd(a, full_matrices=False)[::2]),
        [well_conditioned],
        [(3, 3)],
    ),
    "svd_tall": (
        lambda a: gprojectors(*la.svd(a, full_matrices=False)[::2]),
        lambda a: projectors(*np.linalg.svd(a, full_matrices=False)[::2]),
        [well_conditioned],
        [(4, 2)],
    ),
    "svd_wide_u_squared": (
        lambda a: la.svd(a, full_matrices=False).U ** 2,
        lambda a: np.linalg.svd(a, full_matrices=False).U ** 2,
        [well_conditioned],
        [(2, 4)],
    ),
    "svd_wide_vh_squared": (
        lambda a: la.svd(a, full_matrices=False).Vh ** 2,
        lambda a: np.linalg.svd(a, full_matrices=False).Vh ** 2,
        [well_conditioned],
        [(2, 4)],
    ),
    "qr_q": (lambda a: la.qr(a).Q, lambda a: np.linalg.qr(a).Q, [well_conditioned], [(3, 3)]),
    "qr_r": (lambda a: la.qr(a).R, lambda a: np.linalg.qr(a).R, [well_conditioned], [(3, 3)]),
    "qr_tall_q": (
        lambda a: la.qr(a)[0],
        lambda a: np.linalg.qr(a)[0],
        [well_conditioned],
        [(4, 2)],
    ),
    "qr_tall_r": (
        lambda a: la.qr(a, mode="r"),
        lambda a: np.linalg.qr(a, mode="r"),
        [well_conditioned],
        [(2, 4, 2)],
    ),
    "qr_wide_q": (
        lambda a: la.qr(a)[0],
        lambda a: np.linalg.qr(a)[0],
        [well_conditioned],
        [(2, 4)],
    ),
    "qr_wide_r": (
        lambda a: la.qr(a)[1],
        lambda a: np.linalg.qr(a)[1],
        [well_conditioned],
        [(2, 4)],
    ),
    "pinv_square": (la.pinv, np.linalg.pinv, [well_conditioned], [(3, 3)]),
    "pinv_tall": (la.pinv, np.linalg.pinv, [well_conditioned], [(4, 2)]),
    "pinv_wide_stack": (la.pinv, np.linalg.pinv, [well_conditioned], [(2, 2, 3)]),
    "tensordot_int": (
        lambda a, b: gnp.tensordot(a, b, 1),
        lambda a, b: np.tensordot(a, b, 1),
        [normal] * 2,
        [(2, 3), (3, 4)],
    ),
    "tensordot_default": (gnp.tensordot, np.tensordot, [normal] * 2, [(2, 3, 4), (3, 4, 2)]),
    "tensordot_pairs": (
        lambda a, b: gnp.tensordot(a, b, axes=([0, 2], [2, 0])),
        lambda a, b: np.tensordot(a, b, axes=([0, 2], [2, 0])),
        [normal] * 2,
        [(2, 3, 4), (4, 3, 2)],
    ),
    "tensordot_zero": (
        lambda a, b: gnp.tensordot(a, b, 0),
        lambda a, b: np.tensordot(a, b, 0),
        [normal] * 2,
        [(2,), (3,)],
    ),
}

# norms: (ord, axis, keepdims, shape)
NORMS = {
    "vector_default": (None, None, False, (4,)),
    "flattened_default": (None, None, False, (2, 3, 2)),
    "flattened_keepdims": (None, None, True, (2, 3)),
    "vector_2": (2, None, False, (4,)),
    "vector_1": (1, None, False, (4,)),
    "vector_inf": (np.inf, None, False, (4,)),
    "vector_minus_inf": (-np.inf, None, False, (4,)),
    "vector_3": (3, None, False, (4,)),
    "vector_half": (0.5, None, False, (4,)),
    "vector_minus_1": (-1, None, False, (4,)),
    "rows_2": (None, 1, False, (3, 4)),
    "rows_2_keepdims": (2, -1, True, (3, 4)),
    "columns_1": (1, 0, True, (3, 4)),
    "fro": ("fro", None, False, (3, 4)),
    "fro_axes": ("fro", (2, 0), False, (3, 2, 4)),
    "matrix_1": (1, None, False, (3, 4)),
    "matrix_minus_1": (-1, None, False, (3, 4)),
    "matrix_inf": (np.inf, None, False, (3, 4)),
    "matrix_minus_inf_axes": (-np.inf, (2, 0), True, (3, 2, 4)),
    "matrix_1_axes": (1, (0, 2), False, (3, 2, 4)),
    "matrix_2": (2, None, False, (3, 4)),
    "matrix_minus_2": (-2, None, False, (4, 3)),
    "nuc": ("nuc", None, False, (3, 3)),
    "nuc_axes_keepdims": ("nuc", (2, 1), True, (2, 3, 4)),
}


def _args(rng, makers, shapes):
    return [make(rng, shape) for make, shape in zip(makers, shapes)]


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("seed", [0, 1])
def test_values_and_derivatives(name, seed):
    fn, np_fn, makers, shapes = CASES[name]
    rng = np.random.default_rng(seed)
    check_op(fn, np_fn, _args(rng, makers, shapes), seed=seed, rtol=RTOL, atol=ATOL)


def _distinct_magnitudes(rng, shape):
    """Entries of distinct magnitudes well away from 0 (no ties in max/min, no kink of |x|);
    distinct singular values for the matrix 2-norms."""
    n = int(np.prod(shape))
    values = (0.5 + rng.permutation(n) * 0.37) * rng.choice([-1.0, 1.0], n)
    return values.reshape(shape)


@pytest.mark.parametrize("name", sorted(NORMS))
def test_norm(name):
    ord, axis, keepdims, shape = NORMS[name]
    x = _distinct_magnitudes(np.random.default_rng(3), shape)
    check_op(
        lambda x: la.norm(x, ord, axis, keepdims),
        lambda x: np.linalg.norm(x, ord, axis, keepdims),
        [x],
        rtol=RTOL,
        atol=ATOL,
    )


def test_norm_zero_order_counts_nonzeros():
    x = np.array([0.0, 1.5, -2.0, 0.0])
    graph = gs.trace(lambda x: la.norm(x, 0), x)
    assert float(ENG.evaluate(graph, x)) == 2.0
    np.testing.assert_array_equal(ENG.grad(graph, x), np.zeros(4))


@pytest.mark.parametrize(
    "ord, shape", [(None, (3,)), (2, (3,)), ("fro", (2, 2)), (3, (3,)), (None, (2, 3, 1))]
)
def test_norm_at_zero_has_derivative_zero(ord, shape):
    zero = np.zeros(shape)
    graph = gs.trace(lambda x: la.norm(x, ord), zero)
    assert float(ENG.evaluate(graph, zero)) == 0.0
    np.testing.assert_array_equal(ENG.grad(graph, zero), zero)
    _, tangent = ENG.jvp(graph, (zero,), (np.ones(shape),))
    assert float(tangent) == 0.0
    for mode in ("fwd", "rev"):
        np.testing.assert_array_equal(ENG.jacobian(graph, zero, mode=mode), zero)
    hessian = ENG.hessian(graph, zero)
    assert np.all(np.isfinite(hessian))
    np.testing.assert_array_equal(hessian, np.zeros(shape + shape))


def test_norm_rejects_what_numpy_rejects():
    for ord, axis in [("fro", 0), ("bad", None), (3, (0, 1))]:
        with pytest.raises(ValueError):
            gs.trace(lambda x, ord=ord, axis=axis: la.norm(x, ord, axis), np.ones((2, 2)))
    with pytest.raises(ValueError):
        gs.trace(lambda x: la.norm(x, axis=(0, 1, 2)), np.ones((2, 2, 2)))


# ---- second order ------------------------------------------------------------------------------

SECOND = {
    "logabsdet": (lambda a: la.slogdet(a)[1], well_conditioned, (3, 3)),
    "det": (la.det, well_conditioned, (3, 3)),
    "inv_sum": (lambda a: gnp.sum(la.inv(a) ** 2), well_conditioned, (2, 2)),
    "solve": (lambda a: gnp.sum(la.solve(a, gnp.ones(3)) ** 3), well_conditioned, (3, 3)),
    "cholesky": (lambda a: gnp.sum(gnp.sin(la.cholesky(a))), spd, (3, 3)),
    "eigh": (
        lambda a: gnp.sum(la.eigh(a)[0] ** 3) + gnp.sum(la.eigh(a)[1][:, 0] ** 4),
        symmetric_distinct,
        (3, 3),
    ),
    "svd": (lambda a: gnp.sum(la.svd(a, compute_uv=False) ** 3), well_conditioned, (3, 2)),
    "eig": (
        lambda a: gnp.sum(gnp.real(la.eigvals(a)) ** 3 + gnp.imag(la.eig(a)[1] ** 2)),
        normal,
        (3, 3),
    ),
    "qr": (lambda a: gnp.sum(gnp.sin(la.qr(a).R)), well_conditioned, (3, 3)),
    "norm": (lambda a: la.norm(a) + la.norm(gnp.ravel(a), 3), well_conditioned, (2, 2)),
}


@pytest.mark.parametrize("name", sorted(SECOND))
def test_second_order_against_differences_of_the_gradient(name):
    fn, make, shape = SECOND[name]
    a = make(np.random.default_rng(5), shape)
    graph = gs.trace(fn, a)
    hessian = ENG.hessian(graph, a)
    numeric = np.zeros(shape + shape)
    h = 1e-5
    for j in np.ndindex(*shape):
        step = np.zeros(shape)
        step[j] = h
        numeric[(Ellipsis,) + j] = (ENG.grad(graph, a + step) - ENG.grad(graph, a - step)) / (2 * h)
    np.testing.assert_allclose(hessian, numeric, rtol=1e-5, atol=1e-6)
    tangent = np.random.default_rng(6).normal(size=shape)
    (hvp,) = ENG.hvp(graph, (a,), (tangent,))
    np.testing.assert_allclose(hvp, np.tensordot(hessian, tangent, a.ndim), rtol=1e-8, atol=1e-9)


# ---- float32 ---------------------------------------------------------------------------------

FLOAT32 = {
    "solve": (
        lambda a: la.solve(a, gnp.ones((3, 1), "float32")),
        lambda a: np.linalg.solve(a, np.ones((3, 1))),
    ),
    "inv": (la.inv, np.linalg.inv),
    "det": (la.det, np.linalg.det),
    "logabsdet": (lambda a: la.slogdet(a)[1], lambda a: np.linalg.slogdet(a)[1]),
    "cholesky": (lambda a: la.cholesky(a @ a.T), lambda a: np.linalg.cholesky(a @ a.T)),
    "eigh": (lambda a: la.eigh(a + a.T)[0], lambda a: np.linalg.eigh(a + a.T)[0]),
    "svd": (lambda a: la.svd(a)[1], lambda a: np.linalg.svd(a)[1]),
    "qr": (lambda a: la.qr(a)[1], lambda a: np.linalg.qr(a)[1]),
    "norm": (lambda a: la.norm(a, "nuc"), lambda a: np.linalg.norm(a, "nuc")),
    "pinv": (la.pinv, np.linalg.pinv),
}


@pytest.mark.parametrize("name", sorted(FLOAT32))
def test_float32_stays_float32(name):
    fn, np_fn = FLOAT32[name]
    a = well_conditioned(np.random.default_rng(8), (3, 3)).astype(np.float32)
    graph = gs.trace(fn, a)
    out = ENG.evaluate(graph, a)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, np_fn(a.astype(np.float64)), rtol=1e-4, atol=1e-5)
    scalar = gs.trace(lambda a: gnp.sum(fn(a)), a)
    grad = ENG.grad(scalar, a)
    assert grad.dtype == np.float32
    grad64 = ENG.grad(
        gs.trace(lambda a: gnp.sum(fn(a)), a.astype(np.float64)), a.astype(np.float64)
    )
    np.testing.assert_allclose(grad, grad64, rtol=1e-3, atol=1e-3)


# ---- the complex step, checks ----------------------------------------------------------------


@pytest.mark.parametrize(
    "fn",
    [
        lambda a: la.det(a),
        lambda a: la.slogdet(a)[1],
        lambda a: gnp.sum(la.inv(a) ** 2),
        lambda a: gnp.sum(la.solve(a, gnp.ones(3))),
    ],
)
def test_complex_step_check_grad(fn):
    a = well_conditioned(np.random.default_rng(9), (3, 3))
    graph = gs.trace(fn, a)
    for method in ("complex", "central"):
        assert ENG.check_grad(graph, a, method=method).ok


def test_complex_slogdet_is_the_complex_steps_extension():
    a = -well_conditioned(np.random.default_rng(10), (3, 3))
    sign, logabsdet = la.slogdet(a + 1e-20j * np.ones((3, 3)))
    want_sign, want_log = np.linalg.slogdet(a)
    assert sign.real == want_sign
    assert logabsdet.real == pytest.approx(want_log)


# ---- the wire, the client ----------------------------------------------------------------------


def everything(a, s):
    sign, logabsdet = la.slogdet(a)
    w, v = la.eigh(s)
    u, sv, vh = la.svd(a, full_matrices=False)
    q, r = la.qr(a)
    return (
        la.solve(a, s[:, 0])
        + la.det(a)
        + sign * logabsdet
        + gnp.sum(la.inv(a), axis=0)
        + la.cholesky(s)[:, 1]
        + w
        + v[0] ** 2
        + sv
        + u[1] * vh[:, 0]
        + r[0]
        + q[0] ** 2
        + la.norm(a, axis=0)
        + la.norm(a, "nuc")
        + gnp.sum(la.pinv(a), axis=1)
        + gnp.tensordot(a, s, 1)[0]
    )


def test_wire_round_trip():
    rng = np.random.default_rng(11)
    a, s = well_conditioned(rng, (3, 3)), symmetric_distinct(rng, (3, 3))
    graph = gs.trace(lambda a, s: gnp.sum(everything(a, s) ** 2), a, s)
    ops = {node.op for node in graph.nodes}
    assert {"solve", "det", "slogdet", "cholesky", "eigh", "svd", "qr"} <= ops
    decoded = gs.Graph.from_bytes(graph.to_bytes())
    assert decoded.digest == graph.digest
    assert ENG.evaluate(decoded, a, s) == ENG.evaluate(graph, a, s)
    for x, y in zip(ENG.grad(decoded, a, s, argnums=(0, 1)), ENG.grad(graph, a, s, argnums=(0, 1))):
        np.testing.assert_array_equal(x, y)
    assert ENG.check_grad(graph, a, s).ok


def test_through_the_client(remote):
    rng = np.random.default_rng(12)
    a = well_conditioned(rng, (2, 3, 3))
    graph = gs.trace(lambda a: gnp.sum(la.slogdet(a)[1]) + gnp.sum(la.inv(a)), a)
    np.testing.assert_allclose(remote.evaluate(graph, a), ENG.evaluate(graph, a), rtol=1e-13)
    grad = remote.grad(graph, a)
    np.testing.assert_allclose(grad, ENG.grad(graph, a), rtol=1e-13)
    inv = np.linalg.inv(a)  # d log|det| = inv^T; d sum(inv) = -(inv 1 1^T inv)^T
    want = np.swapaxes(inv - inv @ np.ones((3, 3)) @ inv, -1, -2)
    np.testing.assert_allclose(grad, want, rtol=1e-9, atol=1e-12)


# ---- full SVD, complete QR ---------------------------------------------------------------------


def _orthogonal(q):
    eye = np.broadcast_to(np.eye(q.shape[-1]), q.shape)
    np.testing.assert_allclose(np.swapaxes(q, -1, -2) @ q, eye, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 2), (2, 4), (2, 3, 5), (3, 5, 3), (3, 3)])
def test_full_svd_values(shape):
    a = normal(np.random.default_rng(16), shape)
    graph = gs.trace(lambda a: tuple(la.svd(a)), a)
    u, s, vh = ENG.evaluate(graph, a)
    want_u, want_s, want_vh = np.linalg.svd(a)
    assert (u.shape, s.shape, vh.shape) == (want_u.shape, want_s.shape, want_vh.shape)
    np.testing.assert_allclose(s, want_s, rtol=1e-12)
    _orthogonal(u)
    _orthogonal(vh.swapaxes(-1, -2))
    k = s.shape[-1]
    np.testing.assert_allclose((u[..., :k] * s[..., None, :]) @ vh[..., :k, :], a, atol=1e-12)
    # the leading k columns are NumPy's up to sign: the rank-one projectors match
    np.testing.assert_allclose(
        projectors(u[..., :k], vh[..., :k, :]),
        projectors(want_u[..., :k], want_vh[..., :k, :]),
        atol=1e-12,
    )
    ops = {n.op for n in graph.nodes}
    assert ops == ({"svd"} if shape[-1] == shape[-2] else {"svd_full"})


@pytest.mark.parametrize("shape", [(4, 2), (2, 5, 3), (2, 4), (3, 3)])
def test_complete_qr_values(shape):
    a = normal(np.random.default_rng(17), shape)
    q, r = ENG.evaluate(gs.trace(lambda a: tuple(la.qr(a, mode="complete")), a), a)
    want_q, want_r = np.linalg.qr(a, mode="complete")
    assert (q.shape, r.shape) == (want_q.shape, want_r.shape)
    _orthogonal(q)
    np.testing.assert_allclose(q @ r, a, atol=1e-12)
    np.testing.assert_array_equal(np.triu(r), r)
    np.testing.assert_allclose(np.abs(r), np.abs(want_r), atol=1e-12)


@pytest.mark.parametrize(
    "fn, shape, advice",
    [
        (lambda a: gnp.sum(la.svd(a).U), (4, 2), "full_matrices=False"),
        (lambda a: gnp.sum(la.svd(a)[1]), (2, 3), "full_matrices=False"),
        (lambda a: gnp.sum(la.qr(a, mode="complete").R), (4, 2), 'mode="reduced"'),
    ],
)
def test_full_factorizations_of_non_square_matrices_have_no_derivative(fn, shape, advice):
    a = well_conditioned(np.random.default_rng(18), shape)
    graph = gs.trace(fn, a)
    ENG.evaluate(graph, a)
    for differentiate in (
        lambda: ENG.grad(graph, a),
        lambda: ENG.jvp(graph, (a,), (a,)),
        lambda: ENG.jacobian(graph, a, mode="fwd"),
    ):
        with pytest.raises(NotImplementedError, match=advice):
            differentiate()


def test_full_forms_stay_differentiable_where_they_are_unique():
    """Singular values alone (compute_uv=False), the full SVD of a square matrix and the
    complete QR of a wide one (the reduced ones) differentiate."""
    rng = np.random.default_rng(19)
    for fn, np_fn, shape in [
        (
            lambda a: la.svd(a, compute_uv=False),
            lambda a: np.linalg.svd(a, compute_uv=False),
            (4, 2),
        ),
        (
            lambda a: gprojectors(*la.svd(a)[::2]),
            lambda a: projectors(*np.linalg.svd(a)[::2]),
            (3, 3),
        ),
        (
            lambda a: la.qr(a, mode="complete").R,
            lambda a: np.linalg.qr(a, mode="complete").R,
            (2, 4),
        ),
    ]:
        check_op(fn, np_fn, [well_conditioned(rng, shape)], rtol=RTOL, atol=ATOL)


def test_full_forms_on_the_wire():
    a = well_conditioned(np.random.default_rng(20), (2, 4, 3))
    graph = gs.trace(lambda a: (*la.svd(a), *la.qr(a, mode="complete")), a)
    assert {"svd_full", "qr_complete"} <= {n.op for n in graph.nodes}
    decoded = gs.Graph.from_bytes(graph.to_bytes())
    assert decoded.digest == graph.digest
    for x, y in zip(ENG.evaluate(decoded, a), ENG.evaluate(graph, a)):
        np.testing.assert_array_equal(x, y)
    from gradserve.engine.graph import Graph, Node, Port, Spec

    for op in ("svd_full", "qr_complete"):
        for spec in (Spec((3,)), Spec((3, 2), "complex128")):
            with pytest.raises(gs.GraphError):
                Graph(
                    [Port("x", spec)],
                    {},
                    [Node(op, ("x",), ("u", "s", "v")[: 3 - (op == "qr_complete")], {})],
                    ["u"],
                )


def _central_jvp(np_fn, a, t, h=1e-6):
    """Tangents of each result of np_fn at a along t, by central differences."""
    plus, minus = np_fn(a + h * t), np_fn(a - h * t)
    return [(p - m) / (2 * h) for p, m in zip(plus, minus)]


def _qr_node(op, shape):
    from gradserve.engine.graph import Graph, Node, Port, Spec

    return Graph([Port("a", Spec(shape))], {}, [Node(op, ("a",), ("q", "r"), {})], ["q", "r"])


@pytest.mark.parametrize(
    "op, shape, mode",
    [
        ("qr", (2, 4, 3, 3), "reduced"),  # a stack of stacks: r's size is its last axis
        ("qr", (2, 4, 2, 3), "reduced"),
        ("qr_complete", (2, 3, 3), "complete"),  # square and wide: the reduced QR, so it
        ("qr_complete", (2, 4, 2, 3), "complete"),  # differentiates (sent on the wire only)
    ],
)
def test_qr_tangents_of_stacks_against_central_differences(op, shape, mode):
    rng = np.random.default_rng(26)
    a = well_conditioned(rng, shape)
    t = rng.normal(size=shape)
    _, tangents = ENG.jvp(_qr_node(op, shape), (a,), (t,))
    want = _central_jvp(lambda b: np.linalg.qr(b, mode=mode), a, t)
    for got, expected in zip(tangents, want):
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL)


def test_svd_vh_tangent_of_a_tall_rank_deficient_matrix():
    """A tall matrix of rank 1: its zero singular value leaves vh (the eigenvectors of
    a^T a, eigenvalues distinct) differentiable; only u's extra column is not."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(4, 1)) @ rng.normal(size=(1, 2))
    t = rng.normal(size=a.shape)
    graph = gs.trace(lambda a: la.svd(a, full_matrices=False).Vh, a)
    vh, dvh = ENG.jvp(graph, (a,), (t,))
    (want,) = _central_jvp(lambda b: [np.linalg.svd(b, full_matrices=False).Vh ** 2], a, t)
    np.testing.assert_allclose(2 * vh * dvh, want, rtol=RTOL, atol=ATOL)  # free of signs


def test_eig_vector_tangents_keep_lapacks_gauge():
    """v's tangent against central differences of NumPy's eig: a complex matrix (each column
    unit norm, its largest component real) and a real triangular one, whose eigenvectors
    have zero components (compared squared: LAPACK's signs may flip along t)."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(4, 4)) + 1j * rng.normal(size=(4, 4))
    t = rng.normal(size=(4, 4)) + 1j * rng.normal(size=(4, 4))
    graph = gs.trace(lambda a: la.eig(a)[1], a)
    _, dv = ENG.jvp(graph, (a,), (t,))
    (want,) = _central_jvp(lambda b: [np.linalg.eig(b)[1]], a, t)
    np.testing.assert_allclose(dv, want, rtol=RTOL, atol=ATOL)

    a = np.array([[1.0, 1.0, 0.5], [0.0, 2.0, 0.3], [0.0, 0.0, 3.5]])
    t = rng.normal(size=(3, 3))
    graph = gs.trace(lambda a: la.eig(a)[1], a)
    v, dv = ENG.jvp(graph, (a,), (t,))
    (want,) = _central_jvp(lambda b: [np.linalg.eig(b)[1] ** 2], a, t)
    np.testing.assert_allclose(2 * v * dv, want, rtol=RTOL, atol=ATOL)


# ---- eig on general and complex matrices ------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float64", "complex128"])
@pytest.mark.parametrize("shape", [(1, 1), (4, 4), (2, 3, 3)])
def test_eig_values_against_numpy(dtype, shape):
    rng = np.random.default_rng(21)
    a = rng.normal(size=shape) + (1j * rng.normal(size=shape) if dtype == "complex128" else 0)
    graph = gs.trace(lambda a: tuple(la.eig(a)), a)
    assert [p.spec.dtype for p in graph.outputs] == ["complex128", "complex128"]
    w, v = ENG.evaluate(graph, a)
    assert w.dtype == v.dtype == np.complex128
    np.testing.assert_allclose(
        np.sort_complex(w), np.sort_complex(np.linalg.eigvals(a)), atol=1e-12
    )
    np.testing.assert_allclose(a @ v, v * w[..., None, :], atol=1e-12)  # A V = V diag(w)
    np.testing.assert_allclose(np.linalg.norm(v, axis=-2), 1.0)
    np.testing.assert_allclose(ENG.evaluate(gs.trace(la.eigvals, a), a), w)
    concrete = la.eigvals(a)
    np.testing.assert_allclose(np.sort_complex(concrete), np.sort_complex(w), atol=1e-12)


def _holomorphic_jacobian(fn, a, h=1e-6):
    """d fn / d a by central differences along each complex direction of a holomorphic fn."""
    out = fn(a)
    jac = np.zeros(out.shape + a.shape, complex)
    for j in np.ndindex(*a.shape):
        step = np.zeros(a.shape, complex)
        step[j] = h
        jac[(Ellipsis,) + j] = (fn(a + step) - fn(a - step)) / (2 * h)
    return jac


def test_eigvals_of_complex_matrices_differentiate_holomorphically():
    """Eigenvalues are holomorphic in a: JVP, VJP (no conjugation) and both Jacobians (the
    batch rule) against central differences of NumPy's eigvals along complex directions."""
    rng = np.random.default_rng(22)
    shape = (2, 3, 3)
    a = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    graph = gs.trace(la.eigvals, a)
    jac = _holomorphic_jacobian(np.linalg.eigvals, a)
    t = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    _, dw = ENG.jvp(graph, (a,), (t,))
    np.testing.assert_allclose(dw, np.einsum("...ijk,ijk->...", jac, t), rtol=RTOL, atol=ATOL)
    ct = rng.normal(size=shape[:-1]) + 1j * rng.normal(size=shape[:-1])
    _, (abar,) = ENG.vjp(graph, (a,), ct)
    np.testing.assert_allclose(abar, np.einsum("ab,ab...->...", ct, jac), rtol=RTOL, atol=ATOL)
    for mode in ("fwd", "rev"):
        np.testing.assert_allclose(ENG.jacobian(graph, a, mode=mode), jac, rtol=RTOL, atol=ATOL)


def test_eig_of_a_real_matrix_real_scalar_gradient():
    """sum(Re(w)^2) + sum(Im(w)^2) of a real matrix with complex eigenvalues: the gradient
    against central differences; eig's derivative of eigenvalues is diag(V^-1 dA V)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    assert np.any(np.abs(np.linalg.eigvals(a).imag) > 0.1)
    graph = gs.trace(
        lambda a: gnp.sum(gnp.real(la.eigvals(a)) ** 2 + gnp.imag(la.eigvals(a)) ** 2), a
    )
    assert ENG.check_grad(graph, a, method="central").ok
    w, v = np.linalg.eig(a)
    dw = np.einsum("ij,jk,ki->i", np.linalg.inv(v), np.ones((4, 4)), v)
    _, tangent = ENG.jvp(graph, (a,), (np.ones((4, 4)),))
    assert float(tangent) == pytest.approx(
        float(np.sum(2 * w.real * dw.real + 2 * w.imag * dw.imag))
    )


def test_eig_on_the_wire():
    rng = np.random.default_rng(24)
    a = rng.normal(size=(2, 3, 3))
    graph = gs.trace(
        lambda a: (
            gnp.sum(parts(la.eigvals(a)))
            + gnp.sum(parts(la.eig(a)[1] ** 2) ** 2)
            + gnp.sum(la.eigvalsh(a))
        ),
        a,
    )
    assert {"eig", "eigh"} <= {n.op for n in graph.nodes}
    decoded = gs.Graph.from_bytes(graph.to_bytes())
    assert decoded.digest == graph.digest
    assert ENG.evaluate(decoded, a) == ENG.evaluate(graph, a)
    np.testing.assert_array_equal(ENG.grad(decoded, a), ENG.grad(graph, a))
    assert ENG.check_grad(graph, a, method="central").ok


def test_eig_through_numpy_dispatch():
    a = np.random.default_rng(25).normal(size=(3, 3))
    traced = gs.trace(lambda a: gnp.sum(gnp.real(np.linalg.eigvals(a))), a)
    reference = gs.trace(lambda a: gnp.sum(gnp.real(la.eigvals(a))), a)
    assert traced.digest == reference.digest


# ---- failures and rejections -------------------------------------------------------------------


def test_failing_matrices_give_nan_and_leave_the_others():
    good = well_conditioned(np.random.default_rng(13), (3, 3))
    stack = np.stack([good, np.zeros((3, 3))])
    x = ENG.evaluate(gs.trace(lambda a: la.inv(a), stack), stack)
    np.testing.assert_allclose(x[0], np.linalg.inv(good))
    assert np.all(np.isnan(x[1]))
    spd_stack = np.stack([spd(np.random.default_rng(14), (3, 3)), -np.eye(3)])
    L = ENG.evaluate(gs.trace(la.cholesky, spd_stack), spd_stack)
    np.testing.assert_allclose(L[0], np.linalg.cholesky(spd_stack[0]))
    assert np.all(np.isnan(L[1]))
    assert float(ENG.evaluate(gs.trace(la.det, good), np.zeros((3, 3)))) == 0.0


def test_shapes_are_checked():
    with pytest.raises(np.linalg.LinAlgError):
        gs.trace(la.det, np.ones((2, 3)))
    with pytest.raises(np.linalg.LinAlgError):
        gs.trace(la.inv, np.ones(3))
    with pytest.raises(ValueError):
        gs.trace(la.solve, np.ones((3, 3)), np.ones((2, 1)))
    with pytest.raises(TypeError):
        gs.trace(la.eigh, np.ones((2, 2), complex))
    from gradserve.engine.graph import Graph, Node, Port, Spec

    for op, specs in [
        ("det", [Spec((2, 3))]),
        ("det", [Spec((2, 2), "int64")]),
        ("solve", [Spec((2, 2)), Spec((3, 1))]),
        ("solve", [Spec((2, 2, 2)), Spec((3, 2, 1))]),  # b's stack larger than a's
        ("solve", [Spec((3, 2, 2)), Spec((2, 2, 1))]),
        ("solve", [Spec((2, 2)), Spec((2,))]),
        ("solve", [Spec((2, 2)), Spec((2, 1), "int64")]),
        ("cholesky", [Spec((2, 2), "complex128")]),
        ("svd", [Spec((3,))]),
    ]:
        with pytest.raises(gs.GraphError):
            Graph(
                [Port(f"x{i}", s) for i, s in enumerate(specs)],
                {},
                [Node(op, tuple(f"x{i}" for i in range(len(specs))), ("y",), {})],
                ["y"],
            )


def test_integers_become_float64_as_numpy_linalg():
    a = np.array([[2, 1], [1, 3]])
    assert la.det(a) == pytest.approx(np.linalg.det(a))
    graph = gs.trace(la.inv, a)
    assert graph.outputs[0].spec.dtype == "float64"
    np.testing.assert_allclose(ENG.evaluate(graph, a), np.linalg.inv(a))


def test_concrete_arrays_compute_at_once():
    a = well_conditioned(np.random.default_rng(15), (3, 3))
    np.testing.assert_allclose(la.inv(a), np.linalg.inv(a))
    w, v = la.eigh(a + a.T)
    np.testing.assert_allclose(np.abs(v), np.abs(np.linalg.eigh(a + a.T)[1]))
    np.testing.assert_allclose(w, np.linalg.eigh(a + a.T)[0])
    assert la.norm(a, "nuc") == pytest.approx(np.linalg.norm(a, "nuc"))
    np.testing.assert_allclose(gnp.tensordot(a, a, 1), a @ a)
