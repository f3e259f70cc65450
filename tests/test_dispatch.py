"""NumPy's own functions on traced values (NEP 13 and NEP 18, engine/dispatch.py): `np.f(x)`
records the graph `gnp.f(x)` records (same digest), computes NumPy's value and differentiates
(the engine's gradient against central differences); ufunc methods; NumPy arrays on the left
of an operator; what is refused, and that the refusals name it; a whole MLP written with `np.`
only."""

import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp

ENG = gs.Engine()
RNG = np.random.default_rng(0)
A23 = RNG.uniform(-1.0, 1.0, (2, 3))
A33 = RNG.uniform(-1.0, 1.0, (3, 3))
POSITIVE = np.abs(A23) + 0.1
EYE2 = np.eye(2)

# (id, the function written with np., the same written with gnp., input shapes)
CASES = [
    # ufuncs, one argument
    ("sin", lambda x: np.sin(x), lambda x: gnp.sin(x), [(2, 3)]),
    ("cos", lambda x: np.cos(x), lambda x: gnp.cos(x), [(2, 3)]),
    ("tan", lambda x: np.tan(x), lambda x: gnp.tan(x), [(2, 3)]),
    ("exp", lambda x: np.exp(x), lambda x: gnp.exp(x), [(2, 3)]),
    ("expm1", lambda x: np.expm1(x), lambda x: gnp.expm1(x), [(2, 3)]),
    ("log", lambda x: np.log(x), lambda x: gnp.log(x), [(2, 3)]),
    ("log1p", lambda x: np.log1p(x), lambda x: gnp.log1p(x), [(2, 3)]),
    ("sqrt", lambda x: np.sqrt(x), lambda x: gnp.sqrt(x), [(2, 3)]),
    ("square", lambda x: np.square(x), lambda x: gnp.square(x), [(2, 3)]),
    ("tanh", lambda x: np.tanh(x), lambda x: gnp.tanh(x), [(2, 3)]),
    ("sinh", lambda x: np.sinh(x), lambda x: gnp.sinh(x), [(2, 3)]),
    ("arcsin", lambda x: np.arcsin(x), lambda x: gnp.arcsin(x), [(2, 3)]),
    ("arctan", lambda x: np.arctan(x), lambda x: gnp.arctan(x), [(2, 3)]),
    ("negative", lambda x: np.negative(x), lambda x: gnp.negative(x), [(2, 3)]),
    ("abs", lambda x: np.abs(x - 0.5), lambda x: gnp.abs(x - 0.5), [(2, 3)]),
    ("positive", lambda x: np.positive(x) * 2.0, lambda x: x * 2.0, [(2, 3)]),
    # ufuncs, two arguments
    ("add", lambda x, y: np.add(x, y), lambda x, y: gnp.add(x, y), [(2, 3), (3,)]),
    ("subtract", lambda x, y: np.subtract(x, y), lambda x, y: x - y, [(2, 3), (2, 3)]),
    ("multiply", lambda x, y: np.multiply(x, y), lambda x, y: x * y, [(2, 3), (2, 1)]),
    ("divide", lambda x, y: np.divide(x, y), lambda x, y: x / y, [(2, 3), (3,)]),
    ("power", lambda x, y: np.power(x, y), lambda x, y: x**y, [(2, 3), (2, 3)]),
    ("power_2", lambda x: np.power(x, 2), lambda x: gnp.square(x), [(2, 3)]),
    ("maximum", lambda x: np.maximum(x - 0.5, 0), lambda x: gnp.maximum(x - 0.5, 0), [(2, 3)]),
    ("minimum", lambda x, y: np.minimum(x, y), lambda x, y: gnp.minimum(x, y), [(2, 3), (3,)]),
    ("logaddexp", lambda x, y: np.logaddexp(x, y), lambda x, y: gnp.logaddexp(x, y), [(3,), (3,)]),
    # reductions
    ("sum", lambda x: np.sum(x), lambda x: gnp.sum(x), [(2, 3)]),
    ("sum_axis", lambda x: np.sum(x, axis=0), lambda x: gnp.sum(x, axis=0), [(2, 3)]),
    ("sum_keep", lambda x: np.sum(x, 1, keepdims=True), lambda x: x.sum(1, keepdims=True), [(2, 3)]),
    ("mean", lambda x: np.mean(x, axis=0), lambda x: gnp.mean(x, axis=0), [(2, 3)]),
    ("prod", lambda x: np.prod(x, axis=1), lambda x: gnp.prod(x, axis=1), [(2, 3)]),
    ("max", lambda x: np.max(x, axis=1), lambda x: gnp.max(x, axis=1), [(2, 3)]),
    ("amin", lambda x: np.amin(x), lambda x: gnp.min(x), [(2, 3)]),
    ("var", lambda x: np.var(x, 0, None, None, 1), lambda x: gnp.var(x, 0, ddof=1), [(2, 3)]),
    ("std", lambda x: np.std(x, axis=1), lambda x: gnp.std(x, axis=1), [(2, 3)]),
    ("cumsum", lambda x: np.cumsum(x, axis=1), lambda x: gnp.cumsum(x, axis=1), [(2, 3)]),
    ("method_of_np", lambda x: np.exp(x).sum(), lambda x: gnp.sum(gnp.exp(x)), [(2, 3)]),
    # contractions and linear algebra
    ("dot", lambda x, y: np.dot(x, y), lambda x, y: gnp.dot(x, y), [(2, 3), (3,)]),
    ("matmul", lambda x, y: np.matmul(x, y), lambda x, y: x @ y, [(2, 3), (3, 2)]),
    ("inner", lambda x, y: np.inner(x, y), lambda x, y: gnp.inner(x, y), [(2, 3), (3,)]),
    ("outer", lambda x, y: np.outer(x, y), lambda x, y: gnp.outer(x, y), [(2,), (3,)]),
    ("tensordot", lambda x, y: np.tensordot(x, y, 1), lambda x, y: gnp.tensordot(x, y, 1), [(2, 3), (3, 2)]),
    ("einsum", lambda x, y: np.einsum("ij,j->i", x, y), lambda x, y: gnp.einsum("ij,j->i", x, y), [(2, 3), (3,)]),
    ("solve", lambda a, b: np.linalg.solve(a + 3 * EYE2, b), lambda a, b: gnp.linalg.solve(a + 3 * EYE2, b), [(2, 2), (2,)]),
    ("inv", lambda a: np.linalg.inv(a + 3 * EYE2), lambda a: gnp.linalg.inv(a + 3 * EYE2), [(2, 2)]),
    ("det", lambda a: np.linalg.det(a + 3 * EYE2), lambda a: gnp.linalg.det(a + 3 * EYE2), [(2, 2)]),
    ("norm", lambda x: np.linalg.norm(x), lambda x: gnp.linalg.norm(x), [(2, 3)]),
    ("norm_axis", lambda x: np.linalg.norm(x, axis=1), lambda x: gnp.linalg.norm(x, axis=1), [(2, 3)]),
    # shapes
    ("concatenate", lambda x, y: np.concatenate([x, y]), lambda x, y: gnp.concatenate([x, y]), [(2, 3), (1, 3)]),
    ("stack", lambda x, y: np.stack([x, y], axis=1), lambda x, y: gnp.stack([x, y], axis=1), [(2, 3), (2, 3)]),
    ("reshape", lambda x: np.reshape(x, (3, 2)), lambda x: gnp.reshape(x, (3, 2)), [(2, 3)]),
    ("reshape_order", lambda x: np.reshape(x, -1, order="C"), lambda x: gnp.ravel(x), [(2, 3)]),
    ("ravel", lambda x: np.ravel(x), lambda x: gnp.ravel(x), [(2, 3)]),
    ("transpose", lambda x: np.transpose(x), lambda x: x.T, [(2, 3)]),
    ("swapaxes", lambda x: np.swapaxes(x, 0, 1), lambda x: gnp.swapaxes(x, 0, 1), [(2, 3)]),
    ("moveaxis", lambda x: np.moveaxis(x, 0, -1), lambda x: gnp.moveaxis(x, 0, -1), [(2, 3)]),
    ("expand_dims", lambda x: np.expand_dims(x, 1), lambda x: gnp.expand_dims(x, 1), [(2, 3)]),
    ("squeeze", lambda x: np.squeeze(x), lambda x: gnp.squeeze(x), [(2, 1, 3)]),
    ("broadcast_to", lambda x: np.broadcast_to(x, (2, 3)), lambda x: gnp.broadcast_to(x, (2, 3)), [(3,)]),
    ("flip", lambda x: np.flip(x, axis=1), lambda x: gnp.flip(x, axis=1), [(2, 3)]),
    # selection
    ("where", lambda x: np.where(x > 0.5, x, 0.0), lambda x: gnp.where(x > 0.5, x, 0.0), [(2, 3)]),
    ("clip", lambda x: np.clip(x, 0.3, 0.7), lambda x: gnp.clip(x, 0.3, 0.7), [(2, 3)]),
    ("copy", lambda x: np.copy(x) * 3.0, lambda x: x * 3.0, [(2, 3)]),
    # NumPy arrays (constants) mixed in
    ("constant_matrix", lambda x: np.dot(A33, x) + np.sum(A23 * x), lambda x: gnp.dot(A33, x) + gnp.sum(A23 * x), [(3,)]),
]  # fmt: skip


