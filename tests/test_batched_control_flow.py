"""Batch rules of `while_loop` and `cond` whose predicate depends on the differentiated input.

Where each rule is reached:
- `check_grad` evaluates the primal graph batched over its perturbations (one member per
  perturbed element): the loop's condition and the branch predicate are batched, so members
  may stop at different iterations or take different branches in one pass.
- `jacobian` batches only the tangents (forward) or cotangents (reverse): the primal runs once,
  a cond's predicate stays unbatched, and a while loop's tangent or transposed loop (over the
  recorded carries) is the batched op.

Members stopping at different iterations or taking different branches are made to happen at a
point on the boundary, with a function that is linear there (so that differences are exact
and do not depend on the step): a wrong batch rule changes the numbers."""

import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp

ENG = gs.Engine()
W = np.array([1.0, -2.0, 0.5])


# ---- while_loop in check_grad: members that stop at different iterations ------------------------


def _rates(x1, x2):
    return np.array([x1 * x2 + 1.0, x1 - x2**2, np.sin(x1)])


def unit_steps(x):
    """x0 consumed in unit steps: ceil(x0) iterations, each adding min(t, 1) * g(x1, x2), so the
    result is exactly x0 * W.g for x0 > 0 whatever the trip count."""
    g = gnp.stack([x[1] * x[2] + 1.0, x[1] - x[2] ** 2, gnp.sin(x[1])])

    def body(c):
        t, acc = c
        return t - 1.0, acc + gnp.minimum(t, 1.0) * g

    _, acc = gs.while_loop(lambda c: c[0] > 0, body, (x[0], gnp.zeros(3)))
    return gnp.sum(acc * W)


def unit_steps_gradient(x):
    x0, x1, x2 = x
    dg1 = np.array([x2, 1.0, np.cos(x1)])
    dg2 = np.array([x1, -2 * x2, 0.0])
    return np.array([W @ _rates(x1, x2), x0 * (W @ dg1), x0 * (W @ dg2)])


def unit_steps_numpy(x):
    t, acc = x[0], np.zeros(3)
    while t > 0:
        t, acc = t - 1.0, acc + min(t, 1.0) * _rates(x[1], x[2])
    return acc @ W


@pytest.mark.parametrize("method", ["central", "forward"])
def test_while_loop_members_stopping_at_different_iterations(method):
    # x0 just below 3: the member perturbing x0 upwards runs 4 iterations, the others 3. A
    # member that ran a 4th iteration it should not have would add -1e-9 * g: off by ~1e-4
    # after dividing by the step.
    x = np.array([3.0 - 1e-9, 0.7, -1.3])
    graph = gs.trace(unit_steps, x)
    assert float(ENG.evaluate(graph, x)) == pytest.approx(unit_steps_numpy(x), rel=1e-14)
    want = unit_steps_gradient(x)
    report = ENG.check_grad(graph, x, method=method)
    np.testing.assert_allclose(report.analytic[0], want, rtol=1e-13)
    tolerance = 1e-8 if method == "central" else 2e-6
    np.testing.assert_allclose(report.numeric[0], want, rtol=0, atol=tolerance)
    assert report.ok


def test_while_loop_member_trip_counts_in_the_complex_step():
    x = np.array([3.0 - 1e-9, 0.7, -1.3])
    report = ENG.check_grad(gs.trace(unit_steps, x), x, method="complex")
    np.testing.assert_allclose(report.numeric[0], unit_steps_gradient(x), rtol=1e-13)
    assert report.ok


# ---- while_loop in jacobians: an elementwise Newton iteration, elements converging apart --------


def newton_sqrt(a):
    """sqrt(a) elementwise; each element stops updating once its own residual is small, the
    loop once all have (trip counts differ per element: a spans eight decades)."""

    def going(y):
        return gnp.abs(y * y - a) > 1e-10 * a

    def body(c):
        y, k = c
        return gnp.where(going(y), 0.5 * (y + a / y), y), k + 1

    y, _ = gs.while_loop(lambda c: gnp.max(going(c[0])), body, (a * 0.5 + 0.5, 0))
    return y


