"""The `gradserve` command as users run it (a subprocess): flag and environment validation,
busy ports, help and version, readable sizes, and `gradserve health`'s exit codes and weight."""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
import sys
import time

import pytest
from conftest import free_port

GRADSERVE = [sys.executable, "-m", "gradserve"]


def run(*args, env=None, timeout=60):
    return subprocess.run(
        [*GRADSERVE, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def serve(*flags, env=None, timeout=30):
    """`gradserve serve` on loopback without metrics unless the flags say otherwise."""
    return run(
        "serve", "--host", "127.0.0.1", "--metrics-port", "-1", *flags, env=env, timeout=timeout
    )


def assert_usage_error(done, *expected):
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for text in expected:
        assert text in lines[0], done.stderr


# ---- gradserve serve: every flag checked before anything starts ---------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--port", "70000", "--port: 70000 is not a port (0-65535)"),
        ("--port", "-1", "--port: -1 is not a port (0-65535)"),
        ("--port", "http", "--port: 'http' is not a port (0-65535)"),
        ("--metrics-port", "70000", "--metrics-port: 70000 is not a port (0-65535, -1: off)"),
        ("--metrics-port", "-2", "--metrics-port: -2 is not a port"),
        ("--workers", "-3", "--workers: -3 is not an integer >= 0"),
        ("--log-level", "verbose", "--log-level: 'verbose' is not one of DEBUG, INFO"),
        ("--max-nodes", "0", "--max-nodes: 0 is not an integer >= 1"),
        ("--max-elements", "-5", "--max-elements: -5 is not an integer >= 1"),
        ("--max-message-bytes", "-1", "--max-message-bytes: -1 is not a size"),
        ("--cache-bytes", "12XB", "--cache-bytes: '12XB' is not a size"),
        ("--max-tape-bytes", "lots", "--max-tape-bytes: 'lots' is not a size"),
        ("--grace-seconds", "-1", "--grace-seconds: -1 is not a number of seconds >= 0"),
        ("--shutdown-delay-seconds", "nan", "--shutdown-delay-seconds: 'nan' is not a number"),
    ],
)
def test_a_bad_flag_is_a_one_line_usage_error(flag, value, expected):
    done = serve("--port", "0", flag, value)
    assert_usage_error(done, "gradserve serve: error: " + expected)


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("GRADSERVE_PORT", "70000", "GRADSERVE_PORT=70000: not a port (0-65535)"),
        ("GRADSERVE_WORKERS", "-3", "GRADSERVE_WORKERS=-3: not an integer >= 0"),
        ("GRADSERVE_LOG_LEVEL", "verbose", "GRADSERVE_LOG_LEVEL=verbose: not one of DEBUG"),
        ("GRADSERVE_CACHE_BYTES", "1 GB of RAM", "GRADSERVE_CACHE_BYTES=1 GB of RAM: not a size"),
    ],
)
def test_a_bad_environment_variable_is_named(env, value, expected):
    done = run("serve", "--host", "127.0.0.1", env={env: value})
    assert_usage_error(done, "gradserve serve: error: " + expected)


def test_the_flag_wins_over_a_bad_environment_variable():
    """A flag given on the command line replaces the variable, so the variable is not read."""
    from gradserve.__main__ import build_parser

    os.environ["GRADSERVE_WORKERS"] = "lots"
    try:
        args = build_parser().parse_args(["serve", "--workers", "2"])
    finally:
        del os.environ["GRADSERVE_WORKERS"]
    assert args.workers == 2


def test_valid_edge_values_are_accepted():
    from gradserve.__main__ import build_parser

    args = build_parser().parse_args(
        [
            "serve",
            "--port",
            "0",
            "--metrics-port",
            "-1",
            "--workers",
            "0",
            "--log-level",
            "warning",
            "--max-tape-bytes",
            "none",
            "--cache-bytes",
            "0",
            "--max-message-bytes",
            "1.5KiB",
            "--max-nodes",
            "1",
            "--grace-seconds",
            "0",
        ]
    )
    assert (args.port, args.metrics_port, args.workers, args.log_level) == (0, -1, 0, "WARNING")
    assert (args.max_tape_bytes, args.cache_bytes, args.max_message_bytes) == (None, 0, 1536)
    assert (args.max_nodes, args.grace_seconds) == (1, 0.0)


@pytest.mark.parametrize("flag", ["--port", "--metrics-port"])
def test_a_busy_port_is_named_with_its_flag(flag):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        other = "--metrics-port" if flag == "--port" else "--port"
        done = run("serve", "--host", "127.0.0.1", other, str(free_port()), flag, str(port))
    assert done.returncode not in (0, None), done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert f"cannot listen on 127.0.0.1:{port} ({flag}): address already in use" in done.stderr


# ---- gradserve, --version, --help -------------------------------------------------------------


