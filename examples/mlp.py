#!/usr/bin/env python
"""A small multilayer perceptron (64-32-10, tanh, softmax cross-entropy, L2) on scikit-learn's
handwritten digits (1797 8x8 images; bundled with scikit-learn, loads offline), fitted through a
gradserve server with gs.minimize: L-BFGS-B, Adam and SGD with Nesterov momentum, full batch.
Prints the held-out accuracy of each and saves a convergence plot, mlp.png, in the directory
given by --out (default: the current directory).

    pip install -e ".[examples]"
    python examples/mlp.py                          # starts a local server
    python examples/mlp.py --target host:50051      # or use a running one
    python examples/mlp.py --local --out plots      # in-process gs.Engine

gs.minimize optimises one input, so the weights and biases travel as one flat vector that the
traced function slices and reshapes; the images and one-hot labels are inputs held fixed (sent
once, then named by digest).
"""

from __future__ import annotations

import os

# One BLAS thread here and in the server started below: small matrix products on a busy
# machine are many times slower with several (an explicit setting in the environment wins).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import contextlib
import itertools
import time
from pathlib import Path

import numpy as np
from logistic_regression import plot, server

import gradserve as gs
import gradserve.numpy as gnp

SIZES = (64, 32, 10)
L2 = 1e-4


def shapes():
    out = []
    for fan_in, fan_out in itertools.pairwise(SIZES):
        out += [(fan_in, fan_out), (fan_out,)]
    return out


def unpack(theta):
    """[W1, b1, W2, b2] as slices of the flat parameter vector (traced or NumPy)."""
    params, start = [], 0
    for shape in shapes():
        size = int(np.prod(shape))
        params.append(theta[start : start + size].reshape(shape))
        start += size
    return params


def init(seed=0):
    rng = np.random.default_rng(seed)
    parts = []
    for shape in shapes():
        if len(shape) == 2:
            parts.append(rng.normal(0.0, np.sqrt(1.0 / shape[0]), shape).ravel())
        else:
            parts.append(np.zeros(shape))
    return np.concatenate(parts)


def logits(theta, X, np_=gnp):
    W1, b1, W2, b2 = unpack(theta)
    return np_.tanh(X @ W1 + b1) @ W2 + b2


def loss(theta, X, Y):
    """Mean softmax cross-entropy of one-hot labels Y, plus L2 on the weight matrices."""
    W1, _, W2, _ = unpack(theta)
    logp = gs.nn.log_softmax(logits(theta, X), axis=-1)
    return -gnp.mean(gnp.sum(Y * logp, axis=-1)) + L2 * (gnp.sum(W1 * W1) + gnp.sum(W2 * W2))


def load():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X / 16.0, y, test_size=0.25, stratify=y, random_state=0
    )
    mean = X_train.mean(axis=0)
    return X_train - mean, X_test - mean, y_train, y_test


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--target", help="host:port of a gradserve server (default: start one)")
    ap.add_argument("--local", action="store_true", help="use an in-process gs.Engine instead")
    ap.add_argument("--steps", type=int, default=300, help="iterations per method")
    ap.add_argument(
        "--out", default=".", help="directory for the convergence plot mlp.png (default: .)"
    )
    args = ap.parse_args(argv)

    X_train, X_test, y_train, y_test = load()
    Y_train = np.eye(10)[y_train]
    theta0 = init()
    graph = gs.trace(loss, gs.Spec(theta0.shape), gs.Spec(X_train.shape), gs.Spec(Y_train.shape))
    runs = {
        "L-BFGS-B": {"method": "L-BFGS-B", "options": {"maxiter": args.steps}},
        "Adam (lr 0.01)": {
            "method": "adam",
            "options": {"learning_rate": 0.01, "maxiter": args.steps},
        },
        "SGD, Nesterov (lr 0.5)": {
            "method": "sgd",
            "options": {
                "learning_rate": 0.5,
                "momentum": 0.9,
                "nesterov": True,
                "maxiter": args.steps,
            },
        },
    }
    results, held_out = {}, {}
    backend = contextlib.nullcontext(gs.Engine()) if args.local else server(args.target)
    with backend as be:
        print(
            f"digits: {len(y_train)} training / {len(y_test)} held-out images, MLP "
            f"{'-'.join(map(str, SIZES))} ({theta0.size} parameters); backend {be!r}"
        )
        for name, kw in runs.items():
            t = time.perf_counter()
            res = gs.minimize(graph, theta0, X_train, Y_train, backend=be, **kw)
            seconds = time.perf_counter() - t
            results[name] = res
            acc = held_out[name] = float(
                np.mean(logits(res.x, X_test, np).argmax(axis=1) == y_test)
            )
            print(
                f"{name:23s} loss {res.fun:.5f}  steps {res.nit:4d}  ({res.nfev} evaluations, "
                f"{seconds:.2f} s, {res.nit / seconds:.0f} steps/s)  held-out accuracy {acc:.3f}"
            )
    path = plot(
        results,
        held_out,
        Path(args.out) / "mlp.png",
        f"MLP {'-'.join(map(str, SIZES))}, digits (n={len(y_train)}, {theta0.size} parameters)",
    )
    print(f"saved {path}")


if __name__ == "__main__":
    main()
