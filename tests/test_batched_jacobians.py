"""Jacobians and Hessians in one batched pass over the one-hot basis (engine/one_hot.py): the
products and contractions with the basis are built without it, and every result matches a
closed form, a loop of single JVPs (no batching) and finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from gradserve.engine.basis import BasisCache
from gradserve.engine.graph import Graph, Node, Port, Spec
from gradserve.engine.ops.contraction import _einsum_impl
from gradserve.engine.transforms import Program, batch

import gradserve as gs
import gradserve.numpy as gnp

rng = np.random.default_rng(11)
N = 7
A = rng.standard_normal((N, N))
X = rng.standard_normal(N)


def numeric_jacobian(f, x, h=1e-6):
    """Central differences: J[..., k] = d f / d x.flat[k], shaped out.shape + x.shape."""
    x = np.asarray(x, dtype=float)
    columns = []
    for k in range(x.size):
        e = np.zeros(x.size)
        e[k] = h
        e = e.reshape(x.shape)
        columns.append((f(x + e) - f(x - e)) / (2 * h))
    out = np.stack(columns, axis=-1)
    return out.reshape(out.shape[:-1] + x.shape)


def jvp_loop(eng, graph, x):
    """The Jacobian column by column: one unbatched JVP per basis vector."""
    cols = []
    for k in range(x.size):
        e = np.zeros(x.size, x.dtype)
        e[k] = 1.0
        cols.append(eng.jvp(graph, (x,), (e.reshape(x.shape),))[1])
    out = np.stack(cols, axis=-1)
    return out.reshape(out.shape[:-1] + x.shape)


def jacobian_plans(eng):
    return [p for k, p in eng._plans.items() if k[1] == "jacobian"]


def reads_basis(plan):
    name = plan.graph.inputs[-1].name
    return name in plan.graph.output_names or any(name in n.inputs for n in plan.nodes)


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_tanh_of_a_matrix_product_matches_the_closed_form_without_reading_the_basis(mode):
    graph = gs.trace(lambda x: gnp.tanh(A @ x) * x, X)
    eng = gs.Engine()
    got = eng.jacobian(graph, X, mode=mode)
    t = np.tanh(A @ X)
    want = np.diag(t) + (X * (1 - t * t))[:, None] * A
    assert np.allclose(got, want, rtol=1e-13, atol=1e-14)
    (plan,) = jacobian_plans(eng)
    # A @ basis became A itself, diag products a diagonal add: no (N, N) x (N, N) matmul
    assert not reads_basis(plan)
    for node in plan.nodes:
        if node.op == "einsum":
            assert sum(len(plan.graph.avals[n].shape) == 2 for n in node.inputs) <= 1
    assert np.array_equal(eng.jacobian(graph, X, mode=mode), got)  # the cached plan again


@pytest.mark.parametrize("mode", ["fwd", "rev"])
@pytest.mark.parametrize(
    "name, fn",
    [
        ("basis minus dense", lambda x: x - gnp.sin(A @ x)),
        ("dense minus basis", lambda x: gnp.sin(A @ x) - 3.0 * x),
        ("scaled twice then added", lambda x: (x * gnp.cos(x)) * 2.0 + A @ (x * x)),
        ("contraction on the left", lambda x: x @ A * gnp.exp(x)),
        ("basis summed alone", lambda x: gnp.sum(x) * (A @ x)),
        ("outer product keeps the basis axis", lambda x: gnp.outer(x, A @ x)),
        ("basis times basis", lambda x: x * x + x),
        ("diagonal of a contraction", lambda x: gnp.einsum("ij,j->i", A, x) * x),
    ],
)
def test_vector_functions_match_a_jvp_loop_and_finite_differences(name, fn, mode):
    graph = gs.trace(fn, X)
    eng = gs.Engine()
    got = eng.jacobian(graph, X, mode=mode)
    assert np.allclose(got, jvp_loop(eng, graph, X), rtol=1e-12, atol=1e-12)
    numeric = numeric_jacobian(lambda x: eng.evaluate(graph, x), X)
    assert np.allclose(got, numeric, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_a_matrix_input_unravels_the_basis_rows(mode):
    W = rng.standard_normal((3, 3))
    M = rng.standard_normal((3, 2))

    def f(m):  # contractions over both axes, products with unbatched values of the row shape
        return gnp.tanh(W @ m) * 2.0 + gnp.sum(m * M) - m[0] * m[1] + m

    graph = gs.trace(f, M)
    eng = gs.Engine()
    got = eng.jacobian(graph, M, mode=mode)
    assert got.shape == (3, 2, 3, 2)
    numeric = numeric_jacobian(lambda m: eng.evaluate(graph, m), M)
    assert np.allclose(got, numeric, rtol=1e-6, atol=1e-7)
    if mode == "fwd":
        assert np.allclose(got, jvp_loop(eng, graph, M), rtol=1e-12, atol=1e-13)


def test_float32_inputs_with_a_float64_constant():
    x32 = X.astype(np.float32)
    graph = gs.trace(lambda x: gnp.tanh(A @ x) * x - x, x32)
    eng = gs.Engine()
    for mode in ("fwd", "rev"):
        got = eng.jacobian(graph, x32, mode=mode)
        want = jvp_loop(eng, graph, x32)
        if mode == "fwd":  # the output's dtype (reverse mode gives the input's)
            assert got.dtype == eng.evaluate(graph, x32).dtype
        assert np.allclose(got, want, rtol=1e-5, atol=1e-6)


def test_complex_inputs():
    z = X + 1j * rng.standard_normal(N)
    graph = gs.trace(lambda z: (A @ z) * z + 2.0 * z, z)
    eng = gs.Engine()
    want = np.diag(A @ z + 2.0) + z[:, None] * A  # holomorphic: d/dz
    for mode in ("fwd", "rev"):
        got = eng.jacobian(graph, z, mode=mode)
        assert got.dtype == np.complex128
        if mode == "fwd":
            assert np.allclose(got, want, rtol=1e-12)
        else:  # reverse mode gives the conjugate transpose's rows conjugated back: the same J
            assert np.allclose(got, jvp_loop(eng, graph, z), rtol=1e-12)


def test_rosenbrock_hessian_is_the_tridiagonal_closed_form():
    n = 9
    x = rng.uniform(-1.5, 2.0, n)

    def rosenbrock(x):
        return gnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    graph = gs.trace(rosenbrock, x)
    want = np.zeros((n, n))
    a, b = x[:-1], x[1:]
    want[np.arange(n - 1), np.arange(n - 1)] += 1200 * a * a - 400 * b + 2
    want[np.arange(1, n), np.arange(1, n)] += 200
    want[np.arange(n - 1), np.arange(1, n)] = -400 * a
    want[np.arange(1, n), np.arange(n - 1)] = -400 * a
    eng = gs.Engine()
    assert np.allclose(eng.hessian(graph, x), want, rtol=1e-12, atol=1e-10)
    assert np.allclose(gs.hessian(rosenbrock)(x), want, rtol=1e-12, atol=1e-10)


def test_hessian_of_a_quadratic_form_and_gs_hessian_agree():
    S = A + A.T

    def f(x):
        return x @ (A @ x) + gnp.sum(gnp.sin(x))

    want = S - np.diag(np.sin(X))
    graph = gs.trace(f, X)
    assert np.allclose(gs.Engine().hessian(graph, X), want, rtol=1e-12, atol=1e-12)
    assert np.allclose(gs.hessian(f)(X), want, rtol=1e-12, atol=1e-12)
    for jac in (gs.jacfwd, gs.jacrev):
        assert np.allclose(jac(gs.grad(f))(X), want, rtol=1e-12, atol=1e-12)


def test_the_passes_are_looked_up_once_per_signature(monkeypatch):
    graph = gs.trace(lambda x: gnp.tanh(A @ x) * x, X)
    eng = gs.Engine()
    first = eng.jacobian(graph, X, mode="rev")
    calls = []
    original = gs.Engine._jacobian_plans
    monkeypatch.setattr(gs.Engine, "_jacobian_plans", lambda *a: calls.append(a) or original(*a))
    assert np.array_equal(eng.jacobian(graph, X, mode="rev"), first)
    assert calls == []
    eng.jacobian(graph, X, mode="fwd")  # another mode: other passes
    assert len(calls) == 1


def test_the_basis_cache_is_bounded_by_bytes():
    cache = BasisCache(max_bytes=3 * 8 * 10 * 10)  # three 10 x 10 float64 identities
    specs = [gs.Spec((10,), "float64"), gs.Spec((2, 5), "float64"), gs.Spec((10,), "float32")]
    for spec in specs:
        basis = cache(spec)
        assert basis.shape == (10,) + spec.shape and basis.dtype == spec.dtype
        assert np.array_equal(basis.reshape(10, 10), np.eye(10))
        assert not basis.flags.writeable
    assert cache(specs[0]) is cache(specs[0])
    assert cache.bytes <= cache.max_bytes
    cache(gs.Spec((5, 2), "float64"))  # one more: the least recently used (2, 5) goes
    assert cache.bytes <= cache.max_bytes
    assert gs.Spec((2, 5), "float64") not in cache._entries
    big = cache(gs.Spec((100,), "float64"))  # over the bound alone: made, not kept
    assert np.array_equal(big, np.eye(100))
    assert gs.Spec((100,), "float64") not in cache._entries
    assert cache.bytes <= cache.max_bytes


@pytest.mark.parametrize(
    "subscripts, shapes",
    [("i,ij->ij", [(4,), (4, 3)]), ("ij,k->kij", [(2, 3), (4,)]), ("ij,ij->ij", [(3, 2)] * 2)],
)
def test_products_that_sum_nothing_match_numpy(subscripts, shapes):
    arrays = [rng.standard_normal(s) for s in shapes]
    got = _einsum_impl(*arrays, subscripts=subscripts)
    assert np.allclose(got, np.einsum(subscripts, *arrays), rtol=1e-15, atol=0)


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_an_integer_output_has_zero_rows(mode):
    graph = gs.trace(lambda x: (gnp.argsort(x), gnp.sin(x)), X)
    eng = gs.Engine()
    J_order, J_sin = eng.jacobian(graph, X, mode=mode)
    assert J_order.shape == (N, N) and not J_order.any()
    assert np.allclose(J_sin, np.diag(np.cos(X)), rtol=1e-14, atol=0)
    empty = gs.trace(gnp.argsort, np.zeros(0))
    assert eng.jacobian(empty, np.zeros(0), mode=mode).shape == (0, 0)


def test_empty_inputs_give_empty_jacobians_and_hessians():
    """A zero-size input: the one-hot basis has no rows (nothing for its diagonal rules to
    write), and the results are the empty matrices of the right shape."""
    x = np.array([], dtype=np.float64)
    eng = gs.Engine()
    hess = eng.hessian(gs.trace(lambda x: gnp.sum(gnp.logaddexp(x, x)), x), x)
    assert hess.shape == (0, 0) and hess.dtype == np.float64
    graph = gs.trace(lambda x: gnp.tanh(x) * x, x)
    for mode in ("fwd", "rev"):
        jac = eng.jacobian(graph, x, mode=mode)
        assert jac.shape == (0, 0) and jac.dtype == np.float64


T = np.random.default_rng(12).standard_normal((4, 2, 3))  # a 3-D operand for einsum
C = np.array([1.0, -2.0, 3.0])


@pytest.mark.parametrize("mode", ["fwd", "rev"])
@pytest.mark.parametrize(
    "name, fn, x, want",
    [
        (  # the basis has a 2-D row: its axes are flattened into the batch axis
            "matrix input contracted",
            lambda x: gnp.einsum("ij,ijk->k", x, T.reshape(2, 3, 4)),
            X[:6].reshape(2, 3),
            np.moveaxis(T.reshape(2, 3, 4), 2, 0),
        ),
        (  # kept as a transpose of T, then scaled by a vector along the last axis
            "contraction scaled along its last axis",
            lambda x: gnp.einsum("i,ijk->jk", x, T) * C,
            X[:4],
            np.moveaxis(T * C, 0, -1),
        ),
        (  # three operands: the basis contracted with both others, not the first alone
            "three operands",
            lambda x: gnp.einsum("i,ijk,jk->", x, T, T[0]),
            X[:4],
            np.einsum("ijk,jk->i", T, T[0]),
        ),
    ],
)
def test_contractions_with_the_basis_match_their_closed_forms(name, fn, x, want, mode):
    """einsum's symbolic rules on the basis: the Jacobian of a contraction linear in x is the
    other operands contracted together, its axes in the output's order then x's."""
    got = gs.Engine().jacobian(gs.trace(fn, x), x, mode=mode)
    assert got.shape == want.shape
    assert np.allclose(got, want, rtol=1e-13, atol=1e-13)


M_BOOL = np.array([True, False, True, True, False, True, False])
M_INT = np.array([1, 0, -3, 2, 5, 0, 7])


@pytest.mark.parametrize("mode", ["fwd", "rev"])
@pytest.mark.parametrize(
    "name, fn, want",
    [
        ("basis times a bool mask, minus dense", lambda x: x * M_BOOL - A @ x, np.diag(M_BOOL) - A),
        ("basis times integers, minus dense", lambda x: x * M_INT - A @ x, np.diag(M_INT) - A),
        (
            "float32 dense plus the scaled basis",
            lambda x: 3.0 * x + gnp.astype(x, np.float32),
            4.0 * np.eye(N),
        ),
    ],
)
def test_sums_with_the_basis_of_mixed_dtypes_give_the_float64_jacobian(name, fn, want, mode):
    """The diagonal add of a scaled basis casts the scale (bool, int) and the dense side
    (float32) to the sum's dtype before writing the diagonal."""
    got = gs.Engine().jacobian(gs.trace(fn, X), X, mode=mode)
    assert got.dtype == np.float64
    assert np.allclose(got, want, rtol=1e-13, atol=1e-13)


