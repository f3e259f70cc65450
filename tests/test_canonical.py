"""`Graph.digest` hashes the canonical encoding written without protobuf (engine/canonical.py):
it must be byte for byte what `Graph.to_bytes` (protobuf's deterministic serialization) gives,
or a client and a server would name the same graph differently."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from gradserve.engine import canonical  # engine internals
from gradserve.engine.graph import Graph, Node, Port, Spec
from gradserve.engine.transforms import Program, vjp
from hypothesis import given, settings
from strategies import cases

import gradserve as gs
import gradserve.numpy as gnp


def assert_same_encoding(graph: Graph):
    assert canonical.encode(graph) == graph.to_bytes()
    assert graph.digest == hashlib.sha256(graph.to_bytes()).hexdigest()


@settings(settings.get_profile("fuzz-ci"), max_examples=300)
@given(cases())
def test_every_op_encodes_as_protobuf_does(case):
    assert_same_encoding(case.graph)


@settings(settings.get_profile("fuzz-ci"), max_examples=60)
@given(cases())
def test_derived_graphs_encode_as_protobuf_does(case):
    """The engine's own graphs: derivative ops, internal loop-tape ops, many constants."""
    graph = case.graph
    wrt = tuple(i for i, p in enumerate(graph.inputs) if p.spec.dtype in ("float64", "float32"))
    if not wrt:
        return
    try:
        derived = vjp(Program(graph), wrt, loop_tapes=True).graph
    except (TypeError, gs.GraphError):  # not differentiable (a custom rule's restriction)
        return
    assert_same_encoding(derived)


def test_every_attribute_kind_and_edge_value():
    body = gs.trace(lambda c: c * 2.0, 1.0)
    attrs = {
        "an_int": -(2**63),
        "zero": 0,
        "big": 2**63 - 1,
        "a_float": -0.0,
        "not_a_number": float("nan"),
        "a_bool": False,
        "true": True,
        "a_str": "é ∞ \x00",
        "empty": "",
        "ints": (-1, 0, 300, 2**40),
        "no_ints": (),
        "floats": (1.5, -2.25, float("inf")),
        "graph": body,
    }
    # not a valid op: built unchecked, to reach every branch of the encoder
    graph = Graph.__new__(Graph)
    graph.opset = 1
    graph.inputs = (Port("x", Spec((2, 0, 3), "int32")), Port("", Spec((), "bool")))
    graph.constants = {
        f"c_{dtype}": np.arange(3).astype(dtype).reshape(1, 3)
        for dtype in ("float64", "float32", "complex128", "int32", "int64", "bool")
    }
    graph.constants["empty"] = np.zeros((0, 2))
    graph.constants["scalar"] = np.array(-1.5)
    graph.constants["big_endian"] = np.arange(4, dtype=">f8")
    graph.constants["strided"] = np.arange(12.0).reshape(3, 4)[:, ::2]
    graph.nodes = (Node("anything", ("x", "x"), ("y", "z"), attrs), Node("none", (), ("w",), {}))
    graph.outputs = (Port("y", Spec((), "float64")),)
    graph.avals = {}
    assert canonical.encode(graph) == graph.to_bytes()


def test_ints_out_of_range_are_refused_as_protobuf_refuses_them():
    graph = gs.trace(lambda x: gnp.sum(x, axis=0), np.ones(3))
    node = graph.nodes[0]
    bad = Node(node.op, node.inputs, node.outputs, {**node.attrs, "axes": (2**63,)})
    for encode in (canonical.encode, lambda g: g.to_bytes()):
        fake = Graph.__new__(Graph)
        fake.__dict__.update(graph.__dict__, nodes=(bad,))
        with pytest.raises(ValueError):
            encode(fake)
