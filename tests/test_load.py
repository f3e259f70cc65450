"""Load and faults, end to end, against `gradserve serve` subprocesses on 127.0.0.1.

- The harness of bench/load.py, CI-sized: 8 client threads for 5 s mixing every method on three
  graphs, with data held fixed and data changing: no errors, every method answered, the
  gauges back to 0, resident memory bounded.
- A server killed (SIGKILL) and restarted on the same port in the middle of a remote L-BFGS-B
  loop: the loop goes on (UNAVAILABLE retried, then NOT_FOUND for the graph and the data
  digests, answered by resending them) and ends where an uninterrupted run ends.
- Calls cancelled by the client, or past their deadline, while their reverse pass holds a
  tape: gradserve_tape_bytes_in_use and gradserve_inflight_requests return to 0."""

from __future__ import annotations

import importlib.util
import socket
import sys
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from gradserve.client.client import _DEFAULT_OPTIONS
from gradserve.v1 import service_pb2 as pb

import gradserve as gs
import gradserve.numpy as gnp
from gradserve.protocol import method_path, to_tensor

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("gradserve_bench_load", ROOT / "bench" / "load.py")
load = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = load
_spec.loader.exec_module(load)

MiB = 1 << 20


def gauge(server, name) -> float:
    return load.scrape(server.metrics_url).get((name, frozenset()), float("nan"))


# ---- the load harness, CI-sized ---------------------------------------------------------------


def test_load_every_method_no_errors_memory_flat():
    with load.Server() as server:
        report = load.run_load(
            server.address,
            clients=8,
            seconds=5.0,
            warmup=2.0,
            pid=server.pid,
            metrics_url=server.metrics_url,
        )
        print(load.format_report(report))
        assert report.error_count == 0, (report.errors, report.error_samples)
        assert all(report.latencies.get(m) for m in load.API_METHODS), report.latencies.keys()
        assert set(report.variants) == {"fixed", "changing", "new data"}
        assert report.gauges_after == {
            "gradserve_inflight_requests": 0,
            "gradserve_tape_bytes_in_use": 0,
        }
        # The server saw only successes (and no NOT_FOUND: nothing is evicted here).
        assert set(report.server_codes) == {"OK"}, report.server_codes
        assert report.server_codes["OK"] == report.calls
        start, end, _ = report.rss_growth()
        # Loose in CI (a short run on a shared machine): the 60 s run holds it to 20 MiB.
        assert end - start < 64 * MiB, load.format_report(report)
        assert not load.check(report, max_growth_mib=64)


# ---- a server restarted in the middle of an optimisation --------------------------------------


class CodeRecorder(grpc.UnaryUnaryClientInterceptor):
    """The status code of every call (attempt) on a channel, retries and resends included."""

    def __init__(self):
        self.codes = []

    def intercept_unary_unary(self, continuation, details, request):
        outcome = continuation(details, request)
        self.codes.append(outcome.code())
        return outcome


def _logistic_problem():
    rng = np.random.default_rng(7)
    n, d = 2000, 10
    X = rng.normal(size=(n, d))  # 160 KB: travels by digest after the first call
    y = (X @ rng.normal(size=d) + 0.5 * rng.normal(size=n) > 0).astype(float)

    def loss(w, X, y):
        z = X @ w
        return gnp.mean(gs.nn.softplus(z) - y * z) + 1e-3 * gnp.sum(w * w)

    graph = gs.trace(loss, gs.Spec((d,)), gs.Spec((n, d)), gs.Spec((n,)))
    assert X.nbytes >= 64 * 1024
    return graph, np.zeros(d), X, y


def test_server_restarted_mid_minimize_same_result():
    graph, x0, X, y = _logistic_problem()
    options = {"gtol": 1e-10, "ftol": 1e-15, "maxiter": 200}
    first = load.Server()
    servers = [first]
    try:
        with gs.Client(first.address, timeout=60) as cli:
            reference = gs.minimize(graph, x0, X, y, backend=cli, options=options, progress=False)
        assert reference.success and reference.nit >= 8, reference
        port, metrics_port = first.port, first.metrics_port
        first.close()  # the same ports again, for a fresh server
        servers[0] = load.Server(port=port, metrics_port=metrics_port)
        recorder = CodeRecorder()
        channel = grpc.intercept_channel(
            grpc.insecure_channel(servers[0].address, options=_DEFAULT_OPTIONS), recorder
        )
        restarted = threading.Event()
        restart_error = []
        steps = []

        def restart():
            try:
                time.sleep(0.3)  # down for a while: calls meanwhile find it UNAVAILABLE
                servers.append(load.Server(port=port, metrics_port=metrics_port))
            except Exception as exc:
                restart_error.append(exc)
            finally:
                restarted.set()

        def callback(intermediate_result):
            steps.append(intermediate_result.fun)
            if len(steps) == 4:
                servers[0].kill()  # SIGKILL: no drain, its cache is gone
                threading.Thread(target=restart, daemon=True).start()

        # driven from here, one call per step, over gRPC bytes: the digest protocol's recovery
        with gs.Client(channel, timeout=120, retries=12, shared_memory=False) as cli:
            result = gs.minimize(
                graph,
                x0,
                X,
                y,
                backend=cli,
                options=options,
                callback=callback,
                progress=False,
                server_side=False,
            )
        channel.close()
        assert restarted.wait(60) and not restart_error, restart_error
        assert len(servers) == 2
        codes = recorder.codes
        # The step after the kill found the server down, was retried until the new one
        # answered NOT_FOUND for the graph and the data (both by digest), and resent them.
        assert grpc.StatusCode.UNAVAILABLE in codes, codes
        assert codes.count(grpc.StatusCode.NOT_FOUND) == 1, codes
        new = load.scrape(servers[1].metrics_url)
        assert new[("gradserve_graph_cache_misses_total", frozenset())] == 2  # graph + X
        assert load.requests_by_code(new).get("NOT_FOUND") == 1
        # The same run as without the restart.
        assert result.success
        assert result.nit == reference.nit and result.nfev == reference.nfev
        np.testing.assert_allclose(result.x, reference.x, rtol=0, atol=1e-12)
        assert result.fun == pytest.approx(reference.fun, abs=1e-15)
    finally:
        for s in servers:
            s.kill()
            s.close()