def test_a_row_scale_of_a_transposed_contraction_is_reshaped_not_transposed():
    """(A @ x) * c forward: A @ basis is A transposed, kept symbolic; the scale c goes into A's
    layout by a reshape (only its size-1 axis moves), so the plan's one transpose is the
    Jacobian's own."""
    c = np.linspace(-1.0, 2.0, N)
    eng = gs.Engine()
    got = eng.jacobian(gs.trace(lambda x: (A @ x) * c, X), X, mode="fwd")
    assert np.allclose(got, c[:, None] * A, rtol=1e-14, atol=0)
    (plan,) = jacobian_plans(eng)
    transposed = [plan.graph.avals[n.inputs[0]].shape for n in plan.nodes if n.op == "transpose"]
    assert [tuple(s) for s in transposed] == [(N, N)]


@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_a_one_element_input_gets_its_diagonal_add_without_the_basis(mode):
    """The diagonal add has a single position when the basis has one row: tanh(a x) * x still
    never reads the basis."""
    a = np.array([[1.5]])
    x = np.array([0.7])
    eng = gs.Engine()
    got = eng.jacobian(gs.trace(lambda x: gnp.tanh(a @ x) * x, x), x, mode=mode)
    t = np.tanh(1.5 * 0.7)
    assert np.allclose(got, [[t + 0.7 * 1.5 * (1 - t * t)]], rtol=1e-14, atol=0)
    (plan,) = jacobian_plans(eng)
    assert not reads_basis(plan)


@pytest.mark.parametrize("op, sign", [("add", 1.0), ("subtract", -1.0)])
def test_a_batched_pass_keeps_an_unbatched_operand_of_the_batched_shape_unbatched(op, sign):
    """batch() with x as the basis and y unbatched, y's shape equal to the basis's own (3, 3):
    x + y broadcasts x against y, so each of the 3 rows of the result is e_b + y (3 x 3), not
    a diagonal written into y."""
    graph = Graph(
        [Port("x", Spec((3,), "float64")), Port("y", Spec((3, 3), "float64"))],
        {},
        [Node(op, ("x", "y"), ("z",), {})],
        ["z"],
    )
    batched = batch(Program(graph, None), [True, False], 3, basis=0)
    y = np.arange(9.0).reshape(3, 3)
    got = gs.Engine().evaluate(batched.graph, np.eye(3), y)
    assert got.shape == (3, 3, 3)
    assert np.array_equal(got, np.eye(3)[:, None, :] + sign * y)
