"""The service end to end: a real `gradserve serve` subprocess on loopback.

The contract suite (test_contract.py) already runs every API method against a Client through
the `backend` fixture; this file covers what only the service has: the wire protocol (graph
and tensor digests), errors and their status details, limits, deadlines and cancellation,
concurrency, metrics, health, reflection, the CLI and graceful shutdown."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from conftest import Recorder, ServerProcess, free_port
from google.rpc import error_details_pb2
from gradserve.client import DeadlineExceeded
from gradserve.v1 import graph_pb2
from gradserve.v1 import service_pb2 as pb
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

import gradserve as gs
import gradserve.numpy as gnp
from gradserve.protocol import METHODS, SERVICE_NAME, array_digest, method_path, to_tensor

# What malformed input may produce; INTERNAL and UNKNOWN never.
CLIENT_ERRORS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}


def seed_f(x1, x2):
    return gnp.log(x1) + x1 * x2 - gnp.sin(x2)


SEED = gs.trace(seed_f, 2.0, 5.0)


# ---- helpers ------------------------------------------------------------------------------------


def raw_call(address, method, data: bytes, timeout=30.0):
    """One raw unary call with the given request bytes: (code, RpcError or None)."""
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", -1)]) as ch:
        stub = ch.unary_unary(method_path(method))
        try:
            stub(data, timeout=timeout)
            return grpc.StatusCode.OK, None
        except grpc.RpcError as err:
            return err.code(), err


def details_of(err):
    status = rpc_status.from_call(err)
    out = {}
    for d in status.details if status else []:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.ResourceInfo,
        ):
            if d.Is(cls.DESCRIPTOR):
                msg = cls()
                d.Unpack(msg)
                out.setdefault(cls.__name__, []).append(msg)
    return out


def scrape(server) -> dict:
    """{(name, frozenset(labels)): value} of every sample."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def sample(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def valid_requests():
    """A valid serialized request for every method (the example f(x1, x2); small arrays)."""
    g = pb.GraphRef(body=SEED.to_bytes())

    def args(*vals):
        return [pb.TensorRef(tensor=to_tensor(np.float64(v))) for v in vals]

    nums = pb.Argnums(indices=[0, 1], is_tuple=True)
    return {
        "Evaluate": pb.EvaluateRequest(graph=g, args=args(2, 5)),
        "ValueAndGrad": pb.ValueAndGradRequest(graph=g, args=args(2, 5), argnums=nums),
        "Vjp": pb.VjpRequest(graph=g, primals=args(2, 5), cotangents=args(1)),
        "Jvp": pb.JvpRequest(graph=g, primals=args(2, 5), tangents=args(1, 0)),
        "Jacobian": pb.JacobianRequest(graph=g, args=args(2, 5), argnums=nums, mode="rev"),
        "Hvp": pb.HvpRequest(graph=g, primals=args(2, 5), tangents=args(1, 0)),
        "Hessian": pb.HessianRequest(graph=g, args=args(2, 5), argnums=nums),
        "CheckGrad": pb.CheckGradRequest(graph=g, args=args(2, 5), method="complex"),
    }


