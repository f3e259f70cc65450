"""Overload and memory, end to end over loopback: --max-concurrent-rpcs refuses the calls beyond
it at once with a retry hint (health keeps answering), the Client retries such a refusal and
not a limit's, --max-request-memory refuses a call before allocating for it, and the metrics
gradserve_queue_depth and gradserve_refused_requests_total show both."""

from __future__ import annotations

import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from conftest import Recorder, ServerProcess
from google.rpc import error_details_pb2
from gradserve.server.admission import request_memory
from gradserve.v1 import service_pb2 as pb
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families

import gradserve as gs
import gradserve.numpy as gnp
from gradserve.protocol import method_path, to_tensor


def _chain(steps=60, n=300):
    """`steps` matmuls of n x n, then tanh: about a second of work for 60 x 300."""

    def chain(x, W):
        for _ in range(steps):
            x = gnp.tanh(x @ W)
        return gnp.sum(x)

    rng = np.random.default_rng(1)
    x, W = rng.random((n, n)), rng.random((n, n)) / n
    return gs.trace(chain, x, W), x, W


def _request(graph, *args) -> bytes:
    return pb.EvaluateRequest(
        graph=pb.GraphRef(body=graph.to_bytes()),
        args=[pb.TensorRef(tensor=to_tensor(a)) for a in args],
    ).SerializeToString()


def _details(err) -> dict:
    status = rpc_status.from_call(err)
    out = {}
    for d in status.details if status else []:
        for cls in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.RetryInfo,
            error_details_pb2.BadRequest,
        ):
            if d.Is(cls.DESCRIPTOR):
                msg = cls()
                d.Unpack(msg)
                out[cls.__name__] = msg
    return out


def scrape(server) -> dict:
    """{(name, frozenset(labels)): value} of every sample of the server's /metrics."""
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())), 0.0)


