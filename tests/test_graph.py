"""The graph: tracing, the wire format (exact round trip, stable digest), and validation of
every graph that comes in as bytes: each failure is a GraphError naming the node or field,
and nothing but GraphError ever comes out of Graph.from_bytes."""

import tracemalloc
import warnings

import numpy as np
import pytest
from gradserve.v1 import graph_pb2 as pb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradserve as gs
import gradserve.numpy as gnp

ENG = gs.Engine()
W = np.array([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]])


def model(x, bias, idx):
    h = gnp.tanh(W @ x + bias)  # constant W, einsum, add, tanh
    picked = h[idx]  # integer-array index input
    z = gnp.concatenate([picked, h[::-1]], axis=0)  # slice with a negative step
    return gnp.sum(gs.nn.softmax(z) * gnp.arange(z.shape[0])), gnp.max(h, keepdims=True)


MODEL_ARGS = (np.array([0.5, -1.0, 2.0]), np.array([0.1, -0.2]), np.array([1, 0, 1]))


def model_graph():
    return gs.trace(model, *MODEL_ARGS)


def message(graph) -> pb.Graph:
    return pb.Graph.FromString(graph.to_bytes())


def decode(msg: pb.Graph) -> gs.Graph:
    return gs.Graph.from_bytes(msg.SerializeToString())


def expect_graph_error(msg, *where_parts):
    """from_bytes fails with a GraphError whose `where` and message name the culprit."""
    with pytest.raises(gs.GraphError) as info:
        decode(msg)
    err = info.value
    assert isinstance(err, ValueError)
    for part in where_parts:
        assert part in err.where, f"{part!r} not in where={err.where!r} ({err})"
        assert part in str(err)
    return err


# ---- tracing -----------------------------------------------------------------------------------


def test_inputs_are_named_after_parameters():
    def f(alpha, beta, *rest):
        return alpha * beta + rest[0] + rest[1]

    graph = gs.trace(f, 1.0, 2.0, 3.0, 4.0)
    names = [p.name for p in graph.inputs]
    assert names[:2] == ["alpha", "beta"]
    assert len(set(names)) == 4
    assert all(name for name in names[2:])
    assert [p.spec for p in graph.inputs] == [gs.Spec((), "float64")] * 4
    lam = gs.trace(lambda weights, data: weights @ data, np.ones((2, 3)), np.ones(3))
    assert [p.name for p in lam.inputs] == ["weights", "data"]
    assert lam.inputs[0].spec == gs.Spec((2, 3)) and lam.outputs[0].spec == gs.Spec((2,))


def test_spec_and_example_dtypes():
    graph = gs.trace(
        lambda a, b, c, d, e: a, gs.Spec((2, 3), "float32"), 1, True, np.zeros(2, np.int32), 1.5
    )
    assert [p.spec for p in graph.inputs] == [
        gs.Spec((2, 3), "float32"),
        gs.Spec((), "int64"),
        gs.Spec((), "bool"),
        gs.Spec((2,), "int32"),
        gs.Spec((), "float64"),
    ]
    with pytest.raises(TypeError):
        gs.trace(lambda a: a, "text")
    with pytest.raises(TypeError):
        gs.Spec((2,), "float16")


def test_closures_become_constants():
    table = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    graph = gs.trace(lambda x: gnp.sum(table @ x), np.ones(2))
    assert [p.name for p in graph.inputs] == ["x"]
    constants = [
        np.frombuffer(c.value.data, dtype=c.value.dtype).reshape(tuple(c.value.shape))
        for c in message(graph).constants
    ]
    assert any(c.shape == table.shape and np.array_equal(c, table) for c in constants)
    x = np.array([0.5, -1.0])
    assert float(ENG.evaluate(graph, x)) == pytest.approx(np.sum(table @ x))
    # the constant is captured at trace time: later mutation of the array does not change it
    table[0, 0] = 100.0
    assert float(ENG.evaluate(graph, x)) == pytest.approx(
        np.sum(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]) @ x)
    )


