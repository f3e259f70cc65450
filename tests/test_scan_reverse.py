"""`gs.scan(..., reverse=True)`: the loop runs from the last element of xs to the first and
stacks each y at its x's index. Values against the same loop written in NumPy running backwards;
derivatives against that loop unrolled in the engine and against finite differences of the
NumPy loop; under a tape budget (checkpointing), bit for bit the unbudgeted derivatives."""

import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp

ENG = gs.Engine()
H, T = 4, 48
RNG = np.random.default_rng(20260302)
W = RNG.standard_normal((H, H)) * 0.4
H0 = RNG.standard_normal(H) * 0.3
XS = RNG.standard_normal((T, H))
WEIGHTS = np.arange(1.0, T + 1)


def _step(W, carry, x):
    h, acc = carry
    h = gnp.tanh(W @ h + x)
    return (h, acc * 0.9 + gnp.sum(h * x)), gnp.sum(h * h)


def scanned(W, h0, xs):
    (h, acc), ys = gs.scan(lambda c, x: _step(W, c, x), (h0, 0.0), xs, reverse=True)
    return h, acc, ys


def scanned_loss(W, h0, xs):
    h, acc, ys = scanned(W, h0, xs)
    return acc + gnp.sum(ys * WEIGHTS) + gnp.sum(h)


def unrolled_loss(W, h0, xs):
    carry, ys = (h0, 0.0), [None] * T
    for t in reversed(range(T)):
        carry, ys[t] = _step(W, carry, xs[t])
    h, acc = carry
    return acc + gnp.sum(gnp.stack(ys) * WEIGHTS) + gnp.sum(h)


def numpy_loop(W, h0, xs, order):
    h, acc, ys = h0, 0.0, np.zeros(len(xs))
    for t in order:
        h = np.tanh(W @ h + xs[t])
        acc = acc * 0.9 + np.sum(h * xs[t])
        ys[t] = np.sum(h * h)
    return h, acc, ys


def numpy_loss(W, h0, xs):
    h, acc, ys = numpy_loop(W, h0, xs, reversed(range(len(xs))))
    return acc + np.sum(ys * WEIGHTS) + np.sum(h)


def central_difference(fn, args, i, step=1e-6):
    args = [np.array(a, dtype=float) for a in args]
    grad = np.zeros_like(args[i])
    for j in np.ndindex(grad.shape):
        up = [a.copy() for a in args]
        down = [a.copy() for a in args]
        up[i][j] += step
        down[i][j] -= step
        grad[j] = (fn(*up) - fn(*down)) / (2 * step)
    return grad


ARGS = (W, H0, XS)


@pytest.fixture(scope="module")
def graphs():
    return gs.trace(scanned_loss, *ARGS), gs.trace(unrolled_loss, *ARGS)


def test_reverse_scan_values_are_the_loop_run_backwards():
    graph = gs.trace(scanned, *ARGS)
    h, acc, ys = ENG.evaluate(graph, *ARGS)
    want_h, want_acc, want_ys = numpy_loop(W, H0, XS, reversed(range(T)))
    np.testing.assert_allclose(h, want_h, rtol=1e-13, atol=1e-15)
    assert float(acc) == pytest.approx(want_acc, rel=1e-13)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-13)
    # the forward loop is a different computation: the check above can tell them apart
    fwd_h, _, fwd_ys = numpy_loop(W, H0, XS, range(T))
    assert not np.allclose(fwd_ys, want_ys) and not np.allclose(fwd_h, want_h)


def doubling_ys(c):
    return gs.scan(lambda c, _: (c * 2.0, c), c, None, length=4, reverse=True)


def test_reverse_scan_without_xs_stacks_the_first_step_last():
    carry, ys = ENG.evaluate(gs.trace(doubling_ys, 1.0), 1.5)
    assert float(carry) == 24.0
    np.testing.assert_array_equal(ys, [12.0, 6.0, 3.0, 1.5])
    weighted = gs.trace(lambda c: gnp.sum(doubling_ys(c)[1] * np.arange(1.0, 5.0)), 1.0)
    # ys = (8c, 4c, 2c, c): d/dc sum(ys * (1, 2, 3, 4)) = 8 + 8 + 6 + 4
    assert float(ENG.grad(weighted, 1.5)) == 26.0


