"""TLS, mutual TLS and bearer tokens, end to end over loopback, with certificates made here
(trustme: a throwaway CA)."""

from __future__ import annotations

import os
import signal
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
from conftest import ServerProcess
from gradserve.server import Config, serve
from gradserve.v1 import graph_pb2
from gradserve.v1 import service_pb2 as pb
from test_service import SEED, sample, scrape

import gradserve as gs
from gradserve.protocol import SERVICE_NAME, method_path, to_tensor

trustme = pytest.importorskip("trustme")

VALUE = pytest.approx(11.652071455223084)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    root = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    other_ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("client.gradserve.test")
    stranger = other_ca.issue_cert("stranger.gradserve.test")
    paths = {}
    for name, blob in {
        "ca": ca.cert_pem.bytes(),
        "server.crt": b"".join(p.bytes() for p in server.cert_chain_pems),
        "server.key": server.private_key_pem.bytes(),
        "client.crt": b"".join(p.bytes() for p in client.cert_chain_pems),
        "client.key": client.private_key_pem.bytes(),
        "stranger.crt": b"".join(p.bytes() for p in stranger.cert_chain_pems),
        "stranger.key": stranger.private_key_pem.bytes(),
    }.items():
        path = root / name
        path.write_bytes(blob)
        paths[name] = str(path)
    return paths


def _start(**settings):
    return serve(block=False, host="127.0.0.1", port=0, metrics_port=-1, **settings)


def _code(exc_info):
    return getattr(exc_info.value, "code", None)


# ---- TLS ----------------------------------------------------------------------------------------


def test_tls_with_root_certificates_as_a_path_or_bytes(pki):
    running = _start(tls_cert=pki["server.crt"], tls_key=pki["server.key"])
    target = f"127.0.0.1:{running.port}"
    try:
        with gs.Client(target, timeout=30, root_certificates=pki["ca"]) as cli:
            assert float(cli.evaluate(SEED, 2.0, 5.0)) == VALUE
        with open(pki["ca"], "rb") as f:
            ca = f.read()
        with gs.Client(target, timeout=30, root_certificates=ca) as cli:
            assert float(cli.evaluate(SEED, 2.0, 5.0)) == VALUE
        # plaintext to a TLS port: the handshake fails, UNAVAILABLE after the retries
        with gs.Client(target, timeout=10, retries=1, backoff=0.01) as cli:
            with pytest.raises(gs.ServiceUnavailable):
                cli.evaluate(SEED, 2.0, 5.0)
        # a server certificate from another CA is not trusted
        other = trustme.CA().cert_pem.bytes()
        with gs.Client(target, timeout=10, retries=1, backoff=0.01, root_certificates=other) as cli:
            with pytest.raises(gs.ServiceUnavailable):
                cli.evaluate(SEED, 2.0, 5.0)
    finally:
        running.stop(0)


def test_mutual_tls_requires_a_client_certificate_signed_by_the_client_ca(pki):
    running = _start(tls_cert=pki["server.crt"], tls_key=pki["server.key"], tls_client_ca=pki["ca"])
    target = f"127.0.0.1:{running.port}"
    try:
        with gs.Client(
            target,
            timeout=30,
            root_certificates=pki["ca"],
            private_key=pki["client.key"],
            certificate_chain=pki["client.crt"],
        ) as cli:
            assert float(cli.evaluate(SEED, 2.0, 5.0)) == VALUE
        for key, chain in ((None, None), (pki["stranger.key"], pki["stranger.crt"])):
            with gs.Client(
                target,
                timeout=10,
                retries=1,
                backoff=0.01,
                root_certificates=pki["ca"],
                private_key=key,
                certificate_chain=chain,
            ) as cli:
                with pytest.raises(gs.ServiceUnavailable):  # the handshake fails
                    cli.evaluate(SEED, 2.0, 5.0)
    finally:
        running.stop(0)


