"""The `simplify` rules of add, subtract and multiply while a graph is traced: an operand that
holds the neutral number everywhere (x + 0, 0 + x, x - 0, x * 1, 1 * x) leaves the other
operand, with no node; any other number, or a neutral operand that broadcasts the other to a
larger shape, keeps the op. Values against NumPy."""

import numpy as np
import pytest

import gradserve as gs

ENG = gs.Engine()
X = np.array([1.5, -2.0, 3.0])


def ops(graph):
    return [n.op for n in graph.nodes]


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x + 0.0,
        lambda x: 0.0 + x,
        lambda x: x + np.zeros(3),
        lambda x: x - 0.0,
        lambda x: x * 1.0,
        lambda x: 1.0 * x,
    ],
    ids=["x+0", "0+x", "x+zeros", "x-0", "x*1", "1*x"],
)
def test_a_neutral_operand_leaves_the_other_with_no_node(fn):
    graph = gs.trace(fn, X)
    assert ops(graph) == []
    np.testing.assert_array_equal(ENG.evaluate(graph, X), X)


@pytest.mark.parametrize(
    "fn, op",
    [
        (lambda x: x + -1.0, "add"),
        (lambda x: -1.0 + x, "add"),
        (lambda x: x + 1.0, "add"),
        (lambda x: x + np.zeros((2, 3)), "add"),
        (lambda x: 0.0 - x, "subtract"),
        (lambda x: x - 1.0, "subtract"),
        (lambda x: x * 2.0, "multiply"),
        (lambda x: x * np.ones((2, 3)), "multiply"),
    ],
    ids=["x+-1", "-1+x", "x+1", "x+zeros_2x3", "0-x", "x-1", "x*2", "x*ones_2x3"],
)
def test_any_other_operand_keeps_the_op(fn, op):
    graph = gs.trace(fn, X)
    assert ops(graph) == [op]
    got = ENG.evaluate(graph, X)
    want = fn(X)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)