def mutate(data: bytes, rng) -> bytes:
    b = bytearray(data)
    for _ in range(rng.integers(1, 4)):
        kind = rng.integers(0, 5)
        pos = int(rng.integers(0, max(1, len(b))))
        if kind == 0 and b:  # flip a byte
            b[pos % len(b)] = int(rng.integers(0, 256))
        elif kind == 1:  # truncate
            b = b[:pos]
        elif kind == 2:  # insert random bytes
            b[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
        elif kind == 3 and b:  # delete a run
            del b[pos : pos + int(rng.integers(1, 9))]
        else:  # duplicate a slice
            end = min(len(b), pos + int(rng.integers(1, 32)))
            b[pos:pos] = b[pos:end]
    return bytes(b)


@pytest.fixture(scope="module")
def limited():
    """A server with small limits for hostile input: 1 MiB messages, 10^6 elements, 200 nodes,
    1 MiB of tape, all set through flags and the environment (flag wins)."""
    proc = ServerProcess(
        "--max-message-bytes",
        "1MiB",
        "--max-elements",
        "1000000",
        "--max-tape-bytes",
        "1MiB",
        "--workers",
        "2",
        env={"GRADSERVE_MAX_NODES": "200", "GRADSERVE_MAX_ELEMENTS": "5"},
    )
    yield proc
    proc.close()


# ---- the CLI, health, reflection ---------------------------------------------------------------


def test_help_documents_every_flag_and_env_var():
    out = subprocess.run(
        [sys.executable, "-m", "gradserve", "serve", "--help"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for flag in (
        "host",
        "port",
        "metrics-port",
        "workers",
        "max-tape-bytes",
        "max-nodes",
        "max-elements",
        "max-message-bytes",
        "cache-bytes",
        "grace-seconds",
        "shutdown-delay-seconds",
    ):
        assert f"--{flag}" in out
        assert "GRADSERVE_" + flag.upper().replace("-", "_") in out.replace("\n", "").replace(
            " ", ""
        )


def test_health_cli_exit_status(server):
    ok = subprocess.run(
        [sys.executable, "-m", "gradserve", "health", "--target", server.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and ok.stdout.strip() == "SERVING"
    down = subprocess.run(
        [
            sys.executable,
            "-m",
            "gradserve",
            "health",
            "--target",
            f"127.0.0.1:{free_port()}",
            "--timeout",
            "0.5",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert down.returncode == 3  # unreachable (see tests/test_cli.py for every status)


def test_reflection_lists_the_services(server):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(server.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        replies = list(
            stub.ServerReflectionInfo(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(list_services=""),
                        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
                    ]
                ),
                timeout=10,
            )
        )
    names = {s.name for s in replies[0].list_services_response.service}
    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
    assert replies[1].file_descriptor_response.file_descriptor_proto  # grpcurl can describe it


def test_flags_and_environment(limited):
    """GRADSERVE_MAX_NODES=200 applies; --max-elements beats GRADSERVE_MAX_ELEMENTS=5."""
    with gs.Client(limited.address, timeout=30) as cli:
        assert (
            float(cli.evaluate(gs.trace(lambda x: gnp.sum(x * 2.0), np.ones(100)), np.ones(100)))
            == 200
        )

        def deep(x):
            for _ in range(300):
                x = gnp.sin(x)
            return x

        with pytest.raises(gs.LimitError, match="200"):
            cli.evaluate(gs.trace(deep, 1.0), 1.0)
    # one log line per failed call
    assert "Evaluate RESOURCE_EXHAUSTED" in limited.output()


# ---- the upload protocol -----------------------------------------------------------------------


def test_graph_body_travels_once_then_by_digest(server):
    rec = Recorder()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), rec)
    x = np.linspace(1, 2, 50)
    graph = gs.trace(lambda x: gnp.sum(gnp.log(x) * np.arange(50.0)), x)  # has a constant
    before = scrape(server)
    with gs.Client(channel) as cli:
        for _ in range(3):
            np.testing.assert_allclose(cli.grad(graph, x), np.arange(50.0) / x)
    sizes = [n for _, n in rec.calls]
    assert len(sizes) == 3
    assert sizes[0] > len(graph.to_bytes()) > sizes[1] == sizes[2]
    after = scrape(server)
    assert (
        sample(after, "gradserve_graph_cache_hits_total")
        - sample(before, "gradserve_graph_cache_hits_total")
        >= 2
    )
    channel.close()


def test_unknown_graph_digest_is_not_found_and_the_client_resends(server):
    code, err = raw_call(
        server.address,
        "Evaluate",
        pb.EvaluateRequest(
            graph=pb.GraphRef(digest="ab" * 32),
            args=[pb.TensorRef(tensor=to_tensor(np.float64(1)))],
        ).SerializeToString(),
    )
    assert code == grpc.StatusCode.NOT_FOUND
    info = details_of(err)["ResourceInfo"][0]
    assert info.resource_type == "gradserve.v1.Graph" and info.resource_name == "ab" * 32
    # A client that believes the server has the graph (another replica had it, or it was
    # evicted) gets NOT_FOUND, resends the body once, and succeeds.
    graph = gs.trace(lambda a: a * 3.25 + 1.0, 1.0)
    rec = Recorder()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), rec)
    with gs.Client(channel) as cli:
        cli._known_graphs.add(graph.digest)
        assert float(cli.evaluate(graph, 2.0)) == 7.5
    assert len(rec.calls) == 2 and rec.calls[1][1] > rec.calls[0][1]
    channel.close()


def test_large_tensors_travel_by_digest_once_the_server_has_them(server):
    rec = Recorder()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), rec)
    data = np.random.default_rng(0).standard_normal((300, 100))  # 240 KB, fixed in the loop
    graph = gs.trace(lambda w, X: gnp.sum((X @ w) ** 2), np.zeros(100), data)
    eng = gs.Engine()
    with gs.Client(channel, shared_memory=False) as cli:
        for step in range(5):
            w = np.full(100, 0.01 * step)
            value, grad = cli.value_and_grad(graph, w, data)
            v2, g2 = eng.value_and_grad(graph, w, data)
            np.testing.assert_allclose(value, v2)
            np.testing.assert_allclose(grad, g2)
    sizes = [n for _, n in rec.calls]
    # the first call carries it (with `remember`); later calls name it by its 64-hex digest
    assert sizes[0] > data.nbytes
    assert all(n < 5000 for n in sizes[1:]), sizes
    channel.close()
    # A digest the server never saw: NOT_FOUND naming the tensor.
    unknown = array_digest(np.arange(20000.0))
    code, err = raw_call(
        server.address,
        "ValueAndGrad",
        pb.ValueAndGradRequest(
            graph=pb.GraphRef(body=graph.to_bytes()),
            args=[pb.TensorRef(tensor=to_tensor(np.zeros(100))), pb.TensorRef(digest=unknown)],
        ).SerializeToString(),
    )
    assert code == grpc.StatusCode.NOT_FOUND
    assert details_of(err)["ResourceInfo"][0].resource_name == unknown


def test_client_resends_an_evicted_tensor(server):
    data = np.random.default_rng(1).standard_normal(20000)
    graph = gs.trace(lambda a, b: gnp.sum(a * b), 1.0, data)
    with gs.Client(server.address) as cli:
        # as if sent before with `remember` (to another replica, or since evicted)
        cli._sent_before(data, ("elsewhere",), [False], 0)
        np.testing.assert_allclose(cli.evaluate(graph, 2.0, data), 2 * data.sum())


# ---- errors ------------------------------------------------------------------------------------


