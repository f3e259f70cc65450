"""The graph checker: known ops, typed attributes, arity, SSA, topological order, shape and
dtype inference, sizes within limits. Every failure is a GraphError naming the node or field.

Subgraphs are closed: a subgraph (already checked when it was made) sees only its own inputs,
constants and nodes, never a value of the enclosing graph; its names are its own."""

from __future__ import annotations

from . import dtypes
from .errors import GraphError, LimitError
from .primitive import ATTR_KINDS, PRIMITIVES

# NumPy's broadcasting (np.broadcast, np.broadcast_shapes) takes at most 32 dimensions.
MAX_NDIM = 32


def count_nodes(nodes) -> int:
    """Nodes, subgraphs included: a subgraph counts each time a node holds it."""
    from .graph import Graph

    return len(nodes) + sum(
        value.node_count
        for node in nodes
        for value in node.attrs.values()
        if isinstance(value, Graph)
    )


def check_graph(inputs, constants, nodes, outputs, declared, limits, known=None):
    """The avals of the graph's own values and outputs; GraphError (LimitError) on a fault.

    `known`: the specs of the nodes' outputs when the engine itself built the graph (its
    transformations, which ran every shape rule while tracing): those rules are not run
    again; every other check is. Graphs from users or from bytes never pass it."""
    total = count_nodes(nodes)
    if total > limits.max_nodes:
        raise LimitError(
            f"{total} nodes (subgraphs included), over the limit of {limits.max_nodes}",
            "graph.nodes",
        )
    avals = {}
    local = set()

    def define(name, spec, where):
        if not isinstance(name, str) or not name:
            raise GraphError("a value needs a non-empty name", where)
        if len(name) > limits.max_name_length:
            raise GraphError(f"name longer than {limits.max_name_length} characters", where)
        if len(spec.shape) > MAX_NDIM:
            raise GraphError(
                f"value {name!r} has {len(spec.shape)} dimensions, over {MAX_NDIM}", where
            )
        if name in avals:
            raise GraphError(f"value {name!r} is defined twice (each value is defined once)", where)
        if spec.size > limits.max_elements:
            raise LimitError(
                f"value {name!r} has {spec.size} elements, over the limit of {limits.max_elements}",
                where,
            )
        avals[name] = spec
        local.add(name)

    from .graph import Spec

    for i, (name, spec) in enumerate(inputs):
        define(name, spec, f"inputs[{i}] {name!r}")
    for name, value in constants.items():
        where = f"constants[{name!r}]"
        try:
            spec = Spec(value.shape, value.dtype)
        except TypeError as exc:
            raise GraphError(str(exc), where) from None
        define(name, spec, where)

    defined_later = {out for node in nodes for out in node.outputs}
    for i, node in enumerate(nodes):
        where = node.describe(i)
        prim = PRIMITIVES.get(node.op)
        if prim is None:
            raise GraphError(f"unknown op {node.op!r}", where)
        _check_attrs(prim, node.attrs, where)
        low, high = prim.arity
        if len(node.inputs) < low or (high is not None and len(node.inputs) > high):
            want = str(low) if low == high else f"{low} to {high if high is not None else 'any'}"
            raise GraphError(f"takes {want} inputs, got {len(node.inputs)}", where)
        for name in node.inputs:
            if name not in avals:
                why = (
                    "is used before it is defined (nodes must be in topological order)"
                    if name in defined_later
                    else "is not defined"
                )
                raise GraphError(f"input {name!r} {why}", where)
        if known is not None:
            outs = tuple(known[n] for n in node.outputs)
            for name, spec in zip(node.outputs, outs):
                define(name, spec, where)
            continue
        try:
            out = prim.shape(*[avals[n] for n in node.inputs], **node.attrs)
        except (ValueError, TypeError, IndexError, RuntimeError) as exc:  # NumPy's, on odd shapes
            raise GraphError(str(exc), where) from None
        outs = out if isinstance(out, tuple) else (out,)
        if not outs:
            raise GraphError("gives no value (a node gives at least one)", where)
        if len(node.outputs) != len(outs):
            raise GraphError(f"has {len(node.outputs)} outputs, the op gives {len(outs)}", where)
        for name, spec in zip(node.outputs, outs):
            define(name, spec, where)

    for i, name in enumerate(outputs):
        if name not in avals:
            raise GraphError(f"output {name!r} is not defined", f"outputs[{i}]")
    if declared is not None:
        if len(declared) != len(outputs):
            raise GraphError("declared output count differs", "outputs")
        for i, (name, spec) in enumerate(zip(outputs, declared)):
            if avals[name] != spec:
                raise GraphError(
                    f"declared {spec} but the graph computes {avals[name]}",
                    f"outputs[{i}] {name!r}",
                )
    return {name: avals[name] for name in local | set(outputs)}


def _check_attrs(prim, attrs, where):
    if set(attrs) != set(prim.attrs):
        missing = sorted(set(prim.attrs) - set(attrs))
        extra = sorted(set(attrs) - set(prim.attrs))
        raise GraphError(f"attributes: missing {missing}, unexpected {extra}", where)
    for name, kind in prim.attrs.items():
        if kind == "dtype" and isinstance(attrs[name], str):
            try:
                dtypes.wire_name(attrs[name])
            except TypeError as exc:
                raise GraphError(f"attribute {name!r}: {exc}", where) from None
        if not ATTR_KINDS[kind](attrs[name]):
            raise GraphError(
                f"attribute {name!r} must be {kind}, got {type(attrs[name]).__name__}", where
            )
