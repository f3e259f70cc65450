"""Elementwise ops. A derivative rule is one line: `t` is the tangent of `x`, `ans` the output.

NaN-safety: where a derivative factor can be infinite (sqrt, log, arcsin, division, power at
0) the rule multiplies with `mul_or_zero` / `div_or_zero`, which give exactly 0 where the
incoming tangent or cotangent is 0. So `where(x > 0, sqrt(x), 0)` at x = 0 sends a zero
cotangent into sqrt's rule and gets 0, not 0 * inf = nan.

Complex step: the non-holomorphic ops get the standard extensions (abs(z) = z * sign(Re z),
its `complex_step`, only where its operand is complex because of the step: complex data keeps
NumPy's modulus; sign, comparisons, maximum and minimum look at the real part).
"""

import math
import operator

import numpy as np

from .. import numpy as gnp
from ..graph import Spec
from ..primitive import OpDoc, ShapeError, primitive
from ..tracing import bind
from . import one_hot
from .common import batch_elementwise, broadcast_tangent, elementwise_shape, unbroadcast


def _real(x):
    return x.real if np.iscomplexobj(x) else x


def same_dtype_probe(arity):
    """An elementwise op's dtype probe: `arity` scalar operands of one dtype."""
    return lambda dtype: ([Spec((), dtype)] * arity, {})


def unary(
    name,
    fn,
    rule=None,
    *,
    inexact=True,
    linear=False,
    ufunc=None,
    simplify=None,
    scale_factor=None,
    complex_step=None,
    doc,
):
    """`rule(t, x, ans)` gives the output tangent; no rule means a zero derivative. `doc`: the
    one-line description (docs/wire.md)."""

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
        scale_factor=scale_factor,
        complex_step=complex_step,
        doc=OpDoc(doc, ("x",), "the shape of x", probe=same_dtype_probe(1)),
    )


unary(
    "negative",
    operator.neg,
    lambda t, x, ans: -t,
    inexact=False,
    linear=True,
    ufunc=np.negative,
    simplify=lambda args, splats, out: None if splats[0] is None else -splats[0],
    scale_factor=lambda args, splats: (-1.0, 0),
    doc="-x",
)
unary("exp", np.exp, lambda t, x, ans: t * ans, doc="e to the power x")
unary("expm1", np.expm1, lambda t, x, ans: t * (ans + 1), doc="exp(x) - 1, accurate near 0")
unary("log", np.log, lambda t, x, ans: gnp.div_or_zero(t, x), doc="natural logarithm")
unary(
    "log1p",
    np.log1p,
    lambda t, x, ans: gnp.div_or_zero(t, x + 1),
    doc="log(1 + x), accurate near 0",
)
unary(
    "sqrt",
    np.sqrt,
    lambda t, x, ans: gnp.div_or_zero(t, ans * 2),
    doc="square root (principal branch for complex)",
)
unary("square", np.square, lambda t, x, ans: t * (x * 2), inexact=False, doc="x * x")
unary("sin", np.sin, lambda t, x, ans: t * gnp.cos(x), doc="sine (radians)")
unary("cos", np.cos, lambda t, x, ans: t * -gnp.sin(x), doc="cosine (radians)")
unary("tan", np.tan, lambda t, x, ans: t * (ans * ans + 1), doc="tangent (radians)")
unary(
    "arcsin",
    np.arcsin,
    lambda t, x, ans: gnp.div_or_zero(t, gnp.sqrt(1 - x * x)),
    doc="inverse sine",
)
unary(
    "arccos",
    np.arccos,
    lambda t, x, ans: gnp.div_or_zero(-t, gnp.sqrt(1 - x * x)),
    doc="inverse cosine",
)
unary("arctan", np.arctan, lambda t, x, ans: t / (x * x + 1), doc="inverse tangent")
unary("sinh", np.sinh, lambda t, x, ans: t * gnp.cosh(x), doc="hyperbolic sine")
unary("cosh", np.cosh, lambda t, x, ans: t * gnp.sinh(x), doc="hyperbolic cosine")
unary("tanh", np.tanh, lambda t, x, ans: t * (1 - ans * ans), doc="hyperbolic tangent")
unary(
    "arcsinh",
    np.arcsinh,
    lambda t, x, ans: t / gnp.sqrt(x * x + 1),
    doc="inverse hyperbolic sine",
)
unary(
    "arccosh",
    np.arccosh,
    lambda t, x, ans: gnp.div_or_zero(t, gnp.sqrt(x * x - 1)),
    doc="inverse hyperbolic cosine (x >= 1 for real x)",
)
unary(
    "arctanh",
    np.arctanh,
    lambda t, x, ans: gnp.div_or_zero(t, 1 - x * x),
    doc="inverse hyperbolic tangent (|x| < 1 for real x)",
)