def test_bad_graph_is_invalid_argument_naming_the_node(server):
    msg = graph_pb2.Graph.FromString(SEED.to_bytes())
    msg.nodes[1].op = "no_such_op"
    code, err = raw_call(
        server.address,
        "Evaluate",
        pb.EvaluateRequest(
            graph=pb.GraphRef(body=msg.SerializeToString()),
            args=[pb.TensorRef(tensor=to_tensor(np.float64(v))) for v in (2, 5)],
        ).SerializeToString(),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    d = details_of(err)
    assert d["ErrorInfo"][0].reason == "GraphError"
    field = d["BadRequest"][0].field_violations[0].field
    assert "node 1" in field and field in err.details()


def test_bad_argument_is_invalid_argument_naming_the_input(server):
    """What the Client checks before sending, the server checks again (other clients exist)."""
    cases = [
        ([np.ones(3), np.float64(5)], "argument 'x1'", "ValueError"),
        ([np.float64(2)], "args", "TypeError"),
        ([np.float64(2), np.complex128(5)], "argument 'x2'", "TypeError"),
    ]
    for args, field, reason in cases:
        code, err = raw_call(
            server.address,
            "Evaluate",
            pb.EvaluateRequest(
                graph=pb.GraphRef(body=SEED.to_bytes()),
                args=[pb.TensorRef(tensor=to_tensor(a)) for a in args],
            ).SerializeToString(),
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        d = details_of(err)
        assert d["ErrorInfo"][0].reason == reason, err.details()
        assert d["BadRequest"][0].field_violations[0].field == field, err.details()


def test_client_raises_the_engines_exception_classes(server, remote):
    eng = gs.Engine()
    ints = gs.trace(lambda n, x: x * n, gs.Spec((), "int64"), 1.0)
    cases = [
        lambda b: b.evaluate(SEED, 2.0),  # wrong count
        lambda b: b.evaluate(SEED, np.ones(2), 5.0),  # wrong shape
        lambda b: b.grad(ints, 1, 2.0, argnums=0),  # int input not differentiable
        lambda b: b.grad(SEED, 2.0, 5.0, argnums=9),  # argnums out of range
        lambda b: b.jacobian(SEED, 2.0, 5.0, mode="sideways"),  # bad mode
        lambda b: b.check_grad(SEED, 2.0, 5.0, method="magic"),  # bad method
        lambda b: b.grad(gs.trace(lambda x: x * 2.0, np.ones(3)), np.ones(3)),  # non-scalar
    ]
    for case in cases:
        with pytest.raises(Exception) as local:
            case(eng)
        with pytest.raises(Exception) as there:
            case(remote)
        assert type(there.value) is type(local.value), (local.value, there.value)
        assert str(there.value) == str(local.value)


def test_tape_limit_is_resource_exhausted_with_a_message(limited):
    big = gs.trace(lambda x: gnp.sum(gnp.sin(gnp.exp(x)) * x), np.ones(200_000))  # 1.6 MB args
    small = np.ones(1000)
    with gs.Client(limited.address, timeout=30, shared_memory=False) as cli:

        def chain(x, W):  # each matmul keeps its input: 3.2 MB of tape
            for _ in range(10):
                x = gnp.tanh(x @ W)
            return gnp.sum(x)

        x = np.full((200, 200), 0.01)
        g = gs.trace(chain, x, x)
        with pytest.raises(gs.LimitError, match="tape"):
            cli.grad(g, x, x)  # > --max-tape-bytes 1MiB
        with pytest.raises(gs.LimitError):  # over --max-message-bytes 1MiB
            cli.evaluate(big, np.ones(200_000))
        with pytest.raises(gs.LimitError):  # over --max-elements 10^6
            cli.evaluate(
                gs.trace(lambda x: gnp.sum(gnp.broadcast_to(x, (2000, 1000))), small), small
            )
    assert limited.health() == "SERVING"


# ---- hostile input on the wire -----------------------------------------------------------------


def _allowed(code, err):
    assert code in CLIENT_ERRORS | {grpc.StatusCode.OK}, (code, err and err.details())


def test_garbage_bytes_to_every_method(limited):
    rng = np.random.default_rng(7)
    blobs = [
        b"",
        b"\x00",
        b"\xff" * 64,
        b"\x0a\xff\xff\xff\xff\x0f",
        b"\x12\x05hello",
        b"\x0a\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
    ]
    blobs += [
        rng.integers(0, 256, int(n), dtype=np.uint8).tobytes() for n in rng.integers(1, 3000, 20)
    ]
    for method in METHODS:
        for blob in blobs:
            code, err = raw_call(limited.address, method, blob)
            _allowed(code, err)
        assert limited.health() == "SERVING"
    code, _ = raw_call(limited.address, "Evaluate", b"\xff" * 64)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    code, _ = raw_call(limited.address, "NoSuchMethod", b"")
    assert code == grpc.StatusCode.UNIMPLEMENTED


def test_randomly_mutated_valid_requests(limited):
    rng = np.random.default_rng(11)
    requests = valid_requests()
    assert set(requests) == set(METHODS)  # every method of the service
    loop = gs.trace(
        lambda x, y: gs.fori_loop(0, 5, lambda i, c: c * y + gnp.sin(c), x) * 1.0, 1.5, 0.5
    )
    requests["ValueAndGrad/loop"] = pb.ValueAndGradRequest(
        graph=pb.GraphRef(body=loop.to_bytes()),
        args=[pb.TensorRef(tensor=to_tensor(np.float64(v))) for v in (1.5, 0.5)],
    )
    seen = {}
    for name, request in requests.items():
        method = name.split("/")[0]
        data = request.SerializeToString()
        code, err = raw_call(limited.address, method, data)
        assert code == grpc.StatusCode.OK, (name, err and err.details())
        for _ in range(60):
            code, err = raw_call(limited.address, method, mutate(data, rng), timeout=5)
            _allowed(code, err)
            seen[code] = seen.get(code, 0) + 1
        assert limited.health() == "SERVING"
    assert seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0


def test_shape_claiming_1e12_elements_with_8_bytes(limited, server):
    huge = graph_pb2.Tensor(dtype="float64", shape=[1_000_000, 1_000_000], data=b"\0" * 8)
    for address in (limited.address, server.address):  # 10^12 > any element limit
        code, err = raw_call(
            address,
            "Evaluate",
            pb.EvaluateRequest(
                graph=pb.GraphRef(body=SEED.to_bytes()),
                args=[pb.TensorRef(tensor=huge), pb.TensorRef(tensor=to_tensor(np.float64(5)))],
            ).SerializeToString(),
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        assert "args[0]" in err.details()
        # the same as a graph constant, and as a declared input shape
        msg = graph_pb2.Graph.FromString(gs.trace(lambda x: x * np.arange(3.0), 1.0).to_bytes())
        msg.constants[0].value.CopyFrom(huge)
        code, err = raw_call(
            address,
            "Evaluate",
            pb.EvaluateRequest(graph=pb.GraphRef(body=msg.SerializeToString())).SerializeToString(),
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
        msg = graph_pb2.Graph.FromString(SEED.to_bytes())
        msg.inputs[0].shape[:] = [10**6, 10**6]
        code, err = raw_call(
            address,
            "Evaluate",
            pb.EvaluateRequest(graph=pb.GraphRef(body=msg.SerializeToString())).SerializeToString(),
        )
        assert code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT)
        assert server.health() == "SERVING" and limited.health() == "SERVING"


def test_oversized_message_is_resource_exhausted(limited):
    blob = pb.EvaluateRequest(
        graph=pb.GraphRef(body=SEED.to_bytes()),
        args=[pb.TensorRef(tensor=to_tensor(np.zeros(300_000)))],
    ).SerializeToString()  # 2.4 MB > 1 MiB
    code, _ = raw_call(limited.address, "Evaluate", blob)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.health() == "SERVING"


# ---- deadlines, cancellation, concurrency ------------------------------------------------------


def _cpu_seconds(pid) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _long_chain():
    n = 400

    def chain(x, W):  # 400 matmuls of 400x400 (5e10 flops): seconds of work
        for _ in range(400):
            x = gnp.tanh(x @ W)
        return gnp.sum(x)

    rng = np.random.default_rng(5)
    x, W = rng.random((n, n)), rng.random((n, n)) / n
    return gs.trace(chain, x, W), x, W


def _wait_idle(server, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = scrape(server)
        if sample(s, "gradserve_inflight_requests") == 0:
            return s
        time.sleep(0.05)
    raise AssertionError("the server still has requests in flight")


def test_deadline_stops_the_computation(server):
    graph, x, W = _long_chain()
    with gs.Client(server.address, timeout=0.5) as cli:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded, match="deadline") as info:
            cli.evaluate(graph, x, W)
        assert isinstance(info.value, TimeoutError)
        assert time.monotonic() - start < 2.0  # the error comes at once (0.5 s)
    s = _wait_idle(server, timeout=3.0)  # the server stopped computing ...
    assert sample(s, "gradserve_tape_bytes_in_use") == 0
    cpu = _cpu_seconds(server.proc.pid)
    time.sleep(1.0)
    assert _cpu_seconds(server.proc.pid) - cpu < 0.3  # ... and its CPU is idle


def test_cancellation_stops_the_computation(server):
    graph, x, W = _long_chain()
    request = pb.EvaluateRequest(
        graph=pb.GraphRef(body=graph.to_bytes()),
        args=[pb.TensorRef(tensor=to_tensor(a)) for a in (x, W)],
    )
    with grpc.insecure_channel(server.address) as ch:
        future = ch.unary_unary(method_path("Evaluate")).future(
            request.SerializeToString(), timeout=60
        )
        deadline = time.monotonic() + 20
        while sample(scrape(server), "gradserve_inflight_requests") < 1:
            assert time.monotonic() < deadline, "the call never started"
            time.sleep(0.02)
        time.sleep(0.2)
        future.cancel()
    _wait_idle(server, timeout=3.0)
    cpu = _cpu_seconds(server.proc.pid)
    time.sleep(1.0)
    assert _cpu_seconds(server.proc.pid) - cpu < 0.3


def test_concurrent_clients_get_their_own_answers(server):
    graph = gs.trace(lambda a, x: gnp.sum(gnp.sin(a * x) * x), 1.0, np.ones(500))
    eng = gs.Engine()
    errors = []

    def worker(k):
        try:
            with gs.Client(server.address, timeout=60) as cli:
                for i in range(15):
                    a = 0.1 * k + 0.01 * i
                    x = np.linspace(0, 1, 500) + k
                    value, grad = cli.value_and_grad(graph, a, x, argnums=(0, 1))
                    v2, g2 = eng.value_and_grad(graph, a, x, argnums=(0, 1))
                    np.testing.assert_allclose(value, v2, rtol=1e-12)
                    np.testing.assert_allclose(grad[0], g2[0], rtol=1e-12)
                    np.testing.assert_allclose(grad[1], g2[1], rtol=1e-12)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def test_unavailable_is_retried_with_backoff():
    """The client retries UNAVAILABLE: a server that comes up late still answers."""
    from gradserve.server import serve

    port = free_port()
    started = []

    def later():
        time.sleep(0.6)
        started.append(serve(block=False, host="127.0.0.1", port=port, metrics_port=-1))

    t = threading.Thread(target=later)
    t.start()
    try:
        with gs.Client(f"127.0.0.1:{port}", timeout=30, retries=8) as cli:
            assert float(cli.evaluate(SEED, 2.0, 5.0)) == pytest.approx(11.652071455223084)
    finally:
        t.join()
        for running in started:
            running.stop(0)
    with gs.Client(f"127.0.0.1:{free_port()}", retries=1, backoff=0.01) as cli:
        with pytest.raises(gs.client.ServiceUnavailable):
            cli.evaluate(SEED, 2.0, 5.0)


# ---- metrics -----------------------------------------------------------------------------------


def test_metrics_show_the_tape_of_the_request_just_made(server, remote):
    graph = gs.trace(lambda x: gnp.sum(gnp.tanh(gnp.exp(gnp.sin(x)))), np.ones(10_000))
    x = np.linspace(0, 1, 10_000)
    remote.grad(graph, x)  # warm (plan compiled)
    before = scrape(server)
    remote.grad(graph, x)
    after = scrape(server)
    stats = remote.last_stats
    assert stats.tape_bytes > 0 and stats.compute_seconds > 0
    m = "ValueAndGrad"
    assert (
        sample(after, "gradserve_tape_bytes_sum", method=m)
        - sample(before, "gradserve_tape_bytes_sum", method=m)
        == stats.tape_bytes
    )
    assert (
        sample(after, "gradserve_tape_bytes_count", method=m)
        - sample(before, "gradserve_tape_bytes_count", method=m)
        == 1
    )
    assert (
        sample(after, "gradserve_tape_entries_sum", method=m)
        - sample(before, "gradserve_tape_entries_sum", method=m)
        == stats.tape_entries
    )
    assert (
        sample(after, "gradserve_requests_total", method=m, code="OK")
        - sample(before, "gradserve_requests_total", method=m, code="OK")
        == 1
    )
    assert (
        sample(after, "gradserve_request_duration_seconds_count", method=m)
        - sample(before, "gradserve_request_duration_seconds_count", method=m)
        == 1
    )
    names = {name for name, _ in after}
    for name in (
        "gradserve_requests_total",
        "gradserve_request_duration_seconds_bucket",
        "gradserve_tape_bytes_bucket",
        "gradserve_tape_entries_bucket",
        "gradserve_tape_bytes_in_use",
        "gradserve_inflight_requests",
        "gradserve_graph_cache_entries",
        "gradserve_graph_cache_bytes",
        "gradserve_graph_cache_hits_total",
        "gradserve_graph_cache_misses_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert name in names, name
    assert sample(after, "gradserve_graph_cache_entries") >= 1
    assert sample(after, "gradserve_graph_cache_bytes") > 0


def test_stats_match_the_engine(remote):
    graph = gs.trace(lambda x: gnp.sum(gnp.tanh(gnp.exp(gnp.sin(x)))), np.ones(1000))
    eng = gs.Engine()
    eng.grad(graph, np.ones(1000))
    remote.grad(graph, np.ones(1000))
    assert tuple(remote.last_stats) == tuple(eng.last_stats)
    assert isinstance(remote.last_stats, gs.Stats)


# ---- shutdown ----------------------------------------------------------------------------------


def test_sigterm_drains_in_flight_calls_and_exits_0():
    proc = ServerProcess("--grace-seconds", "30")
    try:
        n = 300

        def chain(x, W):  # ~1-2 s of work
            for _ in range(80):
                x = gnp.tanh(x @ W)
            return gnp.sum(x)

        rng = np.random.default_rng(2)
        x, W = rng.random((n, n)), rng.random((n, n)) / n
        graph = gs.trace(chain, x, W)
        expected = gs.Engine().evaluate(graph, x, W)
        result = {}
        statuses = []

        def call():
            with gs.Client(proc.address, timeout=120) as cli:
                result["value"] = cli.evaluate(graph, x, W)

        def watch():
            with grpc.insecure_channel(proc.address) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                try:
                    for reply in stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60):
                        statuses.append(
                            health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                        )
                except grpc.RpcError:
                    pass

        watcher = threading.Thread(target=watch)
        watcher.start()
        caller = threading.Thread(target=call)
        caller.start()
        deadline = time.monotonic() + 10
        while sample(scrape(proc), "gradserve_inflight_requests") < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.proc.send_signal(signal.SIGTERM)
        # Fresh checks, during --shutdown-delay-seconds (1 s): the first may still reach the
        # server before it has handled the signal.
        deadline = time.monotonic() + 0.5
        while (status := proc.health()) == "SERVING" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert status == "NOT_SERVING"
        assert proc.terminate(timeout=60) == 0
        caller.join(30)
        watcher.join(30)
        np.testing.assert_allclose(result["value"], expected)  # the in-flight call finished
        assert statuses[0] == "SERVING" and "NOT_SERVING" in statuses
        assert "received SIGTERM" in proc.output()
    finally:
        proc.close()


# ---- generated code ----------------------------------------------------------------------------


def test_generated_code_is_fresh(tmp_path):
    """proto/generate.sh's command reproduces the committed *_pb2*.py (CI also checks git diff)."""
    pytest.importorskip("grpc_tools")
    root = os.path.join(os.path.dirname(__file__), "..", "proto")
    protos = [
        f"gradserve/v1/{p}"
        for p in sorted(os.listdir(os.path.join(root, "gradserve", "v1")))
        if p.endswith(".proto")
    ]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I.",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *protos,
        ],
        cwd=root,
        check=True,
    )
    for produced in (tmp_path / "gradserve" / "v1").iterdir():
        committed = os.path.join(root, "gradserve", "v1", produced.name)
        with open(committed, "rb") as f:
            assert f.read() == produced.read_bytes(), (
                f"{produced.name} is stale: run proto/generate.sh"
            )


def test_every_replica_learns_the_graph_behind_per_call_balancing():
    """Round robin over three servers, calls in lockstep: a replica that answers NOT_FOUND
    gets the body on later calls too (the resend itself goes to the next replica)."""
    from gradserve.server import serve

    servers = [serve(block=False, host="127.0.0.1", port=0, metrics_port=-1) for _ in range(3)]
    try:
        target = "ipv4:" + ",".join(f"127.0.0.1:{s.port}" for s in servers)
        graph = gs.trace(lambda x: gnp.sum(gnp.sin(x) * 1.5), np.ones(4))
        data = np.random.default_rng(3).standard_normal(20000)
        tgraph = gs.trace(lambda a, b: gnp.sum(a * b), 1.0, data)
        with gs.Client(target, timeout=30) as cli:
            for _ in range(30):
                cli.grad(graph, np.arange(4.0))
                cli.evaluate(tgraph, 2.0, data)
        body_key = "g" + hashlib.sha256(graph.to_bytes()).hexdigest()
        tensor_key = "t" + array_digest(data)
        for s in servers:
            assert s.servicer.cache.get(body_key) is not None
            assert s.servicer.cache.get(tensor_key) is not None
    finally:
        for s in servers:
            s.stop(0)


# ---- structure-aware mutations: graphs that decode but are wrong in every way ------------------


def struct_mutate(g: graph_pb2.Graph, rng):
    """Change ops, attributes, wiring, dtypes, shapes, constants of a valid graph."""
    g = graph_pb2.Graph.FromString(g.SerializeToString())
    ops = sorted({n.op for n in g.nodes}) + [
        "add",
        "matmul",
        "reshape",
        "sum",
        "transpose",
        "broadcast_to",
        "slice",
        "gather",
        "concatenate",
        "einsum",
    ]
    for _ in range(rng.integers(1, 3)):
        k = rng.integers(0, 8)
        if k == 0 and g.nodes:
            n = g.nodes[rng.integers(len(g.nodes))]
            n.op = ops[rng.integers(len(ops))]
        elif k == 1 and g.nodes:
            n = g.nodes[rng.integers(len(g.nodes))]
            if n.attributes:
                a = n.attributes[rng.integers(len(n.attributes))]
                kind = a.WhichOneof("value")
                if kind == "i":
                    a.i = int(rng.choice([-1, 0, 1, 2, 3, 7, -5, 10**9, 2**62]))
                elif kind == "ints":
                    vals = list(a.ints.values) or [1]
                    vals[rng.integers(len(vals))] = int(rng.choice([-1, 0, 5, 10**6, -(10**9)]))
                    if rng.random() < 0.3:
                        vals.append(int(rng.integers(-3, 4)))
                    a.ints.values[:] = vals
                elif kind == "f":
                    a.f = float(rng.choice([np.nan, np.inf, -1.0, 1e308]))
                elif kind == "s":
                    a.s = str(rng.choice(["", "ij,jk->ik", "xx", "a,b", "...", "ii->i"]))
        elif k == 2 and g.nodes:
            n = g.nodes[rng.integers(len(g.nodes))]
            names = (
                [i.name for i in g.inputs]
                + [c.name for c in g.constants]
                + [o for m in g.nodes for o in m.outputs]
            )
            if n.inputs:
                n.inputs[rng.integers(len(n.inputs))] = names[rng.integers(len(names))]
            elif names:
                n.inputs.append(names[rng.integers(len(names))])
        elif k == 3 and g.inputs:
            i = g.inputs[rng.integers(len(g.inputs))]
            i.dtype = str(
                rng.choice(["float32", "int64", "bool", "complex128", "int32", "float64"])
            )
        elif k == 4 and g.nodes:
            n = g.nodes[rng.integers(len(g.nodes))]
            if n.inputs and rng.random() < 0.5:
                del n.inputs[rng.integers(len(n.inputs))]
            else:
                n.outputs.append("extra%d" % rng.integers(5))
        elif k == 5 and g.outputs:
            o = g.outputs[rng.integers(len(g.outputs))]
            o.shape[:] = list(rng.integers(0, 4, rng.integers(0, 3)))
        elif k == 6 and g.constants:
            c = g.constants[rng.integers(len(g.constants))]
            c.value.dtype = str(rng.choice(["float32", "int64", "bool", "complex128"]))
            n = int(np.prod(c.value.shape)) if c.value.shape else 1
            c.value.data = bytes(
                n * {"float32": 4, "int64": 8, "bool": 1, "complex128": 16}[c.value.dtype]
            )
        elif k == 7 and g.nodes:
            j = rng.integers(len(g.nodes))
            n = g.nodes[j]
            g.nodes.insert(
                rng.integers(len(g.nodes)),
                graph_pb2.Node(
                    op=n.op,
                    inputs=n.inputs,
                    outputs=[o + "_b" for o in n.outputs],
                    attributes=n.attributes,
                ),
            )
    return g


def fuzz_graphs():
    r = np.random.default_rng(0)
    yield "seed", gs.trace(seed_f, 2.0, 5.0), (2.0, 5.0)
    yield (
        "mlp",
        gs.trace(
            lambda W, x: gnp.sum(gnp.tanh(x @ W) ** 2) + gnp.max(x[1:, ::2]),
            np.ones((4, 3)),
            np.ones((5, 4)),
        ),
        (r.random((4, 3)), r.random((5, 4))),
    )
    yield (
        "loop",
        gs.trace(
            lambda x, y: gs.fori_loop(0, 5, lambda i, c: c * y + gnp.sin(c), x) * 1.0, 1.5, 0.5
        ),
        (1.5, 0.5),
    )
    yield (
        "shapes",
        gs.trace(
            lambda x: (
                gnp.sum(
                    gnp.concatenate([x.reshape(6, 2).T, x[None, :2].reshape(2, 1)], axis=1)
                    * gnp.arange(7.0)
                )
                + gnp.mean(gnp.cumsum(x))
                + gnp.einsum("i,i->", x, x)
            ),
            np.ones(12),
        ),
        (r.random(12),),
    )
    yield (
        "idx",
        gs.trace(
            lambda x: (
                gnp.sum(x[np.array([0, 2, -1])] * 2.0)
                + gnp.sum(gnp.where(x > 0.5, gnp.sqrt(x), 0.0))
            ),
            np.ones(5),
        ),
        (r.random(5),),
    )
    yield (
        "scan",
        gs.trace(
            lambda c, xs: gs.scan(lambda c, x: (c * x + 1.0, c), c, xs)[0] * 1.0, 1.0, np.ones(4)
        ),
        (0.5, r.random(4)),
    )
    yield (
        "while",
        gs.trace(
            lambda x: (
                gs.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, c[1] * 1.1), (0, x))[1] * 1.0
            ),
            1.0,
        ),
        (1.0,),
    )


