"""`gradserve.numpy.linalg`: NumPy's `numpy.linalg` functions that record into a graph, on
stacks of matrices (the last two axes) as NumPy's; on concrete arrays they compute at once.

`solve`, `det`, `slogdet`, `cholesky`, `eigh`, `eig`, `svd` (`svd_full`) and `qr`
(`qr_complete`) are primitives
(engine/ops/linalg.py); `inv` is a `solve`, `norm` and `pinv` are made of other ops. Every
derivative composes to any order. `tensordot` is in `gradserve.numpy` itself, as in NumPy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as _np

from . import numpy as _gnp
from .tracing import Tracer, bind

__all__ = [
    "cholesky",
    "det",
    "eig",
    "eigh",
    "eigvals",
    "eigvalsh",
    "inv",
    "norm",
    "pinv",
    "qr",
    "slogdet",
    "solve",
    "svd",
]


class SlogdetResult(NamedTuple):
    sign: object
    logabsdet: object


class EighResult(NamedTuple):
    eigenvalues: object
    eigenvectors: object


class EigResult(NamedTuple):
    eigenvalues: object
    eigenvectors: object


class SVDResult(NamedTuple):
    U: object
    S: object
    Vh: object


class QRResult(NamedTuple):
    Q: object
    R: object


def _array(a):
    """A float (or complex) array: integers and bools become float64, as numpy.linalg does."""
    if not isinstance(a, (Tracer, _np.ndarray)):
        a = _np.asarray(a)
    return _gnp._inexact(a)


def _matrix(a, name, *, square=True):
    a = _array(a)
    if a.ndim < 2:
        raise _np.linalg.LinAlgError(
            f"{name}: {a.ndim}-dimensional array given. Array must be at least two-dimensional"
        )
    if square and a.shape[-1] != a.shape[-2]:
        raise _np.linalg.LinAlgError(f"{name}: last 2 dimensions of the array must be square")
    return a


def _real(a, name):
    if _gnp._dtype(a) == "complex128":
        raise TypeError(f"{name}: real (float64 or float32) matrices only, got complex128")
    return a


def _mT(a):
    return _gnp.swapaxes(a, -1, -2)


def solve(a, b):
    """The solution x of a @ x = b. `b` is a vector (n,) or a stack of matrices (..., n, k);
    the batch axes of a and b broadcast, as in NumPy 2."""
    a = _matrix(a, "solve")
    b = _array(b)
    a, b = _gnp._operands(a, b)
    dtype = _np.result_type(a.dtype, b.dtype)
    a, b = _gnp.astype(a, dtype), _gnp.astype(b, dtype)
    n = a.shape[-1]
    vector = b.ndim == 1
    if vector:
        b = _gnp.reshape(b, (b.shape[0], 1))
    if b.ndim < 2 or b.shape[-2] != n:
        raise ValueError(f"solve: b of shape {b.shape} does not fit a of shape {a.shape}")
    batch = _np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    a = _gnp.broadcast_to(a, batch + a.shape[-2:])
    b = _gnp.broadcast_to(b, batch + b.shape[-2:])
    x = bind("solve", a, b)
    return x[..., 0] if vector else x


def inv(a):
    """The inverse of each matrix: solve(a, I); its derivative is -X da X."""
    a = _matrix(a, "inv")
    eye = _np.eye(a.shape[-1], dtype=a.dtype)
    return bind("solve", a, _gnp.broadcast_to(eye, a.shape))


def det(a):
    """The determinant of each matrix."""
    return bind("det", _matrix(a, "det"))


def slogdet(a):
    """(sign, logabsdet) of the determinant of each matrix: det = sign * exp(logabsdet)."""
    return SlogdetResult(*bind("slogdet", _matrix(a, "slogdet")))


def cholesky(a, /, *, upper=False):
    """The Cholesky factor L (a = L L^T) from the lower triangle of each matrix; with
    `upper`, U = L^T (a = U^T U). nan for a matrix that is not positive definite."""
    L = bind("cholesky", _real(_matrix(a, "cholesky"), "cholesky"))
    return _mT(L) if upper else L


def eigh(a, UPLO="L"):
    """Eigenvalues (ascending) and eigenvectors (columns) of each symmetric matrix, read from
    its lower ('L') or upper ('U') triangle. The derivative needs distinct eigenvalues; an
    eigenvector's sign is LAPACK's."""
    if UPLO not in ("L", "U"):
        raise ValueError("UPLO argument must be 'L' or 'U'")
    a = _real(_matrix(a, "eigh"), "eigh")
    return EighResult(*bind("eigh", a if UPLO == "L" else _mT(a)))


def eigvalsh(a, UPLO="L"):
    """The eigenvalues (ascending) of each symmetric matrix: eigh's."""
    return eigh(a, UPLO).eigenvalues


