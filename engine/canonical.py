"""A graph's canonical encoding (`Graph.to_bytes`: the deterministic serialization of its
``gradserve.v1.Graph`` message) written directly, without protobuf: `Graph.digest` hashes it.

The same bytes as wire.graph_to_proto(graph).SerializeToString(deterministic=True) (the tests
compare the two): fields in field-number order, proto3 defaults (empty strings and lists, a
zero opset) left out, repeated numbers packed, and an attribute's value always written (a
oneof member has presence, even when it holds zero). Faster than building the message
(a first call need not import protobuf to name its graph), and it goes one node at a time."""

from __future__ import annotations

import struct

import numpy as np

from . import dtypes

_LITTLE = {name: np.dtype(name).newbyteorder("<") for name in dtypes.SUPPORTED}


_ONE_BYTE = [bytes((i,)) for i in range(0x80)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64: ten bytes, two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: string, bytes, message or packed numbers."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _string(number: int, text: str) -> bytes:
    return _field(number, text.encode()) if text else b""


def _packed(number: int, values) -> bytes:
    return _field(number, b"".join(_varint(v) for v in values)) if values else b""


def _value_info(name: str, spec) -> bytes:
    return _string(1, name) + _string(2, spec.dtype) + _packed(3, spec.shape)


def _tensor(array: np.ndarray) -> bytes:
    name = dtypes.canonical(array.dtype)
    data = np.asarray(array, dtype=_LITTLE[name]).tobytes()
    return _string(1, name) + _packed(2, array.shape) + (_field(3, data) if data else b"")


def _check_int64(value: int):
    if not -(1 << 63) <= value < 1 << 63:  # as protobuf refuses it
        raise ValueError(f"Value out of range: {value}")


def _attribute(name: str, value) -> bytes:
    from .graph import Graph

    if isinstance(value, bool):
        body = _varint(7 << 3) + _varint(int(value))
    elif isinstance(value, int):
        _check_int64(value)
        body = _varint(2 << 3) + _varint(value)
    elif isinstance(value, float):
        body = _varint(3 << 3 | 1) + struct.pack("<d", value)
    elif isinstance(value, str):
        body = _field(4, value.encode())
    elif isinstance(value, Graph):
        body = _field(8, encode(value, subgraph=True))
    elif value and all(isinstance(v, float) for v in value):
        body = _field(6, _field(1, struct.pack(f"<{len(value)}d", *value)))
    else:
        for v in value:
            _check_int64(v)
        body = _field(5, _packed(1, value))
    return _string(1, name) + body


def _node(node) -> bytes:
    parts = [_string(1, node.op)]
    parts += [_field(2, n.encode()) for n in node.inputs]
    parts += [_field(3, n.encode()) for n in node.outputs]
    if node.attrs:
        parts += [_field(4, _attribute(k, v)) for k, v in sorted(node.attrs.items())]
    return b"".join(parts)


def encode(graph, subgraph: bool = False) -> bytes:
    """`graph`'s canonical encoding; `subgraph`: as the attribute of a node (no opset, which
    only the outermost graph carries, and only when it is not the implicit 1)."""
    parts = [_field(1, _value_info(p.name, p.spec)) for p in graph.inputs]
    parts += [
        _field(2, _string(1, name) + _field(2, _tensor(value)))
        for name, value in graph.constants.items()
    ]
    parts += [_field(3, _node(node)) for node in graph.nodes]
    parts += [_field(4, _value_info(p.name, p.spec)) for p in graph.outputs]
    if not subgraph and graph.opset != 1:
        parts.append(_varint(5 << 3) + _varint(graph.opset))
    return b"".join(parts)
