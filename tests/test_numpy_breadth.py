"""NumPy's breadth in gradserve.numpy: every function added beside the original core, against
NumPy itself. For each: values (several shapes, axes and options), JVP and VJP against central
differences of the NumPy reference, both Jacobians (test_ops.check_op); float32 staying
float32; the complex step where the function is real-analytic; second order for many; and the
graph surviving the wire (Graph.from_bytes(g.to_bytes())). Points are kept away from kinks."""

import numpy as np
import pytest
from gradserve.engine.transforms import Program, batch
from test_ops import ENG, check_hessian, check_op, sample

import gradserve as gs
import gradserve.numpy as gnp

# NumPy 2 deprecates cross products of 2-vectors; gnp.cross still gives them, as NumPy does
pytestmark = pytest.mark.filterwarnings("ignore:Arrays of 2-dimensional vectors")


def _mod_args(rng, shape_x, shape_y):
    """x, y with x / y an integer plus a fraction in (0.15, 0.85): away from mod's jumps."""
    y = rng.uniform(0.5, 2.0, shape_y) * rng.choice([-1.0, 1.0], shape_y)
    shape = np.broadcast_shapes(shape_x, shape_y)
    q = rng.integers(-3, 3, shape) + rng.uniform(0.15, 0.85, shape)
    x = q * y
    assert x.shape == tuple(shape_x)
    return [x, y]


def _weighted_parts(parts, xp):
    return xp.concatenate([xp.ravel(p) * (i + 1.0) for i, p in enumerate(parts)])


def _z(x, y):
    return x + 1j * y


