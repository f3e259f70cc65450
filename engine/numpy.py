"""`gradserve.numpy`: NumPy's names, signatures, broadcasting and dtype promotion. On traced
values each function records a node; on concrete arrays it computes with NumPy at once."""

from __future__ import annotations

import builtins
import string
from itertools import pairwise as _pairwise

import numpy as _np

from . import dtypes as _dtypes
from .tracing import Tracer, bind, current_builder

pi, e, inf, nan, newaxis = _np.pi, _np.e, _np.inf, _np.nan, None
float64, float32, complex128 = _np.float64, _np.float32, _np.complex128
int32, int64, bool_ = _np.int32, _np.int64, _np.bool_

# The public names: NumPy's, each with NumPy's meaning. Everything else here (bind, the
# zero-safe products the derivative rules use, getitem) is for the engine's own modules.
__all__ = [
    "abs",
    "absolute",
    "add",
    "amax",
    "amin",
    "angle",
    "arange",
    "arccos",
    "arccosh",
    "arcsin",
    "arcsinh",
    "arctan",
    "arctan2",
    "arctanh",
    "argmax",
    "argmin",
    "argsort",
    "around",
    "array",
    "array_split",
    "asarray",
    "astype",
    "atleast_1d",
    "atleast_2d",
    "atleast_3d",
    "bool_",
    "broadcast_to",
    "ceil",
    "clip",
    "column_stack",
    "complex128",
    "concatenate",
    "conj",
    "conjugate",
    "cos",
    "cosh",
    "cross",
    "cumsum",
    "deg2rad",
    "degrees",
    "diag",
    "diagonal",
    "diff",
    "divide",
    "dot",
    "dsplit",
    "dstack",
    "e",
    "einsum",
    "equal",
    "exp",
    "exp2",
    "expand_dims",
    "expm1",
    "eye",
    "flip",
    "fliplr",
    "flipud",
    "float32",
    "float64",
    "floor",
    "fmax",
    "fmin",
    "full",
    "full_like",
    "greater",
    "greater_equal",
    "hsplit",
    "hstack",
    "hypot",
    "imag",
    "inf",
    "inner",
    "int32",
    "int64",
    "isfinite",
    "isinf",
    "isnan",
    "kron",
    "less",
    "less_equal",
    "linalg",
    "linspace",
    "log",
    "log1p",
    "log2",
    "log10",
    "logaddexp",
    "logaddexp2",
    "logical_and",
    "logical_not",
    "logical_or",
    "logical_xor",
    "matmul",
    "max",
    "maximum",
    "mean",
    "min",
    "minimum",
    "mod",
    "moveaxis",
    "multiply",
    "nan",
    "nan_to_num",
    "negative",
    "newaxis",
    "not_equal",
    "ones",
    "ones_like",
    "outer",
    "pad",
    "pi",
    "power",
    "prod",
    "rad2deg",
    "radians",
    "ravel",
    "real",
    "reciprocal",
    "remainder",
    "repeat",
    "reshape",
    "roll",
    "rot90",
    "round",
    "sign",
    "sin",
    "sinc",
    "sinh",
    "sort",
    "split",
    "sqrt",
    "square",
    "squeeze",
    "stack",
    "std",
    "subtract",
    "sum",
    "swapaxes",
    "take",
    "take_along_axis",
    "tan",
    "tanh",
    "tensordot",
    "tile",
    "trace",
    "transpose",
    "tril",
    "triu",
    "true_divide",
    "var",
    "vsplit",
    "vstack",
    "where",
    "zeros",
    "zeros_like",
]


def _is_array(x):
    return isinstance(x, (Tracer, _np.ndarray, _np.generic))


def _dtype(x) -> str:
    return x.spec.dtype if isinstance(x, Tracer) else _dtypes.canonical(_np.asarray(x).dtype)


def _operands(*xs):
    """Python numbers take the dtype of the arrays beside them (NumPy 2's weak scalars); a
    list or tuple holding traced values is stacked (`sum([a, b])`, as NumPy's)."""
    if all(type(x) is Tracer for x in xs):  # the common case inside derivative rules
        return list(xs)
    xs = [array(x) if isinstance(x, (list, tuple)) and _contains_tracer(x) else x for x in xs]
    strong = [_dtype(x) for x in xs if _is_array(x)]
    if not strong:
        return [_np.asarray(x) for x in xs]
    target = _dtypes.promote(*strong)
    return [x if _is_array(x) else _np.asarray(x, _dtypes.weak_scalar_dtype(target, x)) for x in xs]


def _inexact(x):
    return x if _dtypes.is_differentiable(_dtype(x)) else astype(x, "float64")


def astype(x, dtype):
    dtype = _dtypes.canonical(dtype)
    if _dtype(x) == dtype:
        return x
    return bind("convert", x, dtype=dtype)


# ---- elementwise -------------------------------------------------------------------------


def _unary(name, *, inexact=True):
    def fn(x):
        (x,) = _operands(x)
        return bind(name, _inexact(x) if inexact else x)

    fn.__name__ = name
    return fn


exp, expm1, log, log1p, sqrt = (_unary(n) for n in ("exp", "expm1", "log", "log1p", "sqrt"))
sin, cos, tan, arcsin, arccos, arctan = (
    _unary(n) for n in ("sin", "cos", "tan", "arcsin", "arccos", "arctan")
)
sinh, cosh, tanh = (_unary(n) for n in ("sinh", "cosh", "tanh"))
arcsinh, arccosh, arctanh = (_unary(n) for n in ("arcsinh", "arccosh", "arctanh"))
negative, square, sign, absolute, isfinite, logical_not = (
    _unary(n, inexact=False)
    for n in ("negative", "square", "sign", "abs", "isfinite", "logical_not")
)
floor, ceil = _unary("floor", inexact=False), _unary("ceil", inexact=False)
abs = absolute


def round(x, decimals=0):
    if decimals != 0:
        scale = 10.0**decimals
        return bind("round", _inexact(x) * scale) / scale
    return bind("round", x)


around = round


