"""A scan's derivatives keep its body's residuals per iteration (docs/engine.md, "What a loop
keeps"). Checked against the other way, which stays for tape budgets: keeping only the carry
entering each iteration and evaluating the body again in the reverse pass (`recomputing`).
Both run the same operations on the same values, so gradients, JVPs and batched Jacobians
agree to the last bit; each is also checked against the loop unrolled or written by hand, and
the tape against closed forms."""

import tracemalloc

import numpy as np
import pytest
from gradserve.engine.ops.loops import recomputing, reverse_residual_bytes
from gradserve.engine.transforms import linearizing

import gradserve as gs
import gradserve.numpy as gnp

RNG = np.random.default_rng(20261201)


def rnn_loss(W, U, h0, xs):
    def step(carry, x):
        h, total = carry
        h = gnp.tanh(W @ h + U @ x)
        return (h, total + gnp.sum(h * h)), ()

    (_, total), _ = gs.scan(step, (h0, 0.0), xs)
    return total


def rnn_loss_reversed(W, U, h0, xs):
    def step(h, x):
        h = gnp.tanh(W @ h + U @ x)
        return h, gnp.sum(h * h)

    _, ys = gs.scan(step, h0, xs, reverse=True)
    return gnp.sum(ys * np.arange(1.0, xs.shape[0] + 1))


def rnn_loss_reversed_unrolled(W, U, h0, xs):
    h, total = h0, 0.0
    for i in range(xs.shape[0] - 1, -1, -1):
        h = gnp.tanh(W @ h + U @ xs[i])
        total = total + gnp.sum(h * h) * (i + 1.0)
    return total


def numpy_bptt(W, U, h0, xs):
    """Backprop through time by hand: keeps h_0 .. h_T."""
    hs = [h0]
    for x in xs:
        hs.append(np.tanh(W @ hs[-1] + U @ x))
    gW, gU, gx, gh = np.zeros_like(W), np.zeros_like(U), np.zeros_like(xs), np.zeros_like(h0)
    for t in range(len(xs), 0, -1):
        gh = gh + 2 * hs[t]
        ga = gh * (1 - hs[t] ** 2)
        gW += np.outer(ga, hs[t - 1])
        gU += np.outer(ga, xs[t - 1])
        gx[t - 1] = U.T @ ga
        gh = W.T @ ga
    return gW, gU, gh, gx


def rnn_args(hidden=6, steps=25):
    return (
        RNG.standard_normal((hidden, hidden)) / np.sqrt(hidden),
        RNG.standard_normal((hidden, 3)) / np.sqrt(3),
        RNG.standard_normal(hidden) * 0.1,
        RNG.standard_normal((steps, 3)),
    )


def reverse_with_ys(W, h0, xs):
    """A reverse scan with ys and a constant read inside (W), the ys and carry both in the loss."""

    def step(h, x):
        h = gnp.sin(W @ h) * x[0] + x[1:]
        return h, gnp.exp(-h * h)

    h, ys = gs.scan(step, h0, xs, reverse=True)
    return gnp.sum(ys * ys) + gnp.sum(h)


def reverse_with_ys_unrolled(W, h0, xs):
    h, ys = h0, [None] * xs.shape[0]
    for i in range(xs.shape[0] - 1, -1, -1):
        h = gnp.sin(W @ h) * xs[i, 0] + xs[i, 1:]
        ys[i] = gnp.exp(-h * h)
    return gnp.sum(gnp.stack(ys) ** 2) + gnp.sum(h)


def counted(W, h0):
    """fori_loop: an int64 counter in the carry (not differentiable), read by the body."""
    return gnp.sum(gs.fori_loop(0, 9, lambda i, h: gnp.tanh(W @ h) * (1.0 + 0.1 * i), h0) ** 2)


def counted_unrolled(W, h0):
    h = h0
    for i in range(9):
        h = gnp.tanh(W @ h) * (1.0 + 0.1 * i)
    return gnp.sum(h**2)


def nested(W, h0, xs):
    def outer(h, x):
        h = gs.scan(lambda c, _: (gnp.tanh(W @ c + x), ()), h, None, length=4)[0]
        return h, gnp.sum(h)

    h, sums = gs.scan(outer, h0, xs)
    return gnp.sum(sums**2) + gnp.sum(h * h)


