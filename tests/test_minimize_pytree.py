"""gs.minimize with a Python objective over a pytree of parameters: traced once on the flat
vector of x0's leaves; result.x, result.jac and what a callback receives have x0's structure;
bounds are on the flat vector. In-process and through a Client of a live server (the
`backend` fixture of conftest.py)."""

from __future__ import annotations

import collections

import numpy as np
import optree
import pytest
import scipy.optimize

import gradserve as gs
import gradserve.numpy as gnp

Params = collections.namedtuple("Params", "scale parts")


def least_squares(p, X, Y):
    r = X @ p["W"] + p["b"] - Y
    return 0.5 * gnp.sum(r * r)


def data(seed=0, n=60, d=4, k=2):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    Y = X @ rng.standard_normal((d, k)) + 0.3 + 0.1 * rng.standard_normal((n, k))
    coef = np.linalg.lstsq(np.hstack([X, np.ones((n, 1))]), Y, rcond=None)[0]
    return X, Y, {"W": coef[:d], "b": coef[d]}


class Spy:
    def __init__(self, backend):
        self.backend = backend
        self.calls: dict[str, int] = {}

    def __getattr__(self, name):
        method = getattr(self.backend, name)

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return counted


@pytest.mark.parametrize("method", ["L-BFGS-B", "BFGS", "Newton-CG", "adam"])
def test_dict_parameters_least_squares_match_lstsq(backend, method):
    X, Y, best = data()
    x0 = {"W": np.zeros((4, 2)), "b": np.zeros(2)}
    seen = []
    options = {"learning_rate": 0.05, "maxiter": 5000, "gtol": 1e-7} if method == "adam" else None
    spy = Spy(backend)
    res = gs.minimize(
        least_squares,
        x0,
        X,
        Y,
        method=method,
        backend=spy,
        options=options,
        callback=seen.append,
        progress=False,
    )
    assert res.success, res.message
    assert isinstance(res.x, dict) and set(res.x) == {"W", "b"}
    assert res.x["W"].shape == (4, 2) and res.x["b"].shape == (2,)
    assert res.x["W"].dtype == np.float64
    atol = 1e-5 if method == "adam" else 1e-6
    np.testing.assert_allclose(res.x["W"], best["W"], atol=atol)
    np.testing.assert_allclose(res.x["b"], best["b"], atol=atol)
    assert isinstance(res.jac, dict) and res.jac["W"].shape == (4, 2)
    # the callback gets the parameters in x0's structure, once per step, fresh each time
    assert len(seen) == res.nit and all(set(x) == {"W", "b"} for x in seen)
    assert seen[0]["W"].shape == (4, 2) and seen[-1]["b"].shape == (2,)
    np.testing.assert_allclose(seen[-1]["W"], res.x["W"])
    assert seen[0]["W"] is not seen[-1]["W"]
    assert res.history["loss"][-1] == pytest.approx(res.fun)
    assert spy.calls == res.backend_calls
    assert spy.calls["value_and_grad"] == res.nfev
    if method == "Newton-CG":
        assert spy.calls["hvp"] == res.nhev > 0  # the Hessian-vector products are flat
    assert x0["W"].sum() == 0.0  # x0 untouched


def test_nested_structure_numbers_none_and_float32_leaves():
    def objective(p, target):
        (a, b, nothing), c = p.parts
        assert nothing is None and a.dtype == "float32" and b.dtype == "float64"
        return (
            (p.scale - 2.0) ** 2
            + gnp.sum(gnp.astype(a, "float64") - target) ** 2
            + gnp.sum((b + 1.0) ** 2)
            + c["z"] ** 2
        )

    x0 = Params(0.0, ((np.zeros(2, np.float32), np.ones((2, 2)), None), {"z": 3}))
    res = gs.minimize(objective, x0, 5.0, method="BFGS", progress=False)
    assert res.success, res.message
    assert optree.tree_structure(res.x, namespace="gradserve") == optree.tree_structure(
        x0, namespace="gradserve"
    )
    assert isinstance(res.x, Params) and isinstance(res.x.scale, float)
    (a, b, nothing), c = res.x.parts
    assert nothing is None and isinstance(c["z"], float)
    assert a.dtype == np.float64 and a.shape == (2,)  # every leaf comes back as float64
    assert res.x.scale == pytest.approx(2.0, abs=1e-6)
    assert a.sum() == pytest.approx(10.0, abs=1e-5)  # sum(a - 5) = 0
    np.testing.assert_allclose(b, -np.ones((2, 2)), atol=1e-6)
    assert c["z"] == pytest.approx(0.0, abs=1e-6)