def eig(a):
    """Eigenvalues and right eigenvectors (columns) of each general square matrix, real or
    complex: always complex128 (NumPy gives real arrays when every eigenvalue is real; a
    graph's dtypes do not depend on values). Eigenvectors have unit norm and their largest
    component real, as LAPACK's. The derivative needs distinct eigenvalues."""
    return EigResult(*bind("eig", _matrix(a, "eig")))


def eigvals(a):
    """The eigenvalues of each general square matrix (complex128): eig's."""
    return eig(a).eigenvalues


def svd(a, full_matrices=True, compute_uv=True, hermitian=False):
    """The singular value decomposition a = U diag(S) Vh[:k] (k = min(m, n)): U (m, m) and
    Vh (n, n) with NumPy's default `full_matrices=True`, U (m, k) and Vh (k, n) with
    `full_matrices=False`; S alone with `compute_uv=False`. The derivative needs distinct
    nonzero singular values; as JAX, the full decomposition of a non-square matrix has none
    (its extra columns are any orthonormal completion): use full_matrices=False."""
    a = _real(_matrix(a, "svd", square=False), "svd")
    m, n = a.shape[-2:]
    if not compute_uv:
        return bind("svd", a)[1]
    if full_matrices and m != n:
        return SVDResult(*bind("svd_full", a))
    return SVDResult(*bind("svd", a))


def qr(a, mode="reduced"):
    """The QR decomposition (Q, R): reduced (Q (m, k), R (k, n), k = min(m, n)), complete
    (Q (m, m), R (m, n)) with mode='complete', or R alone with mode='r'. As JAX, the complete
    decomposition of a tall matrix has no derivative (Q's extra columns are any orthonormal
    completion): use mode='reduced'."""
    if mode not in ("reduced", "r", "complete"):
        raise ValueError(f"Unrecognized mode '{mode}'")
    a = _real(_matrix(a, "qr", square=False), "qr")
    m, n = a.shape[-2:]
    if mode == "complete" and m > n:
        return QRResult(*bind("qr_complete", a))
    q, r = bind("qr", a)
    return r if mode == "r" else QRResult(q, r)


_DEFAULT = object()


def pinv(a, rcond=None, hermitian=False, *, rtol=_DEFAULT):
    """The Moore-Penrose pseudo-inverse, from the reduced SVD: singular values at most
    rcond * max(s) count as 0 (rcond: NumPy's default, 1e-15; or `rtol`, as in NumPy 2:
    None gives max(m, n) * eps). Its derivative is that of V diag(1/s) U^T."""
    a = _real(_matrix(a, "pinv", square=False), "pinv")
    if rcond is None:
        if rtol is _DEFAULT:
            rcond = 1e-15
        elif rtol is None:
            rcond = max(a.shape[-2:]) * _np.finfo(a.dtype).eps
        else:
            rcond = rtol
    elif rtol is not _DEFAULT:
        raise ValueError("`rtol` and `rcond` can't be both set.")
    u, s, vh = bind("svd", a)
    cutoff = _gnp.max(s, axis=-1, keepdims=True) * _np.asarray(rcond, a.dtype)[..., None]
    large = s > cutoff
    inverse = _gnp.where(large, 1 / _gnp.where(large, s, 1), 0)
    return _mT(vh) @ (_gnp.expand_dims(inverse, -1) * _mT(u))