def test_gradserve_alone_prints_the_help():
    done = run()
    assert done.returncode == 2
    assert done.stdout.startswith("usage: gradserve"), done.stdout + done.stderr
    assert "serve" in done.stdout and "health" in done.stdout


def test_version():
    done = run("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"gradserve {importlib.metadata.version('gradserve')}\n"


def test_help_shows_sizes_readably():
    out = run("serve", "--help").stdout.replace("\n", " ")
    assert "default: 256 MiB" in out and "default: 1 GiB" in out, out


def test_the_start_up_line_shows_sizes_readably(server):
    line = next(ln for ln in server.output().splitlines() if "serving on" in ln)
    assert "max message 256 MiB" in line and "cache 1 GiB" in line, line
    assert "max tape unbounded" in line and "max nodes 1000000" in line, line
    assert "bytes" not in line, line


# ---- gradserve health ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def in_process_server():
    from gradserve.server import serve

    running = serve(block=False, host="127.0.0.1", port=0, metrics_port=-1)
    yield running
    running.stop(0)


def health(target, *flags, timeout=60):
    return run("health", "--target", target, *flags, timeout=timeout)


def test_health_serving_and_not_serving(in_process_server):
    from grpc_health.v1 import health_pb2

    target = f"127.0.0.1:{in_process_server.port}"
    ok = health(target)
    assert (ok.returncode, ok.stdout) == (0, "SERVING\n"), ok.stderr
    in_process_server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        down = health(target)
    finally:
        in_process_server.health.set("", health_pb2.HealthCheckResponse.SERVING)
    assert (down.returncode, down.stdout) == (1, "NOT_SERVING\n"), down.stderr
    unknown = health(target, "--service", "no.such.Service")
    assert unknown.returncode == 1 and unknown.stdout.startswith("SERVICE_UNKNOWN"), unknown.stdout


def test_health_fails_fast_when_nothing_listens():
    port = free_port()
    start = time.monotonic()
    done = health(f"127.0.0.1:{port}", "--timeout", "20")
    elapsed = time.monotonic() - start
    assert done.returncode == 3, done.stdout + done.stderr
    assert done.stdout.startswith(f"UNAVAILABLE: cannot reach 127.0.0.1:{port}"), done.stdout
    assert elapsed < 10, elapsed


def test_health_times_out_on_a_silent_server():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel accepts connections; nothing ever answers
        target = "127.0.0.1:%d" % silent.getsockname()[1]
        done = health(target, "--timeout", "0.5")
    assert done.returncode == 4, done.stdout + done.stderr
    assert done.stdout.startswith(f"DEADLINE_EXCEEDED: no answer from {target} within 0.5 s")


def test_health_bad_usage_is_2():
    assert_usage_error(health("127.0.0.1:1", "--timeout", "-1"), "--timeout")


HEALTH_WEIGHT = """
import sys
from gradserve.__main__ import main

sys.argv = ["gradserve", "health", "--target", {target!r}, "--timeout", "5"]
code = main()
heavy = sorted(
    name for name in sys.modules
    if name in ("numpy", "scipy") or name.startswith(("gradserve.engine", "gradserve.server"))
)
print(code, heavy)
"""


def test_health_imports_neither_numpy_nor_the_engine(in_process_server):
    for target in (f"127.0.0.1:{in_process_server.port}", f"127.0.0.1:{free_port()}"):
        done = subprocess.run(
            [sys.executable, "-c", HEALTH_WEIGHT.format(target=target)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] in ("0 []", "3 []"), done.stdout


# ---- start-up edge cases -------------------------------------------------------------------------


def test_a_failed_start_releases_its_grpc_port():
    """The metrics port is busy: start fails, and the gRPC port it had bound is free again."""
    from gradserve.server import serve as start_server

    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError, match="--metrics-port"):
            start_server(
                block=False, host="127.0.0.1", port=port, metrics_port=busy.getsockname()[1]
            )
    running = start_server(block=False, host="127.0.0.1", port=port, metrics_port=-1)
    try:
        assert running.port == port
    finally:
        running.stop(0)


def test_limits_beyond_grpcs_32_bit_arguments_start():
    from gradserve.server import serve as start_server

    running = start_server(
        block=False,
        host="127.0.0.1",
        port=0,
        metrics_port=-1,
        max_message_bytes=4 << 30,
        max_connection_age_seconds=30 * 86400.0,
        max_concurrent_rpcs=None,
    )
    try:
        assert running.servicer.admission.max_concurrent == 1024  # `none`: a large pool, not 0
    finally:
        running.stop(0)


def test_health_tls_flags_are_checked():
    for flags in (("--tls-key", "k.pem"), ("--tls-cert", "c.pem"), ("--tls-server-name", "n")):
        done = health("127.0.0.1:1", *flags)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
