"""`gradserve.numpy`: NumPy's names, signatures, broadcasting and dtype promotion. On traced
values each function records a node; on concrete arrays it computes with NumPy at once."""

from __future__ import annotations

import builtins
import string

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
    "arange",
    "arccos",
    "arcsin",
    "arctan",
    "argmax",
    "argmin",
    "around",
    "array",
    "asarray",
    "astype",
    "bool_",
    "broadcast_to",
    "ceil",
    "clip",
    "complex128",
    "concatenate",
    "cos",
    "cosh",
    "cumsum",
    "divide",
    "dot",
    "e",
    "einsum",
    "equal",
    "exp",
    "expand_dims",
    "expm1",
    "eye",
    "flip",
    "float32",
    "float64",
    "floor",
    "full",
    "full_like",
    "greater",
    "greater_equal",
    "inf",
    "inner",
    "int32",
    "int64",
    "isfinite",
    "less",
    "less_equal",
    "linalg",
    "log",
    "log1p",
    "logaddexp",
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
    "moveaxis",
    "multiply",
    "nan",
    "negative",
    "newaxis",
    "not_equal",
    "ones",
    "ones_like",
    "outer",
    "pi",
    "power",
    "prod",
    "ravel",
    "reshape",
    "round",
    "sign",
    "sin",
    "sinh",
    "sqrt",
    "square",
    "squeeze",
    "stack",
    "std",
    "subtract",
    "sum",
    "swapaxes",
    "tan",
    "tanh",
    "tensordot",
    "transpose",
    "true_divide",
    "var",
    "where",
    "zeros",
    "zeros_like",
]


def _is_array(x):
    return isinstance(x, (Tracer, _np.ndarray, _np.generic))


def _dtype(x) -> str:
    return x.spec.dtype if isinstance(x, Tracer) else _dtypes.canonical(_np.asarray(x).dtype)


def _operands(*xs):
    """Python numbers take the dtype of the arrays beside them (NumPy 2's weak scalars)."""
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


def clip(x, a_min=None, a_max=None):
    if a_min is not None:
        x = maximum(x, a_min)
    if a_max is not None:
        x = minimum(x, a_max)
    return x


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
        batch = _np.broadcast_shapes(
            *[_shape(op)[:r] if "..." in s else () for s, op, r in zip(ins, operands, ranks)]
        )
        new_ins, new_ops = [], []
        for s, op, r in zip(ins, operands, ranks):
            if "..." in s:
                head, tail = s.split("...")
                want = tuple(batch[width - r :]) + tuple(_shape(op)[r:])
                if tuple(_shape(op)[:r]) != tuple(batch[width - r :]):
                    op = broadcast_to(op, want[:r] + tuple(_shape(op)[r:]))
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
Tracer.ravel = Tracer.flatten = ravel
Tracer.reshape = reshape
Tracer.astype = astype
Tracer.squeeze = squeeze
Tracer.dot = dot
Tracer.transpose = lambda self, *axes: transpose(
    self, axes[0] if len(axes) == 1 and not isinstance(axes[0], int) else (axes or None)
)

from . import linalg  # noqa: E402  (gnp.linalg, as numpy.linalg; it uses the functions above)