def test_structurally_mutated_graphs(limited):
    """Graphs mutated field by field (they decode; most fail validation, some run) sent to
    every method: each answer is OK or a client error, never INTERNAL/UNKNOWN."""
    rng = np.random.default_rng(2024)
    kinds = ("float64", "float32", "complex128", "int64", "int32", "bool")
    codes = {}
    for _name, g, args in fuzz_graphs():
        msg = graph_pb2.Graph.FromString(g.to_bytes())
        for it in range(24):
            m = struct_mutate(msg, rng)
            method = METHODS[it % len(METHODS)]
            ref = pb.GraphRef(body=m.SerializeToString())
            a = [
                pb.TensorRef(
                    tensor=to_tensor(np.asarray(v, dtype=i.dtype if i.dtype in kinds else float))
                )
                for v, i in zip(args, m.inputs)
            ]
            outs = (
                [
                    pb.TensorRef(tensor=to_tensor(np.ones(tuple(o.shape), dtype=o.dtype)))
                    for o in m.outputs
                ]
                if all(o.dtype in kinds for o in m.outputs)
                else []
            )
            request = {
                "Evaluate": lambda: pb.EvaluateRequest(graph=ref, args=a),
                "ValueAndGrad": lambda: pb.ValueAndGradRequest(
                    graph=ref, args=a, argnums=pb.Argnums(indices=[0], is_tuple=True)
                ),
                "Jvp": lambda: pb.JvpRequest(graph=ref, primals=a, tangents=a),
                "Vjp": lambda: pb.VjpRequest(graph=ref, primals=a, cotangents=outs),
                "Jacobian": lambda: pb.JacobianRequest(
                    graph=ref, args=a, mode=["fwd", "rev"][it % 2]
                ),
                "Hessian": lambda: pb.HessianRequest(graph=ref, args=a),
                "Hvp": lambda: pb.HvpRequest(graph=ref, primals=a, tangents=a),
                "CheckGrad": lambda: pb.CheckGradRequest(
                    graph=ref, args=a, method=["central", "complex", "forward"][it % 3]
                ),
            }[method]()
            code, err = raw_call(limited.address, method, request.SerializeToString(), timeout=5)
            _allowed(code, err)
            codes[code] = codes.get(code, 0) + 1
    assert limited.health() == "SERVING"
    assert (
        codes.get(grpc.StatusCode.OK, 0) > 0 and codes.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0
    )


