#!/usr/bin/env python
"""gradserve against the other automatic-differentiation libraries installed here, on the
engine workloads W1-W5 (bench/bench_engine.py) and the RNN scan (bench/bench_control_flow.py),
each against the same hand-written NumPy baseline in the same run, timed interleaved.

    pip install -e ".[peers]"                    # autograd, PyTorch, JAX (whichever install)
    python bench/bench_peers.py                  # every workload, ~1 s of timing per entry
    python bench/bench_peers.py --only W3,RNN --budget 0.3

A library that is not importable is skipped; every result is checked against the hand-written
one before it is timed (an implementation that disagrees is reported WRONG and not timed).
JAX runs twice: op by op (no jit) and under `jax.jit` (compiled once, before timing; the
compile time is printed). W1 under jit compiles for about 20 s, so it runs only with --jit-w1.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse
import importlib
import platform
import sys
import time

import bench_control_flow as cf
import bench_engine as be
import numpy as np

import gradserve as gs
import gradserve.numpy as gnp


def optional(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


autograd = optional("autograd")
torch = optional("torch")
jax = optional("jax")
if torch is not None:
    torch.set_num_threads(1)
if jax is not None:
    jax.config.update("jax_enable_x64", True)
    jnp = importlib.import_module("jax.numpy")


# ---- the workloads, once per library ---------------------------------------------------------


def w1(lib):
    """value and gradient of the 2000-op scalar chain at x0."""
    x0 = be.W1_X0
    if lib == "gradserve":
        graph, eng = gs.trace(be.w1_chain(gnp), x0), gs.Engine()
        return lambda: eng.value_and_grad(graph, x0)
    if lib == "autograd":
        f = autograd.value_and_grad(be.w1_chain(importlib.import_module("autograd.numpy")))
        return lambda: f(x0)
    if lib == "torch":
        f = be.w1_chain(torch)

        def torch_call():
            x = torch.tensor(x0, dtype=torch.float64, requires_grad=True)
            y = f(x)
            (g,) = torch.autograd.grad(y, x)
            return float(y), float(g)

        return torch_call
    f = jax.value_and_grad(be.w1_chain(jnp))
    return _jax_call(jax.jit(f) if lib == "jax jit" else f, x0)


def w2(lib):
    x = np.random.default_rng(2).uniform(-1.5, 2.0, 10**6)
    if lib == "gradserve":
        graph, eng = gs.trace(be.rosenbrock_gs, gs.Spec(x.shape, "float64")), gs.Engine()
        return lambda: eng.value_and_grad(graph, x)
    if lib == "autograd":
        f = autograd.value_and_grad(be.rosenbrock_ag)
        return lambda: f(x)
    if lib == "torch":
        tx, f = torch.from_numpy(x), rosenbrock(torch)

        def torch_call():
            xr = tx.detach().requires_grad_()
            y = f(xr)
            return y, torch.autograd.grad(y, xr)[0]

        return torch_call
    f = jax.value_and_grad(rosenbrock(jnp))
    return _jax_call(jax.jit(f) if lib == "jax jit" else f, x)


def w3(lib):
    params, X, Y = be.w3_data()
    args = (*params, X, Y)
    argnums = tuple(range(6))
    if lib == "gradserve":
        graph, eng = gs.trace(be.w3_gs_fn, *args), gs.Engine()
        return lambda: eng.value_and_grad(graph, *args, argnums=argnums)
    if lib == "autograd":
        f = autograd.value_and_grad(be.w3_ag_fn, argnum=argnums)
        return lambda: f(*args)
    if lib == "torch":
        tensors = [torch.from_numpy(a) for a in args]

        def torch_call():
            ps = [t.detach().requires_grad_() for t in tensors[:6]]
            loss = _mlp_loss(torch, *ps, *tensors[6:])
            return loss, torch.autograd.grad(loss, ps)

        return torch_call
    f = jax.value_and_grad(lambda *a: _mlp_loss(jnp, *a), argnums=argnums)
    return _jax_call(jax.jit(f) if lib == "jax jit" else f, *args)


def _mlp_loss(m, W1, b1, W2, b2, W3, b3, X, Y):
    """bench_engine's W3 model written with the operators every library shares."""
    h1 = m.tanh(X @ W1 + b1)
    h2 = m.tanh(h1 @ W2 + b2)
    z = h2 @ W3 + b3
    zmax = z.max(1, keepdim=True).values if m is torch else z.max(1, keepdims=True)
    shifted = z - zmax
    lse = m.log(m.exp(shifted).sum(1))
    return (lse - (shifted * Y).sum(1)).mean()


