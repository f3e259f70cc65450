"""The service's overhead, measured against a bare grpcio echo server carrying the same bytes,
in the same run:

1. p50 latency of value_and_grad on the example f(x1, x2) through gs.Client, versus one raw unary
   call to an echo server that receives the same request bytes and answers the same reply
   bytes (target: <= 1.3x echo); the calls alternate, so load from elsewhere hits both alike;
2. requests per second with 8 client threads, both ways, in alternating rounds (target:
   >= 0.9x echo);
3. W3 of bench/README.md (MLP 784-512-512-10, batch 256, value and gradient of all six
   weights and biases) through the server versus in-process gs.Engine (target: <= 1.2x).
   Two variants: the same arguments every call (the data and weights then travel as digests),
   and new weights every call (a training loop: the weights travel inline, the data by digest).

Both servers are subprocesses on loopback with the same gRPC options and thread pool; every
figure is a median of repeated timings.

    python bench/bench_service.py                  # everything (about a minute)
    python bench/bench_service.py --quick          # fewer repetitions
    python bench/bench_service.py --no-w3          # only figures 1 and 2
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import gc
import itertools
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import numpy as np

ECHO_SERVICE = "bench.Echo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the echo server ----------------------------------------------------------------------------


def run_echo_server(port: int, workers: int):
    """A bare grpcio server: `Set` stores a reply blob, `Echo` answers it to any request."""
    blob = [b""]

    def set_reply(request, context):
        blob[0] = request
        return b""

    def echo(request, context):
        return blob[0]

    handler = grpc.method_handlers_generic_handler(
        ECHO_SERVICE,
        {
            "Set": grpc.unary_unary_rpc_method_handler(set_reply),
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=workers + 4),
        options=[
            ("grpc.max_receive_message_length", 256 << 20),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ],
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def wait_port(port, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


# ---- timing -------------------------------------------------------------------------------------


def interleaved(fns, n, warmup=3, between=None):
    """Median seconds of each fn, calling them in turn n times (after warm-up); `between()`
    (untimed), if given, before each round."""
    between = between or (lambda: None)
    for _ in range(warmup):
        between()
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    gc.disable()
    try:
        for _ in range(n):
            between()
            for fn, out in zip(fns, times):
                t = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t)
    finally:
        gc.enable()
    return [statistics.median(t) for t in times]


def throughput(make_fn, threads=8, seconds=3.0):
    """Calls per second of `threads` threads, each calling its own make_fn() result."""
    fns = [make_fn() for _ in range(threads)]
    for fn in fns:
        fn()
    stop = threading.Event()
    counts = [0] * threads

    def loop(k):
        fn = fns[k]
        while not stop.is_set():
            fn()
            counts[k] += 1

    workers = [threading.Thread(target=loop, args=(k,)) for k in range(threads)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    time.sleep(seconds)
    stop.set()
    for w in workers:
        w.join()
    return sum(counts) / (time.perf_counter() - start)


def ms(x):
    return f"{x * 1e3:8.3f} ms"


# ---- the benchmark ------------------------------------------------------------------------------


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--workers", type=int, default=8, help="server threads (both servers)")
    parser.add_argument("--no-w3", action="store_true", help="only the tiny-call figures (1, 2)")
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        return run_echo_server(args.echo_server, args.workers)

    from gradserve.v1 import service_pb2 as pb

    import gradserve as gs
    import gradserve.numpy as gnp

    n_lat = 300 if args.quick else 2000
    seconds = 2.0 if args.quick else 10.0  # of each server's throughput, in rounds of 1 s
    n_rounds = 4 if args.quick else 10
    n_w3 = 10 if args.quick else 30

    gs_port, gs_metrics, echo_port = free_port(), free_port(), free_port()
    env = dict(os.environ)
    servers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gradserve",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(gs_port),
                "--metrics-port",
                str(gs_metrics),
                "--workers",
                str(args.workers),
                "--log-level",
                "WARNING",
            ],
            env=env,
        ),
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--echo-server",
                str(echo_port),
                "--workers",
                str(args.workers),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
        ),
    ]
    try:
        wait_port(gs_port, servers[0])
        wait_port(echo_port, servers[1])
        results = {}

        # 1. latency on the example f(x1, x2) -----------------------------------------------------
        def seed_f(x1, x2):
            return gnp.log(x1) + x1 * x2 - gnp.sin(x2)

        graph = gs.trace(seed_f, 2.0, 5.0)
        cli = gs.Client(f"127.0.0.1:{gs_port}", timeout=60)
        cli.value_and_grad(graph, 2.0, 5.0, argnums=(0, 1))  # graph now known by digest
        # The same bytes for the echo server: the client's request and the server's reply.
        from gradserve.protocol import method_path, to_tensor

        request = pb.ValueAndGradRequest(
            graph=pb.GraphRef(digest=graph.digest),
            args=[pb.TensorRef(tensor=to_tensor(np.float64(v))) for v in (2.0, 5.0)],
            argnums=pb.Argnums(indices=[0, 1], is_tuple=True),
        ).SerializeToString()
        raw_gs = grpc.insecure_channel(f"127.0.0.1:{gs_port}").unary_unary(
            method_path("ValueAndGrad")
        )
        reply = raw_gs(request, timeout=60)
        echo_channel = grpc.insecure_channel(f"127.0.0.1:{echo_port}")
        echo_channel.unary_unary(f"/{ECHO_SERVICE}/Set")(reply, timeout=60)
        echo = echo_channel.unary_unary(f"/{ECHO_SERVICE}/Echo")
        assert len(echo(request, timeout=60)) == len(reply)
        print(f"f(x1, x2): request {len(request)} bytes, reply {len(reply)} bytes")

        lat_echo, lat_gs, lat_raw = interleaved(
            [
                lambda: echo(request, timeout=60),
                lambda: cli.value_and_grad(graph, 2.0, 5.0, argnums=(0, 1)),
                lambda: raw_gs(request, timeout=60),
            ],
            n_lat,
            warmup=50,
        )
        results["p50"] = (lat_gs, lat_echo)
        print(
            f"p50 latency  echo {ms(lat_echo)}   gs.Client {ms(lat_gs)}   "
            f"(raw stub to gradserve {ms(lat_raw)})   ratio {lat_gs / lat_echo:.2f}x "
            f"(target <= 1.3x)"
        )

        # 2. throughput, 8 client threads ---------------------------------------------------------
        def make_echo():
            return lambda: echo(request, timeout=60)

        def make_gs():
            c = gs.Client(f"127.0.0.1:{gs_port}", timeout=60)
            c.value_and_grad(graph, 2.0, 5.0, argnums=(0, 1))
            return lambda: c.value_and_grad(graph, 2.0, 5.0, argnums=(0, 1))

        rounds = [[], []]
        for _ in range(n_rounds):
            for make, out in zip((make_echo, make_gs), rounds):
                out.append(throughput(make, 8, seconds / n_rounds))
        rps_echo, rps_gs = (statistics.median(r) for r in rounds)
        results["rps"] = (rps_gs, rps_echo)
        print(
            f"8 threads    echo {rps_echo:8.0f} req/s   gs.Client {rps_gs:8.0f} req/s   "
            f"ratio {rps_gs / rps_echo:.2f}x (target >= 0.9x; medians of {n_rounds} alternating rounds)"
        )

        if args.no_w3:
            print(
                "\nsummary: p50 {:.2f}x echo (<= 1.3), throughput {:.2f}x echo (>= 0.9)".format(
                    results["p50"][0] / results["p50"][1], results["rps"][0] / results["rps"][1]
                )
            )
            return
        # 3. W3 remote versus in-process -----------------------------------------------------------
        sizes, batch = (784, 512, 512, 10), 256
        rng = np.random.default_rng(3)
        params = []
        for fan_in, fan_out in itertools.pairwise(sizes):
            params.append(rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in))
            params.append(rng.standard_normal(fan_out) * 0.1)
        X = rng.standard_normal((batch, sizes[0]))
        Y = np.eye(sizes[-1])[rng.integers(0, sizes[-1], batch)]

        def w3(W1, b1, W2, b2, W3, b3, X, Y):
            h1 = gnp.tanh(X @ W1 + b1)
            h2 = gnp.tanh(h1 @ W2 + b2)
            z = h2 @ W3 + b3
            return gnp.mean(gs.nn.logsumexp(z, axis=1) - gnp.sum(z * Y, axis=1))

        w3_graph = gs.trace(w3, *params, X, Y)
        argnums = tuple(range(6))
        eng = gs.Engine()
        local = eng.value_and_grad(w3_graph, *params, X, Y, argnums=argnums)
        remote = cli.value_and_grad(w3_graph, *params, X, Y, argnums=argnums)
        assert np.allclose(local[0], remote[0]) and all(
            np.allclose(a, b) for a, b in zip(local[1], remote[1])
        )
        # Local and remote calls alternate, so that load from elsewhere on the machine hits
        # both alike; medians of each.
        steps = [[p + 1e-3 * k for p in params] for k in range(8)]
        k = [0]

        def next_weights():
            k[0] += 1
            return steps[k[0] % len(steps)]

        compute = []

        def remote_same():
            cli.value_and_grad(w3_graph, *params, X, Y, argnums=argnums)
            compute.append(cli.last_stats.compute_seconds)

        t_local, t_same, t_loop_local, t_loop = interleaved(
            [
                lambda: eng.value_and_grad(w3_graph, *params, X, Y, argnums=argnums),
                remote_same,
                lambda: eng.value_and_grad(w3_graph, *next_weights(), X, Y, argnums=argnums),
                lambda: cli.value_and_grad(w3_graph, *next_weights(), X, Y, argnums=argnums),
            ],
            n_w3,
        )
        results["w3"] = (t_same, t_local)
        print(
            f"W3 value+grad  in-process {ms(t_local)}   remote, same args {ms(t_same)}   "
            f"ratio {t_same / t_local:.2f}x (target <= 1.2x)   "
            f"[server compute {ms(statistics.median(compute))}]"
        )
        print(
            f"W3 value+grad  in-process {ms(t_loop_local)}   remote, new weights each call "
            f"{ms(t_loop)}   ratio {t_loop / t_loop_local:.2f}x"
        )
        cli.close()
        print()
        print(
            "summary: p50 {:.2f}x echo (<= 1.3), throughput {:.2f}x echo (>= 0.9), "
            "W3 {:.2f}x / {:.2f}x in-process (<= 1.2)".format(
                results["p50"][0] / results["p50"][1],
                results["rps"][0] / results["rps"][1],
                t_same / t_local,
                t_loop / t_loop_local,
            )
        )
    finally:
        for proc in servers:
            proc.terminate()
        for proc in servers:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
