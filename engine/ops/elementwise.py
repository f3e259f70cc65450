"""Elementwise ops. A derivative rule is one line: `t` is the tangent of `x`, `ans` the output.

NaN-safety: where a derivative factor can be infinite (sqrt, log, arcsin, division, power at
0) the rule multiplies with `mul_or_zero` / `div_or_zero`, which give exactly 0 where the
incoming tangent or cotangent is 0. So `where(x > 0, sqrt(x), 0)` at x = 0 sends a zero
cotangent into sqrt's rule and gets 0, not 0 * inf = nan.

Complex step: the non-holomorphic ops get the standard extensions (abs(z) = z * sign(Re z);
sign, comparisons, maximum and minimum look at the real part).
"""

import math
import operator

import numpy as np

from .. import numpy as gnp
from ..primitive import ShapeError, primitive
from ..tracing import bind
from .common import batch_elementwise, broadcast_tangent, elementwise_shape, unbroadcast


def _real(x):
    return x.real if np.iscomplexobj(x) else x


def unary(name, fn, rule=None, *, inexact=True, linear=False, ufunc=None, simplify=None):
    """`rule(t, x, ans)` gives the output tangent; no rule means a zero derivative."""

    def jvp(primals, tangents, ans):
        t = tangents[0]
        return None if t is None or rule is None else rule(t, primals[0], ans)

    transpose = (lambda ct, x: (rule(ct, None, None),)) if linear else None
    primitive(
        name,
        impl=fn,
        shape=elementwise_shape(fn, inexact=inexact),
        jvp=jvp,
        transpose=transpose,
        batch=batch_elementwise(name),
        elementwise=True,
        ufunc=ufunc if ufunc is not None else (fn if isinstance(fn, np.ufunc) else None),
        simplify=simplify,
    )


unary(
    "negative",
    operator.neg,
    lambda t, x, ans: -t,
    inexact=False,
    linear=True,
    ufunc=np.negative,
    simplify=lambda args, splats, out: None if splats[0] is None else -splats[0],
)
unary("exp", np.exp, lambda t, x, ans: t * ans)
unary("expm1", np.expm1, lambda t, x, ans: t * (ans + 1))
unary("log", np.log, lambda t, x, ans: gnp.div_or_zero(t, x))
unary("log1p", np.log1p, lambda t, x, ans: gnp.div_or_zero(t, x + 1))
unary("sqrt", np.sqrt, lambda t, x, ans: gnp.div_or_zero(t, ans * 2))
unary("square", np.square, lambda t, x, ans: t * (x * 2), inexact=False)
unary("sin", np.sin, lambda t, x, ans: t * gnp.cos(x))
unary("cos", np.cos, lambda t, x, ans: t * -gnp.sin(x))
unary("tan", np.tan, lambda t, x, ans: t * (ans * ans + 1))
unary("arcsin", np.arcsin, lambda t, x, ans: gnp.div_or_zero(t, gnp.sqrt(1 - x * x)))
unary("arccos", np.arccos, lambda t, x, ans: gnp.div_or_zero(-t, gnp.sqrt(1 - x * x)))
unary("arctan", np.arctan, lambda t, x, ans: t / (x * x + 1))
unary("sinh", np.sinh, lambda t, x, ans: t * gnp.cosh(x))
unary("cosh", np.cosh, lambda t, x, ans: t * gnp.sinh(x))
unary("tanh", np.tanh, lambda t, x, ans: t * (1 - ans * ans))
unary(
    "abs",
    lambda x: x * np.sign(x.real) if np.iscomplexobj(x) else np.abs(x),
    lambda t, x, ans: t * gnp.sign(x),
    inexact=False,
)
unary("sign", lambda x: np.sign(_real(x)), inexact=False)
unary("floor", lambda x: np.floor(_real(x)), inexact=False)
unary("ceil", lambda x: np.ceil(_real(x)), inexact=False)
unary("round", lambda x: np.round(_real(x)), inexact=False)
unary("isfinite", np.isfinite, inexact=False)
unary("logical_not", np.logical_not, inexact=False)


def _sum_tangents(*terms):
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def binary(
    name, fn, rule=None, *, inexact=False, transpose=None, ufunc=None, simplify=None, fresh=False
):
    """`rule(tx, ty, x, y, ans)` gives the output tangent; tx or ty may be None (zero)."""

    def jvp(primals, tangents, ans):
        tx, ty = tangents
        if rule is None or (tx is None and ty is None):
            return None
        out = rule(tx, ty, *primals, ans)
        return None if out is None else broadcast_tangent(out, ans.spec)

    primitive(
        name,
        impl=fn,
        shape=elementwise_shape(fn, inexact=inexact),
        arity=2,
        jvp=jvp,
        transpose=transpose,
        batch=batch_elementwise(name),
        elementwise=True,
        ufunc=ufunc if ufunc is not None else (fn if isinstance(fn, np.ufunc) else None),
        simplify=simplify,
        fresh=fresh,
    )


