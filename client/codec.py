"""Encoding shared by the client and the server: tensors, tensor digests, result trees.

A tensor's digest is the hex sha256 of ``dtype|shape|`` followed by its raw little-endian
C-order bytes (see proto/gradserve/v1/service.proto); both sides compute it the same way,
the client from the array (no copy), the server from the received message."""

from __future__ import annotations

import hashlib

import numpy as np
from gradserve.engine import dtypes
from gradserve.engine.limits import Limits
from gradserve.engine.wire import tensor_from_proto
from gradserve.v1 import graph_pb2, service_pb2

GRAPH_RESOURCE = "gradserve.v1.Graph"
TENSOR_RESOURCE = "gradserve.v1.Tensor"
ERROR_DOMAIN = "gradserve.dev"

# Results decode without element limits: the server already produced them.
UNLIMITED = Limits(max_nodes=1 << 62, max_elements=1 << 62)


def _header(dtype: str, shape) -> bytes:
    return f"{dtype}|{','.join(str(int(d)) for d in shape)}|".encode()


# dtype name -> the little-endian NumPy dtype it travels as (numpy's dtype.name is slow).
_WIRE = {name: np.dtype(name).newbyteorder("<") for name in dtypes.SUPPORTED}
_NATIVE = {np.dtype(name): name for name in dtypes.SUPPORTED}
_NATIVE_IS_WIRE = {name: np.dtype(name) == _WIRE[name] for name in dtypes.SUPPORTED}


def canonical_array(array) -> np.ndarray:
    """`array` as a C-contiguous little-endian array of a supported dtype."""
    if type(array) is not np.ndarray:
        array = np.asarray(array)
    name = _NATIVE.get(array.dtype)
    if name is not None and _NATIVE_IS_WIRE[name] and array.flags.c_contiguous:
        return array
    dtype = dtypes.canonical(array.dtype)
    return np.ascontiguousarray(array, dtype=_WIRE[dtype])


def dtype_name(array: np.ndarray) -> str:
    return _NATIVE.get(array.dtype) or dtypes.canonical(array.dtype)


def array_digest(array: np.ndarray) -> str:
    """Digest of a canonical array (see canonical_array)."""
    h = hashlib.sha256(_header(dtype_name(array), array.shape))
    if array.size:
        h.update(memoryview(array).cast("B"))
    return h.hexdigest()


def proto_digest(msg: graph_pb2.Tensor) -> str:
    h = hashlib.sha256(_header(msg.dtype, msg.shape))
    h.update(msg.data)
    return h.hexdigest()


def to_tensor(array) -> graph_pb2.Tensor:
    msg = graph_pb2.Tensor()
    fill_tensor(msg, array)
    return msg


def fill_tensor(msg: graph_pb2.Tensor, array):
    """Set a Tensor field in place (a nested message built apart and then assigned is copied
    once more, which costs milliseconds for megabytes)."""
    array = canonical_array(array)
    msg.dtype = dtype_name(array)
    if array.ndim:
        msg.shape.extend(array.shape)
    msg.data = array.tobytes()


def fill_tensors(repeated, arrays):
    for array in arrays:
        fill_tensor(repeated.add(), array)


def from_tensor(msg: graph_pb2.Tensor, limits: Limits = UNLIMITED, where: str = "tensor"):
    """engine.wire.tensor_from_proto, with a fast path for the common case (a supported
    dtype, a byte length that matches, within the limits); anything else goes through the
    engine's decoder for its exact errors (GraphError, LimitError)."""
    wire = _WIRE.get(msg.dtype)
    if wire is not None:
        shape = tuple(msg.shape)
        size = 1
        for d in shape:
            if d < 0:
                size = -1
                break
            size *= d
        data = msg.data
        if 0 <= size <= limits.max_elements and len(data) == size * wire.itemsize:
            array = np.frombuffer(data, dtype=wire)
            if shape != (size,):
                array = array.reshape(shape)
            return array if _NATIVE_IS_WIRE[msg.dtype] else array.astype(msg.dtype)
    return tensor_from_proto(msg, limits, where)


def to_value(result) -> service_pb2.Value:
    msg = service_pb2.Value()
    fill_value(msg, result)
    return msg


def fill_value(msg: service_pb2.Value, result):
    """Set a Value field in place: an array, or a tuple of results."""
    if isinstance(result, tuple):
        items = msg.tuple.items
        if not result:
            msg.tuple.SetInParent()
        for r in result:
            fill_value(items.add(), r)
    else:
        fill_tensor(msg.tensor, result)


def from_value(msg: service_pb2.Value, writable: bool = True):
    kind = msg.WhichOneof("kind")
    if kind == "tuple":
        return tuple(from_value(item, writable) for item in msg.tuple.items)
    if kind == "tensor":
        return writable_array(from_tensor(msg.tensor)) if writable else from_tensor(msg.tensor)
    raise ValueError("the reply carries an empty Value")


def writable_array(array: np.ndarray) -> np.ndarray:
    """Arrays decoded from a message are views of immutable bytes; results the user owns
    should be ordinary writable arrays, as the engine's are."""
    return array if array.flags.writeable else array.copy()


# ---- hand-encoded TensorRefs: one copy of each array's bytes into the request ----------------
# Building a Tensor message copies the array's bytes (tobytes, then into the message), and
# serializing copies them again; for megabytes in a client process that is milliseconds. The
# client encodes the repeated TensorRef fields itself and appends them to the rest of the
# request (protobuf fields may come in any order; repeated ones keep theirs).


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _length_delimited(field: int, parts: list) -> list:
    size = sum(len(p) for p in parts)
    return [_varint(field << 3 | 2), _varint(size)] + parts


def tensor_parts(array) -> list:
    """The fields of a gradserve.v1.Tensor for `array`, as bytes and memoryviews."""
    array = canonical_array(array)
    name = dtype_name(array).encode()
    parts = [b"\x0a", _varint(len(name)), name]
    if array.ndim:
        packed = b"".join(_varint(int(d)) for d in array.shape)
        parts += [b"\x12", _varint(len(packed)), packed]
    if array.nbytes:
        parts += [b"\x1a", _varint(array.nbytes), memoryview(array).cast("B")]
    return parts


def tensor_ref_parts(
    field: int, array=None, digest: str | None = None, remember: bool = False
) -> list:
    """One TensorRef as an element of repeated field number `field`: inline (`array`), by
    `digest`, or empty (neither)."""
    if digest is not None:
        d = digest.encode()
        body = [b"\x12", _varint(len(d)), d]
    elif array is not None:
        body = _length_delimited(1, tensor_parts(array))
        if remember:
            body.append(b"\x18\x01")
    else:
        body = []
    return _length_delimited(field, body)


def tensor_field_parts(field: int, array) -> list:
    """A Tensor as field number `field` (singular, or one element of a repeated field)."""
    return _length_delimited(field, tensor_parts(array))


def value_parts(field: int, result) -> list:
    """A Value (an array, or a tuple of results) as field number `field`."""
    if isinstance(result, tuple):
        items = []
        for r in result:
            items += value_parts(1, r)  # Values.items = 1
        inner = _length_delimited(2, items)  # Value.tuple = 2
    else:
        inner = tensor_field_parts(1, result)  # Value.tensor = 1
    return _length_delimited(field, inner)


def result_nbytes(result) -> int:
    if isinstance(result, (tuple, list)):
        return sum(result_nbytes(r) for r in result)
    return getattr(result, "nbytes", 0)