def _binary(name, *, inexact=False):
    def fn(x, y):
        x, y = _operands(x, y)
        if inexact:
            x, y = _inexact(x), _inexact(y)
        return bind(name, x, y)

    fn.__name__ = name
    return fn


add, subtract = _binary("add"), _binary("subtract")
_multiply = _binary("multiply")


def multiply(x, y):
    if x is y and isinstance(x, Tracer):  # x * x: one op with a one-op derivative
        return square(x)
    return _multiply(x, y)


divide = true_divide = _binary("divide", inexact=True)
maximum, minimum = _binary("maximum"), _binary("minimum")
logaddexp = _binary("logaddexp", inexact=True)
mod = remainder = _binary("mod")
arctan2, hypot = _binary("arctan2", inexact=True), _binary("hypot", inexact=True)
less, less_equal, greater, greater_equal, equal, not_equal = (
    _binary(n) for n in ("less", "less_equal", "greater", "greater_equal", "equal", "not_equal")
)
logical_and, logical_or, logical_xor = (
    _binary(n) for n in ("logical_and", "logical_or", "logical_xor")
)
# t * d (0 where t or d is 0) and t / d (0 where t is 0), even where the other is inf or
# nan: derivative rules use these where a factor can be infinite.
mul_or_zero = _binary("mul_or_zero", inexact=True)
div_or_zero = _binary("div_or_zero", inexact=True)


def power(x, y):
    if isinstance(y, int) and not isinstance(y, bool) and y == 2:
        return square(x)
    x, y = _operands(x, y)
    return bind("power", _inexact(x), _inexact(y))


def where(condition, x, y):
    if not _is_array(condition):
        condition = _np.asarray(condition)
    if _dtype(condition) != "bool":
        condition = not_equal(condition, 0)
    x, y = _operands(x, y)
    return bind("select", condition, x, y)


def clip(x, a_min=None, a_max=None, *, min=None, max=None):
    if min is not None or max is not None:
        if a_min is not None or a_max is not None:
            raise ValueError("clip: pass a_min/a_max or min/max, not both")
        a_min, a_max = min, max
    if a_min is not None:
        x = maximum(x, a_min)
    if a_max is not None:
        x = minimum(x, a_max)
    return x


def isnan(x):
    (x,) = _operands(x)
    return not_equal(x, x)


def isinf(x):
    (x,) = _operands(x)
    return logical_not(logical_or(isfinite(x), isnan(x)))


def real(val):
    (val,) = _operands(val)
    return astype(val, "float64") if _dtype(val) == "complex128" else val


def imag(val):
    (val,) = _operands(val)
    if _dtype(val) == "complex128":
        return bind("imag", val)
    return zeros_like(val)


def conjugate(x):
    (x,) = _operands(x)
    if _dtype(x) != "complex128":
        return x
    return bind("conj", x)


conj = conjugate


def angle(z, deg=False):
    (z,) = _operands(z)
    if _dtype(z) == "complex128":
        out = arctan2(imag(z), real(z))
    else:
        z = _inexact(z)
        out = arctan2(zeros_like(z), z)
    return out * (180 / _np.pi) if deg else out


def _log_base(base):
    def fn(x):
        (x,) = _operands(x)
        return log(_inexact(x)) / float(_np.log(base))

    return fn


log2, log10 = _log_base(2.0), _log_base(10.0)
log2.__name__, log10.__name__ = "log2", "log10"


def exp2(x):
    (x,) = _operands(x)
    return power(2.0, _inexact(x))


def logaddexp2(x1, x2):
    x1, x2 = _operands(x1, x2)
    ln2 = float(_np.log(2.0))
    return logaddexp(_inexact(x1) * ln2, _inexact(x2) * ln2) / ln2


def deg2rad(x):
    (x,) = _operands(x)
    return _inexact(x) * (_np.pi / 180)


def rad2deg(x):
    (x,) = _operands(x)
    return _inexact(x) * (180 / _np.pi)


radians, degrees = deg2rad, rad2deg


def sinc(x):
    """sin(pi x) / (pi x), 1 at 0: near 0 its Taylor polynomial (to u**6, exact there to the
    last bit), so every derivative at 0 is right too."""
    (x,) = _operands(x)
    u = _inexact(x) * _np.pi
    small = absolute(u) < 1e-2
    safe = where(small, 1.0, u)
    u2 = u * u
    series = 1 - u2 / 6 * (1 - u2 / 20 * (1 - u2 / 42))
    return where(small, series, sin(safe) / safe)


def reciprocal(x):
    (x,) = _operands(x)
    if _dtypes.is_differentiable(_dtype(x)):
        return divide(1, x)
    return astype(divide(1, x), _dtype(x))


def _ignoring_nan(pick):
    """fmax/fmin: `pick` of the operands with a nan replaced by the other one (so a nan never
    reaches pick's derivative rule, which would make the gradient nan); nan where both are."""

    def fn(x1, x2):
        x1, x2 = _operands(x1, x2)
        nan1, nan2 = isnan(x1), isnan(x2)
        safe1 = where(nan1, where(nan2, 0, x2), x1)
        safe2 = where(nan2, safe1, x2)
        return where(logical_and(nan1, nan2), _np.nan, pick(safe1, safe2))

    fn.__name__ = "f" + pick.__name__[:3]
    return fn


fmax, fmin = _ignoring_nan(maximum), _ignoring_nan(minimum)


def nan_to_num(x, copy=True, nan=0.0, posinf=None, neginf=None):
    (x,) = _operands(x)
    dtype = _dtype(x)
    if not _dtypes.is_differentiable(dtype):
        return x
    if dtype == "complex128":
        parts = [nan_to_num(p, nan=nan, posinf=posinf, neginf=neginf) for p in (real(x), imag(x))]
        return parts[0] + parts[1] * 1j
    big = float(_np.finfo(dtype).max)
    high = big if posinf is None else posinf
    low = -big if neginf is None else neginf
    out = where(equal(x, _np.inf), high, where(equal(x, -_np.inf), low, x))
    return where(isnan(x), nan, out)