def _vm_hwm(pid) -> int:
    """The process's peak resident memory so far (bytes)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


@pytest.fixture(scope="module")
def narrow():
    """One compute slot and room for two calls (one computing, one queued)."""
    proc = ServerProcess("--workers", "1", env={"GRADSERVE_MAX_CONCURRENT_RPCS": "2"})
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def small_memory():
    proc = ServerProcess("--max-request-memory", "16MiB", "--workers", "2")
    yield proc
    proc.close()


# ---- --max-concurrent-rpcs ----------------------------------------------------------------------


def test_the_calls_beyond_the_limit_are_refused_at_once_with_a_retry_hint(narrow):
    graph, x, W = _chain()
    data = _request(graph, x, W)
    with gs.Client(narrow.address, timeout=60) as cli:
        cli.evaluate(graph, x, W)  # the plan compiled, the mean compute time known
    before = scrape(narrow)
    results = [None] * 5
    go = threading.Barrier(5)

    def call(k):
        with grpc.insecure_channel(narrow.address) as ch:
            stub = ch.unary_unary(method_path("Evaluate"))
            go.wait()
            start = time.monotonic()
            try:
                stub(data, timeout=60)
                results[k] = ("OK", time.monotonic() - start, None)
            except grpc.RpcError as err:
                results[k] = (err.code(), time.monotonic() - start, err)

    threads = [threading.Thread(target=call, args=(k,)) for k in range(5)]
    for t in threads:
        t.start()
    health, depth = [], []
    while any(t.is_alive() for t in threads):
        health.append(narrow.health(timeout=2.0))
        depth.append(_value(scrape(narrow), "gradserve_queue_depth"))
        time.sleep(0.05)
    for t in threads:
        t.join()
    refused = [r for r in results if r[0] == grpc.StatusCode.RESOURCE_EXHAUSTED]
    accepted = [r for r in results if r[0] == "OK"]
    assert len(refused) == 3 and len(accepted) == 2, [r[:2] for r in results]
    for _, seconds, err in refused:
        assert seconds < 1.5, seconds  # at once (seen at 0.51 s on a loaded machine)
        found = _details(err)
        assert found["ErrorInfo"].reason == "Overloaded"
        assert found["ErrorInfo"].metadata["limit"] == "max_concurrent_rpcs"
        delay = found["RetryInfo"].retry_delay.ToNanoseconds() / 1e9
        assert 0.05 <= delay <= 30
    assert min(seconds for _, seconds, _ in accepted) > max(seconds for _, seconds, _ in refused)
    assert set(health) == {"SERVING"}, health
    assert 1.0 in depth  # the second accepted call waited for the one slot
    after = scrape(narrow)
    assert _value(after, "gradserve_queue_depth") == 0
    assert (
        _value(after, "gradserve_refused_requests_total", reason="overloaded")
        - _value(before, "gradserve_refused_requests_total", reason="overloaded")
        == 3
    )
    assert (
        _value(after, "gradserve_requests_total", method="Evaluate", code="RESOURCE_EXHAUSTED")
        - _value(before, "gradserve_requests_total", method="Evaluate", code="RESOURCE_EXHAUSTED")
        == 3
    )
    with gs.Client(narrow.address, timeout=60, retries=0) as cli:  # serves the next call
        assert np.isclose(cli.evaluate(graph, x, W), gs.Engine().evaluate(graph, x, W))


def test_the_client_retries_an_overloaded_server_after_the_hinted_delay(narrow):
    graph, x, W = _chain()
    small = gs.trace(lambda a: a * 2.0, 1.0)
    recorder = Recorder()
    channel = grpc.intercept_channel(grpc.insecure_channel(narrow.address), recorder)
    with gs.Client(narrow.address, timeout=60) as busy, gs.Client(channel, timeout=60) as cli:
        busy.evaluate(graph, x, W)  # warm
        before = scrape(narrow)
        slow = [threading.Thread(target=busy.evaluate, args=(graph, x, W)) for _ in range(2)]
        for t in slow:
            t.start()
        deadline = time.monotonic() + 20
        while _value(scrape(narrow), "gradserve_inflight_requests") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert float(cli.evaluate(small, 3.0)) == 6.0  # refused, retried, answered
        for t in slow:
            t.join()
    channel.close()
    refused = _value(
        scrape(narrow), "gradserve_refused_requests_total", reason="overloaded"
    ) - _value(before, "gradserve_refused_requests_total", reason="overloaded")
    assert refused >= 1
    assert len(recorder.calls) == refused + 1  # each refusal retried, the last one answered


def test_without_retries_an_overloaded_server_is_service_unavailable(narrow):
    graph, x, W = _chain()
    with gs.Client(narrow.address, timeout=60) as busy:
        busy.evaluate(graph, x, W)  # warm
        slow = [threading.Thread(target=busy.evaluate, args=(graph, x, W)) for _ in range(2)]
        for t in slow:
            t.start()
        deadline = time.monotonic() + 20
        while _value(scrape(narrow), "gradserve_inflight_requests") < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        with gs.Client(narrow.address, timeout=60, retries=0) as cli:
            start = time.monotonic()
            with pytest.raises(gs.ServiceUnavailable, match="overloaded") as info:
                cli.evaluate(gs.trace(lambda a: a * 2.0, 1.0), 3.0)
            assert time.monotonic() - start < 0.5
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A deadline shorter than the hinted delay: given up at once, not slept into.
        with gs.Client(narrow.address, timeout=0.03) as cli:
            start = time.monotonic()
            with pytest.raises((gs.ServiceUnavailable, gs.DeadlineExceeded)):
                cli.evaluate(gs.trace(lambda a: a * 3.0, 1.0), 3.0)
            assert time.monotonic() - start < 0.5
        for t in slow:
            t.join()


def test_a_refusal_for_a_limit_is_not_retried(small_memory):
    recorder = Recorder()
    channel = grpc.intercept_channel(grpc.insecure_channel(small_memory.address), recorder)
    graph = gs.trace(lambda x: gnp.sin(x) * 2.0, gs.Spec((5000,)))
    with gs.Client(channel, timeout=60, shared_memory=False) as cli:
        with pytest.raises(gs.LimitError):
            cli.jacobian(graph, np.ones(5000))
    channel.close()
    assert [method for method, _ in recorder.calls] == ["Jacobian"]


# ---- --max-request-memory -----------------------------------------------------------------------


def _largest_under(bound, make):
    """The largest n whose graph make(n)'s evaluate is estimated within `bound`."""
    eng = gs.Engine()
    lo, hi = 1, 1 << 24
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        if request_memory(eng, "evaluate", make(mid))[0] <= bound:
            lo = mid
        else:
            hi = mid
    return lo