def test_python_numbers_in_closures_become_constants():
    scale = 2.5
    graph = gs.trace(lambda x: x * scale + 1, 1.0)
    assert len(graph.inputs) == 1
    assert float(ENG.evaluate(graph, 2.0)) == 6.0


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x if x > 0 else -x,
        lambda x: bool(x),
        lambda x: float(x),
        lambda x: int(x),
        lambda x: [x for _ in range(int(x))],
        lambda x: x * (1 if x == 0 else 2),
        lambda x: np.asarray(x),
    ],
    ids=["if", "bool", "float", "int", "range", "ternary_eq", "asarray"],
)
def test_python_control_flow_on_traced_values_is_an_error(fn):
    with pytest.raises(TypeError) as info:
        gs.trace(fn, 1.0)
    assert isinstance(info.value, gs.TracerBoolError)
    text = str(info.value)
    assert "gs.cond" in text and "gs.while_loop" in text


def test_while_on_traced_value_is_an_error():
    def f(x):
        while x < 10:
            x = x * 2
        return x

    with pytest.raises(gs.TracerBoolError, match="gs.while_loop"):
        gs.trace(f, 1.0)


def test_shape_errors_at_trace_time_are_graph_errors():
    with pytest.raises(gs.GraphError):
        gs.trace(lambda a, b: a + b, np.ones(3), np.ones(4))
    with pytest.raises((gs.GraphError, ValueError)):
        gs.trace(lambda a, b: a @ b, np.ones((2, 3)), np.ones((2, 3)))


# ---- wire round trip and digest ----------------------------------------------------------------


def test_round_trip_exact():
    graph = model_graph()
    data = graph.to_bytes()
    assert isinstance(data, bytes)
    again = gs.Graph.from_bytes(data)
    assert again.to_bytes() == data
    assert again.digest == graph.digest
    assert str(again) == str(graph)
    assert [p.name for p in again.inputs] == [p.name for p in graph.inputs]
    assert [p.spec for p in again.inputs] == [p.spec for p in graph.inputs]
    assert [p.spec for p in again.outputs] == [p.spec for p in graph.outputs]
    for a, b in zip(ENG.evaluate(graph, *MODEL_ARGS), ENG.evaluate(again, *MODEL_ARGS)):
        np.testing.assert_array_equal(a, b)
    ga = ENG.vjp(graph, MODEL_ARGS, (1.0, np.ones(1)))[1]
    gb = ENG.vjp(again, MODEL_ARGS, (1.0, np.ones(1)))[1]
    for a, b in zip(ga, gb):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", ["float64", "float32", "complex128", "int32", "int64", "bool"])
def test_round_trip_constants_of_every_dtype(dtype):
    rng = np.random.default_rng(0)
    value = (
        (rng.normal(size=(2, 3)) * 10).astype(dtype)
        if dtype != "complex128"
        else rng.normal(size=(2, 3)) + 1j * rng.normal(size=(2, 3))
    )
    value = value.astype(dtype)
    graph = gs.trace(lambda x: (x, value, x), np.zeros((2, 3), dtype))
    again = gs.Graph.from_bytes(graph.to_bytes())
    assert again.digest == graph.digest
    out = ENG.evaluate(again, np.zeros((2, 3), dtype))
    assert out[1].dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out[1], value)


def test_round_trip_special_float_values():
    special = np.array([np.inf, -np.inf, -0.0, 5e-324, np.finfo(float).max])
    graph = gs.trace(lambda x: (x, special), np.zeros(5))
    again = gs.Graph.from_bytes(graph.to_bytes())
    out = ENG.evaluate(again, np.zeros(5))[1]
    np.testing.assert_array_equal(out, special)
    assert np.signbit(out[2])
    nan_graph = gs.trace(lambda x: x * np.array([np.nan, 1.0]), np.ones(2))
    assert gs.Graph.from_bytes(nan_graph.to_bytes()).digest == nan_graph.digest


def test_wire_is_little_endian_raw_bytes():
    value = np.array([1.0, 2.0, 3.0])
    graph = gs.trace(lambda x: x * value, np.ones(3))
    (const,) = [c for c in message(graph).constants if tuple(c.value.shape) == (3,)]
    assert const.value.dtype == "float64"
    assert const.value.data == value.astype("<f8").tobytes()