# name: (gnp function, NumPy reference, [(shapes, kinds), ...], flags)
# flags: "f32" float32 stays float32, "cs" the complex step, "hess" second order.
CASES = {
    "mod": (gnp.mod, np.mod, [((3,), (3,)), ((2, 3), (3,)), ((), ())], "mod f32 cs hess"),
    "remainder": (gnp.remainder, np.remainder, [((2, 2), (2, 1))], "mod f32"),
    "mod_operator": (lambda x, y: x % y, lambda x, y: x % y, [((4,), (4,))], "mod cs"),
    "mod_scalar": (lambda x: x % 1.7, lambda x: x % 1.7, [((5,), "any")], "f32 cs"),
    "rmod_scalar": (lambda y: 5.3 % y, lambda y: 5.3 % y, [((3,), "pos")], "f32"),
    "real_of_real": (gnp.real, np.real, [((3,), "any")], "f32 cs"),
    "imag_of_real": (lambda x: gnp.imag(x) + x, lambda x: np.imag(x) + x, [((3,), "any")], "f32"),
    "conj_of_real": (gnp.conj, np.conj, [((2, 3), "any")], "f32 cs"),
    "angle_of_real": (lambda x: gnp.angle(x) + x, lambda x: np.angle(x) + x, [((4,), "away0")], ""),
    "real_complex": (
        lambda x, y: gnp.real(_z(x, y) ** 2),
        lambda x, y: np.real(_z(x, y) ** 2),
        [(((3,), (3,)), ("any", "any"))],
        "hess",
    ),
    "imag_conj_complex": (
        lambda x, y: gnp.imag(gnp.conjugate(_z(x, y) ** 2)),
        lambda x, y: np.imag(np.conjugate(_z(x, y) ** 2)),
        [(((3,), (3,)), ("any", "any"))],
        "hess",
    ),
    "angle_complex": (
        lambda x, y: gnp.angle(_z(x, y)),
        lambda x, y: np.angle(_z(x, y)),
        [(((4,), (4,)), ("any", "away0"))],
        "hess",
    ),
    "angle_deg": (
        lambda x, y: gnp.angle(_z(x, y), deg=True),
        lambda x, y: np.angle(_z(x, y), deg=True),
        [(((2,), (2,)), ("any", "away0"))],
        "",
    ),
    "tril": (gnp.tril, np.tril, [((3, 4), "any"), ((2, 3, 3), "any"), ((4,), "any")], "f32"),
    "tril_k": (lambda x: gnp.tril(x, 1), lambda x: np.tril(x, 1), [((3, 4), "any")], "cs"),
    "triu": (gnp.triu, np.triu, [((4, 3), "any"), ((2, 3, 3), "any")], "f32 cs"),
    "triu_k": (lambda x: gnp.triu(x, -1), lambda x: np.triu(x, -1), [((3, 3), "any")], ""),
    "diag_vector": (gnp.diag, np.diag, [((3,), "any")], "f32 cs hess"),
    "diag_vector_k": (lambda v: gnp.diag(v, 2), lambda v: np.diag(v, 2), [((2,), "any")], ""),
    "diag_vector_neg_k": (lambda v: gnp.diag(v, -1), lambda v: np.diag(v, -1), [((3,), "any")], ""),
    "diag_matrix": (gnp.diag, np.diag, [((3, 4), "any"), ((4, 2), "any")], "f32"),
    "diag_matrix_k": (lambda m: gnp.diag(m, -1), lambda m: np.diag(m, -1), [((3, 4), "any")], ""),
    "diagonal": (gnp.diagonal, np.diagonal, [((3, 3), "any"), ((2, 3, 4), "any")], "f32 cs"),
    "diagonal_axes": (
        lambda a: gnp.diagonal(a, 1, axis1=2, axis2=0),
        lambda a: np.diagonal(a, 1, axis1=2, axis2=0),
        [((3, 2, 4), "any")],
        "",
    ),
    "trace": (gnp.trace, np.trace, [((3, 3), "any"), ((3, 4, 2), "any")], "f32 cs hess"),
    "trace_offset": (
        lambda a: gnp.trace(a, offset=-1, axis1=1, axis2=2),
        lambda a: np.trace(a, offset=-1, axis1=1, axis2=2),
        [((2, 3, 3), "any")],
        "",
    ),
    "repeat": (lambda a: gnp.repeat(a, 2), lambda a: np.repeat(a, 2), [((2, 3), "any")], "f32"),
    "repeat_axis": (
        lambda a: gnp.repeat(a, [1, 0, 3], axis=1),
        lambda a: np.repeat(a, [1, 0, 3], axis=1),
        [((2, 3), "any")],
        "cs",
    ),
    "tile": (
        lambda a: gnp.tile(a, 2),
        lambda a: np.tile(a, 2),
        [((3,), "any"), ((2, 2), "any"), ((), "any")],
        "f32 cs",
    ),
    "tile_tuple": (
        lambda a: gnp.tile(a, (2, 1, 3)),
        lambda a: np.tile(a, (2, 1, 3)),
        [((2, 2), "any"), ((2,), "any")],
        "",
    ),
    "tile_short_reps": (
        lambda a: gnp.tile(a, (2,)),
        lambda a: np.tile(a, (2,)),
        [((2, 3), "any")],
        "",
    ),
    "roll": (lambda a: gnp.roll(a, 2), lambda a: np.roll(a, 2), [((2, 3), "any")], "f32 cs hess"),
    "roll_axis": (
        lambda a: gnp.roll(a, -1, axis=1),
        lambda a: np.roll(a, -1, axis=1),
        [((2, 3), "any"), ((2, 3, 2), "any")],
        "",
    ),
    "roll_tuple": (
        lambda a: gnp.roll(a, (1, 5), axis=(0, 1)),
        lambda a: np.roll(a, (1, 5), axis=(0, 1)),
        [((3, 4), "any")],
        "",
    ),
    "split": (
        lambda a: _weighted_parts(gnp.split(a, 2, axis=1), gnp),
        lambda a: _weighted_parts(np.split(a, 2, axis=1), np),
        [((3, 4), "any")],
        "f32 cs",
    ),
    "split_indices": (
        lambda a: _weighted_parts(gnp.split(a, [1, 3]), gnp),
        lambda a: _weighted_parts(np.split(a, [1, 3]), np),
        [((5,), "any"), ((4, 2), "any")],
        "",
    ),
    "array_split": (
        lambda a: _weighted_parts(gnp.array_split(a, 3, axis=-1), gnp),
        lambda a: _weighted_parts(np.array_split(a, 3, axis=-1), np),
        [((7,), "any"), ((2, 5), "any")],
        "f32",
    ),
    "hsplit": (
        lambda a: _weighted_parts(gnp.hsplit(a, 2), gnp),
        lambda a: _weighted_parts(np.hsplit(a, 2), np),
        [((2, 4), "any"), ((4,), "any")],
        "",
    ),
    "vsplit": (
        lambda a: _weighted_parts(gnp.vsplit(a, [1]), gnp),
        lambda a: _weighted_parts(np.vsplit(a, [1]), np),
        [((3, 2), "any")],
        "",
    ),
    "dsplit": (
        lambda a: _weighted_parts(gnp.dsplit(a, 2), gnp),
        lambda a: _weighted_parts(np.dsplit(a, 2), np),
        [((1, 2, 4), "any")],
        "",
    ),
    "hstack": (
        lambda a, b: gnp.hstack([a, b * 2.0]),
        lambda a, b: np.hstack([a, b * 2.0]),
        [(((2,), (3,)), ("any", "any")), (((2, 1), (2, 3)), ("any", "any"))],
        "f32 cs",
    ),
    "vstack": (
        lambda a, b: gnp.vstack((a, b * 2.0)),
        lambda a, b: np.vstack((a, b * 2.0)),
        [(((3,), (3,)), ("any", "any")), (((2, 3), (1, 3)), ("any", "any"))],
        "f32",
    ),
    "dstack": (
        lambda a, b: gnp.dstack((a, b)),
        lambda a, b: np.dstack((a, b)),
        [(((3,), (3,)), ("any", "any")), (((2, 3), (2, 3)), ("any", "any"))],
        "",
    ),
    "column_stack": (
        lambda a, b: gnp.column_stack((a, b)),
        lambda a, b: np.column_stack((a, b)),
        [(((3,), (3, 2)), ("any", "any"))],
        "f32",
    ),
    "log2": (gnp.log2, np.log2, [((3,), "pos"), ((2, 2), "pos")], "f32 cs hess"),
    "log10": (gnp.log10, np.log10, [((3,), "pos")], "f32 cs"),
    "exp2": (gnp.exp2, np.exp2, [((3,), "any")], "f32 cs hess"),
    "arcsinh": (gnp.arcsinh, np.arcsinh, [((4,), "any"), ((2, 2), "any")], "f32 cs hess"),
    "arccosh": (
        lambda x: gnp.arccosh(x + 1.0),
        lambda x: np.arccosh(x + 1.0),
        [((4,), "pos")],
        "f32 cs hess",
    ),
    "arctanh": (gnp.arctanh, np.arctanh, [((4,), "unit"), ((2, 3), "unit")], "f32 cs hess"),
    "arctan2": (
        gnp.arctan2,
        np.arctan2,
        [(((3,), (3,)), ("away0", "any")), (((2, 3), (3,)), ("away0", "any"))],
        "f32 cs hess",
    ),
    "hypot": (
        gnp.hypot,
        np.hypot,
        [(((3,), (3,)), ("away0", "any")), (((2, 1), (3,)), ("any", "away0"))],
        "f32 cs hess",
    ),
    "deg2rad": (gnp.deg2rad, np.deg2rad, [((3,), "any")], "f32 cs"),
    "rad2deg": (gnp.rad2deg, np.rad2deg, [((3,), "any")], "f32 cs"),
    "radians": (gnp.radians, np.radians, [((3,), "any")], ""),
    "degrees": (gnp.degrees, np.degrees, [((3,), "any")], ""),
    "sinc": (gnp.sinc, np.sinc, [((5,), "any"), ((2, 2), "away0")], "f32 cs hess"),
    "reciprocal": (gnp.reciprocal, np.reciprocal, [((4,), "away0")], "f32 cs hess"),
    "diff": (gnp.diff, np.diff, [((4,), "any"), ((2, 3), "any")], "f32 cs"),
    "diff_n_axis": (
        lambda a: gnp.diff(a, n=2, axis=0),
        lambda a: np.diff(a, n=2, axis=0),
        [((4, 2), "any")],
        "",
    ),
    "diff_prepend_append": (
        lambda a, b: gnp.diff(a, prepend=0.5, append=b),
        lambda a, b: np.diff(a, prepend=0.5, append=b),
        [(((2, 3), (2, 1)), ("any", "any"))],
        "",
    ),
    "kron": (
        gnp.kron,
        np.kron,
        [
            (((2, 3), (2, 2)), ("any", "any")),
            (((3,), (2,)), ("any", "any")),
            (((2,), (2, 3)), ("any", "any")),
        ],
        "f32 cs hess",
    ),
    "cross": (
        gnp.cross,
        np.cross,
        [
            (((3,), (3,)), ("any", "any")),
            (((4, 3), (3,)), ("any", "any")),
            (((2,), (3,)), ("any", "any")),
            (((3,), (2,)), ("any", "any")),
            (((2, 2), (2,)), ("any", "any")),
        ],
        "f32 cs hess",
    ),
    "cross_axis": (
        lambda a, b: gnp.cross(a, b, axis=0),
        lambda a, b: np.cross(a, b, axis=0),
        [(((3, 2), (3, 2)), ("any", "any"))],
        "",
    ),
    "cross_axes_abc": (
        lambda a, b: gnp.cross(a, b, axisa=0, axisb=1, axisc=0),
        lambda a, b: np.cross(a, b, axisa=0, axisb=1, axisc=0),
        [(((3, 2), (2, 3)), ("any", "any"))],
        "",
    ),
    "sort": (gnp.sort, np.sort, [((5,), "distinct"), ((3, 4), "distinct")], "f32 cs hess"),
    "sort_axis0": (
        lambda a: gnp.sort(a, axis=0),
        lambda a: np.sort(a, axis=0),
        [((3, 2), "distinct")],
        "",
    ),
    "sort_axis_none": (
        lambda a: gnp.sort(a, axis=None),
        lambda a: np.sort(a, axis=None),
        [((2, 3), "distinct")],
        "",
    ),
    "take": (
        lambda a: gnp.take(a, [2, 0, 2]),
        lambda a: np.take(a, [2, 0, 2]),
        [((4,), "any"), ((2, 2), "any")],
        "f32 cs",
    ),
    "take_axis": (
        lambda a: gnp.take(a, np.array([[1, 0], [-1, 1]]), axis=1),
        lambda a: np.take(a, np.array([[1, 0], [-1, 1]]), axis=1),
        [((2, 3, 2), "any")],
        "",
    ),
    "take_scalar_index": (
        lambda a: gnp.take(a, 1, axis=0),
        lambda a: np.take(a, 1, axis=0),
        [((3, 2), "any")],
        "",
    ),
    "take_along_axis": (
        lambda a: gnp.take_along_axis(a, np.array([[0, 2, 2], [1, 1, 0]]), axis=1),
        lambda a: np.take_along_axis(a, np.array([[0, 2, 2], [1, 1, 0]]), axis=1),
        [((2, 3), "any")],
        "f32",
    ),
    "take_along_axis_broadcast": (
        lambda a: gnp.take_along_axis(a, np.array([[1], [0]]), axis=0),
        lambda a: np.take_along_axis(a, np.array([[1], [0]]), axis=0),
        [((2, 3), "any")],
        "",
    ),
    "take_along_axis_traced": (
        lambda a, b: gnp.take_along_axis(b, gnp.argsort(a, axis=0), axis=0),
        lambda a, b: np.take_along_axis(b, np.argsort(a, axis=0), axis=0),
        [(((3, 2), (3, 2)), ("distinct", "any"))],
        "",
    ),
    "pad_constant": (
        lambda a: gnp.pad(a, 1),
        lambda a: np.pad(a, 1),
        [((3,), "any"), ((2, 3), "any")],
        "f32 cs",
    ),
    "pad_constant_values": (
        lambda a: gnp.pad(a, ((1, 0), (0, 2)), constant_values=1.5),
        lambda a: np.pad(a, ((1, 0), (0, 2)), constant_values=1.5),
        [((2, 3), "any")],
        "",
    ),
    "pad_edge": (
        lambda a: gnp.pad(a, (2, 1), mode="edge"),
        lambda a: np.pad(a, (2, 1), mode="edge"),
        [((3,), "any"), ((2, 2), "any")],
        "cs",
    ),
    "pad_reflect": (
        lambda a: gnp.pad(a, (2, 3), mode="reflect"),
        lambda a: np.pad(a, (2, 3), mode="reflect"),
        [((4,), "any"), ((3, 2), "any"), ((1, 3), "any")],
        "cs hess",
    ),
    "pad_reflect_wide": (
        lambda a: gnp.pad(a, (5, 6), mode="reflect"),
        lambda a: np.pad(a, (5, 6), mode="reflect"),
        [((3,), "any")],
        "",
    ),
    "pad_symmetric": (
        lambda a: gnp.pad(a, ((1, 4),), mode="symmetric"),
        lambda a: np.pad(a, ((1, 4),), mode="symmetric"),
        [((3,), "any")],
        "",
    ),
    "pad_wrap": (
        lambda a: gnp.pad(a, ((2, 5), (1, 0)), mode="wrap"),
        lambda a: np.pad(a, ((2, 5), (1, 0)), mode="wrap"),
        [((3, 2), "any")],
        "",
    ),
    "fliplr": (gnp.fliplr, np.fliplr, [((2, 3), "any"), ((2, 2, 2), "any")], "f32 cs"),
    "flipud": (gnp.flipud, np.flipud, [((3,), "any"), ((3, 2), "any")], "f32"),
    "rot90": (gnp.rot90, np.rot90, [((2, 3), "any")], "f32 cs"),
    "rot90_k2": (lambda m: gnp.rot90(m, 2), lambda m: np.rot90(m, 2), [((2, 3), "any")], ""),
    "rot90_k3": (lambda m: gnp.rot90(m, 3), lambda m: np.rot90(m, 3), [((2, 3), "any")], ""),
    "rot90_axes": (
        lambda m: gnp.rot90(m, -1, axes=(1, 2)),
        lambda m: np.rot90(m, -1, axes=(1, 2)),
        [((2, 3, 2), "any")],
        "",
    ),
    "fmax": (
        gnp.fmax,
        np.fmax,
        [(((3,), (3,)), ("lowfrac", "highfrac")), (((2, 3), (3,)), ("highfrac", "lowfrac"))],
        "f32 cs",
    ),
    "fmin": (gnp.fmin, np.fmin, [(((3,), (2, 3)), ("lowfrac", "highfrac"))], "f32 cs"),
    "nan_to_num": (gnp.nan_to_num, np.nan_to_num, [((3,), "any")], "f32 cs"),
    "logaddexp2": (
        gnp.logaddexp2,
        np.logaddexp2,
        [(((3,), (3,)), ("any", "any")), (((2, 1), (3,)), ("any", "any"))],
        "f32 cs hess",
    ),
    "atleast_2d": (gnp.atleast_2d, np.atleast_2d, [((), "any"), ((3,), "any")], "f32"),
    "atleast_3d": (gnp.atleast_3d, np.atleast_3d, [((3,), "any"), ((2, 3), "any")], ""),
    "atleast_1d": (gnp.atleast_1d, np.atleast_1d, [((), "any")], ""),
    "einsum_ellipsis_middle": (
        lambda a, b: gnp.einsum("i...j,j...->...i", a, b),
        lambda a, b: np.einsum("i...j,j...->...i", a, b),
        [(((2, 3, 4), (4, 3)), ("any", "any")), (((2, 1, 4), (4, 3)), ("any", "any"))],
        "f32 cs hess",
    ),
    "einsum_ellipsis_implicit": (
        lambda a, b: gnp.einsum("...ij,...jk", a, b),
        lambda a, b: np.einsum("...ij,...jk", a, b),
        [(((2, 2, 3), (3, 2)), ("any", "any"))],
        "",
    ),
    "sum_of_list": (
        lambda a, b: gnp.sum([a, b * 2.0, a * b]),
        lambda a, b: np.sum([a, b * 2.0, a * b]),
        [(((3,), (3,)), ("any", "any"))],
        "f32 cs hess",
    ),
    "sum_of_list_axis": (
        lambda a, b: gnp.sum([a, b], axis=0),
        lambda a, b: np.sum([a, b], axis=0),
        [(((2, 2), (2, 2)), ("any", "any"))],
        "",
    ),
    "max_of_list": (
        lambda a, b: gnp.max([a, b], axis=0),
        lambda a, b: np.max([a, b], axis=0),
        [(((4,), (4,)), ("lowfrac", "highfrac"))],
        "f32 cs",
    ),
    "min_of_list": (
        lambda a, b: gnp.min((a, b)),
        lambda a, b: np.min((a, b)),
        [(((3,), (3,)), ("distinct", "distinct"))],
        "",
    ),
    "mean_of_list": (
        lambda a, b: gnp.mean([a, b, 1.0]),
        lambda a, b: np.mean([a, b, 1.0]),
        [(((), ()), ("any", "any"))],
        "cs hess",
    ),
    "prod_of_list": (
        lambda a, b: gnp.prod([a, b], axis=0),
        lambda a, b: np.prod([a, b], axis=0),
        [(((3,), (3,)), ("any", "any"))],
        "",
    ),
}


