"""The protobuf wire format (proto/gradserve/v1/graph.proto) to and from the Graph IR.

Decoding checks every size before it allocates: a tensor's byte length must equal
prod(shape) * itemsize, and prod(shape) must be within the limits. Whatever the bytes, the
only exception that comes out is GraphError."""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError
from gradserve.v1 import graph_pb2 as pb

from . import dtypes
from .errors import GraphError, LimitError
from .graph import Graph, Node, Port, Spec
from .limits import DEFAULT_LIMITS, Limits


def tensor_to_proto(array) -> pb.Tensor:
    array = np.asarray(array)
    dtype = dtypes.canonical(array.dtype)
    data = np.ascontiguousarray(array, dtype=np.dtype(dtype).newbyteorder("<")).tobytes()
    return pb.Tensor(dtype=dtype, shape=array.shape, data=data)


def tensor_from_proto(msg: pb.Tensor, limits: Limits = DEFAULT_LIMITS, where: str = "tensor"):
    try:
        dtype = dtypes.canonical(msg.dtype)
    except TypeError as exc:
        raise GraphError(str(exc), f"{where}.dtype") from None
    shape = tuple(msg.shape)
    if any(d < 0 for d in shape):
        raise GraphError(f"negative dimension in shape {shape}", f"{where}.shape")
    size = 1
    for d in shape:
        size *= d
    if size > limits.max_elements:
        raise LimitError(
            f"shape {shape} has {size} elements, over the limit of {limits.max_elements}",
            f"{where}.shape",
        )
    want = size * np.dtype(dtype).itemsize
    if len(msg.data) != want:
        raise GraphError(
            f"data has {len(msg.data)} bytes, shape {shape} of {dtype} needs {want}",
            f"{where}.data",
        )
    array = np.frombuffer(msg.data, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    return array.astype(dtype, copy=False)


def _attr_to_proto(name, value) -> pb.Attribute:
    if isinstance(value, bool):
        return pb.Attribute(name=name, b=value)
    if isinstance(value, int):
        return pb.Attribute(name=name, i=value)
    if isinstance(value, float):
        return pb.Attribute(name=name, f=value)
    if isinstance(value, str):
        return pb.Attribute(name=name, s=value)
    if isinstance(value, Graph):
        return pb.Attribute(name=name, graph=graph_to_proto(value))
    if all(isinstance(v, float) for v in value) and value:
        return pb.Attribute(name=name, floats=pb.Floats(values=value))
    return pb.Attribute(name=name, ints=pb.Ints(values=value))


def graph_to_proto(graph: Graph) -> pb.Graph:
    return pb.Graph(
        inputs=[
            pb.ValueInfo(name=p.name, dtype=p.spec.dtype, shape=p.spec.shape) for p in graph.inputs
        ],
        constants=[
            pb.Constant(name=n, value=tensor_to_proto(v)) for n, v in graph.constants.items()
        ],
        nodes=[
            pb.Node(
                op=n.op,
                inputs=n.inputs,
                outputs=n.outputs,
                attributes=[_attr_to_proto(k, v) for k, v in sorted(n.attrs.items())],
            )
            for n in graph.nodes
        ],
        outputs=[
            pb.ValueInfo(name=p.name, dtype=p.spec.dtype, shape=p.spec.shape) for p in graph.outputs
        ],
    )


def _spec(info, where) -> Spec:
    try:
        return Spec(tuple(info.shape), info.dtype)
    except (TypeError, ValueError) as exc:
        raise GraphError(str(exc), where) from None


def _attr_from_proto(attr, limits, outer, where):
    kind = attr.WhichOneof("value")
    if kind is None:
        raise GraphError(f"attribute {attr.name!r} has no value", where)
    if kind == "ints":
        return tuple(attr.ints.values)
    if kind == "floats":
        return tuple(attr.floats.values)
    if kind == "graph":
        try:
            return graph_from_proto(attr.graph, limits, outer)
        except GraphError as exc:  # name the node that holds the subgraph, then the place in it
            raise GraphError(exc.reason, f"{where} attribute {attr.name!r} > {exc.where}") from None
    return getattr(attr, kind)


def graph_from_proto(msg: pb.Graph, limits: Limits = DEFAULT_LIMITS, outer=None) -> Graph:
    inputs = [Port(i.name, _spec(i, f"inputs[{k}] {i.name!r}")) for k, i in enumerate(msg.inputs)]
    constants = {}
    for k, c in enumerate(msg.constants):
        where = f"constants[{k}] {c.name!r}"
        if c.name in constants:
            raise GraphError(f"constant {c.name!r} is defined twice", where)
        constants[c.name] = tensor_from_proto(c.value, limits, where)
    nodes = []
    for k, n in enumerate(msg.nodes):
        where = f"node {k} '{n.op}'"
        attrs = {}
        for a in n.attributes:
            if a.name in attrs:
                raise GraphError(f"attribute {a.name!r} appears twice", where)
            attrs[a.name] = _attr_from_proto(a, limits, outer, where)
        nodes.append(Node(n.op, tuple(n.inputs), tuple(n.outputs), attrs))
    declared = [_spec(o, f"outputs[{k}] {o.name!r}") for k, o in enumerate(msg.outputs)]
    return Graph(
        inputs,
        constants,
        nodes,
        [o.name for o in msg.outputs],
        declared_outputs=declared,
        limits=limits,
        outer=outer,
    )


def graph_from_bytes(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Graph:
    try:
        msg = pb.Graph.FromString(data)
    except (DecodeError, RecursionError, ValueError, TypeError) as exc:
        raise GraphError(
            f"the bytes are not a gradserve.v1.Graph message ({exc})", "bytes"
        ) from None
    try:
        return graph_from_proto(msg, limits)
    except GraphError:
        raise
    except (ValueError, TypeError, IndexError, KeyError, OverflowError, RecursionError) as exc:
        raise GraphError(f"invalid graph ({type(exc).__name__}: {exc})", "graph") from None
