"""docs/wire.md stays true: its op reference is what the registry generates, every op is
documented with the right role, every message field and error reason is named, and the worked
example and digests are what the engine, the protocol module and a live server give."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import json_format
from gradserve.engine import dtypes, opdoc
from gradserve.engine.graph import Spec
from gradserve.engine.primitive import PRIMITIVES, ROLES, OpDoc
from gradserve.v1 import graph_pb2, service_pb2

import gradserve as gs
import gradserve.numpy as gnp
from gradserve.protocol import array_digest, from_tensor, from_value, method_path

ROOT = Path(__file__).resolve().parent.parent
WIRE = ROOT / "docs" / "wire.md"
INTERNAL = {"scan_record", "while_record", "while_keep", "loop_tape", "custom_vjp_linear"}


def wire_text() -> str:
    return WIRE.read_text()


def json_blocks() -> list[str]:
    return re.findall(r"^```json\n(.*?)^```$", wire_text(), re.MULTILINE | re.DOTALL)


# ---- the generated op reference --------------------------------------------------------------


def test_op_reference_is_current():
    text = wire_text()
    assert opdoc.update(text) == text, (
        f"docs/wire.md is stale: run `{opdoc.COMMAND}` and commit the result"
    )


def test_check_flag_reports_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "wire.md"
    stale.write_text("intro\n<!-- ops:begin -->\nold\n<!-- ops:end -->\n")
    assert opdoc.main(["--check", str(stale)]) == 1
    assert opdoc.COMMAND in capsys.readouterr().err
    assert opdoc.main([str(stale)]) == 0
    assert opdoc.main(["--check", str(stale)]) == 0
    assert stale.read_text().startswith("intro\n<!-- ops:begin")


@pytest.mark.parametrize("name", sorted(PRIMITIVES))
def test_every_op_declares_its_doc(name):
    prim = PRIMITIVES[name]
    doc = prim.doc
    assert isinstance(doc, OpDoc), f"primitive {name!r} has no doc=OpDoc(...)"
    assert doc.summary and doc.result, name
    assert doc.role in ROLES, name
    assert set(doc.attrs) == set(prim.attrs), f"{name}: document exactly its attributes"
    fixed = [n for n in doc.operands if not n.startswith("*")]
    low, high = prim.arity
    if len(fixed) == len(doc.operands):
        assert prim.arity == (len(fixed), len(fixed)), f"{name}: operands {doc.operands}"
    else:
        assert high is None and low >= len(fixed), f"{name}: operands {doc.operands}"
    if doc.probe is not None:
        assert any(r is not None for r in opdoc.result_dtypes(prim).values()), name


def test_internal_ops_are_listed_apart():
    assert {n for n, p in PRIMITIVES.items() if p.internal} == INTERNAL
    text = wire_text()
    section = text.split("### Internal ops", 1)[1]
    assert all(f"`{n}`" in section for n in INTERNAL)
    accepted = text.split("ops are accepted on the wire:", 1)[1].split("\n", 1)[0]
    assert not any(f"`{n}`" in accepted for n in INTERNAL)


def _ops_of(graph) -> set[str]:
    ops = set()
    for node in graph.nodes:
        ops.add(node.op)
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                ops |= _ops_of(value)
    return ops


def _front_end_corpus():
    """One traced function per public front-end feature: the ops they record are exactly the
    ops documented as recorded by the front ends."""
    x, v, m, sq = 0.5, np.ones(3), np.ones((2, 3)), np.eye(2)
    unary = [
        "exp", "expm1", "log", "log1p", "sqrt", "square", "sin", "cos", "tan", "arcsin",
        "arccos", "arctan", "sinh", "cosh", "tanh", "abs", "sign", "floor", "ceil", "round",
        "isfinite", "logical_not", "negative", "arcsinh", "arccosh", "arctanh",
    ]  # fmt: skip
    binary = [
        "add", "subtract", "multiply", "divide", "power", "maximum", "minimum", "logaddexp",
        "less", "less_equal", "greater", "greater_equal", "equal", "not_equal",
        "logical_and", "logical_or", "logical_xor", "mod", "arctan2", "hypot",
    ]  # fmt: skip
    jvp_sin = gs.custom_jvp(gnp.sin)
    jvp_sin.defjvp(lambda p, t: (gnp.sin(p[0]), gnp.cos(p[0]) * t[0]))
    vjp_sin = gs.custom_vjp(gnp.sin)
    vjp_sin.defvjp(lambda a: (gnp.sin(a), gnp.cos(a)), lambda c, ct: (c * ct,))
    corpus = [(getattr(gnp, n), (x,)) for n in unary]
    corpus += [(getattr(gnp, n), (x, 2.0)) for n in binary]
    corpus += [
        (lambda a: gnp.where(a > 0, a, 1.0), (x,)),
        (lambda a: gnp.astype(a, "float32"), (x,)),
        (lambda a: (gnp.sum(a), gnp.max(a), gnp.min(a), gnp.prod(a)), (v,)),
        (lambda a: (gs.nn.logsumexp(a), gnp.argmax(a), gnp.argmin(a), gnp.cumsum(a)), (v,)),
        (lambda a: gnp.argsort(a), (v,)),
        (lambda a: (gnp.imag(a), gnp.conj(a)), (0.5 + 1j,)),
        (lambda a: (a.reshape(3, 2), a.T, gnp.flip(a, 0), gnp.concatenate([a, a])), (m,)),
        (lambda a: (gnp.broadcast_to(a, (4, 3)), gnp.zeros((2,)) + a[0]), (v,)),
        (lambda a: (a @ a.T, a[0, 1:]), (m,)),
        (lambda a: gs.cond(a > 0, lambda b: b, lambda b: -b, a), (x,)),
        (lambda a: gs.checkpoint(gnp.sin)(a), (x,)),
        (lambda a: (jvp_sin(a), vjp_sin(a)), (x,)),
        (lambda a: gs.scan(lambda c, y: (c + y, c), 0.0, a), (v,)),
        (lambda a: gs.while_loop(lambda c: c < 10.0, lambda c: c * 2.0, a), (x,)),
        (lambda a: (gnp.linalg.solve(a, a), gnp.linalg.det(a), *gnp.linalg.slogdet(a)), (sq,)),
        (lambda a: (gnp.linalg.cholesky(a), *gnp.linalg.eigh(a), *gnp.linalg.qr(a)), (sq,)),
        (lambda a: tuple(gnp.linalg.svd(a, full_matrices=False)), (m,)),
        (lambda a: (*gnp.linalg.svd(a), *gnp.linalg.qr(a.T, mode="complete")), (m,)),
        (lambda a: tuple(gnp.linalg.eig(a)), (sq,)),
    ]
    return corpus


def test_roles_match_the_front_ends():
    recorded = set()
    for fn, args in _front_end_corpus():
        recorded |= _ops_of(gs.trace(fn, *args))
    documented = {n for n, p in PRIMITIVES.items() if p.doc.role == "front end" and not p.internal}
    assert recorded == documented, (
        f"recorded by the front ends but not documented so: {sorted(recorded - documented)}; "
        f"documented so but not recorded: {sorted(documented - recorded)}"
    )
    assert not {"mul_or_zero", "div_or_zero", "scatter_add", "add_at"} & set(gnp.__all__)


def test_mixed_dtype_rule_of_binary_ops():
    """What the generated text says of elementwise ops on two different dtypes."""
    for prim in PRIMITIVES.values():
        if not prim.elementwise or prim.doc.operands != ("x", "y"):
            continue
        rows = opdoc.result_dtypes(prim)
        float_only = rows["int32"] is None
        for a in dtypes.SUPPORTED:
            for b in dtypes.SUPPORTED:
                if a == b:
                    continue
                try:
                    got = prim.shape(Spec((), a), Spec((), b)).dtype
                except ValueError:
                    got = None
                if float_only and not (dtypes.is_differentiable(a) and dtypes.is_differentiable(b)):
                    assert got is None, (prim.name, a, b)
                else:
                    assert got == rows[dtypes.promote(a, b)], (prim.name, a, b)


# ---- messages, errors, digests ---------------------------------------------------------------


def test_every_message_field_and_method_is_named():
    text = wire_text()
    for module in (graph_pb2, service_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            assert f"`{message.name}`" in text, f"docs/wire.md does not name {message.name}"
            for field in message.fields:
                assert f"`{field.name}`" in text or f"`{field.name}` (" in text, (
                    f"docs/wire.md does not name {message.name}.{field.name}"
                )
    for method in service_pb2.DESCRIPTOR.services_by_name["Gradients"].methods:
        assert f"`{method.name}`" in text
    assert "`opset`" in text
    for name in dtypes.SUPPORTED:
        assert f"`{name}`" in text


def test_every_error_reason_is_listed():
    source = (ROOT / "server" / "errors.py").read_text() + (
        ROOT / "server" / "servicer.py"
    ).read_text()
    reasons = set(re.findall(r'"([A-Z][a-z]+[A-Za-z]*)"', source)) - {"OK"}
    assert {"GraphError", "LimitError", "NotFound", "DeadlineExceeded"} <= reasons
    table = wire_text().split("## Errors", 1)[1].split("\n## ", 1)[0]
    for reason in reasons:
        assert f"`{reason}`" in table, f"the error table does not list reason {reason}"
    for code in ("INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "NOT_FOUND", "DEADLINE_EXCEEDED"):
        assert f"`{code}`" in table
    assert '`"gradserve.dev"`' in table


def test_tensor_digests_in_the_doc():
    text = wire_text()
    scalar = np.float64(2.0).reshape(())
    vector = np.array([1.0, 2.0])
    for array, header in ((scalar, b"float64||"), (vector, b"float64|2|")):
        digest = array_digest(array)
        assert digest == hashlib.sha256(header + array.tobytes()).hexdigest()
        assert f"`{digest}`" in text
        spaced = " ".join(f"{b:02x}" for b in array.astype("<f8").tobytes())
        assert spaced in text


# ---- the worked example ----------------------------------------------------------------------


def _example():
    return gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0)


def test_example_graph_validates_and_is_the_traced_one():
    graph_json = json_blocks()[0]
    msg = json_format.Parse(graph_json, graph_pb2.Graph())
    graph = gs.Graph.from_bytes(msg.SerializeToString())  # validates
    assert graph == _example()
    text = wire_text()
    assert f"`{graph.digest}`" in text
    assert f"is {len(graph.to_bytes())} bytes" in text
    value, grads = gs.Engine().value_and_grad(graph, 2.0, 5.0, argnums=(0, 1))
    assert repr(float(value)) in text
    assert all(repr(float(g)) in text for g in grads)


def test_example_request_and_reply_are_what_a_server_answers():
    _, request_json, reply_json, _ = json_blocks()
    request = json_format.Parse(request_json, service_pb2.ValueAndGradRequest())
    stated = json_format.Parse(reply_json, service_pb2.ValueAndGradResponse())
    graph = gs.Graph.from_bytes(request.graph.body)
    assert graph == _example() and request.graph.body == graph.to_bytes()
    assert hashlib.sha256(request.graph.body).hexdigest() in wire_text()
    args = [from_tensor(ref.tensor) for ref in request.args]
    assert [float(a) for a in args] == [2.0, 5.0]
    assert stated.value.data == np.float64(np.log(2.0) + 10.0 - np.sin(5.0)).tobytes()
    assert base64.b64encode(stated.value.data).decode() in wire_text()

    from gradserve.server import serve

    running = serve(block=False, host="127.0.0.1", port=0, metrics_port=-1)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            call = channel.unary_unary(method_path("ValueAndGrad"))
            reply = service_pb2.ValueAndGradResponse.FromString(
                call(request.SerializeToString(), timeout=30)
            )
            by_digest = service_pb2.ValueAndGradRequest()
            by_digest.CopyFrom(request)
            by_digest.graph.digest = graph.digest
            again = service_pb2.ValueAndGradResponse.FromString(
                call(by_digest.SerializeToString(), timeout=30)
            )
    finally:
        running.stop(grace=0)
    for got in (reply, again):
        got.stats.compute_seconds = 0.0
        assert got == stated, json_format.MessageToJson(got)
    value, grads = from_tensor(reply.value), from_value(reply.grad)
    assert np.isclose(value, np.log(2) + 10 - np.sin(5)) and np.isclose(grads[0], 5.5)


def test_example_node_with_attributes():
    node_json = json_blocks()[3]
    node = json_format.Parse(node_json, graph_pb2.Node())
    graph = gs.trace(lambda x: gnp.sum(x, axis=0), np.zeros((2, 3)))
    assert node == graph_pb2.Graph.FromString(graph.to_bytes()).nodes[0]
