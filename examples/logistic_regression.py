#!/usr/bin/env python
"""L2-regularised logistic regression on scikit-learn's breast-cancer data set (569 samples,
30 features; bundled with scikit-learn, loads offline), fitted through a gradserve server with
three methods of gs.minimize: L-BFGS-B, Newton-CG (Hessian-vector products from the server)
and Adam. Prints the held-out accuracy of each and saves a convergence plot,
logistic_regression.png, in the directory given by --out (default: the current directory).

    pip install -e ".[examples]"
    python examples/logistic_regression.py                      # starts a local server
    python examples/logistic_regression.py --target host:50051  # or use a running one
    python examples/logistic_regression.py --local --out plots  # in-process gs.Engine

The graph is traced once; the data (training matrix and labels) are inputs held fixed, so the
Client sends them once and names them by digest afterwards; each step sends only the weights.
"""

from __future__ import annotations

import os

# One BLAS thread here and in the server started below: small matrix products on a busy
# machine are many times slower with several (an explicit setting in the environment wins).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import gradserve as gs
import gradserve.numpy as gnp

L2 = 1e-3


def loss(theta, X, y):
    """Mean logistic loss of labels y in {0, 1} with weights theta[:-1] and bias theta[-1]."""
    z = X @ theta[:-1] + theta[-1]
    return gnp.mean(gs.nn.softplus(z) - y * z) + L2 * gnp.sum(theta[:-1] ** 2)


@contextlib.contextmanager
def server(target):
    """A Client of `target`, or of a `gradserve serve` started here on a free port."""
    if target:
        with gs.Client(target, timeout=60) as client:
            yield client
        return
    from gradserve.__main__ import health_check

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gradserve",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            "0",
            "--log-level",
            "WARNING",
        ]
    )
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while health_check(address, timeout=1.0) != "SERVING":
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"gradserve serve did not start (exit status {proc.poll()})")
            time.sleep(0.1)
        print(f"started gradserve serve on {address}")
        with gs.Client(address, timeout=60) as client:
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def load():
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y.astype(np.float64), test_size=0.25, stratify=y, random_state=0
    )
    mean, std = X_train.mean(axis=0), X_train.std(axis=0)
    return (X_train - mean) / std, (X_test - mean) / std, y_train, y_test


def accuracy(theta, X, y):
    return float(np.mean(((X @ theta[:-1] + theta[-1]) > 0) == (y > 0.5)))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", help="host:port of a gradserve server (default: start one)")
    ap.add_argument("--local", action="store_true", help="use an in-process gs.Engine instead")
    ap.add_argument(
        "--out",
        default=".",
        help="directory for the convergence plot logistic_regression.png (default: .)",
    )
    args = ap.parse_args(argv)

    X_train, X_test, y_train, y_test = load()
    n, d = X_train.shape
    graph = gs.trace(loss, gs.Spec((d + 1,)), gs.Spec((n, d)), gs.Spec((n,)))
    theta0 = np.zeros(d + 1)
    runs = {
        "L-BFGS-B": {"method": "L-BFGS-B", "options": {"gtol": 1e-9, "ftol": 1e-14}},
        "Newton-CG": {"method": "Newton-CG", "options": {"xtol": 1e-10}},
        "Adam (lr 0.05)": {
            "method": "adam",
            "options": {"learning_rate": 0.05, "maxiter": 600, "gtol": 1e-6},
        },
    }
    results, held_out = {}, {}
    backend = contextlib.nullcontext(gs.Engine()) if args.local else server(args.target)
    with backend as be:
        print(
            f"breast cancer: {n} training / {len(y_test)} held-out samples, {d} features; "
            f"backend {be!r}"
        )
        for name, kw in runs.items():
            t = time.perf_counter()
            res = gs.minimize(graph, theta0, X_train, y_train, backend=be, **kw)
            seconds = time.perf_counter() - t
            results[name] = res
            held_out[name] = accuracy(res.x, X_test, y_test)
            calls = ", ".join(f"{k} {v}" for k, v in res.backend_calls.items())
            print(
                f"{name:15s} loss {res.fun:.6f}  steps {res.nit:4d}  ({calls}; {seconds:.2f} s)  "
                f"held-out accuracy {held_out[name]:.3f}"
            )
    path = plot(
        results,
        held_out,
        Path(args.out) / "logistic_regression.png",
        f"Logistic regression, breast cancer (n={n}, d={d})",
    )
    print(f"saved {path}")


def plot(results, held_out, path, title):
    """The training loss minus the best loss any method reached (the same reference for every
    method), against step and against wall time; the legend gives each method's held-out
    accuracy. Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best = min(float(np.min(r.history["loss"])) for r in results.values())
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, res in results.items():
        h = res.history
        gap = np.maximum(h["loss"] - best, 1e-16)
        label = f"{name}: held-out accuracy {held_out[name]:.3f}"
        ax1.semilogy(h["step"], gap, label=label)
        ax2.semilogy(h["time"] * 1e3, gap, label=label)
    ax1.set_xlabel("step")
    ax2.set_xlabel("wall time (ms)")
    for ax in (ax1, ax2):
        ax.set_ylabel(f"training loss - best ({best:.6g})")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