def test_a_call_just_under_the_memory_bound_runs_and_just_over_is_refused(small_memory):
    def make(n):
        return gs.trace(lambda x: gnp.exp(x) * 2.0, gs.Spec((n,)))

    n = _largest_under(16 << 20, make)
    assert request_memory(gs.Engine(), "evaluate", make(n))[0] <= 16 << 20
    with gs.Client(small_memory.address, timeout=60) as cli:
        out = cli.evaluate(make(n), np.zeros(n))
        assert out.shape == (n,) and out[0] == 2.0
        assert cli.last_stats.peak_bytes <= 16 << 20
        before = scrape(small_memory)
        with pytest.raises(gs.LimitError, match="max-request-memory") as info:
            cli.evaluate(make(n + 1), np.zeros(n + 1))
        assert info.value.where == "request memory"
    after = scrape(small_memory)
    assert (
        _value(after, "gradserve_refused_requests_total", reason="request_memory")
        - _value(before, "gradserve_refused_requests_total", reason="request_memory")
        == 1
    )


def test_declared_tensors_over_the_bound_are_refused_before_decoding(small_memory):
    graph = gs.trace(lambda x: gnp.sum(x), gs.Spec((3_000_000,)))  # 24 MB of float64
    data = _request(graph, np.ones(3_000_000))
    with grpc.insecure_channel(
        small_memory.address, options=[("grpc.max_send_message_length", -1)]
    ) as ch:
        with pytest.raises(grpc.RpcError) as info:
            ch.unary_unary(method_path("Evaluate"))(data, timeout=60)
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    found = _details(err)
    assert found["ErrorInfo"].reason == "LimitError"
    assert found["ErrorInfo"].metadata["limit"] == "max_request_memory"
    assert found["ErrorInfo"].metadata["requested_bytes"] == "24000000"
    assert found["ErrorInfo"].metadata["max_request_memory"] == str(16 << 20)
    assert found["BadRequest"].field_violations[0].field == "arguments"
    assert "RetryInfo" not in found  # retrying cannot help


def test_a_jacobian_whose_result_is_over_the_bound_is_refused_without_allocating(small_memory):
    graph = gs.trace(
        lambda x: gnp.sin(x) * 2.0, gs.Spec((6000,))
    )  # a 288 MB Jacobian, held and encoded
    x = np.ones(6000)
    with gs.Client(small_memory.address, timeout=60) as cli:
        cli.evaluate(graph, x)  # warm: the connection, the graph in the cache
        hwm = _vm_hwm(small_memory.proc.pid)
        start = time.monotonic()
        with pytest.raises(gs.LimitError, match="results 576000000") as info:
            cli.jacobian(graph, x)
        assert time.monotonic() - start < 2.0
        assert info.value.where == "request memory"
        assert _vm_hwm(small_memory.proc.pid) - hwm < 32 << 20  # nothing near 288 MB
        small = gs.trace(lambda x: gnp.sin(x) * 2.0, gs.Spec((300,)))  # 720 kB: runs
        J = cli.jacobian(small, np.zeros(300))
        assert np.allclose(J, 2.0 * np.eye(300))


def test_loop_tapes_growing_past_the_bound_stop_the_call(small_memory):
    def loop(x):
        def body(carry):
            i, v = carry
            return i + 1, gnp.sin(v) * 1.01

        return gnp.sum(gs.while_loop(lambda c: c[0] < 40, body, (0, x))[1])

    graph = gs.trace(loop, gs.Spec((100_000,)))  # 40 carries of 800 kB on the tape
    x = np.ones(100_000)
    with gs.Client(small_memory.address, timeout=60) as cli:
        assert np.isclose(cli.evaluate(graph, x), gs.Engine().evaluate(graph, x))  # no tape
        with pytest.raises(gs.LimitError, match="loop tapes") as info:
            cli.grad(graph, x)
        assert info.value.where == "request memory"


def test_the_flags_are_in_the_help_with_their_environment_variables():
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "gradserve", "serve", "--help"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    flat = out.replace("\n", "").replace(" ", "")
    for flag in ("max-concurrent-rpcs", "max-request-memory"):
        assert f"--{flag}" in out
        assert "GRADSERVE_" + flag.upper().replace("-", "_") in flat
    from gradserve.__main__ import parse_optional_count

    assert parse_optional_count("none") is None and parse_optional_count("8") == 8
    with pytest.raises(Exception, match="not a count"):
        parse_optional_count("-1")