def test_reverse_scan_gradient_matches_unrolled_and_finite_differences(graphs):
    scan_graph, unrolled_graph = graphs
    v1, g1 = ENG.value_and_grad(scan_graph, *ARGS, argnums=(0, 1, 2))
    v2, g2 = ENG.value_and_grad(unrolled_graph, *ARGS, argnums=(0, 1, 2))
    assert float(v1) == pytest.approx(numpy_loss(*ARGS), rel=1e-13)
    assert float(v1) == pytest.approx(float(v2), rel=1e-13)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    for i in range(3):
        np.testing.assert_allclose(
            g1[i], central_difference(numpy_loss, ARGS, i), rtol=1e-6, atol=1e-7
        )


def test_reverse_scan_forward_mode_and_jacobians(graphs):
    scan_graph, unrolled_graph = graphs
    tangents = tuple(RNG.standard_normal(np.shape(a)) for a in ARGS)
    t1 = ENG.jvp(scan_graph, ARGS, tangents)[1]
    t2 = ENG.jvp(unrolled_graph, ARGS, tangents)[1]
    assert float(t1) == pytest.approx(float(t2), rel=1e-11)
    states = gs.trace(lambda h0: scanned(W, h0, XS)[2], H0)
    fwd = ENG.jacobian(states, H0, mode="fwd")
    rev = ENG.jacobian(states, H0, mode="rev")
    assert fwd.shape == (T, H)
    np.testing.assert_allclose(fwd, rev, rtol=1e-11, atol=1e-13)
    want = central_difference(lambda h0: numpy_loop(W, h0, XS, reversed(range(T)))[2][0], [H0], 0)
    np.testing.assert_allclose(fwd[0], want, rtol=1e-6, atol=1e-8)


def test_reverse_scan_hvp_matches_unrolled(graphs):
    scan_graph, unrolled_graph = graphs
    tangents = tuple(RNG.standard_normal(np.shape(a)) for a in ARGS)
    for a, b in zip(ENG.hvp(scan_graph, ARGS, tangents), ENG.hvp(unrolled_graph, ARGS, tangents)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("fraction", [3, 8])
def test_reverse_scan_under_a_tape_budget_is_bit_for_bit(graphs, fraction):
    scan_graph, _ = graphs
    plain = gs.Engine()
    value, grads = plain.value_and_grad(scan_graph, *ARGS, argnums=(0, 1, 2))
    assert plain.last_stats.recomputed_ops == 0
    budget = plain.last_stats.tape_bytes // fraction
    engine = gs.Engine(max_tape_bytes=budget)
    v, g = engine.value_and_grad(scan_graph, *ARGS, argnums=(0, 1, 2))
    assert engine.last_stats.recomputed_ops > 0
    assert 0 < engine.last_stats.tape_bytes <= budget
    assert np.array_equal(v, value)
    for a, b in zip(g, grads):
        assert np.array_equal(a, b)


def test_reverse_scan_under_a_tape_budget_values_and_vjp():
    """Under a budget the primal scan records a loop tape: its outputs (the final carry and
    every y at its index) are still the loop run backwards, and a vjp of the stacked ys is
    the same as without a budget."""
    graph = gs.trace(scanned, *ARGS)
    plain = gs.Engine()
    cts = (RNG.standard_normal(H), 0.7, RNG.standard_normal(T))
    _, grads = plain.vjp(graph, ARGS, cts)
    engine = gs.Engine(max_tape_bytes=plain.last_stats.tape_bytes // 4)
    outs_b, grads_b = engine.vjp(graph, ARGS, cts)
    assert engine.last_stats.recomputed_ops > 0
    want_h, want_acc, want_ys = numpy_loop(W, H0, XS, reversed(range(T)))
    np.testing.assert_allclose(outs_b[0], want_h, rtol=1e-13, atol=1e-15)
    assert float(outs_b[1]) == pytest.approx(want_acc, rel=1e-13)
    np.testing.assert_allclose(outs_b[2], want_ys, rtol=1e-13)
    for a, b in zip(grads_b, grads):
        assert np.array_equal(a, b)
    # forward mode under the budget runs the tangent loop over the recorded tape
    tangents = tuple(RNG.standard_normal(np.shape(a)) for a in ARGS)
    for a, b in zip(engine.jvp(graph, ARGS, tangents)[1], plain.jvp(graph, ARGS, tangents)[1]):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
