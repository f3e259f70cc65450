"""Batched values kept symbolic while `transforms.batch` builds a Jacobian's batched pass, and
the `batch_scaled` rules of the ops that exploit them (multiply, add, subtract, einsum).

A Jacobian batches a JVP over the one-hot basis E (row b of E is 1 at flat index b, 0
elsewhere), or a VJP over it. Built naively, that pass multiplies the identity by vectors and
contracts matrices against it: `A @ E` is an (n x n x n) matmul whose result is just A. Here a
batched value may stay `Scaled(base, scale)`, standing for `base * scale`, where `base` is the
basis itself or an ordinary batched value and `scale` an unbatched value that broadcasts into
one row (None: 1). Then
- multiplying by an unbatched value folds it into `scale` (a per-row-sized op, not a
  batch-sized one), so chains of such products cost one batch-sized multiply in the end;
- a contraction of the basis times `scale` with an unbatched operand is that operand with the
  basis axes renamed to the batch axis (the matrix itself, scaled): no product with zeros;
- a sum with the basis adds the scale along the diagonal (a strided slice), in place;
- anything else gets the value built (`materialize`), once, and the op's own batch rule.
"""

from __future__ import annotations

import numpy as np

from .. import dtypes
from .. import numpy as gnp
from ..graph import Spec
from ..tracing import bind
from .indexing import SLICE


class Scaled:
    """The batched value `base * scale` (of `spec`), not built yet; `one_hot`: base is the
    identity basis; `source`: None, or (x, perm) when base is `transpose(x, perm)` of an
    unbatched x (a contraction with the basis), which is then scaled in x's own layout
    (contiguous reads) and transposed after. (Not a tuple: ops with several results return
    tuples.)"""

    __slots__ = ("base", "one_hot", "scale", "source", "spec")

    def __init__(self, base, scale, spec: Spec, one_hot: bool, source=None):
        self.base = base  # a batched Tracer, or None when `source` gives it
        self.scale = scale  # an unbatched Tracer broadcasting into one row, or None (1)
        self.spec = spec
        self.one_hot = one_hot
        self.source = source


def basis(tracer) -> Scaled:
    """The basis input of a batched pass, as a symbolic value."""
    return Scaled(tracer, None, tracer.spec, True)


def materialize(value):
    """A Tracer for `value` (a Scaled or already a Tracer)."""
    if not isinstance(value, Scaled):
        return value
    if value.source is not None:
        return gnp.transpose(_scaled_source(value), value.source[1])
    if value.scale is None:
        return value.base
    return gnp.multiply(value.base, value.scale)


def _scaled_source(value: Scaled):
    """x * scale for a Scaled with a source (x, perm), the scale's axes moved into x's order."""
    x, perm = value.source
    if value.scale is None:
        return x
    row = value.spec.shape[1:]
    scale = value.scale
    if scale.shape != row:
        scale = gnp.broadcast_to(scale, row)
    order = _inverse(perm)
    shape = tuple(((1,) + row)[d] for d in order)
    moved = [d for d in order if d > 0]
    if moved == sorted(moved):  # only the size-1 axis moves: a reshape does it
        scale = gnp.reshape(scale, shape)
    else:
        scale = gnp.transpose(gnp.reshape(scale, (1,) + row), order)
    return gnp.multiply(x, scale)


def _inverse(perm) -> tuple:
    return tuple(int(i) for i in np.argsort(perm))


def _fits_row(spec: Spec, row_shape) -> bool:
    try:
        return np.broadcast_shapes(spec.shape, row_shape) == tuple(row_shape)
    except ValueError:
        return False


def _scaled_product(value: Scaled, other):
    """value * other, other unbatched; None when it does not fold into the scale."""
    row = value.spec.shape[1:]
    if not _fits_row(other.spec, row):
        return None
    scale = other if value.scale is None else gnp.multiply(value.scale, other)
    dtype = dtypes.promote(value.spec.dtype, other.spec.dtype)
    spec = Spec(value.spec.shape, dtype)
    return Scaled(value.base, scale, spec, value.one_hot, value.source)


def _einsum(subscripts, *operands):
    return bind("einsum", *operands, subscripts=subscripts)


