"""The wire accepts exactly what graph.proto and service.proto document: the six dtype names,
public ops only (at any depth of subgraphs), closed subgraphs, node limits that count subgraph
nodes, and an op set version. Each case is checked on `Graph.from_bytes` and, where it is a
matter of the service, end to end through a live server (INVALID_ARGUMENT or
RESOURCE_EXHAUSTED with the field named in the BadRequest detail, never INTERNAL or a wrong
answer)."""

from __future__ import annotations

import gradserve.server
import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2
from gradserve.engine import graph as graph_module
from gradserve.engine.graph import Node
from gradserve.engine.transforms import Program, vjp
from gradserve.v1 import graph_pb2
from gradserve.v1 import service_pb2 as pb
from grpc_status import rpc_status

import gradserve as gs
import gradserve.numpy as gnp
from gradserve.protocol import method_path, to_tensor

SEED = gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0)
DTYPES = ("float64", "float32", "complex128", "int32", "int64", "bool")


@pytest.fixture(scope="module")
def address():
    server = gradserve.server.serve(block=False, host="127.0.0.1", port=0, metrics_port=-1)
    yield f"127.0.0.1:{server.port}"
    server.stop(grace=0)


@pytest.fixture(scope="module")
def small_address():
    """A server whose graphs may hold 50 nodes, subgraphs included."""
    server = gradserve.server.serve(
        block=False, host="127.0.0.1", port=0, metrics_port=-1, max_nodes=50
    )
    yield f"127.0.0.1:{server.port}"
    server.stop(grace=0)


def message(graph) -> graph_pb2.Graph:
    return graph_pb2.Graph.FromString(graph.to_bytes())


def args_of(*values):
    return [pb.TensorRef(tensor=to_tensor(np.float64(v))) for v in values]


def call(address, graph_bytes: bytes, args):
    """Evaluate over a raw channel: (code, details, BadRequest field, ErrorInfo reason, reply)."""
    request = pb.EvaluateRequest(graph=pb.GraphRef(body=graph_bytes), args=args)
    with grpc.insecure_channel(address) as channel:
        stub = channel.unary_unary(method_path("Evaluate"))
        try:
            reply = pb.EvaluateResponse.FromString(stub(request.SerializeToString(), timeout=30))
            return grpc.StatusCode.OK, "", "", "", reply
        except grpc.RpcError as err:
            field = reason = ""
            for detail in rpc_status.from_call(err).details:
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    field = bad.field_violations[0].field
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
            return err.code(), err.details(), field, reason, None


def expect_invalid(address, graph_bytes, args, *field_parts, reason="GraphError"):
    code, text, field, got_reason, _ = call(address, graph_bytes, args)
    assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, text)
    assert got_reason == reason, text
    for part in field_parts:
        assert part in field, (field, text)
    return text


def rejected(data: bytes, *where_parts) -> gs.GraphError:
    with pytest.raises(gs.GraphError) as info:
        gs.Graph.from_bytes(data)
    for part in where_parts:
        assert part in info.value.where, (part, info.value.where, str(info.value))
    return info.value


# ---- 1. internal dtypes and ops ----------------------------------------------------------------


def test_tape_dtype_input_is_invalid_argument(address):
    """An input (passed through to an output) of the engine's internal "tape" dtype: it used
    to decode and then fail inside the engine (INTERNAL)."""
    msg = message(gs.trace(lambda a, b: (a, b * 2.0), 2.0, 5.0))
    msg.inputs[0].dtype = "tape"
    msg.outputs[0].dtype = "tape"
    err = rejected(msg.SerializeToString(), "inputs[0]")
    assert "float64" in str(err)
    expect_invalid(address, msg.SerializeToString(), args_of(2, 5), "inputs[0]")


def scan_record_message():
    """A scan renamed scan_record (same attributes, one more output: the tape)."""
    graph = gs.trace(lambda x: gs.scan(lambda c, xi: (c * xi, c), x, np.arange(3.0)), 1.0)
    msg = message(graph)
    (node,) = msg.nodes
    assert node.op == "scan"
    node.op = "scan_record"
    node.outputs.append("the_tape")
    return msg


