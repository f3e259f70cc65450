"""Control flow in graphs: cond, fori_loop, scan, while_loop and checkpoint, each checked
against the same computation unrolled in plain Python (differentiated by the engine) and
against finite differences."""

import numpy as np
import pytest
from gradserve.engine.ops.loops import recomputing

import gradserve as gs
import gradserve.numpy as gnp

ENG = gs.Engine()
RNG = np.random.default_rng(20261126)


def central_difference(graph, args, i, h=1e-6):
    x = np.asarray(args[i], dtype=float)
    grad = np.zeros_like(x)
    for j in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[j] += h
        down[j] -= h
        plus = float(ENG.evaluate(graph, *args[:i], up, *args[i + 1 :]))
        minus = float(ENG.evaluate(graph, *args[:i], down, *args[i + 1 :]))
        grad[j] = (plus - minus) / (2 * h)
    return grad


def test_cond_takes_each_branch_with_its_own_derivative():
    graph = gs.trace(
        lambda x, y: gs.cond(x > 0, lambda a: gnp.sin(a) * y, lambda a: a * a, x), 1.0, 2.0
    )
    value, (dx, dy) = ENG.value_and_grad(graph, 0.5, 2.0, argnums=(0, 1))
    assert value == pytest.approx(np.sin(0.5) * 2)
    assert (dx, dy) == (pytest.approx(2 * np.cos(0.5)), pytest.approx(np.sin(0.5)))
    value, (dx, dy) = ENG.value_and_grad(graph, -0.5, 2.0, argnums=(0, 1))
    assert value == pytest.approx(0.25)
    assert (dx, dy) == (pytest.approx(-1.0), 0.0)
    tangent = ENG.jvp(graph, (0.5, 2.0), (1.0, 0.0))[1]
    assert tangent == pytest.approx(2 * np.cos(0.5))


def test_cond_takes_a_bool_predicate_as_is_and_compares_others_with_zero():
    """A bool predicate reaches the node unchanged (no conversion recorded); an int or float
    one picks the true branch when nonzero, as Python's `if` does."""

    def pick(x, p):
        return gs.cond(p, lambda v: v, lambda v: -v, x)

    as_bool = gs.trace(pick, 1.0, True)
    assert [n.op for n in as_bool.nodes] == ["cond"]
    for example, preds in ((True, (True, False)), (1, (3, 0, -1)), (0.5, (0.25, 0.0, -2.0))):
        graph = gs.trace(pick, 1.0, example)
        for p in preds:
            assert ENG.evaluate(graph, 2.0, p) == (2.0 if p else -2.0)


def test_while_loop_from_a_constant_reads_a_traced_bound():
    """A loop whose initial value is a Python number but whose condition reads a traced
    argument is recorded, not run while tracing."""

    def reference(x):
        v = 0.0
        while v < x:
            v += 1.0
        return v

    graph = gs.trace(lambda x: gs.while_loop(lambda v: v < x, lambda v: v + 1.0, 0.0), 1.0)
    assert [n.op for n in graph.nodes] == ["while_loop"]
    for x in (-1.0, 0.5, 2.5, 4.0):
        assert ENG.evaluate(graph, x) == reference(x)


def test_newton_sqrt_in_fori_loop():
    graph = gs.trace(lambda a: gs.fori_loop(0, 20, lambda i, x: 0.5 * (x + a / x), a), 2.0)
    value, grad = ENG.value_and_grad(graph, 2.0)
    assert value == pytest.approx(np.sqrt(2.0), rel=1e-14)
    assert grad == pytest.approx(0.5 / np.sqrt(2.0), rel=1e-12)
    assert ENG.hessian(graph, 2.0) == pytest.approx(-0.25 * 2.0**-1.5, rel=1e-8)


def _fori_in_python(lower, upper, x):
    for i in range(lower, upper):
        x = x * 2.0 + i
    return x


@pytest.mark.parametrize("lower, upper", [(1, 4), (2, 2), (4, 1)])
def test_fori_loop_runs_range_lower_upper_with_int_or_traced_bounds(lower, upper):
    """Python-int bounds make a scan, traced ones a while_loop: either runs the iterations of
    range(lower, upper), none when upper <= lower."""

    def body(i, x):
        return x * 2.0 + gnp.astype(i, "float64")

    want = _fori_in_python(lower, upper, 0.5)
    assert gs.fori_loop(lower, upper, body, 0.5) == want
    fixed = gs.trace(lambda x: gs.fori_loop(lower, upper, body, x), 0.5)
    assert [n.op for n in fixed.nodes] == ["scan"]
    assert ENG.evaluate(fixed, 0.5) == want
    traced = gs.trace(lambda lo, hi, x: gs.fori_loop(lo, hi, body, x), lower, upper, 0.5)
    assert [n.op for n in traced.nodes] == ["while_loop"]
    assert ENG.evaluate(traced, lower, upper, 0.5) == want


