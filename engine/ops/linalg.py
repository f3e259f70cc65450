"""Linear algebra on stacks of matrices (the last two axes; every leading axis is a batch axis):
`solve`, `det`, `slogdet`, `cholesky`, `eigh`, `eig`, `svd` and `qr` (and `svd_full`,
`qr_complete`: the full-matrices and complete forms, differentiable only where they equal the
reduced ones, as JAX). The front end,
`gradserve.numpy.linalg` (engine/linalg.py), builds NumPy's functions on them (`inv` is a
`solve`, `norm` and `pinv` are made of other ops).

Every JVP rule is written with the front end, so derivatives compose to any order; each is
linear in the tangents and made of ops with transpose rules (`solve` is linear in its
right-hand side). Only `solve` needs a transpose rule: `solve(A, .)` transposes to
`solve(A^T, .)`.

`cholesky` and `eigh` read the lower triangle only, as NumPy does: their derivative is the
one of that function (a change above the diagonal changes nothing), the tangent of the
symmetric matrix being `tril(dA) + tril(dA, -1)^T`.

A matrix the factorization fails on (singular for `solve`, not positive definite for
`cholesky`, not converging) gives nan in its place of the result, never an exception: the
other matrices of the stack are unaffected.
"""

from __future__ import annotations

import numpy as np

from .. import dtypes
from .. import numpy as gnp
from ..graph import Spec
from ..primitive import Linear, OpDoc, ShapeError, primitive
from ..tracing import bind

REAL = ("float64", "float32")
INEXACT = ("float64", "float32", "complex128")


# ---- helpers for the rules -----------------------------------------------------------------


def mT(x):
    """The matrix transpose of a stack (no conjugation: the engine's complex numbers are the
    complex step's)."""
    return gnp.swapaxes(x, -1, -2)


def _diagonal(x):
    return gnp.einsum("...ii->...i", x)


def _trace(x):
    return gnp.einsum("...ii->...", x)


def _mask(n, dtype, k=0, diagonal=1.0):
    """A constant n x n lower-triangular mask: ones below diagonal k, `diagonal` on it."""
    m = np.tril(np.ones((n, n)), k)
    if k == 0:
        m[np.diag_indices(n)] = diagonal
    return m.astype(dtype)


def _eye(n, dtype):
    return np.eye(n, dtype=dtype)


def _symmetric_from_lower(t):
    """The tangent of the symmetric matrix whose lower triangle is that of t:
    tril(t) + tril(t, -1)^T."""
    n = t.shape[-1]
    return t * _mask(n, t.dtype) + mT(t * _mask(n, t.dtype, -1))


def _solve(a, b):
    return bind("solve", a, b)


# ---- shape rules ---------------------------------------------------------------------------


def _matrix(spec, name, kinds=INEXACT, square=True):
    if spec.dtype not in kinds:
        raise ShapeError(f"{name} needs a {' or '.join(kinds)} matrix, got {spec.dtype}")
    if spec.ndim < 2:
        raise ShapeError(f"{name} needs a matrix (or a stack of them), got shape {spec.shape}")
    if square and spec.shape[-1] != spec.shape[-2]:
        raise ShapeError(f"{name} needs square matrices, got shape {spec.shape}")
    return spec.shape[:-2], spec.shape[-2], spec.shape[-1]


def _nan_fallback(fn, shape_rule, arrays, attrs):
    """fn(*arrays) on a stack: on a LinAlgError, matrix by matrix, nan where it fails."""
    try:
        return fn(*arrays, **attrs)
    except np.linalg.LinAlgError:
        pass
    out = shape_rule(*[Spec(a.shape, dtypes.canonical(a.dtype)) for a in arrays], **attrs)
    many = isinstance(out, tuple)
    results = tuple(np.full(s.shape, np.nan, s.dtype) for s in (out if many else (out,)))
    batch = arrays[0].shape[:-2]
    for index in np.ndindex(*batch):
        try:
            got = fn(*[a[index] for a in arrays], **attrs)
        except np.linalg.LinAlgError:
            continue
        for r, g in zip(results, got if many else (got,)):
            r[index] = g
    return results if many else results[0]