def test_hand_encoded_tensor_refs_equal_protobufs():
    """The client encodes TensorRefs itself (one copy of the bytes); they parse to exactly the
    messages protobuf would build."""
    from gradserve.protocol import tensor_ref_parts

    cases = [
        np.float64(2.5),
        np.arange(6.0).reshape(2, 3),
        np.zeros((0, 3)),
        np.array([True, False]),
        np.arange(5, dtype=np.int32) * -3,
        (np.arange(4) + 1j).astype(np.complex128),
        np.arange(6.0).reshape(2, 3).T,
        np.arange(3, dtype=">f8"),
        np.ones((2, 200, 3), np.float32),
        np.int64(-7),
        np.zeros((300, 1000)),
    ]
    for a in cases:
        for remember in (False, True):
            raw = b"".join(tensor_ref_parts(2, a, remember=remember))
            want = pb.EvaluateRequest(args=[pb.TensorRef(tensor=to_tensor(a), remember=remember)])
            assert pb.EvaluateRequest.FromString(raw) == want
    base = pb.EvaluateRequest(graph=pb.GraphRef(digest="cd" * 32)).SerializeToString()
    raw = b"".join(
        tensor_ref_parts(2, digest="ab" * 32)
        + tensor_ref_parts(2)
        + tensor_ref_parts(2, np.float64(1))
    )
    got = pb.EvaluateRequest.FromString(base + raw)
    assert got.graph.digest == "cd" * 32 and got.args[0].digest == "ab" * 32
    assert got.args[1].WhichOneof("ref") is None and got.args[2].tensor.dtype == "float64"


