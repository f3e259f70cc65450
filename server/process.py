"""`gradserve serve` in a subprocess on loopback ports, as a user starts it: for tests,
benchmarks and examples that need a real server process."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`python -m gradserve serve --host 127.0.0.1` with `flags`, on free ports unless given;
    ready once the standard health check answers SERVING. Its output goes to a log file
    (`output()`), never a pipe that could fill up."""

    def __init__(self, *flags, port=None, metrics_port=None, env=None, ready_timeout=60.0):
        from gradserve.__main__ import health_check

        self.port = port or free_port()
        self.metrics_port = metrics_port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        # kept open for the process's life; close() removes it
        self.log = tempfile.NamedTemporaryFile(prefix="gradserve-", suffix=".log", delete=False)  # noqa: SIM115
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
        self.pid = self.proc.pid
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
        """SIGTERM (the server drains), then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self):
        """SIGKILL: the process dies at once, as in a crash."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)

    def close(self):
        """SIGTERM, SIGKILL if the drain takes more than 30 s; the log is removed."""
        try:
            self.terminate()
        except Exception:
            self.kill()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
