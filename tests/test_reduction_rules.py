"""The reductions' shape rules on graphs built node by node (as a client in another language
sends them), and the values and derivatives at their edges (ties, all -inf rows, zero-size
arrays, complex inputs), against NumPy and closed forms."""

import numpy as np
import pytest
from gradserve.engine.graph import Graph, Node, Port, Spec

import gradserve as gs
import gradserve.numpy as gnp

ENG = gs.Engine()


def one_node(op, specs, attrs):
    """A graph of one `op` node on inputs of `specs` (pairs of shape and dtype)."""
    names = [f"x{i}" for i in range(len(specs))]
    inputs = [Port(n, Spec(shape, dtype)) for n, (shape, dtype) in zip(names, specs)]
    return Graph(inputs, {}, [Node(op, tuple(names), ("y",), attrs)], ["y"])


def result_spec(op, shape, dtype, attrs):
    spec = one_node(op, [(shape, dtype)], attrs).outputs[0].spec
    return tuple(spec.shape), str(spec.dtype)


@pytest.mark.parametrize(
    "op, shape, attrs, reason",
    [
        ("reduce_sum", (2, 3), {"axes": (1, 0), "keepdims": False}, "must be sorted"),
        ("reduce_sum", (2, 3), {"axes": (-1,), "keepdims": False}, "must be sorted"),
        ("argmax", (2, 3), {"axes": (-2,), "keepdims": False}, "must be sorted"),
        ("reduce_sum", (2, 3), {"axes": (2,), "keepdims": False}, "out of range"),
        ("reduce_max", (2, 0), {"axes": (1,), "keepdims": False}, "no identity"),
        ("reduce_min", (0, 2), {"axes": (0,), "keepdims": True}, "no identity"),
        ("argmax", (2, 3), {"axes": (0, 1), "keepdims": False}, "one axis or none"),
        ("argmin", (2, 0), {"axes": (), "keepdims": False}, "empty array"),
        ("cumsum", (2, 3), {"axis": 2}, "out of range"),
        ("cumsum", (2, 3), {"axis": 3}, "out of range"),
        ("cumsum", (2, 3), {"axis": -1}, "out of range"),
        ("argsort", (2, 3), {"axis": 2}, "out of range"),
        ("argsort", (2, 3), {"axis": 3}, "out of range"),
        ("argsort", (2, 3), {"axis": -1}, "out of range"),
        ("logsumexp", (2,), {"axes": (0,), "keepdims": False}, "float or complex"),
    ],
)
def test_reduction_rejects(op, shape, attrs, reason):
    dtype = "int64" if op == "logsumexp" else "float64"
    with pytest.raises(gs.GraphError) as info:
        one_node(op, [(shape, dtype)], attrs)
    assert info.value.where == f"node 0 '{op}' -> y"
    assert reason in info.value.reason


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64", "bool", "complex128"])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axes", [(), (0,), (1,), (0, 2)])
def test_reduction_shape_and_dtype_are_numpys(axes, keepdims, dtype):
    x = np.ones((2, 3, 4), dtype)
    attrs = {"axes": axes, "keepdims": keepdims}
    for op, numpy_fn in [("reduce_sum", np.sum), ("reduce_prod", np.prod), ("reduce_max", np.max)]:
        want = numpy_fn(x, axis=axes, keepdims=keepdims)
        assert result_spec(op, x.shape, dtype, attrs) == (want.shape, str(want.dtype)), op
    if dtype not in ("bool", "int32", "int64"):
        assert result_spec("logsumexp", x.shape, dtype, attrs)[0] == want.shape


@pytest.mark.parametrize("dtype", ["float32", "int32", "bool"])
@pytest.mark.parametrize("axis", [0, 2])
def test_cumsum_and_argsort_shape_and_dtype_are_numpys(axis, dtype):
    x = np.ones((2, 3, 4), dtype)
    want = np.cumsum(x, axis=axis)
    assert result_spec("cumsum", x.shape, dtype, {"axis": axis}) == (want.shape, str(want.dtype))
    assert result_spec("argsort", x.shape, dtype, {"axis": axis}) == (x.shape, "int64")


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axes", [(), (0,), (1,)])
def test_argmax_shape(axes, keepdims):
    x = np.zeros((2, 3))
    want = np.argmax(x, axis=axes[0] if axes else None, keepdims=keepdims)
    attrs = {"axes": axes, "keepdims": keepdims}
    assert result_spec("argmax", x.shape, "float64", attrs) == (want.shape, "int64")


def test_sum_over_a_zero_size_axis_is_zero():
    x = np.zeros((2, 0))
    graph = gs.trace(lambda x: gnp.sum(x, axis=1), x)
    np.testing.assert_array_equal(ENG.evaluate(graph, x), np.zeros(2))


# ---- max / min: the derivative splits between ties ------------------------------------------


