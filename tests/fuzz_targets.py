"""The fuzz targets and their oracles, shared by tests/test_fuzz.py and fuzz/run.py.

- `decode(data)`: `gs.Graph.from_bytes` in-process. Only `gs.GraphError` (`gs.LimitError` is
  one) may come out; a graph that decodes re-encodes to a graph with the same digest.
- `run_engine(graph, args)`: every Engine method on a decoded graph, in-process. Only the
  exceptions the server answers with a client error may come out (GraphError, LimitError,
  ValueError, TypeError, MemoryError); anything else would be INTERNAL on the wire.
- `Target`: a live server (in-process `gradserve.server.serve`, or `gradserve serve` in a
  subprocess), called with raw request bytes through a generic channel, every call with a
  deadline. Allowed answers: OK, INVALID_ARGUMENT, RESOURCE_EXHAUSTED, NOT_FOUND; and
  DEADLINE_EXCEEDED only for a graph with a loop (a loop may legitimately run until the
  deadline stops it: a mutated bound or max_iterations). Never INTERNAL, UNKNOWN, a crash or a
  hang.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import warnings

import grpc
import numpy as np
from gradserve.v1 import graph_pb2

import gradserve as gs
from gradserve.protocol import method_path

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.NOT_FOUND,
}
# What the server maps to a client error (server/errors.py); anything else is INTERNAL.
CLIENT_EXCEPTIONS = (gs.GraphError, ValueError, TypeError, MemoryError)
LOOP_OPS = ("scan", "while_loop", "scan_record", "while_record", "loop_tape")
# Small limits: hostile sizes are refused before anything large is allocated.
LIMITS = gs.Limits(max_nodes=2000, max_elements=10**6)
SERVER_FLAGS = dict(  # noqa: C408
    max_nodes=2000,
    max_elements=10**6,
    max_tape_bytes=8 << 20,
    max_message_bytes=4 << 20,
    workers=2,
    cache_bytes=64 << 20,
)


class Bug(AssertionError):
    """An outcome the contract excludes."""


# ---- Graph.from_bytes -----------------------------------------------------------------------


def decode(data: bytes, limits=LIMITS):
    """The decoded graph, or None for a GraphError; any other exception is a Bug."""
    try:
        graph = gs.Graph.from_bytes(data, limits)
    except gs.GraphError:
        return None
    except BaseException as exc:
        raise Bug(f"Graph.from_bytes raised {type(exc).__name__}: {exc}") from exc
    again = gs.Graph.from_bytes(graph.to_bytes(), limits)
    if again.digest != graph.digest:
        raise Bug("a decoded graph does not re-encode to the same graph")
    return graph


def has_loop(data_or_graph) -> bool:
    """Whether a graph (or a graph's bytes, best effort) holds a loop op at any depth."""
    if isinstance(data_or_graph, gs.Graph):
        stack = [data_or_graph]
        while stack:
            g = stack.pop()
            for n in g.nodes:
                if n.op in LOOP_OPS:
                    return True
                stack += [v for v in n.attrs.values() if isinstance(v, gs.Graph)]
        return False
    return any(op.encode() in data_or_graph for op in ("scan", "while", "loop_tape"))


# ---- the engine in-process -------------------------------------------------------------------


class TimeUp(Exception):
    pass


def _stop_after(seconds):
    deadline = time.monotonic() + seconds

    def should_stop():
        if time.monotonic() > deadline:
            raise TimeUp

    return should_stop


def fitting_args(graph, rng):
    from strategies import sample

    return [sample(p.spec, rng) for p in graph.inputs]


HANG_SECONDS = 60.0
ENGINE = gs.Engine(max_tape_bytes=8 << 20, limits=LIMITS)


def run_engine(graph, args=None, seconds=5.0, methods=None):
    """Every Engine method on `graph`; returns {method: outcome class name}."""
    rng = np.random.default_rng(0)
    if args is None:
        args = fitting_args(graph, rng)
    if sum(p.spec.size for p in graph.inputs) > 10**4:
        return {}
    tangents = fitting_args(graph, rng)
    cts = [
        np.ones(p.spec.shape, p.spec.dtype) if p.spec.dtype != "bool" else None
        for p in graph.outputs
    ]
    floats = [i for i, p in enumerate(graph.inputs) if p.spec.dtype in ("float64", "float32")]
    argnums = tuple(floats) or 0
    calls = {
        "evaluate": lambda s: ENGINE.evaluate(graph, *args, should_stop=s),
        "value_and_grad": lambda s: ENGINE.value_and_grad(
            graph, *args, argnums=argnums, should_stop=s
        ),
        "vjp": lambda s: ENGINE.vjp(graph, tuple(args), tuple(cts), should_stop=s),
        "jvp": lambda s: ENGINE.jvp(graph, tuple(args), tuple(tangents), should_stop=s),
        "jacobian": lambda s: ENGINE.jacobian(graph, *args, argnums=argnums, should_stop=s),
        "hvp": lambda s: ENGINE.hvp(graph, tuple(args), tuple(tangents), should_stop=s),
        "hessian": lambda s: ENGINE.hessian(graph, *args, argnums=argnums, should_stop=s),
        "check_grad": lambda s: ENGINE.check_grad(graph, *args, should_stop=s),
    }
    outcome = {}
    for name, call in calls.items():
        if methods is not None and name not in methods:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                call(_stop_after(seconds))
            outcome[name] = "OK"
        except TimeUp:
            if not has_loop(graph):  # slow (deep nesting, a loaded machine) or a hang?
                try:
                    call(_stop_after(HANG_SECONDS))
                except TimeUp:
                    raise Bug(f"{name} ran over {HANG_SECONDS}s on a graph without loops") from None
                except CLIENT_EXCEPTIONS:
                    pass
            outcome[name] = "TimeUp"
        except CLIENT_EXCEPTIONS as exc:
            outcome[name] = type(exc).__name__
        except BaseException as exc:
            raise Bug(f"Engine.{name} raised {type(exc).__name__}: {exc}") from exc
    return outcome


# ---- a live server ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Target:
    """A gradserve server under fuzzing: `call(method, bytes)` checks the answer."""

    def __init__(self, subprocess_server=False, **flags):
        flags = {**SERVER_FLAGS, **flags}
        self.proc = self.running = None
        if subprocess_server:
            port = _free_port()
            cmd = [sys.executable, "-m", "gradserve", "serve", "--host", "127.0.0.1"]
            cmd += ["--port", str(port), "--metrics-port", "-1", "--log-level", "ERROR"]
            for key, value in flags.items():
                cmd += [f"--{key.replace('_', '-')}", str(value)]
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=dict(os.environ)
            )
            self.address = f"127.0.0.1:{port}"
        else:
            import logging

            import gradserve.server

            logging.getLogger("gradserve.server").setLevel(logging.ERROR)
            self.running = gradserve.server.serve(
                block=False, host="127.0.0.1", port=0, metrics_port=-1, **flags
            )
            self.address = f"127.0.0.1:{self.running.port}"
        self.channel = grpc.insecure_channel(
            self.address,
            options=[("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)],
        )
        self.stubs = {}
        deadline = time.monotonic() + 60
        while self.health() != "SERVING":
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(self.proc.stderr.read().decode(errors="replace"))
            if time.monotonic() > deadline:
                raise RuntimeError("the server did not become SERVING")
            time.sleep(0.1)

    def health(self, timeout=5.0) -> str:
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            reply = health_pb2_grpc.HealthStub(self.channel).Check(
                health_pb2.HealthCheckRequest(), timeout=timeout
            )
        except grpc.RpcError as err:
            return err.code().name
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    def raw(self, method: str, data: bytes, timeout: float):
        """(code, details, reply bytes) of one raw call."""
        stub = self.stubs.get(method)
        if stub is None:
            stub = self.stubs[method] = self.channel.unary_unary(method_path(method))
        try:
            return grpc.StatusCode.OK, "", stub(data, timeout=timeout)
        except grpc.RpcError as err:
            return err.code(), err.details(), None

    def call(self, method: str, data: bytes, timeout: float = 10.0, loop=None):
        """Send and check; returns the status code. `loop`: whether the request's graph holds
        a loop (DEADLINE_EXCEEDED allowed); None: guessed from the bytes."""
        code, details, _ = self.raw(method, data, timeout)
        if code in ALLOWED:
            return code
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            if loop is None:
                loop = has_loop(data)
            if loop:
                return code
            raise Bug(f"{method}: a hang (DEADLINE_EXCEEDED after {timeout}s) without loops")
        self.check_alive()
        raise Bug(f"{method}: {code.name}: {details}")

    def check_alive(self):
        if self.proc is not None and self.proc.poll() is not None:
            raise Bug(
                f"the server exited with {self.proc.returncode}: "
                + self.proc.stderr.read().decode(errors="replace")[-2000:]
            )
        status = self.health()
        if status != "SERVING":
            raise Bug(f"health answers {status}, not SERVING")

    def known_good(self):
        """A known-good request is served, with the right value."""
        from gradserve.v1 import service_pb2 as spb

        from gradserve.protocol import from_value, to_tensor

        graph = gs.trace(lambda x, y: x * y + 1.0, 2.0, 3.0)
        req = spb.EvaluateRequest(
            graph=spb.GraphRef(body=graph.to_bytes()),
            args=[spb.TensorRef(tensor=to_tensor(np.float64(v))) for v in (2.0, 3.0)],
        )
        code, details, reply = self.raw("Evaluate", req.SerializeToString(), 30.0)
        if code != grpc.StatusCode.OK:
            raise Bug(f"the known-good request failed: {code.name}: {details}")
        value = from_value(spb.EvaluateResponse.FromString(reply).outputs)
        if float(value) != 7.0:
            raise Bug(f"the known-good request computed {value}")

    def close(self):
        self.channel.close()
        if self.running is not None:
            self.running.stop(grace=0)
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def graph_of(data: bytes):
    """The graph message inside a graph's bytes, or None (for diagnostics)."""
    try:
        return graph_pb2.Graph.FromString(data)
    except Exception:
        return None
