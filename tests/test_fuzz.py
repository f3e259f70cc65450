"""Structure-aware fuzzing, the short deterministic run (fuzz/run.py is the long one).

Valid graphs of every public op (tests/strategies.py), mutated as bytes and as fields, go to
`gs.Graph.from_bytes` (only GraphError may come out), to every Engine method in-process (only
the exceptions the server maps to client errors), and to every RPC of a live server (only OK,
INVALID_ARGUMENT, RESOURCE_EXHAUSTED, NOT_FOUND; never INTERNAL, UNKNOWN, a crash or a hang),
which stays SERVING and serves a known-good request at the end. The oracles are in
tests/fuzz_targets.py. Regressions of the bugs the fuzzer found are at the end."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from fuzz_targets import Target, decode, has_loop, run_engine
from gradserve.engine.graph import Graph, Node, Port, Spec
from gradserve.engine.primitive import PRIMITIVES
from gradserve.v1 import graph_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    INTERNAL_OPS,
    OP_CASES,
    PUBLIC_OPS,
    Case,
    cases,
    mutated_graph_bytes,
    nest,
    requests,
    valid_request,
)

import gradserve as gs

CI = settings.get_profile("fuzz-ci")


def test_every_public_op_has_a_generator():
    assert set(OP_CASES) == set(PUBLIC_OPS)
    assert set(PUBLIC_OPS) | set(INTERNAL_OPS) == set(PRIMITIVES)


@pytest.mark.parametrize("op", PUBLIC_OPS)
@settings(CI, max_examples=3)
@given(data=st.data())
def test_generated_graphs_are_valid_and_run(op, data):
    case = data.draw(cases((op,)))
    assert any(n.op == op for n in case.graph.nodes)
    assert decode(case.graph.to_bytes()).digest == case.graph.digest
    out = gs.Engine().evaluate(case.graph, *case.args)
    outs = out if isinstance(out, tuple) else (out,)
    for value, port in zip(outs, case.graph.outputs):
        assert value.shape == port.spec.shape and value.dtype == np.dtype(port.spec.dtype)


@settings(CI, max_examples=1200)
@given(mutated_graph_bytes())
def test_mutated_graphs_only_graph_error(case_and_bytes):
    _case, data = case_and_bytes
    decode(data)  # raises Bug for anything but a GraphError


@settings(CI, max_examples=150)
@given(mutated_graph_bytes())
def test_whatever_decodes_runs_in_the_engine_or_fails_cleanly(case_and_bytes):
    _case, data = case_and_bytes
    graph = decode(data)
    if graph is not None:
        run_engine(graph, seconds=2.0)


@pytest.fixture(scope="module")
def target():
    server = Target()
    yield server
    server.check_alive()
    server.known_good()
    server.close()


@settings(CI, max_examples=1000)
@given(requests())
def test_every_rpc_answers_only_client_errors(target, request_):
    method, case, data, _mutated = request_
    target.call(method, data, timeout=10.0, loop=has_loop(case.graph) or None)
    target.calls = getattr(target, "calls", 0) + 1
    if target.calls % 50 == 0:
        target.check_alive()


# ---- regressions: bugs the fuzzer found ------------------------------------------------------


def test_more_than_32_dimensions_is_a_graph_error():
    """np.broadcast_shapes raised RuntimeError in the shape rule (not a GraphError)."""
    msg = graph_pb2.Graph.FromString(gs.trace(lambda x, y: x + y, 1.0, 1.0).to_bytes())
    for info in (msg.inputs[0], msg.inputs[1]):
        info.shape[:] = [1] * 33
    with pytest.raises(gs.GraphError, match="33 dimensions"):
        gs.Graph.from_bytes(msg.SerializeToString())
    with pytest.raises(gs.GraphError):
        Graph([Port("x", Spec((1,) * 40))], {}, [], ["x"])
    assert Graph([Port("x", Spec((1,) * 32))], {}, [], ["x"])  # 32 is fine
    # the same in an attribute: broadcast_to a shape of 33 or 64 dimensions
    for ndim in (33, 64, 65):
        msg = graph_pb2.Graph.FromString(gs.trace(lambda x: x + 1.0, 1.0).to_bytes())
        node = msg.nodes.add(op="broadcast_to", inputs=[msg.outputs[0].name], outputs=["b"])
        node.attributes.add(name="shape").ints.values[:] = [1] * ndim
        msg.outputs[0].name = "b"
        msg.outputs[0].shape[:] = [1] * ndim
        with pytest.raises(gs.GraphError):
            gs.Graph.from_bytes(msg.SerializeToString())


@pytest.mark.parametrize("op", ["checkpoint", "scan", "while_loop"])
def test_a_node_without_outputs_is_a_graph_error(op):
    """A control-flow node whose body returns nothing decoded, then the planner raised
    IndexError (INTERNAL) on its missing first output."""
    empty = Graph([], {}, [], [])
    false = Graph(
        [], {}, [Node("full", (), ("f",), {"shape": (), "dtype": "bool", "value": 0.0})], ["f"]
    )
    attrs = {
        "checkpoint": {"body": empty},
        "scan": {"body": empty, "length": 3, "num_consts": 0, "num_carry": 0, "reverse": False},
        "while_loop": {
            "cond": false,
            "body": empty,
            "num_cond_consts": 0,
            "num_body_consts": 0,
            "max_iterations": 10,
        },
    }[op]
    with pytest.raises(gs.GraphError, match="gives no value"):
        Graph([Port("x", Spec(()))], {}, [Node(op, (), (), attrs)], ["x"])
    msg = graph_pb2.Graph.FromString(gs.trace(lambda x: x * 2.0, 1.0).to_bytes())
    node = msg.nodes.add(op=op)
    for name, value in attrs.items():
        attr = node.attributes.add(name=name)
        if isinstance(value, Graph):
            attr.graph.CopyFrom(graph_pb2.Graph.FromString(value.to_bytes()))
        elif isinstance(value, bool):
            attr.b = value
        else:
            attr.i = value
    with pytest.raises(gs.GraphError, match="gives no value"):
        gs.Graph.from_bytes(msg.SerializeToString())


def _index_graphs():
    x = np.ones(3)
    yield gs.trace(lambda x, i: gnp_sum(x[i]), x, np.zeros(2, np.int64)), (x, np.array([5, 0]))
    yield (
        gs.trace(lambda x, i: gnp_sum(x[:, i] ** 2), np.ones((2, 3)), np.zeros(1, np.int32)),
        (np.ones((2, 3)), np.array([-4], np.int32)),
    )


def gnp_sum(v):
    import gradserve.numpy as gnp

    return gnp.sum(v)


def test_an_index_argument_out_of_bounds_is_a_value_error():
    """NumPy's IndexError escaped the engine: INTERNAL on the wire."""
    eng = gs.Engine()
    for graph, args in _index_graphs():
        with pytest.raises(ValueError, match="out of bounds"):
            eng.evaluate(graph, *args)
        with pytest.raises(ValueError, match="out of bounds"):
            eng.grad(graph, *args)  # getitem forward, scatter_add / add_at backward
        with pytest.raises(ValueError, match="out of bounds"):
            eng.jvp(graph, args, (np.ones_like(args[0]), np.zeros_like(args[1])))