def test_digest_stable_and_content_addressed():
    a, b = model_graph(), model_graph()
    assert a.digest == b.digest and a.to_bytes() == b.to_bytes()
    assert isinstance(a.digest, str) and int(a.digest, 16) >= 0
    assert a == b and hash(a) == hash(b)
    # a different constant, a different op or a different input shape: a different digest
    c1 = gs.trace(lambda x: x * np.array([1.0, 2.0]), np.ones(2))
    c2 = gs.trace(lambda x: x * np.array([1.0, 2.5]), np.ones(2))
    c3 = gs.trace(lambda x: x + np.array([1.0, 2.0]), np.ones(2))
    c4 = gs.trace(lambda x: x * np.array([1.0, 2.0]), np.ones((3, 2)))
    assert len({c1.digest, c2.digest, c3.digest, c4.digest}) == 4


def test_digest_same_in_another_process():
    import subprocess
    import sys

    code = (
        "import numpy as np, gradserve as gs, gradserve.numpy as gnp\n"
        "print(gs.trace(lambda x, y: gnp.sum(gnp.sin(x) * y + np.arange(3.0)), np.ones(3), 1.0).digest)"
    )
    here = gs.trace(lambda x, y: gnp.sum(gnp.sin(x) * y + np.arange(3.0)), np.ones(3), 1.0).digest
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert there.stdout.strip() == here


def test_str_lists_the_program():
    graph = gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0)
    text = str(graph)
    for word in ("x1", "x2", "log", "multiply", "sin", "float64"):
        assert word in text
    assert repr(graph)


# ---- validation: every failure is a GraphError naming the node or field --------------------------


def seed_message():
    return message(gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0))


def test_valid_message_decodes():
    assert (
        decode(seed_message()).digest
        == gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0).digest
    )


def test_unknown_op():
    msg = seed_message()
    msg.nodes[1].op = "frobnicate"
    err = expect_graph_error(msg, "node 1")
    assert "frobnicate" in str(err)


def test_wrong_arity():
    msg = seed_message()
    msg.nodes[1].inputs.append("x1")  # multiply with three inputs
    expect_graph_error(msg, "node 1")
    msg = seed_message()
    del msg.nodes[0].inputs[:]  # log with none
    expect_graph_error(msg, "node 0")


def test_redefined_value_breaks_ssa():
    msg = seed_message()
    msg.nodes[2].outputs[0] = msg.nodes[0].outputs[0]
    err = expect_graph_error(msg, "node 2")
    assert msg.nodes[0].outputs[0] in str(err)
    msg = seed_message()
    msg.nodes[0].outputs[0] = "x1"  # redefines an input
    expect_graph_error(msg, "node 0")


def test_duplicate_inputs_and_constants():
    msg = seed_message()
    msg.inputs[1].name = "x1"
    expect_graph_error(msg, "inputs[1]")
    graph = gs.trace(lambda x: x * np.array([1.0, 2.0]) + np.array([3.0, 4.0]), np.ones(2))
    msg = message(graph)
    msg.constants[1].name = msg.constants[0].name
    expect_graph_error(msg, "constants")


def test_use_before_definition():
    msg = seed_message()
    nodes = list(msg.nodes)
    del msg.nodes[:]
    msg.nodes.extend([nodes[2], nodes[0], nodes[1], nodes[3], nodes[4]])  # add before its inputs
    err = expect_graph_error(msg, "node 0")
    assert "topological" in str(err)


def test_undefined_input():
    msg = seed_message()
    msg.nodes[3].inputs[0] = "nowhere"
    err = expect_graph_error(msg, "node 3")
    assert "nowhere" in str(err)


def test_undefined_output():
    msg = seed_message()
    msg.outputs[0].name = "missing"
    expect_graph_error(msg, "outputs[0]")


@pytest.mark.parametrize("change", ["shape", "dtype", "rank"])
def test_declared_output_inconsistent_with_inference(change):
    msg = seed_message()
    if change == "shape":
        msg.outputs[0].shape.append(3)
    elif change == "dtype":
        msg.outputs[0].dtype = "float32"
    else:
        msg.outputs[0].shape.extend([1, 1])
    expect_graph_error(msg, "outputs[0]")


def test_shape_inference_failure_names_the_node():
    graph = gs.trace(lambda a, b: a + b, np.ones(3), np.ones(3))
    msg = message(graph)
    msg.inputs[1].shape[0] = 4
    expect_graph_error(msg, "node 0")