# ---- reductions --------------------------------------------------------------------------


def _ndim(x):
    return x.ndim if _is_array(x) else _np.ndim(x)


def _shape(x):
    return x.shape if _is_array(x) else _np.shape(x)


def _axis(a, ndim):
    """One axis, checked against ndim and made non-negative (NumPy's AxisError is a
    ValueError)."""
    if not isinstance(a, (int, _np.integer)) or isinstance(a, bool):
        raise TypeError(f"an axis must be an integer, got {a!r}")
    if not -ndim <= a < ndim:
        raise ValueError(f"axis {a} is out of bounds for an array of dimension {ndim}")
    return int(a) % ndim


def _axes(axis, ndim):
    if axis is None:
        return tuple(range(ndim))
    axes = [_axis(a, ndim) for a in ((axis,) if isinstance(axis, (int, _np.integer)) else axis)]
    if len(set(axes)) != len(axes):
        raise ValueError(f"repeated axis in {axis}")
    return tuple(sorted(axes))


def _reduce(name):
    def fn(x, axis=None, keepdims=False):
        (x,) = _operands(x)
        return bind(name, x, axes=_axes(axis, _ndim(x)), keepdims=bool(keepdims))

    fn.__name__ = name
    return fn


sum, max, min, prod = (
    _reduce(n) for n in ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod")
)
amax, amin = max, min


def _count(x, axis):
    return int(_np.prod([_shape(x)[a] for a in _axes(axis, _ndim(x))], dtype=_np.int64))


def mean(x, axis=None, keepdims=False):
    (x,) = _operands(x)
    return sum(_inexact(x), axis, keepdims) / builtins.max(_count(x, axis), 1)


def _squared_deviations(x, axis):
    """|x - mean(x)|² along axis: real for complex x, as NumPy's var, from the real and
    imaginary parts (smooth, so its Hessian holds at 0 too). For real x it is recorded as
    (x - m) * (x - m), which the complex step extends holomorphically."""
    centered = x - mean(x, axis, keepdims=True)
    if _dtype(x) != "complex128":
        return centered, centered * centered
    re, im = astype(centered, "float64"), astype(centered * -1j, "float64")
    return centered, re * re + im * im


def var(x, axis=None, keepdims=False, ddof=0):
    (x,) = _operands(x)
    x = _inexact(x)
    _, squares = _squared_deviations(x, axis)
    n = _count(x, axis)
    return sum(squares, axis, keepdims) / builtins.max(n - ddof, 0)


def std(x, axis=None, keepdims=False, ddof=0):
    (x,) = _operands(x)
    x = _inexact(x)
    if _count(x, axis) == 1 and ddof == 0:
        # One element: x - mean(x) is 0 whatever x, so the std and all its derivatives are
        # 0 (sqrt's derivative at 0 would make them nan). |x - mean(x)| keeps nan and inf
        # (nan - nan) flowing, as NumPy's std does, and abs has derivative 0 at 0.
        centered = x - mean(x, axis, keepdims=True)
        return sum(absolute(centered), axis, keepdims)
    return sqrt(var(x, axis, keepdims, ddof))


def _arg(name):
    def fn(x, axis=None, keepdims=False):
        (x,) = _operands(x)
        return bind(
            name, x, axes=() if axis is None else _axes(axis, _ndim(x)), keepdims=bool(keepdims)
        )

    fn.__name__ = name
    return fn


argmax, argmin = _arg("argmax"), _arg("argmin")


def cumsum(x, axis=None):
    (x,) = _operands(x)
    if axis is None:
        x, axis = ravel(x), 0
    return bind("cumsum", x, axis=_axis(axis, _ndim(x)))


# ---- shapes ------------------------------------------------------------------------------


