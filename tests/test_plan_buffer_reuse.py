"""The planner's buffer reuse (docs/engine.md, "Compile once"): an elementwise op may write into
an input that dies at that step, and large arrays that die go to a per-plan pool that later
ops, in this call or the next, write into. Neither may touch memory that is still to be read:
a view (transpose, reshape, slice) of the value, or an array already returned to the caller.

The arrays are large enough for the pool (at least 4096 elements), each graph is called
several times on different inputs (the pool carries buffers from one call to the next), and
every result is compared with NumPy."""

import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp

N = 72  # N * N = 5184 elements: above the pool's threshold
RNG = np.random.default_rng(20260304)


def _inputs(count, shape=(N, N)):
    return [RNG.standard_normal(shape) * 0.5 for _ in range(count)]


def views_read_after_the_last_elementwise_use(n):
    def f(x):
        a = gnp.exp(x)  # a fresh buffer
        t = a.T  # views of a, read only at the end
        r = gnp.reshape(a, (n * n,))
        s = a[1:, ::2]
        b = gnp.sin(a)  # a's last elementwise use: must not write into a
        c = gnp.cos(b)  # a pooled op: must not get a's buffer
        d = c * 3.0
        return d + t + gnp.reshape(r, (n, n)) + gnp.sum(s)

    return f


def views_numpy(x):
    a = np.exp(x)
    return np.cos(np.sin(a)) * 3.0 + a.T + a + np.sum(a[1:, ::2])


@pytest.mark.parametrize("n", [3, N], ids=["small", "pooled"])
def test_a_view_is_read_after_its_base_dies_in_an_elementwise_op(n):
    graph = gs.trace(views_read_after_the_last_elementwise_use(n), np.ones((n, n)))
    eng = gs.Engine()
    for x in _inputs(3, (n, n)):
        np.testing.assert_allclose(eng.evaluate(graph, x), views_numpy(x), rtol=1e-13)


def transpose_in_the_backward_pass(x, y):
    a = gnp.tanh(x * y)  # large, dies in the forward pass after its transpose is taken
    t = gnp.transpose(a)
    b = gnp.exp(a) * 0.5
    return gnp.sum(b * t) + gnp.sum(gnp.sin(b))


def transpose_numpy_grad(x, y):
    a = np.tanh(x * y)
    b = np.exp(a) * 0.5
    # f = sum(b * a.T) + sum(sin b);  df/da = (a.T + cos b) * b (through b) + b.T (through t)
    da = (a.T + np.cos(b)) * b + b.T
    dz = da * (1 - a * a)
    return np.sum(b * a.T) + np.sum(np.sin(b)), dz * y, dz * x


def test_gradient_with_a_transposed_value_across_calls():
    x, y = _inputs(2)
    graph = gs.trace(transpose_in_the_backward_pass, x, y)
    eng = gs.Engine()
    for _ in range(3):
        x, y = _inputs(2)
        value, (gx, gy) = eng.value_and_grad(graph, x, y, argnums=(0, 1))
        want_value, want_gx, want_gy = transpose_numpy_grad(x, y)
        assert float(value) == pytest.approx(want_value, rel=1e-12)
        np.testing.assert_allclose(gx, want_gx, rtol=1e-11, atol=1e-12)
        np.testing.assert_allclose(gy, want_gy, rtol=1e-11, atol=1e-12)


def chain_of_temporaries(x):
    """Several large temporaries die along the way (pool traffic inside one call), and the
    outputs are a view of one of them and a fresh array."""
    a = gnp.exp(x)
    b = gnp.sin(a) + 1.0
    c = gnp.cos(b) * a
    d = gnp.tanh(c)
    e = gnp.sqrt(d * d + 1.0)
    return gnp.transpose(a), e - b


def chain_numpy(x):
    a = np.exp(x)
    b = np.sin(a) + 1.0
    d = np.tanh(np.cos(b) * a)
    return a.T, np.sqrt(d * d + 1.0) - b


def test_results_returned_to_the_caller_are_not_overwritten_by_later_calls():
    graph = gs.trace(chain_of_temporaries, np.ones((N, N)))
    eng = gs.Engine()
    inputs = _inputs(4)
    results = [eng.evaluate(graph, x) for x in inputs]
    for x, (view, fresh) in zip(inputs, results):
        want_view, want_fresh = chain_numpy(x)
        np.testing.assert_array_equal(view, want_view)
        np.testing.assert_allclose(fresh, want_fresh, rtol=1e-13)
    # and the outputs of one call are distinct arrays from those of another
    assert not np.shares_memory(results[0][1], results[1][1])
    assert not np.shares_memory(results[0][0], results[1][0])


