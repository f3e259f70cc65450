"""The README's example f(x1, x2) against a gradserve server: the calls made in-process, one line
changed.

    gradserve serve --port 50051 --metrics-port 9464 &      # in another terminal
    python examples/remote.py                               # or: --target HOST:PORT

Without --target it starts a server in this process on a free port (so it runs anywhere)."""

import argparse

import numpy as np

import gradserve as gs
import gradserve.numpy as gnp


def f(x1, x2):
    return gnp.log(x1) + x1 * x2 - gnp.sin(x2)


def main():
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--target", help="HOST:PORT of a running server (default: start one here)")
    args = parser.parse_args()
    running = None
    target = args.target
    if target is None:
        from gradserve.server import serve

        running = serve(block=False, host="127.0.0.1", port=0, metrics_port=-1)
        target = f"127.0.0.1:{running.port}"
    try:
        graph = gs.trace(f, 2.0, 5.0)
        with gs.Client(target, timeout=30) as cli:  # instead of gs.Engine()
            value, (g1, g2) = cli.value_and_grad(graph, 2.0, 5.0, argnums=(0, 1))
            print(f"f(2, 5) = {float(value):.6f}   grad = ({float(g1):.6f}, {float(g2):.6f})")
            print("hessian:\n", np.array(cli.hessian(graph, 2.0, 5.0, argnums=(0, 1))))
            report = cli.check_grad(graph, 2.0, 5.0, method="complex")
            print("check_grad (complex step):", report.ok, report.max_abs_error)
            print(
                "server stats of the last call:",
                cli.last_stats,
                f"compute {cli.last_stats.compute_seconds * 1e3:.2f} ms",
            )
            try:
                cli.evaluate(graph, np.ones(3), 5.0)
            except ValueError as exc:  # the engine's exception class
                print("bad argument ->", type(exc).__name__, exc)
    finally:
        if running is not None:
            running.stop(0)


if __name__ == "__main__":
    main()