def _rnn_inputs(hidden=8, steps=30):
    return (
        RNG.standard_normal((hidden, hidden)) * 0.3,
        RNG.standard_normal((hidden, 3)) * 0.3,
        RNG.standard_normal(hidden) * 0.1,
        RNG.standard_normal((steps, 3)),
    )


def rnn_scan(W, U, h0, xs):
    _, hs = gs.scan(lambda h, x: (gnp.tanh(W @ h + U @ x),) * 2, h0, xs)
    return gnp.sum(hs**2)


def rnn_unrolled(W, U, h0, xs):
    h, total = h0, 0.0
    for t in range(xs.shape[0]):
        h = gnp.tanh(W @ h + U @ xs[t])
        total = total + gnp.sum(h**2)
    return total


def test_rnn_scan_matches_unrolled_and_finite_differences():
    args = _rnn_inputs()
    scanned, unrolled = gs.trace(rnn_scan, *args), gs.trace(rnn_unrolled, *args)
    v1, g1 = ENG.value_and_grad(scanned, *args, argnums=(0, 1, 2, 3))
    v2, g2 = ENG.value_and_grad(unrolled, *args, argnums=(0, 1, 2, 3))
    assert v1 == pytest.approx(v2, rel=1e-12)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        g1[2], central_difference(scanned, list(args), 2), rtol=1e-6, atol=1e-8
    )
    assert ENG.check_grad(scanned, *args, method="complex").ok


def test_hvp_and_jacobian_through_scan():
    args = _rnn_inputs(hidden=5, steps=7)
    scanned, unrolled = gs.trace(rnn_scan, *args), gs.trace(rnn_unrolled, *args)
    tangents = tuple(RNG.standard_normal(np.shape(a)) for a in args)
    for a, b in zip(ENG.hvp(scanned, args, tangents), ENG.hvp(unrolled, args, tangents)):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    W, U, h0, xs = args
    states = gs.trace(
        lambda h0: gs.scan(lambda h, x: (gnp.tanh(W @ h + U @ x),) * 2, h0, xs)[1], h0
    )
    forward, reverse = ENG.jacobian(states, h0, mode="fwd"), ENG.jacobian(states, h0, mode="rev")
    assert forward.shape == (7, 5, 5)
    np.testing.assert_allclose(forward, reverse, rtol=1e-12, atol=1e-14)


def test_scan_tape_grows_linearly_with_steps():
    tapes = []
    for steps in (100, 400):
        args = _rnn_inputs(hidden=16, steps=steps)
        graph = gs.trace(rnn_scan, *args)
        ENG.grad(graph, *args, argnums=(0, 1))
        tapes.append(ENG.last_stats.tape_bytes)
    assert tapes[0] > 0
    assert tapes[1] / tapes[0] == pytest.approx(4.0, rel=0.05)


def test_while_loop_with_data_dependent_trip_count():
    def halve(x):
        return gs.while_loop(
            lambda c: c[0] > 1.0, lambda c: (c[0] * 0.5, c[1] * gnp.sin(c[0])), (x, x)
        )[1]

    def reference(x):
        c0, c1 = x, x
        while c0 > 1.0:
            c0, c1 = c0 * 0.5, c1 * np.sin(c0)
        return c1

    graph = gs.trace(halve, 10.0)
    for x in (10.0, 3.0, 0.5):
        assert ENG.evaluate(graph, x) == pytest.approx(reference(x))
        h = 1e-6
        numeric = (reference(x + h) - reference(x - h)) / (2 * h)
        assert ENG.jvp(graph, (x,), (1.0,))[1] == pytest.approx(numeric, rel=1e-6)
        assert ENG.jacobian(graph, x, mode="fwd") == pytest.approx(numeric, rel=1e-6)