def _neutral(value, *positions, fold=None):
    """The `simplify` rule of a binary op whose operand at `positions` is neutral when it is
    `value` everywhere (x + 0, 0 + x, x - 0, x * 1): the other operand, if it has the output's
    shape and dtype. With `fold(a, b)`, two splat operands give a splat (2 * 3 is 6)."""

    def rule(args, splats, out):
        for i in positions:
            if splats[i] == value and args[1 - i].spec == out:
                return args[1 - i]
        if fold is not None and splats[0] is not None and splats[1] is not None:
            return fold(splats[0], splats[1])
        return None

    return rule


def _either(tx, ty, on_x, on_y):
    return _sum_tangents(None if tx is None else on_x(tx), None if ty is None else on_y(ty))


def _transpose_linear_each(on_x, on_y):
    """Transpose of an op linear in each operand separately (add, subtract, mul by a primal)."""

    def transpose(ct, x, y):
        from ..primitive import Linear

        return (
            unbroadcast(on_x(ct, y), x.spec) if isinstance(x, Linear) else None,
            unbroadcast(on_y(ct, x), y.spec) if isinstance(y, Linear) else None,
        )

    return transpose


def _tie_weight(x, y):
    """1 where x wins, 0.5 at ties, 0 where y wins: a tie splits the derivative evenly."""
    return gnp.sign(x - y) * 0.5 + 0.5


def _finite_or_zero(ans):
    return gnp.where(gnp.isfinite(ans), ans, 0)


def _compare(fn):
    return lambda x, y: fn(_real(x), _real(y))


def _select_real(take_x):
    def impl(x, y):
        if np.iscomplexobj(x) or np.iscomplexobj(y):
            return np.where(take_x(x.real, y.real), x, y)
        return (np.maximum if take_x is np.greater_equal else np.minimum)(x, y)

    return impl


def _mul_or_zero(t, d):
    """t * d, but 0 wherever t or d is 0 (0 * inf and 0 * nan are 0): only a non-finite
    product can be one of those."""
    out = t * d
    if type(out) is np.float64:  # the scalar case, kept cheap
        return out if math.isfinite(out) or (t != 0 and d != 0) else np.float64(0.0)
    bad = ~np.isfinite(out)
    if bad.any():
        out = np.where(bad & ((np.asarray(t) == 0) | (np.asarray(d) == 0)), 0, out)
    return out


def _div_or_zero(t, d):
    """t / d, but 0 wherever t is 0 (0 / 0 is 0)."""
    out = t / d
    if type(out) is np.float64:
        return out if math.isfinite(out) or t != 0 else np.float64(0.0)
    bad = ~np.isfinite(out)
    if bad.any():
        out = np.where(bad & (np.asarray(t) == 0), 0, out)
    return out


binary(
    "add",
    operator.add,
    lambda tx, ty, x, y, ans: _either(tx, ty, lambda t: t, lambda t: t),
    ufunc=np.add,
    transpose=_transpose_linear_each(lambda ct, _: ct, lambda ct, _: ct),
    simplify=_neutral(0.0, 0, 1),
)
binary(
    "subtract",
    operator.sub,
    lambda tx, ty, x, y, ans: _either(tx, ty, lambda t: t, lambda t: -t),
    ufunc=np.subtract,
    transpose=_transpose_linear_each(lambda ct, _: ct, lambda ct, _: -ct),
    simplify=_neutral(0.0, 1),
)
binary(
    "multiply",
    operator.mul,
    lambda tx, ty, x, y, ans: _either(tx, ty, lambda t: t * y, lambda t: x * t),
    ufunc=np.multiply,
    transpose=_transpose_linear_each(lambda ct, y: ct * y, lambda ct, x: x * ct),
    simplify=_neutral(1.0, 0, 1, fold=operator.mul),
)
binary(
    "divide",
    operator.truediv,
    lambda tx, ty, x, y, ans: gnp.div_or_zero(
        _either(tx, ty, lambda t: t, lambda t: -gnp.mul_or_zero(t, ans)), y
    ),
    ufunc=np.true_divide,
    # linear in the numerator: a rule such as arctan's t / (1 + x*x) is transposed through it
    transpose=lambda ct, x, y: (unbroadcast(ct / y, x.spec), None),
)
# As JAX: d/dx is 0 where y == 0 (x**0 is 1 everywhere, also at x = 0, where y * x**(y-1) is
# 0 * inf; this also makes the Hessian of x**1 at 0 finite), and d/dy takes log(1) = 0 at x = 0
# (0**y is 0 for y > 0, where log(0) * 0 would be nan).
binary(
    "power",
    np.power,
    lambda tx, ty, x, y, ans: _either(
        tx,
        ty,
        lambda t: gnp.mul_or_zero(t, gnp.where(y == 0, 0, y * x ** (y - 1))),
        lambda t: gnp.mul_or_zero(t, gnp.log(gnp.where(x == 0, 1, x)) * ans),
    ),
    inexact=True,
)
binary(
    "maximum",
    _select_real(np.greater_equal),
    lambda tx, ty, x, y, ans: _either(
        tx, ty, lambda t: t * _tie_weight(x, y), lambda t: t * _tie_weight(y, x)
    ),
)
binary(
    "minimum",
    _select_real(np.less_equal),
    lambda tx, ty, x, y, ans: _either(
        tx, ty, lambda t: t * _tie_weight(y, x), lambda t: t * _tie_weight(x, y)
    ),
)