def _args(name, config, seed):
    rng = np.random.default_rng(seed)
    if "mod" in CASES[name][3].split():
        return _mod_args(rng, *config)
    shapes, kinds = config
    if isinstance(kinds, str):
        return [sample(rng, shapes, kinds)]
    if name == "min_of_list":  # distinct across both operands
        both = sample(rng, (2, *shapes[0]), "distinct")
        return [both[0], both[1]]
    return [sample(rng, s, k) for s, k in zip(shapes, kinds)]


PARAMS = [(name, i) for name, case in CASES.items() for i in range(len(case[2]))]


@pytest.mark.parametrize("name, i", PARAMS, ids=[f"{n}-{i}" for n, i in PARAMS])
def test_values_and_derivatives(name, i):
    fn, np_fn, configs, _ = CASES[name]
    args = _args(name, configs[i], seed=i + len(name))
    check_op(fn, np_fn, args, seed=i)


def _scalarized(fn, np_fn, args):
    w = np.random.default_rng(7).normal(size=np.shape(np_fn(*args)))
    return (lambda *a: gnp.sum(fn(*a) * w)), (lambda *a: np.sum(np_fn(*a) * w))


def _flagged(flag):
    return [n for n, case in CASES.items() if flag in case[3].split()]


@pytest.mark.parametrize("name", _flagged("f32"))
def test_float32_stays_float32(name):
    fn, np_fn, configs, _ = CASES[name]
    args64 = _args(name, configs[0], seed=3)
    args32 = [a.astype(np.float32) for a in args64]
    graph = gs.trace(fn, *args32)
    assert graph.outputs[0].spec.dtype == "float32"
    got = ENG.evaluate(graph, *args32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np_fn(*args64), rtol=2e-5, atol=2e-5)
    scalar, _ = _scalarized(fn, np_fn, args64)
    sgraph = gs.trace(lambda *a: gnp.astype(scalar(*a), "float32"), *args32)
    value, grads = ENG.value_and_grad(sgraph, *args32, argnums=tuple(range(len(args32))))
    assert value.dtype == np.float32 and all(g.dtype == np.float32 for g in grads)


