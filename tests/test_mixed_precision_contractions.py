"""Contractions (einsum, matmul, `@`, dot, inner, outer) of a float32 operand with a float64 one:
the output follows NumPy's promotion, and each operand's cotangent has that operand's dtype
(float32 for the float32 input, float64 for the float64 one), with values from NumPy closed
forms computed in float64."""

import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp

ENG = gs.Engine()
RNG = np.random.default_rng(20260301)

# name: (gnp form, NumPy form, shape of a, shape of b, the cotangents of a and b in NumPy)
CONTRACTIONS = {
    "matmul": (
        gnp.matmul,
        np.matmul,
        (3, 4),
        (4, 2),
        lambda a, b, ct: (ct @ b.T, a.T @ ct),
    ),
    "matmul_operator": (
        lambda a, b: a @ b,
        lambda a, b: a @ b,
        (3, 4),
        (4, 2),
        lambda a, b, ct: (ct @ b.T, a.T @ ct),
    ),
    "matmul_vector": (
        gnp.matmul,
        np.matmul,
        (3, 4),
        (4,),
        lambda a, b, ct: (np.outer(ct, b), a.T @ ct),
    ),
    "batched_matmul": (
        gnp.matmul,
        np.matmul,
        (2, 3, 4),
        (2, 4, 5),
        lambda a, b, ct: (ct @ np.swapaxes(b, 1, 2), np.swapaxes(a, 1, 2) @ ct),
    ),
    "dot": (
        gnp.dot,
        np.dot,
        (3, 4),
        (4, 2),
        lambda a, b, ct: (ct @ b.T, a.T @ ct),
    ),
    "dot_vectors": (
        gnp.dot,
        np.dot,
        (4,),
        (4,),
        lambda a, b, ct: (ct * b, ct * a),
    ),
    "inner": (
        gnp.inner,
        np.inner,
        (4,),
        (4,),
        lambda a, b, ct: (ct * b, ct * a),
    ),
    "outer": (
        gnp.outer,
        np.outer,
        (3,),
        (4,),
        lambda a, b, ct: (ct @ b, ct.T @ a),
    ),
    "einsum": (
        lambda a, b: gnp.einsum("ij,jk->ik", a, b),
        lambda a, b: np.einsum("ij,jk->ik", a, b),
        (3, 4),
        (4, 2),
        lambda a, b, ct: (ct @ b.T, a.T @ ct),
    ),
    "einsum_transposed_output": (
        lambda a, b: gnp.einsum("ij,kj->ki", a, b),
        lambda a, b: np.einsum("ij,kj->ki", a, b),
        (3, 4),
        (2, 4),
        lambda a, b, ct: (ct.T @ b, ct @ a),
    ),
    "einsum_summed_axis": (
        lambda a, b: gnp.einsum("ijk,j->i", a, b),
        lambda a, b: np.einsum("ijk,j->i", a, b),
        (3, 4, 2),
        (4,),
        lambda a, b, ct: (
            np.broadcast_to(np.einsum("i,j->ij", ct, b)[:, :, None], (3, 4, 2)),
            np.einsum("i,ijk->j", ct, a),
        ),
    ),
}


def _operands(name, first):
    _, _, sa, sb, _ = CONTRACTIONS[name]
    a = RNG.standard_normal(sa).astype(first)
    b = RNG.standard_normal(sb).astype(np.float64 if first == np.float32 else np.float32)
    return a, b