def inputs(shapes, seed=1):
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.2, 0.9, s) for s in shapes]


def specs(shapes):
    return [gs.Spec(s) for s in shapes]


@pytest.mark.parametrize("name, f_np, f_gnp, shapes", CASES, ids=[c[0] for c in CASES])
def test_numpy_function_on_a_tracer_records_the_gnp_graph(name, f_np, f_gnp, shapes):
    traced, reference = gs.trace(f_np, *specs(shapes)), gs.trace(f_gnp, *specs(shapes))
    assert traced.digest == reference.digest, f"{traced}\n---\n{reference}"
    args = inputs(shapes)
    value = ENG.evaluate(traced, *args)
    np.testing.assert_allclose(value, f_np(*args), rtol=1e-12, atol=1e-12)  # NumPy's own value


@pytest.mark.parametrize("name, f_np, f_gnp, shapes", CASES, ids=[c[0] for c in CASES])
def test_numpy_function_on_a_tracer_differentiates(name, f_np, f_gnp, shapes):
    args = inputs(shapes)
    weights = np.random.default_rng(2).normal(size=np.shape(f_np(*args)))

    def loss(*xs):
        return np.sum(f_np(*xs) * weights)  # np.sum of a Tracer: recorded too

    graph = gs.trace(loss, *specs(shapes))
    grads = ENG.grad(graph, *args, argnums=tuple(range(len(args))))
    numeric = gs.numeric_grad(graph, *args)
    numeric = numeric if isinstance(numeric, tuple) else (numeric,)
    for g, n in zip(grads, numeric):
        np.testing.assert_allclose(g, n, rtol=1e-6, atol=1e-7)