@pytest.mark.parametrize("name", _flagged("cs"))
def test_complex_step(name):
    fn, np_fn, configs, _ = CASES[name]
    args = _args(name, configs[0], seed=5)
    scalar, _ = _scalarized(fn, np_fn, args)
    graph = gs.trace(scalar, *args)
    report = ENG.check_grad(graph, *args, method="complex")
    assert report.ok, report
    assert report.max_rel_error < 1e-10


@pytest.mark.parametrize("name", _flagged("hess"))
def test_second_order(name):
    fn, np_fn, configs, _ = CASES[name]
    args = _args(name, configs[0], seed=9)
    scalar, _ = _scalarized(fn, np_fn, args)
    check_hessian(scalar, args)


@pytest.mark.parametrize("name", sorted(CASES))
def test_wire_round_trip(name):
    fn, np_fn, configs, _ = CASES[name]
    args = _args(name, configs[-1], seed=13)
    graph = gs.trace(fn, *args)
    again = gs.Graph.from_bytes(graph.to_bytes())
    np.testing.assert_array_equal(ENG.evaluate(again, *args), ENG.evaluate(graph, *args))
    scalar, _ = _scalarized(fn, np_fn, args)
    sgraph = gs.trace(scalar, *args)
    sagain = gs.Graph.from_bytes(sgraph.to_bytes())
    np.testing.assert_array_equal(ENG.grad(sagain, *args), ENG.grad(sgraph, *args))