def real_part(z):
    """Re z as float64, for rules on complex values (convert keeps the real part)."""
    return gnp.astype(z, "float64")


def imag_part(z):
    """Im z as float64: the real part of -i z."""
    return gnp.astype(z * -1j, "float64")


def _abs_rule(t, x, ans):
    if x.dtype != "complex128":
        return t * gnp.sign(x)
    # |x| = sqrt(Re² + Im²): d|x| = Re(conj(u) t) with u = x / |x| (0 at 0, as sign(0)),
    # real; u is a primal factor, so the cotangent conj(u) * ct is finite everywhere
    u = gnp.div_or_zero(x, ans)
    return real_part(u) * real_part(t) + imag_part(u) * imag_part(t)


unary(
    "abs",
    np.abs,
    _abs_rule,
    inexact=False,
    complex_step=lambda args: args[0] * gnp.sign(args[0]),
    doc="|x|; the modulus (float64) for complex x",
)
unary(
    "conj",
    np.conjugate,
    lambda t, x, ans: bind("conj", t) if t.dtype == np.complex128 else t,
    inexact=False,
    linear=True,  # its own transpose (the pairing Re(a b) the transposes use)
    complex_step=lambda args: args[0],  # a real value is its own conjugate
    doc="the complex conjugate (x itself for real x)",
)


def _imag_jvp(primals, tangents, ans):
    t = tangents[0]
    return None if t is None or primals[0].dtype != np.complex128 else bind("imag", t)


def _imag_transpose(ct, x):
    # Im z = Re(-i z): the transpose (pairing Re(a b)) of the real part after -i
    return (gnp.astype(ct, "complex128") * -1j if x.dtype == "complex128" else None,)


primitive(
    "imag",
    impl=lambda x: np.array(np.imag(x)),
    shape=elementwise_shape(np.imag),
    jvp=_imag_jvp,
    transpose=_imag_transpose,
    batch=batch_elementwise("imag"),
    elementwise=True,
    fresh=True,
    # a value real in the graph has imaginary part 0, whatever the step adds
    complex_step=lambda args: gnp.zeros(args[0].shape, "float64"),
    doc=OpDoc(
        "the imaginary part (zeros of x's dtype for real x)",
        ("x",),
        "the shape of x",
        probe=same_dtype_probe(1),
    ),
)
unary(
    "sign",
    lambda x: np.sign(_real(x)),
    inexact=False,
    doc="-1, 0 or 1 by the sign of x (of Re x for complex x)",
)
unary("floor", lambda x: np.floor(_real(x)), inexact=False, doc="floor (of Re x for complex x)")
unary("ceil", lambda x: np.ceil(_real(x)), inexact=False, doc="ceiling (of Re x for complex x)")
unary(
    "round",
    lambda x: np.round(_real(x)),
    inexact=False,
    doc="round to the nearest integer, halves to even (of Re x for complex x)",
)
unary("isfinite", np.isfinite, inexact=False, doc="true where x is neither inf nor nan")
unary("logical_not", np.logical_not, inexact=False, doc="true where x is 0 (false)")


