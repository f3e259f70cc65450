"""Reductions along `axes` (sorted, non-negative; `keepdims`), cumsum, argmax/argmin,
and logsumexp (a primitive so that its gradient is finite even when every input is -inf)."""

import functools

import numpy as np

from .. import dtypes
from .. import numpy as gnp
from ..graph import Spec
from ..primitive import OpDoc, ShapeError, primitive
from ..tracing import bind
from .common import batch_shift_axes, normalize_axes


def _real(x):
    return x.real if np.iscomplexobj(x) else x


def _reduced_shape(x, axes, keepdims, *, nonempty=False):
    if normalize_axes(axes, x.ndim) != tuple(axes):
        raise ShapeError(f"axes {axes} must be sorted, distinct and non-negative")
    if nonempty and any(x.shape[a] == 0 for a in axes):
        raise ShapeError("reduction over a zero-size axis has no identity")
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    return tuple(d for i, d in enumerate(x.shape) if i not in axes)


def keepdims_shape(shape, axes):
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def _with_kept_dims(value, x, axes, keepdims):
    """A reduction's output reshaped to broadcast against its input."""
    return value if keepdims else gnp.reshape(value, keepdims_shape(x.shape, axes))


def _sum_dtype(dtype):
    return dtypes.canonical(np.sum(np.ones((1,), dtype)).dtype)


REDUCE_ATTRS = {"axes": "ints", "keepdims": "bool"}
REDUCE_DOCS = {
    "axes": "the axes reduced: sorted, distinct, each in 0 .. ndim-1; () reduces none",
    "keepdims": "keep each reduced axis, with size 1",
}
REDUCED = "the shape of x without the reduced axes (with them as 1 when keepdims)"


def reduce_probe(dtype):
    """A reduction's dtype probe: a vector of `dtype`, reduced along its axis."""
    return [Spec((2,), dtype)], {"axes": (0,), "keepdims": False}


def reduction(
    name,
    impl,
    jvp,
    *,
    out_dtype=lambda d: d,
    nonempty=False,
    transpose=None,
    fresh=False,
    kernel=None,
    doc,
):
    """`doc`: the one-line description (docs/wire.md)."""
    primitive(
        name,
        impl=impl,
        kernel=kernel,
        attrs=REDUCE_ATTRS,
        fresh=fresh,
        jvp=jvp,
        transpose=transpose,
        shape=lambda x, axes, keepdims: Spec(
            _reduced_shape(x, axes, keepdims, nonempty=nonempty), out_dtype(x.dtype)
        ),
        batch=batch_shift_axes(name),
        doc=OpDoc(doc, ("x",), REDUCED, REDUCE_DOCS, probe=reduce_probe),
    )


def _sum_jvp(primals, tangents, ans, axes, keepdims):
    t = tangents[0]
    return None if t is None else gnp.sum(t, axis=axes, keepdims=keepdims)


def _sum_transpose(ct, x, axes, keepdims):
    return (gnp.broadcast_to(_with_kept_dims(ct, x, axes, keepdims), x.shape),)


def _extremum_jvp(primals, tangents, ans, axes, keepdims):
    """The derivative goes to the extremal elements, split evenly between ties."""
    (x,), (t,) = primals, tangents
    if t is None:
        return None
    hit = gnp.astype(gnp.equal(x, _with_kept_dims(ans, x, axes, keepdims)), x.dtype)
    weight = hit / gnp.sum(hit, axis=axes, keepdims=True)
    return gnp.sum(t * weight, axis=axes, keepdims=keepdims)


def _extremum_impl(pick):
    def impl(x, axes, keepdims):
        if not np.iscomplexobj(x):
            return pick(x, axis=axes, keepdims=keepdims)
        # complex step: the element whose real part is extremal
        moved = np.moveaxis(x, axes, tuple(range(x.ndim - len(axes), x.ndim)))
        # the reduced size spelled out: reshape(-1) fails on zero-size arrays
        count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
        flat = moved.reshape(moved.shape[: x.ndim - len(axes)] + (count,))
        arg = (np.argmax if pick is np.max else np.argmin)(flat.real, axis=-1)
        out = np.take_along_axis(flat, arg[..., None], axis=-1)[..., 0]
        return out.reshape(keepdims_shape(x.shape, axes)) if keepdims else out

    return impl