def reshape(x, shape, *more):
    (x,) = _operands(x)
    shape = (shape,) + more if more else shape
    shape = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
    size = int(_np.prod(_shape(x), dtype=_np.int64))
    if shape.count(-1) == 1:
        rest = int(_np.prod([d for d in shape if d != -1], dtype=_np.int64))
        if rest == 0 or size % rest:
            raise ValueError(f"cannot reshape array of size {size} into shape {shape}")
        shape = tuple(size // rest if d == -1 else d for d in shape)
    if shape == tuple(_shape(x)):
        return x
    return bind("reshape", x, shape=shape)


def ravel(x):
    return reshape(x, (-1,))


def transpose(x, axes=None):
    (x,) = _operands(x)
    ndim = _ndim(x)
    perm = (
        tuple(range(ndim))[::-1] if axes is None else tuple(a % builtins.max(ndim, 1) for a in axes)
    )
    if perm == tuple(range(ndim)):
        return x
    return bind("transpose", x, perm=perm)


def swapaxes(x, axis1, axis2):
    perm = list(range(_ndim(x)))
    a, b = _axis(axis1, _ndim(x)), _axis(axis2, _ndim(x))
    perm[a], perm[b] = perm[b], perm[a]
    return transpose(x, perm)


def moveaxis(x, source, destination):
    ndim = _ndim(x)
    source, destination = _axis(source, ndim), _axis(destination, ndim)
    perm = [i for i in range(ndim) if i != source]
    perm.insert(destination, source)
    return transpose(x, perm)


def expand_dims(x, axis):
    axes = (axis,) if isinstance(axis, (int, _np.integer)) else tuple(axis)
    ndim = _ndim(x) + len(axes)
    axes = set(_axes(axes, ndim))
    dims = iter(_shape(x))
    return reshape(x, tuple(1 if i in axes else next(dims) for i in range(ndim)))


def squeeze(x, axis=None):
    shape = _shape(x)
    axes = [i for i, d in enumerate(shape) if d == 1] if axis is None else _axes(axis, len(shape))
    for a in axes:
        if shape[a] != 1:
            raise ValueError(f"cannot squeeze axis {a} of size {shape[a]}")
    return reshape(x, tuple(d for i, d in enumerate(shape) if i not in axes))


def broadcast_to(x, shape):
    (x,) = _operands(x)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if tuple(_shape(x)) == shape:
        return x
    return bind("broadcast_to", x, shape=shape)


def flip(x, axis=None):
    (x,) = _operands(x)
    return bind("flip", x, axes=_axes(axis, _ndim(x)))


def concatenate(arrays, axis=0):
    if not len(arrays):
        raise ValueError("need at least one array to concatenate")
    arrays = _operands(*arrays)
    if axis is None:
        arrays, axis = [ravel(a) for a in arrays], 0
    return bind("concatenate", *arrays, axis=_axis(axis, _ndim(arrays[0])))


def stack(arrays, axis=0):
    if not len(arrays):
        raise ValueError("need at least one array to stack")
    arrays = _operands(*arrays)
    axis = _axis(axis, _ndim(arrays[0]) + 1)
    return concatenate([expand_dims(a, axis) for a in arrays], axis=axis)


def _atleast(x, ndim):
    (x,) = _operands(x)
    shape = tuple(_shape(x))
    if len(shape) >= ndim:
        return x
    if ndim == 3 and len(shape) == 2:
        return reshape(x, shape + (1,))
    if ndim == 3 and len(shape) == 1:
        return reshape(x, (1,) + shape + (1,))
    return reshape(x, (1,) * (ndim - len(shape)) + shape)


def _each(arys, ndim):
    out = [_atleast(a, ndim) for a in arys]
    return out[0] if len(out) == 1 else tuple(out)


def atleast_1d(*arys):
    return _each(arys, 1)


def atleast_2d(*arys):
    return _each(arys, 2)


def atleast_3d(*arys):
    return _each(arys, 3)


def hstack(tup):
    arrs = [_atleast(a, 1) for a in tup]
    return concatenate(arrs, axis=0 if arrs and _ndim(arrs[0]) == 1 else 1)


def vstack(tup):
    return concatenate([_atleast(a, 2) for a in tup], axis=0)


def dstack(tup):
    return concatenate([_atleast(a, 3) for a in tup], axis=2)


def column_stack(tup):
    arrs = []
    for a in tup:
        (a,) = _operands(a)
        arrs.append(reshape(a, (-1, 1)) if _ndim(a) < 2 else a)
    return concatenate(arrs, axis=1)


def _along(axis, ndim, key):
    """An index applying `key` along `axis` of an ndim-d array."""
    return (slice(None),) * axis + (key,) + (slice(None),) * (ndim - axis - 1)


def array_split(ary, indices_or_sections, axis=0):
    (ary,) = _operands(ary)
    axis = _axis(axis, _ndim(ary))
    n = _shape(ary)[axis]
    if isinstance(indices_or_sections, (int, _np.integer)):
        sections = int(indices_or_sections)
        if sections <= 0:
            raise ValueError("number sections must be larger than 0.")
        each, extras = divmod(n, sections)
        sizes = [each + 1] * extras + [each] * (sections - extras)
        bounds = [0, *_np.cumsum(sizes).tolist()]
    else:
        bounds = [0, *[int(i) for i in indices_or_sections], n]
    return [
        getitem(ary, _along(axis, _ndim(ary), slice(start, stop)))
        for start, stop in _pairwise(bounds)
    ]


def split(ary, indices_or_sections, axis=0):
    if isinstance(indices_or_sections, (int, _np.integer)):
        n = _shape(ary)[_axis(axis, _ndim(ary))]
        if indices_or_sections <= 0 or n % indices_or_sections:
            raise ValueError("array split does not result in an equal division")
    return array_split(ary, indices_or_sections, axis)


def hsplit(ary, indices_or_sections):
    if _ndim(ary) == 0:
        raise ValueError("hsplit only works on arrays of 1 or more dimensions")
    return split(ary, indices_or_sections, 1 if _ndim(ary) > 1 else 0)


def vsplit(ary, indices_or_sections):
    if _ndim(ary) < 2:
        raise ValueError("vsplit only works on arrays of 2 or more dimensions")
    return split(ary, indices_or_sections, 0)


def dsplit(ary, indices_or_sections):
    if _ndim(ary) < 3:
        raise ValueError("dsplit only works on arrays of 3 or more dimensions")
    return split(ary, indices_or_sections, 2)


def flipud(m):
    if _ndim(m) < 1:
        raise ValueError("Input must be >= 1-d.")
    return flip(m, 0)


def fliplr(m):
    if _ndim(m) < 2:
        raise ValueError("Input must be >= 2-d.")
    return flip(m, 1)


def rot90(m, k=1, axes=(0, 1)):
    (m,) = _operands(m)
    ndim = _ndim(m)
    if len(axes) != 2:
        raise ValueError("len(axes) must be 2.")
    a, b = _axis(axes[0], ndim), _axis(axes[1], ndim)
    if a == b:
        raise ValueError("Axes must be different.")
    k %= 4
    if k == 0:
        return m
    if k == 2:
        return flip(m, (a, b))
    perm = list(range(ndim))
    perm[a], perm[b] = perm[b], perm[a]
    if k == 1:
        return transpose(flip(m, b), perm)
    return flip(transpose(m, perm), b)


def roll(a, shift, axis=None):
    (a,) = _operands(a)
    if axis is None:
        return reshape(roll(ravel(a), shift, 0), _shape(a))
    shifts, axes = _np.broadcast_arrays(_np.asarray(shift), _np.asarray(axis))
    total = {}
    for sh, ax in zip(shifts.ravel().tolist(), axes.ravel().tolist()):
        ax = _axis(ax, _ndim(a))
        total[ax] = total.get(ax, 0) + sh
    for ax, sh in sorted(total.items()):
        n = _shape(a)[ax]
        if n == 0 or sh % n == 0:
            continue
        cut = n - sh % n
        ndim = _ndim(a)
        a = concatenate(
            [
                getitem(a, _along(ax, ndim, slice(cut, n))),
                getitem(a, _along(ax, ndim, slice(0, cut))),
            ],
            axis=ax,
        )
    return a


def repeat(a, repeats, axis=None):
    (a,) = _operands(a)
    if axis is None:
        a, axis = ravel(a), 0
    axis = _axis(axis, _ndim(a))
    index = _np.repeat(_np.arange(_shape(a)[axis]), repeats)
    return getitem(a, _along(axis, _ndim(a), index))


def tile(A, reps):
    (A,) = _operands(A)
    reps = (int(reps),) if isinstance(reps, (int, _np.integer)) else tuple(int(r) for r in reps)
    ndim = builtins.max(_ndim(A), len(reps))
    shape = (1,) * (ndim - _ndim(A)) + tuple(_shape(A))
    reps = (1,) * (ndim - len(reps)) + reps
    if builtins.all(r == 1 for r in reps):
        return reshape(A, shape)
    spread = reshape(A, tuple(v for d in shape for v in (1, d)))
    spread = broadcast_to(spread, tuple(v for r, d in zip(reps, shape) for v in (r, d)))
    return reshape(spread, tuple(r * d for r, d in zip(reps, shape)))


def _index_operand(indices):
    return indices if isinstance(indices, Tracer) else _np.asarray(indices)


def take(a, indices, axis=None):
    (a,) = _operands(a)
    if axis is None:
        a, axis = ravel(a), 0
    axis = _axis(axis, _ndim(a))
    return getitem(a, _along(axis, _ndim(a), _index_operand(indices)))


def take_along_axis(arr, indices, axis=-1):
    (arr,) = _operands(arr)
    indices = _index_operand(indices)
    if axis is None:
        arr, axis = ravel(arr), 0
    ndim = _ndim(arr)
    axis = _axis(axis, ndim)
    if _ndim(indices) != ndim:
        raise ValueError("`indices` and `arr` must have the same number of dimensions")
    key = []
    for i in range(ndim):
        if i == axis:
            key.append(indices)
        else:
            at = [1] * ndim
            at[i] = _shape(arr)[i]
            key.append(_np.arange(_shape(arr)[i]).reshape(at))
    return getitem(arr, tuple(key))


def argsort(a, axis=-1, kind=None, order=None, *, stable=None):
    """The indices that sort a along axis, ascending and stable whatever `kind` and `stable`
    say (not differentiable)."""
    if order is not None:
        raise ValueError("argsort: `order` (structured arrays) is not supported")
    (a,) = _operands(a)
    if axis is None:
        a, axis = ravel(a), 0
    return bind("argsort", a, axis=_axis(axis, _ndim(a)))


def sort(a, axis=-1, kind=None, order=None, *, stable=None):
    """a sorted along axis: a permutation of its elements, so its derivative permutes the
    tangents the same way (ties keep their order, as a stable sort)."""
    if order is not None:
        raise ValueError("sort: `order` (structured arrays) is not supported")
    (a,) = _operands(a)
    if axis is None:
        a, axis = ravel(a), 0
    return take_along_axis(a, argsort(a, axis), axis)


def _zero_of(x):
    return _np.zeros((), _dtype(x))


def tril(m, k=0):
    (m,) = _operands(m)
    mask = _np.tri(*_shape(m)[-2:], k=k, dtype=bool)
    return where(mask, m, _zero_of(m))


def triu(m, k=0):
    (m,) = _operands(m)
    mask = _np.tri(*_shape(m)[-2:], k=k - 1, dtype=bool)
    return where(mask, _zero_of(m), m)


def diagonal(a, offset=0, axis1=0, axis2=1):
    (a,) = _operands(a)
    ndim = _ndim(a)
    if ndim < 2:
        raise ValueError("diag requires an array of at least two dimensions")
    a1, a2 = _axis(axis1, ndim), _axis(axis2, ndim)
    if a1 == a2:
        raise ValueError("axis1 and axis2 cannot be the same")
    a = transpose(a, [i for i in range(ndim) if i not in (a1, a2)] + [a1, a2])
    n, m = _shape(a)[-2:]
    if offset >= 0:
        length = builtins.max(0, builtins.min(n, m - offset))
        rows = _np.arange(length)
        cols = rows + offset
    else:
        length = builtins.max(0, builtins.min(n + offset, m))
        cols = _np.arange(length)
        rows = cols - offset
    return getitem(a, (Ellipsis, rows, cols))


def trace(a, offset=0, axis1=0, axis2=1, dtype=None):
    out = sum(diagonal(a, offset, axis1, axis2), axis=-1)
    return out if dtype is None else astype(out, dtype)


def diag(v, k=0):
    (v,) = _operands(v)
    if _ndim(v) == 2:
        return diagonal(v, k)
    if _ndim(v) != 1:
        raise ValueError("Input must be 1- or 2-d.")
    n = _shape(v)[0]
    size = n + builtins.abs(k)
    if n == 0:
        return zeros((size, size), _dtype(v))
    i, j = _np.indices((size, size))
    source = _np.clip(i if k >= 0 else j, 0, n - 1)
    return where(j - i == k, getitem(v, source), _zero_of(v))


def diff(a, n=1, axis=-1, prepend=None, append=None):
    (a,) = _operands(a)
    if n < 0:
        raise ValueError(f"order must be non-negative but got {n!r}")
    if n == 0:
        return a
    ndim = _ndim(a)
    if ndim == 0:
        raise ValueError("diff requires input that is at least one dimensional")
    axis = _axis(axis, ndim)
    parts = []
    for extra in (prepend, "a", append):
        if extra is None:
            continue
        if isinstance(extra, str):
            parts.append(a)
            continue
        (extra,) = _operands(extra)
        if _ndim(extra) == 0:
            shape = list(_shape(a))
            shape[axis] = 1
            extra = broadcast_to(extra, tuple(shape))
        parts.append(extra)
    if len(parts) > 1:
        a = concatenate(parts, axis=axis)
    for _ in range(n):
        upper = getitem(a, _along(axis, ndim, slice(1, None)))
        lower = getitem(a, _along(axis, ndim, slice(None, -1)))
        a = not_equal(upper, lower) if _dtype(a) == "bool" else upper - lower
    return a


def pad(array, pad_width, mode="constant", **kwargs):
    """NumPy's pad in modes constant (`constant_values`), edge, reflect, symmetric and wrap."""
    (x,) = _operands(array)
    ndim = _ndim(x)
    widths = _np.broadcast_to(_np.asarray(pad_width), (ndim, 2)).astype(_np.int64)
    if (widths < 0).any():
        raise ValueError("index can't contain negative values")
    if mode not in ("constant", "edge", "reflect", "symmetric", "wrap"):
        raise NotImplementedError(f"pad: mode {mode!r} is not supported")
    if mode == "constant":
        values = _np.broadcast_to(_np.asarray(kwargs.get("constant_values", 0)), (ndim, 2))
    for axis in range(ndim):
        before, after = widths[axis].tolist()
        if not before and not after:
            continue
        n = _shape(x)[axis]
        if mode == "constant":
            parts = [x]
            for side, width in ((0, before), (1, after)):
                if width:
                    shape = list(_shape(x))
                    shape[axis] = width
                    block = full(tuple(shape), values[axis][side].item(), _dtype(x))
                    parts.insert(len(parts) * side, block)
            x = concatenate(parts, axis=axis)
            continue
        if n == 0:
            raise ValueError("can't extend empty axis using modes other than constant")
        # NumPy's pattern: the edge repeated, or the axis reflected or wrapped periodically
        at = _np.arange(-before, n + after)
        if mode == "edge" or (mode == "reflect" and n == 1):
            index = _np.clip(at, 0, n - 1)
        elif mode == "wrap":
            index = at % n
        elif mode == "reflect":
            at = at % (2 * (n - 1))
            index = _np.where(at < n, at, 2 * (n - 1) - at)
        else:
            at = at % (2 * n)
            index = _np.where(at < n, at, 2 * n - 1 - at)
        x = getitem(x, _along(axis, ndim, index))
    return x


# ---- contractions ------------------------------------------------------------------------


def _fresh_letters(count, avoid=""):
    letters = [c for c in string.ascii_letters if c not in avoid]
    if count > len(letters):
        raise ValueError("too many axes for einsum")
    return "".join(letters[:count])


def einsum(subscripts, *operands):
    """NumPy's einsum, including implicit output and '...'; broadcasting of '...' axes is
    made explicit with broadcast_to."""
    if not isinstance(subscripts, str):
        raise TypeError(
            "einsum takes a subscripts string first (the sublist form is not "
            f"supported), got {type(subscripts).__name__}"
        )
    operands = _operands(*operands)
    subscripts = subscripts.replace(" ", "")
    lhs, arrow, out = subscripts.partition("->")
    ins = lhs.split(",")
    if len(ins) != len(operands):
        raise ValueError(f"einsum: {len(ins)} subscripts for {len(operands)} operands")
    if "..." in subscripts:
        named = "".join(c for c in subscripts if c.isalpha())
        ranks = [_ndim(op) - len(s.replace("...", "")) for s, op in zip(ins, operands)]
        width = builtins.max([r for r, s in zip(ranks, ins) if "..." in s], default=0)
        ell = _fresh_letters(width, named)
        spans = [len(s.split("...")[0]) if "..." in s else 0 for s in ins]
        batch = _np.broadcast_shapes(
            *[
                _shape(op)[at : at + r] if "..." in s else ()
                for s, op, r, at in zip(ins, operands, ranks, spans)
            ]
        )
        new_ins, new_ops = [], []
        for s, op, r, at in zip(ins, operands, ranks, spans):
            if "..." in s:
                head, tail = s.split("...")
                shape = tuple(_shape(op))
                want = batch[width - r :]
                if shape[at : at + r] != want:
                    op = broadcast_to(op, shape[:at] + want + shape[at + r :])
                s = head + ell[width - r :] + tail
            new_ins.append(s)
            new_ops.append(op)
        ins, operands = new_ins, new_ops
        if arrow:
            out = out.replace("...", ell)
        else:
            out = ell + "".join(sorted(c for c in named if named.count(c) == 1))
    elif not arrow:
        letters = "".join(ins)
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
    return bind("einsum", *operands, subscripts=",".join(ins) + "->" + out)


def matmul(a, b):
    a, b = _operands(a, b)
    sa, sb = tuple(_shape(a)), tuple(_shape(b))
    if not sa or not sb:
        raise ValueError("matmul: operands must have at least one dimension; use multiply")
    batch = _np.broadcast_shapes(sa[:-2], sb[:-2])
    letters = _fresh_letters(len(batch), "mkn")
    for_a = letters[len(batch) - len(sa[:-2]) :]
    for_b = letters[len(batch) - len(sb[:-2]) :]
    if sa[:-2] != batch[len(batch) - len(sa[:-2]) :]:
        a = broadcast_to(a, batch[len(batch) - len(sa[:-2]) :] + sa[-2:])
    if sb[:-2] != batch[len(batch) - len(sb[:-2]) :]:
        b = broadcast_to(b, batch[len(batch) - len(sb[:-2]) :] + sb[-2:])
    sub_a = for_a + ("mk" if len(sa) > 1 else "k")
    sub_b = for_b + ("kn" if len(sb) > 1 else "k")
    out = letters + ("m" if len(sa) > 1 else "") + ("n" if len(sb) > 1 else "")
    return bind("einsum", a, b, subscripts=f"{sub_a},{sub_b}->{out}")


def dot(a, b):
    a, b = _operands(a, b)
    na, nb = _ndim(a), _ndim(b)
    if na == 0 or nb == 0:
        return multiply(a, b)
    letters = _fresh_letters(na + nb - 1, "z")
    sub_a = letters[: na - 1] + "z"
    if nb == 1:
        sub_b, out = "z", sub_a[:-1]
    else:
        rest = letters[na - 1 : na - 1 + nb - 1]
        sub_b = rest[:-1] + "z" + rest[-1]
        out = sub_a[:-1] + rest
    return bind("einsum", a, b, subscripts=f"{sub_a},{sub_b}->{out}")


def outer(a, b):
    return einsum("i,j->ij", ravel(a), ravel(b))


def tensordot(a, b, axes=2):
    """NumPy's tensordot: the sum over the last `axes` axes of a and the first of b, or over
    the axes (axes_a, axes_b) pair by pair; an einsum."""
    a, b = _operands(a, b)
    na, nb = _ndim(a), _ndim(b)
    if isinstance(axes, (int, _np.integer)):
        axes = int(axes)
        if axes < 0 or axes > builtins.min(na, nb):
            raise ValueError(f"tensordot: axes={axes} does not fit shapes {_shape(a)}, {_shape(b)}")
        axes_a, axes_b = list(range(na - axes, na)), list(range(axes))
    else:
        axes_a, axes_b = axes
        axes_a = [axes_a] if isinstance(axes_a, (int, _np.integer)) else list(axes_a)
        axes_b = [axes_b] if isinstance(axes_b, (int, _np.integer)) else list(axes_b)
    if len(axes_a) != len(axes_b):
        raise ValueError("shape-mismatch for sum")
    axes_a = [_axis(x, na) for x in axes_a]
    axes_b = [_axis(x, nb) for x in axes_b]
    if len(set(axes_a)) != len(axes_a) or len(set(axes_b)) != len(axes_b):
        raise ValueError("tensordot: repeated axis")
    for i, j in zip(axes_a, axes_b):
        if _shape(a)[i] != _shape(b)[j]:
            raise ValueError("shape-mismatch for sum")
    letters = _fresh_letters(na + nb)
    sub_a = list(letters[:na])
    sub_b = list(letters[na:])
    for i, j in zip(axes_a, axes_b):
        sub_b[j] = sub_a[i]
    out = [c for k, c in enumerate(sub_a) if k not in axes_a]
    out += [c for k, c in enumerate(sub_b) if k not in axes_b]
    return bind("einsum", a, b, subscripts=f"{''.join(sub_a)},{''.join(sub_b)}->{''.join(out)}")


def inner(a, b):
    """NumPy's inner: a 0-d operand multiplies; else the sum over the last axes of both, of
    shape a.shape[:-1] + b.shape[:-1]."""
    a, b = _operands(a, b)
    na, nb = _ndim(a), _ndim(b)
    if na == 0 or nb == 0:
        return multiply(a, b)
    letters = _fresh_letters(na + nb - 2, "z")
    rest_a, rest_b = letters[: na - 1], letters[na - 1 :]
    return bind("einsum", a, b, subscripts=f"{rest_a}z,{rest_b}z->{rest_a}{rest_b}")


def kron(a, b):
    a, b = _operands(a, b)
    ndim = builtins.max(_ndim(a), _ndim(b))
    sa = (1,) * (ndim - _ndim(a)) + tuple(_shape(a))
    sb = (1,) * (ndim - _ndim(b)) + tuple(_shape(b))
    spread_a = reshape(a, tuple(v for d in sa for v in (d, 1)))
    spread_b = reshape(b, tuple(v for d in sb for v in (1, d)))
    return reshape(multiply(spread_a, spread_b), tuple(x * y for x, y in zip(sa, sb)))


def cross(a, b, axisa=-1, axisb=-1, axisc=-1, axis=None):
    if axis is not None:
        axisa = axisb = axisc = axis
    a, b = _operands(a, b)
    a = moveaxis(a, axisa, -1)
    b = moveaxis(b, axisb, -1)
    na, nb = _shape(a)[-1], _shape(b)[-1]
    if na not in (2, 3) or nb not in (2, 3):
        raise ValueError("incompatible dimensions for cross product\n(dimension must be 2 or 3)")
    a0, a1 = a[..., 0], a[..., 1]
    b0, b1 = b[..., 0], b[..., 1]
    c2 = a0 * b1 - a1 * b0
    if na == 2 and nb == 2:
        return c2
    if na == 2:
        b2 = b[..., 2]
        c0, c1 = a1 * b2, -(a0 * b2)
    elif nb == 2:
        a2 = a[..., 2]
        c0, c1 = -(a2 * b1), a2 * b0
    else:
        a2, b2 = a[..., 2], b[..., 2]
        c0, c1 = a1 * b2 - a2 * b1, a2 * b0 - a0 * b2
    shape = _np.broadcast_shapes(_shape(c0), _shape(c1), _shape(c2))
    c = stack([broadcast_to(c, shape) for c in (c0, c1, c2)], axis=-1)
    return moveaxis(c, -1, axisc)


# ---- creation ----------------------------------------------------------------------------


def full(shape, fill_value, dtype=None):
    shape = (shape,) if isinstance(shape, int) else tuple(int(d) for d in shape)
    dtype = _dtypes.canonical(dtype or _np.asarray(fill_value).dtype)
    if current_builder() is None:
        return _np.full(shape, fill_value, dtype)
    return bind("full", shape=shape, dtype=dtype, value=float(fill_value))


def zeros(shape, dtype="float64"):
    return full(shape, 0.0, dtype)


def ones(shape, dtype="float64"):
    return full(shape, 1.0, dtype)


def full_like(x, fill_value, dtype=None):
    return full(_shape(x), fill_value, dtype or _dtype(x))


def zeros_like(x, dtype=None):
    return full_like(x, 0.0, dtype)


def ones_like(x, dtype=None):
    return full_like(x, 1.0, dtype)


def _within_limits(count):
    from .errors import LimitError
    from .limits import DEFAULT_LIMITS

    if count > DEFAULT_LIMITS.max_elements:
        raise LimitError(
            f"{count} elements, over the limit of {DEFAULT_LIMITS.max_elements}", "tracing"
        )


def arange(*args, dtype=None):
    start, stop, step = (0, args[0], 1) if len(args) == 1 else (tuple(args) + (1,))[:3]
    if step == 0:
        raise ValueError("arange: the step must not be zero")
    _within_limits(builtins.max(0, int(_np.ceil((stop - start) / step))))
    return _np.arange(*args, dtype=dtype)


def linspace(start, stop, num=50, endpoint=True, retstep=False, dtype=None, axis=0):
    """NumPy's linspace: a NumPy array (a constant) for numbers, as arange; with a traced
    start or stop, start + (stop - start) * t for the fractions t of NumPy's linspace(0, 1)."""
    _within_limits(int(num) * builtins.max(1, _np.size(start), _np.size(stop)))
    if not (_contains_tracer(start) or _contains_tracer(stop)):
        return _np.linspace(start, stop, num, endpoint, retstep, dtype, axis)
    if retstep or dtype is not None or axis != 0 or _np.ndim(start) or _np.ndim(stop):
        raise TypeError("linspace: with a traced start or stop, only scalar bounds and axis=0")
    t = _np.linspace(0.0, 1.0, num, endpoint)
    return start + (stop - start) * t


def eye(N, M=None, k=0, dtype="float64"):
    _within_limits(int(N) * int(N if M is None else M))
    return _np.eye(N, M, k, dtype=dtype)


def _contains_tracer(obj):
    if isinstance(obj, Tracer):
        return True
    return isinstance(obj, (list, tuple)) and builtins.any(_contains_tracer(o) for o in obj)


def array(obj, dtype=None):
    if _contains_tracer(obj):
        out = obj if isinstance(obj, Tracer) else stack([array(o) for o in obj])
        return astype(out, dtype) if dtype is not None else out
    return _np.array(obj, dtype=dtype)


asarray = array


# ---- indexing ----------------------------------------------------------------------------


def _index_entries(x, key):
    from .ops.indexing import ARRAY, INT, NEWAXIS, SLICE

    key = key if isinstance(key, tuple) else (key,)
    key = tuple(_np.asarray(k) if isinstance(k, list) else k for k in key)
    shape = _shape(x)
    consumed = builtins.sum(1 for k in key if k is not None and k is not Ellipsis)
    if consumed > len(shape):
        raise IndexError(f"too many indices: {consumed} for an array of dimension {len(shape)}")
    if builtins.sum(1 for k in key if k is Ellipsis) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if Ellipsis in [k for k in key if not _is_array(k)]:
        at = next(i for i, k in enumerate(key) if k is Ellipsis and not _is_array(k))
        key = key[:at] + (slice(None),) * (len(shape) - consumed) + key[at + 1 :]
    else:
        key = key + (slice(None),) * (len(shape) - consumed)
    arrays = [k for k in key if isinstance(k, (Tracer, _np.ndarray))]
    for a in arrays:
        if _dtype(a) == "bool":
            raise IndexError("boolean masks give data-dependent shapes; use gnp.where instead")
        if _dtype(a) not in ("int32", "int64"):
            raise IndexError(f"index arrays must be integers, got {_dtype(a)}")
    entries, used, axis = [], [], 0
    for k in key:
        if k is None:
            entries += [NEWAXIS, 0, 0, 0]
            continue
        n = shape[axis]
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if len(range(start, stop, step)) == 0:
                start, stop, step = 0, 0, 1
            entries += [SLICE, start, stop, step]
        elif isinstance(k, (int, _np.integer)) and not isinstance(k, bool):
            if not -n <= k < n:
                raise IndexError(f"index {k} is out of bounds for axis {axis} with size {n}")
            if arrays:
                entries += [ARRAY, len(used), 0, 0]
                used.append(_np.asarray(int(k) % n))
            else:
                entries += [INT, int(k) % n, 0, 0]
        elif isinstance(k, (Tracer, _np.ndarray)):
            if isinstance(k, _np.ndarray) and k.size and (k.min() < -n or k.max() >= n):
                raise IndexError(
                    f"index array has entries out of bounds for axis {axis} with size {n}"
                )
            entries += [ARRAY, len(used), 0, 0]
            used.append(k)
        else:
            raise IndexError(f"unsupported index {k!r}")
        axis += 1
    return used, tuple(entries)


def getitem(x, key):
    arrays, index = _index_entries(x, key)
    return bind("getitem", x, *arrays, index=index)


# ---- the Tracer's operators and methods -----------------------------------------------------


def _swap(fn):
    return lambda self, other: fn(other, self)


for _name, _fn in {
    "__add__": add,
    "__sub__": subtract,
    "__mul__": multiply,
    "__truediv__": divide,
    "__pow__": power,
    "__mod__": mod,
    "__matmul__": matmul,
    "__lt__": less,
    "__le__": less_equal,
    "__gt__": greater,
    "__ge__": greater_equal,
    "__eq__": equal,
    "__ne__": not_equal,
    "__and__": logical_and,
    "__or__": logical_or,
    "__xor__": logical_xor,
}.items():
    setattr(Tracer, _name, _fn)
for _name, _fn in {
    "__radd__": add,
    "__rsub__": subtract,
    "__rmul__": multiply,
    "__rtruediv__": divide,
    "__rpow__": power,
    "__rmod__": mod,
    "__rmatmul__": matmul,
}.items():
    setattr(Tracer, _name, _swap(_fn))
Tracer.__neg__ = negative
Tracer.__pos__ = lambda self: self
Tracer.__abs__ = absolute
Tracer.__invert__ = logical_not
Tracer.__getitem__ = getitem
Tracer.T = property(transpose)
Tracer.sum, Tracer.mean, Tracer.max, Tracer.min, Tracer.prod = sum, mean, max, min, prod
Tracer.var, Tracer.std, Tracer.argmax, Tracer.argmin, Tracer.cumsum = (
    var,
    std,
    argmax,
    argmin,
    cumsum,
)
Tracer.real, Tracer.imag = property(real), property(imag)
Tracer.conj = Tracer.conjugate = conjugate
Tracer.diagonal, Tracer.trace, Tracer.repeat = diagonal, trace, repeat
Tracer.argsort, Tracer.take, Tracer.clip = argsort, take, clip
Tracer.ravel = Tracer.flatten = ravel
Tracer.reshape = reshape
Tracer.astype = astype
Tracer.squeeze = squeeze
Tracer.dot = dot
Tracer.transpose = lambda self, *axes: transpose(
    self, axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else (axes or None)
)

from . import linalg  # noqa: E402  (gnp.linalg, as numpy.linalg; it uses the functions above)