def _sum_tangents(*terms):
    terms = [t for t in terms if t is not None]
    if not terms:
        return None
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total


def binary(
    name,
    fn,
    rule=None,
    *,
    inexact=False,
    transpose=None,
    ufunc=None,
    simplify=None,
    scale_factor=None,
    batch_scaled=None,
    fresh=False,
    doc,
    role="front end",
):
    """`rule(tx, ty, x, y, ans)` gives the output tangent; tx or ty may be None (zero). `doc`:
    the one-line description (docs/wire.md), `role` who records the op (see OpDoc)."""

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
        batch_scaled=batch_scaled,
        elementwise=True,
        ufunc=ufunc if ufunc is not None else (fn if isinstance(fn, np.ufunc) else None),
        simplify=simplify,
        scale_factor=scale_factor,
        fresh=fresh,
        doc=OpDoc(
            doc,
            ("x", "y"),
            "x and y broadcast together",
            role=role,
            probe=same_dtype_probe(2),
        ),
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


def _splat_factor(args, splats):
    """x * y scales x by y when y is a splat (or y by x)."""
    if splats[1] is not None:
        return splats[1], 0
    if splats[0] is not None:
        return splats[0], 1
    return None


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
    batch_scaled=one_hot.sum_with_basis(1.0),
    doc="x + y",
)
binary(
    "subtract",
    operator.sub,
    lambda tx, ty, x, y, ans: _either(tx, ty, lambda t: t, lambda t: -t),
    ufunc=np.subtract,
    transpose=_transpose_linear_each(lambda ct, _: ct, lambda ct, _: -ct),
    simplify=_neutral(0.0, 1),
    batch_scaled=one_hot.sum_with_basis(-1.0),
    doc="x - y",
)
binary(
    "multiply",
    operator.mul,
    lambda tx, ty, x, y, ans: _either(tx, ty, lambda t: t * y, lambda t: x * t),
    ufunc=np.multiply,
    transpose=_transpose_linear_each(lambda ct, y: ct * y, lambda ct, x: x * ct),
    simplify=_neutral(1.0, 0, 1, fold=operator.mul),
    scale_factor=_splat_factor,
    batch_scaled=one_hot.product,
    doc="x * y",
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
    doc="x / y (true division)",
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
    doc="x to the power y",
)
binary(
    "maximum",
    _select_real(np.greater_equal),
    lambda tx, ty, x, y, ans: _either(
        tx, ty, lambda t: t * _tie_weight(x, y), lambda t: t * _tie_weight(y, x)
    ),
    doc="the larger of x and y, x at ties (by real part for complex); nan if either is nan",
)
binary(
    "minimum",
    _select_real(np.less_equal),
    lambda tx, ty, x, y, ans: _either(
        tx, ty, lambda t: t * _tie_weight(y, x), lambda t: t * _tie_weight(x, y)
    ),
    doc="the smaller of x and y, x at ties (by real part for complex); nan if either is nan",
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
    doc="log(exp(x) + exp(y)), without overflow",
)


def _real_only_shape(fn, inexact):
    """The shape rule of an elementwise op NumPy has no complex loop for: complex operands are
    refused (the complex step evaluates the op's `complex_step` extension instead)."""
    rule = elementwise_shape(fn, inexact=inexact)

    def shape(*specs):
        if any(s.dtype == "complex128" for s in specs):
            raise ShapeError(f"needs real operands, got {[s.dtype for s in specs]}")
        return rule(*specs)

    return shape


def real_binary(name, fn, rule, *, inexact, complex_step, doc, operands=("x", "y")):
    """A binary op on real operands (NumPy has no complex loop for it) with a complex-step
    extension, written with gnp."""
    primitive(
        name,
        impl=fn,
        shape=_real_only_shape(fn, inexact),
        arity=2,
        jvp=lambda primals, tangents, ans: (
            None
            if tangents[0] is None and tangents[1] is None
            else broadcast_tangent(rule(*tangents, *primals, ans), ans.spec)
        ),
        batch=batch_elementwise(name),
        elementwise=True,
        ufunc=fn,
        complex_step=complex_step,
        doc=OpDoc(
            doc,
            operands,
            f"{operands[0]} and {operands[1]} broadcast together",
            probe=same_dtype_probe(2),
        ),
    )