def _prod_jvp(primals, tangents, ans, axes, keepdims):
    """d prod = sum(t * others), others[j] the product of the factors but x[j]. prod / x[j]
    is that only where no factor is 0 (else 0 / 0 = nan). With P the product of the nonzero
    factors and s the sum of the zero ones (0, but its derivative finds them):
    no zero: P / x[j]; one zero: P at the zero, s * P / x[j] elsewhere; more zeros: 0.
    Exact to first order everywhere and to second order with at most one zero."""
    (x,), (t,) = primals, tangents
    if t is None:
        return None
    is_zero = gnp.equal(x, 0)
    nonzero = gnp.where(is_zero, 1, x)
    product = gnp.prod(nonzero, axis=axes, keepdims=True)
    zeros = gnp.sum(gnp.astype(is_zero, "int64"), axis=axes, keepdims=True)
    zero_sum = gnp.sum(gnp.where(is_zero, x, 0), axis=axes, keepdims=True)
    others = gnp.where(
        zeros == 0,
        product / nonzero,
        gnp.where(zeros == 1, gnp.where(is_zero, product, zero_sum * product / nonzero), 0),
    )
    return gnp.sum(t * others, axis=axes, keepdims=keepdims)


def _logsumexp_impl(x, axes, keepdims):
    if x.size == 0:
        return np.log(np.sum(np.exp(x), axis=axes, keepdims=keepdims))
    top = np.max(_real(x), axis=axes, keepdims=True)
    top = np.where(np.isfinite(top), top, 0)  # all -inf: shift by 0, result -inf, no nan
    shifted = np.subtract(x, top)
    if isinstance(shifted, np.ndarray) and shifted.ndim:
        np.exp(shifted, out=shifted)  # in place: no second temporary of x's size
    else:
        shifted = np.exp(shifted)
    out = np.log(np.sum(shifted, axis=axes, keepdims=True)) + top
    return out if keepdims else np.squeeze(out, axis=axes)


def _logsumexp_jvp(primals, tangents, ans, axes, keepdims):
    """d logsumexp = sum(t * softmax(x)), softmax(x) = exp(x - ans). Where ans is -inf (a row
    of all -inf) the shift is 0, so that row's softmax is 0, not nan; where it is +inf the
    finite elements get 0 and the infinite ones nan, as JAX's."""
    (x,), (t,) = primals, tangents
    if t is None:
        return None
    safe = _with_kept_dims(gnp.where(gnp.equal(ans, -np.inf), 0, ans), x, axes, keepdims)
    return gnp.sum(t * gnp.exp(x - safe), axis=axes, keepdims=keepdims)


reduction(
    "reduce_sum",
    lambda x, axes, keepdims: np.sum(x, axis=axes, keepdims=keepdims),
    _sum_jvp,
    out_dtype=_sum_dtype,
    transpose=_sum_transpose,
    # what np.sum runs for an array, without its dispatch
    kernel=lambda x, axes, keepdims: (
        functools.partial(np.add.reduce, axis=axes, keepdims=keepdims) if x.shape else None
    ),
    doc="sum over axes",
)
reduction(
    "reduce_max",
    _extremum_impl(np.max),
    _extremum_jvp,
    nonempty=True,
    doc="largest element over axes (by real part for complex x); a reduced axis of size 0 "
    "is rejected",
)
reduction(
    "reduce_min",
    _extremum_impl(np.min),
    _extremum_jvp,
    nonempty=True,
    doc="smallest element over axes (by real part for complex x); a reduced axis of size 0 "
    "is rejected",
)
reduction(
    "reduce_prod",
    lambda x, axes, keepdims: np.prod(x, axis=axes, keepdims=keepdims),
    _prod_jvp,
    out_dtype=_sum_dtype,
    doc="product over axes",
)


def _inexact_dtype(dtype):
    if not dtypes.is_differentiable(dtype):  # the front end converts; a decoded graph may not
        raise ShapeError(f"logsumexp needs a float or complex input, got {dtype}")
    return dtype


reduction(
    "logsumexp",
    _logsumexp_impl,
    _logsumexp_jvp,
    out_dtype=_inexact_dtype,
    fresh=True,
    doc="log(sum(exp(x))) over axes, shifted by the maximum so that it does not overflow "
    "(-inf where every element is -inf)",
)


