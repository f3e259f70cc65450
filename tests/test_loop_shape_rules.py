"""The shape rules of scan, while_loop and loop_tape on graphs built node by node as a client in
another language sends them: a node whose operands, counts or body do not fit is a GraphError
naming the node and the reason, and one that fits gets the carry, then the ys stacked."""

import numpy as np
import pytest
from gradserve.engine.graph import Graph, Node, Port, Spec

import gradserve as gs

F64 = Spec((), "float64")
TAPE = Spec((), "tape")


def passing(specs, outputs, constants=None):
    """A body taking `specs` and giving back the inputs (or constants) named in `outputs`."""
    inputs = [Port(f"b{i}", s) for i, s in enumerate(specs)]
    return Graph(inputs, constants or {}, [], outputs)


def loop_node(op, specs, attrs, num_outputs):
    """A graph of one `op` node on inputs of `specs`, giving its `num_outputs` results."""
    names = [f"x{i}" for i in range(len(specs))]
    outputs = tuple(f"y{i}" for i in range(num_outputs))
    node = Node(op, tuple(names), outputs, attrs)
    return Graph([Port(n, s) for n, s in zip(names, specs)], {}, [node], list(outputs))


def rejected(op, specs, attrs, num_outputs, reason):
    with pytest.raises(gs.GraphError) as info:
        loop_node(op, specs, attrs, num_outputs)
    assert info.value.where.startswith(f"node 0 '{op}'")
    assert reason in info.value.reason


SCAN = {"length": 2, "num_consts": 0, "num_carry": 1, "reverse": False}


def test_scan_with_more_consts_and_carries_than_operands_is_rejected():
    """num_consts + num_carry past the operands is refused before the body is looked at, with
    no consts as with some."""
    body = passing([F64, F64], ["b0", "b1"])
    rejected("scan", [F64], {**SCAN, "num_carry": 2, "body": body}, 2, "bad length, num_consts")
    rejected("scan", [F64], {**SCAN, "num_consts": 1, "body": body}, 1, "bad length, num_consts")


@pytest.mark.parametrize("rows", [1, 3])
def test_scanned_input_must_have_exactly_length_rows(rows):
    """An xs operand longer than `length` is refused as a shorter one is: the loop would read
    only part of it."""
    body = passing([F64, F64], ["b0", "b1"])
    attrs = {**SCAN, "body": body}
    rejected("scan", [F64, Spec((rows,))], attrs, 2, "has no leading axis of 2")
    graph = loop_node("scan", [F64, Spec((2,))], attrs, 2)
    assert [p.spec for p in graph.outputs] == [F64, Spec((2,))]


WHILE = {"num_cond_consts": 0, "num_body_consts": 0, "max_iterations": 10}
LESS = Graph(
    [Port("c0", F64), Port("c1", F64)], {}, [Node("less", ("c0", "c1"), ("k",), {})], ["k"]
)


@pytest.mark.parametrize(
    "body",
    [
        passing([F64, F64], ["b0"]),  # drops a carry
        passing([F64, F64], ["b0", "k"], {"k": np.zeros(2)}),  # changes its shape
        passing([F64, F64], ["b0", "k"], {"k": np.zeros((), np.float32)}),  # its dtype
    ],
    ids=["fewer", "shape", "dtype"],
)
def test_while_loop_body_must_give_back_the_carry_it_takes(body):
    attrs = {**WHILE, "cond": LESS, "body": body}
    rejected("while_loop", [F64, F64], attrs, 2, "a carry keeps its shape and dtype")


LOOP_TAPE = {
    "length": -1,
    "num_consts": 0,
    "num_carry": 2,
    "num_tape": 2,
    "backward": False,
    "reverse": False,
    "linear": (0, 1),
}


def test_loop_tape_linear_positions_are_operand_indices():
    """`linear` names operands by index from 0 (the tape itself excluded): -1 is refused."""
    body = passing([F64] * 4, ["b0", "b1"])
    specs = [F64, F64, TAPE]
    assert len(loop_node("loop_tape", specs, {**LOOP_TAPE, "body": body}, 2).outputs) == 2
    for linear in [(-1,), (0, 2)]:
        attrs = {**LOOP_TAPE, "linear": linear, "body": body}
        rejected("loop_tape", specs, attrs, 2, f"linear positions {linear} out of range")


def test_loop_tape_of_unknown_length_whose_body_drops_a_carry_says_so():
    """A body giving fewer outputs than the carry is a carry mismatch, not a stacked output."""
    attrs = {**LOOP_TAPE, "body": passing([F64] * 4, ["b0"])}
    rejected("loop_tape", [F64, F64, TAPE], attrs, 2, "a carry keeps its shape and dtype")