def test_bad_input_declarations():
    msg = seed_message()
    msg.inputs[0].dtype = "float16"
    expect_graph_error(msg, "inputs[0]")
    msg = seed_message()
    msg.inputs[0].shape.append(-2)
    expect_graph_error(msg, "inputs[0]")
    msg = seed_message()
    msg.inputs[0].name = ""
    with pytest.raises(gs.GraphError):
        decode(msg)


def constant_message(shape=(3,), dtype="float64"):
    value = np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    return message(gs.trace(lambda x: x * value, np.ones(shape, dtype)))


@pytest.mark.parametrize("delta", [-1, 1, -8, 8])
def test_tensor_byte_length_must_match_shape(delta):
    msg = constant_message()
    tensor = msg.constants[0].value
    tensor.data = tensor.data[:delta] if delta < 0 else tensor.data + b"\0" * delta
    err = expect_graph_error(msg, "constants[0]")
    assert "data" in err.where or "bytes" in str(err)


def test_tensor_shape_disagreeing_with_use():
    msg = constant_message()
    tensor = msg.constants[0].value
    tensor.shape[:] = [1, 3]
    tensor.data = tensor.data  # same byte count, other shape: consistent tensor, inference decides
    decoded_or_error = None
    try:
        decoded_or_error = decode(msg)
    except gs.GraphError as err:
        decoded_or_error = err
    # x * c with c of shape (1, 3) broadcasts to (1, 3): the declared output (3,) disagrees
    assert isinstance(decoded_or_error, gs.GraphError)


def test_huge_shape_with_tiny_data_is_rejected_without_allocating():
    msg = constant_message()
    tensor = msg.constants[0].value
    tensor.shape[:] = [10**6, 10**6]  # 10**12 elements
    tensor.data = b"\0" * 8
    tracemalloc.start()
    try:
        with pytest.raises(gs.GraphError) as info:
            decode(msg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # nothing near 8 TB (or even 8 MB of it) was allocated
    assert "constants[0]" in info.value.where
    assert (
        isinstance(info.value, gs.LimitError)
        or "limit" in str(info.value).lower()
        or "bytes" in str(info.value)
    )


def test_limit_error_is_a_graph_error():
    assert issubclass(gs.LimitError, gs.GraphError)


def test_huge_declared_input_is_a_limit_error():
    msg = seed_message()
    msg.inputs[0].shape.extend([10**6, 10**6])
    with pytest.raises(gs.GraphError):
        decode(msg)


def test_node_count_limit():
    data = gs.trace(lambda x: gnp.sin(gnp.sin(gnp.sin(gnp.sin(x)))), 1.0).to_bytes()
    assert gs.Graph.from_bytes(data)  # within default limits
    with pytest.raises(gs.LimitError):
        gs.Graph.from_bytes(data, gs.Limits(max_nodes=2))


def test_bad_dtype_in_tensor():
    msg = constant_message()
    msg.constants[0].value.dtype = "float128"
    expect_graph_error(msg, "constants[0]")


def reduce_message():
    return message(gs.trace(lambda x: gnp.sum(x, axis=1, keepdims=True), np.ones((2, 3))))


@pytest.mark.parametrize(
    "attr, mutate",
    [
        ("axes", lambda a: a.ClearField("ints") or setattr(a, "f", 1.0)),  # ints given as a float
        ("axes", lambda a: a.ClearField("ints") or setattr(a, "s", "1")),  # ints given as a string
        ("keepdims", lambda a: setattr(a, "i", 1)),  # bool given as an int
        ("keepdims", lambda a: a.ClearField("b")),  # no value at all
        ("axes", lambda a: a.ints.values.append(7)),  # right type, bad value
    ],
    ids=["axes_float", "axes_str", "keepdims_int", "keepdims_missing_value", "axes_out_of_range"],
)
def test_bad_attribute(attr, mutate):
    msg = reduce_message()
    (a,) = [a for a in msg.nodes[0].attributes if a.name == attr]
    mutate(a)
    err = expect_graph_error(msg, "node 0")
    assert attr in str(err) or "ax" in str(err)


def test_missing_and_unexpected_attributes():
    msg = reduce_message()
    del msg.nodes[0].attributes[0]
    expect_graph_error(msg, "node 0")
    msg = reduce_message()
    msg.nodes[0].attributes.add(name="colour", s="blue")
    err = expect_graph_error(msg, "node 0")
    assert "colour" in str(err)
    msg = reduce_message()
    msg.nodes[0].attributes.add(name="keepdims", b=False)
    expect_graph_error(msg, "node 0")


def test_bad_index_attribute():
    msg = message(gs.trace(lambda x: x[1:3], np.ones(4)))
    (a,) = msg.nodes[0].attributes
    a.ints.values[1] = 99  # slice start beyond the axis
    expect_graph_error(msg, "node 0")
    a.ints.values[:] = [0, 1]  # not four ints per entry
    expect_graph_error(msg, "node 0")


def test_wrong_output_count():
    msg = seed_message()
    msg.nodes[0].outputs.append("extra")
    expect_graph_error(msg, "node 0")


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff\xff",
        b"\x0a\xff",
        b"\x0a\x05abc",
        b"garbage that is not protobuf",
        bytes(range(256)),
    ],
)
def test_undecodable_bytes(data):
    with pytest.raises(gs.GraphError) as info:
        gs.Graph.from_bytes(data)
    assert info.value.where