def _arg_shape(x, axes, keepdims):
    if len(axes) > 1:
        raise ShapeError("argmax/argmin take one axis or none (axes=())")
    if x.size == 0:
        raise ShapeError("argmax/argmin of an empty array")
    if not axes:
        return Spec((1,) * x.ndim if keepdims else (), "int64")
    return Spec(_reduced_shape(x, axes, keepdims), "int64")


def _arg_impl(pick):
    def impl(x, axes, keepdims):
        return pick(_real(x), axis=axes[0] if axes else None, keepdims=keepdims).astype(np.int64)

    return impl


def _arg_batch(name):
    """With an axis, shift it past the batch axis; with none (over all elements), flatten
    each batch entry and take the index along it, not over the whole batch."""
    shifted = batch_shift_axes(name)

    def rule(args, batched, axes, keepdims):
        if axes:
            return shifted(args, batched, axes=axes, keepdims=keepdims)
        x = args[0]
        flat = gnp.reshape(x, (x.shape[0], int(np.prod(x.shape[1:], dtype=np.int64))))
        out = bind(name, flat, axes=(1,), keepdims=False)
        return gnp.reshape(out, (x.shape[0],) + (1,) * (x.ndim - 1)) if keepdims else out

    return rule


for _name, _pick, _which in [
    ("argmax", np.argmax, "largest"),
    ("argmin", np.argmin, "smallest"),
]:
    primitive(
        _name,
        impl=_arg_impl(_pick),
        shape=_arg_shape,
        attrs=REDUCE_ATTRS,
        jvp=lambda primals, tangents, ans, axes, keepdims: None,
        batch=_arg_batch(_name),
        doc=OpDoc(
            f"index of the first {_which} element along the one axis of axes (by real part "
            "for complex x); with axes () the index into x flattened in C order; x must not "
            "be empty",
            ("x",),
            "int64; the shape of x without that axis (as 1 when keepdims); with axes (): a "
            "scalar, or all ones when keepdims",
            {
                "axes": "one axis in 0 .. ndim-1, or () for the flattened array",
                "keepdims": REDUCE_DOCS["keepdims"],
            },
            probe=reduce_probe,
        ),
    )


def _cumsum_shape(x, axis):
    if not 0 <= axis < x.ndim:
        raise ShapeError(f"axis {axis} is out of range")
    return Spec(x.shape, _sum_dtype(x.dtype))


primitive(
    "cumsum",
    impl=lambda x, axis: np.cumsum(x, axis=axis),
    shape=_cumsum_shape,
    attrs={"axis": "int"},
    fresh=True,
    jvp=lambda primals, tangents, ans, axis: (
        None if tangents[0] is None else gnp.cumsum(tangents[0], axis=axis)
    ),
    transpose=lambda ct, x, axis: (gnp.flip(gnp.cumsum(gnp.flip(ct, axis), axis=axis), axis),),
    batch=batch_shift_axes("cumsum"),
    doc=OpDoc(
        "cumulative sum along axis",
        ("x",),
        "the shape of x",
        {"axis": "the axis summed along, in 0 .. ndim-1"},
        probe=lambda dtype: ([Spec((2,), dtype)], {"axis": 0}),
    ),
)


def _argsort_shape(x, axis):
    if not 0 <= axis < x.ndim:
        raise ShapeError(f"axis {axis} is out of range for {x.ndim} dimensions")
    return Spec(x.shape, "int64")


primitive(
    "argsort",
    impl=lambda x, axis: np.argsort(x, axis=axis, kind="stable").astype(np.int64),
    shape=_argsort_shape,
    attrs={"axis": "int"},
    fresh=True,
    jvp=lambda primals, tangents, ans, axis: None,
    batch=batch_shift_axes("argsort"),
    # the complex step orders by the real part (complex data: NumPy's lexicographic order)
    complex_step=lambda args, axis: bind("argsort", gnp.astype(args[0], "float64"), axis=axis),
    doc=OpDoc(
        "the indices that sort x along axis, ascending and stable (equal elements keep their "
        "order; nan last; complex x lexicographically, real part first)",
        ("x",),
        "int64, the shape of x",
        {"axis": "the axis sorted along, in 0 .. ndim-1"},
        probe=lambda dtype: ([Spec((2,), dtype)], {"axis": 0}),
    ),
)