def _guarded(fn, shape_rule):
    """The impl: `fn` with nan for failing matrices, each result in its declared dtype."""

    def impl(*arrays, **attrs):
        out = _nan_fallback(fn, shape_rule, arrays, attrs)
        specs = shape_rule(*[Spec(a.shape, dtypes.canonical(a.dtype)) for a in arrays], **attrs)
        if isinstance(out, tuple):
            return tuple(
                np.asarray(o).astype(s.dtype, copy=False).reshape(s.shape)
                for o, s in zip(out, specs)
            )
        return np.asarray(out).astype(specs.dtype, copy=False).reshape(specs.shape)

    return impl


def _same_batch(name):
    """The batch rule of a one-operand op on stacks: the batch axis is one more stack axis."""
    return lambda args, batched, **attrs: bind(name, *args, **attrs)


def _matrix_probe(dtype):
    return [Spec((2, 2), dtype)], {}


# ---- solve ---------------------------------------------------------------------------------


def _solve_shape(a, b):
    batch, n, _ = _matrix(a, "solve")
    if b.dtype not in INEXACT:
        raise ShapeError(f"solve needs a float or complex b, got {b.dtype}")
    if b.ndim != a.ndim or b.shape[:-2] != batch or b.shape[-2] != n:
        raise ShapeError(
            f"solve needs b of shape {batch + (n,)} + (k,) for a of shape {a.shape}, got {b.shape}"
        )
    return Spec(b.shape, dtypes.promote(a.dtype, b.dtype))


def _solve_jvp(primals, tangents, x):
    a, _ = primals
    ta, tb = tangents
    rhs = tb
    if ta is not None:
        rhs = -(ta @ x) if rhs is None else rhs - ta @ x
    return _solve(a, rhs)


def _solve_transpose(ct, a, b):
    if isinstance(a, Linear):
        raise NotImplementedError("solve is linear in its right-hand side only")
    return None, gnp.astype(_solve(mT(a), ct), b.dtype)


def _solve_batch(args, batched):
    a, b = args
    size = (a if batched[0] else b).shape[0]
    if not batched[0]:
        a = gnp.broadcast_to(a, (size,) + a.shape)
    if not batched[1]:
        b = gnp.broadcast_to(b, (size,) + b.shape)
    return _solve(a, b)


primitive(
    "solve",
    impl=_guarded(np.linalg.solve, _solve_shape),
    shape=_solve_shape,
    arity=2,
    fresh=True,
    jvp=_solve_jvp,
    transpose=_solve_transpose,
    batch=_solve_batch,
    doc=OpDoc(
        "the solution x of a @ x = b, for each matrix of a stack (nan for a singular matrix)",
        ("a", "b"),
        "the shape of b; the dtype a and b promote to",
        probe=lambda dtype: ([Spec((2, 2), dtype), Spec((2, 1), dtype)], {}),
    ),
)


# ---- det, slogdet --------------------------------------------------------------------------


def _det_shape(a):
    batch, _, _ = _matrix(a, "det")
    return Spec(batch, a.dtype)


def _det_jvp(primals, tangents, ans):
    (a,), (t,) = primals, tangents
    return ans * _trace(_solve(a, t))


primitive(
    "det",
    impl=_guarded(np.linalg.det, _det_shape),
    shape=_det_shape,
    fresh=True,
    jvp=_det_jvp,
    batch=_same_batch("det"),
    doc=OpDoc(
        "the determinant of each matrix of a stack (its derivative, det(a) trace(a^-1 da), "
        "is nan at a singular matrix)",
        ("a",),
        "the batch shape of a (a scalar for one matrix)",
        probe=_matrix_probe,
    ),
)


def _slogdet_shape(a):
    batch, _, _ = _matrix(a, "slogdet")
    return Spec(batch, a.dtype), Spec(batch, a.dtype)


def _slogdet_impl(a):
    if not np.iscomplexobj(a):
        return tuple(np.linalg.slogdet(a))
    # complex step: sign(Re det) and log(det * sign(Re det)), holomorphic near the real axis
    det = np.asarray(np.linalg.det(a))
    sign = np.sign(det.real).astype(a.dtype)
    return sign, np.log(det * sign)


def _slogdet_jvp(primals, tangents, ans):
    (a,), (t,) = primals, tangents
    return None, _trace(_solve(a, t))


