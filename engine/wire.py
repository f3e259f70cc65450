"""The protobuf wire format of proto/gradserve/v1/graph.proto: tensors to and from NumPy
arrays, graphs to and from the Graph IR.

Decoding accepts exactly what graph.proto documents: the six dtype names (no aliases, no byte
orders, no internal pseudo-dtype) wherever a dtype appears, public ops only (an op declared
`internal` is refused at any depth of subgraphs), closed subgraphs, and an op set version no
newer than the engine's. It checks every size before it allocates: a tensor's byte length must
equal prod(shape) * itemsize, and prod(shape) must be within the limits. Whatever the bytes,
the only exception that comes out is GraphError. The service's own messages (TensorRef, Value,
digests) are encoded in gradserve.protocol, on top of the tensor functions here."""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError
from gradserve.v1 import graph_pb2 as pb

from . import dtypes
from .errors import GraphError, LimitError
from .graph import OPSET, Graph, Node, Port, Spec
from .limits import DEFAULT_LIMITS, Limits
from .primitive import PRIMITIVES

# The op set version a Graph message with `opset` 0 (absent) was written for; the canonical
# encoding leaves it implicit, so graphs written before the field existed keep their bytes and
# digests.
IMPLICIT_OPSET = 1

# ---- tensors ------------------------------------------------------------------------------------
# A tensor travels as its dtype name, its shape and its raw little-endian C-order bytes. Graph
# constants, request arguments and reply results are all encoded and decoded here; only the
# large fields of requests and replies are hand-encoded instead (gradserve.protocol, from the
# canonical_array and dtype_name below, into the same bytes).

# dtype name -> the little-endian NumPy dtype it travels as (numpy's dtype.name is slow).
_WIRE = {name: np.dtype(name).newbyteorder("<") for name in dtypes.SUPPORTED}
_NATIVE = {np.dtype(name): name for name in dtypes.SUPPORTED}
_NATIVE_IS_WIRE = {name: np.dtype(name) == _WIRE[name] for name in dtypes.SUPPORTED}


def canonical_array(array) -> np.ndarray:
    """`array` as a C-contiguous little-endian array of a supported dtype (TypeError for any
    other dtype); the array itself when it already is one."""
    if type(array) is not np.ndarray:
        array = np.asarray(array)
    name = _NATIVE.get(array.dtype)
    if name is not None and _NATIVE_IS_WIRE[name] and array.flags.c_contiguous:
        return array
    dtype = dtypes.canonical(array.dtype)
    return np.ascontiguousarray(array, dtype=_WIRE[dtype])


def dtype_name(array: np.ndarray) -> str:
    return _NATIVE.get(array.dtype) or dtypes.canonical(array.dtype)


def fill_tensor(msg: pb.Tensor, array):
    """Set a Tensor field in place (a nested message built apart and then assigned is copied
    once more, which costs milliseconds for megabytes)."""
    array = canonical_array(array)
    msg.dtype = dtype_name(array)
    if array.ndim:
        msg.shape.extend(array.shape)
    msg.data = array.tobytes()


def to_tensor(array) -> pb.Tensor:
    msg = pb.Tensor()
    fill_tensor(msg, array)
    return msg


def from_tensor(msg: pb.Tensor, limits: Limits = DEFAULT_LIMITS, where: str = "tensor", data=None):
    """The array a Tensor carries: a read-only view of the message's bytes (native byte order),
    or of `data`, the tensor's bytes when the receiver held them apart from the message.

    Checked before anything is allocated: one of the six dtype names, no negative dimension, prod(shape)
    within `limits.max_elements` (else LimitError) and a byte length of prod(shape) * itemsize;
    any failure is a GraphError whose `where` is `where`."""
    wire = _WIRE.get(msg.dtype)
    if wire is not None:  # the common case, every check in one test
        shape = tuple(msg.shape)
        size = 1
        for d in shape:
            if d < 0:
                size = -1
                break
            size *= d
        if data is None:
            data = msg.data
        if 0 <= size <= limits.max_elements and len(data) == size * wire.itemsize:
            array = np.ndarray(shape, wire, data)  # frombuffer and reshape in one call
            return array if _NATIVE_IS_WIRE[msg.dtype] else array.astype(msg.dtype)
    return _from_tensor_checked(msg, limits, where, msg.data if data is None else data)