# ---- ufunc methods -------------------------------------------------------------------------

METHODS = [
    ("add.reduce", lambda x: np.add.reduce(x), lambda x: gnp.sum(x, axis=0)),
    ("add.reduce_none", lambda x: np.add.reduce(x, axis=None), lambda x: gnp.sum(x)),
    ("add.reduce_keep", lambda x: np.add.reduce(x, 1, keepdims=True), lambda x: gnp.sum(x, 1, keepdims=True)),
    ("add.reduce_initial", lambda x: np.add.reduce(x, initial=2.0), lambda x: gnp.sum(x, axis=0) + 2.0),
    ("add.reduce_where", lambda x: np.add.reduce(x, where=A23 > 0), lambda x: gnp.sum(gnp.where(A23 > 0, x, 0), axis=0)),
    ("multiply.reduce", lambda x: np.multiply.reduce(x, axis=1), lambda x: gnp.prod(x, axis=1)),
    ("maximum.reduce", lambda x: np.maximum.reduce(x), lambda x: gnp.max(x, axis=0)),
    ("minimum.reduce", lambda x: np.minimum.reduce(x, axis=None), lambda x: gnp.min(x)),
    ("add.accumulate", lambda x: np.add.accumulate(x), lambda x: gnp.cumsum(x, axis=0)),
    ("add.accumulate_axis", lambda x: np.add.accumulate(x, axis=1), lambda x: gnp.cumsum(x, axis=1)),
    ("multiply.outer", lambda x: np.multiply.outer(x[0], x[1]), lambda x: gnp.outer(x[0], x[1])),
    ("subtract.outer", lambda x: np.subtract.outer(x, x[0]), lambda x: (lambda b: gnp.reshape(x, (2, 3, 1)) - b)(x[0])),
]  # fmt: skip