primitive(
    "slogdet",
    impl=_guarded(_slogdet_impl, _slogdet_shape),
    shape=_slogdet_shape,
    fresh=True,
    multiple_results=True,
    jvp=_slogdet_jvp,
    batch=_same_batch("slogdet"),
    doc=OpDoc(
        "the sign and the natural logarithm of the absolute value of the determinant of each "
        "matrix of a stack (sign 0 and log -inf for a singular one); for complex a, the "
        "complex step's extension: sign(Re det) and log(det * sign(Re det))",
        ("a",),
        "sign, logabsdet: each of the batch shape of a",
        probe=_matrix_probe,
    ),
)


# ---- cholesky ------------------------------------------------------------------------------


def _cholesky_shape(a):
    _matrix(a, "cholesky", REAL)
    return Spec(a.shape, a.dtype)


def _cholesky_jvp(primals, tangents, L):
    """dL = L Phi(L^-1 dA L^-T), Phi: the lower triangle with half the diagonal."""
    (t,) = tangents
    n = L.shape[-1]
    da = _symmetric_from_lower(t)
    inner = mT(_solve(L, mT(_solve(L, da))))
    return L @ (inner * _mask(n, L.dtype, 0, 0.5))


primitive(
    "cholesky",
    impl=_guarded(np.linalg.cholesky, _cholesky_shape),
    shape=_cholesky_shape,
    fresh=True,
    jvp=_cholesky_jvp,
    batch=_same_batch("cholesky"),
    doc=OpDoc(
        "the lower-triangular Cholesky factor L (a = L L^T) of each matrix of a stack, from "
        "its lower triangle; nan for a matrix that is not positive definite",
        ("a",),
        "the shape of a",
        probe=_matrix_probe,
    ),
)


# ---- eigh ----------------------------------------------------------------------------------


def _eigh_shape(a):
    batch, n, _ = _matrix(a, "eigh", REAL)
    return Spec(batch + (n,), a.dtype), Spec(a.shape, a.dtype)


def _off_diagonal_inverse(diff, n):
    """1 / diff off the diagonal, 0 on it."""
    eye = _eye(n, diff.dtype)
    return (1 - eye) / (diff + eye)


def _eigh_jvp(primals, tangents, ans):
    """As JAX's eigh_jvp_rule: with M = V^T dA V, dw = diag(M), dV = V (F * M) where
    F[i, j] = 1 / (w[j] - w[i]) off the diagonal (distinct eigenvalues), 0 on it."""
    (t,) = tangents
    w, v = ans
    n = w.shape[-1]
    m = mT(v) @ _symmetric_from_lower(t) @ v
    f = _off_diagonal_inverse(gnp.expand_dims(w, -2) - gnp.expand_dims(w, -1), n)
    return _diagonal(m), v @ (f * m)


primitive(
    "eigh",
    impl=_guarded(lambda a: tuple(np.linalg.eigh(a)), _eigh_shape),
    shape=_eigh_shape,
    fresh=True,
    multiple_results=True,
    jvp=_eigh_jvp,
    batch=_same_batch("eigh"),
    doc=OpDoc(
        "eigenvalues (ascending) and orthonormal eigenvectors (the columns) of each symmetric "
        "matrix of a stack, from its lower triangle (LAPACK's signs); the derivative needs "
        "distinct eigenvalues",
        ("a",),
        "w: (..., n); v: (..., n, n)",
        probe=_matrix_probe,
    ),
)


# ---- eig -----------------------------------------------------------------------------------


def _eig_shape(a):
    batch, n, _ = _matrix(a, "eig")
    return Spec(batch + (n,), "complex128"), Spec(a.shape, "complex128")


def _eig_jvp(primals, tangents, ans):
    """Eigenvalues as JAX's eig_jvp_rule: with M = V^-1 dA V, dw = diag(M). Eigenvectors:
    dV = V (F * M), F[i, j] = 1 / (w[j] - w[i]) off the diagonal (distinct eigenvalues), 0
    on it, then each column moved along itself, dv += v (p + iq), to keep LAPACK's gauge:
    unit norm (p = -Re(v^H dv)) and the largest component real (q makes Im of its tangent 0)."""
    (t,) = tangents
    w, v = ans
    n = w.shape[-1]
    m = _solve(v, gnp.astype(t, "complex128")) @ v
    f = _off_diagonal_inverse(gnp.expand_dims(w, -2) - gnp.expand_dims(w, -1), n)
    du = v @ (f * m)
    p = -gnp.real(gnp.sum(gnp.conj(v) * du, axis=-2, keepdims=True))  # (..., 1, n)
    magnitude = gnp.real(v) ** 2 + gnp.imag(v) ** 2
    k = gnp.expand_dims(gnp.argmax(magnitude, axis=-2), -2)  # the largest component
    vk = gnp.take_along_axis(v, k, axis=-2)
    duk = gnp.take_along_axis(du, k, axis=-2)
    q = -(gnp.imag(duk) + gnp.imag(vk) * p) / gnp.real(vk)
    return _diagonal(m), du + v * (p + 1j * q)