def test_hand_encoded_replies_equal_protobufs():
    from gradserve.server.servicer import _Reply

    from gradserve.protocol import fill_tensor, fill_tensors, fill_value

    big = np.random.default_rng(0).random((300, 100))
    for res in [big, (big, np.float64(2)), ((big, np.ones(3)), (np.zeros((0, 2)),)), (), (big, ())]:
        reply = _Reply(pb.JvpResponse(), outputs=("value", res), output_tangents=("value", res))
        reply.msg.stats.tape_bytes = 5
        want = pb.JvpResponse()
        want.stats.tape_bytes = 5
        fill_value(want.outputs, res)
        fill_value(want.output_tangents, res)
        assert pb.JvpResponse.FromString(reply.to_bytes()) == want
    reply = _Reply(
        pb.VjpResponse(), outputs=("value", big), input_cotangents=("tensors", (big, np.float64(1)))
    )
    want = pb.VjpResponse()
    fill_value(want.outputs, big)
    fill_tensors(want.input_cotangents, (big, np.float64(1)))
    assert pb.VjpResponse.FromString(reply.to_bytes()) == want
    reply = _Reply(
        pb.ValueAndGradResponse(), value=("tensor", np.float64(3)), grad=("value", (big,))
    )
    want = pb.ValueAndGradResponse()
    fill_tensor(want.value, np.float64(3))
    fill_value(want.grad, (big,))
    assert pb.ValueAndGradResponse.FromString(reply.to_bytes()) == want


