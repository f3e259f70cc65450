"""gs.trace over pytrees: one graph input per leaf, named by its path; outputs are the leaves
of what the function returns."""

from collections import namedtuple

import numpy as np

import gradserve as gs
import gradserve.numpy as gnp

Layer = namedtuple("Layer", "W b")


def loss(params, X, y):
    residual = X @ params["layer"].W + params["layer"].b - y
    return {
        "loss": gnp.mean(residual**2),
        "norms": (gnp.sum(params["layer"].W ** 2), params["scale"]),
    }


def test_inputs_are_the_leaves_named_by_their_paths(backend):
    rng = np.random.default_rng(0)
    W, b, X, y = rng.normal(size=3), 0.25, rng.normal(size=(5, 3)), rng.normal(size=5)
    params = {"layer": Layer(W, b), "scale": 2.0}
    graph = gs.trace(loss, params, X, y)
    assert graph.input_names == ("params.layer.0", "params.layer.1", "params.scale", "X", "y")
    value, norm, scale = backend.evaluate(graph, W, b, 2.0, X, y)
    assert np.isclose(value, np.mean((X @ W + b - y) ** 2))
    assert np.isclose(norm, W @ W) and scale == 2.0
    # the leaves are ordinary inputs: differentiate with respect to W and b
    loss_only = gs.trace(lambda p, X, y: loss(p, X, y)["loss"], params, X, y)
    gW, gb = backend.grad(loss_only, W, b, 2.0, X, y, argnums=(0, 1))
    r = X @ W + b - y
    np.testing.assert_allclose(gW, 2 * X.T @ r / 5)
    np.testing.assert_allclose(gb, 2 * r.mean())


def test_lists_tuples_specs_and_none():
    graph = gs.trace(
        lambda xs, extra: [xs[0] * xs[1][0], None, (xs[1][1],)],
        [1.0, (gs.Spec((2,)), np.float32(3))],
        None,
    )
    assert graph.input_names == ("xs.0", "xs.1.0", "xs.1.1")
    assert [o.spec.dtype for o in graph.outputs] == ["float64", "float32"]
    product, third = gs.Engine().evaluate(graph, 2.0, np.array([1.0, 2.0]), np.float32(3))
    np.testing.assert_allclose(product, [2.0, 4.0])
    assert third == np.float32(3)