@pytest.mark.parametrize("name, f_np, f_gnp", METHODS, ids=[m[0] for m in METHODS])
def test_ufunc_methods_map_to_gnp(name, f_np, f_gnp):
    traced, reference = gs.trace(f_np, gs.Spec((2, 3))), gs.trace(f_gnp, gs.Spec((2, 3)))
    assert traced.digest == reference.digest
    (x,) = inputs([(2, 3)])
    np.testing.assert_allclose(ENG.evaluate(traced, x), f_np(x), rtol=1e-12)
    weights = np.random.default_rng(3).normal(size=np.shape(f_np(x)))
    loss = gs.trace(lambda x: np.sum(f_np(x) * weights), gs.Spec((2, 3)))
    np.testing.assert_allclose(
        ENG.grad(loss, x), gs.numeric_grad(loss, x, richardson=True), rtol=1e-7, atol=1e-8
    )


# ---- NumPy arrays and scalars on the left of an operator ---------------------------------


LEFT = [
    ("add", lambda x: np.ones(3) + x, lambda x: gnp.add(np.ones(3), x)),
    ("subtract", lambda x: A23 - x, lambda x: gnp.subtract(A23, x)),
    ("multiply", lambda x: A23 * x, lambda x: gnp.multiply(A23, x)),
    ("divide", lambda x: A23 / x, lambda x: gnp.divide(A23, x)),
    ("power", lambda x: POSITIVE**x, lambda x: gnp.power(POSITIVE, x)),
    ("matmul", lambda x: A33 @ x.T, lambda x: gnp.matmul(A33, x.T)),
    (
        "compare",
        lambda x: gnp.where(A23 < x, x, 0.0),  # noqa: SIM300  (the array on the left)
        lambda x: gnp.where(gnp.less(A23, x), x, 0.0),
    ),
    ("numpy_scalar", lambda x: np.float64(2.0) * x, lambda x: gnp.multiply(np.float64(2.0), x)),
]


@pytest.mark.parametrize("name, f_np, f_gnp", LEFT, ids=[c[0] for c in LEFT])
def test_numpy_array_on_the_left_of_an_operator(name, f_np, f_gnp):
    traced = gs.trace(f_np, gs.Spec((2, 3)))
    assert traced.digest == gs.trace(f_gnp, gs.Spec((2, 3))).digest
    (x,) = inputs([(2, 3)])
    np.testing.assert_allclose(ENG.evaluate(traced, x), f_np(x), rtol=1e-12)


def test_ndarray_operator_gives_a_tracer_not_an_object_array():
    seen = []
    gs.trace(lambda x: seen.append(np.ones(3) + x) or x, np.ones(3))
    assert isinstance(seen[0], gs.Tracer) and seen[0].shape == (3,)


# ---- keywords --------------------------------------------------------------------------


def test_dtype_keyword_computes_in_that_dtype():
    g = gs.trace(lambda x: np.sum(x, dtype=np.float32), np.ones(3))
    assert g.digest == gs.trace(lambda x: gnp.sum(gnp.astype(x, "float32")), np.ones(3)).digest
    assert g.outputs[0].spec.dtype == "float32"
    g = gs.trace(lambda x: np.sin(x, dtype=np.float32), np.ones(3))
    assert g.outputs[0].spec.dtype == "float32"
    g = gs.trace(lambda x: np.mean(x, axis=0, dtype="float32"), np.ones((2, 3)))
    assert g.outputs[0].spec == gs.Spec((3,), "float32")


