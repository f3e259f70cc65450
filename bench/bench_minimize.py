#!/usr/bin/env python
"""Optimisation-loop benchmark: steps per second of an L-BFGS-B loop
(`gs.minimize`) on L2-regularised logistic regression, n = 5000 samples, d = 50 features,
run in-process (gs.Engine) and remotely (a gs.Client of a `gradserve serve` on loopback),
in the same run, two ways: the loop on the server (gs.minimize's default with a Client: one
streaming Minimize call) and the loop on the client (server_side=False: one call per
evaluation). Targets: the server-side loop >= 0.9 x in-process, the client-driven >= 0.7 x.

    python bench/bench_minimize.py                      # starts a server on a free port
    python bench/bench_minimize.py --target host:port   # an already running server
    python bench/bench_minimize.py --rounds 20 --n 5000 --d 50

Each round runs the whole loop from w = 0 to convergence in-process, on the server and driven
from the client, interleaved so that load from other processes hits all alike; the figure per
way is the median over rounds of (iterations / wall seconds). All take the same steps
(checked). The loop converges in a dozen steps of about 0.4 ms, so one call's fixed cost (a
round trip, the client's sha256 of the 2 MB data matrix to name it by digest) weighs on the
server-side figure; the loop alone (first to last step, from each side's history) is also
shown.
A per-call breakdown follows: value_and_grad latency in-process and remote, the round trip of
a trivial graph (the transport's floor), and the client's sha256 of the data matrix (it
hashes a read-only array that owns its data once, as gs.minimize passes fixed data, and a
writable one on every call, to name it by digest).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread here and in the server we start

import argparse
import contextlib
import io
import platform
import statistics
import subprocess
import sys
import time

import numpy as np
from gradserve.server.process import ServerProcess

import gradserve as gs
import gradserve.numpy as gnp


def logistic_loss(w, X, y):
    z = X @ w
    return gnp.mean(gs.nn.softplus(z) - y * z) + 1e-4 * gnp.sum(w * w)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def make_data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (X @ rng.standard_normal(d) + 2.0 * rng.standard_normal(n) > 0).astype(np.float64)
    return X, y


ECHO_SERVER = """
import sys, grpc
from concurrent import futures
class Echo(grpc.GenericRpcHandler):
    def service(self, details):
        return grpc.unary_unary_rpc_method_handler(lambda request, context: request)