def test_internal_ops_are_rejected_on_the_wire(address):
    msg = scan_record_message()
    err = rejected(msg.SerializeToString(), "node 0", "scan_record")
    assert "internal" in str(err)
    expect_invalid(address, msg.SerializeToString(), args_of(1.0), "node 0", "scan_record")


def test_internal_ops_are_rejected_inside_subgraphs_at_any_depth(address):
    def f(x):
        def outer_body(c, xi):
            inner = gs.scan(lambda d, y: (d * y + xi, d), c, np.arange(2.0))
            return inner[0], c

        return gs.cond(x > 0, lambda v: gs.scan(outer_body, v, np.arange(3.0))[0], lambda v: v, x)

    graph = gs.trace(f, 1.0)
    assert gs.Graph.from_bytes(graph.to_bytes()) == graph
    msg = message(graph)

    def deepest_scan(g, depth=0):
        """(depth, node) of the most deeply nested scan under `g`."""
        best = (-1, None)
        for node in g.nodes:
            if node.op == "scan" and depth > best[0]:
                best = (depth, node)
            for a in node.attributes:
                if a.WhichOneof("value") == "graph":
                    inner = deepest_scan(a.graph, depth + 1)
                    if inner[0] > best[0]:
                        best = inner
        return best

    depth, node = deepest_scan(msg)
    assert depth == 2  # cond > true_branch: scan > body: scan
    node.op = "scan_record"
    node.outputs.append("the_tape")
    err = rejected(msg.SerializeToString(), "scan_record")
    assert err.where.count(">") >= 2, err.where  # named through every enclosing node
    expect_invalid(address, msg.SerializeToString(), args_of(1.0), "scan_record")


@pytest.mark.parametrize("loop", ["while", "scan"])
def test_engine_built_graphs_with_internal_ops_do_not_decode(loop):
    """The engine itself builds graphs with loop tapes (reverse mode under a tape budget);
    they are valid Graphs, but not something a client may send."""
    if loop == "while":
        graph = gs.trace(lambda x: gs.while_loop(lambda v: v < 10, lambda v: v * 2.0, x), 1.0)
        seed = True
    else:
        graph = gs.trace(lambda x: gs.scan(lambda c, xi: (c * xi, c), x, np.arange(3.0)), 1.0)
        seed = False
    built = vjp(Program(graph), (0,), seed_ones=seed, loop_tapes=True).graph
    ops = {n.op for n in built.nodes}
    assert "loop_tape" in ops and ops & {"while_keep", "scan_record"}
    rejected(built.to_bytes())


def test_internal_dtype_in_a_dtype_attribute_is_rejected():
    msg = message(gs.trace(lambda x: gnp.astype(x, "float32"), 1.0))
    (attr,) = msg.nodes[0].attributes
    attr.s = "tape"
    msg.outputs[0].dtype = "float64"
    rejected(msg.SerializeToString(), "node 0")


# ---- 2. exactly six dtype names ----------------------------------------------------------------


@pytest.mark.parametrize("alias", ["double", "float", "f8", "<f8", ">f8", "float128", "FLOAT64"])
@pytest.mark.parametrize("field", ["inputs", "outputs"])
def test_value_info_dtype_must_be_one_of_the_six(alias, field):
    msg = message(SEED)
    getattr(msg, field)[0].dtype = alias
    err = rejected(msg.SerializeToString(), f"{field}[0]")
    assert all(name in str(err) for name in DTYPES), str(err)


@pytest.mark.parametrize("alias", ["double", "f8", ">f8", "d"])
def test_constant_dtype_must_be_one_of_the_six(alias):
    graph = gs.trace(lambda x: x * np.array([1.5, -2.0]), 1.0)
    msg = message(graph)
    value = msg.constants[0].value
    value.dtype = alias
    value.data = np.array([1.5, -2.0]).astype(">f8" if alias == ">f8" else "<f8").tobytes()
    rejected(msg.SerializeToString(), "constants[0]", "dtype")


