"""`last_stats` (docs/engine.md, "Memory figures"): forward mode through a scan or a
while_loop holds no tape; reverse mode through a scan holds the residuals its body's reverse
pass reads, stacked per step (a carry read both entering and leaving a step once, steps + 1 of
it), and through a while_loop its loop tape, iterations x (the carry an iteration gives + what
the reverse pass reads of it); a residual that is a view holds its whole storage. Expected
figures are closed forms from shapes and dtypes."""

import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp

RNG = np.random.default_rng(20260303)


def _rnn(h_size, steps, reverse=False):
    """A scan whose carry is (float64 vector of h_size, float32 scalar): carry bytes
    8 * h_size + 4. The loss is linear in the final carry, so the reverse pass reads nothing
    but what the body's does (W and xs are graph inputs, not tape)."""
    W = RNG.standard_normal((h_size, h_size)) * 0.4
    xs = RNG.standard_normal((steps, h_size))
    h0 = RNG.standard_normal(h_size)

    def loss(W, h0, s0, xs):
        def step(c, x):
            h, s = c
            h = gnp.tanh(W @ h + x)
            return (h, s * np.float32(0.9) + gnp.astype(gnp.sum(h), "float32")), ()

        (h, s), _ = gs.scan(step, (h0, s0), xs, reverse=reverse)
        return gnp.sum(h) + s

    args = (W, h0, np.float32(0.5), xs)
    return gs.trace(loss, *args), args, 8 * h_size + 4


@pytest.mark.parametrize(
    "h_size, steps, reverse", [(4, 10, False), (4, 40, False), (16, 25, True), (3, 7, True)]
)
def test_reverse_mode_through_a_scan_holds_the_state_entering_and_leaving_each_step(
    h_size, steps, reverse
):
    """The body's reverse pass reads h entering a step (W's cotangent) and leaving it (tanh's
    derivative 1 - h*h, recomputed from it), and nothing of the float32 sum: one array of the
    steps + 1 states, h_size float64 each."""
    graph, args, _ = _rnn(h_size, steps, reverse)
    eng = gs.Engine()
    eng.grad(graph, *args, argnums=(0, 1, 2))
    stats = eng.last_stats
    assert stats.tape_bytes == (steps + 1) * 8 * h_size
    assert stats.tape_entries == 1
    assert stats.recomputed_ops == 0
    assert stats.peak_bytes >= stats.tape_bytes + sum(np.asarray(a).nbytes for a in args)


def test_reverse_mode_through_fori_loop_keeps_the_residuals_of_each_step():
    """A fori_loop with int bounds is a scan whose carry is (int64 counter, value). The
    reverse pass of sin(W @ h) reads h entering the step (W's cotangent) and cos(W @ h): two
    float64 (5,) per step, not the counter."""
    W = RNG.standard_normal((5, 5)) * 0.4
    h0 = RNG.standard_normal(5)
    for steps in (6, 30):
        graph = gs.trace(
            lambda W, h0: gnp.sum(gs.fori_loop(0, steps, lambda i, h: gnp.sin(W @ h), h0)), W, h0
        )
        eng = gs.Engine()
        eng.grad(graph, W, h0, argnums=(0, 1))
        assert eng.last_stats.tape_bytes == steps * 2 * 5 * 8


@pytest.mark.parametrize("reverse", [False, True])
def test_forward_mode_through_a_scan_holds_no_tape(reverse):
    graph, args, _ = _rnn(6, 30, reverse)
    tangents = tuple(RNG.standard_normal(np.shape(a)).astype(np.asarray(a).dtype) for a in args)
    eng = gs.Engine()
    eng.grad(graph, *args, argnums=(0, 1))
    assert eng.last_stats.tape_bytes > 0  # so that the figures below are this call's
    eng.jvp(graph, args, tangents)
    assert eng.last_stats.tape_bytes == 0 and eng.last_stats.tape_entries == 0
    eng.grad(graph, *args, argnums=(0, 1))
    eng.jacobian(graph, *args, argnums=(0, 1), mode="fwd")
    assert eng.last_stats.tape_bytes == 0 and eng.last_stats.tape_entries == 0
    eng.evaluate(graph, *args)
    assert eng.last_stats.tape_bytes == 0 and eng.last_stats.tape_entries == 0


def test_forward_mode_through_fori_loop_holds_no_tape():
    W = RNG.standard_normal((4, 4)) * 0.4
    graph = gs.trace(lambda x: gs.fori_loop(0, 12, lambda i, c: gnp.sin(W @ c), x), np.ones(4))
    x = RNG.standard_normal(4)
    eng = gs.Engine()
    eng.jvp(graph, (x,), (np.ones(4),))
    assert eng.last_stats.tape_bytes == 0 and eng.last_stats.tape_entries == 0
    jac = eng.jacobian(graph, x, mode="fwd")
    assert eng.last_stats.tape_bytes == 0 and eng.last_stats.tape_entries == 0
    np.testing.assert_allclose(jac, eng.jacobian(graph, x, mode="rev"), rtol=1e-12, atol=1e-14)
    assert eng.last_stats.tape_bytes == 12 * 4 * 8  # reverse: cos(W @ c) of each step