def rosenbrock(m):
    """bench_engine's Rosenbrock written with module `m` (torch or jax.numpy)."""
    return lambda x: m.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def w4(lib):
    rng = np.random.default_rng(4)
    x, v = rng.uniform(-1.5, 2.0, 10**5), rng.standard_normal(10**5)
    if lib == "gradserve":
        graph, eng = gs.trace(be.rosenbrock_gs, gs.Spec(x.shape, "float64")), gs.Engine()
        return lambda: eng.hvp(graph, (x,), (v,))[0]
    if lib == "autograd":
        f = autograd.hessian_vector_product(be.rosenbrock_ag)
        return lambda: f(x, v)
    if lib == "torch":
        tx, tv = torch.from_numpy(x), torch.from_numpy(v)

        def torch_call():  # reverse over reverse (double backward)
            xr = tx.detach().requires_grad_()
            (g,) = torch.autograd.grad(rosenbrock(torch)(xr), xr, create_graph=True)
            (hv,) = torch.autograd.grad(g, xr, tv)
            return hv

        return torch_call

    def jax_hvp(x, v):  # forward over reverse
        return jax.jvp(jax.grad(rosenbrock(jnp)), (x,), (v,))[1]

    return _jax_call(jax.jit(jax_hvp) if lib == "jax jit" else jax_hvp, x, v)


def w5(lib, mode):
    A, x = be.w5_data()
    if lib == "gradserve":
        graph, eng = gs.trace(lambda x: gnp.tanh(A @ x) * x, x), gs.Engine()
        return lambda: eng.jacobian(graph, x, mode=mode)
    if lib == "autograd":
        if mode == "fwd":
            return None  # bench_engine.py times autograd's forward mode (one make_jvp per column)
        f = autograd.jacobian(lambda x: importlib.import_module("autograd.numpy").tanh(A @ x) * x)
        return lambda: f(x)
    if lib == "torch":
        tA, tx = torch.from_numpy(A), torch.from_numpy(x)
        jac = (torch.func.jacfwd if mode == "fwd" else torch.func.jacrev)(
            lambda x: torch.tanh(tA @ x) * x
        )
        return lambda: jac(tx)
    jac = (jax.jacfwd if mode == "fwd" else jax.jacrev)(lambda x: jnp.tanh(A @ x) * x)
    return _jax_call(jax.jit(jac) if lib == "jax jit" else jac, x)


def rnn(lib, steps=2000, hidden=64):
    args = cf.rnn_args(hidden, steps)
    argnums = (0, 1, 2, 3)
    if lib == "gradserve":
        graph, eng = gs.trace(cf.rnn_loss, *args), gs.Engine()
        return lambda: eng.value_and_grad(graph, *args, argnums=argnums)
    if lib == "autograd":
        return None  # autograd has no loop primitive: a Python loop of 2000 steps
    if lib == "torch":
        tensors = [torch.from_numpy(a) for a in args]

        def torch_call():  # eager: the Python loop keeps every step's activations
            W, U, h, xs = (t.detach().requires_grad_() for t in tensors)
            leaves = (W, U, h, xs)
            total = 0.0
            for t in range(steps):
                h = torch.tanh(W @ h + U @ xs[t])
                total = total + (h * h).sum()
            return total, torch.autograd.grad(total, leaves)

        return torch_call

    def jax_loss(W, U, h0, xs):
        def step(carry, x):
            h, total = carry
            h = jnp.tanh(W @ h + U @ x)
            return (h, total + jnp.sum(h * h)), None

        (_, total), _ = jax.lax.scan(step, (h0, 0.0), xs)
        return total

    f = jax.value_and_grad(jax_loss, argnums=argnums)
    return _jax_call(jax.jit(f) if lib == "jax jit" else f, *args)


def _jax_call(f, *args):
    args = [jnp.asarray(a) for a in args]

    def call():
        return jax.block_until_ready(f(*args))

    return call


# ---- the hand-written baselines ---------------------------------------------------------------