def test_tls_settings_are_checked_at_start(pki, tmp_path):
    with pytest.raises(OSError, match="--tls-key"):
        _start(tls_cert=pki["server.crt"])
    with pytest.raises(OSError, match="--tls-client-ca"):
        _start(tls_client_ca=pki["ca"])
    with pytest.raises(OSError, match="--auth-token-file"):
        _start(auth_token_file=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="private_key and certificate_chain"):
        gs.Client("127.0.0.1:1", private_key=pki["client.key"])
    with pytest.raises(ValueError, match="token"):
        gs.Client("127.0.0.1:1", token="two words")


# ---- bearer tokens ------------------------------------------------------------------------------


def _raw(address, method, data, metadata=None):
    with grpc.insecure_channel(address) as ch:
        try:
            ch.unary_unary(method_path(method))(data, timeout=10, metadata=metadata)
            return grpc.StatusCode.OK
        except grpc.RpcError as err:
            return err.code()


def test_tokens_over_tls_as_call_credentials(pki, tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("# clients\nalpha-token-1\n\n  beta-token-2  \n")
    running = _start(
        tls_cert=pki["server.crt"], tls_key=pki["server.key"], auth_token_file=str(tokens)
    )
    target = f"127.0.0.1:{running.port}"
    try:
        for token in ("alpha-token-1", "beta-token-2"):
            with gs.Client(target, timeout=30, root_certificates=pki["ca"], token=token) as cli:
                assert float(cli.evaluate(SEED, 2.0, 5.0)) == VALUE
        for token in ("gamma", None):
            with gs.Client(target, timeout=30, root_certificates=pki["ca"], token=token) as cli:
                with pytest.raises(gs.ServiceError) as info:
                    cli.evaluate(SEED, 2.0, 5.0)
                assert _code(info) == grpc.StatusCode.UNAUTHENTICATED
                assert "UNAUTHENTICATED" in str(info.value)
    finally:
        running.stop(0)


def test_tokens_over_plaintext_health_open_reflection_closed(tmp_path):
    from gradserve.__main__ import health_check

    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret-token\n")
    running = _start(auth_token_file=str(tokens))
    address = f"127.0.0.1:{running.port}"
    data = pb.EvaluateRequest(
        graph=pb.GraphRef(body=SEED.to_bytes()),
        args=[pb.TensorRef(tensor=to_tensor(np.float64(v))) for v in (2, 5)],
    ).SerializeToString()
    try:
        assert _raw(address, "Evaluate", data) == grpc.StatusCode.UNAUTHENTICATED
        for value in ("Bearer wrong", "Basic s3cret-token", "s3cret-token", "Bearer "):
            got = _raw(address, "Evaluate", data, metadata=(("authorization", value),))
            assert got == grpc.StatusCode.UNAUTHENTICATED, value
        ok = (("authorization", "Bearer s3cret-token"),)
        assert _raw(address, "Evaluate", data, metadata=ok) == grpc.StatusCode.OK
        assert _raw(address, "Evaluate", data, (("authorization", "bearer s3cret-token"),)) == (
            grpc.StatusCode.OK
        )
        # health stays open to probes and balancers
        assert health_check(address) == "SERVING"
        assert health_check(address, service=SERVICE_NAME) == "SERVING"
        # reflection needs the token
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        with grpc.insecure_channel(address) as ch:
            stub = reflection_pb2_grpc.ServerReflectionStub(ch)
            request = [reflection_pb2.ServerReflectionRequest(list_services="")]
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ServerReflectionInfo(iter(request), timeout=10))
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
            replies = list(stub.ServerReflectionInfo(iter(request), timeout=10, metadata=ok))
            assert SERVICE_NAME in {s.name for s in replies[0].list_services_response.service}
        # the Client sends it as metadata over plaintext, also on a ready channel
        with gs.Client(address, timeout=30, token="s3cret-token") as cli:
            assert float(cli.evaluate(SEED, 2.0, 5.0)) == VALUE
        with grpc.insecure_channel(address) as ch:
            with gs.Client(ch, timeout=30, token="s3cret-token") as cli:
                assert float(cli.grad(SEED, 2.0, 5.0)) == pytest.approx(5.5)
        with gs.Client(address, timeout=30, retries=3) as cli:
            with pytest.raises(gs.ServiceError, match="UNAUTHENTICATED.*bearer token"):
                cli.evaluate(SEED, 2.0, 5.0)
    finally:
        running.stop(0)


