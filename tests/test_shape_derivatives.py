"""Derivatives through the data-movement ops where dtypes differ or where the tracer's
simplifier must see through them: closed forms and NumPy references."""

import numpy as np
import pytest
from test_ops import check_op

import gradserve as gs
import gradserve.numpy as gnp

ENG = gs.Engine()
RNG = np.random.default_rng(20261201)


@pytest.mark.parametrize("axis", [0, 1])
def test_concatenate_cotangents_take_each_operands_dtype(axis):
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    y = RNG.normal(size=(2, 3))
    w = RNG.normal(size=(4, 3) if axis == 0 else (2, 6))
    graph = gs.trace(lambda x, y: gnp.sum(gnp.concatenate([x, y], axis=axis) * w), x, y)
    value, (gx, gy) = ENG.vjp(graph, (x, y), np.float64(1.0))
    want_gx, want_gy = np.split(w, 2, axis=axis)  # d sum(c * w) / d c = w, split back
    assert value == pytest.approx(np.sum(np.concatenate([x, y], axis=axis) * w), rel=1e-12)
    assert gx.dtype == np.float32 and gy.dtype == np.float64
    np.testing.assert_allclose(gx, want_gx.astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(gy, want_gy, rtol=1e-15)


@pytest.mark.parametrize(
    "name, move",
    [
        ("none", lambda v: v),
        ("flip", lambda v: gnp.flip(v, 0)),
        ("reshape", lambda v: gnp.reshape(v, (3, 2))),
        ("transpose", gnp.transpose),
    ],
)
def test_gradient_of_a_product_is_the_other_factor_with_no_node(name, move):
    """d sum(move(x * y)) / dx = y: the backward pass broadcasts the seed 1 over the
    output's shape, moves it back through `move` and multiplies it by y. Ones moved or
    broadcast are still ones, so the gradient graph is y itself, with no node."""
    x = np.ones((2, 3))
    y = np.arange(6.0).reshape(2, 3)
    graph = gs.trace(gs.grad(lambda x, y: gnp.sum(move(x * y))), x, y)
    assert [n.op for n in graph.nodes] == []
    np.testing.assert_array_equal(ENG.evaluate(graph, x, y), y)


def test_concatenate_of_one_operand_is_that_operand():
    x = RNG.normal(size=(2, 3))
    check_op(lambda x: gnp.concatenate([x], axis=1), lambda x: np.concatenate([x], axis=1), [x])


def test_concatenate_of_large_equal_sizes():
    """Sizes are compared by value: 300 and 300 (distinct int objects) are one size."""
    x, y = RNG.normal(size=(300, 2)), RNG.normal(size=(300, 3))
    graph = gs.trace(lambda x, y: gnp.concatenate([x, y], axis=1), x, y)
    np.testing.assert_array_equal(ENG.evaluate(graph, x, y), np.concatenate([x, y], axis=1))