def test_deeply_nested_message_is_a_graph_error():
    # an attribute holding a graph holding an attribute ... 10000 levels deep
    inner = b""
    for _ in range(2000):
        attr = b"\x42" + _varint(len(inner)) + inner  # Attribute.graph (field 8)
        node = b"\x22" + _varint(len(attr)) + attr  # Node.attributes (field 4)
        inner = b"\x1a" + _varint(len(node)) + node  # Graph.nodes (field 3)
    with pytest.raises(gs.GraphError):
        gs.Graph.from_bytes(inner)


def _varint(n):
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def test_empty_bytes_is_an_empty_graph_or_graph_error():
    try:
        graph = gs.Graph.from_bytes(b"")
    except gs.GraphError:
        return
    assert len(graph.inputs) == 0 and len(graph.outputs) == 0


def control_flow_graph():
    def f(x, w):
        y = gs.cond(gnp.sum(x) > 0, lambda a: a * w, lambda a: a - w, x)

        def body(c, xi):
            c = gnp.sin(c) * xi + w[0]
            return c, c * 2

        c, ys = gs.scan(body, 0.5, y)
        z = gs.fori_loop(0, 3, lambda i, v: v * 0.9 + w[1], c)
        return gnp.sum(ys) + z

    return gs.trace(f, np.array([0.5, 1.0, -0.2]), np.array([0.3, 0.7, 0.1]))


def test_round_trip_with_subgraphs():
    graph = control_flow_graph()
    data = graph.to_bytes()
    again = gs.Graph.from_bytes(data)
    assert again.to_bytes() == data and again.digest == graph.digest and str(again) == str(graph)
    assert control_flow_graph().digest == graph.digest
    args = (np.array([0.5, 1.0, -0.2]), np.array([0.3, 0.7, 0.1]))
    a = ENG.value_and_grad(graph, *args, argnums=(0, 1))
    b = ENG.value_and_grad(again, *args, argnums=(0, 1))
    assert float(a[0]) == float(b[0])
    for x, y in zip(a[1], b[1]):
        np.testing.assert_array_equal(x, y)


def test_escaped_tracer_is_an_error():
    leaked = []
    gs.trace(lambda x: leaked.append(x) or x * 2, 1.0)
    with pytest.raises(gs.GraphError, match="escaped"):
        gs.trace(lambda y: y + leaked[0], 1.0)


# ---- random corruption: only GraphError may come out ---------------------------------------------

CORPUS = None


def corpus():
    global CORPUS
    if CORPUS is None:
        CORPUS = [
            model_graph().to_bytes(),
            gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0).to_bytes(),
            gs.trace(
                lambda x: (
                    gnp.cumsum(x, axis=0)[:, None] * np.ones((1, 2), np.float32),
                    gnp.argmax(x),
                    x.T @ x,
                ),
                np.ones((3, 2), np.float32),
            ).to_bytes(),
            control_flow_graph().to_bytes(),
        ]
    return CORPUS