def _mod_rule(tx, ty, x, y, ans):
    # x mod y = x - y * floor(x / y): d/dx is 1, d/dy is -floor(x / y) (away from the jumps)
    return _either(tx, ty, lambda t: t, lambda t: -t * gnp.floor(x / y))


real_binary(
    "mod",
    np.mod,
    _mod_rule,
    inexact=False,
    complex_step=lambda args: args[0] - args[1] * gnp.floor(args[0] / args[1]),
    doc="x mod y with the sign of y, as NumPy's mod (Python's %); real operands",
)


def _arctan2_step(args):
    y, x = args
    # the quadrant from the real parts, the holomorphic arctan(y / x) for the rest
    turn = gnp.where(gnp.real(x) < 0, gnp.where(gnp.real(y) < 0, -np.pi, np.pi), 0.0)
    return gnp.arctan(y / x) + turn


real_binary(
    "arctan2",
    np.arctan2,
    # primal factors x / r² and -y / r², 0 at the origin, so no 0 * inf there in either mode
    lambda ty, tx, y, x, ans: _either(
        ty,
        tx,
        lambda t: t * gnp.div_or_zero(x, x * x + y * y),
        lambda t: t * gnp.div_or_zero(-y, x * x + y * y),
    ),
    inexact=True,
    complex_step=_arctan2_step,
    doc="the angle of the point (x, y): arctan(y / x) in the right quadrant, in [-pi, pi], "
    "as NumPy's arctan2(y, x); real operands",
    operands=("y", "x"),
)
real_binary(
    "hypot",
    np.hypot,
    # primal factors x / r and y / r, 0 at the origin (as sign(0)), finite in either mode
    lambda tx, ty, x, y, ans: _either(
        tx, ty, lambda t: t * gnp.div_or_zero(x, ans), lambda t: t * gnp.div_or_zero(y, ans)
    ),
    inexact=True,
    complex_step=lambda args: gnp.sqrt(args[0] * args[0] + args[1] * args[1]),
    doc="sqrt(x * x + y * y) without overflow; real operands",
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
    doc="x * y, but exactly 0 wherever x or y is 0 (also when the other is inf or nan)",
    role="derivative",
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
    doc="x / y, but exactly 0 wherever x is 0 (also when y is 0, inf or nan)",
    role="derivative",
)

for _name, _fn, _doc in [
    ("less", np.less, "x < y"),
    ("less_equal", np.less_equal, "x <= y"),
    ("greater", np.greater, "x > y"),
    ("greater_equal", np.greater_equal, "x >= y"),
    ("equal", np.equal, "x == y"),
    ("not_equal", np.not_equal, "x != y"),
]:
    binary(_name, _compare(_fn), doc=f"{_doc} (complex operands: their real parts)")
for _name, _fn, _doc in [
    ("logical_and", np.logical_and, "x and y, each true where nonzero"),
    ("logical_or", np.logical_or, "x or y, each true where nonzero"),
    ("logical_xor", np.logical_xor, "x xor y, each true where nonzero"),
]:
    binary(_name, _fn, doc=_doc)


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
    doc=OpDoc(
        "x where condition is true, else y",
        ("condition", "x", "y"),
        "condition (bool), x and y broadcast together; the dtype x and y promote to",
        probe=lambda dtype: ([Spec((), "bool"), Spec((), dtype), Spec((), dtype)], {}),
    ),
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
    doc=OpDoc(
        "x converted to another dtype, as NumPy's astype: float to int truncates toward 0, "
        "complex to real keeps the real part, nonzero to bool is true",
        ("x",),
        "the shape of x, of dtype `dtype`",
        {"dtype": "the dtype to convert to, one of the six names"},
    ),
)