# ---- values and special points -------------------------------------------------------------


def test_mod_matches_numpy_on_signs_and_integers():
    x = np.array([5.0, -5.0, 5.0, -5.0, 0.0, 7.5])
    y = np.array([3.0, 3.0, -3.0, -3.0, 2.0, 2.5])
    g = gs.trace(gnp.mod, x, y)
    np.testing.assert_array_equal(ENG.evaluate(g, x, y), np.mod(x, y))
    _, (gx, gy) = ENG.value_and_grad(
        gs.trace(lambda a, b: gnp.sum(a % b), x, y), x, y, argnums=(0, 1)
    )
    np.testing.assert_array_equal(gx, np.ones(6))
    np.testing.assert_array_equal(gy, -np.floor(x / y))
    xi, yi = np.array([7, -7, 7], np.int64), np.array([3, 3, -3], np.int64)
    gi = gs.trace(lambda a, b: a % b, xi, yi)
    assert gi.outputs[0].spec.dtype == "int64"
    np.testing.assert_array_equal(ENG.evaluate(gi, xi, yi), xi % yi)
    with pytest.raises(gs.GraphError):
        gs.trace(gnp.mod, np.ones(2, complex), np.ones(2, complex))


def test_complex_parts_values():
    z = np.array([1 + 2j, -3 - 0.5j, 0.25 + 0j])
    for name in ("real", "imag", "conj", "conjugate", "angle"):
        g = gs.trace(getattr(gnp, name), z)
        got = ENG.evaluate(g, z)
        np.testing.assert_array_equal(got, getattr(np, name)(z))
        assert got.dtype == getattr(np, name)(z).dtype
    g = gs.trace(lambda v: (v.real, v.imag, v.conj()), z)
    for got, want in zip(ENG.evaluate(g, z), (z.real, z.imag, z.conj())):
        np.testing.assert_array_equal(got, want)
    x = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(ENG.evaluate(gs.trace(gnp.angle, x), x), np.angle(x))
    np.testing.assert_array_equal(ENG.evaluate(gs.trace(gnp.imag, x), x), np.imag(x))


