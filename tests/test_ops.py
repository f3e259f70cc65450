"""Every op of the engine: values against NumPy, JVP and VJP against central finite differences
of a NumPy reference (computed here, independently of the engine), at random points and random
shapes drawn by hypothesis. Points are kept away from kinks and singularities.

Also: the dot-product identity <v, J u> = <J^T v, u>, broadcasting, float32 staying float32,
integer inputs being non-differentiable, and zero derivatives of piecewise-constant ops."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gradserve as gs
import gradserve.numpy as gnp

EXAMPLES = 15
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)

ENG = gs.Engine()


# ---- random points away from kinks -----------------------------------------------------------


def sample(rng, shape, kind="any"):
    """Random float64 values of `shape`. kinds:
    any: (-2, 2); pos: (0.5, 3); unit: (-0.8, 0.8); away0: |x| in (0.3, 2), random sign;
    lowfrac / highfrac: an integer in [-2, 2] plus a fraction in (0.1, 0.4) / (0.6, 0.9), so
    that a 'lowfrac' and a 'highfrac' value never come closer than 0.2 (maximum, comparisons),
    and neither is near an integer or a half (floor, ceil, round);
    tenths: a multiple of 0.1 in [-2, 2) plus a fraction in (0.01, 0.04), away from the jumps
    of round(x, 1) at odd multiples of 0.05;
    distinct: all values different by at least 0.2 (max/min/argmax reductions)."""
    shape = tuple(shape)
    if kind == "any":
        return rng.uniform(-2, 2, shape)
    if kind == "pos":
        return rng.uniform(0.5, 3, shape)
    if kind == "unit":
        return rng.uniform(-0.8, 0.8, shape)
    if kind == "away0":
        return rng.uniform(0.3, 2, shape) * rng.choice([-1.0, 1.0], shape)
    if kind == "lowfrac":
        return rng.integers(-2, 3, shape) + rng.uniform(0.1, 0.4, shape)
    if kind == "highfrac":
        return rng.integers(-2, 3, shape) + rng.uniform(0.6, 0.9, shape)
    if kind == "tenths":
        return rng.integers(-20, 20, shape) / 10 + rng.uniform(0.01, 0.04, shape)
    if kind == "distinct":
        n = int(np.prod(shape, dtype=np.int64))
        values = (rng.permutation(n) - n / 2) * 0.3 + rng.uniform(-0.05, 0.05, n)
        return values.reshape(shape)
    raise AssertionError(kind)


def numeric_jacobian(np_fn, args, i, h=1e-5):
    """d np_fn / d args[i] by central differences: shape out.shape + args[i].shape."""
    x = np.asarray(args[i], dtype=np.float64)
    out = np.asarray(np_fn(*args), dtype=np.float64)
    jac = np.zeros(out.shape + x.shape)
    for j in np.ndindex(*x.shape):
        step = h * max(1.0, abs(x[j]))
        plus, minus = x.copy(), x.copy()
        plus[j] += step
        minus[j] -= step
        a = list(args)
        a[i] = plus
        f_plus = np.asarray(np_fn(*a), dtype=np.float64)
        a[i] = minus
        f_minus = np.asarray(np_fn(*a), dtype=np.float64)
        jac[(Ellipsis,) + j] = (f_plus - f_minus) / (2 * step)
    return jac


def contract_out(jac, out_shape, v):
    """v^T J for J of shape out_shape + in_shape."""
    n_out = len(out_shape)
    return np.tensordot(v, jac, axes=n_out) if n_out else v * jac


def apply_in(jac, out_shape, u):
    """J u for J of shape out_shape + in_shape."""
    n_in = jac.ndim - len(out_shape)
    return np.tensordot(jac, u, axes=n_in) if n_in else jac * u


def check_op(fn, np_fn, args, *, seed=0, rtol=1e-6, atol=1e-7, jacobians=True):
    """Trace `fn` on float64 `args`; the value must match `np_fn`; JVP and VJP must match the
    finite-difference Jacobian of `np_fn`; the dot-product identity must hold; the engine's
    forward- and reverse-mode Jacobians must match it too."""
    args = [np.asarray(a, dtype=np.float64) for a in args]
    graph = gs.trace(fn, *args)
    want = np.asarray(np_fn(*args))
    got = ENG.evaluate(graph, *args)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)

    rng = np.random.default_rng(seed)
    jacs = [numeric_jacobian(np_fn, args, i) for i in range(len(args))]
    tangents = [rng.normal(size=a.shape) for a in args]
    cotangent = rng.normal(size=want.shape)

    out, out_tangent = ENG.jvp(graph, args, tangents)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    expect = sum(apply_in(j, want.shape, u) for j, u in zip(jacs, tangents))
    assert np.shape(out_tangent) == want.shape
    np.testing.assert_allclose(out_tangent, expect, rtol=rtol, atol=atol)

    out, in_cts = ENG.vjp(graph, args, cotangent)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    assert len(in_cts) == len(args)
    for ct, jac, a in zip(in_cts, jacs, args):
        assert ct.shape == a.shape
        assert ct.dtype == np.float64
        np.testing.assert_allclose(
            ct, contract_out(jac, want.shape, cotangent), rtol=rtol, atol=atol
        )

    # <v, J u> = <J^T v, u>, both sides from the engine
    lhs = float(np.sum(cotangent * out_tangent))
    rhs = float(sum(np.sum(c * u) for c, u in zip(in_cts, tangents)))
    assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-9)

    # whole Jacobians, both modes: every op's batch rule (a batch of tangents or cotangents)
    if jacobians:
        argnums = tuple(range(len(args)))
        for mode in ("fwd", "rev"):
            blocks = ENG.jacobian(graph, *args, argnums=argnums, mode=mode)
            for block, jac in zip(blocks, jacs):
                assert block.shape == jac.shape
                np.testing.assert_allclose(block, jac, rtol=rtol, atol=atol)


shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)
nonscalar_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4)
seeds = st.integers(0, 2**32 - 1)


# ---- unary elementwise --------------------------------------------------------------------

UNARY = {
    "negative": (gnp.negative, np.negative, "any"),
    "neg_operator": (lambda x: -x, np.negative, "any"),
    "square": (gnp.square, np.square, "any"),
    "sqrt": (gnp.sqrt, np.sqrt, "pos"),
    "exp": (gnp.exp, np.exp, "any"),
    "expm1": (gnp.expm1, np.expm1, "any"),
    "log": (gnp.log, np.log, "pos"),
    "log1p": (gnp.log1p, np.log1p, "pos"),
    "sin": (gnp.sin, np.sin, "any"),
    "cos": (gnp.cos, np.cos, "any"),
    "tan": (gnp.tan, np.tan, "unit"),
    "arcsin": (gnp.arcsin, np.arcsin, "unit"),
    "arccos": (gnp.arccos, np.arccos, "unit"),
    "arctan": (gnp.arctan, np.arctan, "any"),
    "sinh": (gnp.sinh, np.sinh, "any"),
    "cosh": (gnp.cosh, np.cosh, "any"),
    "tanh": (gnp.tanh, np.tanh, "any"),
    "abs": (gnp.abs, np.abs, "away0"),
    "absolute": (gnp.absolute, np.absolute, "away0"),
    "abs_builtin": (lambda x: abs(x), np.abs, "away0"),
    "sign": (gnp.sign, np.sign, "away0"),
    "floor": (gnp.floor, np.floor, "lowfrac"),
    "ceil": (gnp.ceil, np.ceil, "highfrac"),
    "round": (gnp.round, np.round, "lowfrac"),
    "round_high": (gnp.round, np.round, "highfrac"),
    "round_decimals": (lambda x: gnp.round(x, 1), lambda x: np.round(x, 1), "tenths"),
    "clip": (lambda x: gnp.clip(x, -0.5, 0.5), lambda x: np.clip(x, -0.5, 0.5), "lowfrac"),
    "clip_low_only": (lambda x: gnp.clip(x, 0.5, None), lambda x: np.clip(x, 0.5, None), "lowfrac"),
    "pow_2": (lambda x: x**2, lambda x: x**2, "any"),
    "pow_3": (lambda x: x**3, lambda x: x**3, "any"),
    "pow_half": (lambda x: x**0.5, lambda x: x**0.5, "pos"),
    "pow_neg": (lambda x: gnp.power(x, -1.5), lambda x: np.power(x, -1.5), "pos"),
    "rpow": (lambda x: 2.0**x, lambda x: 2.0**x, "any"),
    "radd": (lambda x: 3.0 + x, lambda x: 3.0 + x, "any"),
    "rsub": (lambda x: 3.0 - x, lambda x: 3.0 - x, "any"),
    "rmul": (lambda x: 3.0 * x, lambda x: 3.0 * x, "any"),
    "rdiv": (lambda x: 3.0 / x, lambda x: 3.0 / x, "away0"),
    "div_scalar": (lambda x: x / 4.0, lambda x: x / 4.0, "any"),
    "pos_operator": (lambda x: +x * 1.0, lambda x: x * 1.0, "any"),
    "sigmoid": (gs.nn.sigmoid, lambda x: 1 / (1 + np.exp(-x)), "any"),
    "relu": (gs.nn.relu, lambda x: np.maximum(x, 0), "away0"),
    "softplus": (gs.nn.softplus, lambda x: np.log1p(np.exp(x)), "any"),
    "chain": (
        lambda x: gnp.sin(gnp.exp(x) * x) / (1 + x * x),
        lambda x: np.sin(np.exp(x) * x) / (1 + x * x),
        "any",
    ),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@SETTINGS
@given(shape=shapes, seed=seeds)
def test_unary(name, shape, seed):
    fn, np_fn, kind = UNARY[name]
    x = sample(np.random.default_rng(seed), shape, kind)
    check_op(fn, np_fn, [x], seed=seed)


@pytest.mark.parametrize("fn", [gnp.floor, gnp.ceil, gnp.round, gnp.sign])
def test_piecewise_constant_ops_have_zero_derivative(fn):
    x = sample(np.random.default_rng(0), (5,), "lowfrac")
    graph = gs.trace(lambda x: gnp.sum(fn(x) * x), x)
    # d/dx sum(fn(x) * x) = fn(x) when fn has zero derivative
    np.testing.assert_array_equal(ENG.grad(graph, x), np.asarray(fn(x)))


# ---- binary elementwise, with broadcasting ---------------------------------------------------

BINARY = {
    "add": (gnp.add, np.add, "any", "any"),
    "add_op": (lambda x, y: x + y, np.add, "any", "any"),
    "subtract": (gnp.subtract, np.subtract, "any", "any"),
    "sub_op": (lambda x, y: x - y, np.subtract, "any", "any"),
    "multiply": (gnp.multiply, np.multiply, "any", "any"),
    "mul_op": (lambda x, y: x * y, np.multiply, "any", "any"),
    "divide": (gnp.divide, np.divide, "any", "away0"),
    "div_op": (lambda x, y: x / y, np.divide, "any", "away0"),
    "power": (gnp.power, np.power, "pos", "any"),
    "pow_op": (lambda x, y: x**y, np.power, "pos", "any"),
    "maximum": (gnp.maximum, np.maximum, "lowfrac", "highfrac"),
    "maximum_other": (gnp.maximum, np.maximum, "highfrac", "lowfrac"),
    "minimum": (gnp.minimum, np.minimum, "lowfrac", "highfrac"),
    "logaddexp": (gnp.logaddexp, np.logaddexp, "any", "any"),
    "where_traced_cond": (
        lambda x, y: gnp.where(x > 0, x * y, y - x),
        lambda x, y: np.where(x > 0, x * y, y - x),
        "away0",
        "any",
    ),
    "where_compare_xy": (
        lambda x, y: gnp.where(x < y, gnp.sin(x), gnp.cos(y)),
        lambda x, y: np.where(x < y, np.sin(x), np.cos(y)),
        "lowfrac",
        "highfrac",
    ),
    "hypot_like": (
        lambda x, y: gnp.sqrt(x * x + y * y + 1.0),
        lambda x, y: np.sqrt(x * x + y * y + 1.0),
        "any",
        "any",
    ),
}


@pytest.mark.parametrize("name", sorted(BINARY))
@SETTINGS
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4), seed=seeds)
def test_binary_broadcasting(name, shapes, seed):
    fn, np_fn, kx, ky = BINARY[name]
    rng = np.random.default_rng(seed)
    sx, sy = shapes.input_shapes
    check_op(fn, np_fn, [sample(rng, sx, kx), sample(rng, sy, ky)], seed=seed)


@pytest.mark.parametrize(
    "sx, sy", [((3, 1), (1, 4)), ((), (2, 3)), ((2, 3), ()), ((4,), (3, 4)), ((2, 1, 3), (4, 1))]
)
@pytest.mark.parametrize("name", ["add", "subtract", "multiply", "divide", "maximum"])
def test_binary_fixed_broadcasts(name, sx, sy):
    fn, np_fn, kx, ky = BINARY[name]
    rng = np.random.default_rng(1)
    check_op(fn, np_fn, [sample(rng, sx, kx), sample(rng, sy, ky)])


def test_where_with_constant_condition():
    rng = np.random.default_rng(3)
    cond = rng.random((3, 4)) > 0.5
    check_op(
        lambda x, y: gnp.where(cond, x, y),
        lambda x, y: np.where(cond, x, y),
        [rng.normal(size=(3, 1)), rng.normal(size=(4,))],
    )
    check_op(
        lambda x: gnp.where(cond, x, 0.0),
        lambda x: np.where(cond, x, 0.0),
        [rng.normal(size=(3, 4))],
    )


def test_clip_both_sides_gradient_closed_form():
    x = np.array([-2.3, -0.2, 0.1, 0.7, 3.1])
    graph = gs.trace(lambda x: gnp.sum(gnp.clip(x, -1.0, 1.0)), x)
    np.testing.assert_array_equal(ENG.grad(graph, x), [0, 1, 1, 1, 0])


# ---- comparisons and logical ops (values; not differentiable) ------------------------------

COMPARE = {
    "less": (gnp.less, np.less),
    "less_equal": (gnp.less_equal, np.less_equal),
    "greater": (gnp.greater, np.greater),
    "greater_equal": (gnp.greater_equal, np.greater_equal),
    "equal": (gnp.equal, np.equal),
    "not_equal": (gnp.not_equal, np.not_equal),
    "lt_op": (lambda x, y: x < y, np.less),
    "le_op": (lambda x, y: x <= y, np.less_equal),
    "gt_op": (lambda x, y: x > y, np.greater),
    "ge_op": (lambda x, y: x >= y, np.greater_equal),
    "eq_op": (lambda x, y: x == y, np.equal),
    "ne_op": (lambda x, y: x != y, np.not_equal),
    "logical_and": (
        lambda x, y: gnp.logical_and(x > 0, y > 0),
        lambda x, y: np.logical_and(x > 0, y > 0),
    ),
    "logical_or": (
        lambda x, y: gnp.logical_or(x > 0, y > 0),
        lambda x, y: np.logical_or(x > 0, y > 0),
    ),
    "logical_xor": (
        lambda x, y: gnp.logical_xor(x > 0, y > 0),
        lambda x, y: np.logical_xor(x > 0, y > 0),
    ),
    "and_op": (lambda x, y: (x > 0) & (y > 0), lambda x, y: (x > 0) & (y > 0)),
    "or_op": (lambda x, y: (x > 0) | (y > 0), lambda x, y: (x > 0) | (y > 0)),
    "not_op": (lambda x, y: ~(x > y), lambda x, y: ~(x > y)),
    "logical_not": (lambda x, y: gnp.logical_not(x > y), lambda x, y: np.logical_not(x > y)),
}


@pytest.mark.parametrize("name", sorted(COMPARE))
@SETTINGS
@given(shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, max_side=4), seed=seeds)
def test_comparisons_and_logical_values(name, shapes, seed):
    fn, np_fn = COMPARE[name]
    rng = np.random.default_rng(seed)
    sx, sy = shapes.input_shapes
    # integers: ties are frequent, so == and != get both answers
    x = rng.integers(-2, 3, sx).astype(np.float64)
    y = rng.integers(-2, 3, sy).astype(np.float64)
    graph = gs.trace(fn, x, y)
    got = ENG.evaluate(graph, x, y)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, np_fn(x, y))
    # a boolean output has no tangent and no cotangent to send back
    cts = ENG.vjp(graph, (x, y), np.zeros(got.shape, bool))[1]
    for ct, a in zip(cts, (x, y)):
        np.testing.assert_array_equal(ct, np.zeros_like(a))


def test_gradient_through_comparison_is_zero():
    x = np.array([0.5, -1.5, 2.0])
    graph = gs.trace(lambda x: gnp.sum(gnp.astype(x > 0, "float64") * x), x)
    np.testing.assert_array_equal(ENG.grad(graph, x), [1.0, 0.0, 1.0])


# ---- reductions with axis and keepdims -------------------------------------------------------


@st.composite
def shape_and_axis(draw, min_dims=1):
    shape = draw(hnp.array_shapes(min_dims=min_dims, max_dims=3, min_side=1, max_side=4))
    choice = draw(st.sampled_from(["none", "int", "tuple"]))
    if choice == "none":
        axis = None
    elif choice == "int":
        axis = draw(st.integers(-len(shape), len(shape) - 1))
    else:
        axis = tuple(draw(st.sets(st.integers(0, len(shape) - 1), min_size=1)))
        axis = tuple(a - len(shape) if draw(st.booleans()) else a for a in axis)
    return shape, axis, draw(st.booleans())


def _reduced_count(shape, axis):
    if axis is None:
        return int(np.prod(shape))
    axes = (axis,) if isinstance(axis, int) else axis
    return int(np.prod([shape[a] for a in axes]))


REDUCTIONS = {
    "sum": (gnp.sum, np.sum, "any"),
    "mean": (gnp.mean, np.mean, "any"),
    "max": (gnp.max, np.max, "distinct"),
    "amax": (gnp.amax, np.amax, "distinct"),
    "min": (gnp.min, np.min, "distinct"),
    "prod": (gnp.prod, np.prod, "away0"),
    "var": (gnp.var, np.var, "any"),
    "std": (gnp.std, np.std, "any"),
    "logsumexp": (
        gs.nn.logsumexp,
        lambda x, axis=None, keepdims=False: np.log(
            np.sum(np.exp(x), axis=axis, keepdims=keepdims)
        ),
        "any",
    ),
    "method_sum": (
        lambda x, axis=None, keepdims=False: x.sum(axis=axis, keepdims=keepdims),
        np.sum,
        "any",
    ),
    "method_mean": (
        lambda x, axis=None, keepdims=False: x.mean(axis=axis, keepdims=keepdims),
        np.mean,
        "any",
    ),
    "method_max": (
        lambda x, axis=None, keepdims=False: x.max(axis=axis, keepdims=keepdims),
        np.max,
        "distinct",
    ),
    "method_prod": (
        lambda x, axis=None, keepdims=False: x.prod(axis=axis, keepdims=keepdims),
        np.prod,
        "away0",
    ),
}


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
@SETTINGS
@given(case=shape_and_axis(), seed=seeds)
def test_reductions(name, case, seed):
    shape, axis, keepdims = case
    fn, np_fn, kind = REDUCTIONS[name]
    if name == "std":
        assume(_reduced_count(shape, axis) >= 2)  # std is not differentiable at 0
    x = sample(np.random.default_rng(seed), shape, kind)
    check_op(
        lambda x: fn(x, axis=axis, keepdims=keepdims),
        lambda x: np_fn(x, axis=axis, keepdims=keepdims),
        [x],
        seed=seed,
    )


@SETTINGS
@given(case=shape_and_axis(), ddof=st.integers(0, 1), seed=seeds)
def test_var_std_ddof(case, ddof, seed):
    shape, axis, keepdims = case
    assume(_reduced_count(shape, axis) >= 2)
    x = sample(np.random.default_rng(seed), shape, "any")
    check_op(
        lambda x: gnp.var(x, axis=axis, keepdims=keepdims, ddof=ddof),
        lambda x: np.var(x, axis=axis, keepdims=keepdims, ddof=ddof),
        [x],
        seed=seed,
    )
    check_op(
        lambda x: gnp.std(x, axis=axis, keepdims=keepdims, ddof=ddof),
        lambda x: np.std(x, axis=axis, keepdims=keepdims, ddof=ddof),
        [x],
        seed=seed,
    )


@SETTINGS
@given(shape=nonscalar_shapes, data=st.data(), seed=seeds)
def test_cumsum(shape, data, seed):
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    x = sample(np.random.default_rng(seed), shape, "any")
    check_op(lambda x: gnp.cumsum(x, axis=axis), lambda x: np.cumsum(x, axis=axis), [x], seed=seed)
    check_op(lambda x: x.cumsum(axis), lambda x: np.cumsum(x, axis), [x], seed=seed)


@pytest.mark.parametrize("name", ["argmax", "argmin"])
@SETTINGS
@given(shape=nonscalar_shapes, data=st.data(), seed=seeds)
def test_argmax_argmin(name, shape, data, seed):
    axis = data.draw(st.one_of(st.none(), st.integers(-len(shape), len(shape) - 1)))
    keepdims = data.draw(st.booleans())
    x = sample(np.random.default_rng(seed), shape, "distinct")
    graph = gs.trace(lambda x: getattr(gnp, name)(x, axis=axis, keepdims=keepdims), x)
    got = ENG.evaluate(graph, x)
    assert got.dtype.kind == "i"
    np.testing.assert_array_equal(got, getattr(np, name)(x, axis=axis, keepdims=keepdims))
    method = gs.trace(lambda x: getattr(x, name)(axis=axis), x)
    np.testing.assert_array_equal(ENG.evaluate(method, x), getattr(np, name)(x, axis=axis))


def test_argmax_is_not_differentiable_but_can_pick():
    x = np.array([0.3, 2.0, -1.0])
    # the integer output may index, and the gradient flows through the picked element only
    graph = gs.trace(lambda x: x[gnp.argmax(x)] * 3.0, x)
    np.testing.assert_array_equal(ENG.grad(graph, x), [0.0, 3.0, 0.0])
    ints = gs.trace(lambda x: gnp.argmax(x), x)
    with pytest.raises(TypeError):
        ENG.grad(ints, x)


# ---- contractions ----------------------------------------------------------------------------

CONTRACTIONS = [
    ("matmul_mm", lambda a, b: a @ b, np.matmul, (2, 3), (3, 4)),
    ("matmul_fn", gnp.matmul, np.matmul, (2, 3), (3, 4)),
    ("matmul_mv", lambda a, b: a @ b, np.matmul, (2, 3), (3,)),
    ("matmul_vm", lambda a, b: a @ b, np.matmul, (3,), (3, 4)),
    ("matmul_vv", lambda a, b: a @ b, np.matmul, (3,), (3,)),
    ("matmul_batched", lambda a, b: a @ b, np.matmul, (2, 2, 3), (2, 3, 4)),
    ("matmul_batch_broadcast", lambda a, b: a @ b, np.matmul, (1, 2, 3), (3, 3, 2)),
    ("matmul_batch_vs_matrix", lambda a, b: a @ b, np.matmul, (2, 2, 3), (3, 4)),
    ("matmul_4d_broadcast", lambda a, b: a @ b, np.matmul, (2, 1, 2, 3), (3, 3, 2)),
    ("dot_vv", gnp.dot, np.dot, (4,), (4,)),
    ("dot_mm", gnp.dot, np.dot, (2, 3), (3, 4)),
    ("dot_mv", gnp.dot, np.dot, (2, 3), (3,)),
    ("dot_3d_2d", gnp.dot, np.dot, (2, 2, 3), (3, 2)),
    ("dot_3d_3d", gnp.dot, np.dot, (2, 2, 3), (2, 3, 2)),
    ("dot_scalar", gnp.dot, np.dot, (), (3,)),
    ("dot_vm", gnp.dot, np.dot, (3,), (3, 2)),
    ("dot_v_3d", gnp.dot, np.dot, (3,), (2, 3, 2)),
    ("matmul_v_batched", lambda a, b: a @ b, np.matmul, (3,), (2, 3, 4)),
    ("matmul_batched_v", lambda a, b: a @ b, np.matmul, (2, 4, 3), (3,)),
    (
        "einsum_ellipsis_broadcast",
        lambda a, b: gnp.einsum("...i,...i->...", a, b),
        lambda a, b: np.einsum("...i,...i->...", a, b),
        (2, 1, 3),
        (4, 3),
    ),
    ("dot_method", lambda a, b: a.dot(b), np.dot, (2, 3), (3,)),
    ("outer", gnp.outer, np.outer, (3,), (4,)),
    ("outer_2d", gnp.outer, np.outer, (2, 2), (3,)),
    (
        "einsum_mm",
        lambda a, b: gnp.einsum("ij,jk->ik", a, b),
        lambda a, b: np.einsum("ij,jk->ik", a, b),
        (2, 3),
        (3, 4),
    ),
    (
        "einsum_implicit",
        lambda a, b: gnp.einsum("ij,jk", a, b),
        lambda a, b: np.einsum("ij,jk", a, b),
        (2, 3),
        (3, 4),
    ),
    (
        "einsum_inner",
        lambda a, b: gnp.einsum("i,i->", a, b),
        lambda a, b: np.einsum("i,i->", a, b),
        (4,),
        (4,),
    ),
    (
        "einsum_batched",
        lambda a, b: gnp.einsum("bij,bjk->bik", a, b),
        lambda a, b: np.einsum("bij,bjk->bik", a, b),
        (2, 2, 3),
        (2, 3, 2),
    ),
    (
        "einsum_ellipsis",
        lambda a, b: gnp.einsum("...ij,...jk->...ik", a, b),
        lambda a, b: np.einsum("...ij,...jk->...ik", a, b),
        (2, 2, 3),
        (3, 2),
    ),
    (
        "einsum_sum_free_axis",
        lambda a, b: gnp.einsum("ij,j->", a, b),
        lambda a, b: np.einsum("ij,j->", a, b),
        (2, 3),
        (3,),
    ),
    (
        "einsum_outer_transposed",
        lambda a, b: gnp.einsum("i,j->ji", a, b),
        lambda a, b: np.einsum("i,j->ji", a, b),
        (2,),
        (3,),
    ),
    (
        "einsum_axis_only_in_a",
        lambda a, b: gnp.einsum("ijk,jl->il", a, b),
        lambda a, b: np.einsum("ijk,jl->il", a, b),
        (2, 3, 2),
        (3, 2),
    ),
]


@pytest.mark.parametrize("name, fn, np_fn, sa, sb", CONTRACTIONS, ids=[c[0] for c in CONTRACTIONS])
@settings(max_examples=5, deadline=None)
@given(seed=seeds)
def test_contractions(name, fn, np_fn, sa, sb, seed):
    rng = np.random.default_rng(seed)
    check_op(fn, np_fn, [sample(rng, sa), sample(rng, sb)], seed=seed)


def test_einsum_three_operands():
    rng = np.random.default_rng(5)
    args = [rng.normal(size=(2, 3)), rng.normal(size=(3, 4)), rng.normal(size=(4, 2))]
    check_op(
        lambda a, b, c: gnp.einsum("ij,jk,kl->il", a, b, c),
        lambda a, b, c: np.einsum("ij,jk,kl->il", a, b, c),
        args,
    )


def test_einsum_single_operand_transpose_and_sum():
    x = np.random.default_rng(6).normal(size=(2, 3, 4))
    check_op(lambda x: gnp.einsum("ijk->kj", x), lambda x: np.einsum("ijk->kj", x), [x])


DIAGONALS = ["ii->i", "ii->", "ii", "iij->ij"]


@pytest.mark.parametrize("subscripts", DIAGONALS)
def test_einsum_diagonal_and_trace_forward(subscripts):
    x = np.random.default_rng(7).normal(size=(3, 3, 2)[: len(subscripts.split("->")[0])])
    graph = gs.trace(lambda x: gnp.einsum(subscripts, x), x)
    np.testing.assert_allclose(ENG.evaluate(graph, x), np.einsum(subscripts, x), rtol=1e-12)
    u = np.random.default_rng(8).normal(size=x.shape)
    np.testing.assert_allclose(ENG.jvp(graph, (x,), (u,))[1], np.einsum(subscripts, u), rtol=1e-12)


@pytest.mark.parametrize("subscripts", DIAGONALS)
def test_einsum_diagonal_and_trace_reverse(subscripts):
    x = np.random.default_rng(7).normal(size=(3, 3, 2)[: len(subscripts.split("->")[0])])
    check_op(lambda x: gnp.einsum(subscripts, x), lambda x: np.einsum(subscripts, x), [x])


# ---- shape ops ---------------------------------------------------------------------------------

SHAPE_OPS = [
    ("transpose", gnp.transpose, np.transpose, (2, 3, 4)),
    (
        "transpose_axes",
        lambda x: gnp.transpose(x, (1, 2, 0)),
        lambda x: np.transpose(x, (1, 2, 0)),
        (2, 3, 4),
    ),
    (
        "transpose_neg_axes",
        lambda x: gnp.transpose(x, (-1, 0, 1)),
        lambda x: np.transpose(x, (-1, 0, 1)),
        (2, 3, 4),
    ),
    ("T", lambda x: x.T, lambda x: x.T, (2, 3)),
    ("T_3d", lambda x: x.T, lambda x: x.T, (2, 3, 4)),
    ("method_transpose", lambda x: x.transpose(1, 0, 2), lambda x: x.transpose(1, 0, 2), (2, 3, 4)),
    ("swapaxes", lambda x: gnp.swapaxes(x, 0, -1), lambda x: np.swapaxes(x, 0, -1), (2, 3, 4)),
    ("reshape", lambda x: gnp.reshape(x, (4, 6)), lambda x: np.reshape(x, (4, 6)), (2, 3, 4)),
    (
        "reshape_minus1",
        lambda x: gnp.reshape(x, (-1, 2)),
        lambda x: np.reshape(x, (-1, 2)),
        (2, 3, 4),
    ),
    ("method_reshape", lambda x: x.reshape(3, 8), lambda x: x.reshape(3, 8), (2, 3, 4)),
    ("method_reshape_tuple", lambda x: x.reshape((6, 4)), lambda x: x.reshape((6, 4)), (2, 3, 4)),
    ("ravel", gnp.ravel, np.ravel, (2, 3, 4)),
    ("method_ravel", lambda x: x.ravel(), lambda x: x.ravel(), (2, 3)),
    ("ravel_after_transpose", lambda x: x.T.ravel(), lambda x: x.T.ravel(), (2, 3)),
    ("expand_dims", lambda x: gnp.expand_dims(x, 1), lambda x: np.expand_dims(x, 1), (2, 3)),
    ("expand_dims_neg", lambda x: gnp.expand_dims(x, -1), lambda x: np.expand_dims(x, -1), (2, 3)),
    (
        "expand_dims_tuple",
        lambda x: gnp.expand_dims(x, (0, 2)),
        lambda x: np.expand_dims(x, (0, 2)),
        (2, 3),
    ),
    ("squeeze", gnp.squeeze, np.squeeze, (1, 3, 1)),
    ("squeeze_axis", lambda x: gnp.squeeze(x, 2), lambda x: np.squeeze(x, 2), (1, 3, 1)),
    ("method_squeeze", lambda x: x.squeeze(), lambda x: x.squeeze(), (1, 3, 1)),
    (
        "broadcast_to",
        lambda x: gnp.broadcast_to(x, (2, 3, 4)),
        lambda x: np.broadcast_to(x, (2, 3, 4)),
        (3, 1),
    ),
    (
        "broadcast_scalar",
        lambda x: gnp.broadcast_to(x, (2, 3)),
        lambda x: np.broadcast_to(x, (2, 3)),
        (),
    ),
    ("flip_all", gnp.flip, np.flip, (2, 3)),
    ("flip_axis", lambda x: gnp.flip(x, 1), lambda x: np.flip(x, 1), (2, 3, 2)),
    ("flip_neg_axis", lambda x: gnp.flip(x, -1), lambda x: np.flip(x, -1), (2, 3)),
    (
        "astype_roundtrip",
        lambda x: gnp.astype(gnp.astype(x, "float32"), "float64"),
        lambda x: x.astype(np.float32).astype(np.float64),
        (2, 3),
    ),
    ("method_astype", lambda x: x.astype(np.float64) * 2, lambda x: x * 2, (3,)),
]


@pytest.mark.parametrize("name, fn, np_fn, shape", SHAPE_OPS, ids=[c[0] for c in SHAPE_OPS])
def test_shape_ops(name, fn, np_fn, shape):
    x = sample(np.random.default_rng(len(name)), shape)
    if name == "astype_roundtrip":
        # the float32 rounding is in the value; its derivative is the identity
        graph = gs.trace(fn, x)
        np.testing.assert_array_equal(ENG.evaluate(graph, x), np_fn(x))
        v = np.random.default_rng(1).normal(size=shape)
        np.testing.assert_allclose(ENG.vjp(graph, (x,), v)[1][0], v.astype(np.float32), rtol=0)
        np.testing.assert_allclose(ENG.jvp(graph, (x,), (v,))[1], v.astype(np.float32), rtol=0)
        return
    check_op(fn, np_fn, [x])


@SETTINGS
@given(shapes=st.lists(st.integers(1, 3), min_size=2, max_size=3), data=st.data(), seed=seeds)
def test_concatenate_and_stack(shapes, data, seed):
    rng = np.random.default_rng(seed)
    rest = data.draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=1, max_side=3))
    axis = data.draw(st.integers(-(len(rest) + 1), len(rest)))
    at = axis % (len(rest) + 1)
    parts = [sample(rng, rest[:at] + (n,) + rest[at:]) for n in shapes]
    check_op(
        lambda *xs: gnp.concatenate(xs, axis=axis),
        lambda *xs: np.concatenate(xs, axis=axis),
        parts,
        seed=seed,
    )
    same = [sample(rng, rest) for _ in shapes]
    check_op(
        lambda *xs: gnp.stack(xs, axis=axis), lambda *xs: np.stack(xs, axis=axis), same, seed=seed
    )
    # stack of scalars; array([...]) of tracers
    check_op(lambda *xs: gnp.array(list(xs)), lambda *xs: np.array(list(xs)), same, seed=seed)


def test_concatenate_axis_none():
    rng = np.random.default_rng(2)
    check_op(
        lambda a, b: gnp.concatenate([a, b], axis=None),
        lambda a, b: np.concatenate([a, b], axis=None),
        [rng.normal(size=(2, 2)), rng.normal(size=(3,))],
    )


def test_concatenate_with_constant():
    c = np.arange(3.0)
    check_op(
        lambda a: gnp.concatenate([a, c]),
        lambda a: np.concatenate([a, c]),
        [np.random.default_rng(3).normal(size=(2,))],
    )


# ---- indexing ------------------------------------------------------------------------------------

INDEXES = [
    ("int", lambda x: x[1]),
    ("neg_int", lambda x: x[-1]),
    ("slice", lambda x: x[1:3]),
    ("slice_step", lambda x: x[::2]),
    ("neg_step", lambda x: x[::-1]),
    ("neg_step_bounds", lambda x: x[3:0:-2]),
    ("neg_slice", lambda x: x[-3:-1]),
    ("empty_slice", lambda x: x[3:1]),
    ("two_axes", lambda x: x[1:, -2]),
    ("newaxis", lambda x: x[:, None]),
    ("newaxis_front", lambda x: x[None, 1:, None]),
    ("ellipsis", lambda x: x[..., 0]),
    ("ellipsis_middle", lambda x: x[0, ..., 1]),
    ("ellipsis_newaxis", lambda x: x[..., None]),
    ("int_array", lambda x: x[np.array([0, 2, 3])]),
    ("repeated_int_array", lambda x: x[np.array([0, 2, 0, 0])]),
    ("negative_int_array", lambda x: x[np.array([-1, 0, -1])]),
    ("list_index", lambda x: x[[1, 1, 2]]),
    ("2d_int_array", lambda x: x[np.array([[0, 1], [1, 0]])]),
    ("array_second_axis", lambda x: x[:, np.array([2, 0, 2])]),
    ("two_arrays", lambda x: x[np.array([0, 1, 1]), np.array([2, 2, 0])]),
    ("array_and_int", lambda x: x[np.array([3, 3]), 1]),
    ("array_and_slice", lambda x: x[np.array([1, 0, 1]), 1:]),
    ("separated_arrays", lambda x: x[np.array([0, 1]), :, np.array([1, 1])]),
]


INDEX_CASES = [
    (name, index, shape)
    for name, index in INDEXES
    for shape in [(4, 3), (4, 3, 2)]
    if not (name == "separated_arrays" and len(shape) < 3)
]  # that one needs 3 axes


@pytest.mark.parametrize(
    "name, index, shape", INDEX_CASES, ids=[f"{n}-{len(s)}d" for n, _, s in INDEX_CASES]
)
def test_indexing(name, index, shape):
    x = sample(np.random.default_rng(0), shape)
    check_op(index, index, [x])


def test_repeated_indices_accumulate():
    x = np.array([1.0, 2.0, 3.0])
    graph = gs.trace(
        lambda x: gnp.sum(x[np.array([0, 2, 0, 0])] * np.array([1.0, 10.0, 100.0, 1000.0])), x
    )
    np.testing.assert_array_equal(ENG.grad(graph, x), [1101.0, 0.0, 10.0])


def test_index_with_traced_integer_array():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    idx = np.array([3, 3, 0], dtype=np.int64)
    graph = gs.trace(lambda x, i: gnp.sum(x[i] ** 2), x, idx)
    value, grad = ENG.value_and_grad(graph, x, idx)
    assert value == pytest.approx(16 + 16 + 1)
    np.testing.assert_array_equal(grad, [2.0, 0.0, 0.0, 16.0])
    with pytest.raises(TypeError):
        ENG.grad(graph, x, idx, argnums=1)
    # a different index at call time
    np.testing.assert_array_equal(ENG.grad(graph, x, np.array([1, 2, 2])), [0.0, 4.0, 12.0, 0.0])


@pytest.mark.parametrize(
    "bad", [lambda x: x[5], lambda x: x[np.array([0, 9])], lambda x: x[0, 0, 0]]
)
def test_out_of_range_index_is_an_error_at_trace_time(bad):
    with pytest.raises((IndexError, ValueError)):
        gs.trace(bad, np.zeros((4, 3)))


# ---- creation ----------------------------------------------------------------------------------


def test_creation_functions_are_constants():
    def f(x):
        n = x.shape[0]
        return (
            x * gnp.ones_like(x)
            + gnp.zeros_like(x)
            + gnp.full(x.shape, 2.0) * x
            + gnp.zeros((n,))
            + gnp.ones(n) * 3.0
            + gnp.arange(n) * x
            + gnp.eye(n)[0]
            + gnp.array([1.0, 2.0, 3.0])
            + gnp.asarray(np.ones(n))
        )

    def np_f(x):
        n = x.shape[0]
        return x + 2 * x + 3.0 + np.arange(n) * x + np.eye(n)[0] + np.array([1.0, 2.0, 3.0]) + 1.0

    check_op(f, np_f, [np.array([0.5, -1.0, 2.0])])


def test_creation_dtypes():
    def f(x):
        return (
            gnp.zeros((2,), "float32").dtype,
            gnp.ones_like(x).dtype,
            gnp.arange(3).dtype.kind,
            gnp.eye(2).dtype,
            gnp.full((2,), 1, dtype="int32").dtype,
        )

    box = []
    gs.trace(lambda x: box.append(f(x)) or x, np.zeros(2, np.float32))
    z32, like, ar, eye, full_int = box[0]
    assert z32 == np.float32 and like == np.float32 and ar == "i"
    assert eye == np.float64 and full_int == np.int32


# ---- gs.nn ----------------------------------------------------------------------------------------


def _np_log_softmax(x, axis=-1):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


NN = {
    "softmax": (gs.nn.softmax, lambda x, axis: np.exp(_np_log_softmax(x, axis))),
    "log_softmax": (gs.nn.log_softmax, _np_log_softmax),
}


@pytest.mark.parametrize("name", sorted(NN))
@SETTINGS
@given(shape=nonscalar_shapes, data=st.data(), seed=seeds)
def test_softmax_family(name, shape, data, seed):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    fn, np_fn = NN[name]
    x = sample(np.random.default_rng(seed), shape) * 3
    check_op(lambda x: fn(x, axis=axis), lambda x: np_fn(x, axis), [x], seed=seed)


def test_nn_stable_at_extremes():
    big = np.array([1000.0, 1000.0, -1000.0])
    lse = gs.trace(lambda x: gs.nn.logsumexp(x), big)
    value, grad = ENG.value_and_grad(lse, big)
    assert value == pytest.approx(1000.0 + np.log(2.0))
    np.testing.assert_allclose(grad, [0.5, 0.5, 0.0], atol=1e-300)

    sm = gs.trace(lambda x: gs.nn.softmax(x)[0], big)
    value, grad = ENG.value_and_grad(sm, big)
    assert value == pytest.approx(0.5)
    np.testing.assert_allclose(grad, [0.25, -0.25, 0.0], atol=1e-15)

    x = np.array([-800.0, -40.0, 0.0, 40.0, 800.0])
    sig = gs.trace(lambda x: gnp.sum(gs.nn.sigmoid(x)), x)
    value, grad = ENG.value_and_grad(sig, x)
    e = np.exp(-np.abs(x))  # sigmoid' = e / (1 + e)**2, symmetric, no cancellation
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, e / (1 + e) ** 2, rtol=1e-6, atol=1e-300)
    np.testing.assert_allclose(
        ENG.evaluate(gs.trace(gs.nn.sigmoid, x), x),
        np.where(x >= 0, 1 / (1 + e), e / (1 + e)),
        rtol=1e-12,
        atol=1e-300,
    )
    # the tail is kept: log(sigmoid(-40)) = -40 - log1p(e^-40), with derivative 1 - sigmoid(-40)
    log_sig = gs.trace(lambda x: gnp.log(gs.nn.sigmoid(x)), -40.0)
    value, grad = ENG.value_and_grad(log_sig, -40.0)
    assert value == pytest.approx(-40.0, rel=1e-12) and grad == pytest.approx(1.0, rel=1e-12)

    sp = gs.trace(lambda x: gs.nn.softplus(x), 1000.0)
    value, grad = ENG.value_and_grad(sp, 1000.0)
    assert value == pytest.approx(1000.0) and grad == pytest.approx(1.0)
    value, grad = ENG.value_and_grad(sp, -1000.0)
    assert value == pytest.approx(0.0, abs=1e-300) and grad == pytest.approx(0.0, abs=1e-300)

    ls = gs.trace(lambda x: gs.nn.log_softmax(x)[2], big)
    value, grad = ENG.value_and_grad(ls, big)
    assert value == pytest.approx(-2000.0 - np.log(2.0))
    np.testing.assert_allclose(grad, [-0.5, -0.5, 1.0], atol=1e-15)


def test_relu_derivative_zero_at_zero():
    graph = gs.trace(lambda x: gnp.sum(gs.nn.relu(x)), np.zeros(3))
    np.testing.assert_array_equal(ENG.grad(graph, np.array([-1.0, 0.0, 2.0])), [0.0, 0.0, 1.0])


# ---- the dot-product identity on random compositions ----------------------------------------


@SETTINGS
@given(shape=shapes, seed=seeds)
def test_dot_product_identity(shape, seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=shape)

    def f(x, y):
        h = gnp.tanh(x * w + y) * gnp.exp(-y * y)
        return (gnp.sum(h, axis=-1, keepdims=True) if h.ndim else h) + gnp.sin(x)

    x, y = rng.normal(size=shape), rng.normal(size=shape)
    graph = gs.trace(f, x, y)
    out = ENG.evaluate(graph, x, y)
    u = [rng.normal(size=shape), rng.normal(size=shape)]
    v = rng.normal(size=out.shape)
    _, ju = ENG.jvp(graph, (x, y), u)
    _, jtv = ENG.vjp(graph, (x, y), v)
    lhs = float(np.sum(v * ju))
    rhs = float(np.sum(jtv[0] * u[0]) + np.sum(jtv[1] * u[1]))
    assert lhs == pytest.approx(rhs, rel=1e-10, abs=1e-10)


# ---- float32 stays float32 --------------------------------------------------------------------

F32_OPS = {
    "sin": lambda x: gnp.sum(gnp.sin(x)),
    "scalar_mul": lambda x: gnp.sum(x * 0.5 + 2),
    "pow": lambda x: gnp.sum(x**2 + x**3),
    "div": lambda x: gnp.sum(1.0 / (x * x + 1.0)),
    "mean_var": lambda x: gnp.mean(x) + gnp.var(x),
    "matmul": lambda x: gnp.sum(x @ x.T),
    "logsumexp": lambda x: gs.nn.logsumexp(x),
    "softmax": lambda x: gnp.sum(gs.nn.softmax(x) * np.arange(x.shape[-1], dtype=x.dtype)),
    "indexing": lambda x: gnp.sum(x[::-1, np.array([0, 0])] * x[0, 1]),
    "where_max": lambda x: gnp.sum(gnp.where(x > 0, x, 0.5 * x) + gnp.maximum(x, 0.1)),
}


@pytest.mark.parametrize("name", sorted(F32_OPS))
def test_float32_stays_float32(name):
    fn = F32_OPS[name]
    rng = np.random.default_rng(0)
    x32 = sample(rng, (3, 2), "away0").astype(np.float32)
    graph = gs.trace(fn, x32)
    assert graph.inputs[0].spec.dtype == "float32"
    assert graph.outputs[0].spec.dtype == "float32"
    value, grad = ENG.value_and_grad(graph, x32)
    assert value.dtype == np.float32 and grad.dtype == np.float32
    # against the float64 program at the same point
    x64 = x32.astype(np.float64)
    graph64 = gs.trace(fn, x64)
    value64, grad64 = ENG.value_and_grad(graph64, x64)
    np.testing.assert_allclose(value, value64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad, grad64, rtol=1e-4, atol=1e-5)
    out, tangent = ENG.jvp(graph, (x32,), (np.ones_like(x32),))
    assert out.dtype == np.float32 and tangent.dtype == np.float32
    (ct,) = ENG.vjp(graph, (x32,), np.float32(1.0))[1]
    assert ct.dtype == np.float32
    jac = ENG.jacobian(graph, x32)
    assert jac.dtype == np.float32 and jac.shape == x32.shape
    np.testing.assert_allclose(jac, grad, rtol=1e-5, atol=1e-6)


def test_float32_with_float64_promotes():
    x32 = np.ones(3, np.float32)
    graph = gs.trace(lambda x, y: gnp.sum(x * y), x32, np.ones(3))
    assert graph.outputs[0].spec.dtype == "float64"
    gx, gy = ENG.grad(graph, x32, np.full(3, 2.0), argnums=(0, 1))
    assert gx.dtype == np.float32 and gy.dtype == np.float64
    np.testing.assert_array_equal(gx, [2, 2, 2])
    np.testing.assert_array_equal(gy, [1, 1, 1])


# ---- integer inputs are not differentiable -------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_integer_inputs_not_differentiable(dtype):
    x = np.array([1.0, 2.0, 3.0])
    n = np.array([1, 0, 2]).astype(dtype)
    graph = gs.trace(lambda x, n: gnp.sum(x * n), x, n)
    np.testing.assert_array_equal(ENG.grad(graph, x, n), n.astype(np.float64))
    with pytest.raises(TypeError):
        ENG.grad(graph, x, n, argnums=1)
    with pytest.raises(TypeError):
        ENG.value_and_grad(graph, x, n, argnums=(0, 1))
    with pytest.raises(TypeError):
        ENG.jacobian(graph, x, n, argnums=1)
    with pytest.raises(TypeError):
        ENG.hessian(graph, x, n, argnums=1)
    # vjp gives zeros for a non-differentiable input
    cts = ENG.vjp(graph, (x, n), 1.0)[1]
    np.testing.assert_array_equal(cts[0], n.astype(np.float64))
    assert not np.any(cts[1])


def test_integer_arithmetic_promotes_to_float_for_inexact_ops():
    n = np.array([1, 4, 9])
    graph = gs.trace(lambda n: gnp.sqrt(n), n)
    assert graph.outputs[0].spec.dtype == "float64"
    np.testing.assert_allclose(ENG.evaluate(graph, n), [1.0, 2.0, 3.0])
    graph = gs.trace(lambda n: n * 2 + 1, n)
    assert graph.outputs[0].spec.dtype == "int64"
    np.testing.assert_array_equal(ENG.evaluate(graph, n), [3, 9, 19])


# ---- the complex step through every op (complex-step extensions of non-holomorphic ops) -------


@pytest.mark.parametrize("name", sorted(UNARY))
def test_complex_step_unary(name):
    fn, _, kind = UNARY[name]
    x = sample(np.random.default_rng(11), (4,), kind)
    graph = gs.trace(lambda x: gnp.sum(fn(x) * np.array([1.0, 2.0, -0.5, 0.25])), x)
    report = ENG.check_grad(graph, x, method="complex")
    assert report.ok, report
    assert report.max_rel_error < 1e-12


@pytest.mark.parametrize("name", sorted(BINARY))
def test_complex_step_binary(name):
    fn, _, kx, ky = BINARY[name]
    rng = np.random.default_rng(12)
    x, y = sample(rng, (3,), kx), sample(rng, (2, 3), ky)
    graph = gs.trace(lambda x, y: gnp.sum(fn(x, y) * np.array([1.0, -2.0, 0.5])), x, y)
    report = ENG.check_grad(graph, x, y, method="complex")
    assert report.ok, report
    assert report.max_rel_error < 1e-12


@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_complex_step_reductions(name):
    fn, _, kind = REDUCTIONS[name]
    x = sample(np.random.default_rng(13), (3, 4), kind)
    graph = gs.trace(lambda x: gnp.sum(fn(x, axis=1) * np.array([1.0, 2.0, -0.5])), x)
    report = ENG.check_grad(graph, x, method="complex")
    assert report.ok, report
    assert report.max_rel_error < 1e-12


# ---- second order: Hessians (forward over reverse) against differences of gradients -----------
# The gradients are checked against NumPy above; their differences check the Hessian, which
# runs every op's JVP rule on the reverse pass's ops (transposes, scatter_add, div_or_zero...).


def gradient_differences(graph, args, i, j, h=1e-5):
    """d grad_i / d args[j], shape args[i].shape + args[j].shape."""
    x = args[j]
    cols = np.zeros(args[i].shape + x.shape)
    for k in np.ndindex(*x.shape):
        step = h * max(1.0, abs(x[k]))
        plus, minus = list(args), list(args)
        plus[j], minus[j] = x.copy(), x.copy()
        plus[j][k] += step
        minus[j][k] -= step
        cols[(Ellipsis,) + k] = (
            ENG.grad(graph, *plus, argnums=i) - ENG.grad(graph, *minus, argnums=i)
        ) / (2 * step)
    return cols


def check_hessian(fn, args, seed=0):
    args = [np.asarray(a, dtype=np.float64) for a in args]
    graph = gs.trace(fn, *args)
    n = len(args)
    hess = ENG.hessian(graph, *args, argnums=tuple(range(n)))
    for i in range(n):
        for j in range(n):
            assert hess[i][j].shape == args[i].shape + args[j].shape
            np.testing.assert_allclose(
                hess[i][j], gradient_differences(graph, args, i, j), rtol=1e-5, atol=1e-6
            )
    rng = np.random.default_rng(seed)
    v = [rng.normal(size=a.shape) for a in args]
    hv = ENG.hvp(graph, args, v)
    for i in range(n):
        want = sum(np.tensordot(hess[i][j], v[j], axes=v[j].ndim) for j in range(n))
        np.testing.assert_allclose(hv[i], want, rtol=1e-9, atol=1e-10)


W3 = np.array([1.0, 2.0, -0.5])
SECOND_ORDER = (
    [
        (f"unary_{n}", (lambda fn: lambda x: gnp.sum(fn(x) * W3))(f), [(3,)], [k])
        for n, (f, _, k) in sorted(UNARY.items())
    ]
    + [
        (
            f"binary_{n}",
            (lambda fn: lambda x, y: gnp.sum(fn(x, y) * W3))(f),
            [(3,), (2, 3)],
            [kx, ky],
        )
        for n, (f, _, kx, ky) in sorted(BINARY.items())
    ]
    + [
        (f"reduce_{n}", (lambda fn: lambda x: gnp.sum(fn(x, axis=1) * W3))(f), [(3, 4)], [k])
        for n, (f, _, k) in sorted(REDUCTIONS.items())
    ]
    + [
        (
            f"contract_{c[0]}",
            (lambda fn: lambda a, b: gnp.sum(gnp.sin(fn(a, b))))(c[1]),
            [c[3], c[4]],
            ["any", "any"],
        )
        for c in CONTRACTIONS
    ]
    + [
        (
            f"shape_{c[0]}",
            (lambda fn: lambda x: gnp.sum(gnp.sin(fn(x)) * 1.5))(c[1]),
            [c[3]],
            ["any"],
        )
        for c in SHAPE_OPS
        if c[0] != "astype_roundtrip"
    ]
    + [
        (
            f"index_{c[0]}",
            (lambda fn: lambda x: gnp.sum(gnp.sin(fn(x)) ** 2))(c[1]),
            [(4, 3, 2)],
            ["any"],
        )
        for c in INDEXES
    ]
    + [
        ("softmax", lambda x: gnp.sum(gs.nn.softmax(x) * np.arange(4.0)), [(2, 4)], ["any"]),
        (
            "log_softmax",
            lambda x: gnp.sum(gs.nn.log_softmax(x, axis=0) * np.arange(4.0)),
            [(2, 4)],
            ["any"],
        ),
        ("cumsum", lambda x: gnp.sum(gnp.sin(gnp.cumsum(x, axis=1))), [(2, 4)], ["any"]),
        (
            "concatenate",
            lambda x, y: gnp.sum(gnp.sin(gnp.concatenate([x, y])) ** 2),
            [(2,), (3,)],
            ["any", "any"],
        ),
    ]
)


@pytest.mark.parametrize("name, fn, shapes, kinds", SECOND_ORDER, ids=[c[0] for c in SECOND_ORDER])
def test_hessian_per_op(name, fn, shapes, kinds):
    rng = np.random.default_rng(len(name))
    check_hessian(fn, [sample(rng, s, k) for s, k in zip(shapes, kinds)])


@pytest.mark.parametrize(
    "fn, dtype",
    [
        (lambda x: gnp.sum(gnp.sin(gnp.astype(x, "float32")) * 2), "float64"),
        (lambda x: gnp.sum(gnp.astype(x, "float64") ** 2), "float32"),
        (lambda x: gnp.sum(x * gnp.astype(gnp.astype(x, "int64"), "float64")), "float64"),
    ],
    ids=["to_float32", "float32_to_float64", "through_int"],
)
def test_complex_step_through_astype(fn, dtype):
    x = np.array([0.1, 1.5, 2.2], dtype)
    graph = gs.trace(fn, x)
    analytic = ENG.grad(graph, x)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = ENG.check_grad(graph, x, method="complex")
    assert report.ok, report
    np.testing.assert_allclose(report.numeric[0], analytic, rtol=1e-6)


F32_SWEEP = (
    [
        (
            f"unary_{n}",
            (lambda fn: lambda x: gnp.sum(fn(x) * W3.astype(np.float32)))(f),
            [(3,)],
            [k],
        )
        for n, (f, _, k) in sorted(UNARY.items())
    ]
    + [
        (
            f"binary_{n}",
            (lambda fn: lambda x, y: gnp.sum(fn(x, y) * W3.astype(np.float32)))(f),
            [(3,), (2, 3)],
            [kx, ky],
        )
        for n, (f, _, kx, ky) in sorted(BINARY.items())
    ]
    + [
        (
            f"reduce_{n}",
            (lambda fn: lambda x: gnp.sum(fn(x, axis=1) * W3.astype(np.float32)))(f),
            [(3, 4)],
            [k],
        )
        for n, (f, _, k) in sorted(REDUCTIONS.items())
    ]
)


@pytest.mark.parametrize("name, fn, shapes, kinds", F32_SWEEP, ids=[c[0] for c in F32_SWEEP])
def test_float32_every_op(name, fn, shapes, kinds):
    rng = np.random.default_rng(len(name))
    args32 = [sample(rng, s, k).astype(np.float32) for s, k in zip(shapes, kinds)]
    args64 = [a.astype(np.float64) for a in args32]
    graph = gs.trace(fn, *args32)
    assert graph.outputs[0].spec.dtype == "float32"
    nums = tuple(range(len(args32)))
    value, grads = ENG.value_and_grad(graph, *args32, argnums=nums)
    value64, grads64 = ENG.value_and_grad(gs.trace(fn, *args64), *args64, argnums=nums)
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, value64, rtol=1e-5, atol=1e-5)
    for g, g64 in zip(grads, grads64):
        assert g.dtype == np.float32
        np.testing.assert_allclose(g, g64, rtol=1e-3, atol=1e-4)
    assert ENG.hessian(graph, *args32).dtype == np.float32
    assert ENG.check_grad(graph, *args32, method="central").ok


def _others(x):
    return np.array([np.prod(np.delete(x, i)) for i in range(len(x))])


@pytest.mark.parametrize(
    "x",
    [[2.0, 0.0, 3.0, -1.5], [2.0, 0.0, 0.0, 4.0], [0.0, 0.0, 0.0, 1.0], [0.5, 2.0, 3.0, -4.0]],
    ids=["one_zero", "two_zeros", "three_zeros", "none"],
)
def test_prod_gradient_with_zero_factors(x):
    # prod is a polynomial: its gradient (the product of the other factors) exists at zeros
    x = np.array(x)
    graph = gs.trace(lambda x: gnp.prod(x), x)
    value, grad = ENG.value_and_grad(graph, x)
    assert float(value) == np.prod(x)
    np.testing.assert_allclose(grad, _others(x), rtol=1e-15)
    assert ENG.check_grad(graph, x, method="complex").ok
    rows = gs.trace(lambda x: gnp.sum(gnp.prod(x, axis=1) * np.array([1.0, -2.0])), np.ones((2, 4)))
    both = np.stack([x, x[::-1]])
    np.testing.assert_allclose(
        ENG.grad(rows, both), np.stack([_others(x), -2 * _others(x[::-1])]), rtol=1e-15
    )


@pytest.mark.parametrize(
    "x", [[2.0, 0.0, 3.0, -1.5], [0.5, 2.0, 3.0, -4.0]], ids=["one_zero", "none"]
)
def test_prod_hessian_with_a_zero_factor(x):
    x = np.array(x)
    want = np.array(
        [[np.prod(np.delete(x, [i, j])) if i != j else 0.0 for j in range(4)] for i in range(4)]
    )
    np.testing.assert_allclose(ENG.hessian(gs.trace(lambda x: gnp.prod(x), x), x), want, rtol=1e-15)


@pytest.mark.parametrize("y", [0.0, 1.0, 2.0, 3.0, 2.5])
def test_power_at_zero_base(y):
    # x**y at x = 0 for y >= 0: d/dx = y x**(y-1) (1 at y = 1, else 0), d2/dx2 = y(y-1) x**(y-2)
    graph = gs.trace(lambda x: x**y, 1.0)
    assert float(ENG.grad(graph, 0.0)) == (1.0 if y == 1.0 else 0.0)
    assert float(ENG.hessian(graph, 0.0)) == (2.0 if y == 2.0 else 0.0)
    # d/dy 0**y = 0 for y > 0 (0**y is constant 0 there)
    both = gs.trace(lambda x, y: x**y, 1.0, 1.0)
    if y > 0:
        gx, gy = ENG.grad(both, 0.0, y, argnums=(0, 1))
        assert float(gy) == 0.0 and float(gx) == (1.0 if y == 1.0 else 0.0)


def test_power_hessian_closed_form():
    graph = gs.trace(lambda x, y: x**y, 1.0, 1.0)
    (hxx, hxy), (hyx, hyy) = ENG.hessian(graph, 2.0, 3.0, argnums=(0, 1))
    assert float(hxx) == pytest.approx(3 * 2 * 2.0)
    assert float(hxy) == pytest.approx(4 * (1 + 3 * np.log(2.0))) == float(hyx)
    assert float(hyy) == pytest.approx(8 * np.log(2.0) ** 2)


def test_gnp_on_concrete_arrays_is_numpy():
    """Outside a trace, gradserve.numpy computes at once, as NumPy does."""
    x = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
    pairs = {
        "sin": (gnp.sin(x), np.sin(x)),
        "sum": (gnp.sum(x, axis=1), np.sum(x, axis=1)),
        "mean": (gnp.mean(x, 0), np.mean(x, 0)),
        "var": (gnp.var(x, ddof=1), np.var(x, ddof=1)),
        "std": (gnp.std(x, axis=0, keepdims=True), np.std(x, axis=0, keepdims=True)),
        "max": (gnp.max(x, axis=(0, 1)), np.max(x)),
        "argmax": (gnp.argmax(x, axis=1), np.argmax(x, axis=1)),
        "where": (gnp.where(x > 0, x, 0), np.where(x > 0, x, 0)),
        "clip": (gnp.clip(x, -0.5, 0.5), np.clip(x, -0.5, 0.5)),
        "matmul": (gnp.matmul(x, x.T), x @ x.T),
        "dot": (gnp.dot(x, x[0]), np.dot(x, x[0])),
        "einsum": (gnp.einsum("ij,kj->ik", x, x), np.einsum("ij,kj->ik", x, x)),
        "outer": (gnp.outer(x[0], x[1]), np.outer(x[0], x[1])),
        "concatenate": (gnp.concatenate([x, x], axis=1), np.concatenate([x, x], axis=1)),
        "stack": (gnp.stack([x, x], axis=-1), np.stack([x, x], axis=-1)),
        "flip": (gnp.flip(x), np.flip(x)),
        "cumsum": (gnp.cumsum(x, axis=1), np.cumsum(x, axis=1)),
        "logaddexp": (gnp.logaddexp(x, 1.0), np.logaddexp(x, 1.0)),
        "round": (gnp.round(x), np.round(x)),
        "prod": (gnp.prod(x, axis=0), np.prod(x, axis=0)),
        "swapaxes": (gnp.swapaxes(x, 0, 1), np.swapaxes(x, 0, 1)),
        "expand_dims": (gnp.expand_dims(x, 0), np.expand_dims(x, 0)),
        "squeeze": (gnp.squeeze(x[None]), x),
        "broadcast_to": (gnp.broadcast_to(x[0], (4, 3)), np.broadcast_to(x[0], (4, 3))),
        "power": (gnp.power(np.abs(x), 1.5), np.abs(x) ** 1.5),
        "logsumexp": (gs.nn.logsumexp(x, axis=1), np.log(np.exp(x).sum(1))),
        "softmax": (gs.nn.softmax(x), np.exp(x) / np.exp(x).sum(-1, keepdims=True)),
        "sigmoid": (gs.nn.sigmoid(x), 1 / (1 + np.exp(-x))),
        "relu": (gs.nn.relu(x), np.maximum(x, 0)),
        "softplus": (gs.nn.softplus(x), np.log1p(np.exp(x))),
    }
    for name, (got, want) in pairs.items():
        assert np.shape(got) == np.shape(want), name
        np.testing.assert_allclose(got, want, rtol=1e-12, err_msg=name)
