"""einsum cases the matmul path does not take or takes with extra work: two operands with a
diagonal (a repeated letter), an axis summed inside one operand only, mixed precisions, and
the arity rule. Values against np.einsum, derivatives against finite differences (check_op)."""

import numpy as np
import pytest
from test_ops import ENG, check_op

import gradserve as gs
import gradserve.numpy as gnp

RNG = np.random.default_rng(20261201)


@pytest.mark.parametrize(
    "subscripts, shapes",
    [
        ("ii,i->i", [(3, 3), (3,)]),  # a diagonal of the first operand
        ("ij,jj->i", [(2, 3), (3, 3)]),  # of the second
        ("iij,jk->ik", [(3, 3, 2), (2, 4)]),
        ("ii,jj->ij", [(2, 2), (3, 3)]),  # of both
    ],
)
def test_two_operands_with_a_diagonal(subscripts, shapes):
    args = [RNG.normal(size=s) for s in shapes]
    check_op(
        lambda a, b: gnp.einsum(subscripts, a, b),
        lambda a, b: np.einsum(subscripts, a, b),
        args,
    )


@pytest.mark.parametrize(
    "subscripts, shapes",
    [
        ("ij,jk->k", [(2, 3), (3, 4)]),  # i summed in the first operand only
        ("ij,kj->i", [(2, 3), (4, 3)]),  # k summed in the second only
        ("ijk,lj->", [(2, 3, 2), (4, 3)]),  # in both, and a scalar result
    ],
)
def test_axes_summed_inside_one_operand(subscripts, shapes):
    args = [RNG.normal(size=s) for s in shapes]
    check_op(
        lambda a, b: gnp.einsum(subscripts, a, b),
        lambda a, b: np.einsum(subscripts, a, b),
        args,
    )


@pytest.mark.parametrize("subscripts", ["ij,jk->ik", "ij,jk->k", "ii,i->i"])
def test_float32_with_float64_sums_in_float64(subscripts):
    """The float32 operand's own sums happen in the result's precision (float64), as
    np.einsum does; its cotangent comes back as float32."""
    a = (RNG.normal(size=(3, 3)) * 1e3).astype(np.float32)
    a[0, 0] = np.float32(1e8)  # float32 sums lose the small terms next to it
    b = RNG.normal(size=(3, 3) if subscripts.startswith("ij,jk") else (3,))
    graph = gs.trace(lambda a, b: gnp.einsum(subscripts, a, b), a, b)
    got = ENG.evaluate(graph, a, b)
    want = np.einsum(subscripts, a.astype(np.float64), b)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-13)
    _, (ga, gb) = ENG.vjp(graph, (a, b), np.ones(want.shape))
    assert ga.dtype == np.float32 and gb.dtype == np.float64
    # sum(out) is linear in a: its derivative at a[idx] is its value at the unit array e_idx
    lhs = subscripts.split("->")[0]
    want_ga = np.zeros(a.shape)
    for idx in np.ndindex(*a.shape):
        unit = np.zeros(a.shape)
        unit[idx] = 1.0
        want_ga[idx] = np.einsum(f"{lhs}->", unit, b)
    np.testing.assert_allclose(ga, want_ga.astype(np.float32), rtol=1e-6)


def test_axes_of_equal_large_sizes_match():
    """Sizes are compared by value: 300 and 300 (distinct int objects) are one size."""
    a, b = RNG.normal(size=(2, 300)), RNG.normal(size=(300, 3))
    graph = gs.trace(lambda a, b: gnp.einsum("ij,jk->ik", a, b), a, b)
    np.testing.assert_allclose(ENG.evaluate(graph, a, b), a @ b, rtol=1e-12)