A = np.array([1e-2, 2.0, 3e3, 1e6])


def test_newton_iteration_jacobian_forward_and_reverse():
    graph = gs.trace(newton_sqrt, A)
    np.testing.assert_allclose(ENG.evaluate(graph, A), np.sqrt(A), rtol=1e-10)
    want = np.diag(0.5 / np.sqrt(A))
    for mode in ("fwd", "rev"):
        np.testing.assert_allclose(ENG.jacobian(graph, A, mode=mode), want, rtol=1e-9, atol=0)


def test_newton_iteration_elementwise_trip_counts_differ():
    # per element, the number of updates it took (reference run in NumPy)
    y, counts = A * 0.5 + 0.5, np.zeros(4, int)
    while np.any(np.abs(y * y - A) > 1e-10 * A):
        move = np.abs(y * y - A) > 1e-10 * A
        counts += move
        y = np.where(move, 0.5 * (y + A / y), y)
    assert len(set(counts.tolist())) >= 3
    weights = np.array([1.0, -1.0, 2.0, 0.5])
    graph = gs.trace(lambda a: gnp.sum(newton_sqrt(a) * weights), A)
    np.testing.assert_allclose(ENG.grad(graph, A), weights * 0.5 / np.sqrt(A), rtol=1e-9)
    report = ENG.check_grad(graph, A)
    np.testing.assert_allclose(report.numeric[0], weights * 0.5 / np.sqrt(A), rtol=1e-6)
    report = ENG.check_grad(graph, A, method="complex")
    np.testing.assert_allclose(report.numeric[0], weights * 0.5 / np.sqrt(A), rtol=1e-9)


# ---- cond with a batched predicate (check_grad) -------------------------------------------------


def _kinked(x, pred, at):
    """x[at] * A(rest) on one side of x[at] = 0 and x[at] * B(rest) on the other: continuous,
    with a kink in x[at] only; the members of check_grad's batch (member j perturbs element j)
    take different branches at x[at] = 0."""
    rest = gnp.concatenate([x[:at], x[at + 1 :]])

    def true_fn(v, r):
        return v * (2.0 + r[0] * r[1])

    def false_fn(v, r):
        return v * (gnp.cos(r[0]) - 3.0 * r[1])

    return gs.cond(pred(x[at]), true_fn, false_fn, x[at], rest)


def _a_b(rest):
    return 2.0 + rest[0] * rest[1], np.cos(rest[0]) - 3.0 * rest[1]


REST = np.array([0.4, -1.1])


def _point(value, at):
    return np.insert(REST, at, value)


@pytest.mark.parametrize("at", [0, 2], ids=["first_member", "last_member"])
@pytest.mark.parametrize(
    "pred", [lambda v: v > 0, lambda v: v >= 0], ids=["greater", "greater_equal"]
)
def test_cond_batched_predicate_members_take_their_own_branch(pred, at):
    x = _point(0.0, at)
    graph = gs.trace(lambda x: _kinked(x, pred, at), x)
    a, b = _a_b(REST)
    report = ENG.check_grad(graph, x)
    # at the kink the central difference is the mean of the one-sided slopes, exactly:
    # (f(h) - f(-h)) / 2h = (h A + h B) / 2h, whichever side x[at] = 0 itself belongs to
    want = np.zeros(3)
    want[at] = (a + b) / 2
    np.testing.assert_allclose(report.numeric[0], want, rtol=1e-12, atol=0)
    # the analytic gradient is the branch taken at 0
    want[at] = a if pred(0.0) else b
    np.testing.assert_allclose(report.analytic[0], want, rtol=1e-15, atol=0)
    assert not report.ok  # a kink: the one-sided and central slopes differ


