"""Algebraic simplification while a graph is built, so that derivative graphs do not multiply
by ones or add zeros. Values known to hold one number everywhere ("splats": `full`, small
uniform constants, and their broadcasts, reshapes and conversions) are tracked by name."""

from __future__ import annotations

import numpy as np

SPLAT_PRESERVING = ("broadcast_to", "reshape", "transpose", "flip")


def splat_of_constant(array: np.ndarray):
    if array.size == 0 or array.size > 16 or array.dtype.kind not in "fiu":
        return None
    first = array.flat[0]
    return float(first) if np.all(array == first) else None


def unbroadcast_operands(builder, prim, args, out_spec):
    """An elementwise op broadcasts by itself: an operand made by broadcast_to can be replaced
    by its source when another operand already has the output's shape."""
    if not prim.elementwise or len(args) < 2 or not any(a.shape == out_spec.shape for a in args):
        return args
    out = []
    for a in args:
        node = builder.producer.get(a.name)
        if node is not None and node.op == "broadcast_to":
            a = builder.tracer(node.inputs[0])
        out.append(a)
    try:
        if np.broadcast_shapes(*[a.shape for a in out]) == out_spec.shape:
            return out
    except ValueError:
        pass
    return args


def simplify(builder, op, args, attrs, out_spec):
    """A Tracer equal to `op(*args)`, when one exists without a new node; else None."""
    s = [builder.splats.get(a.name) for a in args]
    if op == "multiply":
        for i in (0, 1):
            if s[i] == 1.0 and args[1 - i].spec == out_spec:
                return args[1 - i]
        if s[0] is not None and s[1] is not None:
            return builder.splat(out_spec, s[0] * s[1])
    elif op == "add":
        for i in (0, 1):
            if s[i] == 0.0 and args[1 - i].spec == out_spec:
                return args[1 - i]
    elif op == "subtract":
        if s[1] == 0.0 and args[0].spec == out_spec:
            return args[0]
    elif op == "negative" and s[0] is not None:
        return builder.splat(out_spec, -s[0])
    return None


def propagate(builder, op, args, attrs, out):
    """Record the output of a shape op on a splat as a splat."""
    if op in SPLAT_PRESERVING and args and args[0].name in builder.splats:
        builder.splats[out.name] = builder.splats[args[0].name]
    elif op == "full":
        builder.splats[out.name] = attrs["value"]