def test_layout_and_copy_keywords_are_accepted():
    g = gs.trace(lambda x: np.add(x, 1.0, casting="same_kind", order="K"), np.ones(3))
    assert g.digest == gs.trace(lambda x: x + 1.0, np.ones(3)).digest
    g = gs.trace(lambda x: np.sum(x, out=None, where=True, keepdims=False), np.ones(3))
    assert g.digest == gs.trace(lambda x: gnp.sum(x), np.ones(3)).digest
    g = gs.trace(lambda x: np.ones(3, like=x) * x, np.ones(3))
    assert g.digest == gs.trace(lambda x: gnp.ones(3) * x, np.ones(3)).digest


def test_introspection_functions_read_the_spec():
    def f(x):
        assert np.shape(x) == (2, 3) and np.ndim(x) == 2 and np.size(x) == 6
        assert np.size(x, 1) == 3
        assert not np.iscomplexobj(x) and np.isrealobj(x)
        assert np.result_type(x, 1.0) == np.float32
        assert np.copy(x) is x
        return x

    gs.trace(f, np.ones((2, 3), np.float32))


# ---- what is refused, by name ------------------------------------------------------------

REFUSED = [
    (lambda x: np.fft.fft(x), r"^gradserve does not support numpy\.fft\.fft$"),
    (lambda x: np.nextafter(x, 1.0), r"gradserve does not support numpy\.nextafter"),
    (lambda x: np.spacing(x), r"gradserve does not support numpy\.spacing"),
    (lambda x: np.add.at(x, [0], 1.0), r"numpy\.add\.at .*in place"),
    (lambda x: np.add.reduceat(x, [0, 1]), r"gradserve does not support numpy\.add\.reduceat"),
    (lambda x: np.maximum.accumulate(x), r"gradserve does not support numpy\.maximum\.accumulate"),
    (lambda x: np.subtract.reduce(x), r"gradserve does not support numpy\.subtract\.reduce"),
    (lambda x: np.bitwise_and(x > 0, 3), r"gradserve does not support numpy\.bitwise_and"),
    (lambda x: np.sin(x, out=np.empty(3)), r"numpy\.sin: out= is not supported.*immutable"),
    (lambda x: np.sum(x, out=np.empty(())), r"numpy\.sum: out= is not supported"),
    (lambda x: np.add.reduce(x, out=np.empty(())), r"numpy\.add\.reduce: out="),
    (lambda x: np.sin(x, where=x > 0), r"numpy\.sin: where= is not supported.*np\.where"),
    (lambda x: np.sum(x, where=x > 0), r"numpy\.sum does not take where=a traced value"),
    (lambda x: np.add(x, 1, casting="no"), r"numpy\.add with casting='no'"),
    (lambda x: np.reshape(x, (3, 1), order="F"), r"numpy\.reshape does not take order='F'"),
    (lambda x: np.concatenate([x, x], dtype=np.float32), r"numpy\.concatenate does not take dtype"),
    (lambda x: np.less(x, 1.0, dtype=np.float64), r"numpy\.less with dtype"),
    (lambda x: np.where(x > 0), r"gradserve's numpy\.where takes \(condition, x, y\)"),
]


@pytest.mark.parametrize("fn, match", REFUSED)
def test_unsupported_numpy_is_a_type_error_naming_it(fn, match):
    with pytest.raises(TypeError, match=match):
        gs.trace(fn, np.ones(3))


def test_maximum_reduce_with_where_needs_initial():
    with pytest.raises(ValueError, match="identity"):
        gs.trace(lambda x: np.maximum.reduce(x, where=np.array([True, False, True])), np.ones(3))
    g = gs.trace(
        lambda x: np.maximum.reduce(x, where=np.array([True, False, True]), initial=-np.inf),
        np.ones(3),
    )
    assert ENG.evaluate(g, np.array([1.0, 5.0, 2.0])) == 2.0


