"""The shape rules of the data-movement and contraction ops, on graphs built node by node as a
client in another language sends them: what NumPy accepts gets NumPy's shape and dtype, what it
rejects is a GraphError naming the node and the reason."""

import numpy as np
import pytest
from gradserve.engine.graph import Graph, Node, Port, Spec

import gradserve as gs


def one_node(op, specs, attrs):
    """A graph of one `op` node on inputs of `specs` (pairs of shape and dtype)."""
    names = [f"x{i}" for i in range(len(specs))]
    inputs = [Port(n, Spec(shape, dtype)) for n, (shape, dtype) in zip(names, specs)]
    return Graph(inputs, {}, [Node(op, tuple(names), ("y",), attrs)], ["y"])


def rejected(op, specs, attrs, reason):
    with pytest.raises(gs.GraphError) as info:
        one_node(op, specs, attrs)
    assert info.value.where == f"node 0 '{op}' -> y"
    assert reason in info.value.reason
    return info.value


def result_spec(op, specs, attrs):
    spec = one_node(op, specs, attrs).outputs[0].spec
    return tuple(spec.shape), str(spec.dtype)


F64 = "float64"


# ---- einsum ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "subscripts, shapes, reason",
    [
        ("i,i", [(2,), (2,)], "exactly one '->'"),
        ("i->->", [(2,)], "exactly one '->'"),
        ("i,i,i->", [(2,), (2,)], "name 3 operands, node has 2"),
        ("i->", [(2,), (2,)], "name 1 operands, node has 2"),
        ("i1,i->", [(2, 2), (2,)], "does not fit"),
        ("i.,i->", [(2, 2), (2,)], "does not fit"),
        ("ij->", [(2,)], "does not fit"),
        ("i->", [(2, 3)], "does not fit"),
        # sizes that disagree, the larger first and the larger second
        ("i,i->", [(3,), (2,)], "axis 'i' has sizes 3 and 2"),
        ("i,i->", [(2,), (3,)], "axis 'i' has sizes 2 and 3"),
        ("ii->", [(2, 3)], "axis 'i' has sizes 2 and 3"),
        ("i->j", [(2,)], "must name distinct input axes"),
        ("i->ii", [(2,)], "must name distinct input axes"),
        ("ij,jk->iz", [(2, 3), (3, 4)], "must name distinct input axes"),
    ],
)
def test_einsum_rejects(subscripts, shapes, reason):
    rejected("einsum", [(s, F64) for s in shapes], {"subscripts": subscripts}, reason)


@pytest.mark.parametrize(
    "subscripts, shapes, dtypes",
    [
        ("ij,jk->ik", [(2, 3), (3, 4)], [F64, F64]),
        ("i,i->", [(3,), (3,)], ["float32", F64]),
        ("ii->i", [(3, 3)], ["float32"]),
        ("ij->ji", [(2, 5)], ["int64"]),
        ("aB,Bc->ca", [(2, 3), (3, 4)], ["float32", "float32"]),
    ],
)
def test_einsum_shape_and_dtype_are_numpys(subscripts, shapes, dtypes):
    want = np.einsum(subscripts, *[np.ones(s, d) for s, d in zip(shapes, dtypes)])
    got = result_spec("einsum", list(zip(shapes, dtypes)), {"subscripts": subscripts})
    assert got == (want.shape, str(want.dtype))


