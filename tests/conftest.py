"""Shared fixtures. `backend` runs the contract tests against every implementation of the
API: the in-process Engine, and a Client talking to a live server on loopback, started the way
a user starts it (`python -m gradserve serve --port ... --metrics-port ...` in a subprocess)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import grpc
import pytest

import gradserve as gs


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`gradserve serve` in a subprocess on free loopback ports; ready once the standard
    health check answers SERVING."""

    def __init__(self, *flags, env=None, ready_timeout=60.0):
        from gradserve.__main__ import health_check

        self.port = free_port()
        self.metrics_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.log = tempfile.NamedTemporaryFile(prefix="gradserve-", suffix=".log", delete=False)
        self.command = [
            sys.executable,
            "-m",
            "gradserve",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--metrics-port",
            str(self.metrics_port),
            *map(str, flags),
        ]
        self.proc = subprocess.Popen(
            self.command,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gradserve serve exited with {self.proc.returncode}:\n" + self.output()
                )
            if health_check(self.address, timeout=1.0) == "SERVING":
                break
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("gradserve serve did not become SERVING:\n" + self.output())
            time.sleep(0.1)

    def health(self, timeout=5.0) -> str:
        from gradserve.__main__ import health_check

        return health_check(self.address, timeout=timeout)

    def output(self) -> str:
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def terminate(self, timeout=30.0) -> int:
        """SIGTERM, then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def close(self):
        try:
            self.terminate()
        except Exception:
            self.kill()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


@pytest.fixture(scope="session")
def server():
    """The shared live server (default settings)."""
    proc = ServerProcess()
    yield proc
    proc.close()


@pytest.fixture(scope="session")
def remote(server):
    """A Client of the shared server."""
    with gs.Client(server.address, timeout=120) as client:
        yield client


@pytest.fixture(params=["engine", "client"])
def backend(request):
    if request.param == "engine":
        return gs.Engine()
    return request.getfixturevalue("remote")


class Recorder(grpc.UnaryUnaryClientInterceptor):
    """Records (method, request bytes) of every call on a channel."""

    def __init__(self):
        self.calls = []

    def intercept_unary_unary(self, continuation, details, request):
        self.calls.append((details.method.rsplit("/", 1)[-1], len(request)))
        return continuation(details, request)