@st.composite
def corruptions(draw):
    data = bytearray(corpus()[draw(st.integers(0, len(corpus()) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif kind == "truncate":
            del data[at:]
    return bytes(data)


def _random_inputs(graph, rng):
    args = []
    for port in graph.inputs:
        spec = port.spec
        if spec.dtype in ("int32", "int64"):
            args.append(np.zeros(spec.shape, spec.dtype))  # valid as an index everywhere
        elif spec.dtype == "bool":
            args.append(rng.random(spec.shape) > 0.5)
        else:
            args.append(rng.normal(size=spec.shape).astype(spec.dtype))
    return args


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=corruptions())
def test_random_corruption_only_graph_error(data):
    try:
        graph = gs.Graph.from_bytes(data)
    except gs.GraphError:
        return
    # it decoded: it is a valid graph, whose encoding round-trips
    again = gs.Graph.from_bytes(graph.to_bytes())
    assert again.digest == graph.digest
    # and what it computes has the shapes and dtypes it declares
    if sum(p.spec.size for p in graph.inputs) <= 10**5:
        outs = ENG.evaluate(graph, *_random_inputs(graph, np.random.default_rng(0)))
        outs = outs if isinstance(outs, tuple) else (outs,)
        for out, port in zip(outs, graph.outputs):
            assert out.shape == port.spec.shape and out.dtype == np.dtype(port.spec.dtype)


OPS_TO_TRY = [
    "add",
    "multiply",
    "sin",
    "log",
    "reduce_sum",
    "reshape",
    "transpose",
    "einsum",
    "getitem",
    "concatenate",
    "select",
    "broadcast_to",
    "convert",
    "nonexistent",
    "",
]


@st.composite
def field_mutations(draw):
    """Structured edits of a valid message: other ops, other value names, other attribute
    values, other declared types."""
    msg = pb.Graph.FromString(corpus()[draw(st.integers(0, len(corpus()) - 1))])
    names = (
        [i.name for i in msg.inputs]
        + [c.name for c in msg.constants]
        + [o for n in msg.nodes for o in n.outputs]
        + ["", "zzz"]
    )
    for _ in range(draw(st.integers(1, 3))):
        node = msg.nodes[draw(st.integers(0, len(msg.nodes) - 1))]
        kind = draw(
            st.sampled_from(
                [
                    "op",
                    "input",
                    "output",
                    "attr_int",
                    "attr_ints",
                    "attr_str",
                    "out_shape",
                    "out_dtype",
                    "in_shape",
                    "const_shape",
                ]
            )
        )
        if kind == "op":
            node.op = draw(st.sampled_from(OPS_TO_TRY))
        elif kind == "input" and node.inputs:
            node.inputs[draw(st.integers(0, len(node.inputs) - 1))] = draw(st.sampled_from(names))
        elif kind == "output":
            node.outputs[0] = draw(st.sampled_from(names))
        elif kind == "attr_int" and node.attributes:
            attr = node.attributes[draw(st.integers(0, len(node.attributes) - 1))]
            attr.i = draw(st.integers(-3, 2**40))
        elif kind == "attr_ints" and node.attributes:
            attr = node.attributes[draw(st.integers(0, len(node.attributes) - 1))]
            attr.ints.values[:] = draw(st.lists(st.integers(-3, 12), max_size=9))
        elif kind == "attr_str" and node.attributes:
            attr = node.attributes[draw(st.integers(0, len(node.attributes) - 1))]
            attr.s = draw(
                st.sampled_from(
                    ["ij->", "i,i->i", "->", "ab,bc->ac", "float64", "int8", "", "a->aa"]
                )
            )
        elif kind == "out_shape":
            msg.outputs[0].shape[:] = draw(st.lists(st.integers(-1, 4), max_size=3))
        elif kind == "out_dtype":
            msg.outputs[0].dtype = draw(
                st.sampled_from(["float64", "float32", "int64", "bool", "x"])
            )
        elif kind == "in_shape":
            msg.inputs[0].shape[:] = draw(st.lists(st.integers(0, 4), max_size=3))
        elif kind == "const_shape" and msg.constants:
            msg.constants[0].value.shape[:] = draw(st.lists(st.integers(-1, 6), max_size=3))
    return msg.SerializeToString()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=field_mutations())
def test_field_mutations_only_graph_error(data):
    test_random_corruption_only_graph_error.hypothesis.inner_test(data)


# ---- generated graphs: whatever the checker accepts runs, and computes what it declares --------

from gradserve.engine.graph import Graph, Node, Port, Spec  # noqa: E402  (engine internals)
from gradserve.engine.primitive import PRIMITIVES  # noqa: E402

GEN_OPS = sorted(n for n, p in PRIMITIVES.items() if "graph" not in p.attrs.values())
GEN_DTYPES = ["float64", "float32", "int64", "int32", "bool", "complex128"]
GEN_STRS = {
    "dtype": GEN_DTYPES + ["float16", "double", ">f8", "tape"],
    "subscripts": [
        "ij->ji",
        "i->",
        "ij,jk->ik",
        "i,i->",
        "ii->i",
        "i,j->ij",
        "ab->b",
        "->",
        "a,a->a",
        "ij->i",
    ],
}


@st.composite
def generated_graphs(draw):
    """A few nodes of any op, on any values, with attributes of the right kinds and arbitrary
    (often wrong) values: the shape rules decide."""
    inputs = []
    for k in range(draw(st.integers(1, 3))):
        spec = Spec(
            tuple(draw(st.lists(st.integers(0, 3), max_size=3))), draw(st.sampled_from(GEN_DTYPES))
        )
        inputs.append(Port(f"in{k}", spec))
    constants = {}
    if draw(st.booleans()):
        constants["c0"] = np.array(
            draw(st.lists(st.integers(0, 2), min_size=1, max_size=3)),
            dtype=draw(st.sampled_from(["int64", "float64"])),
        )
    names = [p.name for p in inputs] + list(constants)
    nodes = []
    for k in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(GEN_OPS))
        prim = PRIMITIVES[op]
        low, high = prim.arity
        count = draw(st.integers(low, high if high is not None else low + 2))
        args = tuple(draw(st.sampled_from(names)) for _ in range(count))
        attrs = {}
        for name, kind in prim.attrs.items():
            if kind == "int":
                attrs[name] = draw(st.integers(-2, 3))
            elif kind == "float":
                attrs[name] = draw(st.sampled_from([0.0, 1.5, -2.0]))
            elif kind == "bool":
                attrs[name] = draw(st.booleans())
            elif kind in ("str", "dtype"):
                attrs[name] = draw(st.sampled_from(GEN_STRS.get(name, ["x"])))
            elif kind == "ints" and name == "index":
                entries = []
                for _ in range(draw(st.integers(0, 3))):
                    entries += [
                        draw(st.integers(0, 3)),
                        draw(st.integers(-1, 3)),
                        draw(st.integers(-1, 3)),
                        draw(st.sampled_from([1, -1, 2])),
                    ]
                attrs[name] = tuple(entries)
            elif kind == "ints":
                attrs[name] = tuple(draw(st.lists(st.integers(-1, 3), max_size=3)))
        nodes.append(Node(op, args, (f"v{k}",), attrs))
        names.append(f"v{k}")
    return inputs, constants, nodes, [names[-1]]


def _sample_for(spec, rng):
    if spec.dtype in ("int32", "int64"):
        return np.zeros(spec.shape, spec.dtype)  # a valid index on every axis
    if spec.dtype == "bool":
        return rng.random(spec.shape) > 0.5
    if spec.dtype == "complex128":
        return rng.normal(size=spec.shape) + 1j
    return rng.normal(size=spec.shape).astype(spec.dtype)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parts=generated_graphs())