@pytest.mark.parametrize("first", [np.float32, np.float64], ids=["f32_f64", "f64_f32"])
@pytest.mark.parametrize("name", sorted(CONTRACTIONS))
def test_mixed_precision_value_and_cotangent_dtypes(name, first):
    fn, np_fn, _, _, cotangents = CONTRACTIONS[name]
    a, b = _operands(name, first)
    graph = gs.trace(fn, a, b)
    want = np_fn(a, b)
    assert want.dtype == np.float64  # NumPy promotes float32 with float64 to float64
    assert graph.outputs[0].spec.dtype == "float64"
    value = ENG.evaluate(graph, a, b)
    assert value.dtype == np.float64
    np.testing.assert_allclose(value, want, rtol=1e-13, atol=1e-14)

    ct = RNG.standard_normal(want.shape)
    out, (ga, gb) = ENG.vjp(graph, (a, b), ct)
    assert out.dtype == np.float64
    assert ga.dtype == a.dtype and gb.dtype == b.dtype
    want_a, want_b = cotangents(a.astype(np.float64), b.astype(np.float64), ct)
    for got, exact in ((ga, want_a), (gb, want_b)):
        if got.dtype == np.float32:  # the float64 cotangent, rounded once to float32
            np.testing.assert_allclose(got, exact.astype(np.float32), rtol=2e-7, atol=1e-7)
        else:
            np.testing.assert_allclose(got, exact, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("first", [np.float32, np.float64], ids=["f32_f64", "f64_f32"])
@pytest.mark.parametrize("name", ["matmul", "dot", "einsum", "outer"])
def test_mixed_precision_gradient_and_tangent(name, first):
    fn, np_fn, _, _, cotangents = CONTRACTIONS[name]
    a, b = _operands(name, first)
    w = RNG.standard_normal(np_fn(a, b).shape)
    graph = gs.trace(lambda a, b: gnp.sum(fn(a, b) * w), a, b)
    value, (ga, gb) = ENG.value_and_grad(graph, a, b, argnums=(0, 1))
    assert value.dtype == np.float64
    assert ga.dtype == a.dtype and gb.dtype == b.dtype
    want_a, want_b = cotangents(a.astype(np.float64), b.astype(np.float64), w)
    for got, exact in ((ga, want_a), (gb, want_b)):
        np.testing.assert_allclose(
            got,
            exact.astype(got.dtype),
            rtol=2e-7 if got.dtype == np.float32 else 1e-13,
            atol=1e-7 if got.dtype == np.float32 else 1e-14,
        )

    # forward mode: the tangent of a float64 output is float64; each input's tangent has its dtype
    ta, tb = (
        RNG.standard_normal(a.shape).astype(a.dtype),
        RNG.standard_normal(b.shape).astype(b.dtype),
    )
    out, tangent = ENG.jvp(gs.trace(fn, a, b), (a, b), (ta, tb))
    assert out.dtype == np.float64 and tangent.dtype == np.float64
    a64, b64, ta64, tb64 = (v.astype(np.float64) for v in (a, b, ta, tb))
    np.testing.assert_allclose(tangent, np_fn(ta64, b64) + np_fn(a64, tb64), rtol=1e-13, atol=1e-14)

    # second order: an hvp gives each input's block in that input's dtype
    smooth = gs.trace(lambda a, b: gnp.sum(gnp.sin(fn(a, b))), a, b)
    ha, hb = ENG.hvp(smooth, (a, b), (ta, tb))
    assert ha.dtype == a.dtype and hb.dtype == b.dtype
    # H [ta, tb] for f = sum(sin(C(a, b))), C bilinear: with s = -sin(C), c = cos(C),
    # d/da = C_a^T (s * (C(ta, b) + C(a, tb))) + C_a(tb)^T c, and likewise for b
    y = np_fn(a64, b64)
    dy = np_fn(ta64, b64) + np_fn(a64, tb64)
    inner = -np.sin(y) * dy
    cos = np.cos(y)
    want_ha = cotangents(a64, b64, inner)[0] + cotangents(a64, tb64, cos)[0]
    want_hb = cotangents(a64, b64, inner)[1] + cotangents(ta64, b64, cos)[1]
    for got, exact in ((ha, want_ha), (hb, want_hb)):
        rtol, atol = (1e-5, 1e-6) if got.dtype == np.float32 else (1e-12, 1e-13)
        np.testing.assert_allclose(got, exact, rtol=rtol, atol=atol)


def test_float32_contraction_stays_float32():
    a = RNG.standard_normal((3, 4)).astype(np.float32)
    b = RNG.standard_normal((4, 2)).astype(np.float32)
    graph = gs.trace(lambda a, b: gnp.einsum("ij,jk->ik", a, b), a, b)
    value = ENG.evaluate(graph, a, b)
    assert value.dtype == np.float32
    np.testing.assert_allclose(value, a @ b, rtol=1e-6)
    ct = np.ones((3, 2), np.float32)
    _, (ga, gb) = ENG.vjp(graph, (a, b), ct)
    assert ga.dtype == np.float32 and gb.dtype == np.float32
    np.testing.assert_allclose(ga, ct @ b.T, rtol=1e-6)
    np.testing.assert_allclose(gb, a.T @ ct, rtol=1e-6)


@pytest.mark.parametrize("int_dtype", ["int32", "int64"])
def test_float32_with_integer_operand_promotes_as_numpy(int_dtype):
    a = RNG.standard_normal((3, 4)).astype(np.float32)
    n = np.arange(8).reshape(4, 2).astype(int_dtype)
    graph = gs.trace(lambda a, n: gnp.sum(a @ n), a, n)
    want = np.result_type(a, n)
    assert graph.outputs[0].spec.dtype == str(want)
    value, grad = ENG.value_and_grad(graph, a, n)
    assert value.dtype == want
    assert grad.dtype == np.float32
    np.testing.assert_allclose(grad, np.ones((3, 2)) @ n.T, rtol=1e-7)
    np.testing.assert_allclose(value, np.sum(a.astype(np.float64) @ n), rtol=1e-12)