primitive(
    "eig",
    impl=_guarded(lambda a: tuple(np.linalg.eig(a)), _eig_shape),
    shape=_eig_shape,
    fresh=True,
    multiple_results=True,
    jvp=_eig_jvp,
    batch=_same_batch("eig"),
    doc=OpDoc(
        "eigenvalues and right eigenvectors (the columns, unit norm, largest component real: "
        "LAPACK's) of each general square matrix of a stack, always complex128 (NumPy gives "
        "real arrays when all eigenvalues are real); the derivative needs distinct eigenvalues",
        ("a",),
        "w: (..., n); v: (..., n, n), both complex128",
        probe=_matrix_probe,
    ),
)


# ---- svd -----------------------------------------------------------------------------------


def _svd_shape(a):
    batch, m, n = _matrix(a, "svd", REAL, square=False)
    k = min(m, n)
    return (
        Spec(batch + (m, k), a.dtype),
        Spec(batch + (k,), a.dtype),
        Spec(batch + (k, n), a.dtype),
    )


def _svd_jvp(primals, tangents, ans):
    """As JAX's svd_jvp_rule (real matrices, reduced factors)."""
    (a,), (t,) = primals, tangents
    u, s, vh = ans
    m, n = a.shape[-2:]
    k = s.shape[-1]
    v = mT(vh)
    ds_full = mT(u) @ t @ v
    row = gnp.expand_dims(s, -2)  # s[j] at [i, j]
    col = mT(row)
    f = _off_diagonal_inverse((row + col) * (row - col), k)
    dss = ds_full * row
    sds = col * ds_full
    du = u @ (f * (dss + mT(dss)))
    dv = v @ (f * (sds + mT(sds)))
    if m > n:
        dav = t @ v
        du = du + (dav - u @ (mT(u) @ dav)) / row
    if n > m:
        dau = mT(t) @ u
        dv = dv + (dau - v @ (vh @ dau)) / row
    return du, _diagonal(ds_full), mT(dv)


primitive(
    "svd",
    impl=_guarded(lambda a: tuple(np.linalg.svd(a, full_matrices=False)), _svd_shape),
    shape=_svd_shape,
    fresh=True,
    multiple_results=True,
    jvp=_svd_jvp,
    batch=_same_batch("svd"),
    doc=OpDoc(
        "the reduced singular value decomposition a = u diag(s) vh of each matrix of a stack "
        "(s descending; LAPACK's signs); the derivative needs distinct nonzero singular values",
        ("a",),
        "u: (..., m, k); s: (..., k); vh: (..., k, n), k = min(m, n)",
        probe=_matrix_probe,
    ),
)


# ---- svd_full ------------------------------------------------------------------------------


def _svd_full_shape(a):
    batch, m, n = _matrix(a, "svd_full", REAL, square=False)
    return (
        Spec(batch + (m, m), a.dtype),
        Spec(batch + (min(m, n),), a.dtype),
        Spec(batch + (n, n), a.dtype),
    )


class NoDerivative(NotImplementedError, ValueError):
    """A derivative the op does not define (JAX's NotImplementedError); a ValueError too, so
    that a server answers it as the client's error (INVALID_ARGUMENT)."""


def _no_full_derivative(name, reduced):
    """As JAX: the derivative of the extra columns (rows) of a complete factorization of a
    non-square matrix is not defined (they are any orthonormal completion)."""
    raise NoDerivative(
        f"{name}: no derivative through the full factorization of a non-square matrix "
        f"(the extra orthonormal columns are not unique); use {reduced}"
    )


def _svd_full_jvp(primals, tangents, ans):
    (a,) = primals
    m, n = a.shape[-2:]
    if m != n:
        _no_full_derivative("svd", "full_matrices=False (or compute_uv=False)")
    return _svd_jvp(primals, tangents, ans)