def test_the_traced_graph_takes_the_flat_vector_and_the_fixed_inputs():
    X, Y, _ = data()
    graph_fun = gs.minimize(least_squares, {"W": np.zeros((4, 2)), "b": np.zeros(2)}, X, Y)
    # the same problem as a graph over the flat vector (leaves in order: "W", then "b")
    graph = gs.trace(
        lambda p, X, Y: least_squares({"W": gnp.reshape(p[:8], (4, 2)), "b": p[8:]}, X, Y),
        gs.Spec((10,)),
        X,
        Y,
    )
    flat = gs.minimize(graph, np.zeros(10), X, Y)
    assert flat.x.shape == (10,)
    np.testing.assert_allclose(graph_fun.x["W"].ravel(), flat.x[:8], atol=1e-7)
    np.testing.assert_allclose(graph_fun.x["b"], flat.x[8:], atol=1e-7)
    # an array x0 with a function is one leaf: result.x is an array of its shape
    single = gs.minimize(lambda w: gnp.sum((w - 3.0) ** 2), np.zeros((2, 2)))
    assert single.x.shape == (2, 2)
    np.testing.assert_allclose(single.x, 3.0, atol=1e-6)


def test_intermediate_result_callback_stop_iteration_and_bounds():
    X, Y, _ = data()
    x0 = {"W": np.zeros((4, 2)), "b": np.zeros(2)}
    results = []

    def callback(intermediate_result):
        results.append(intermediate_result)
        if len(results) == 3:
            raise StopIteration

    res = gs.minimize(least_squares, x0, X, Y, method="trust-constr", callback=callback)
    assert len(results) == 3 and res.status == 3  # trust-constr's status for StopIteration
    r = results[-1]
    assert set(r.x) == {"W", "b"} and r.x["W"].shape == (4, 2) and np.isfinite(r.fun)

    # bounds are on the flat vector, in leaf order: W's 8 elements, then b's 2
    hi = np.full(10, np.inf)
    hi[8:] = 0.1  # b <= 0.1, below the unconstrained optimum (about 0.3)
    for method, options in [("L-BFGS-B", None), ("adam", {"learning_rate": 0.05})]:
        res = gs.minimize(
            least_squares,
            x0,
            X,
            Y,
            method=method,
            bounds=scipy.optimize.Bounds(-np.inf, hi),
            options=options,
        )
        np.testing.assert_allclose(res.x["b"], [0.1, 0.1], atol=1e-9)
        assert res.fun > gs.minimize(least_squares, x0, X, Y).fun
    pairs = [(None, None)] * 8 + [(None, 0.1)] * 2
    res = gs.minimize(least_squares, x0, X, Y, bounds=pairs)
    np.testing.assert_allclose(res.x["b"], [0.1, 0.1], atol=1e-9)


def test_a_loop_in_the_objective_with_a_pytree_carry():
    # minimise over a dict of parameters an objective that runs a dict carry through a scan
    # (a damped recurrence driven by xs); Newton-CG's hvp goes through the scan.
    xs = np.linspace(-1.0, 1.0, 6)
    target = np.sin(xs)

    def fit(p, xs, target):
        def step(c, x):
            h = p["decay"] * c["h"] + p["gain"] * x
            return {"h": h, "n": c["n"] + 1.0}, h

        _, hs = gs.scan(step, {"h": p["h0"], "n": 0.0}, xs)
        return gnp.sum((hs - target) ** 2) + 0.1 * (p["decay"] ** 2 + p["h0"] ** 2)

    x0 = {"decay": 0.5, "gain": 1.0, "h0": 0.0}
    ref = gs.minimize(fit, x0, xs, target, method="BFGS")
    newton = gs.minimize(fit, x0, xs, target, method="Newton-CG", options={"xtol": 1e-10})
    assert ref.success and newton.success
    assert newton.fun == pytest.approx(ref.fun, abs=1e-12)
    for key in x0:
        assert isinstance(newton.x[key], float)
        assert newton.x[key] == pytest.approx(ref.x[key], abs=1e-4)
    assert newton.backend_calls["hvp"] > 0


def test_pytree_argument_errors():
    graph = gs.trace(lambda w: gnp.sum(w * w), gs.Spec((3,)))
    with pytest.raises(TypeError, match="pass a Python function"):
        gs.minimize(graph, {"w": np.zeros(3)})
    with pytest.raises(TypeError, match="a gs.Graph or a Python function"):
        gs.minimize("least_squares", np.zeros(3))
    with pytest.raises(TypeError, match="leaf 1 of x0 must be real"):
        gs.minimize(lambda p: gnp.sum(p[0]), (np.zeros(2), np.zeros(2, complex)))
    with pytest.raises(ValueError, match="no elements"):
        gs.minimize(lambda p: 0.0 * p["a"], {"a": None})
    with pytest.raises(TypeError, match="one real scalar output"):
        gs.minimize(lambda p: p["w"] * 2.0, {"w": np.zeros(3)})