def test_token_file_reloaded_by_running_reload(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("old-token\n")
    running = _start(auth_token_file=str(tokens))
    target = f"127.0.0.1:{running.port}"
    try:
        with (
            gs.Client(target, timeout=30, token="old-token") as old,
            gs.Client(target, timeout=30, token="new-token") as new,
        ):
            assert float(old.evaluate(SEED, 2.0, 5.0)) == VALUE
            with pytest.raises(gs.ServiceError, match="UNAUTHENTICATED"):
                new.evaluate(SEED, 2.0, 5.0)
            tokens.write_text("# rotated\nnew-token\n")
            running.reload()
            assert float(new.evaluate(SEED, 2.0, 5.0)) == VALUE
            with pytest.raises(gs.ServiceError, match="UNAUTHENTICATED"):
                old.evaluate(SEED, 2.0, 5.0)
            tokens.unlink()  # unreadable: the tokens in force stay
            running.reload()
            assert float(new.evaluate(SEED, 2.0, 5.0)) == VALUE
    finally:
        running.stop(0)


# ---- a server process: SIGHUP, metrics, and what its log lines hold ------------------------------


def test_sighup_reloads_and_log_lines_hold_no_token_tensor_or_graph(tmp_path):
    secret, rotated = "tok-SECRET-4b1d", "tok-ROTATED-77ee"
    tokens = tmp_path / "tokens"
    tokens.write_text(secret + "\n")
    proc = ServerProcess("--auth-token-file", tokens, "--log-level", "INFO")
    try:
        assert proc.health() == "SERVING"  # no token needed
        with gs.Client(proc.address, timeout=30, token="tok-WRONG-9c0f") as cli:
            with pytest.raises(gs.ServiceError, match="UNAUTHENTICATED"):
                cli.evaluate(SEED, 2.0, 5.0)
        auth = (("authorization", f"Bearer {secret}"),)
        # a bad graph: its op name and a node name are markers
        msg = graph_pb2.Graph.FromString(SEED.to_bytes())
        msg.nodes[1].op = "op_MARKER_GRAPH_BODY"
        bad_graph = pb.EvaluateRequest(
            graph=pb.GraphRef(body=msg.SerializeToString()),
            args=[pb.TensorRef(tensor=to_tensor(np.float64(v))) for v in (2, 5)],
        ).SerializeToString()
        assert _raw(proc.address, "Evaluate", bad_graph, auth) == grpc.StatusCode.INVALID_ARGUMENT
        # a bad argument whose bytes carry a marker, and a digest that is not one
        tensor = to_tensor(np.frombuffer(b"TENSOR_CONTENT_MARKER!!!", dtype=np.int64))
        bad_args = [
            pb.EvaluateRequest(
                graph=pb.GraphRef(body=SEED.to_bytes()),
                args=[pb.TensorRef(tensor=tensor), pb.TensorRef(tensor=to_tensor(5.0))],
            ),
            pb.EvaluateRequest(
                graph=pb.GraphRef(body=SEED.to_bytes()),
                args=[pb.TensorRef(digest="TENSOR_DIGEST_MARKER"), pb.TensorRef(digest="x")],
            ),
        ]
        for request in bad_args:
            code = _raw(proc.address, "Evaluate", request.SerializeToString(), auth)
            assert code == grpc.StatusCode.INVALID_ARGUMENT
        # SIGHUP rereads the token file
        tokens.write_text(rotated + "\n")
        proc.proc.send_signal(signal.SIGHUP)
        with gs.Client(proc.address, timeout=30, token=rotated) as cli:
            deadline = time.monotonic() + 10
            while True:
                try:
                    assert float(cli.evaluate(SEED, 2.0, 5.0)) == VALUE
                    break
                except gs.ServiceError:
                    assert time.monotonic() < deadline, proc.output()
                    time.sleep(0.1)
        samples = scrape(proc)
        assert (
            sample(samples, "gradserve_requests_total", method="Evaluate", code="UNAUTHENTICATED")
            >= 1
        )
        log = proc.output()
        assert "Evaluate UNAUTHENTICATED" in log and "Evaluate INVALID_ARGUMENT" in log
        assert "SIGHUP" in log
        for marker in (secret, rotated, "tok-WRONG", "MARKER", "Bearer"):
            assert marker not in log, (marker, log)
    finally:
        proc.close()


def test_metrics_host_binds_metrics_apart(tmp_path):
    running = serve(block=False, host="127.0.0.1", port=0, metrics_port=0, metrics_host="127.0.0.2")
    try:
        port = running.metrics_port
        body = urllib.request.urlopen(f"http://127.0.0.2:{port}/metrics", timeout=10).read()
        assert b"gradserve_requests_total" in body
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        running.stop(0)


def test_security_flags_are_config_fields_and_env_vars():
    fields = Config()
    assert fields.max_connection_age_seconds == 300.0
    assert (fields.tls_cert, fields.tls_key, fields.tls_client_ca) == ("", "", "")
    assert (fields.auth_token_file, fields.metrics_host) == ("", "")
    with pytest.raises(RuntimeError, match="cannot read --auth-token-file"):
        ServerProcess(env={"GRADSERVE_AUTH_TOKEN_FILE": "/nonexistent/tokens"})


def test_health_command_checks_a_tls_and_a_mutual_tls_server(pki):
    """`gradserve health` (the image's HEALTHCHECK) reaches a server that serves TLS."""
    import subprocess
    import sys

    def health(target, *flags, env=None):
        command = [sys.executable, "-m", "gradserve", "health", "--target", target, *flags]
        return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)

    tls = _start(tls_cert=pki["server.crt"], tls_key=pki["server.key"])
    mutual = _start(tls_cert=pki["server.crt"], tls_key=pki["server.key"], tls_client_ca=pki["ca"])
    try:
        target = f"127.0.0.1:{tls.port}"
        assert health(target).returncode == 3  # plaintext to a TLS port: no handshake
        done = health(target, "--tls-ca", pki["ca"])
        assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
        env = {**os.environ, "GRADSERVE_HEALTH_TLS_CA": pki["ca"]}
        assert health(target, env=env).returncode == 0
        # the certificate names 127.0.0.1 and localhost, not this name
        assert health(target, "--tls-ca", pki["ca"], "--tls-server-name", "other").returncode == 3

        target = f"127.0.0.1:{mutual.port}"
        assert health(target, "--tls-ca", pki["ca"]).returncode == 3  # no client certificate
        client = ("--tls-cert", pki["client.crt"], "--tls-key", pki["client.key"])
        done = health(target, "--tls-ca", pki["ca"], *client)
        assert (done.returncode, done.stdout.strip()) == (0, "SERVING"), done.stderr
        missing = health(target, "--tls-ca", pki["ca"] + ".missing")
        assert missing.returncode == 2 and "gradserve health:" in missing.stderr
    finally:
        tls.stop(0)
        mutual.stop(0)


def test_unknown_methods_without_a_token_are_unimplemented_and_leave_no_series(tmp_path):
    tokens = tmp_path / "tokens"
    tokens.write_text("s3cret\n")
    running = serve(
        block=False, host="127.0.0.1", port=0, metrics_port=0, auth_token_file=str(tokens)
    )
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            for k in range(3):
                call = channel.unary_unary(f"/gradserve.v1.Gradients/Bogus{k}")
                with pytest.raises(grpc.RpcError) as info:
                    call(b"", timeout=10)
                assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
        url = f"http://127.0.0.1:{running.metrics_port}/metrics"
        assert "Bogus" not in urllib.request.urlopen(url, timeout=10).read().decode()
    finally:
        running.stop(0)
