"""Ops that move data without arithmetic: reshape, transpose, broadcast_to, flip,
concatenate, and `full` (a filled array, so large zeros need not travel as constants)."""

import operator

import numpy as np

from .. import dtypes
from .. import numpy as gnp
from ..graph import Spec
from ..primitive import Linear, OpDoc, ShapeError, primitive
from ..tracing import bind
from .common import batch_shift_axes, normalize_axes, unbroadcast


def _linear_jvp(name):
    """The JVP of an op linear in its first input: the op itself, applied to the tangent."""

    def jvp(primals, tangents, ans, **attrs):
        t = tangents[0]
        return None if t is None else bind(name, t, *primals[1:], **attrs)

    return jvp


def _reshape_shape(x, shape):
    if any(d < 0 for d in shape):
        raise ShapeError(f"negative dimension in {shape}")
    if Spec(shape).size != x.size:
        raise ShapeError(f"cannot reshape {x.shape} ({x.size} elements) to {shape}")
    return Spec(shape, x.dtype)


primitive(
    "reshape",
    # the method where it can: np.reshape's dispatch costs more than a small reshape itself
    impl=lambda x, shape: x.reshape(shape) if type(x) is np.ndarray else np.reshape(x, shape),
    kernel=lambda x, shape: operator.methodcaller("reshape", shape),  # np.reshape's own call
    shape=_reshape_shape,
    attrs={"shape": "ints"},
    view=True,
    splat_preserving=True,
    jvp=_linear_jvp("reshape"),
    transpose=lambda ct, x, shape: (gnp.reshape(ct, x.shape),),
    batch=lambda args, batched, shape: gnp.reshape(args[0], args[0].shape[:1] + shape),
    doc=OpDoc(
        "the elements of x, in C order, in a new shape",
        ("x",),
        "`shape`, of the dtype of x",
        {"shape": "the new shape: no negative (no -1) dimension, as many elements as x"},
        probe=lambda dtype: ([Spec((2,), dtype)], {"shape": (2, 1)}),
    ),
)


def _transpose_shape(x, perm):
    if sorted(perm) != list(range(x.ndim)):
        raise ShapeError(f"{perm} is not a permutation of {x.ndim} axes")
    return Spec(tuple(x.shape[p] for p in perm), x.dtype)


primitive(
    "transpose",
    impl=lambda x, perm: x.transpose(perm) if type(x) is np.ndarray else np.transpose(x, perm),
    shape=_transpose_shape,
    attrs={"perm": "ints"},
    view=True,
    splat_preserving=True,
    jvp=_linear_jvp("transpose"),
    transpose=lambda ct, x, perm: (gnp.transpose(ct, tuple(np.argsort(perm).tolist())),),
    batch=lambda args, batched, perm: gnp.transpose(args[0], (0,) + tuple(p + 1 for p in perm)),
    doc=OpDoc(
        "x with its axes permuted",
        ("x",),
        "axis i of the result is axis perm[i] of x",
        {"perm": "a permutation of 0 .. ndim-1"},
        probe=lambda dtype: ([Spec((2, 1), dtype)], {"perm": (1, 0)}),
    ),
)


def _broadcast_shape(x, shape):
    try:
        if np.broadcast_shapes(x.shape, shape) != tuple(shape):
            raise ValueError
    except ValueError:
        raise ShapeError(f"cannot broadcast {x.shape} to {shape}") from None
    return Spec(shape, x.dtype)


def _broadcast_batch(args, batched, shape):
    x = args[0]
    lead = len(shape) - (x.ndim - 1)
    x = gnp.reshape(x, x.shape[:1] + (1,) * lead + x.shape[1:])
    return gnp.broadcast_to(x, x.shape[:1] + shape)


primitive(
    "broadcast_to",
    impl=lambda x, shape: np.broadcast_to(x, shape),
    shape=_broadcast_shape,
    attrs={"shape": "ints"},
    view=True,
    splat_preserving=True,
    pure_broadcast=True,
    jvp=_linear_jvp("broadcast_to"),
    transpose=lambda ct, x, shape: (unbroadcast(ct, x.spec),),
    batch=_broadcast_batch,
    doc=OpDoc(
        "x broadcast to a shape (NumPy's rules: x's shape, aligned on the right, has each "
        "dimension equal to the target's or 1)",
        ("x",),
        "`shape`, of the dtype of x",
        {"shape": "the target shape; x's shape must broadcast to exactly it"},
        probe=lambda dtype: ([Spec((1,), dtype)], {"shape": (2, 2)}),
    ),
)