primitive(
    "svd_full",
    impl=_guarded(lambda a: tuple(np.linalg.svd(a, full_matrices=True)), _svd_full_shape),
    shape=_svd_full_shape,
    fresh=True,
    multiple_results=True,
    jvp=_svd_full_jvp,
    batch=_same_batch("svd_full"),
    doc=OpDoc(
        "the full singular value decomposition a = u[..., :k] diag(s) vh[..., :k, :] of each "
        "matrix of a stack, u and vh square orthogonal (NumPy's full_matrices=True; s "
        "descending; LAPACK's signs and completion); differentiable for square matrices "
        "only, as JAX (use svd)",
        ("a",),
        "u: (..., m, m); s: (..., k); vh: (..., n, n), k = min(m, n)",
        probe=lambda dtype: ([Spec((3, 2), dtype)], {}),
    ),
)


# ---- qr ------------------------------------------------------------------------------------


def _qr_shape(a):
    batch, m, n = _matrix(a, "qr", REAL, square=False)
    k = min(m, n)
    return Spec(batch + (m, k), a.dtype), Spec(batch + (k, n), a.dtype)


def _qr_square_jvp(t, q, r):
    """As JAX's qr_jvp_rule, for a (..., m, n) with m >= n (r square and invertible)."""
    n = r.shape[-1]
    dx_rinv = mT(_solve(mT(r), mT(t)))  # dA r^-1
    qt_dx_rinv = mT(q) @ dx_rinv
    lower = qt_dx_rinv * _mask(n, r.dtype, -1)
    do = lower - mT(lower)  # skew-symmetric
    return q @ (do - qt_dx_rinv) + dx_rinv, (qt_dx_rinv - do) @ r


def _qr_jvp(primals, tangents, ans):
    (a,), (t,) = primals, tangents
    q, r = ans
    m, n = a.shape[-2:]
    if m >= n:
        return _qr_square_jvp(t, q, r)
    # wide: a = [x | y], q r_x = x is the QR of the square part, r_y = q^T y
    dq, drx = _qr_square_jvp(t[..., :m], q, r[..., :m])
    dry = mT(dq) @ a[..., m:] + mT(q) @ t[..., m:]
    return dq, gnp.concatenate([drx, dry], axis=-1)


primitive(
    "qr",
    impl=_guarded(lambda a: tuple(np.linalg.qr(a, mode="reduced")), _qr_shape),
    shape=_qr_shape,
    fresh=True,
    multiple_results=True,
    jvp=_qr_jvp,
    batch=_same_batch("qr"),
    doc=OpDoc(
        "the reduced QR decomposition a = q r of each matrix of a stack (Householder, "
        "LAPACK's signs); the derivative needs the leading min(m, n) columns independent",
        ("a",),
        "q: (..., m, k) with orthonormal columns; r: (..., k, n) upper triangular, k = min(m, n)",
        probe=_matrix_probe,
    ),
)


# ---- qr_complete ---------------------------------------------------------------------------


def _qr_complete_shape(a):
    batch, m, n = _matrix(a, "qr_complete", REAL, square=False)
    return Spec(batch + (m, m), a.dtype), Spec(batch + (m, n), a.dtype)


def _qr_complete_jvp(primals, tangents, ans):
    (a,) = primals
    m, n = a.shape[-2:]
    if m > n:
        _no_full_derivative("qr", 'mode="reduced"')
    return _qr_jvp(primals, tangents, ans)


primitive(
    "qr_complete",
    impl=_guarded(lambda a: tuple(np.linalg.qr(a, mode="complete")), _qr_complete_shape),
    shape=_qr_complete_shape,
    fresh=True,
    multiple_results=True,
    jvp=_qr_complete_jvp,
    batch=_same_batch("qr_complete"),
    doc=OpDoc(
        "the complete QR decomposition a = q r of each matrix of a stack, q square orthogonal "
        "(NumPy's mode='complete'; Householder, LAPACK's signs and completion); "
        "differentiable for m <= n only (where it is the reduced one), as JAX",
        ("a",),
        "q: (..., m, m); r: (..., m, n) upper triangular",
        probe=lambda dtype: ([Spec((3, 2), dtype)], {}),
    ),
)
