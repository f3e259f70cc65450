"""The shape rule of cond on graphs built node by node as a client in another language sends
them: a predicate that is not a bool scalar, or branches whose outputs differ in number, shape
or dtype, is a GraphError naming the node and the reason; a well-formed cond decoded from the
wire runs the branch its predicate picks."""

import numpy as np
import pytest
from gradserve.engine.graph import Graph, Node, Port, Spec

import gradserve as gs

F64 = Spec((), "float64")
BOOL = Spec((), "bool")


def branch(outputs, op=None):
    """A branch taking one float64 scalar `b0` and giving `outputs` (`t` is `op(b0)`)."""
    nodes = [Node(op, ("b0",), ("t",), {})] if op else []
    return Graph([Port("b0", F64)], {}, nodes, outputs)


def cond_node(pred_spec, true_branch, false_branch, num_outputs):
    """A graph of one cond node on a predicate of `pred_spec` and one float64 operand."""
    outputs = tuple(f"y{i}" for i in range(num_outputs))
    attrs = {"true_branch": true_branch, "false_branch": false_branch}
    node = Node("cond", ("p", "x"), outputs, attrs)
    return Graph([Port("p", pred_spec), Port("x", F64)], {}, [node], list(outputs))


def rejected(pred_spec, true_branch, false_branch, num_outputs, reason):
    with pytest.raises(gs.GraphError) as info:
        cond_node(pred_spec, true_branch, false_branch, num_outputs)
    assert info.value.where.startswith("node 0 'cond'")
    assert reason in info.value.reason


@pytest.mark.parametrize("pred", [F64, Spec((), "int64"), Spec((2,), "bool")], ids=str)
def test_predicate_must_be_a_bool_scalar(pred):
    """A scalar of another dtype is refused as a bool array is: each breaks one half of the
    rule."""
    rejected(pred, branch(["b0"]), branch(["b0"]), 1, "the predicate must be a bool scalar")


@pytest.mark.parametrize(
    "true_outputs, false_outputs",
    [(["b0"], ["b0", "b0"]), (["b0", "b0"], ["b0"])],
    ids=["true_gives_fewer", "false_gives_fewer"],
)
def test_branches_must_give_as_many_outputs(true_outputs, false_outputs):
    """Either branch giving a prefix of the other's outputs is refused."""
    rejected(
        BOOL,
        branch(true_outputs),
        branch(false_outputs),
        len(true_outputs),
        "the branches give different outputs",
    )


def test_branches_must_give_outputs_of_one_dtype():
    """Outputs that differ in dtype at one position are a GraphError, not a comparison error."""
    rejected(
        BOOL, branch(["b0"]), branch(["t"], "isfinite"), 1, "the branches give different outputs"
    )


def test_cond_decoded_from_the_wire_runs_the_branch_picked():
    """A bool predicate whose dtype name the decoder spelled (not the literal in the engine's
    source) is accepted as a bool scalar."""
    graph = cond_node(BOOL, branch(["b0"]), branch(["t"], "negative"), 1)
    again = gs.Graph.from_bytes(graph.to_bytes())
    assert again == graph
    engine = gs.Engine()
    assert engine.evaluate(again, np.bool_(True), 1.5) == 1.5
    assert engine.evaluate(again, np.bool_(False), 1.5) == -1.5