def test_dtype_attribute_must_be_one_of_the_six():
    msg = message(gs.trace(lambda x: gnp.astype(x, "float32"), 1.0))
    (attr,) = msg.nodes[0].attributes
    for alias in (">f4", "f4", "single", "float"):
        attr.s = alias
        rejected(msg.SerializeToString(), "node 0")


def test_every_canonical_dtype_still_travels(address):
    for dtype in DTYPES:
        x = np.arange(3).astype(dtype)
        graph = gs.trace(lambda v: v[::-1], x)
        assert gs.Graph.from_bytes(graph.to_bytes()) == graph
        _, _, _, _, reply = call(address, graph.to_bytes(), [pb.TensorRef(tensor=to_tensor(x))])
        assert reply.outputs.tensor.dtype == dtype


def test_big_endian_request_tensor_is_invalid_argument_not_misread(address):
    big = graph_pb2.Tensor(dtype=">f8", data=np.array(2.0, ">f8").tobytes())
    args = [pb.TensorRef(tensor=big), *args_of(5)]
    text = expect_invalid(address, SEED.to_bytes(), args, "args[0]", reason="GraphError")
    assert "float64" in text and "bool" in text


@pytest.mark.parametrize("alias", ["double", "float", "f8"])
def test_dtype_alias_in_request_tensor_is_invalid_argument(address, alias):
    tensor = graph_pb2.Tensor(dtype=alias, data=np.array(2.0).tobytes())
    args = [pb.TensorRef(tensor=tensor), *args_of(5)]
    expect_invalid(address, SEED.to_bytes(), args, "args[0]", "dtype")


def test_big_endian_constant_is_invalid_argument_through_the_server(address):
    graph = gs.trace(lambda x: x * np.array([1.5, -2.0]), 1.0)
    msg = message(graph)
    msg.constants[0].value.dtype = ">f8"
    msg.constants[0].value.data = np.array([1.5, -2.0], ">f8").tobytes()
    expect_invalid(address, msg.SerializeToString(), args_of(1.0), "constants[0]")


# ---- 3. node limits count subgraph nodes -------------------------------------------------------


def deep_body_graph(count=50, loops=1):
    """`loops` scans in a row, each with a body of `count` nodes."""

    def body(c, xi):
        for _ in range(count // 2):
            c = gnp.sin(c) + xi
        return c, c

    def f(x):
        for _ in range(loops):
            x = gs.scan(body, x, np.arange(3.0))[0]
        return x

    graph = gs.trace(f, 1.0)
    assert len(graph.nodes) == loops
    return graph


def test_max_nodes_counts_subgraph_nodes(small_address):
    graph = deep_body_graph()  # 1 node, its body 50: each graph alone within 50
    data = graph.to_bytes()
    assert gs.Graph.from_bytes(data, gs.Limits(max_nodes=51))
    with pytest.raises(gs.LimitError) as info:
        gs.Graph.from_bytes(data, gs.Limits(max_nodes=50))
    assert "subgraphs included" in str(info.value)
    code, text, _, reason, _ = call(small_address, data, args_of(1.0))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, text)
    assert reason == "LimitError"
    # the small graph still runs there
    code, text, *_ = call(small_address, SEED.to_bytes(), args_of(2, 5))
    assert code == grpc.StatusCode.OK, text


def test_each_use_of_a_body_counts():
    graph = deep_body_graph(count=30, loops=2)  # 2 + 2 * 30 nodes, each body alone under 50
    with pytest.raises(gs.LimitError):
        gs.Graph.from_bytes(graph.to_bytes(), gs.Limits(max_nodes=50))
    # the same body object used by two nodes (as the engine may build): counted twice
    (node,) = deep_body_graph(count=30).nodes
    x = gs.Port("x", gs.Spec(()))
    xs = {"xs": np.arange(3.0)}
    nodes = [
        Node(node.op, ("x", "xs"), ("c1", "y1"), node.attrs),
        Node(node.op, ("c1", "xs"), ("c2", "y2"), node.attrs),
    ]
    gs.Graph([x], xs, nodes, ["c2"], limits=gs.Limits(max_nodes=62))
    with pytest.raises(gs.LimitError):
        gs.Graph([x], xs, nodes, ["c2"], limits=gs.Limits(max_nodes=61))
    with pytest.raises(gs.LimitError):
        gs.Graph.from_bytes(gs.Graph([x], xs, nodes, ["c2"]).to_bytes(), gs.Limits(max_nodes=61))


