"""Same-host transport: W3 (MLP 784-512-512-10, batch 256, value and gradient of all six
weights and biases; about 5.4 MB of arguments and 2.8 MB of gradients a call) through a
server on this machine, over gRPC bytes and over shared memory, against the in-process
gs.Engine and hand-written NumPy backprop, in the same run.

Every round gets new weights (a training loop: nothing can travel as a digest), updated in
place between the timed calls. The variants alternate call by call, so that load from
elsewhere on the machine hits them alike; each figure is a median. This process keeps freed
memory as the server does (server.tune_malloc), so the in-process engine is not slowed by page
faults the server does not have. Target: shared memory <= 1.1x in-process.

    python bench/bench_transport.py            # 60 rounds
    python bench/bench_transport.py --quick    # 15 rounds
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import statistics
import sys

import grpc
import numpy as np
from bench_engine import w3_data, w3_gs_fn, w3_hand_value_and_grad
from bench_service import interleaved
from gradserve.server.process import ServerProcess
from gradserve.server.server import tune_malloc

import gradserve as gs


class Sizes(grpc.UnaryUnaryClientInterceptor):
    """The request and reply bytes of the last call on a channel."""

    last = (0, 0)

    def intercept_unary_unary(self, continuation, details, request):
        outcome = continuation(details, request)
        self.last = (len(request), len(outcome.result()))
        return outcome


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:7.2f} ms"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="15 rounds instead of 60")
    args = parser.parse_args()
    rounds = 15 if args.quick else 60

    params, X, Y = w3_data()
    graph = gs.trace(w3_gs_fn, *params, X, Y)
    argnums = tuple(range(6))
    tune_malloc()
    nbytes_in = sum(a.nbytes for a in params) + X.nbytes + Y.nbytes
    nbytes_out = sum(a.nbytes for a in params)

    with ServerProcess("--log-level", "WARNING") as server:
        sizes = {"bytes": Sizes(), "shared memory": Sizes()}
        clients = {}
        for name, shared in (("bytes", False), ("shared memory", True)):
            channel = grpc.intercept_channel(
                grpc.insecure_channel(
                    server.address,
                    options=[
                        ("grpc.max_receive_message_length", -1),
                        ("grpc.max_send_message_length", -1),
                    ],
                ),
                sizes[name],
            )
            clients[name] = gs.Client(channel, timeout=60, shared_memory=shared)
        eng = gs.Engine()

        # The same numbers every way.
        want = eng.value_and_grad(graph, *params, X, Y, argnums=argnums)
        hand = w3_hand_value_and_grad(*params, X, Y)
        for cli in clients.values():
            got = cli.value_and_grad(graph, *params, X, Y, argnums=argnums)
            assert np.allclose(got[0], want[0]) and all(
                np.array_equal(a, b) for a, b in zip(got[1], want[1])
            )
        assert np.allclose(hand[0], want[0]) and all(
            np.allclose(a, b) for a, b in zip(hand[1], want[1])
        )

        def new_weights():
            for p in params:
                p += 1e-6

        variants = {
            "hand-written NumPy": lambda: w3_hand_value_and_grad(*params, X, Y),
            "in-process gs.Engine": lambda: eng.value_and_grad(
                graph, *params, X, Y, argnums=argnums
            ),
        }
        compute = {name: [] for name in clients}  # the server's engine time per call

        def remote(name):
            cli = clients[name]

            def call():
                cli.value_and_grad(graph, *params, X, Y, argnums=argnums)
                compute[name].append(cli.last_stats.compute_seconds)

            return call

        for name in clients:
            variants[f"remote, {name}"] = remote(name)
        medians = dict(
            zip(variants, interleaved(list(variants.values()), rounds, between=new_weights))
        )

        print(
            f"W3 value+grad, new weights every call: {nbytes_in / 1e6:.1f} MB of arguments, "
            f"{nbytes_out / 1e6:.1f} MB of gradients; median of {rounds} interleaved rounds"
        )
        base = medians["in-process gs.Engine"]
        hand_t = medians["hand-written NumPy"]
        for name, t in medians.items():
            wire = ""
            if name.startswith("remote"):
                request, reply = sizes[name.removeprefix("remote, ")].last
                server_t = statistics.median(compute[name.removeprefix("remote, ")])
                wire = (
                    f"   [server engine {ms(server_t)}; on the wire: request {request:>8} B,"
                    f" reply {reply:>8} B]"
                )
            print(
                f"  {name:24} {ms(t)}   {t / base:5.2f}x in-process   "
                f"{t / hand_t:5.2f}x NumPy{wire}"
            )
        ratio = medians["remote, shared memory"] / base
        print(
            f"summary: shared memory {ratio:.2f}x in-process (target <= 1.1x), bytes "
            f"{medians['remote, bytes'] / base:.2f}x"
        )
        for cli in clients.values():
            cli.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