def test_cache_is_byte_bounded_and_churn_stays_on_probation():
    from gradserve.server.cache import ByteLRU

    cache = ByteLRU(100_000)
    cache.put("g-graph", "graph", 10_000)
    cache.put("t-data", "data", 10_000, probation=True)
    assert cache.get("t-data") == "data"  # used again: protected
    for i in range(200):  # weights that change every call
        cache.put(f"t-weights-{i}", i, 5_000, probation=True)
        assert cache.nbytes <= 100_000
    assert cache.get("g-graph") == "graph" and cache.get("t-data") == "data"
    for i in range(50):  # more protected entries than fit
        cache.put(f"g-{i}", i, 10_000)
    assert cache.nbytes <= 100_000 and cache.get("g-graph") is None


def test_tape_in_use_gauge_during_a_call(server):
    """gradserve_tape_bytes_in_use shows the tape of a call while it computes (its first call
    included), 0 after."""
    n = 300

    def chain(x, W):
        for _ in range(25):
            x = gnp.tanh(x @ W)
        return gnp.sum(x)

    rng = np.random.default_rng(4)
    x, W = rng.random((n, n)), rng.random((n, n)) / n
    graph = gs.trace(chain, x, W)
    with gs.Client(server.address, timeout=120) as cli:
        engine = gs.Engine()
        engine.grad(graph, x, W)
        tape = engine.last_stats.tape_bytes  # what the server's call will hold
        assert tape > 0
        seen = []
        t = threading.Thread(target=lambda: cli.grad(graph, x, W))
        t.start()
        while t.is_alive():
            seen.append(sample(scrape(server), "gradserve_tape_bytes_in_use"))
            time.sleep(0.02)
        t.join()
    assert tape in seen, (tape, sorted(set(seen)))
    assert sample(scrape(server), "gradserve_tape_bytes_in_use") == 0