# ---- cancellation and deadlines free the tape ---------------------------------------------------


def _slow_scan():
    """A reverse pass through 400 steps of 300x300 matmuls: seconds of work, a tape of
    hundreds of KiB that grows as the forward pass runs."""
    n, steps = 300, 400
    rng = np.random.default_rng(3)
    W = rng.random((n, n)) / n
    h0 = rng.random((n, n))

    def loss(W, h0):
        def step(h, _):
            return gnp.tanh(h @ W), ()

        h, _ = gs.scan(step, h0, None, length=steps)
        return gnp.sum(h)

    return gs.trace(loss, W, h0), W, h0


def _wait_for_tape(server, timeout=30.0):
    deadline = time.monotonic() + timeout
    while gauge(server, "gradserve_tape_bytes_in_use") <= 0:
        assert time.monotonic() < deadline, "the call never held a tape"
        time.sleep(0.02)


def _assert_gauges_return_to_zero(server, timeout=5.0):
    values = load.wait_for_gauges_zero(server.metrics_url, timeout=timeout)
    assert values == {"gradserve_inflight_requests": 0, "gradserve_tape_bytes_in_use": 0}, values


def test_cancelled_and_timed_out_calls_free_their_tape():
    graph, W, h0 = _slow_scan()
    with load.Server() as server:
        # 1. A raw grpc future, cancelled while the forward pass records the tape.
        request = pb.ValueAndGradRequest(
            graph=pb.GraphRef(body=graph.to_bytes()),
            args=[pb.TensorRef(tensor=to_tensor(a)) for a in (W, h0)],
        )
        with grpc.insecure_channel(server.address) as ch:
            future = ch.unary_unary(method_path("ValueAndGrad")).future(
                request.SerializeToString(), timeout=120
            )
            _wait_for_tape(server)
            assert future.cancel()
        _assert_gauges_return_to_zero(server)
        codes = load.requests_by_code(load.scrape(server.metrics_url))
        assert codes.get("CANCELLED") == 1, codes

        # 2. A Client whose timeout passes while the call holds a tape.
        with gs.Client(server.address, timeout=120) as cli:
            holder = []

            def slow():
                try:
                    cli.grad(graph, W, h0, argnums=(0, 1), timeout=1.5)
                except Exception as exc:
                    holder.append(exc)

            t = threading.Thread(target=slow)
            t.start()
            _wait_for_tape(server)
            t.join(30)
            assert not t.is_alive()
            assert len(holder) == 1 and isinstance(holder[0], gs.DeadlineExceeded), holder
            _assert_gauges_return_to_zero(server)
            # 3. Several at once, some queued for a compute slot: all stopped, all freed.
            outcomes = []

            def stopped():
                try:
                    cli.grad(graph, W, h0, timeout=1.0)
                    outcomes.append(None)
                except Exception as exc:
                    outcomes.append(exc)

            threads = [threading.Thread(target=stopped) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert len(outcomes) == 6
            assert all(isinstance(e, gs.DeadlineExceeded) for e in outcomes), outcomes
            _assert_gauges_return_to_zero(server)
            # The server still computes: the gauges are not stuck at 0 either.
            small = gs.trace(lambda x: gnp.sum(gnp.sin(x) ** 2), np.ones(3))
            assert np.allclose(cli.grad(small, np.ones(3)), np.sin(2.0))
        codes = load.requests_by_code(load.scrape(server.metrics_url))
        assert codes.get("DEADLINE_EXCEEDED") == 7, codes


def test_client_reconnects_within_2_s_however_long_the_server_was_down():
    """Regression: gRPC's reconnect backoff grows 1, 1.6, 2.6, 4.1 s ... up to 120 s, and
    until its next attempt every call fails at once with UNAVAILABLE: a Client whose server
    had been down for a while spent its retries against a server that was back up. The
    Client's channel now tries again at least every 2 s. Each attempt is one accept() on a
    listener that closes at once (a server that is not up yet)."""
    accepts = []
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    listener.settimeout(0.2)
    stop = threading.Event()

    def accept_and_close():
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepts.append(time.monotonic())
            conn.close()

    acceptor = threading.Thread(target=accept_and_close, daemon=True)
    acceptor.start()
    graph = gs.trace(lambda x: x * 2.0, 1.0)
    try:
        with gs.Client(f"127.0.0.1:{listener.getsockname()[1]}", retries=0) as cli:
            end = time.monotonic() + 10.0
            while time.monotonic() < end:  # a caller that keeps trying
                with pytest.raises(gs.client.ServiceUnavailable):
                    cli.evaluate(graph, 1.0, timeout=5)
                time.sleep(0.05)
    finally:
        stop.set()
        acceptor.join(5)
        listener.close()
    gaps = np.diff([*accepts, end])  # the last one: none since the last attempt
    assert len(accepts) >= 5 and gaps.max() < 3.0, np.round(gaps, 2)