def hand(workload):
    if workload == "W1":
        return lambda: be.w1_hand_value_and_grad(be.W1_X0)
    if workload == "W2":
        x = np.random.default_rng(2).uniform(-1.5, 2.0, 10**6)
        return lambda: be.rosenbrock_hand_value_and_grad(x)
    if workload == "W3":
        params, X, Y = be.w3_data()
        return lambda: be.w3_hand_value_and_grad(*params, X, Y)
    if workload == "W4":
        rng = np.random.default_rng(4)
        x, v = rng.uniform(-1.5, 2.0, 10**5), rng.standard_normal(10**5)
        return lambda: be.rosenbrock_hand_hvp(x, v)
    if workload.startswith("W5"):
        A, x = be.w5_data()
        return lambda: be.w5_hand_jacobian(A, x)
    args = cf.rnn_args(64, 2000)
    return lambda: cf.numpy_bptt(*args)


WORKLOADS = {
    "W1": w1,
    "W2": w2,
    "W3": w3,
    "W4": w4,
    "W5 fwd": lambda lib: w5(lib, "fwd"),
    "W5 rev": lambda lib: w5(lib, "rev"),
    "RNN": rnn,
}


def libraries():
    libs = ["gradserve"]
    libs += ["autograd"] if autograd is not None else []
    libs += ["torch"] if torch is not None else []
    libs += ["jax", "jax jit"] if jax is not None else []
    return libs


def as_numpy(tree):
    if isinstance(tree, (tuple, list)):
        return type(tree)(as_numpy(t) for t in tree)
    if torch is not None and isinstance(tree, torch.Tensor):
        return tree.detach().numpy()
    return np.asarray(tree)


def run(workload, opts):
    print(f"{workload}:")
    baseline = hand(workload)
    want = as_numpy(baseline())
    if workload == "RNN":
        want = (want[0], tuple(want[1][i] for i in (0, 1, 2, 3)))
    fns = {"hand-written": baseline}
    for lib in libraries():
        if lib == "jax jit" and workload == "W1" and not opts.jit_w1:
            continue
        fn = WORKLOADS[workload](lib)
        if fn is None:
            continue
        start = time.perf_counter()
        try:
            got = as_numpy(fn())
        except Exception as exc:  # a peer's missing feature is reported, not fatal
            print(f"  {lib:<14} failed: {type(exc).__name__}: {exc}")
            continue
        first = time.perf_counter() - start
        ok = (
            be.tree_allclose(got, want, 1e-7, 1e-10)
            if workload != "W1"
            else be.tree_allclose(got, want, 1e-9, 0.0)
        )
        print(f"  {lib:<14} first call {first * 1e3:9.1f} ms  {'ok' if ok else 'WRONG'}")
        if ok:
            fns[lib] = fn
    timer = be.Timer(opts.budget, opts.min_reps, 10_000, 2)
    timings = dict(zip(fns, be.time_interleaved(timer, list(fns.values()))))
    base = timings["hand-written"].median
    for lib, t in timings.items():
        print(f"  {lib:<14} {t.median * 1e3:10.3f} ms  {t.median / base:7.2f}x hand-written")
    return {lib: t.median / base for lib, t in timings.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated workloads: " + ",".join(WORKLOADS))
    parser.add_argument("--budget", type=float, default=1.0, help="seconds of timing per entry")
    parser.add_argument("--min-reps", type=int, default=7)
    parser.add_argument("--jit-w1", action="store_true", help="also W1 under jax.jit (~20 s)")
    opts = parser.parse_args(argv)
    wanted = opts.only.split(",") if opts.only else list(WORKLOADS)
    versions = {
        "gradserve": gs.__version__,
        "numpy": np.__version__,
        "autograd": getattr(autograd, "__version__", "installed") if autograd else None,
        "torch": getattr(torch, "__version__", None),
        "jax": getattr(jax, "__version__", None),
    }
    print(
        f"Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} cores; "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
    )
    ratios = {w: run(w, opts) for w in wanted}
    libs = libraries()
    print("\nmedian time / hand-written NumPy, same run")
    print(f"{'':<8}" + "".join(f"{lib:>12}" for lib in libs))
    for w, r in ratios.items():
        print(
            f"{w:<8}" + "".join(f"{r[lib]:>11.2f}x" if lib in r else f"{'-':>12}" for lib in libs)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