def _from_tensor_checked(msg: pb.Tensor, limits: Limits, where: str, data):
    """from_tensor one check at a time, for the exact error."""
    try:
        dtype = dtypes.wire_name(msg.dtype)
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
    if len(data) != want:
        raise GraphError(
            f"data has {len(data)} bytes, shape {shape} of {dtype} needs {want}",
            f"{where}.data",
        )
    array = np.frombuffer(data, dtype=_WIRE[dtype]).reshape(shape)
    return array.astype(dtype, copy=False)


# ---- graphs -------------------------------------------------------------------------------------


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
        return pb.Attribute(name=name, graph=graph_to_proto(value, subgraph=True))
    if all(isinstance(v, float) for v in value) and value:
        return pb.Attribute(name=name, floats=pb.Floats(values=value))
    return pb.Attribute(name=name, ints=pb.Ints(values=value))


def graph_to_proto(graph: Graph, subgraph: bool = False) -> pb.Graph:
    """The canonical message: `opset` only on the outermost graph and only when it is not
    IMPLICIT_OPSET (subgraphs share the enclosing graph's)."""
    return pb.Graph(
        opset=0 if subgraph or graph.opset == IMPLICIT_OPSET else graph.opset,
        inputs=[
            pb.ValueInfo(name=p.name, dtype=p.spec.dtype, shape=p.spec.shape) for p in graph.inputs
        ],
        constants=[pb.Constant(name=n, value=to_tensor(v)) for n, v in graph.constants.items()],
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
        return Spec(tuple(info.shape), dtypes.wire_name(info.dtype))
    except (TypeError, ValueError) as exc:
        raise GraphError(str(exc), where) from None


def _attr_from_proto(attr, limits, opset, where):
    kind = attr.WhichOneof("value")
    if kind is None:
        raise GraphError(f"attribute {attr.name!r} has no value", where)
    if kind == "ints":
        return tuple(attr.ints.values)
    if kind == "floats":
        return tuple(attr.floats.values)
    if kind == "graph":
        try:
            return graph_from_proto(attr.graph, limits, enclosing_opset=opset)
        except GraphError as exc:  # name the node that holds the subgraph, then the place in it
            raise GraphError(exc.reason, f"{where} attribute {attr.name!r} > {exc.where}") from None
    return getattr(attr, kind)


def _opset(msg: pb.Graph, enclosing: int | None) -> int:
    if enclosing is not None:  # a subgraph: the enclosing graph's version, or nothing
        if msg.opset not in (0, enclosing):
            raise GraphError(
                f"a subgraph's opset must be 0 (unset) or the enclosing graph's ({enclosing}),"
                f" got {msg.opset}",
                "opset",
            )
        return enclosing
    opset = msg.opset or IMPLICIT_OPSET
    if opset > OPSET:
        raise GraphError(
            f"the graph was written for op set version {opset}; this server supports op set"
            f" version {OPSET} (0 or unset means 1)",
            "opset",
        )
    return opset


def graph_from_proto(
    msg: pb.Graph, limits: Limits = DEFAULT_LIMITS, *, enclosing_opset: int | None = None
) -> Graph:
    """The Graph a message describes, checked. Subgraphs are decoded with the enclosing
    graph's op set version and see none of its values."""
    opset = _opset(msg, enclosing_opset)
    inputs = [Port(i.name, _spec(i, f"inputs[{k}] {i.name!r}")) for k, i in enumerate(msg.inputs)]
    constants = {}
    for k, c in enumerate(msg.constants):
        where = f"constants[{k}] {c.name!r}"
        if c.name in constants:
            raise GraphError(f"constant {c.name!r} is defined twice", where)
        constants[c.name] = from_tensor(c.value, limits, where)
    nodes = []
    for k, n in enumerate(msg.nodes):
        where = f"node {k} '{n.op}'"
        prim = PRIMITIVES.get(n.op)
        if prim is not None and prim.internal:
            raise GraphError(
                f"op {n.op!r} is internal to the engine (it records loop tapes for reverse"
                " mode) and is not accepted on the wire",
                where,
            )
        attrs = {}
        for a in n.attributes:
            if a.name in attrs:
                raise GraphError(f"attribute {a.name!r} appears twice", where)
            attrs[a.name] = _attr_from_proto(a, limits, opset, where)
        nodes.append(Node(n.op, tuple(n.inputs), tuple(n.outputs), attrs))
    declared = [_spec(o, f"outputs[{k}] {o.name!r}") for k, o in enumerate(msg.outputs)]
    return Graph(
        inputs,
        constants,
        nodes,
        [o.name for o in msg.outputs],
        declared_outputs=declared,
        limits=limits,
        opset=opset,
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
