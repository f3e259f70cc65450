"""gs.minimize: SciPy's methods and the first-order loops over an Engine and over a
Client of a live server (the `backend`, `server` fixtures of conftest.py), the per-step
history and progress bar, and the request sizes of a remote loop (fixed data travels by its
digest, not on every step)."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
from conftest import Recorder

import gradserve as gs
import gradserve.numpy as gnp


def rosenbrock(x):
    return gnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)


ROSEN = gs.trace(rosenbrock, gs.Spec((10,)))


def logistic_loss(w, X, y):
    z = X @ w
    return gnp.mean(gs.nn.softplus(z) - y * z) + 0.01 * gnp.sum(w * w)


def logistic_data(n, d, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (X @ rng.standard_normal(d) + 0.5 * rng.standard_normal(n) > 0).astype(np.float64)
    return X, y


class Spy:
    """A backend that counts the calls gs.minimize makes and forwards them."""

    def __init__(self, backend):
        self.backend = backend
        self.calls: dict[str, int] = {}

    def __getattr__(self, name):
        method = getattr(self.backend, name)

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return counted


# ---- SciPy's methods, in-process and remote -------------------------------------------------


@pytest.mark.parametrize("method", ["L-BFGS-B", "BFGS", "CG", "Newton-CG"])
def test_rosenbrock_reaches_the_optimum(backend, method):
    spy = Spy(backend)
    res = gs.minimize(ROSEN, np.zeros(10), method=method, backend=spy, progress=False)
    assert res.success, res.message
    np.testing.assert_allclose(res.x, np.ones(10), atol=1e-4)
    assert res.fun < 1e-8
    # One backend call per evaluation: value and gradient together, nothing else.
    assert spy.calls["value_and_grad"] == res.nfev
    assert set(spy.calls) <= {"value_and_grad", "hvp"}
    if method == "Newton-CG":
        assert spy.calls["hvp"] == res.nhev > 0  # hessp comes from the backend's hvp
    else:
        assert "hvp" not in spy.calls
    assert res.backend_calls == spy.calls
    # History: one entry per step, step 0 being x0.
    h = res.history
    assert len(h["loss"]) == res.nit + 1 == len(h["grad_norm"]) == len(h["time"])
    assert h["loss"][0] == pytest.approx(9.0)  # f(0) for n = 10
    assert h["loss"][-1] == pytest.approx(res.fun, abs=1e-12)
    assert np.all(np.diff(h["time"]) >= 0) and np.all(np.diff(h["step"]) == 1)


def test_newton_cg_sends_hvp_requests_to_the_server(server):
    rec = Recorder()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), rec)
    with gs.Client(channel, timeout=60) as cli:
        res = gs.minimize(
            ROSEN, np.zeros(10), method="Newton-CG", backend=cli, progress=False, server_side=False
        )
    channel.close()
    methods = [m for m, _ in rec.calls]
    assert res.success
    assert methods.count("Hvp") == res.nhev > 0
    assert methods.count("ValueAndGrad") == res.nfev
    assert set(methods) == {"Hvp", "ValueAndGrad"}


@pytest.mark.parametrize("method", ["trust-ncg", "trust-krylov", "trust-exact"])
def test_second_order_trust_region_methods(method):
    spy = Spy(gs.Engine())
    res = gs.minimize(ROSEN, np.zeros(10), method=method, backend=spy, progress=False)
    assert res.success, res.message
    np.testing.assert_allclose(res.x, np.ones(10), atol=1e-4)
    assert spy.calls.get("hessian" if method == "trust-exact" else "hvp", 0) > 0


def test_gradient_free_method_evaluates_only():
    spy = Spy(gs.Engine())
    res = gs.minimize(ROSEN, np.full(10, 0.9), method="Powell", backend=spy, progress=False)
    assert res.fun < 1e-6 and set(spy.calls) == {"evaluate"}
    assert np.isnan(res.history["grad_norm"]).all()


def test_remote_and_local_runs_take_the_same_steps(remote):
    X, y = logistic_data(300, 6, seed=11)
    graph = gs.trace(logistic_loss, gs.Spec((6,)), X, y)
    local = gs.minimize(graph, np.zeros(6), X, y, progress=False)
    far = gs.minimize(graph, np.zeros(6), X, y, backend=remote, progress=False)
    # The same engine on both sides: the same path (up to BLAS rounding in the server).
    assert far.nit == local.nit and far.nfev == local.nfev
    np.testing.assert_allclose(far.x, local.x, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(far.history["loss"], local.history["loss"], rtol=1e-10)


# ---- SciPy pass-through -----------------------------------------------------------------------


def test_any_shape_of_x0_and_of_the_input():
    graph = gs.trace(lambda x: rosenbrock(x.reshape(10)), gs.Spec((2, 5)))
    res = gs.minimize(graph, np.zeros(10), progress=False)  # flat x0 for a (2, 5) input
    assert res.x.shape == (2, 5) and res.jac.shape == (2, 5)
    np.testing.assert_allclose(res.x, np.ones((2, 5)), atol=1e-4)
    with pytest.raises(ValueError, match="x0 for input 'x' needs 10 elements"):
        gs.minimize(graph, np.zeros(9), progress=False)


def test_float32_graph():
    graph = gs.trace(rosenbrock, gs.Spec((4,), "float32"))
    res = gs.minimize(graph, np.zeros(4), progress=False, options={"gtol": 1e-3})
    assert res.x.dtype == np.float64
    np.testing.assert_allclose(res.x, np.ones(4), atol=1e-2)


def test_bounds_tol_options_and_callback_pass_through():
    seen = []

    def callback(x):
        seen.append(x.copy())

    bounds = [(None, 0.5)] * 10
    res = gs.minimize(
        ROSEN,
        np.zeros(10),
        bounds=bounds,
        tol=1e-12,
        callback=callback,
        options={"maxiter": 500},
        progress=False,
    )
    assert res.success
    assert np.all(res.x <= 0.5 + 1e-12) and res.x[0] == pytest.approx(0.5)
    assert len(seen) == res.nit and seen[-1].shape == (10,)
    np.testing.assert_array_equal(seen[-1], res.x)

    res = gs.minimize(ROSEN, np.zeros(10), method="BFGS", options={"maxiter": 5}, progress=False)
    assert res.nit == 5 and not res.success
    cons = {"type": "eq", "fun": lambda x: x.sum() - 5.0}
    res = gs.minimize(ROSEN, np.zeros(10), method="SLSQP", constraints=[cons], progress=False)
    assert res.success and res.x.sum() == pytest.approx(5.0)


def test_callback_with_intermediate_result_and_stop_iteration():
    graph = gs.trace(lambda x: rosenbrock(x.reshape(10)), gs.Spec((5, 2)))
    results = []

    def callback(intermediate_result):
        results.append(intermediate_result)
        if len(results) == 3:
            raise StopIteration

    res = gs.minimize(graph, np.zeros(10), callback=callback, progress=False)
    assert len(results) == 3 and res.nit == 3 and res.status == 99
    assert results[0].x.shape == (5, 2) and results[0].jac.shape == (5, 2)
    assert results[-1].fun == pytest.approx(res.history["loss"][3])


def test_argument_errors():
    X, y = logistic_data(20, 3, seed=0)
    graph = gs.trace(logistic_loss, gs.Spec((3,)), X, y)
    with pytest.raises(TypeError, match=r"need 2 arguments \(X, y\), got 1"):
        gs.minimize(graph, np.zeros(3), X)
    with pytest.raises(ValueError, match="'X' expects shape"):
        gs.minimize(graph, np.zeros(3), X[:5], y)
    with pytest.raises(TypeError, match="one real scalar output"):
        gs.minimize(gs.trace(lambda x: x * 2.0, gs.Spec((3,))), np.zeros(3))
    with pytest.raises(TypeError, match="jac"):
        gs.minimize(ROSEN, np.zeros(10), jac=True)
    with pytest.raises(TypeError, match="constraints"):
        gs.minimize(ROSEN, np.zeros(10), method="adam", constraints=[])


# ---- first-order loops ------------------------------------------------------------------------


def test_adam_reaches_the_lbfgs_loss_on_logistic_regression(backend):
    X, y = logistic_data(400, 8, seed=1)
    graph = gs.trace(logistic_loss, gs.Spec((8,)), gs.Spec((400, 8)), gs.Spec((400,)))
    ref = gs.minimize(graph, np.zeros(8), X, y, backend=backend, progress=False)
    res = gs.minimize(
        graph,
        np.zeros(8),
        X,
        y,
        method="adam",
        backend=backend,
        progress=False,
        options={"learning_rate": 0.05, "maxiter": 2000, "gtol": 1e-6},
    )
    assert res.success, res.message
    assert res.fun == pytest.approx(ref.fun, rel=1e-6)
    np.testing.assert_allclose(res.x, ref.x, atol=1e-4)
    assert res.nfev == res.nit + 1 == len(res.history["loss"])
    assert res.history["grad_norm"][-1] <= 1e-6 * np.sqrt(8)


def test_sgd_with_momentum_and_nesterov():
    X, y = logistic_data(400, 8, seed=1)
    graph = gs.trace(logistic_loss, gs.Spec((8,)), X, y)
    ref = gs.minimize(graph, np.zeros(8), X, y, progress=False)
    for nesterov in (False, True):
        res = gs.minimize(
            graph,
            np.zeros(8),
            X,
            y,
            method="sgd",
            progress=False,
            options={
                "learning_rate": 0.5,
                "momentum": 0.8,
                "nesterov": nesterov,
                "maxiter": 2000,
                "gtol": 1e-7,
            },
        )
        assert res.success and res.fun == pytest.approx(ref.fun, rel=1e-8)


def test_first_order_maxiter_bounds_schedule_and_callback():
    res = gs.minimize(ROSEN, np.zeros(10), method="adam", options={"maxiter": 7}, progress=False)
    assert not res.success and res.status == 1 and res.nit == 7
    assert len(res.history["loss"]) == 8 and res.nfev == 8
    # Bounds are projected onto; the stopping test uses the projected gradient.
    res = gs.minimize(
        ROSEN,
        np.zeros(10),
        method="adam",
        bounds=[(-1.0, 0.3)] * 10,
        options={"learning_rate": 0.02, "maxiter": 3000},
        progress=False,
    )
    assert np.all(res.x <= 0.3) and res.x[0] == pytest.approx(0.3)
    # A learning-rate schedule and a callback that stops the loop.
    rates = []

    def stop_after_four(x):
        if len(rates) == 4:
            raise StopIteration

    res = gs.minimize(
        ROSEN,
        np.zeros(10),
        method="sgd",
        progress=False,
        options={"learning_rate": lambda k: rates.append(k) or 1e-4},
        callback=stop_after_four,
    )
    assert res.status == 99 and res.nit == 4 and rates == [0, 1, 2, 3]
    res = gs.minimize(
        ROSEN, np.zeros(10), method="sgd", options={"learning_rate": 1.0}, progress=False
    )
    assert res.status == 3 and not res.success  # diverged to inf/nan: stops
    with pytest.warns(Warning, match="Unknown solver options: lr"):
        gs.minimize(
            ROSEN, np.zeros(10), method="adam", options={"lr": 1, "maxiter": 1}, progress=False
        )


# ---- progress -----------------------------------------------------------------------------


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_only_on_a_terminal(monkeypatch, capsys):
    gs.minimize(ROSEN, np.zeros(10), options={"maxiter": 20})
    assert capsys.readouterr().err == ""  # stderr is not a terminal here
    term = FakeTerminal()
    monkeypatch.setattr("sys.stderr", term)
    gs.minimize(ROSEN, np.zeros(10), progress=False)
    assert term.getvalue() == ""
    res = gs.minimize(ROSEN, np.zeros(10), method="adam", options={"maxiter": 20})
    out = term.getvalue()
    assert "adam" in out and "loss=" in out and "grad_norm=" in out and "step/s" in out
    assert "20/20" in out and res.nit == 20


# ---- what travels ---------------------------------------------------------------------------


def _remote_run(server, X, y, **kwargs):
    """A loop driven from the client (server_side=False), its calls recorded."""
    rec = Recorder()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), rec)
    graph = gs.trace(logistic_loss, gs.Spec((X.shape[1],)), gs.Spec(X.shape), gs.Spec(y.shape))
    with gs.Client(channel, timeout=60, shared_memory=False) as cli:  # what travels over gRPC
        res = gs.minimize(
            graph,
            np.zeros(X.shape[1]),
            X,
            y,
            backend=cli,
            progress=False,
            server_side=False,
            **kwargs,
        )
    channel.close()
    return res, rec.calls


def test_fixed_data_is_not_resent_every_step(server):
    X, y = logistic_data(4000, 20, seed=123)  # X: 640 KB; y: 32 KB
    res, calls = _remote_run(server, X, y, options={"maxiter": 30})
    sizes = [n for m, n in calls if m == "ValueAndGrad"]
    assert len(sizes) == len(calls) == res.nfev >= 5
    carrying_x = [i for i, n in enumerate(sizes) if n >= X.nbytes]
    # The client's protocol: first sight inline, second inline and remembered, then by digest.
    assert carrying_x in ([0], [0, 1]), sizes
    later = sizes[len(carrying_x) :]
    assert max(later) < y.nbytes + 2000, later  # w, y (under the digest threshold), refs
    assert sum(sizes) < (len(carrying_x) + 1) * X.nbytes
    # The graph body travels once, too.
    assert sizes[-1] == sizes[-2]


def test_newton_cg_remote_sends_data_by_digest_and_no_tangents_for_it(server):
    X, y = logistic_data(3000, 10, seed=7)  # X: 240 KB
    res, calls = _remote_run(server, X, y, method="Newton-CG", options={"maxiter": 8})
    hvp = [n for m, n in calls if m == "Hvp"]
    assert len(hvp) == res.nhev > 3
    # The primals' X is known by the first Hvp (ValueAndGrad sent it); hvp(argnums=0) sends
    # a tangent for w alone: no zero tangents for X and y.
    assert max(hvp) < y.nbytes + 4000


def test_data_matrix_travels_exactly_once(server):
    X, y = logistic_data(4000, 20, seed=321)
    _, calls = _remote_run(server, X, y, options={"maxiter": 10})
    assert sum(n >= X.nbytes for _, n in calls) == 1


def test_fixed_inputs_are_converted_once():
    """A Fortran-ordered data matrix and float32 labels become C-ordered float64 once: every
    call gets the same arrays (a Client then neither copies nor resends them per step)."""
    X, y = logistic_data(500, 4, seed=99)
    graph = gs.trace(logistic_loss, gs.Spec((4,)), gs.Spec(X.shape), gs.Spec(y.shape))
    seen = []

    class Capture:
        engine = gs.Engine()

        def value_and_grad(self, graph, w, X, y, argnums=0):
            seen.append((X, y))
            return self.engine.value_and_grad(graph, w, X, y, argnums=argnums)

    res = gs.minimize(
        graph,
        np.zeros(4),
        np.asfortranarray(X),
        y.astype(np.float32),
        backend=Capture(),
        progress=False,
    )
    ref = gs.minimize(graph, np.zeros(4), X, y.astype(np.float32), progress=False)
    np.testing.assert_array_equal(res.x, ref.x)
    assert len(seen) == res.nfev > 2
    assert all(a is seen[0][0] and b is seen[0][1] for a, b in seen)
    assert seen[0][0].flags.c_contiguous and seen[0][1].dtype == np.float64