@pytest.mark.parametrize("iterations", [3, 10])
def test_forward_mode_through_a_while_loop_holds_no_tape(iterations):
    """docs/engine.md: a while_loop's JVP is one while_loop of the body's JVP, the tangent
    carry beside the carry: nothing is recorded. Checked against the loop unrolled."""
    W = RNG.standard_normal((4, 4)) * 0.4
    graph = gs.trace(
        lambda x, n: gs.while_loop(
            lambda c: c[1] < n, lambda c: (gnp.sin(W @ c[0]), c[1] + 1), (x, 0)
        )[0],
        np.ones(4),
        np.int64(1),
    )
    x = RNG.standard_normal(4)
    n = np.int64(iterations)
    eng = gs.Engine()
    _, tangent = eng.jvp(graph, (x, n), (np.ones(4), np.int64(0)))
    assert eng.last_stats.tape_bytes == 0 and eng.last_stats.tape_entries == 0
    jac = eng.jacobian(graph, x, n, mode="fwd")
    assert eng.last_stats.tape_bytes == 0 and eng.last_stats.tape_entries == 0
    h, want = x, np.eye(4)
    for _ in range(iterations):
        want = (np.cos(W @ h)[:, None] * W) @ want
        h = np.sin(W @ h)
    np.testing.assert_allclose(jac, want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(tangent, want.sum(1), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("iterations", [3, 10])
def test_reverse_mode_through_a_while_loop_holds_iterations_times_entry_bytes(iterations):
    """Each iteration's tape entry: the carry it gives (float64 (4,) and the int64 counter,
    from which the entries a budget drops are recomputed) and cos(W @ h), which sin's tangent
    reads (W is a constant, so h itself is not read)."""
    W = RNG.standard_normal((4, 4)) * 0.4
    graph = gs.trace(
        lambda x, n: gnp.sum(
            gs.while_loop(lambda c: c[1] < n, lambda c: (gnp.sin(W @ c[0]), c[1] + 1), (x, 0))[0]
        ),
        np.ones(4),
        np.int64(1),
    )
    x = RNG.standard_normal(4)
    eng = gs.Engine()
    grad = eng.grad(graph, x, np.int64(iterations))
    assert eng.last_stats.tape_bytes == iterations * (4 * 8 + 8 + 4 * 8)
    h, jac = x, np.eye(4)
    for _ in range(iterations):
        z = W @ h
        jac = (np.cos(z)[:, None] * W) @ jac
        h = np.sin(z)
    np.testing.assert_allclose(grad, jac.sum(0), rtol=1e-12)


def test_a_residual_view_holds_its_whole_storage():
    """The backward pass reads s and its reverse, views of sin(x)'s 100-element buffer: the
    tape is that buffer, 800 bytes, not the 80 bytes of the views."""
    x = RNG.standard_normal(100)

    def f(x):
        s = gnp.sin(x)[:10]
        return gnp.sum(s * s[::-1])

    eng = gs.Engine()
    grad = eng.grad(gs.trace(f, x), x)
    assert eng.last_stats.tape_bytes == x.nbytes
    assert eng.last_stats.tape_entries == 1
    s = np.sin(x[:10])
    want = np.zeros(100)
    want[:10] = 2 * s[::-1] * np.cos(x[:10])
    np.testing.assert_allclose(grad, want, rtol=1e-14)


def test_tanh_derivative_is_recomputed_from_its_result_not_taped():
    """tanh's derivative 1 - y*y (two nodes) runs in the reverse pass from y, which the
    matmul after it keeps anyway: the tape holds y alone."""
    x, W, V = RNG.standard_normal((5, 3)), RNG.standard_normal((3, 7)), RNG.standard_normal((7, 2))
    graph = gs.trace(lambda x, W, V: gnp.sum(gnp.tanh(x @ W) @ V), x, W, V)
    eng = gs.Engine()
    grads = eng.grad(graph, x, W, V, argnums=(0, 1, 2))
    assert (eng.last_stats.tape_bytes, eng.last_stats.tape_entries) == (5 * 7 * 8, 1)
    y = np.tanh(x @ W)
    dz = np.ones((5, 2)) @ V.T * (1 - y * y)
    np.testing.assert_allclose(grads[0], dz @ W.T)
    np.testing.assert_allclose(grads[1], x.T @ dz)
    np.testing.assert_allclose(grads[2], y.T @ np.ones((5, 2)))