@pytest.mark.parametrize("name", ["max", "min"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_extremum_gradient_splits_between_ties(name, keepdims):
    top = 3.0 if name == "max" else -3.0
    x = np.array([[1.0, top, top], [top, 0.5, 2.0 * np.sign(top) * 0]])
    weights = np.array([1.0, 10.0])
    if keepdims:
        weights = weights[:, None]

    def f(x):
        return gnp.sum(getattr(gnp, name)(x, axis=1, keepdims=keepdims) * weights)

    # closed form: each row's weight spread evenly over the elements equal to its extremum
    want = np.array([[0.0, 0.5, 0.5], [10.0, 0.0, 0.0]])
    np.testing.assert_allclose(gs.grad(f)(x), want, rtol=0, atol=1e-15)
    # forward mode sees the same split: the directional derivative along e_ij is want[i, j]
    np.testing.assert_allclose(gs.jacfwd(f)(x), want, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["max", "min"])
@pytest.mark.parametrize("axes", [(0,), (1,), (0, 1)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_extremum_of_complex_input_picks_by_real_part(name, axes, keepdims):
    rng = np.random.default_rng(3)
    x = rng.permutation(12).reshape(3, 4) + 1j * rng.normal(size=(3, 4))
    graph = gs.trace(lambda x: getattr(gnp, name)(x, axis=axes, keepdims=keepdims), x)
    got = ENG.evaluate(graph, x)
    pick = np.argmax if name == "max" else np.argmin
    moved = np.moveaxis(x, axes, range(-len(axes), 0)).reshape(
        np.delete(x.shape, axes).tolist() + [-1]
    )
    want = np.take_along_axis(moved, pick(moved.real, axis=-1)[..., None], axis=-1)[..., 0]
    if keepdims:
        want = want.reshape([1 if i in axes else d for i, d in enumerate(x.shape)])
    np.testing.assert_array_equal(got, want)


# ---- logsumexp --------------------------------------------------------------------------------


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", [0, 1, (0, 1)])
def test_logsumexp_matches_closed_form_without_overflow(axis, keepdims):
    rng = np.random.default_rng(5)
    base = rng.normal(size=(3, 4))
    x = base + 1000.0  # exp overflows: the closed form is taken on the shifted values
    want = np.log(np.sum(np.exp(base), axis=axis, keepdims=keepdims)) + 1000.0
    got = ENG.evaluate(gs.trace(lambda x: gs.nn.logsumexp(x, axis, keepdims), x), x)
    np.testing.assert_allclose(got, want, rtol=1e-14)
    assert got.shape == want.shape
    # the gradient of sum(logsumexp) is the softmax along the reduced axes
    softmax = np.exp(base) / np.sum(np.exp(base), axis=axis, keepdims=True)
    grad = gs.grad(lambda x: gnp.sum(gs.nn.logsumexp(x, axis, keepdims)))(x)
    np.testing.assert_allclose(grad, softmax, rtol=1e-13)


def test_logsumexp_of_rows_of_all_minus_inf():
    x = np.array([[-np.inf, -np.inf], [0.0, np.log(3.0)]])
    got = ENG.evaluate(gs.trace(lambda x: gs.nn.logsumexp(x, axis=1), x), x)
    np.testing.assert_allclose(got, [-np.inf, np.log(4.0)], rtol=1e-15)
    grad = gs.grad(lambda x: gnp.sum(gs.nn.logsumexp(x, axis=1)))(x)
    np.testing.assert_allclose(grad, [[0.0, 0.0], [0.25, 0.75]], rtol=1e-15)
    tangent = np.array([[1.0, 2.0], [4.0, 8.0]])
    _, out = gs.jvp(lambda x: gs.nn.logsumexp(x, axis=1), (x,), (tangent,))
    np.testing.assert_allclose(out, [0.0, 0.25 * 4.0 + 0.75 * 8.0], rtol=1e-15)


def test_logsumexp_of_a_row_holding_plus_inf():
    """The softmax's limit as one element grows without bound: 0 for the finite elements; the
    infinite one's share is inf / inf, nan (JAX's jax.nn.logsumexp gives the same)."""
    x = np.array([[1.0, np.inf, -2.0], [0.0, np.log(3.0), -np.inf]])
    got = ENG.evaluate(gs.trace(lambda x: gs.nn.logsumexp(x, axis=1), x), x)
    np.testing.assert_allclose(got, [np.inf, np.log(4.0)], rtol=1e-15)
    grad = gs.grad(lambda x: gnp.sum(gs.nn.logsumexp(x, axis=1)))(x)
    np.testing.assert_allclose(grad, [[0.0, np.nan, 0.0], [0.25, 0.75, 0.0]], rtol=1e-15)
    tangent = np.array([[1.0, 0.0, 4.0], [4.0, 8.0, 16.0]])
    _, out = gs.jvp(lambda x: gs.nn.logsumexp(x, axis=1), (x,), (tangent,))
    np.testing.assert_allclose(out, [np.nan, 0.25 * 4.0 + 0.75 * 8.0], rtol=1e-15)  # 0 * nan


def test_logsumexp_of_a_scalar_and_of_an_empty_axis():
    x = np.float64(2.5)
    got = ENG.evaluate(gs.trace(lambda x: gs.nn.logsumexp(x), x), x)
    assert got == 2.5
    empty = np.zeros((2, 0))
    got = ENG.evaluate(gs.trace(lambda x: gs.nn.logsumexp(x, axis=1), empty), empty)
    np.testing.assert_array_equal(got, [-np.inf, -np.inf])  # log of an empty sum: log(0)


@pytest.mark.parametrize("name, want", [("max", [1 + 2j, 3 + 0j]), ("min", [1 + 5j, 0 - 1j])])
def test_extremum_of_complex_input_takes_the_first_of_equal_real_parts(name, want):
    """Equal real parts tie whatever the imaginary parts: the first is taken (NumPy's own
    complex order would take 1+5j for max and 1+2j for min of the first row)."""
    x = np.array([[1 + 2j, 1 + 5j, 0 + 9j], [0 - 1j, 3 + 0j, 0 + 1j]])
    if name == "min":
        x[0] = [1 + 5j, 1 + 2j, 3 + 0j]
    got = ENG.evaluate(gs.trace(lambda x: getattr(gnp, name)(x, axis=1), x), x)
    np.testing.assert_array_equal(got, want)


# ---- argmax / argmin over all elements under batching ------------------------------------------


@pytest.mark.parametrize("name", ["argmax", "argmin"])
@pytest.mark.parametrize("keepdims", [False, True])
def test_arg_over_all_elements_is_per_batch_entry(name, keepdims):
    """check_grad evaluates the function batched over its perturbations (one batch entry per
    element): x.ravel()[argmax(x)] is the largest element, whose gradient (one 1 at it) the
    differences find only if each entry's index is taken within that entry."""
    x = np.random.default_rng(11).permutation(12).reshape(3, 4) / 7.0

    def f(x):
        index = gnp.reshape(getattr(gnp, name)(x, keepdims=keepdims), ())
        return gnp.reshape(x, (12,))[index] * 2.0

    graph = gs.trace(f, x)
    report = ENG.check_grad(graph, x)
    assert report.ok, report
    want = np.zeros(12)
    want[getattr(np, name)(x)] = 2.0
    np.testing.assert_allclose(gs.grad(f)(x), want.reshape(3, 4), rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["argmax", "argmin"])
def test_arg_with_kept_dims_broadcasts_per_batch_entry(name):
    """The kept dims of argmax over all elements broadcast against x in each batch entry:
    sum(x * argmax(x)) is argmax(x) * sum(x), whose gradient is argmax(x) everywhere."""
    x = np.random.default_rng(12).permutation(12).reshape(3, 4) / 7.0

    def f(x):
        return gnp.sum(x * getattr(gnp, name)(x, keepdims=True))

    report = ENG.check_grad(gs.trace(f, x), x)
    assert report.ok, report
    np.testing.assert_allclose(gs.grad(f)(x), np.full((3, 4), getattr(np, name)(x)), rtol=0)


@pytest.mark.parametrize("name", ["argmax", "argmin"])
def test_arg_with_kept_dims_keeps_each_batch_entrys_rank(name):
    """argmax over all of a vector with kept dims is a vector of one element in each batch
    entry: it concatenates with the vector (a scalar would not)."""
    x = np.array([0.3, -1.2, 2.5, 0.7])
    w = np.array([1.0, 2.0, 3.0, 4.0, 5.0])

    def f(x):
        index = gnp.astype(getattr(gnp, name)(x, keepdims=True), "float64")
        return gnp.sum(gnp.concatenate([x, index]) * w)

    report = ENG.check_grad(gs.trace(f, x), x)
    assert report.ok, report
    np.testing.assert_allclose(gs.grad(f)(x), w[:4], rtol=0)


@pytest.mark.parametrize("name, want", [("argmax", [1, 2]), ("argmin", [0, 0])])
def test_arg_of_complex_input_orders_by_real_part_only(name, want):
    """Equal real parts tie whatever the imaginary parts (NumPy's own complex order would
    look at them): the first of the tied elements is taken."""
    x = np.array([[1 + 0j, 2 - 1j, 2 + 1j], [0 + 1j, 0 - 1j, 3 + 0j]])
    got = ENG.evaluate(gs.trace(lambda x: getattr(gnp, name)(x, axis=1), x), x)
    np.testing.assert_array_equal(got, want)


def test_argsort_under_the_complex_step():
    """The complex step sorts by the real part: sum(w * x[argsort(x)]) has the gradient
    w[rank of x[j]] at x[j]."""
    x = np.array([0.3, -1.2, 2.5, 0.7])
    w = np.array([1.0, 10.0, 100.0, 1000.0])

    def f(x):
        return gnp.sum(gnp.take(x, gnp.argsort(x)) * w)

    report = ENG.check_grad(gs.trace(f, x), x, method="complex")
    assert report.ok, report
    ranks = np.argsort(np.argsort(x))
    np.testing.assert_array_equal(gs.grad(f)(x), w[ranks])