def test_an_index_argument_out_of_bounds_is_invalid_argument(target):
    for graph, args in _index_graphs():
        case = Case("getitem", graph, args)
        for method in ("Evaluate", "ValueAndGrad", "Vjp", "Jvp", "Jacobian"):
            data = valid_request(method, case).SerializeToString()
            code, details, _ = target.raw(method, data, 10.0)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (method, details)
            assert "out of bounds" in details


def test_graphs_nested_past_protobufs_depth_are_graph_errors():
    data = gs.trace(lambda x: x * 2.0, 1.0).to_bytes()
    assert decode(nest(data, 30)) is not None  # 30 levels of checkpoint decode and run
    for depth in (99, 100, 101, 400):
        decode(nest(data, depth))  # a GraphError (or a graph), nothing else


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("name", ["argmax", "argmin"])
def test_argmax_over_all_elements_batches_per_entry(name, keepdims):
    """argmax/argmin with no axis (over all elements) took the index over the whole batch:
    check_grad's batched evaluation got a 0-d result and raised IndexError (INTERNAL)."""
    import gradserve.numpy as gnp

    pick = getattr(gnp, name)
    graph = gs.trace(lambda x: gnp.sum(x * pick(x, keepdims=keepdims)), np.ones((2, 3)))
    x = np.array([[0.1, 0.5, 0.2], [0.9, 0.3, 0.4]])
    report = gs.Engine().check_grad(graph, x)
    assert report.ok
    np.testing.assert_allclose(report.numeric[0], np.full((2, 3), 3.0 if name == "argmax" else 0.0))
    only = gs.trace(lambda x: pick(x).astype(np.float64), np.ones((2, 3)))
    assert gs.Engine().check_grad(only, x).ok