def _logaddexp(x, y):
    if not (np.iscomplexobj(x) or np.iscomplexobj(y)):
        return np.logaddexp(x, y)
    # complex step (np.logaddexp has no complex loop): the same function, shifted by the
    # larger real part so that it does not overflow
    top = np.maximum(np.real(x), np.real(y))
    top = np.where(np.isfinite(top), top, 0)
    return top + np.log(np.exp(x - top) + np.exp(y - top))


binary(
    "logaddexp",
    _logaddexp,
    lambda tx, ty, x, y, ans: _either(
        tx,
        ty,
        lambda t: t * gnp.exp(x - _finite_or_zero(ans)),
        lambda t: t * gnp.exp(y - _finite_or_zero(ans)),
    ),
    inexact=True,
)
# div_or_zero is linear in its first operand: t / d, but exactly 0 wherever t is 0.
# Zero-safe products for derivative rules: linear in each operand separately, like multiply.
binary(
    "mul_or_zero",
    _mul_or_zero,
    lambda tt, td, t, d, ans: _either(
        tt, td, lambda u: gnp.mul_or_zero(u, d), lambda u: gnp.mul_or_zero(t, u)
    ),
    inexact=True,
    transpose=_transpose_linear_each(
        lambda ct, d: gnp.mul_or_zero(ct, d), lambda ct, t: gnp.mul_or_zero(t, ct)
    ),
    fresh=True,
)
binary(
    "div_or_zero",
    _div_or_zero,
    lambda tt, td, t, d, ans: _either(
        tt,
        td,
        lambda u: gnp.div_or_zero(u, d),
        lambda u: -gnp.div_or_zero(gnp.mul_or_zero(t, u), d * d),
    ),
    inexact=True,
    transpose=lambda ct, t, d: (unbroadcast(gnp.div_or_zero(ct, d), t.spec), None),
    fresh=True,
)

for _name, _fn in [
    ("less", np.less),
    ("less_equal", np.less_equal),
    ("greater", np.greater),
    ("greater_equal", np.greater_equal),
    ("equal", np.equal),
    ("not_equal", np.not_equal),
]:
    binary(_name, _compare(_fn))
for _name, _fn in [
    ("logical_and", np.logical_and),
    ("logical_or", np.logical_or),
    ("logical_xor", np.logical_xor),
]:
    binary(_name, _fn)


def _select_jvp(primals, tangents, ans):
    cond, _, _ = primals
    _, tx, ty = tangents
    if tx is None and ty is None:
        return None
    zero = np.zeros((), ans.dtype)
    return broadcast_tangent(
        gnp.where(cond, zero if tx is None else tx, zero if ty is None else ty), ans.spec
    )


def _select_transpose(ct, cond, x, y):
    from ..primitive import Linear

    zero = np.zeros((), ct.dtype)
    return (
        None,
        unbroadcast(gnp.where(cond, ct, zero), x.spec) if isinstance(x, Linear) else None,
        unbroadcast(gnp.where(cond, zero, ct), y.spec) if isinstance(y, Linear) else None,
    )


def _select_shape(cond, x, y):
    if cond.dtype != "bool":
        raise ShapeError(f"the condition must be bool, got {cond.dtype}")
    return elementwise_shape(np.where)(cond, x, y)


primitive(
    "select",
    impl=np.where,
    shape=_select_shape,
    arity=3,
    jvp=_select_jvp,
    transpose=_select_transpose,
    batch=batch_elementwise("select"),
    elementwise=True,
    fresh=True,
)


def _convert_shape(x, dtype):
    from ..graph import Spec

    return Spec(x.shape, dtype)


def _convert_jvp(primals, tangents, ans, dtype):
    from .. import dtypes

    t = tangents[0]
    if t is None or not dtypes.is_differentiable(dtype):
        return None
    return gnp.astype(t, dtype)


def _convert_impl(x, dtype):
    # complex to real keeps the real part, as NumPy does, without its ComplexWarning
    if np.iscomplexobj(x) and not np.issubdtype(np.dtype(dtype), np.complexfloating):
        x = x.real
    return x.astype(dtype)


def _convert_retype(args, dtype):
    """The complex step: a conversion to a real float type carries the imaginary perturbation
    along (stays complex128) instead of dropping it, so `astype(x, "float32")` differentiates."""
    (x,) = args
    if x.spec.dtype == "complex128" and dtype in ("float64", "float32"):
        return (x,)
    return (bind("convert", x, dtype=dtype),)


primitive(
    "convert",
    impl=_convert_impl,
    shape=_convert_shape,
    attrs={"dtype": "dtype"},
    jvp=_convert_jvp,
    transpose=lambda ct, x, dtype: (gnp.astype(ct, x.dtype),),
    batch=lambda args, batched, dtype: bind("convert", *args, dtype=dtype),
    elementwise=True,
    retype=_convert_retype,
)