def test_non_contiguous_large_arguments(remote):
    """Transposed views and big-endian arrays are sent (and hashed) as their C-order values."""
    graph = gs.trace(lambda x: x * 2.0, np.ones((300, 100)))
    eng = gs.Engine()
    for _ in range(3):
        ct = np.random.default_rng(0).random((100, 300)).T
        x = np.arange(30000.0, dtype=">f8").reshape(300, 100)
        out, (x_ct,) = remote.vjp(graph, (x,), ct)
        want_out, (want_ct,) = eng.vjp(graph, (x,), ct)
        np.testing.assert_array_equal(out, want_out)
        np.testing.assert_array_equal(x_ct, want_ct)


def test_changing_large_arguments_are_not_kept_fixed_ones_travel_once(server):
    """In a loop, a large argument that changes every call (weights) travels inline without
    `remember` from the second call on (the server neither hashes nor keeps it); one held
    fixed (data) travels once, then by digest."""
    requests = []

    class Keep(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            requests.append(pb.ValueAndGradRequest.FromString(request))
            return continuation(details, request)

    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), Keep())
    data = np.random.default_rng(5).standard_normal(20000)
    graph = gs.trace(lambda w, d: gnp.sum((w * d) ** 2), data, data)
    with gs.Client(channel, shared_memory=False) as cli:
        for step in range(5):
            w = np.full(20000, 0.1 * (step + 1))
            np.testing.assert_allclose(cli.grad(graph, w, data), 2 * w * data**2)
    channel.close()
    w_refs = [r.args[0] for r in requests]
    d_refs = [r.args[1] for r in requests]
    assert [r.WhichOneof("ref") for r in d_refs] == ["tensor"] + ["digest"] * 4
    assert d_refs[0].remember
    assert [r.WhichOneof("ref") for r in w_refs] == ["tensor"] * 5
    assert [r.remember for r in w_refs] == [True] + [False] * 4