@pytest.mark.parametrize("at", [0, 2])
@pytest.mark.parametrize("value", [1.5, -1.5])
def test_cond_batched_predicate_away_from_the_kink(value, at):
    x = _point(value, at)
    graph = gs.trace(lambda x: _kinked(x, lambda v: v > 0, at), x)
    r0, r1 = REST
    if value > 0:
        want = [2.0 + r0 * r1, value * r1, value * r0]
    else:
        want = [np.cos(r0) - 3.0 * r1, -value * np.sin(r0), -3.0 * value]
    want = np.insert(want[1:], at, want[0])
    for method in ("central", "complex"):
        report = ENG.check_grad(graph, x, method=method)
        assert report.ok
        np.testing.assert_allclose(report.analytic[0], want, rtol=1e-14)
        np.testing.assert_allclose(report.numeric[0], want, rtol=1e-8, atol=1e-9)


def test_cond_batched_predicate_with_array_outputs():
    """Branches giving arrays: the per-member selection broadcasts over the trailing axes."""

    def f(x):
        out = gs.cond(
            x[0] > 0,
            lambda v: gnp.outer(v, v) * 2.0,
            lambda v: gnp.outer(v, gnp.sin(v)),
            x,
        )
        return gnp.sum(out * np.arange(9.0).reshape(3, 3))

    m = np.arange(9.0).reshape(3, 3)
    for x in (np.array([0.5, -1.0, 2.0]), np.array([-0.5, -1.0, 2.0])):
        if x[0] > 0:
            want = 2.0 * (m + m.T) @ x
        else:
            want = m @ np.sin(x) + np.cos(x) * (m.T @ x)
        report = ENG.check_grad(gs.trace(f, x), x)
        assert report.ok
        np.testing.assert_allclose(report.analytic[0], want, rtol=1e-13)
        np.testing.assert_allclose(report.numeric[0], want, rtol=1e-8, atol=1e-8)


# ---- cond inside batched Jacobians and Hessians (predicate unbatched) ---------------------------


def branchy(x):
    return gs.cond(
        x[0] > 0,
        lambda v: gnp.sin(v) * v[1],
        lambda v: v * v * v[2],
        x,
    )


@pytest.mark.parametrize("x0", [0.8, -0.8])
def test_cond_in_jacobian_and_hessian(x0):
    x = np.array([x0, 1.3, -0.6])
    graph = gs.trace(branchy, x)
    if x0 > 0:
        want = np.diag(np.cos(x) * x[1])
        want[:, 1] += np.sin(x)
    else:
        want = np.diag(2 * x * x[2])
        want[:, 2] += x * x
    for mode in ("fwd", "rev"):
        np.testing.assert_allclose(ENG.jacobian(graph, x, mode=mode), want, rtol=1e-14, atol=0)
    c = np.array([1.0, -2.0, 0.5])
    total = gs.trace(lambda x: gnp.sum(branchy(x) * c), x)
    hess = ENG.hessian(total, x)
    if x0 > 0:  # f = x1 * sum(c sin x)
        want_h = np.diag(-c * np.sin(x) * x[1])
        want_h[1, :] += c * np.cos(x)
        want_h[:, 1] += c * np.cos(x)
    else:  # f = x2 * sum(c x^2)
        want_h = np.diag(2 * c * x[2])
        want_h[2, :] += 2 * c * x
        want_h[:, 2] += 2 * c * x
    np.testing.assert_allclose(hess, want_h, rtol=1e-13, atol=1e-15)


