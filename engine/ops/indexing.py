"""Indexing: `getitem` (slices, integers, newaxis, integer arrays) and its transpose
`scatter_add` (repeated indices accumulate).

The index is the `index` attribute, four ints per entry:
  (0, start, stop, step) a slice (stop < 0 means "to the beginning", for negative steps),
  (1, i, 0, 0) an integer, (2, 0, 0, 0) a new axis, (3, k, 0, 0) the k-th index-array input.
The front end normalizes: no Ellipsis, every axis of x consumed, integers non-negative, and
when arrays are present integers travel as 0-d arrays (NumPy treats them alike then).
"""

import functools

import numpy as np

from .. import numpy as gnp
from ..graph import Spec
from ..primitive import OpDoc, ShapeError, primitive
from ..tracing import bind

SLICE, INT, NEWAXIS, ARRAY = 0, 1, 2, 3
INDEX_DOC = (
    "four ints per entry, the entries in order: (0, start, stop, step) a slice, "
    "0 <= start <= n, -1 <= stop <= n (-1: no stop, to the end or, with a negative step, to "
    "the beginning), step not 0; (1, i, 0, 0) an integer 0 <= i < n, which drops the axis; "
    "(2, 0, 0, 0) a new axis of size 1; (3, k, 0, 0) the k-th index-array operand (k = 0, 1, "
    "... in the order the entries name them; int32 or int64 arrays, broadcast together, "
    "placed as NumPy places advanced indices). Every axis of x is consumed by exactly one "
    "entry that is not a new axis; n is the size of that axis"
)


def entries(index):
    """The (code, a, b, c) entries of an index attribute (parsed once per index)."""
    return _entries(tuple(index))


@functools.lru_cache(maxsize=4096)
def _entries(index):
    return tuple(tuple(index[i : i + 4]) for i in range(0, len(index), 4))


def index_tuple(index, arrays):
    out = []
    for code, a, b, c in entries(index):
        if code == SLICE:
            out.append(slice(a, None if b < 0 else b, c))
        elif code == INT:
            out.append(a)
        elif code == NEWAXIS:
            out.append(None)
        else:
            out.append(arrays[a])
    return tuple(out)


def _check_index(x, index, arrays):
    if len(index) % 4:
        raise ShapeError("index attribute must hold four ints per entry")
    consumed = 0
    array_count = 0
    for code, a, b, c in entries(index):
        if code == SLICE:
            n = x.shape[consumed] if consumed < x.ndim else None
            if n is None or c == 0 or not (0 <= a <= n and -1 <= b <= n):
                raise ShapeError(f"bad slice ({a}, {b}, {c}) for axis {consumed}")
            consumed += 1
        elif code == INT:
            if consumed >= x.ndim or not 0 <= a < x.shape[consumed]:
                raise ShapeError(f"integer index {a} is out of range for axis {consumed}")
            consumed += 1
        elif code == ARRAY:
            if a != array_count:
                raise ShapeError("index arrays must be referenced in order")
            array_count += 1
            consumed += 1
        elif code != NEWAXIS:
            raise ShapeError(f"unknown index entry kind {code}")
    if consumed != x.ndim:
        raise ShapeError(f"index consumes {consumed} axes of a {x.ndim}-d array")
    if array_count != len(arrays):
        raise ShapeError(f"index names {array_count} arrays, node has {len(arrays)}")
    for spec in arrays:
        if spec.dtype not in ("int32", "int64"):
            raise ShapeError(f"index arrays must be integers, got {spec.dtype}")


def _indexed_shape(shape, index, arrays):
    """NumPy's own result shape, computed on a zero-byte stand-in (nothing is allocated)."""
    stand_in = np.zeros(shape, dtype=np.dtype([]))
    fake = [np.zeros(a.shape, np.intp) for a in arrays]
    return stand_in[index_tuple(index, fake)].shape


def _getitem_shape(x, *arrays, index):
    _check_index(x, index, arrays)
    return Spec(_indexed_shape(x.shape, index, arrays), x.dtype)


def _out_of_bounds(exc):
    """Index arrays are arguments: a value out of bounds is the caller's ValueError (the
    server's INVALID_ARGUMENT), not NumPy's IndexError."""
    return ValueError(f"an index array holds an index out of bounds: {exc}")


def _getitem_impl(x, *arrays, index):
    try:
        return x[index_tuple(index, arrays)]
    except IndexError as exc:
        raise _out_of_bounds(exc) from None