# ---- norm ----------------------------------------------------------------------------------


def _two_norm(x, axis, keepdims):
    """sqrt(sum(x * x)) with the derivative 0 at 0 (as NumPy's value; the engine's nan-safe
    guard: the square root only sees positive sums)."""
    s = _gnp.sum(x * x, axis=axis, keepdims=keepdims)
    positive = s > 0
    return _gnp.where(positive, _gnp.sqrt(_gnp.where(positive, s, 1)), 0)


def _p_norm(x, p, axis, keepdims):
    s = _gnp.sum(_gnp.abs(x) ** float(p), axis=axis, keepdims=keepdims)
    positive = s > 0
    return _gnp.where(positive, _gnp.where(positive, s, 1) ** (1.0 / p), 0)


def _keep(value, shape, axes, keepdims):
    if not keepdims:
        return value
    return _gnp.reshape(value, tuple(1 if i in axes else d for i, d in enumerate(shape)))


def _singular_values(x, row, col):
    """The singular values of the matrices on axes (row, col), the other axes in order."""
    perm = [i for i in range(x.ndim) if i not in (row, col)] + [row, col]
    return bind("svd", _gnp.transpose(x, perm))[1]


def norm(x, ord=None, axis=None, keepdims=False):
    """NumPy's vector and matrix norms. Vector (one axis): ord None or 2, 1, inf, -inf, 0
    and any other number p (sum(|x|**p)**(1/p)). Matrix (two axes): None or 'fro', 'nuc',
    1, -1, 2, -2, inf, -inf. The 2-norm, the Frobenius norm and p-norms have derivative 0 at
    x = 0 (to any order), where they are not differentiable."""
    x = _array(x)
    nd = x.ndim
    if axis is None:
        if ord is None or (ord in ("f", "fro") and nd == 2) or (ord == 2 and nd == 1):
            out = _two_norm(x, None, False)
            return _gnp.reshape(out, (1,) * nd) if keepdims else out
        axis = tuple(range(nd))
    elif isinstance(axis, (int, _np.integer)):
        axis = (axis,)
    axes = tuple(_gnp._axis(a, nd) for a in axis)
    if len(axes) == 1:
        if isinstance(ord, str):
            raise ValueError(f"Invalid norm order '{ord}' for vectors")
        if ord is None or ord == 2:
            return _two_norm(x, axes, keepdims)
        if ord == _np.inf:
            return _gnp.max(_gnp.abs(x), axis=axes, keepdims=keepdims)
        if ord == -_np.inf:
            return _gnp.min(_gnp.abs(x), axis=axes, keepdims=keepdims)
        if ord == 0:
            return _gnp.sum(
                _gnp.astype(_gnp.not_equal(x, 0), x.dtype), axis=axes, keepdims=keepdims
            )
        if ord == 1:
            return _gnp.sum(_gnp.abs(x), axis=axes, keepdims=keepdims)
        return _p_norm(x, ord, axes, keepdims)
    if len(axes) != 2:
        raise ValueError("Improper number of dimensions to norm.")
    row, col = axes
    if row == col:
        raise ValueError("Duplicate axes given.")
    if ord in (2, -2, "nuc"):
        s = _singular_values(_real(x, "norm"), row, col)
        if ord == "nuc":
            out = _gnp.sum(s, axis=-1)
        else:
            out = (_gnp.max if ord == 2 else _gnp.min)(s, axis=-1)
        return _keep(out, x.shape, axes, keepdims)
    if ord in (1, -1, _np.inf, -_np.inf):
        pick = _gnp.max if ord > 0 else _gnp.min
        summed, then = (row, col) if ord in (1, -1) else (col, row)
        inner = _gnp.sum(_gnp.abs(x), axis=summed)
        out = pick(inner, axis=then - 1 if then > summed else then)
        return _keep(out, x.shape, axes, keepdims)
    if ord is None or ord in ("fro", "f"):
        return _two_norm(x, axes, keepdims)
    raise ValueError("Invalid norm order for matrices.")