def test_complex_parts_exact_for_non_finite_values():
    z = np.array([complex(np.nan, 1.0), complex(1.0, np.inf), complex(-np.inf, -2.0)])
    g = gs.trace(lambda v: (gnp.real(v), gnp.imag(v), gnp.conj(v)), z)
    for got, want in zip(ENG.evaluate(g, z), (z.real, z.imag, z.conj())):
        np.testing.assert_array_equal(got, want)


def test_complex_parts_gradients():
    """d/dz of real(z * w) etc. through complex intermediates, from the real inputs."""
    x, y = np.array([0.3, -1.2]), np.array([0.7, 0.4])
    g = gs.trace(lambda a, b: gnp.sum(gnp.abs(gnp.conj(_z(a, b))) ** 2), x, y)
    _, (gx, gy) = ENG.value_and_grad(g, x, y, argnums=(0, 1))
    np.testing.assert_allclose(gx, 2 * x)
    np.testing.assert_allclose(gy, 2 * y)


def test_sinc_at_zero_to_fourth_order():
    x = np.array(0.0)
    g = gs.trace(gnp.sinc, x)
    assert ENG.evaluate(g, x) == 1.0
    assert ENG.grad(g, x) == 0.0
    np.testing.assert_allclose(ENG.hessian(g, x), -(np.pi**2) / 3, rtol=1e-12)
    # near 0 the Taylor polynomial: NumPy's values to the last bits
    h = np.array([1e-3, -1e-3, 0.009, 0.011])
    near = ENG.evaluate(gs.trace(gnp.sinc, h), h)
    np.testing.assert_allclose(near, np.sinc(h), rtol=1e-15)


def test_sort_ties_and_argsort():
    x = np.array([[3.0, 1.0, 3.0, 2.0], [0.5, 0.5, -1.0, 4.0]])
    g = gs.trace(
        lambda a: (gnp.sort(a), gnp.argsort(a), a.argsort(axis=0), gnp.argsort(a, None)), x
    )
    got = ENG.evaluate(g, x)
    np.testing.assert_array_equal(got[0], np.sort(x))
    np.testing.assert_array_equal(got[1], np.argsort(x, kind="stable"))
    np.testing.assert_array_equal(got[2], np.argsort(x, axis=0, kind="stable"))
    np.testing.assert_array_equal(got[3], np.argsort(x, axis=None, kind="stable"))
    assert g.outputs[1].spec.dtype == "int64"
    # a tie: the gradient is a permutation (each element gets its own cotangent)
    w = np.arange(1.0, 5.0)
    gg = gs.trace(lambda a: gnp.sum(gnp.sort(a) * w), x[0])
    np.testing.assert_array_equal(ENG.grad(gg, x[0]), [3.0, 1.0, 4.0, 2.0])
    # argsort is not differentiable: its result does not depend on x to first order
    ga = gs.trace(lambda a: gnp.sum(gnp.astype(gnp.argsort(a), "float64") * a), x[0])
    np.testing.assert_array_equal(ENG.grad(ga, x[0]), np.argsort(x[0], kind="stable"))


