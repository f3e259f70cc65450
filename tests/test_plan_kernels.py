"""Kernels: an op's implementation specialized to its operands' shapes when a plan is built
(`kernel` in engine/primitive.py). A kernel must give exactly what the op's `impl` gives, to
the last bit, dtype and shape included: checked here against `impl` on random operands."""

import numpy as np
import pytest
from gradserve.engine.graph import Spec
from gradserve.engine.primitive import PRIMITIVES

import gradserve as gs
import gradserve.numpy as gnp

RNG = np.random.default_rng(20261202)

SUBSCRIPTS = [
    "ij,j->i",  # matrix @ vector
    "i,ij->j",  # vector @ matrix
    "i,j->ij",  # outer product
    "ij,jk->ik",
    "ij,kj->ik",
    "ji,jk->ki",
    "bij,bjk->bik",  # batched
    "i,i->",  # dot
    "ij,ij->",
    "bi,bi->b",
    "ijk,kl->lij",  # several free axes, output permuted
    "a,bc->abc",  # outer product of a vector and a matrix
    "ab,b->ba",
    "ij,k->i",  # an axis summed inside each operand first
]
# Products that contract nothing run in einsum's own loop, per call: no kernel.
NO_KERNEL = {"i,j->ij", "a,bc->abc", "ab,b->ba"}


def _operands(subscripts, dtype):
    terms = subscripts.split("->")[0].split(",")
    size = {c: int(RNG.integers(1, 30)) for c in set("".join(terms))}
    arrays = [RNG.standard_normal(tuple(size[c] for c in t)) for t in terms]
    if dtype == "complex128":
        arrays = [a + 1j * RNG.standard_normal(a.shape) for a in arrays]
    if dtype == "int64":
        arrays = [np.round(a * 10) for a in arrays]
    return [a.astype(dtype) for a in arrays]


@pytest.mark.parametrize("subscripts", SUBSCRIPTS)
@pytest.mark.parametrize("dtype", ["float64", "float32", "complex128", "int64"])
def test_einsum_kernel_is_the_impl_bit_for_bit(subscripts, dtype):
    einsum = PRIMITIVES["einsum"]
    for _ in range(12):
        arrays = _operands(subscripts, dtype)
        kernel = einsum.kernel(*[Spec(a.shape, a.dtype) for a in arrays], subscripts=subscripts)
        if subscripts in NO_KERNEL:
            assert kernel is None
            continue
        want = einsum.impl(*arrays, subscripts=subscripts)
        got = kernel(*arrays)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert np.array_equal(got, want)
        np.testing.assert_allclose(got, np.einsum(subscripts, *arrays), rtol=1e-5, atol=1e-4)


def test_einsum_without_a_kernel_where_einsum_runs_it():
    einsum = PRIMITIVES["einsum"]
    assert einsum.kernel(Spec((3, 3)), subscripts="ii->i") is None
    assert einsum.kernel(Spec((3,)), Spec((3,)), Spec((3,)), subscripts="i,i,i->") is None


@pytest.mark.parametrize(
    "shape, axes, keepdims",
    [((5,), (0,), False), ((4, 6), (1,), True), ((3, 4, 5), (0, 2), False), ((4, 3), (), False)],
)
@pytest.mark.parametrize("dtype", ["float64", "float32", "int32", "bool", "complex128"])
def test_reduce_sum_kernel_is_the_impl(shape, axes, keepdims, dtype):
    x = (RNG.standard_normal(shape) * 5).astype(dtype)
    prim = PRIMITIVES["reduce_sum"]
    kernel = prim.kernel(Spec(shape, dtype), axes=axes, keepdims=keepdims)
    want, got = prim.impl(x, axes=axes, keepdims=keepdims), kernel(x)
    assert np.asarray(got).dtype == np.asarray(want).dtype
    assert np.shape(got) == np.shape(want) and np.array_equal(got, want)


def test_reshape_kernel_is_the_impl_on_arrays_and_scalars():
    prim = PRIMITIVES["reshape"]
    for x, shape in [(np.arange(6.0), (2, 3)), (np.float64(2.5), (1,)), (np.ones((2, 3)), (6,))]:
        kernel = prim.kernel(Spec(np.shape(x)), shape=shape)
        assert np.array_equal(kernel(x), prim.impl(x, shape=shape))
        assert kernel(x).shape == shape


def test_a_plan_runs_the_kernels():
    """Through a whole call: the results are those of the ops' impls, composed by hand."""
    W, h = RNG.standard_normal((7, 7)), RNG.standard_normal(7)
    graph = gs.trace(lambda W, h: gnp.sum(gnp.reshape(gnp.outer(W @ h, h), (49,))), W, h)
    want = np.sum(np.reshape(np.outer(W @ h, h), (49,)))
    assert gs.Engine().evaluate(graph, W, h) == pytest.approx(want, rel=1e-13)
