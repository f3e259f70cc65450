"""The index attribute of getitem, scatter_add and add_at on graphs built node by node, as a
client in another language sends them: entries outside the documented ranges are a GraphError
naming the node; add_at into a 0-d value computed by a ufunc."""

import numpy as np
import pytest
from gradserve.engine.graph import Graph, Node, Port, Spec
from test_shape_rules import F64, rejected

import gradserve as gs

SLICE, INT, NEWAXIS, ARRAY = 0, 1, 2, 3
I64 = "int64"


@pytest.mark.parametrize(
    "specs, index, reason",
    [
        # a slice starts at 0 <= start <= n: NumPy would read -1 as the last element
        ([((3,), F64)], (SLICE, -1, -1, 1), "bad slice (-1, -1, 1) for axis 0"),
        ([((3,), F64)], (SLICE, 4, -1, 1), "bad slice"),
        ([((3,), F64)], (SLICE, 0, 3, 0), "bad slice"),
        ([((3,), F64)], (INT, 3, 0, 0), "integer index 3 is out of range for axis 0"),
        # index arrays consume both axes of x: the integer after them has no axis left
        (
            [((3,), F64), ((2,), I64), ((2,), I64)],
            (ARRAY, 0, 0, 0, ARRAY, 1, 0, 0, INT, 0, 0, 0),
            "integer index 0 is out of range for axis 2",
        ),
        ([((), F64), ((2,), I64)], (ARRAY, 0, 0, 0, INT, 0, 0, 0), "out of range for axis 1"),
    ],
)
def test_getitem_rejects_entries_outside_their_ranges(specs, index, reason):
    rejected("getitem", specs, {"index": index}, reason)


def test_add_at_into_a_zero_d_ufunc_result():
    """sin of a 0-d array is a NumPy scalar at run time; add_at makes it an array before
    adding into it: sin(x) + u[0], as NumPy computes it."""
    graph = Graph(
        [Port("x", Spec((), F64)), Port("u", Spec((1,), F64))],
        {},
        [
            Node("sin", ("x",), ("b",), {}),
            Node("add_at", ("b", "u"), ("y",), {"index": (NEWAXIS, 0, 0, 0)}),
        ],
        ["y"],
    )
    got = gs.Engine().evaluate(graph, np.array(0.3), np.array([2.0]))
    assert isinstance(got, np.ndarray) and got.shape == ()
    assert got == np.sin(0.3) + 2.0