# ---- data movement ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op, shapes, attrs, reason",
    [
        ("reshape", [(2, 3)], {"shape": (-1,)}, "negative dimension"),  # no NumPy -1 idiom
        ("reshape", [(2, 3)], {"shape": (-1, -1, 6)}, "negative dimension"),
        ("reshape", [(2, 3)], {"shape": (-6,)}, "negative dimension"),
        ("reshape", [(2, 3)], {"shape": (-2, -3)}, "negative dimension"),
        ("reshape", [(2, 3)], {"shape": (5,)}, "cannot reshape (2, 3) (6 elements) to (5,)"),
        ("reshape", [(2, 3)], {"shape": (7,)}, "cannot reshape"),
        ("transpose", [(2, 3)], {"perm": (0,)}, "not a permutation of 2 axes"),
        ("transpose", [(2, 3)], {"perm": (0, 0)}, "not a permutation"),
        ("transpose", [(2, 3)], {"perm": (1, 2)}, "not a permutation"),
        ("transpose", [(2, 3)], {"perm": (0, 1, 2)}, "not a permutation"),
        ("broadcast_to", [(3,)], {"shape": (2, 4)}, "cannot broadcast (3,) to (2, 4)"),
        ("broadcast_to", [(2, 3)], {"shape": (3,)}, "cannot broadcast"),
        # broadcasts both ways, so np.broadcast_shapes accepts it: not a broadcast *to* (2, 1)
        ("broadcast_to", [(1, 3)], {"shape": (2, 1)}, "cannot broadcast (1, 3) to (2, 1)"),
        ("flip", [(2, 3)], {"axes": (2,)}, "axis 2 is out of range for 2 dimensions"),
        ("flip", [(2, 3)], {"axes": (-3,)}, "axis -3 is out of range"),
        ("flip", [(2, 3)], {"axes": (0, -2)}, "repeated axis"),
        ("concatenate", [(2,), (3,)], {"axis": 1}, "axis 1 is out of range for 1 dimensions"),
        ("concatenate", [(2,), (3,)], {"axis": -1}, "axis -1 is out of range"),
        ("concatenate", [(2,), (3,)], {"axis": 2}, "axis 2 is out of range"),
        ("concatenate", [(2, 3), (2,)], {"axis": 0}, "cannot concatenate (2, 3) and (2,)"),
        ("concatenate", [(2,), (2, 3)], {"axis": 0}, "cannot concatenate (2,) and (2, 3)"),
        ("concatenate", [(2, 3), (2, 4)], {"axis": 0}, "cannot concatenate"),
        ("concatenate", [(2, 4), (2, 3)], {"axis": 0}, "cannot concatenate (2, 4) and (2, 3)"),
        ("concatenate", [(2, 3), (2, 3), (1, 4)], {"axis": 0}, "cannot concatenate"),
        ("concatenate", [(2, 3), (3, 3)], {"axis": 1}, "cannot concatenate (2, 3) and (3, 3)"),
    ],
)
def test_data_movement_rejects(op, shapes, attrs, reason):
    rejected(op, [(s, F64) for s in shapes], attrs, reason)


def test_full_rejects_a_negative_dimension():
    attrs = {"shape": (2, -1), "dtype": F64, "value": 0.0}
    rejected("full", [], attrs, "negative dimension in (2, -1)")


@pytest.mark.parametrize(
    "op, specs, attrs, numpy_fn",
    [
        ("reshape", [((2, 3), F64)], {"shape": (3, 1, 2)}, lambda x: x.reshape(3, 1, 2)),
        ("reshape", [((0, 3), F64)], {"shape": (3, 0)}, lambda x: x.reshape(3, 0)),
        ("reshape", [((), "int32")], {"shape": (1, 1)}, lambda x: x.reshape(1, 1)),
        ("transpose", [((2, 3, 4), F64)], {"perm": (2, 0, 1)}, lambda x: x.transpose(2, 0, 1)),
        ("transpose", [((), F64)], {"perm": ()}, lambda x: x.transpose()),
        ("broadcast_to", [((3,), "bool")], {"shape": (2, 3)}, lambda x: np.broadcast_to(x, (2, 3))),
        (
            "broadcast_to",
            [((2, 1), F64)],
            {"shape": (4, 2, 5)},
            lambda x: np.broadcast_to(x, (4, 2, 5)),
        ),
        ("flip", [((2, 3), F64)], {"axes": (-1, 0)}, lambda x: np.flip(x, (-1, 0))),
        ("flip", [((2, 3), F64)], {"axes": ()}, lambda x: np.flip(x, ())),
        (
            "concatenate",
            [((2, 3), "float32"), ((2, 1), F64), ((2, 2), "float32")],
            {"axis": 1},
            lambda *xs: np.concatenate(xs, axis=1),
        ),
        ("concatenate", [((3, 2), F64)], {"axis": 1}, lambda x: np.concatenate([x], axis=1)),
        (
            "concatenate",
            [((1, 3), "int32"), ((4, 3), "int64")],
            {"axis": 0},
            lambda *xs: np.concatenate(xs, axis=0),
        ),
    ],
)
def test_data_movement_shape_and_dtype_are_numpys(op, specs, attrs, numpy_fn):
    want = numpy_fn(*[np.ones(shape, dtype) for shape, dtype in specs])
    assert result_spec(op, specs, attrs) == (want.shape, str(want.dtype))


@pytest.mark.parametrize("shape", [(), (0,), (2, 3)])
@pytest.mark.parametrize("dtype", ["float32", "int64", "bool"])
def test_full_shape_and_dtype(shape, dtype):
    attrs = {"shape": shape, "dtype": dtype, "value": 1.0}
    assert result_spec("full", [], attrs) == (shape, dtype)
    got = gs.Engine().evaluate(one_node("full", [], attrs))
    np.testing.assert_array_equal(got, np.full(shape, 1.0, dtype))
    assert got.dtype == np.dtype(dtype)


@pytest.mark.parametrize(
    "op, attrs", [("concatenate", {"axis": 0}), ("einsum", {"subscripts": "->"})]
)
def test_ops_of_any_number_of_operands_need_one(op, attrs):
    with pytest.raises(gs.GraphError) as info:
        Graph([], {}, [Node(op, (), ("y",), attrs)], ["y"])
    assert info.value.where == f"node 0 '{op}' -> y"
    assert info.value.reason == "takes 1 to any inputs, got 0"
