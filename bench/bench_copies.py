"""Copies of a 5 MiB tensor per call, in the server and in the client: payload-sized blocks
allocated per call, counted as mmap calls of at least 4 MB under strace while glibc is told to
mmap every block over 1 MiB (so no payload-sized block is served from the heap unseen).

Two calls, each repeated 10 times with the tensor inline (never by digest):
- evaluate(sum(x), x): 5 MiB in, a scalar out;
- grad(sum(x * x), x): 5 MiB in, 5 MiB out.

Counted: every payload-sized allocation in the process (gRPC's, protobuf's, Python's, NumPy's),
including those the computation itself makes (the gradient's own array). Not counted: copies
into blocks that are reused or smaller than 4 MB (gRPC's own transport buffers).

    python bench/bench_copies.py          # needs strace (Linux)
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

N_CALLS = 10
PAYLOAD = 655360  # float64 elements: 5 MiB
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "1048576", "GRADSERVE_MALLOC_TUNING": "0"}


def client(address: str, kind: str):
    """The client process: two warm-up calls, then N_CALLS when told to (a line on stdin)."""
    import numpy as np

    import gradserve as gs
    import gradserve.numpy as gnp

    x = np.random.default_rng(0).standard_normal(PAYLOAD)
    cli = gs.Client(address, timeout=60, digest_min_bytes=1 << 40)
    if kind == "evaluate":
        graph = gs.trace(lambda x: gnp.sum(x), x)
        call = lambda: cli.evaluate(graph, x)  # noqa: E731
    else:
        graph = gs.trace(lambda x: gnp.sum(x * x), x)
        call = lambda: cli.grad(graph, x)  # noqa: E731
    call()
    call()
    print("ready", flush=True)
    sys.stdin.readline()
    for _ in range(N_CALLS):
        call()
    print("done", flush=True)
    sys.stdin.readline()


def big_mmaps(trace_file: str) -> int:
    with open(trace_file) as f:
        sizes = [int(m) for m in re.findall(r"mmap\(NULL, (\d+),", f.read())]
    return sum(1 for s in sizes if s >= 4_000_000)


def measure(kind: str, workdir: str) -> dict:
    from gradserve.server.process import ServerProcess

    server = ServerProcess("--log-level", "WARNING", env=MALLOC)
    try:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--client", server.address, kind],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **MALLOC},
        )
        assert proc.stdout.readline().startswith("ready")
        tracers = {}
        for side, pid in (("server", server.pid), ("client", proc.pid)):
            out = os.path.join(workdir, f"strace-{kind}-{side}.txt")
            tracers[side] = (
                out,
                subprocess.Popen(
                    ["strace", "-f", "-e", "trace=mmap", "-o", out, "-p", str(pid)],
                    stderr=subprocess.DEVNULL,
                ),
            )
        time.sleep(1.5)  # strace attached to every thread
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().startswith("done")
        for _, tracer in tracers.values():
            tracer.send_signal(signal.SIGINT)
            tracer.wait()
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait()
        return {side: big_mmaps(out) / N_CALLS for side, (out, _) in tracers.items()}
    finally:
        server.close()


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--client":
        return client(sys.argv[2], sys.argv[3])
    if "-h" in sys.argv or "--help" in sys.argv:
        print(__doc__)
        return 0
    if shutil.which("strace") is None:
        print("bench_copies needs strace")
        return 1
    import tempfile

    with tempfile.TemporaryDirectory(prefix="gradserve-copies-") as workdir:
        for kind, what in (("evaluate", "5 MiB in, scalar out"), ("grad", "5 MiB in, 5 MiB out")):
            got = measure(kind, workdir)
            print(
                f"{kind:8s} ({what}): payload-sized blocks per call: "
                f"server {got['server']:.1f}, client {got['client']:.1f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