server = grpc.server(futures.ThreadPoolExecutor(4))
server.add_generic_rpc_handlers((Echo(),))
print(server.add_insecure_port("127.0.0.1:0"), flush=True)
server.start()
server.wait_for_termination()
"""


def grpc_floor_ms(payload_bytes):
    """Median round trip of a raw Python gRPC echo (another process, loopback): the transport's
    floor under any remote call, without gradserve."""
    import grpc

    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER], stdout=subprocess.PIPE)
    try:
        port = int(proc.stdout.readline())
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = channel.unary_unary("/echo/Echo")
            data = b"x" * payload_bytes
            return per_call_ms(lambda: stub(data))
    finally:
        proc.terminate()
        proc.wait(30)


def step_request_bytes(address, graph, w, X, y):
    """Bytes of a ValueAndGrad request once the server has the graph and the data."""
    import grpc

    class Recorder(grpc.UnaryUnaryClientInterceptor):
        sizes = []

        def intercept_unary_unary(self, continuation, details, request):
            self.sizes.append(len(request))
            return continuation(details, request)

    rec = Recorder()
    with (
        grpc.insecure_channel(address) as channel,
        gs.Client(grpc.intercept_channel(channel, rec)) as cli,
    ):
        for _ in range(3):
            cli.value_and_grad(graph, w, X, y)
    return rec.sizes[-1]


def per_call_ms(fn, repeat=200):
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", help="host:port of a running server (default: start one)")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--d", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument(
        "--method",
        default="L-BFGS-B",
        help="any gs.minimize method (the README's figure is L-BFGS-B's)",
    )
    args = ap.parse_args(argv)

    X, y = make_data(args.n, args.d)
    graph = gs.trace(logistic_loss, gs.Spec((args.d,)), gs.Spec(X.shape), gs.Spec(y.shape))
    w0 = np.zeros(args.d)
    server = None
    if args.target:
        address = args.target
    else:
        server = ServerProcess("--log-level", "WARNING")
        address = server.address
    try:
        engine = gs.Engine()
        client = gs.Client(address, timeout=120)
        options = {"maxiter": 1000}

        def run(backend, server_side=True, progress=False):
            t = time.perf_counter()
            res = gs.minimize(
                graph,
                w0,
                X,
                y,
                backend=backend,
                method=args.method,
                options=options,
                progress=progress,
                server_side=server_side,
            )
            return res, time.perf_counter() - t

        ref, _ = run(engine)
        for server_side in (True, False):  # warm-up: graph and data reach the server
            far, _ = run(client, server_side)
            assert far.nit == ref.nit and np.allclose(far.x, ref.x, rtol=1e-10, atol=1e-12), (
                far.nit,
                ref.nit,
            )
        local_rates, server_rates, streamed_rates, remote_rates = [], [], [], []
        local_loop, server_loop = [], []  # steps/s of the loop alone (its history's time)
        for _ in range(args.rounds):
            res, dt = run(engine)
            local_rates.append(res.nit / dt)
            local_loop.append(res.nit / res.history["time"][-1])
            res, dt = run(client, True)
            server_rates.append(res.nit / dt)
            server_loop.append(res.nit / res.history["time"][-1])
            # a progress bar, on a (fake) terminal: every step streamed and shown
            with contextlib.redirect_stderr(FakeTerminal()):
                res, dt = run(client, True, None)
            streamed_rates.append(res.nit / dt)
            res, dt = run(client, False)
            remote_rates.append(res.nit / dt)
        local = statistics.median(local_rates)
        on_server = statistics.median(server_rates)
        streamed = statistics.median(streamed_rates)
        remote = statistics.median(remote_rates)

        w = ref.x
        local_call = per_call_ms(lambda: engine.value_and_grad(graph, w, X, y))
        fixed_X, fixed_y = X.copy(), y.copy()  # as gs.minimize passes them: read-only copies
        fixed_X.flags.writeable = fixed_y.flags.writeable = False
        remote_call = per_call_ms(lambda: client.value_and_grad(graph, w, fixed_X, fixed_y))
        tiny = gs.trace(lambda v: gnp.sum(v * v), gs.Spec((args.d,)))
        floor = per_call_ms(lambda: client.value_and_grad(tiny, w))
        from gradserve.protocol import array_digest

        hashing = per_call_ms(lambda: array_digest(X), repeat=50)
        client.close()
        echo_small = grpc_floor_ms(600)
        step_bytes = step_request_bytes(address, graph, w, X, y)
        echo_step = grpc_floor_ms(step_bytes)
    finally:
        if server is not None:
            server.close()

    print(
        f"# gs.minimize {args.method}, logistic regression n={args.n} d={args.d} "
        f"({ref.nit} iterations, backend calls per loop {ref.backend_calls}, "
        f"{args.rounds} rounds)"
    )
    print(
        f"# {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs, "
        f"server {'at ' + args.target if args.target else 'started on loopback'}"
    )
    print(f"{'':34s}{'steps/s':>10s}")
    print(f"{'in-process (gs.Engine)':34s}{local:10.0f}")
    print(
        f"{'loop on the server (Minimize)':34s}{on_server:10.0f}   no progress bar: the result only"
    )
    print(f"{'  ... with a progress bar':34s}{streamed:10.0f}   every step streamed and shown")
    print(f"{'loop on the client (per call)':34s}{remote:10.0f}   server_side=False")
    print(f"{'ratio server loop / in-process':34s}{on_server / local:10.2f}   (target >= 0.90)")
    print(f"{'ratio with a progress bar':34s}{streamed / local:10.2f}")
    loop_ratio = statistics.median(server_loop) / statistics.median(local_loop)
    print(
        f"{'  the loop alone, server / here':34s}{loop_ratio:10.2f}   "
        "first to last step, by each side's history (no call set-up, no transfer)"
    )
    print(f"{'ratio client loop / in-process':34s}{remote / local:10.2f}   (target >= 0.70)")
    rows = [
        ("value_and_grad in-process", local_call, ""),
        ("value_and_grad remote", remote_call, ""),
        ("remote round trip, trivial graph", floor, "gradserve's per-call floor"),
        (
            f"client sha256 of X ({X.nbytes / 1e6:.1f} MB)",
            hashing,
            "once per read-only array; every call for a writable one",
        ),
        ("raw gRPC echo, 600 B", echo_small, "transport floor, no gradserve"),
        (f"raw gRPC echo, {step_bytes} B", echo_step, "a step's request size, measured"),
    ]
    print("per call (median ms):")
    for label, ms, note in rows:
        print(f"  {label:34s}{ms:8.3f}   {note}".rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
