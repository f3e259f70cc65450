"""The Gradients service on the wire (proto/gradserve/v1/service.proto), shared by the client
and the server: the service and method names, resource types and error domain, tensor digests,
TensorRefs, Values, hand-encoded array fields, and the data of large request tensors cut out
of the received bytes before parsing (split_tensor_data).

Tensors themselves are encoded and decoded by gradserve.engine.wire (graph constants travel
the same way); the names below re-export them so that both ends import their wire format from
here. Neither the client nor the server is imported by this module.

A tensor's digest is the hex sha256 of ``dtype|shape|`` followed by its raw little-endian
C-order bytes (see service.proto); both sides compute it the same way, the client from the
array (no copy), the server from the received message."""

from __future__ import annotations

import hashlib

import numpy as np

from gradserve.engine.limits import Limits
from gradserve.engine.wire import canonical_array, dtype_name, fill_tensor, from_tensor, to_tensor
from gradserve.v1 import graph_pb2, service_pb2

__all__ = [
    "ERROR_DOMAIN",
    "GRAPH_RESOURCE",
    "METHODS",
    "MINIMIZE",
    "SERVICE",
    "SERVICE_NAME",
    "TENSOR_RESOURCE",
    "UNLIMITED",
    "array_digest",
    "canonical_array",
    "dtype_name",
    "fill_tensor",
    "fill_tensors",
    "fill_value",
    "from_tensor",
    "from_value",
    "host_id",
    "method_path",
    "proto_digest",
    "result_array",
    "result_arrays",
    "result_nbytes",
    "shared_regions",
    "split_tensor_data",
    "tensor_field_parts",
    "tensor_parts",
    "tensor_ref_parts",
    "to_tensor",
    "to_value",
    "value_parts",
    "writable_array",
]

# ---- names ----------------------------------------------------------------------------------

SERVICE = service_pb2.DESCRIPTOR.services_by_name["Gradients"]
SERVICE_NAME = SERVICE.full_name
# The one-request, one-reply methods, in the order of service.proto; Minimize streams.
METHODS = tuple(
    method.name
    for method in SERVICE.methods
    if not (method.client_streaming or method.server_streaming)
)
MINIMIZE = "Minimize"

GRAPH_RESOURCE = graph_pb2.Graph.DESCRIPTOR.full_name  # ResourceInfo.resource_type of NOT_FOUND
TENSOR_RESOURCE = graph_pb2.Tensor.DESCRIPTOR.full_name
ERROR_DOMAIN = "gradserve.dev"  # ErrorInfo.domain

# Results decode without element limits: the server already produced them.
UNLIMITED = Limits(max_nodes=1 << 62, max_elements=1 << 62)


def method_path(method: str) -> str:
    """The gRPC path of one of METHODS: "/gradserve.v1.Gradients/Evaluate"."""
    return f"/{SERVICE_NAME}/{method}"


# ---- digests --------------------------------------------------------------------------------


def _header(dtype: str, shape) -> bytes:
    return f"{dtype}|{','.join(str(int(d)) for d in shape)}|".encode()


def array_digest(array: np.ndarray) -> str:
    """Digest of a canonical array (see canonical_array)."""
    h = hashlib.sha256(_header(dtype_name(array), array.shape))
    if array.size:
        h.update(memoryview(array).cast("B"))
    return h.hexdigest()


def proto_digest(msg: graph_pb2.Tensor, data=None) -> str:
    """Digest of a Tensor message; `data`: its bytes when held apart (split_tensor_data)."""
    h = hashlib.sha256(_header(msg.dtype, msg.shape))
    h.update(msg.data if data is None else data)
    return h.hexdigest()


# ---- messages -------------------------------------------------------------------------------


def fill_tensors(repeated, arrays):
    for array in arrays:
        fill_tensor(repeated.add(), array)


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
    elif isinstance(result, service_pb2.SharedMemoryRef):
        msg.shared_memory.CopyFrom(result)
    else:
        fill_tensor(msg.tensor, result)


def from_value(msg: service_pb2.Value, writable: bool = True):
    kind = msg.WhichOneof("kind")
    if kind == "tuple":
        return tuple(from_value(item, writable) for item in msg.tuple.items)
    if kind == "tensor":
        return result_array(msg.tensor) if writable else from_tensor(msg.tensor, UNLIMITED)
    if kind == "shared_memory":
        return shared_array(msg.shared_memory)
    raise ValueError("the reply carries an empty Value")


# region handle -> the memoryview of a shared-memory region this process registered (filled
# by the client, gradserve.client.shm): a reply's Value may name a result written there.
shared_regions: dict = {}