def nested_unrolled(W, h0, xs):
    h, sums = h0, []
    for t in range(xs.shape[0]):
        for _ in range(4):
            h = gnp.tanh(W @ h + xs[t])
        sums.append(gnp.sum(h))
    return gnp.sum(gnp.stack(sums) ** 2) + gnp.sum(h * h)


def _cases():
    W, U, h0, xs = rnn_args()
    W5 = RNG.standard_normal((5, 5)) * 0.4
    return {
        "rnn": (rnn_loss, None, (W, U, h0, xs)),
        "rnn reversed": (rnn_loss_reversed, rnn_loss_reversed_unrolled, (W, U, h0, xs[:9])),
        "reverse": (
            reverse_with_ys,
            reverse_with_ys_unrolled,
            (W5, RNG.standard_normal(5), RNG.standard_normal((7, 6))),
        ),
        "fori_loop": (counted, counted_unrolled, (W5, RNG.standard_normal(5))),
        "nested": (
            nested,
            nested_unrolled,
            (W5 * 0.5, RNG.standard_normal(5), RNG.standard_normal((6, 5))),
        ),
    }


CASES = _cases()


def _both_modes(call, tapes=None):
    """`call(engine)` with residuals kept (the default), then with bodies recomputed; the
    tape bytes of each call appended to `tapes`."""
    results = []
    for mode in (None, recomputing):
        eng = gs.Engine()
        if mode is None:
            results.append(call(eng))
        else:
            with mode():
                results.append(call(eng))
        if tapes is not None:
            tapes.append(eng.last_stats.tape_bytes)
    return results


def _assert_same_bits(a, b):
    for x, y in zip(a, b):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        assert np.array_equal(x, y), np.max(np.abs(np.asarray(x) - np.asarray(y)))