def _scatter_add_shape(updates, *arrays, shape, index):
    target = Spec(shape, updates.dtype)
    _check_index(target, index, arrays)
    want = _indexed_shape(shape, index, arrays)
    if want != updates.shape:
        raise ShapeError(f"updates have shape {updates.shape}, the index selects {want}")
    return target


def _scatter_add_impl(updates, *arrays, shape, index):
    # not np.zeros: calloc maps fresh zero pages for a large array, faulted in on every call;
    # malloc reuses the memory freed by the previous call
    out = np.empty(shape, updates.dtype)
    out.fill(0)
    key = index_tuple(index, arrays)
    try:
        if arrays:
            np.add.at(out, key, updates)
        else:
            out[key] = updates
    except IndexError as exc:
        raise _out_of_bounds(exc) from None
    return out


def _batch_axis(index):
    """Where NumPy puts a leading full slice's axis: in front, unless the index arrays are
    separated (then the broadcast index dimensions come first)."""
    codes = [e[0] for e in entries(index)]
    positions = [i for i, c in enumerate(codes) if c == ARRAY]
    return bool(positions) and positions[-1] - positions[0] + 1 != len(positions)


def _batched_index(index, size):
    return (SLICE, 0, size, 1) + tuple(index)


def _getitem_batch_arrays(args, batched, index):
    """Batched index arrays: the batch axis becomes one more index array (arange(size), in
    front), broadcast against the others; the result is moved back to NumPy's layout of the
    unbatched index with the batch axis first."""
    x, *arrays = args
    size = next(a.shape[0] for a, b in zip(args, batched) if b)
    if not batched[0]:
        x = gnp.broadcast_to(x, (size,) + x.shape)
    shapes = [a.shape[1:] if b else a.shape for a, b in zip(arrays, batched[1:])]
    rank = len(np.broadcast_shapes(*shapes))
    aligned = [
        gnp.reshape(a, (size,) + (1,) * (rank - a.ndim + 1) + a.shape[1:]) if b else a
        for a, b in zip(arrays, batched[1:])
    ]
    lead = np.arange(size, dtype=np.int64).reshape((size,) + (1,) * rank)
    shifted = []
    for code, a, b, c in entries(index):
        shifted += [code, a + 1 if code == ARRAY else a, b, c]
    out = gnp_getitem(x, [lead, *aligned], (ARRAY, 0, 0, 0) + tuple(shifted))
    # the index arrays' axes come first now (the batch array is apart from the others when
    # they do not start the index); unbatched, NumPy put them where the adjacent arrays were
    codes = [e[0] for e in entries(index)]
    advanced = [i for i, c in enumerate(codes) if c in (ARRAY, INT)]
    if advanced[-1] - advanced[0] + 1 == len(advanced) and advanced[0] > 0:
        before = sum(1 for c in codes[: advanced[0]] if c in (SLICE, NEWAXIS))
        perm = [0, *range(1 + rank, 1 + rank + before), *range(1, 1 + rank)]
        perm += range(1 + rank + before, out.ndim)
        out = gnp.transpose(out, tuple(perm))
    return out


def _getitem_batch(args, batched, index):
    if any(batched[1:]):
        return _getitem_batch_arrays(args, batched, index)
    x, *arrays = args
    out = gnp_getitem(x, arrays, _batched_index(index, x.shape[0]))
    if _batch_axis(index):
        at = len(np.broadcast_shapes(*[a.shape for a in arrays]))
        out = gnp.moveaxis(out, at, 0)
    return out


def _scatter_add_batch(args, batched, shape, index):
    updates, *arrays = args
    if _batch_axis(index):
        at = len(np.broadcast_shapes(*[a.shape for a in arrays]))
        updates = gnp.moveaxis(updates, 0, at)
    size = args[0].shape[0]
    return bind(
        "scatter_add",
        updates,
        *arrays,
        shape=(size,) + tuple(shape),
        index=_batched_index(index, size),
    )


def gnp_getitem(x, arrays, index):
    return bind("getitem", x, *arrays, index=tuple(index))


primitive(
    "getitem",
    impl=_getitem_impl,
    shape=_getitem_shape,
    arity=(1, None),
    attrs={"index": "ints"},
    view=True,  # basic indexing is a view; treated so always
    jvp=lambda primals, tangents, ans, index: (
        None if tangents[0] is None else gnp_getitem(tangents[0], primals[1:], index)
    ),
    transpose=lambda ct, x, *arrays, index: (
        (bind("scatter_add", ct, *arrays, shape=x.shape, index=index),) + (None,) * len(arrays)
    ),
    batch=_getitem_batch,
    doc=OpDoc(
        "NumPy indexing x[index]: slices, integers, new axes and integer index arrays",
        ("x", "*index_arrays"),
        "NumPy's result shape for that index; the dtype of x",
        {"index": INDEX_DOC},
        probe=lambda dtype: ([Spec((2,), dtype)], {"index": (SLICE, 0, 1, 1)}),
    ),
)