def shared_array(ref) -> np.ndarray:
    """A result the server wrote into one of this process's regions, copied out (the region
    is written again by the next call)."""
    buf = shared_regions.get(ref.region)
    if buf is None:
        raise ValueError("the reply names a shared-memory region this client does not have")
    dtype = np.dtype(ref.dtype).newbyteorder("<")
    shape = tuple(ref.shape)
    count = int(np.prod(shape, dtype=np.int64))
    if (
        ref.offset < 0
        or ref.byte_size != count * dtype.itemsize
        or (ref.offset + ref.byte_size > len(buf))
    ):
        raise ValueError("the reply names bytes outside its shared-memory region")
    view = np.frombuffer(buf, dtype, count, ref.offset)
    view = view.reshape(shape, order="F" if ref.fortran_order else "C")
    return view.astype(dtype.newbyteorder("="), order="K", copy=True)


def result_arrays(reply, name: str) -> tuple:
    """The arrays of a reply's repeated Tensor field `name`, or of its `<name>_value` twin
    (a tuple Value, which may name shared memory) when the server sent that instead."""
    twin = name + "_value"
    if reply.HasField(twin):
        return from_value(getattr(reply, twin))
    return tuple(result_array(t) for t in getattr(reply, name))


def host_id() -> str:
    """The kernel's boot id: equal for every process and container of one machine (whether
    a client shares its server's host, docs/wire.md "Shared memory")."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def result_array(msg: graph_pb2.Tensor) -> np.ndarray:
    """A tensor of a reply, as an ordinary writable array: over a bytearray of its bytes
    (one copy, as writable_array makes, in one call fewer)."""
    return from_tensor(msg, UNLIMITED, data=bytearray(msg.data))


def writable_array(array: np.ndarray) -> np.ndarray:
    """Arrays decoded from a message are views of immutable bytes; results the user owns
    should be ordinary writable arrays, as the engine's are."""
    return array if array.flags.writeable else array.copy()


def result_nbytes(result) -> int:
    if isinstance(result, (tuple, list)):
        return sum(result_nbytes(r) for r in result)
    return getattr(result, "nbytes", 0)


# ---- hand-encoded fields: one copy of each array's bytes into the message --------------------
# Building a Tensor message copies the array's bytes (tobytes, then into the message), and
# serializing copies them again; for megabytes that is milliseconds. The client encodes the
# repeated TensorRef fields of a request, the server the Tensor and Value fields of a reply,
# and each appends them to the rest of its message (protobuf fields may come in any order;
# repeated ones keep theirs).


_SMALL_VARINTS = [bytes([n]) for n in range(128)]


def _varint(n: int) -> bytes:
    if n < 128:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _length_delimited(field: int, parts: list) -> list:
    size = sum(map(len, parts))
    return [_varint(field << 3 | 2), _varint(size)] + parts


# What comes before an array's data (the keys and lengths of the enclosing fields, the dtype,
# the shape) depends only on where it goes, its dtype and its shape: it is built once for each
# (the last few thousand kept), so that a small array costs a lookup and its bytes.
_HEADS: dict = {}
# Arrays smaller than this are copied into the message (cheaper than a memoryview for a few
# bytes); larger ones are viewed, and their one copy is the join into the message.
_VIEW_BYTES = 1024


def _tensor_head(array) -> bytes:
    """A Tensor's fields before its data's bytes: dtype, shape, the data's key and length."""
    name = dtype_name(array).encode()
    head = b"\x0a" + _varint(len(name)) + name
    if array.ndim:
        packed = b"".join(_varint(int(d)) for d in array.shape)
        head += b"\x12" + _varint(len(packed)) + packed
    if array.nbytes:
        head += b"\x1a" + _varint(array.nbytes)
    return head


def _build_head(fields: tuple, array, tail: bytes) -> bytes:
    head = _tensor_head(array)
    size = len(head) + array.nbytes
    for i, field in enumerate(reversed(fields)):
        prefix = _varint(field << 3 | 2) + _varint(size)
        head = prefix + head
        size += len(prefix) + (len(tail) if i == 0 else 0)
    return head


def _array_parts(fields: tuple, array, tail: bytes = b"") -> list:
    """`array` as a Tensor in nested fields (`fields`: field numbers, the outermost first),
    `tail` closing the message that holds the Tensor."""
    array = canonical_array(array)
    key = (fields, tail, array.dtype, array.shape)
    head = _HEADS.get(key)
    if head is None:
        if len(_HEADS) >= 4096:
            _HEADS.clear()
        head = _HEADS[key] = _build_head(fields, array, tail)
    parts = [head]
    if array.nbytes:
        parts.append(array.tobytes() if array.nbytes < _VIEW_BYTES else memoryview(array).cast("B"))
    if tail:
        parts.append(tail)
    return parts


def tensor_parts(array) -> list:
    """The fields of a gradserve.v1.Tensor for `array`, as bytes and memoryviews."""
    return _array_parts((), array)