def test_while_loop_reverse_mode_stores_each_iteration():
    def halve(x, w):
        return gs.while_loop(
            lambda c: c[0] > 1.0, lambda c: (c[0] * 0.5, c[1] * gnp.sin(c[0] * w)), (x, x)
        )[1]

    graph = gs.trace(halve, 10.0, 1.0)
    tapes = []
    for x in (3.0, 10.0, 1000.0):  # 2, 4 and 10 iterations
        grad = ENG.grad(graph, x, 1.0, argnums=(0, 1))
        tapes.append(ENG.last_stats.tape_bytes)
        for i in range(2):
            np.testing.assert_allclose(grad[i], central_difference(graph, [x, 1.0], i), rtol=1e-6)
    assert tapes[0] < tapes[1] < tapes[2]
    assert tapes[2] / tapes[1] == pytest.approx(10 / 4, rel=0.01)


def rnn_loss_in_carry(W, U, h0, xs):
    def step(carry, x):
        h, total = carry
        h = gnp.tanh(W @ h + U @ x)
        return (h, total + gnp.sum(h**2)), ()

    (_, total), _ = gs.scan(step, (h0, 0.0), xs)
    return total


def test_tape_budget_recomputes_and_gives_the_same_gradient_bit_for_bit():
    args = _rnn_inputs(hidden=16, steps=200)
    graph = gs.trace(rnn_loss_in_carry, *args)
    plain = ENG.grad(graph, *args, argnums=(0, 1, 2))
    plain_tape = ENG.last_stats.tape_bytes
    assert ENG.last_stats.recomputed_ops == 0
    for fraction in (4, 20):
        budget = plain_tape // fraction
        engine = gs.Engine(max_tape_bytes=budget)
        grads = engine.grad(graph, *args, argnums=(0, 1, 2))
        for a, b in zip(grads, plain):
            assert np.array_equal(a, b)
        assert 0 < engine.last_stats.tape_bytes <= budget
        assert engine.last_stats.recomputed_ops > 0
    with pytest.raises(gs.LimitError):
        gs.Engine(max_tape_bytes=16).grad(graph, *args, argnums=(0, 1, 2))


def test_while_loop_iteration_cap():
    graph = gs.trace(
        lambda x: gs.while_loop(lambda c: c > 0, lambda c: c + 1.0, x, max_iterations=50), 1.0
    )
    with pytest.raises(gs.LimitError, match="50 iterations"):
        ENG.evaluate(graph, 1.0)
    assert ENG.evaluate(graph, -1.0) == -1.0


def test_nested_loops():
    graph = gs.trace(
        lambda a: gs.fori_loop(0, 3, lambda i, x: gs.fori_loop(0, 2, lambda j, y: y * a, x), 1.0),
        1.1,
    )
    value, grad = ENG.value_and_grad(graph, 1.1)
    assert value == pytest.approx(1.1**6)
    assert grad == pytest.approx(6 * 1.1**5)


def test_checkpoint_keeps_only_its_inputs():
    x = np.linspace(0.1, 1.0, 1000)
    plain = gs.trace(lambda x: gnp.sum(gnp.sin(gnp.sin(x)) * x), x)
    saved = gs.trace(lambda x: gnp.sum(gs.checkpoint(lambda a: gnp.sin(gnp.sin(a)) * a)(x)), x)
    expected = np.cos(np.sin(x)) * np.cos(x) * x + np.sin(np.sin(x))
    np.testing.assert_allclose(ENG.grad(plain, x), expected, rtol=1e-12)
    plain_tape = ENG.last_stats.tape_bytes
    np.testing.assert_allclose(ENG.grad(saved, x), expected, rtol=1e-12)
    assert ENG.last_stats.tape_bytes < plain_tape


def test_python_control_flow_on_traced_values_points_to_control_flow_ops():
    def branchy(x):
        return x if x > 0 else -x

    with pytest.raises(TypeError, match="gs.cond"):
        gs.trace(branchy, 1.0)


def test_control_flow_graphs_round_trip_and_validate():
    args = _rnn_inputs(hidden=4, steps=5)
    graph = gs.trace(rnn_scan, *args)
    again = gs.Graph.from_bytes(graph.to_bytes())
    assert again.digest == graph.digest
    assert ENG.evaluate(again, *args) == pytest.approx(ENG.evaluate(graph, *args))

    from gradserve.v1 import graph_pb2

    message = graph_pb2.Graph.FromString(graph.to_bytes())
    scan_node = next(n for n in message.nodes if n.op == "scan")
    body = next(a for a in scan_node.attributes if a.name == "body").graph
    body.outputs[0].shape[:] = [3]  # the carry would change shape between iterations
    with pytest.raises(gs.GraphError, match="node 0 'scan' attribute 'body'"):
        gs.Graph.from_bytes(message.SerializeToString())