def _basis_contraction(value: Scaled, position: int, args, ins, out):
    """The batched einsum of `args` (two operands, `value` at `position`, the other unbatched;
    `ins`, `out` its subscripts) when `value` is the scaled basis: out[b, ...] =
    scale[unflat(b)] * other[... unflat(b) ...], an einsum that keeps the basis axes in front of
    the output, reshaped to one batch axis. None when that does not apply (a basis axis kept
    in the output or taken twice)."""
    basis_sub, other_sub = ins[position], ins[1 - position]
    other = args[1 - position]
    if len(set(basis_sub)) != len(basis_sub) or set(basis_sub) & set(out):
        return None
    if value.scale is None and not set(basis_sub) <= set(other_sub):
        return None  # an axis summed over the basis alone: a sum of ones, left to einsum
    row = value.spec.shape[1:]
    kept = basis_sub + out
    want = dtypes.promote(value.spec.dtype, other.spec.dtype)
    permutes = len(set(other_sub)) == len(other_sub) and set(other_sub) == set(kept)
    if value.scale is None and permutes and len(row) == 1 and other.spec.dtype == want:
        # out[b, ...] = other with its basis axis first: a transpose, kept symbolic
        perm = tuple(other_sub.index(c) for c in kept)
        spec = Spec((value.spec.shape[0],) + tuple(other.shape[i] for i in perm[1:]), want)
        return Scaled(None, None, spec, False, (other, perm))
    if value.scale is None:
        result = _einsum(f"{other_sub}->{kept}", other)
    else:
        scale = value.scale
        if scale.shape != row:
            scale = gnp.broadcast_to(scale, row)
        if permutes:
            # nothing summed: other, its axes in the output's order, times the scale (a
            # product the plan can write into a pooled buffer)
            perm = tuple(other_sub.index(c) for c in kept)
            if perm != tuple(range(len(perm))):
                other = gnp.transpose(other, perm)
            result = gnp.multiply(gnp.reshape(scale, row + (1,) * len(out)), other)
        else:
            result = _einsum(f"{basis_sub},{other_sub}->{kept}", scale, other)
    if result.spec.dtype != want:
        result = gnp.astype(result, want)
    if len(row) != 1:
        result = gnp.reshape(result, (value.spec.shape[0],) + result.shape[len(row) :])
    return result


def _diagonal_sum(dense, value: Scaled, sign: float):
    """dense + sign * value, value the scaled basis: `scale` added at the positions
    (b, unravel(b)), in place into `dense` when the plan can donate it (add_at). dense (a
    Tracer or a Scaled) has size * size elements: the basis has one row per element of a row.
    A dense Scaled with a source gets the diagonal in the source's layout, then transposed."""
    size = value.spec.shape[0]
    row = value.spec.shape[1:]
    want = dtypes.promote(dense.spec.dtype, value.spec.dtype)
    scale = gnp.ones(row, value.spec.dtype) if value.scale is None else value.scale
    if scale.shape != row:
        scale = gnp.broadcast_to(scale, row)
    scale = gnp.reshape(scale, (size,))
    if scale.spec.dtype != want:
        scale = gnp.astype(scale, want)
    if sign < 0:
        scale = gnp.negative(scale)
    perm = None
    if isinstance(dense, Scaled):
        perm = dense.source[1]
        dense = _scaled_source(dense)
        # the positions (b, unravel(b)) of the transposed value, as offsets into its source
        rows = np.arange(size)
        at = (rows, *np.unravel_index(rows, row))
        offsets = np.ravel_multi_index(tuple(at[d] for d in _inverse(perm)), dense.shape)
    else:
        offsets = np.arange(size) * (size + 1)
    if dense.spec.dtype != want:
        dense = gnp.astype(dense, want)
    if size == 0:  # an empty Jacobian: nothing to add, the general rule builds it
        return None
    step = int(offsets[1] - offsets[0]) if size > 1 else 1
    if not np.array_equal(offsets, offsets[0] + step * np.arange(size)) or step <= 0:
        return None
    flat = gnp.reshape(dense, (size * size,))
    diagonal = (SLICE, int(offsets[0]), int(offsets[-1]) + 1, step)
    total = gnp.reshape(bind("add_at", flat, scale, index=diagonal), dense.shape)
    return total if perm is None else gnp.transpose(total, perm)


def _unbatched_side(args, batched):
    """The position of the one batched operand of two, or None."""
    if len(args) != 2 or batched[0] == batched[1]:
        return None
    return batched.index(True)


# ---- the `batch_scaled` rules (engine/primitive.py) ---------------------------------------


def product(args, batched, built):
    """multiply: a batched value times an unbatched one that fits in a row stays symbolic."""
    k = _unbatched_side(args, batched)
    if k is None:
        return None
    value = args[k]
    if not isinstance(value, Scaled):
        value = Scaled(value, None, value.spec, False)
    return _scaled_product(value, args[1 - k])


def sum_with_basis(sign: float):
    """add (sign 1) and subtract (-1): a batched value plus or minus the scaled basis."""

    def rule(args, batched, built):
        if len(args) != 2 or not all(batched) or args[0].spec.shape != args[1].spec.shape:
            return None
        one_hot = [isinstance(a, Scaled) and a.one_hot for a in args]
        if one_hot.count(True) != 1:
            return None
        k = one_hot.index(True)
        dense = args[1 - k]
        if not (isinstance(dense, Scaled) and dense.source is not None):
            dense = built(1 - k)
        total = _diagonal_sum(dense, args[k], sign)
        if total is None or sign > 0 or k == 1:
            return total
        return gnp.negative(total)  # basis - dense = -(dense - basis)

    return rule


def contraction(args, batched, ins, out):
    """einsum (`ins`, `out`: its parsed subscripts): the scaled basis contracted with an
    unbatched operand."""
    k = _unbatched_side(args, batched)
    if k is None or not isinstance(args[k], Scaled) or not args[k].one_hot:
        return None
    return _basis_contraction(args[k], k, args, ins, out)