primitive(
    "scatter_add",
    impl=_scatter_add_impl,
    shape=_scatter_add_shape,
    arity=(1, None),
    attrs={"shape": "ints", "index": "ints"},
    fresh=True,
    add_into=lambda total, updates, *arrays, shape, index: bind(
        "add_at", total, updates, *arrays, index=index
    ),
    jvp=lambda primals, tangents, ans, shape, index: (
        None
        if tangents[0] is None
        else bind("scatter_add", tangents[0], *primals[1:], shape=shape, index=index)
    ),
    transpose=lambda ct, updates, *arrays, shape, index: (
        (gnp_getitem(ct, arrays, index),) + (None,) * len(arrays)
    ),
    batch=_scatter_add_batch,
    doc=OpDoc(
        "zeros of a shape with updates added at [index] (repeated index-array entries "
        "accumulate): the transpose of getitem",
        ("updates", "*index_arrays"),
        "`shape`, of the dtype of updates; updates must have the shape the index selects",
        {
            "shape": "the result's shape",
            "index": "as for getitem, applied to an array of `shape`",
        },
        role="derivative",
        probe=lambda dtype: ([Spec((1,), dtype)], {"shape": (2,), "index": (SLICE, 0, 1, 1)}),
    ),
)


# base + scatter_add(updates): reverse mode accumulates the cotangents of several slices of
# one array with this, into one buffer, instead of a zeroed array per slice and an add.
def _add_at_shape(base, updates, *arrays, index):
    if updates.dtype != base.dtype:
        raise ShapeError(f"updates of {updates.dtype} cannot accumulate into {base.dtype}")
    _check_index(base, index, arrays)
    want = _indexed_shape(base.shape, index, arrays)
    if want != updates.shape:
        raise ShapeError(f"updates have shape {updates.shape}, the index selects {want}")
    return base


def _add_at_inplace(base, updates, *arrays, index):
    if not isinstance(base, np.ndarray):  # a ufunc's 0-d result is a NumPy scalar
        base = np.array(base)
    key = index_tuple(index, arrays)
    try:
        if arrays:
            np.add.at(base, key, updates)
        else:
            base[key] += updates
    except IndexError as exc:
        raise _out_of_bounds(exc) from None
    return base


def _add_at_jvp(primals, tangents, ans, index):
    base, _updates, *arrays = primals
    t_base, t_updates = tangents[:2]
    if t_updates is None:
        return t_base
    if t_base is None:
        return bind("scatter_add", t_updates, *arrays, shape=base.shape, index=index)
    return bind("add_at", t_base, t_updates, *arrays, index=index)


def _add_at_transpose(ct, base, updates, *arrays, index):
    from ..primitive import Linear

    return (
        ct if isinstance(base, Linear) else None,
        gnp_getitem(ct, arrays, index) if isinstance(updates, Linear) else None,
    ) + (None,) * len(arrays)


def _add_at_batch(args, batched, index):
    base, updates, *arrays = args
    size = base.shape[0] if batched[0] else updates.shape[0]
    if not batched[0]:
        base = gnp.broadcast_to(base, (size,) + base.shape)
    if not batched[1]:
        updates = gnp.broadcast_to(updates, (size,) + updates.shape)
    if _batch_axis(index):
        updates = gnp.moveaxis(updates, 0, len(np.broadcast_shapes(*[a.shape for a in arrays])))
    return bind("add_at", base, updates, *arrays, index=_batched_index(index, size))


primitive(
    "add_at",
    impl=lambda base, *rest, index: _add_at_inplace(base.copy(), *rest, index=index),
    inplace=_add_at_inplace,
    shape=_add_at_shape,
    arity=(2, None),
    attrs={"index": "ints"},
    fresh=True,
    jvp=_add_at_jvp,
    transpose=_add_at_transpose,
    batch=_add_at_batch,
    doc=OpDoc(
        "base with updates added at [index] (repeated index-array entries accumulate)",
        ("base", "updates", "*index_arrays"),
        "the shape and dtype of base; updates must have base's dtype and the shape the index "
        "selects",
        {"index": "as for getitem, applied to base"},
        role="derivative",
        probe=lambda dtype: (
            [Spec((2,), dtype), Spec((1,), dtype)],
            {"index": (SLICE, 0, 1, 1)},
        ),
    ),
)