def test_should_stop_interrupts_a_running_loop():
    graph = gs.trace(
        lambda x: gs.while_loop(lambda c: c > 0, lambda c: c + 1.0, x, max_iterations=10**9), 1.0
    )
    calls = []

    def should_stop():
        calls.append(1)
        if len(calls) > 1000:
            raise TimeoutError("deadline")

    with pytest.raises(TimeoutError):
        ENG.evaluate(graph, 1.0, should_stop=should_stop)
    assert ENG.evaluate(graph, -1.0) == -1.0  # the next call is not affected


def test_hvp_through_scan_under_a_tape_budget():
    """Second order does not use loop tapes: under a budget it works while the stacked carries
    fit, and is a LimitError when they do not."""
    args = _rnn_inputs(hidden=6, steps=40)
    graph = gs.trace(rnn_loss_in_carry, *args)
    tangents = tuple(RNG.standard_normal(np.shape(a)) for a in args)
    plain = ENG.hvp(graph, args, tangents)
    budgeted = gs.Engine(max_tape_bytes=10**7).hvp(graph, args, tangents)
    for a, b in zip(plain, budgeted):
        assert np.array_equal(a, b)
    with pytest.raises(gs.LimitError, match="tape"):
        gs.Engine(max_tape_bytes=100).hvp(graph, args, tangents)


def test_reverse_mode_through_a_while_loop_inside_a_scan():
    rng = np.random.default_rng(11)
    x0, W, xs = (
        rng.standard_normal(3),
        rng.standard_normal((3, 3)) * 0.5,
        rng.standard_normal((5, 3)),
    )

    def nested(x, w):
        def outer(c, xi):
            c = gs.while_loop(
                lambda d: d[1] < 3, lambda d: (gnp.sin(w @ d[0]) + xi, d[1] + 1), (c, 0)
            )[0]
            return c, gnp.sum(c)

        return gnp.sum(gs.scan(outer, x, xs)[1] ** 2)

    def unrolled(x, w):
        c, ys = x, []
        for t in range(5):
            for _ in range(3):
                c = gnp.sin(w @ c) + xs[t]
            ys.append(gnp.sum(c))
        return gnp.sum(gnp.stack(ys) ** 2)

    got = ENG.grad(gs.trace(nested, x0, W), x0, W, argnums=(0, 1))
    want = ENG.grad(gs.trace(unrolled, x0, W), x0, W, argnums=(0, 1))
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_nested_scans_under_a_tape_budget_give_the_same_gradient():
    rng = np.random.default_rng(12)
    x0, W, xs = (
        rng.standard_normal(8),
        rng.standard_normal((8, 8)) * 0.3,
        rng.standard_normal((60, 8)),
    )

    def nested(x, w):
        def outer(c, xi):
            return gs.scan(lambda h, _: (gnp.tanh(w @ h + xi), ()), c, None, length=10)[0], ()

        return gnp.sum(gs.scan(outer, x, xs)[0] ** 2)

    graph = gs.trace(nested, x0, W)
    plain = gs.Engine()
    reference = plain.grad(graph, x0, W, argnums=(0, 1))
    carries_only = gs.Engine()
    with recomputing():  # a budget under what stacking the carries alone would hold
        carries_only.grad(graph, x0, W, argnums=(0, 1))
    budget = carries_only.last_stats.tape_bytes // 4
    engine = gs.Engine(max_tape_bytes=budget)
    for a, b in zip(engine.grad(graph, x0, W, argnums=(0, 1)), reference):
        assert np.array_equal(a, b)
    assert engine.last_stats.tape_bytes <= budget and engine.last_stats.recomputed_ops > 0


def test_a_concrete_scan_checks_its_carry_as_a_traced_one():
    with pytest.raises(gs.GraphError, match="keeps its shape and dtype"):
        gs.scan(
            lambda c, _: (gnp.astype(c, "float64") * 2, None),
            np.ones(2, np.float32),
            None,
            length=3,
        )
    with pytest.raises(gs.GraphError, match="keeps its shape and dtype"):
        gs.scan(lambda c, _: (gnp.ones(3), None), np.ones(2), None, length=3)