def tensor_ref_parts(
    field: int, array=None, digest: str | None = None, remember: bool = False
) -> list:
    """One TensorRef as an element of repeated field number `field`: inline (`array`), by
    `digest`, or empty (neither)."""
    if array is not None and digest is None:
        return _array_parts((field, 1), array, b"\x18\x01" if remember else b"")
    if digest is not None:
        d = digest.encode()
        body = [b"\x12", _varint(len(d)), d]
    else:
        body = []
    return _length_delimited(field, body)


def tensor_field_parts(field: int, array) -> list:
    """A Tensor as field number `field` (singular, or one element of a repeated field)."""
    return _array_parts((field,), array)


def value_parts(field: int, result) -> list:
    """A Value (an array, or a tuple of results) as field number `field`."""
    if isinstance(result, tuple):
        items = []
        for r in result:
            items += value_parts(1, r)  # Values.items = 1
        inner = _length_delimited(2, items)  # Value.tuple = 2
        return _length_delimited(field, inner)
    if isinstance(result, service_pb2.SharedMemoryRef):
        inner = _length_delimited(3, [result.SerializeToString()])  # Value.shared_memory = 3
        return _length_delimited(field, inner)
    return _array_parts((field, 1), result)  # Value.tensor = 1


# ---- large tensor data left in the received bytes -------------------------------------------
# Parsing a message copies every bytes field into protobuf's arena, and reading `Tensor.data`
# copies it again into a new bytes object. For the large tensors of a request, the receiver
# instead cuts each `data` field out of the message before parsing it and views those bytes
# where they arrived (np.frombuffer over a memoryview of the received message: no copy).


def _read_varint(buf: bytes, pos: int) -> tuple:
    value = shift = 0
    while True:
        byte = buf[pos]  # IndexError past the end: malformed
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes, start: int, end: int):
    """(number, wire type, key start, value start, value end) of each field in buf[start:end];
    ValueError or IndexError when the bytes are not well-formed."""
    pos = start
    while pos < end:
        key_start = pos
        key, pos = _read_varint(buf, pos)
        number, kind = key >> 3, key & 7
        if kind == 0:
            value_start = pos
            _, pos = _read_varint(buf, pos)
        elif kind == 2:
            size, value_start = _read_varint(buf, pos)
            pos = value_start + size
        elif kind in (1, 5):
            value_start = pos
            pos += 8 if kind == 1 else 4
        else:  # groups: never in these messages
            raise ValueError(f"wire type {kind}")
        if pos > end:
            raise ValueError("field runs past its message")
        yield number, kind, key_start, value_start, pos


def _only(buf: bytes, start: int, end: int, number: int):
    """(key start, value start, value end) of the one length-delimited field `number` in
    buf[start:end]; None when it is absent, repeated or not length-delimited."""
    found = None
    for n, kind, key_start, value_start, value_end in _fields(buf, start, end):
        if n == number:
            if found is not None or kind != 2:
                return None
            found = (key_start, value_start, value_end)
    return found


def split_tensor_data(message: bytes, ref_fields: dict, min_bytes: int) -> tuple:
    """(`message` without the `data` of its large inline tensors, {(field name, index):
    memoryview of that data in `message`}) for the repeated TensorRef fields `ref_fields`
    ({field number: name}) of a request. Tensors under `min_bytes`, and any encoding this
    does not follow (a field repeated where protobuf would merge, malformed bytes), are left
    in the message for the protobuf parser, which then decides as it always does."""
    try:
        return _split_tensor_data(message, ref_fields, min_bytes)
    except (ValueError, IndexError):
        return message, {}


def _split_tensor_data(message, ref_fields, min_bytes):
    whole = memoryview(message)
    parts, views, counts = [], {}, {}
    done = 0  # message[:done] is in parts
    for number, kind, key_start, start, end in _fields(message, 0, len(message)):
        name = ref_fields.get(number)
        if name is None or kind != 2:
            continue
        index = counts.get(number, 0)
        counts[number] = index + 1
        tensor = _only(message, start, end, 1)  # TensorRef.tensor
        if tensor is None:
            continue
        t_key, t_start, t_end = tensor
        data = _only(message, t_start, t_end, 3)  # Tensor.data
        if data is None or data[2] - data[1] < min_bytes:
            continue
        d_key, d_start, d_end = data
        views[(name, index)] = whole[d_start:d_end]
        rest = message[t_start:d_key] + message[d_end:t_end]  # the Tensor without its data
        ref = b"".join(
            [message[start:t_key], b"\x0a", _varint(len(rest)), rest, message[t_end:end]]
        )
        parts += [whole[done:key_start], _varint(number << 3 | 2), _varint(len(ref)), ref]
        done = end
    if not views:
        return message, {}
    parts.append(whole[done:])
    return b"".join(parts), views