@pytest.mark.parametrize("name", CASES)
def test_gradient_with_residuals_is_the_recomputed_one_bit_for_bit(name):
    fn, unrolled, args = CASES[name]
    graph = gs.trace(fn, *args)
    argnums = tuple(range(len(args)))
    tapes = []
    kept, recomputed = _both_modes(
        lambda eng: eng.value_and_grad(graph, *args, argnums=argnums), tapes
    )
    assert tapes[0] != tapes[1]  # two different reverse passes
    assert kept[0] == recomputed[0]
    _assert_same_bits(kept[1], recomputed[1])
    if unrolled is not None:
        value, grads = gs.Engine().value_and_grad(gs.trace(unrolled, *args), *args, argnums=argnums)
        assert kept[0] == pytest.approx(value, rel=1e-12)
        for a, b in zip(kept[1], grads):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_rnn_gradient_matches_hand_written_bptt_and_keeps_its_tape():
    """The hand-written backward pass keeps h_0 .. h_T; so does the scan: h entering a step
    (for W's cotangent) and leaving it (for tanh's, 1 - h*h recomputed from it) are one array
    of steps + 1 states. Keeping only the carries entering each step is (steps x (h, total))."""
    args = rnn_args(hidden=6, steps=25)
    graph = gs.trace(rnn_loss, *args)
    eng = gs.Engine()
    grads = eng.grad(graph, *args, argnums=(0, 1, 2, 3))
    for a, b in zip(grads, numpy_bptt(*args)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    assert eng.last_stats.tape_bytes == (25 + 1) * 6 * 8
    assert eng.last_stats.tape_entries == 1
    assert eng.last_stats.recomputed_ops == 0
    with recomputing():
        eng = gs.Engine()
        eng.grad(graph, *args, argnums=(0, 1, 2, 3))
    assert eng.last_stats.tape_bytes == 25 * (6 * 8 + 8)


@pytest.mark.parametrize("name", CASES)
def test_forward_mode_and_batched_jacobians_match_the_recomputed_ones(name):
    fn, _, args = CASES[name]
    graph = gs.trace(fn, *args)
    tangents = tuple(RNG.standard_normal(np.shape(a)) for a in args)
    kept, recomputed = _both_modes(lambda eng: eng.jvp(graph, args, tangents))
    _assert_same_bits(kept, recomputed)
    kept, recomputed = _both_modes(lambda eng: eng.jacobian(graph, *args, argnums=0, mode="rev"))
    _assert_same_bits([kept], [recomputed])
    h = 1e-6
    up = gs.Engine().evaluate(graph, *[a + h * t for a, t in zip(args, tangents)])
    down = gs.Engine().evaluate(graph, *[a - h * t for a, t in zip(args, tangents)])
    jvp_value = gs.Engine().jvp(graph, args, tangents)[1]
    assert jvp_value == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("name", CASES)
def test_hvp_through_a_scan_that_keeps_residuals(name):
    """Second order: the gradient program's loops keep residuals too, and are differentiated
    again. Checked against the loop unrolled (or, for the RNN, a central difference of the
    hand-written gradient) and against recomputing (bit for bit)."""
    fn, unrolled, args = CASES[name]
    graph = gs.trace(fn, *args)
    tangents = tuple(RNG.standard_normal(np.shape(a)) for a in args)
    kept, recomputed = _both_modes(lambda eng: eng.hvp(graph, args, tangents))
    _assert_same_bits(kept, recomputed)
    if unrolled is not None:
        want = gs.Engine().hvp(gs.trace(unrolled, *args), args, tangents)
    else:
        h = 1e-6
        up = numpy_bptt(*[a + h * t for a, t in zip(args, tangents)])
        down = numpy_bptt(*[a - h * t for a, t in zip(args, tangents)])
        want = [(u - d) / (2 * h) for u, d in zip(up, down)]
    for a, b in zip(kept, want):
        np.testing.assert_allclose(a, b, rtol=1e-6 if unrolled is None else 1e-10, atol=1e-9)


def test_a_budget_the_residuals_fit_keeps_them_and_a_smaller_one_recomputes():
    args = rnn_args(hidden=6, steps=40)
    graph = gs.trace(rnn_loss, *args)
    plain = gs.Engine()
    reference = plain.grad(graph, *args, argnums=(0, 1, 2, 3))
    residual_tape = plain.last_stats.tape_bytes
    roomy = gs.Engine(max_tape_bytes=residual_tape)
    _assert_same_bits(roomy.grad(graph, *args, argnums=(0, 1, 2, 3)), reference)
    assert roomy.last_stats.tape_bytes == residual_tape
    assert roomy.last_stats.recomputed_ops == 0 and roomy.last_stats.tape_entries == 1
    for budget in (residual_tape - 1, residual_tape // 8):
        tight = gs.Engine(max_tape_bytes=budget)
        _assert_same_bits(tight.grad(graph, *args, argnums=(0, 1, 2, 3)), reference)
        assert 0 < tight.last_stats.tape_bytes <= budget
    assert tight.last_stats.recomputed_ops > 0


def test_second_order_under_a_budget_the_residuals_pass_recomputes_the_body():
    """hvp does not use loop tapes: under a budget its residuals would pass, its scans keep
    only their carries (and check the budget as any residual), as recomputing does. (sin's
    residuals, h entering the step and cos(W @ h), take twice the carry.)"""
    fn, _, args = CASES["fori_loop"]
    graph = gs.trace(fn, *args)
    tangents = tuple(RNG.standard_normal(np.shape(a)) for a in args)
    plain = gs.Engine()
    plain.hvp(graph, args, tangents)
    with recomputing():
        carries_only = gs.Engine()
        want = carries_only.hvp(graph, args, tangents)
    budget = carries_only.last_stats.tape_bytes
    assert budget < plain.last_stats.tape_bytes
    tight = gs.Engine(max_tape_bytes=budget)
    _assert_same_bits(tight.hvp(graph, args, tangents), want)
    assert tight.last_stats.tape_bytes == budget
    with pytest.raises(gs.LimitError, match="tape"):
        gs.Engine(max_tape_bytes=budget - 1).hvp(graph, args, tangents)


def test_a_body_with_a_loop_tape_inside_recomputes_and_is_right():
    """A while_loop inside a scan keeps a loop tape, which cannot be stacked per iteration:
    that scan keeps its carries and recomputes, as before."""
    W = RNG.standard_normal((4, 4)) * 0.4

    def fn(h0, xs):
        def step(h, x):
            h = gs.while_loop(
                lambda c: c[1] < 3, lambda c: (gnp.sin(W @ c[0]) + x, c[1] + 1), (h, 0)
            )[0]
            return h, ()

        return gnp.sum(gs.scan(step, h0, xs)[0] ** 2)

    def unrolled(h0, xs):
        h = h0
        for t in range(xs.shape[0]):
            for _ in range(3):
                h = gnp.sin(W @ h) + xs[t]
        return gnp.sum(h**2)

    args = (RNG.standard_normal(4), RNG.standard_normal((5, 4)))
    got = gs.Engine().grad(gs.trace(fn, *args), *args, argnums=(0, 1))
    want = gs.Engine().grad(gs.trace(unrolled, *args), *args, argnums=(0, 1))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)


def test_a_scan_inside_checkpoint_keeps_nothing_past_it():
    """gs.checkpoint keeps its operands only: the scan inside runs again in the reverse pass,
    and its residuals live only while that runs. Same gradient, to the last bit, and a tape
    of the checkpoint's operands rather than the scan's residuals."""
    W, U, h0, xs = rnn_args(hidden=6, steps=30)

    def saved(W, U, h0, xs):
        return gs.checkpoint(rnn_loss)(W, U, h0, xs)

    plain, inside = gs.Engine(), gs.Engine()
    want = plain.grad(gs.trace(rnn_loss, W, U, h0, xs), W, U, h0, xs, argnums=(0, 1, 2, 3))
    got = inside.grad(gs.trace(saved, W, U, h0, xs), W, U, h0, xs, argnums=(0, 1, 2, 3))
    _assert_same_bits(got, want)
    assert plain.last_stats.tape_bytes == (30 + 1) * 6 * 8
    assert inside.last_stats.tape_bytes == 0  # the operands are the call's inputs


# ---- forward mode: one scan of the body's JVP, nothing kept per iteration --------------------


def _stacking(call):
    """`call(engine)` as a JVP traced to be transposed: the scan keeps its residuals per
    iteration (what forward mode did before it ran primal and tangent in one scan)."""
    eng = gs.Engine()
    with linearizing():
        return call(eng), eng


@pytest.mark.parametrize("name", CASES)
def test_forward_mode_is_the_stacking_jvp_bit_for_bit(name):
    """jvp, batched forward Jacobians and forward-over-reverse (hvp, hessian) give the same
    bits as the JVP that stacks residuals: the same operations on the same values. The
    batched pass keeps the primal carry unbatched (it does not depend on the tangents), so
    first-order forward mode never peaks higher. (Forward over reverse can, by a few hundred
    bytes of schedule on these short loops; on long ones it peaks lower.)"""
    fn, _, args = CASES[name]
    graph = gs.trace(fn, *args)
    tangents = tuple(RNG.standard_normal(np.shape(a)) for a in args)
    for first_order, call in (
        (True, lambda eng: eng.jvp(graph, args, tangents)),
        (True, lambda eng: [eng.jacobian(graph, *args, argnums=0, mode="fwd")]),
        (False, lambda eng: eng.hvp(graph, args, tangents)),
        (False, lambda eng: [eng.hessian(graph, *args, argnums=0)]),
    ):
        eng = gs.Engine()
        got = call(eng)
        want, stacking = _stacking(call)
        _assert_same_bits(got, want)
        assert eng.last_stats.tape_bytes == stacking.last_stats.tape_bytes
        if first_order:
            assert eng.last_stats.peak_bytes <= stacking.last_stats.peak_bytes
    eng = gs.Engine()
    eng.jvp(graph, args, tangents)
    assert eng.last_stats.tape_bytes == 0 and eng.last_stats.tape_entries == 0


def test_a_jvp_through_a_long_scan_holds_only_its_carry():
    """Over the arguments and their tangents, the JVP's peak is a few carries whatever the
    length; the stacking JVP holds h and tanh's output of every step (two carries per step).
    Both from the schedule and as measured by tracemalloc around the call."""
    hidden = 32
    extra = {}
    for steps in (200, 2000):
        args = rnn_args(hidden=hidden, steps=steps)
        tangents = tuple(RNG.standard_normal(np.shape(a)) for a in args)
        graph = gs.trace(rnn_loss, *args)
        inputs = 2 * sum(np.asarray(a).nbytes for a in args)
        eng = gs.Engine()
        want = eng.jvp(graph, args, tangents)  # builds the plan
        tracemalloc.start()
        got = eng.jvp(graph, args, tangents)
        joint_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert eng.last_stats.tape_bytes == 0 and eng.last_stats.tape_entries == 0
        extra[steps] = eng.last_stats.peak_bytes - inputs
        assert 0 < extra[steps] <= 4 * hidden * 8

        _, stacking = _stacking(lambda eng: eng.jvp(graph, args, tangents))
        with linearizing():
            tracemalloc.start()
            stacked = stacking.jvp(graph, args, tangents)
            stacking_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert stacking.last_stats.peak_bytes - inputs >= 2 * steps * hidden * 8
        assert stacking_peak >= 2 * steps * hidden * 8
        assert joint_peak <= 32 * hidden * 8 < stacking_peak / 10
        _assert_same_bits(got, want)
        _assert_same_bits(got, stacked)
    assert extra[200] == extra[2000]


def test_a_batched_carry_the_body_sets_from_unbatched_values_keeps_its_batch_axis():
    """A forward Jacobian through a scan whose carry the body replaces by a function of xs
    only: its tangent enters batched (the basis) and leaves unbatched (zero), and is given
    the batch axis back. Checked against the loop unrolled."""

    def fn(h0, xs):
        _, ys = gs.scan(lambda h, x: (gnp.sin(x), h * h), h0, xs)
        return ys

    def unrolled(h0, xs):
        hs = [h0] + [gnp.sin(xs[i]) for i in range(xs.shape[0] - 1)]
        return gnp.stack([h * h for h in hs])

    args = (RNG.standard_normal(3), RNG.standard_normal((4, 3)))
    got = gs.Engine().jacobian(gs.trace(fn, *args), *args, argnums=(0, 1), mode="fwd")
    want = gs.Engine().jacobian(gs.trace(unrolled, *args), *args, argnums=(0, 1), mode="fwd")
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-15)
    assert np.abs(got[0]).max() > 0 and np.abs(got[1]).max() > 0