@pytest.mark.parametrize(
    "fn", [lambda x: np.asarray(x), lambda x: np.array([x, x]), lambda x: float(x)]
)
def test_conversion_to_a_concrete_value_names_the_alternatives(fn):
    with pytest.raises(gs.TracerBoolError) as info:
        gs.trace(fn, 1.0)
    assert isinstance(info.value, TypeError)
    assert "gs.cond" in str(info.value)


def test_asarray_message_points_at_numpy_functions_and_the_engine():
    with pytest.raises(gs.TracerBoolError, match=r"np\.stack.*gs\.Engine"):
        gs.trace(lambda x: np.asarray(x), 1.0)


def test_functions_added_to_gnp_dispatch_by_name(monkeypatch):
    from gradserve.engine import numpy as engine_numpy

    monkeypatch.setattr(engine_numpy, "__all__", [*engine_numpy.__all__, "sinc"])
    monkeypatch.setattr(engine_numpy, "sinc", lambda x: gnp.sin(x) / x, raising=False)
    g = gs.trace(lambda x: np.sinc(x), np.ones(3))
    assert g.digest == gs.trace(lambda x: gnp.sin(x) / x, np.ones(3)).digest


def test_numpy_functions_inside_control_flow():
    def f(x):
        return gs.fori_loop(0, 3, lambda i, c: np.tanh(np.dot(A33, c)) + np.ones(3), x)

    g = gs.trace(f, np.ones(3))
    x = np.linspace(0.1, 0.3, 3)
    expected = x
    for _ in range(3):
        expected = np.tanh(A33 @ expected) + 1.0
    np.testing.assert_allclose(ENG.evaluate(g, x), expected, rtol=1e-12)


# ---- a whole NumPy program ---------------------------------------------------------------


def mlp_loss(W1, b1, W2, b2, X, Y):
    """A two-layer classifier's regularised cross-entropy, written with NumPy only."""
    h = np.maximum(X @ W1 + b1, 0.0)
    h = np.concatenate([h, np.tanh(h)], axis=1)
    logits = np.dot(h, W2) + b2
    m = np.max(logits, axis=1, keepdims=True)
    logp = logits - m - np.log(np.sum(np.exp(logits - m), axis=1, keepdims=True))
    penalty = np.linalg.norm(W1) ** 2 + np.sum(np.square(W2))
    return -np.mean(np.sum(Y * logp, axis=1)) + 1e-3 * penalty


def test_a_numpy_mlp_loss_traces_and_differentiates():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(8, 4))
    Y = np.eye(3)[rng.integers(0, 3, 8)]
    params = [
        rng.normal(size=(4, 5)),
        rng.normal(size=5) * 0.1,
        rng.normal(size=(10, 3)),
        np.zeros(3),
    ]
    graph = gs.trace(mlp_loss, *params, X, Y)
    assert graph.input_names == ("W1", "b1", "W2", "b2", "X", "Y")
    value, grads = ENG.value_and_grad(graph, *params, X, Y, argnums=(0, 1, 2, 3))
    np.testing.assert_allclose(value, mlp_loss(*params, X, Y), rtol=1e-12)  # plain NumPy
    for i, g in enumerate(grads):
        one = gs.trace(lambda p, i=i: mlp_loss(*params[:i], p, *params[i + 1 :], X, Y), params[i])
        np.testing.assert_allclose(g, gs.numeric_grad(one, params[i]), rtol=1e-5, atol=1e-7)


def test_clip_takes_numpy_2s_min_and_max():
    x = np.array([-1.0, 0.2, 3.0])
    by_name = gs.trace(lambda v: np.clip(v, min=-0.5, max=0.5), x)
    assert by_name.digest == gs.trace(lambda v: gnp.clip(v, -0.5, 0.5), x).digest
    np.testing.assert_array_equal(gs.Engine().evaluate(by_name, x), np.clip(x, -0.5, 0.5))
    with pytest.raises(ValueError, match="not both"):
        gs.trace(lambda v: gnp.clip(v, 0.0, min=-0.5), x)