def _flip_shape(x, axes):
    normalize_axes(axes, x.ndim)
    return x


primitive(
    "flip",
    impl=lambda x, axes: np.flip(x, axes),
    shape=_flip_shape,
    attrs={"axes": "ints"},
    view=True,
    splat_preserving=True,
    jvp=_linear_jvp("flip"),
    transpose=lambda ct, x, axes: (gnp.flip(ct, axes),),
    batch=batch_shift_axes("flip"),
    doc=OpDoc(
        "x with the order of its elements reversed along axes",
        ("x",),
        "the shape and dtype of x",
        {"axes": "distinct axes, each in -ndim .. ndim-1 (negative counts from the end)"},
        probe=lambda dtype: ([Spec((2,), dtype)], {"axes": (0,)}),
    ),
)


def _concatenate_shape(*xs, axis):
    first = xs[0]
    if not 0 <= axis < first.ndim:
        raise ShapeError(f"axis {axis} is out of range for {first.ndim} dimensions")
    for x in xs[1:]:
        if x.ndim != first.ndim or any(
            a != b for i, (a, b) in enumerate(zip(x.shape, first.shape)) if i != axis
        ):
            raise ShapeError(f"cannot concatenate {first.shape} and {x.shape} along axis {axis}")
    shape = list(first.shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    return Spec(tuple(shape), dtypes.promote(*[x.dtype for x in xs]))


def _concatenate_jvp(primals, tangents, ans, axis):
    if all(t is None for t in tangents):
        return None
    parts = [gnp.zeros(p.shape, ans.dtype) if t is None else t for p, t in zip(primals, tangents)]
    return gnp.concatenate(parts, axis=axis)


def _concatenate_transpose(ct, *xs, axis):
    out, start = [], 0
    for x in xs:
        stop = start + x.shape[axis]
        if isinstance(x, Linear):
            part = ct[(slice(None),) * axis + (slice(start, stop),)]
            out.append(gnp.astype(part, x.dtype) if part.dtype != np.dtype(x.dtype) else part)
        else:
            out.append(None)
        start = stop
    return tuple(out)


def _concatenate_batch(args, batched, axis):
    size = next(a.shape[0] for a, b in zip(args, batched) if b)
    args = [a if b else gnp.broadcast_to(a, (size,) + a.shape) for a, b in zip(args, batched)]
    return gnp.concatenate(args, axis=axis + 1)


primitive(
    "concatenate",
    impl=lambda *xs, axis: np.concatenate(xs, axis=axis),
    shape=_concatenate_shape,
    arity=(1, None),
    attrs={"axis": "int"},
    fresh=True,
    jvp=_concatenate_jvp,
    transpose=_concatenate_transpose,
    batch=_concatenate_batch,
    doc=OpDoc(
        "the operands joined along an axis",
        ("*xs",),
        "the shape of the operands (which agree but along axis) with the sizes along axis "
        "added; the dtype they promote to",
        {"axis": "the axis joined along, in 0 .. ndim-1"},
        probe=lambda dtype: ([Spec((2,), dtype)] * 2, {"axis": 0}),
    ),
)


def _full_shape(shape, dtype, value):
    if any(d < 0 for d in shape):
        raise ShapeError(f"negative dimension in {shape}")
    return Spec(shape, dtype)


primitive(
    "full",
    impl=lambda shape, dtype, value: np.full(shape, value, dtype),
    shape=_full_shape,
    arity=0,
    attrs={"shape": "ints", "dtype": "dtype", "value": "float"},
    constant=True,
    fresh=True,
    splat=lambda shape, dtype, value: value,
    jvp=lambda primals, tangents, ans, **attrs: None,
    doc=OpDoc(
        "an array filled with one number (so that large fills need not travel as constants)",
        (),
        "`shape`, of dtype `dtype`",
        {
            "shape": "the result's shape, no negative dimension",
            "dtype": "the result's dtype, one of the six names",
            "value": "the number, converted to dtype as NumPy's full does (for example "
            "1.0 to true)",
        },
    ),
)
