"""Algebraic simplification while a graph is built, so that derivative graphs do not multiply
by ones or add zeros. Values known to hold one number everywhere ("splats": the outputs of ops
with a `splat` rule, small uniform constants, and what `splat_preserving` ops make of them) are
tracked by name. The algebra itself is each op's `simplify` rule (engine/primitive.py)."""

from __future__ import annotations

import numpy as np

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
    """A Tracer equal to `prim(*args)`, when one exists without a new node; else None."""
    if prim.simplify is None:
        return None
    result = prim.simplify(args, [builder.splats.get(a.name) for a in args], out_spec, **attrs)
    if isinstance(result, (int, float)):
        return builder.splat(out_spec, result)
    return result


def propagate(builder, prim, args, attrs, out):
    """Record the output of a splat-preserving op on a splat, or of a `splat` op, as a splat."""
    if prim.splat_preserving and args and args[0].name in builder.splats:
        builder.splats[out.name] = builder.splats[args[0].name]
    elif prim.splat is not None:
        value = prim.splat(**attrs)
        if value is not None:
            builder.splats[out.name] = value