def test_generated_graphs_run_as_declared(parts):
    inputs, constants, nodes, outputs = parts
    try:
        graph = Graph(inputs, constants, nodes, outputs)
    except gs.GraphError:
        return
    rng = np.random.default_rng(0)
    args = [_sample_for(p.spec, rng) for p in graph.inputs]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NumPy's warnings never leak
        out = ENG.evaluate(graph, *args)
        assert out.shape == graph.outputs[0].spec.shape, str(graph)
        assert out.dtype == np.dtype(graph.outputs[0].spec.dtype), str(graph)
        assert gs.Graph.from_bytes(graph.to_bytes()).digest == graph.digest
        out_spec = graph.outputs[0].spec
        if out_spec.dtype in ("float64", "float32", "complex128") and any(
            p.spec.dtype in ("float64", "float32", "complex128") for p in graph.inputs
        ):
            tangents = [_sample_for(p.spec, rng) for p in graph.inputs]
            _, tangent = ENG.jvp(graph, args, tangents)
            assert tangent.shape == out_spec.shape
            _, cts = ENG.vjp(graph, args, _sample_for(out_spec, rng))
            assert [c.shape for c in cts] == [p.spec.shape for p in graph.inputs]


# regressions the generated graphs found


def test_logsumexp_of_integers_is_rejected():
    with pytest.raises(gs.GraphError):
        Graph(
            [Port("n", Spec((3,), "int64"))],
            {},
            [Node("logsumexp", ("n",), ("y",), {"axes": (0,), "keepdims": False})],
            ["y"],
        )


