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

    total = len(nodes)
    for node in nodes:
        if node.attrs:
            for value in node.attrs.values():
                if isinstance(value, Graph):
                    total += value.node_count
    return total


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

    def define(name, spec, where):
        """`where`: the place, or a node's index to name it by (formatted on a fault only)."""
        if not isinstance(name, str) or not name:
            raise GraphError("a value needs a non-empty name", _place(where))
        if len(name) > limits.max_name_length:
            raise GraphError(f"name longer than {limits.max_name_length} characters", _place(where))
        if len(spec.shape) > MAX_NDIM:
            raise GraphError(
                f"value {name!r} has {len(spec.shape)} dimensions, over {MAX_NDIM}", _place(where)
            )
        if name in avals:
            raise GraphError(
                f"value {name!r} is defined twice (each value is defined once)", _place(where)
            )
        if spec.size > limits.max_elements:
            raise LimitError(
                f"value {name!r} has {spec.size} elements, over the limit of {limits.max_elements}",
                _place(where),
            )
        avals[name] = spec

    def _place(where):
        return nodes[where].describe(where) if isinstance(where, int) else where

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

    for i, node in enumerate(nodes):
        prim = PRIMITIVES.get(node.op)
        if prim is None:
            raise GraphError(f"unknown op {node.op!r}", node.describe(i))
        if node.attrs or prim.attrs:
            _check_attrs(prim, node.attrs, i, nodes)
        low, high = prim.arity
        if len(node.inputs) < low or (high is not None and len(node.inputs) > high):
            want = str(low) if low == high else f"{low} to {high if high is not None else 'any'}"
            raise GraphError(f"takes {want} inputs, got {len(node.inputs)}", node.describe(i))
        for name in node.inputs:
            if name not in avals:
                defined_later = any(name in later.outputs for later in nodes[i:])
                why = (
                    "is used before it is defined (nodes must be in topological order)"
                    if defined_later
                    else "is not defined"
                )
                raise GraphError(f"input {name!r} {why}", node.describe(i))
        if known is not None:
            for name in node.outputs:
                define(name, known[name], i)
            continue
        try:
            out = prim.shape(*[avals[n] for n in node.inputs], **node.attrs)
        except (ValueError, TypeError, IndexError, RuntimeError) as exc:  # NumPy's, on odd shapes
            raise GraphError(str(exc), node.describe(i)) from None
        outs = out if isinstance(out, tuple) else (out,)
        if not outs:
            raise GraphError("gives no value (a node gives at least one)", node.describe(i))
        if len(node.outputs) != len(outs):
            raise GraphError(
                f"has {len(node.outputs)} outputs, the op gives {len(outs)}", node.describe(i)
            )
        for name, spec in zip(node.outputs, outs):
            define(name, spec, i)

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
    return avals


def _check_attrs(prim, attrs, index, nodes):
    if attrs.keys() != prim.attrs.keys():
        missing = sorted(set(prim.attrs) - set(attrs))
        extra = sorted(set(attrs) - set(prim.attrs))
        raise GraphError(
            f"attributes: missing {missing}, unexpected {extra}", nodes[index].describe(index)
        )
    for name, kind in prim.attrs.items():
        if kind == "dtype" and isinstance(attrs[name], str):
            try:
                dtypes.wire_name(attrs[name])
            except TypeError as exc:
                raise GraphError(
                    f"attribute {name!r}: {exc}", nodes[index].describe(index)
                ) from None
        if not ATTR_KINDS[kind](attrs[name]):
            raise GraphError(
                f"attribute {name!r} must be {kind}, got {type(attrs[name]).__name__}",
                nodes[index].describe(index),
            )
