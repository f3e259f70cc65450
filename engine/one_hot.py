"""Batched values kept symbolic while `transforms.batch` builds a Jacobian's batched pass.

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
- anything else gets the value built (`materialize`), once, and the op's own batch rule.
"""

from __future__ import annotations

import numpy as np

from . import dtypes
from . import numpy as gnp
from .graph import Spec
from .ops.contraction import einsum, parse
from .ops.indexing import ARRAY
from .tracing import bind


class Scaled:
    """The batched value `base * scale` (of `spec`), not built yet; `one_hot`: base is the
    identity basis. (Not a tuple: ops with several results return tuples.)"""

    __slots__ = ("base", "one_hot", "scale", "spec")

    def __init__(self, base, scale, spec: Spec, one_hot: bool):
        self.base = base  # a batched Tracer
        self.scale = scale  # an unbatched Tracer broadcasting into one row, or None (1)
        self.spec = spec
        self.one_hot = one_hot


def basis(tracer) -> Scaled:
    """The basis input of a batched pass, as a symbolic value."""
    return Scaled(tracer, None, tracer.spec, True)


def materialize(value):
    """A Tracer for `value` (a Scaled or already a Tracer)."""
    if not isinstance(value, Scaled):
        return value
    if value.scale is None:
        return value.base
    return gnp.multiply(value.base, value.scale)


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
    return Scaled(value.base, scale, Spec(value.spec.shape, dtype), value.one_hot)


def _basis_contraction(value: Scaled, position: int, args, subscripts):
    """The batched einsum of `args` (two operands, `value` at `position`, the other unbatched)
    when `value` is the scaled basis: out[b, ...] = scale[unflat(b)] * other[... unflat(b) ...],
    an einsum that keeps the basis axes in front of the output, reshaped to one batch axis.
    None when that does not apply (a basis axis kept in the output or taken twice)."""
    ins, out = parse(subscripts)
    basis_sub, other_sub = ins[position], ins[1 - position]
    other = args[1 - position]
    if len(set(basis_sub)) != len(basis_sub) or set(basis_sub) & set(out):
        return None
    if value.scale is None and not set(basis_sub) <= set(other_sub):
        return None  # an axis summed over the basis alone: a sum of ones, left to einsum
    row = value.spec.shape[1:]
    if value.scale is None:
        result = einsum(f"{other_sub}->{basis_sub}{out}", other)
    else:
        scale = value.scale
        if scale.shape != row:
            scale = gnp.broadcast_to(scale, row)
        result = einsum(f"{basis_sub},{other_sub}->{basis_sub}{out}", scale, other)
    want = dtypes.promote(value.spec.dtype, other.spec.dtype)
    if result.spec.dtype != want:
        result = gnp.astype(result, want)
    if len(row) != 1:
        result = gnp.reshape(result, (value.spec.shape[0],) + result.shape[len(row) :])
    return result


def _diagonal_sum(dense, value: Scaled, sign: float):
    """dense + sign * value, value the scaled basis: `scale` added at the positions
    (b, unravel(b)), in place into `dense` when the plan can donate it (add_at)."""
    size = value.spec.shape[0]
    row = value.spec.shape[1:]
    scale = gnp.ones(row, value.spec.dtype) if value.scale is None else value.scale
    if scale.shape != row:
        scale = gnp.broadcast_to(scale, row)
    want = dtypes.promote(dense.spec.dtype, value.spec.dtype)
    if dense.spec.dtype != want:
        dense = gnp.astype(dense, want)
    scale = gnp.reshape(scale, (size,))
    if scale.spec.dtype != want:
        scale = gnp.astype(scale, want)
    if sign < 0:
        scale = gnp.negative(scale)
    rows = np.arange(size)
    positions = (rows, *np.unravel_index(rows, row)) if row else (rows,)
    index = tuple(x for k in range(len(positions)) for x in (ARRAY, k, 0, 0))
    return bind("add_at", dense, scale, *positions, index=index)


def apply(op: str, args, batched, attrs, built):
    """The batched output of `op` on `args` when a Scaled operand lets it skip the batch rule
    (a Scaled or a Tracer); None otherwise. `built(k)`: operand k as a Tracer (built once)."""
    if len(args) != 2:
        return None
    if op in ("add", "subtract") and all(batched):
        one_hot = [isinstance(a, Scaled) and a.one_hot for a in args]
        if one_hot.count(True) != 1 or args[0].spec.shape != args[1].spec.shape:
            return None
        k = one_hot.index(True)
        if op == "add":
            return _diagonal_sum(built(1 - k), args[k], 1.0)
        difference = _diagonal_sum(built(1 - k), args[k], -1.0)  # dense - basis part
        return difference if k == 1 else gnp.negative(difference)
    if all(batched):
        return None
    k = batched.index(True)
    if op == "multiply" and not isinstance(args[k], Scaled):  # a batched value: scaled lazily
        args = list(args)
        args[k] = Scaled(args[k], None, args[k].spec, False)
    if not isinstance(args[k], Scaled):
        return None
    value, other = args[k], args[1 - k]
    if op == "multiply":
        return _scaled_product(value, other)
    if op == "einsum" and value.one_hot:
        return _basis_contraction(value, k, args, attrs["subscripts"])
    return None