def test_gradients_returned_to_the_caller_are_not_overwritten_by_later_calls():
    def loss(x):
        a = gnp.exp(x)
        return gnp.sum(gnp.sin(a) * gnp.transpose(a))

    graph = gs.trace(loss, np.ones((N, N)))
    eng = gs.Engine()
    inputs = _inputs(3)
    grads = [eng.grad(graph, x) for x in inputs]
    for x, grad in zip(inputs, grads):
        a = np.exp(x)
        want = (np.cos(a) * a.T + np.sin(a).T) * a
        np.testing.assert_allclose(grad, want, rtol=1e-12, atol=1e-12)


def test_an_input_is_never_written_into():
    def f(x, y):
        a = gnp.sin(x)  # x dies here (its last use) but belongs to the caller
        return a * gnp.transpose(y) + y

    graph = gs.trace(f, np.ones((N, N)), np.ones((N, N)))
    eng = gs.Engine()
    for _ in range(3):
        x, y = _inputs(2)
        x_before, y_before = x.copy(), y.copy()
        out = eng.evaluate(graph, x, y)
        np.testing.assert_array_equal(x, x_before)
        np.testing.assert_array_equal(y, y_before)
        np.testing.assert_allclose(out, np.sin(x) * y.T + y, rtol=1e-14)


def test_an_operand_read_twice_in_one_step():
    """An op whose two operands are the same dying value, or the value and its transpose."""

    def f(x):
        a = gnp.exp(x)
        b = a * a  # both operands are a, which dies here
        c = gnp.sin(b)
        return c + gnp.transpose(c)  # c and its view in one step

    graph = gs.trace(f, np.ones((N, N)))
    eng = gs.Engine()
    for x in _inputs(3):
        a = np.exp(x)
        c = np.sin(a * a)
        np.testing.assert_allclose(eng.evaluate(graph, x), c + c.T, rtol=1e-14)


# Each op that may give a view of its operand (NumPy returns one), in the graph and in NumPy.
VIEW_OPS = {
    "flip": (lambda a: gnp.flip(a, 0), lambda a: np.flip(a, 0)),
    "einsum_transpose": (lambda a: gnp.einsum("ij->ji", a), lambda a: a.T),
    "einsum_diagonal": (lambda a: gnp.einsum("ii->i", a), np.diagonal),
    "reshape": (lambda a: gnp.reshape(a, (N * N,)), lambda a: a.reshape(N * N)),
    "broadcast_to": (
        lambda a: gnp.broadcast_to(a[:1], (N, N)),
        lambda a: np.broadcast_to(a[:1], (N, N)),
    ),
}


@pytest.mark.parametrize("name", sorted(VIEW_OPS))
def test_a_view_made_by_an_op_outlives_its_base(name):
    """The op's output may be a view of `a`: `a`'s last elementwise use must not write into
    `a`, and the elementwise op on the view must not write into it (that is `a` again)."""
    view_op, numpy_view = VIEW_OPS[name]

    def f(x):
        a = gnp.exp(x)
        v = view_op(a)
        b = gnp.sin(a)  # a's last elementwise use
        w = gnp.cos(v)  # v's last use
        return gnp.sum(b) + gnp.sum(w) + gnp.sum(v * 2.0)

    graph = gs.trace(f, np.ones((N, N)))
    eng = gs.Engine()
    for x in _inputs(3):
        a = np.exp(x)
        v = numpy_view(a)
        want = np.sum(np.sin(a)) + np.sum(np.cos(v)) + np.sum(v * 2.0)
        assert float(eng.evaluate(graph, x)) == pytest.approx(want, rel=1e-12)


def test_a_pool_keeps_no_more_buffers_than_its_plan_takes():
    """A small MLP's gradient: products with the 2048 rows (buffers of their own) die inside
    the call, and fewer steps of their shape take from the pool than give back to it. Calls
    must not leave buffers behind, call after call (a server grew by a gigabyte a minute)."""
    import tracemalloc

    rng = np.random.default_rng(7)
    args = (
        0.3 * rng.standard_normal((16, 8)),
        0.1 * rng.standard_normal(8),
        0.3 * rng.standard_normal(8),
        rng.standard_normal((2048, 16)),
        rng.standard_normal(2048),
    )

    def mlp_loss(W1, b1, W2, X, y):
        h = gnp.tanh(X @ W1 + b1)
        return gnp.mean((h @ W2 - y) ** 2) + 1e-3 * gnp.sum(W1 * W1)

    graph = gs.trace(mlp_loss, *args)
    eng = gs.Engine()
    for _ in range(3):
        eng.grad(graph, *args, argnums=(0, 1, 2))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(30):
            grads = eng.grad(graph, *args, argnums=(0, 1, 2))
            del grads
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2048 * 8 * 8, grown  # less than one hidden layer's buffer