def test_add_at_dtype_mismatch_is_rejected():
    with pytest.raises(gs.GraphError):
        Graph(
            [Port("u", Spec((), "float64"))],
            {"c": np.array([0])},
            [Node("add_at", ("c", "u"), ("y",), {"index": (1, 0, 0, 0)})],
            ["y"],
        )


def test_add_at_on_a_scalar_result():
    graph = Graph(
        [Port("x", Spec((), "float64"))],
        {},
        [Node("abs", ("x",), ("a",), {}), Node("add_at", ("a", "x"), ("y",), {"index": ()})],
        ["y"],
    )
    assert float(ENG.evaluate(graph, -2.0)) == 0.0


def test_complex_extremum_of_zero_size():
    graph = Graph(
        [Port("z", Spec((0, 0, 1), "complex128"))],
        {},
        [Node("reduce_max", ("z",), ("y",), {"axes": (2,), "keepdims": False})],
        ["y"],
    )
    assert ENG.evaluate(graph, np.zeros((0, 0, 1), complex)).shape == (0, 0)


def test_convert_complex_to_real_without_warning():
    graph = gs.trace(lambda z: gnp.astype(z, "float64"), np.ones(2, complex))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(ENG.evaluate(graph, np.array([1 + 2j, 3 - 1j])), [1.0, 3.0])


def test_digest_is_of_the_canonical_encoding():
    graph = gs.trace(lambda x: gnp.sum(x[1:, None] * 2.0, axis=0, keepdims=True), np.ones((3, 2)))
    msg = message(graph)
    for node in msg.nodes:  # attributes out of order on the wire
        attrs = list(node.attributes)[::-1]
        del node.attributes[:]
        node.attributes.extend(attrs)
    shuffled = msg.SerializeToString()
    decoded = gs.Graph.from_bytes(shuffled)
    assert decoded.digest == graph.digest and decoded.to_bytes() == graph.to_bytes()
    # an unknown field (a newer writer) does not change what the graph is
    extended = graph.to_bytes() + b"\x78\x01"  # field 15, varint 1
    assert gs.Graph.from_bytes(extended).digest == graph.digest


@pytest.mark.parametrize("make", ["full", "broadcast_to", "reshape_chain"])
def test_huge_intermediate_values_are_rejected_before_running(make):
    huge = (10**6, 10**6)
    x = Port("x", Spec((), "float64"))
    if make == "full":
        nodes = [Node("full", (), ("y",), {"shape": huge, "dtype": "float64", "value": 0.0})]
    elif make == "broadcast_to":
        nodes = [Node("broadcast_to", ("x",), ("y",), {"shape": huge})]
    else:
        nodes = [
            Node("broadcast_to", ("x",), ("b",), {"shape": (10**6,)}),
            Node("einsum", ("b", "b"), ("y",), {"subscripts": "i,j->ij"}),
        ]
    tracemalloc.start()
    try:
        with pytest.raises(gs.LimitError) as info:
            Graph([x], {}, nodes, ["y"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20
    assert "node" in info.value.where


def test_name_length_limit():
    msg = seed_message()
    msg.inputs[0].name = "x" * 10_000
    for node in msg.nodes:
        node.inputs[:] = ["x" * 10_000 if n == "x1" else n for n in node.inputs]
    with pytest.raises(gs.GraphError):
        decode(msg)