def _count_plans(monkeypatch):
    """The programs the engine compiles into plans, appended as it builds them (with an
    empty process-wide plan cache, so that no plan comes from an earlier test)."""
    import gradserve.engine.engine as engine_module
    from gradserve.engine import plan_cache

    monkeypatch.setattr(plan_cache, "shared", plan_cache.PlanCache())
    built, real = [], engine_module.Plan

    def plan(program):
        built.append(program)
        return real(program)

    monkeypatch.setattr(engine_module, "Plan", plan)
    return built


def _uses(program, op):
    return any(node.op == op for node in program.graph.nodes)


def test_a_tape_budget_picks_the_mode_from_the_residual_shapes_and_builds_once(monkeypatch):
    """The scans' residuals are known from their shapes: the RNN's are its steps + 1 states.
    Under a budget they fit, the plan keeps them; under one they pass, the plan uses loop
    tapes; either way one plan is built per call, and the gradient is the same bits."""
    steps, hidden = 40, 6
    args = rnn_args(hidden=hidden, steps=steps)
    graph = gs.trace(rnn_loss, *args)
    wrt = (0, 1, 2, 3)
    residuals = reverse_residual_bytes(graph, wrt)
    assert residuals == (steps + 1) * hidden * 8
    built = _count_plans(monkeypatch)
    reference = gs.Engine().grad(graph, *args, argnums=wrt)
    for budget, loop_tapes in ((residuals, False), (residuals - 1, True), (residuals // 8, True)):
        built.clear()
        eng = gs.Engine(max_tape_bytes=budget)
        _assert_same_bits(eng.grad(graph, *args, argnums=wrt), reference)
        assert len(built) == 1
        assert _uses(built[0], "scan_record") == loop_tapes
        assert eng.last_stats.tape_bytes <= budget
        assert (eng.last_stats.recomputed_ops > 0) == loop_tapes  # checkpoints only


def test_second_order_under_a_budget_counts_each_residual_and_its_tangent(monkeypatch):
    """hvp keeps every residual and its tangent: twice the first-order residuals (plus, here,
    the tangent-free values the loss around the loop keeps). Under a budget below that, its
    scans keep only their carries, decided from the shapes before the one build."""
    fn, _, args = CASES["fori_loop"]
    graph = gs.trace(fn, *args)
    wrt = tuple(range(len(args)))
    tangents = tuple(RNG.standard_normal(np.shape(a)) for a in args)
    plain = gs.Engine()
    want = plain.hvp(graph, args, tangents)
    residuals = reverse_residual_bytes(graph, wrt)
    assert residuals == 9 * (5 + 5 + 1) * 8  # h and tanh(W @ h) per step, and the counter
    assert 2 * residuals <= plain.last_stats.tape_bytes <= 2 * residuals + 64
    with recomputing():
        carries_only = gs.Engine()
        recomputed = carries_only.hvp(graph, args, tangents)
    tight = carries_only.last_stats.tape_bytes
    assert tight < 2 * residuals
    built = _count_plans(monkeypatch)
    for budget, expected in ((plain.last_stats.tape_bytes, want), (tight, recomputed)):
        built.clear()
        eng = gs.Engine(max_tape_bytes=budget)
        _assert_same_bits(eng.hvp(graph, args, tangents), expected)
        assert len(built) == 1 and eng.last_stats.tape_bytes == budget


# ---- while_loop: the body's residuals on the loop tape ----------------------------------------


def _while_rnn(W, U, h0, xs, n):
    """An RNN over the first n rows of xs as a while_loop (trip count from the data)."""

    def step(c):
        h, total, i = c
        h = gnp.tanh(W @ h + U @ xs[i])
        return h, total + gnp.sum(h * h), i + 1

    return gs.while_loop(lambda c: c[2] < n, step, (h0, 0.0, 0))[1]


def test_while_loop_gradient_keeping_residuals_is_the_recomputed_one_bit_for_bit():
    """Reverse mode through a while_loop reads each iteration's residuals from the loop tape
    instead of evaluating the body again: the same gradient to the last bit, with no budget
    and under budgets that make the tape drop entries and recompute them; also against
    hand-written BPTT. Its tape: per iteration, the carry it gives (h, the total, the
    counter) and what the reverse pass reads (h entering, for W's cotangent; the counter
    entering, for the row of xs; tanh's output is h leaving, kept already)."""
    hidden, steps = 6, 30
    W, U, h0, xs = rnn_args(hidden=hidden, steps=steps)
    n = np.int64(steps)
    graph = gs.trace(_while_rnn, W, U, h0, xs, n)
    argnums = (0, 1, 2, 3)
    kept, recomputed = _both_modes(lambda eng: eng.grad(graph, W, U, h0, xs, n, argnums=argnums))
    _assert_same_bits(kept, recomputed)
    for got, want in zip(kept, numpy_bptt(W, U, h0, xs)):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    eng = gs.Engine()
    eng.grad(graph, W, U, h0, xs, n, argnums=argnums)
    entry = (hidden * 8 + 8 + 8) + (hidden * 8 + 8)
    assert eng.last_stats.tape_bytes == steps * entry
    assert eng.last_stats.recomputed_ops == 0
    # a loop tape takes half the room left (the rest is for loops inside it) and thins its
    # entries when they would pass half of that: 4 x the entries fit without recomputing
    for budget in (4 * steps * entry, steps * entry // 4):
        tight = gs.Engine(max_tape_bytes=budget)
        _assert_same_bits(tight.grad(graph, W, U, h0, xs, n, argnums=argnums), recomputed)
        assert tight.last_stats.tape_bytes <= budget
        assert (tight.last_stats.recomputed_ops > 0) == (budget < steps * entry)


def test_forward_mode_through_a_while_loop_is_the_stacking_jvp_bit_for_bit():
    """Forward mode runs the body's JVP in one while_loop, recording nothing; its tangents
    are those of the JVP traced for reverse mode (tape entries read by a tangent loop)."""
    W, U, h0, xs = rnn_args(hidden=5, steps=12)
    n = np.int64(12)
    args = (W, U, h0, xs, n)
    graph = gs.trace(_while_rnn, *args)
    tangents = tuple(RNG.standard_normal(np.shape(a)) for a in args[:4]) + (np.int64(0),)
    eng = gs.Engine()
    got = eng.jvp(graph, args, tangents)
    assert eng.last_stats.tape_bytes == 0 and eng.last_stats.tape_entries == 0
    want, stacking = _stacking(lambda eng: eng.jvp(graph, args, tangents))
    _assert_same_bits(got, want)
    assert stacking.last_stats.tape_bytes > 0


def test_residuals_that_fit_beside_a_tape_that_does_not_are_rebuilt_with_loop_tapes(monkeypatch):
    """The scan's residuals alone fit the budget, but with the other residuals (sin's cos(B)
    of a 20 x 20 matmul B) the tape does not: the plan is built a second time with loop
    tapes, which leave the scan's room to the rest, and the gradient is the same bits."""
    W, U, h0, xs = rnn_args(hidden=6, steps=40)
    A = RNG.standard_normal((20, 20))

    def fn(W, U, h0, xs, A):
        return rnn_loss(W, U, h0, xs) + gnp.sum(gnp.sin(A @ A))

    args = (W, U, h0, xs, A)
    graph = gs.trace(fn, *args)
    wrt = (0, 1, 2, 3, 4)
    residuals = reverse_residual_bytes(graph, wrt)
    assert residuals == 41 * 6 * 8
    plain = gs.Engine()
    want = plain.grad(graph, *args, argnums=wrt)
    assert plain.last_stats.tape_bytes == residuals + A.nbytes  # cos(A @ A), or A @ A
    budget = plain.last_stats.tape_bytes - residuals // 2
    built = _count_plans(monkeypatch)
    eng = gs.Engine(max_tape_bytes=budget)
    _assert_same_bits(eng.grad(graph, *args, argnums=wrt), want)
    assert len(built) == 2 and not _uses(built[0], "scan_record") and _uses(built[1], "scan_record")
    assert eng.last_stats.tape_bytes <= budget


# ---- scans that recompute: their stacked carries are what they keep ---------------------------

_sin_rule = gs.custom_jvp(gnp.sin)
_sin_rule.defjvp(lambda p, t: (gnp.sin(p[0]), gnp.cos(p[0]) * t[0]))


def _scan_calling_a_custom_rule(W, h0, xs):
    return gnp.sum(gs.scan(lambda h, x: (_sin_rule(W @ h + x), ()), h0, xs)[0] ** 2)


def _scan_around_a_while_loop(W, h0, xs):
    def step(h, x):
        inner = gs.while_loop(
            lambda c: c[1] < 3, lambda c: (gnp.sin(W @ c[0]) + x, c[1] + 1), (h, 0)
        )
        return inner[0], ()

    return gnp.sum(gs.scan(step, h0, xs)[0] ** 2)


@pytest.mark.parametrize("fn", [_scan_calling_a_custom_rule, _scan_around_a_while_loop])
@pytest.mark.parametrize("wrt", [(0, 1, 2), (1,), (2,)])
def test_a_scan_that_recomputes_counts_the_carry_entering_every_iteration(fn, wrt):
    """A body calling custom rules, or keeping a loop tape, has no residuals to stack: the scan
    keeps the carry entering each iteration, steps x the carry's bytes, for any wrt. Counted
    before anything is built (as a tape budget does), and the gradient under a budget is the
    one without."""
    steps, hidden = 5, 4
    args = (
        RNG.standard_normal((hidden, hidden)) * 0.4,
        RNG.standard_normal(hidden),
        RNG.standard_normal((steps, hidden)),
    )
    graph = gs.trace(fn, *args)
    residuals = reverse_residual_bytes(graph, wrt)
    assert residuals == steps * hidden * 8
    want = gs.Engine().grad(graph, *args, argnums=wrt)
    eng = gs.Engine(max_tape_bytes=10**6)
    _assert_same_bits(eng.grad(graph, *args, argnums=wrt), want)
    assert eng.last_stats.tape_bytes >= residuals