def test_sort_batched_jacobian():
    x = sample(np.random.default_rng(1), (3, 4), "distinct")
    g = gs.trace(lambda a: gnp.sort(a, axis=1), x)
    jf = ENG.jacobian(g, x, mode="fwd")
    jr = ENG.jacobian(g, x, mode="rev")
    np.testing.assert_array_equal(jf, jr)
    assert jf.shape == (3, 4, 3, 4)


def test_nan_to_num_values_and_gradient():
    x = np.array([np.nan, np.inf, -np.inf, 1.5, -2.0])
    for kwargs in ({}, {"nan": 1.0, "posinf": 7.0, "neginf": -7.0}):
        g = gs.trace(lambda a: gnp.nan_to_num(a, **kwargs), x)
        np.testing.assert_array_equal(ENG.evaluate(g, x), np.nan_to_num(x, **kwargs))
    g = gs.trace(lambda a: gnp.sum(gnp.nan_to_num(a)), x)
    np.testing.assert_array_equal(ENG.grad(g, x), [0.0, 0.0, 0.0, 1.0, 1.0])
    x32 = x.astype(np.float32)
    out = ENG.evaluate(gs.trace(gnp.nan_to_num, x32), x32)
    np.testing.assert_array_equal(out, np.nan_to_num(x32))
    z = np.array([complex(np.nan, np.inf), 1 - 2j])
    np.testing.assert_array_equal(ENG.evaluate(gs.trace(gnp.nan_to_num, z), z), np.nan_to_num(z))
    xi = np.array([1, 2])
    assert gnp.nan_to_num(xi) is xi


def test_fmax_fmin_ignore_nan_and_isnan_isinf():
    x = np.array([np.nan, 1.0, np.nan, -np.inf])
    y = np.array([2.0, np.nan, np.nan, 0.0])
    g = gs.trace(lambda a, b: (gnp.fmax(a, b), gnp.fmin(a, b), gnp.isnan(a), gnp.isinf(a)), x, y)
    for got, want in zip(
        ENG.evaluate(g, x, y), (np.fmax(x, y), np.fmin(x, y), np.isnan(x), np.isinf(x))
    ):
        np.testing.assert_array_equal(got, want)
    g = gs.trace(lambda a, b: gnp.sum(gnp.fmax(a, b)), x, y)
    _, (gx, gy) = ENG.value_and_grad(g, x, y, argnums=(0, 1))
    np.testing.assert_array_equal(gx, [0.0, 1.0, 0.0, 0.0])
    np.testing.assert_array_equal(gy, [1.0, 0.0, 0.0, 1.0])


def test_hypot_and_arctan2_extremes():
    x, y = np.array([1e200, 0.0, -1.0]), np.array([1e200, 0.0, 0.0])
    np.testing.assert_array_equal(ENG.evaluate(gs.trace(gnp.hypot, x, y), x, y), np.hypot(x, y))
    g = gs.trace(lambda a, b: gnp.sum(gnp.hypot(a, b)), x[1:2], y[1:2])
    _, grads = ENG.value_and_grad(g, x[1:2], y[1:2], argnums=(0, 1))
    assert all(np.isfinite(v).all() for v in grads)
    q = np.array([[1.0, -1.0], [-1.0, -1.0], [0.0, -2.0]])
    np.testing.assert_array_equal(
        ENG.evaluate(gs.trace(gnp.arctan2, q[:, 0], q[:, 1]), q[:, 0], q[:, 1]),
        np.arctan2(q[:, 0], q[:, 1]),
    )


def test_arctan2_complex_step_angle_is_numpys_in_every_quadrant():
    """The complex step evaluates arctan2 as arctan(y / x) plus a quarter turn from the real
    parts; a function of the angle (its square) then sees NumPy's angle: its derivatives
    2 theta x / r**2 and -2 theta y / r**2 need theta itself, also for x < 0 and 0 <= y < 1."""
    y, x = np.array([0.5, 0.0, 2.0, -0.5, 1.5]), np.array([-1.0, -1.0, -3.0, -1.0, 2.0])
    graph = gs.trace(lambda y, x: gnp.sum(gnp.arctan2(y, x) ** 2), y, x)
    theta, r2 = np.arctan2(y, x), x * x + y * y
    ny, nx = ENG.check_grad(graph, y, x, method="complex").numeric
    np.testing.assert_allclose(ny, 2 * theta * x / r2, rtol=1e-12)
    np.testing.assert_allclose(nx, -2 * theta * y / r2, rtol=1e-12, atol=1e-15)


