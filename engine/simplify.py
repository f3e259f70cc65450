"""Algebraic simplification while a graph is built, so that derivative graphs do not multiply
by ones or add zeros. Values known to hold one number everywhere ("splats": the outputs of ops
with a `splat` rule, small uniform constants, and what `splat_preserving` ops make of them) are
tracked by name. The algebra itself is each op's `simplify` rule (engine/primitive.py)."""

from __future__ import annotations

import math

import numpy as np

from . import dtypes
from . import numpy as gnp
from .graph import Spec
from .primitive import PRIMITIVES


def splat_of_constant(array: np.ndarray):
    if array.size == 0 or array.size > 16 or array.dtype.kind not in "fiu":
        return None
    first = array.flat[0]
    return float(first) if np.all(array == first) else None


def unbroadcast_operands(builder, prim, args, out_spec):
    """An elementwise op broadcasts by itself: an operand made by a `pure_broadcast` op can be
    replaced by its source when another operand already has the output's shape."""
    if not prim.elementwise or len(args) < 2:
        return args
    shape = out_spec.shape
    if not any(a.spec.shape == shape for a in args):
        return args
    out = []
    replaced = False
    for a in args:
        node = builder.producer.get(a.name)
        if node is not None and PRIMITIVES[node.op].pure_broadcast:
            a = builder.tracer(node.inputs[0])
            replaced = True
        out.append(a)
    if not replaced:
        return args
    try:
        if np.broadcast_shapes(*[a.spec.shape for a in out]) == shape:
            return out
    except ValueError:
        pass
    return args


def simplify(builder, prim, args, attrs, out_spec):
    """A Tracer equal to `prim(*args)`, when one exists without a new node (or with one node
    instead of two); else None."""
    if prim.simplify is None:
        return None
    splats = [builder.splats.get(a.name) for a in args]
    result = prim.simplify(args, splats, out_spec, **attrs)
    if isinstance(result, (int, float)):
        return builder.splat(out_spec, result)
    if result is None and prim.scale_factor is not None:
        return fold_scales(builder, prim.scale_factor(args, splats), args, out_spec)
    return result


def _power_of_two(number: float) -> bool:
    return number != 0 and math.frexp(abs(number))[0] == 0.5


def fold_scales(builder, outer, args, out_spec):
    """c1 * (c2 * z), c1 and c2 numbers (a product with a splat, or a negation), as one
    product (c1 * c2) * z: derivative graphs are full of them (the 2 of x**2's derivative times
    a 100 in the function, a negation of a negation). Only where c1 * c2 is exact (one of them
    a power of two), so the result is the same to the last bit (unless c2 * z alone overflows
    or underflows: then the fold is the more accurate); None where it does not apply."""
    if outer is None or not dtypes.is_differentiable(out_spec.dtype):
        return None
    c1, i = outer
    node = builder.producer.get(args[i].name)
    rule = None if node is None else PRIMITIVES[node.op].scale_factor
    inner = (
        None
        if rule is None
        else rule(
            [builder.tracer(n) for n in node.inputs], [builder.splats.get(n) for n in node.inputs]
        )
    )
    if inner is None:
        return None
    c2, j = inner
    z = builder.tracer(node.inputs[j])
    if z.spec != out_spec or not (_power_of_two(c1) or _power_of_two(c2)):
        return None
    c = c1 * c2
    if c == 1:
        return z
    if c == -1:
        return gnp.negative(z)
    return gnp.multiply(z, builder.splat(Spec((), out_spec.dtype), c))


def propagate(builder, prim, args, attrs, out):
    """Record the output of a splat-preserving op on a splat, or of a `splat` op, as a splat."""
    if prim.splat_preserving and args and args[0].name in builder.splats:
        builder.splats[out.name] = builder.splats[args[0].name]
    elif prim.splat is not None:
        value = prim.splat(**attrs)
        if value is not None:
            builder.splats[out.name] = value