# ---- 4. subgraphs are closed -------------------------------------------------------------------


def test_subgraph_reading_an_enclosing_value_by_name_is_rejected(address):
    graph = gs.trace(
        lambda x, y: gs.scan(lambda c, xi: (c * xi + y, c), x, np.arange(3.0)), 1.0, 2.0
    )
    msg = message(graph)
    (node,) = msg.nodes
    assert len(node.inputs) == 3  # y entered as an explicit operand (closure conversion)
    (body,) = [a.graph for a in node.attributes if a.name == "body"]
    # read the enclosing graph's `y` by name instead of through the body's own input
    own = body.inputs[0].name
    for n in body.nodes:
        n.inputs[:] = ["y" if v == own else v for v in n.inputs]
    assert "y" not in {i.name for i in body.inputs}
    err = rejected(msg.SerializeToString(), "node 0", "body", "node")
    assert "'y'" in str(err) and "not defined" in str(err)
    expect_invalid(address, msg.SerializeToString(), args_of(1.0, 2.0), "body")


def test_subgraph_names_are_its_own():
    """A closed body may reuse a name of the enclosing graph: it is another value."""
    graph = gs.trace(lambda x: gs.scan(lambda c, xi: (c * xi, c), x, np.arange(3.0)), 1.0)
    msg = message(graph)
    (body,) = [a.graph for a in msg.nodes[0].attributes if a.name == "body"]
    old = body.inputs[0].name
    body.inputs[0].name = "x"  # the enclosing graph's input name
    for n in body.nodes:
        n.inputs[:] = ["x" if v == old else v for v in n.inputs]
    body.outputs[1].name = "x"
    again = gs.Graph.from_bytes(msg.SerializeToString())
    assert np.allclose(gs.Engine().evaluate(again, 2.0)[1], gs.Engine().evaluate(graph, 2.0)[1])


# ---- 5. the op set version ---------------------------------------------------------------------


def test_traced_graphs_carry_the_current_opset():
    OPSET = graph_module.OPSET
    assert OPSET == 1
    assert SEED.opset == OPSET
    assert gs.Graph.from_bytes(SEED.to_bytes()).opset == OPSET


def test_opset_absent_zero_and_explicit_1_are_the_same_graph():
    msg = message(SEED)
    assert msg.opset == 0  # the canonical encoding leaves version 1 implicit: digests unchanged
    msg.opset = 1
    explicit = gs.Graph.from_bytes(msg.SerializeToString())
    assert explicit.opset == 1 and explicit.digest == SEED.digest
    assert explicit.to_bytes() == SEED.to_bytes()


def test_newer_opset_is_invalid_argument_naming_the_field(address):
    OPSET = graph_module.OPSET
    msg = message(SEED)
    msg.opset = OPSET + 1
    err = rejected(msg.SerializeToString(), "opset")
    assert f"{OPSET + 1}" in str(err) and f"supports op set version {OPSET}" in str(err)
    text = expect_invalid(address, msg.SerializeToString(), args_of(2, 5), "opset")
    assert str(OPSET) in text
    msg.opset = 1
    code, text, *_ = call(address, msg.SerializeToString(), args_of(2, 5))
    assert code == grpc.StatusCode.OK, text


def test_subgraph_opset_must_be_unset_or_the_enclosing_one():
    graph = gs.trace(lambda x: gs.scan(lambda c, xi: (c * xi, c), x, np.arange(3.0)), 1.0)
    msg = message(graph)
    (attr,) = [a for a in msg.nodes[0].attributes if a.name == "body"]
    attr.graph.opset = 1
    assert gs.Graph.from_bytes(msg.SerializeToString()) == graph
    attr.graph.opset = 2
    rejected(msg.SerializeToString(), "body", "opset")