def test_creation_and_shapes():
    np.testing.assert_array_equal(gnp.linspace(0, 1, 5), np.linspace(0, 1, 5))
    np.testing.assert_array_equal(
        gnp.linspace(0, 2, 4, endpoint=False), np.linspace(0, 2, 4, endpoint=False)
    )
    g = gs.trace(lambda a: a * gnp.linspace(0.0, 1.0, 3), np.ones(3))
    np.testing.assert_array_equal(ENG.evaluate(g, np.ones(3)), np.linspace(0, 1, 3))
    for fn in (gnp.atleast_1d, gnp.atleast_2d, gnp.atleast_3d):
        npf = getattr(np, fn.__name__)
        for shape in ((), (2,), (2, 3), (2, 3, 1, 2)):
            x = np.ones(shape)
            assert gs.trace(fn, x).outputs[0].spec.shape == npf(x).shape
        g = gs.trace(lambda a, b: fn(a, b), 1.0, np.ones(2))
        assert [o.spec.shape for o in g.outputs] == [v.shape for v in npf(1.0, np.ones(2))]


def test_shape_errors_follow_numpy():
    x = gs.Spec((5,))
    for fn, exc in [
        (lambda a: gnp.split(a, 2), ValueError),
        (lambda a: gnp.vsplit(a, 1), ValueError),
        (lambda a: gnp.fliplr(a), ValueError),
        (lambda a: gnp.diagonal(a), ValueError),
        (lambda a: gnp.cross(a, a), ValueError),
        (lambda a: gnp.diff(a, -1), ValueError),
        (lambda a: gnp.pad(a, 1, mode="median"), NotImplementedError),
        (lambda a: gnp.rot90(a.reshape(5, 1), axes=(0, 0)), ValueError),
    ]:
        with pytest.raises(exc):
            gs.trace(fn, x)


def test_list_reductions_and_tracer_methods():
    a, b = np.array([1.0, -2.0]), np.array([0.5, 3.0])
    g = gs.trace(
        lambda u, v: (
            gnp.max([u, v]),
            gnp.mean([u, v], axis=0),
            gnp.std([u, v]),
            gnp.argmax([u, v]),
        ),
        a,
        b,
    )
    for got, want in zip(
        ENG.evaluate(g, a, b),
        (np.max([a, b]), np.mean([a, b], axis=0), np.std([a, b]), np.argmax([a, b])),
    ):
        np.testing.assert_allclose(got, want)
    m = np.arange(9.0).reshape(3, 3)
    g = gs.trace(
        lambda x: (x.diagonal(1), x.trace(), x.repeat(2, axis=0), x.take([0, 2]), x.clip(1, 5)), m
    )
    for got, want in zip(
        ENG.evaluate(g, m),
        (m.diagonal(1), m.trace(), m.repeat(2, axis=0), m.take([0, 2]), m.clip(1, 5)),
    ):
        np.testing.assert_array_equal(got, want)


def test_concrete_inputs_compute_with_numpy():
    x = np.array([[1.0, -2.0, 3.0], [0.5, 4.0, -1.0]])
    for name, args in [
        ("sort", (x,)),
        ("argsort", (x,)),
        ("tril", (x,)),
        ("roll", (x, 1)),
        ("pad", (x, 1)),
        ("kron", (x, x)),
        ("mod", (x, 1.5)),
        ("arctan2", (x, x[::-1])),
        ("diag", (x,)),
        ("trace", (x,)),
        ("tile", (x, 2)),
        ("repeat", (x, 2)),
    ]:
        np.testing.assert_allclose(getattr(gnp, name)(*args), getattr(np, name)(*args))


@pytest.mark.parametrize(
    "fn, index_shape, high",
    [
        (lambda a, i: a[i], (2, 2), 3),
        (lambda a, i: a[:, i], (2,), 4),
        (lambda a, i: a[:, i, i], (3,), 4),
        (lambda a, i: a[i, :, i], (2, 3), 3),
        (lambda a, i: a[1:, i], (), 4),
        (lambda a, i: a[None, :, i], (2,), 4),
        (lambda a, i: a[0, i], (2,), 4),
    ],
)
@pytest.mark.parametrize("x_batched", [True, False])
def test_getitem_batch_rule_with_batched_index_arrays(fn, index_shape, high, x_batched):
    """Batching over index arrays (sort's argsort under the complex step, or any batch of a
    gather whose indices depend on the batched input)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 5))
    idx = rng.integers(0, high, (2, *index_shape))
    graph = gs.trace(fn, x, idx[0])
    xs = np.stack([x, 2 * x]) if x_batched else x
    batched = batch(Program(graph, None), [x_batched, True], 2).graph
    want = np.stack([fn(xs[k] if x_batched else xs, idx[k]) for k in range(2)])
    np.testing.assert_array_equal(ENG.evaluate(batched, xs, idx), want)


def test_linspace_with_a_traced_bound():
    graph = gs.trace(lambda a: np.linspace(0.0, a, 5), 1.0)
    np.testing.assert_allclose(gs.Engine().evaluate(graph, 2.0), np.linspace(0.0, 2.0, 5))
    grad = gs.Engine().grad(gs.trace(lambda a: gnp.sum(gnp.linspace(1.0, a, 5)), 1.0), 3.0)
    assert np.isclose(grad, np.linspace(0.0, 1.0, 5).sum())