def test_cond_batched_predicate_mixed_members_with_vector_outputs():
    """As the kink test above, with branches giving vectors (of 2, while the batch has 3
    members): the per-member selection broadcasts over the trailing axis."""
    w = np.array([1.5, -0.5])

    def f(x):
        out = gs.cond(
            x[0] > 0,
            lambda v, r: v * gnp.stack([2.0 + r[0] * r[1], r[0]]),
            lambda v, r: v * gnp.stack([gnp.cos(r[0]) - 3.0 * r[1], r[1] * r[1]]),
            x[0],
            x[1:],
        )
        return gnp.sum(out * w)

    x = _point(0.0, 0)
    r0, r1 = REST
    a = w @ [2.0 + r0 * r1, r0]
    b = w @ [np.cos(r0) - 3.0 * r1, r1 * r1]
    report = ENG.check_grad(gs.trace(f, x), x)
    np.testing.assert_allclose(report.numeric[0], [(a + b) / 2, 0.0, 0.0], rtol=1e-12, atol=0)


def test_cond_batched_predicate_with_an_unbatched_operand():
    """check_grad perturbs one input at a time: the predicate and x are batched, y is not."""

    def f(x, y):
        out = gs.cond(
            x[0] > 0,
            lambda y, x: gnp.sum(gnp.sin(x) * y),
            lambda y, x: gnp.sum(x * x) * y[0],
            y,
            x,
        )
        return out

    y = np.array([0.5, -1.0, 2.0])
    for x0 in (0.7, -0.7):
        x = np.array([x0, 0.3, -1.2])
        graph = gs.trace(f, x, y)
        if x0 > 0:
            want_x, want_y = np.cos(x) * y, np.sin(x)
        else:
            want_x, want_y = 2 * x * y[0], np.array([np.sum(x * x), 0.0, 0.0])
        report = ENG.check_grad(graph, x, y)
        assert report.ok
        np.testing.assert_allclose(report.numeric[0], want_x, rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(report.numeric[1], want_y, rtol=1e-8, atol=1e-9)


def test_cond_in_jacobians_of_a_matrix_input():
    """The batch axis (6 basis tangents of a 2x3 input) differs from every other axis."""
    m = np.arange(1.0, 7.0).reshape(2, 3)

    def f(x):
        return gs.cond(x[0, 0] > 0, lambda a: gnp.sin(a) * m, lambda a: a * a, x)

    for sign in (1.0, -1.0):
        x = np.array([[0.4, -1.0, 2.0], [0.3, 0.8, -0.6]]) * sign
        graph = gs.trace(f, x)
        slope = np.cos(x) * m if sign > 0 else 2 * x
        want = np.diag(slope.ravel()).reshape(2, 3, 2, 3)
        for mode in ("fwd", "rev"):
            np.testing.assert_allclose(ENG.jacobian(graph, x, mode=mode), want, rtol=1e-14)


# ---- checkpoint under the batch transform ---------------------------------------------------------


def test_checkpoint_in_jacobians_and_check_grad():
    m = np.arange(1.0, 7.0).reshape(2, 3)
    body = gs.checkpoint(lambda a, b: (gnp.sin(a) * b, a * b))

    def f(x, y):
        s, p = body(x, y)
        return s + p * m

    x = np.array([[0.4, -1.0, 2.0], [0.3, 0.8, -0.6]])
    y = np.array([[1.5, 0.5, -2.0], [1.0, -0.3, 0.7]])
    graph = gs.trace(f, x, y)
    want_x = np.diag((np.cos(x) * y + y * m).ravel()).reshape(2, 3, 2, 3)
    want_y = np.diag((np.sin(x) + x * m).ravel()).reshape(2, 3, 2, 3)
    for mode in ("fwd", "rev"):
        jx, jy = ENG.jacobian(graph, x, y, argnums=(0, 1), mode=mode)
        np.testing.assert_allclose(jx, want_x, rtol=1e-14)
        np.testing.assert_allclose(jy, want_y, rtol=1e-14)
    total = gs.trace(lambda x, y: gnp.sum(f(x, y)), x, y)
    report = ENG.check_grad(total, x, y, method="complex")
    assert report.ok
    np.testing.assert_allclose(report.numeric[0], np.cos(x) * y + y * m, rtol=1e-13)
    np.testing.assert_allclose(report.numeric[1], np.sin(x) + x * m, rtol=1e-13)
