"""Tape accounting of the in-process Engine (`last_stats`): the residuals the reverse pass
holds, their count, and the peak of all live arrays. Expected sizes come from the arrays the
program necessarily creates, computed here from shapes."""

import threading

import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp

B, D_IN, D_HID, D_OUT = 64, 100, 200, 10


def mlp(x, W1, W2):
    return gnp.sum(gnp.tanh(x @ W1) @ W2)


@pytest.fixture(scope="module")
def mlp_case():
    rng = np.random.default_rng(0)
    args = (
        rng.normal(size=(B, D_IN)),
        rng.normal(size=(D_IN, D_HID)) * 0.1,
        rng.normal(size=(D_HID, D_OUT)),
    )
    return gs.trace(mlp, *args), args


def test_mlp_value_and_grad_tape(mlp_case):
    graph, args = mlp_case
    eng = gs.Engine()
    value, (g1, g2) = eng.value_and_grad(graph, *args, argnums=(1, 2))
    stats = eng.last_stats
    activation = B * D_HID * 8  # one (B, D_HID) float64 array: x @ W1, or tanh of it
    # the reverse pass needs tanh(x @ W1) (for W2's gradient and tanh's derivative): at least
    # one activation; it never needs more than the forward pass's two intermediates
    assert stats.tape_bytes >= activation
    assert stats.tape_bytes <= 2 * activation + 1024
    assert stats.tape_entries >= 1
    assert stats.peak_bytes >= stats.tape_bytes
    inputs = sum(a.nbytes for a in args)
    assert stats.peak_bytes >= stats.tape_bytes + inputs  # inputs are alive throughout
    # the gradient itself is right (closed form)
    x, W1, W2 = args
    h = np.tanh(x @ W1)
    np.testing.assert_allclose(g2, np.repeat(h.sum(0)[:, None], D_OUT, axis=1), rtol=1e-12)
    np.testing.assert_allclose(g1, x.T @ ((1 - h * h) * W2.sum(1)[None, :]), rtol=1e-10)
    assert float(value) == pytest.approx(np.sum(h @ W2))


def test_evaluate_holds_no_tape(mlp_case):
    graph, args = mlp_case
    eng = gs.Engine()
    eng.value_and_grad(graph, *args, argnums=(1, 2))
    assert eng.last_stats.tape_bytes > 0
    eng.evaluate(graph, *args)
    stats = eng.last_stats
    assert stats.tape_bytes == 0 and stats.tape_entries == 0
    assert stats.peak_bytes >= B * D_HID * 8  # x @ W1 exists at some point
    eng.jvp(graph, args, tuple(np.ones_like(a) for a in args))
    assert eng.last_stats.tape_bytes == 0  # forward mode keeps no tape either


def sin_chain(n):
    def f(v):
        for _ in range(n):
            v = gnp.sin(v)
        return gnp.sum(v)

    return f


@pytest.mark.parametrize("n", [10, 40])
def test_tape_of_a_sin_chain_holds_one_array_per_op(n):
    x = np.linspace(-1, 1, 1000)
    eng = gs.Engine()
    graph = gs.trace(sin_chain(n), x)
    _value, grad = eng.value_and_grad(graph, x)
    stats = eng.last_stats
    # every sin after the first reads an intermediate (its cos is needed): n - 1 arrays of
    # 8000 bytes must be held, or n if cos of the input is held as well
    assert (n - 1) * x.nbytes <= stats.tape_bytes <= (n + 1) * x.nbytes
    assert n - 1 <= stats.tape_entries <= n + 1
    # and the gradient is right: product of cosines along the chain
    v, want = x.copy(), np.ones_like(x)
    for _ in range(n):
        want *= np.cos(v)
        v = np.sin(v)
    np.testing.assert_allclose(grad, want, rtol=1e-12)


def test_tape_grows_linearly_with_chain_length():
    x = np.linspace(-1, 1, 1000)
    eng = gs.Engine()
    tapes = {}
    for n in (10, 20, 40):
        eng.value_and_grad(gs.trace(sin_chain(n), x), x)
        tapes[n] = eng.last_stats.tape_bytes
    assert 3.5 <= tapes[40] / tapes[10] <= 4.5
    # exactly one array per extra op
    assert tapes[40] - tapes[20] == pytest.approx(20 * x.nbytes, rel=0.05)
    assert tapes[20] - tapes[10] == pytest.approx(10 * x.nbytes, rel=0.05)


def test_inputs_and_constants_are_not_tape():
    x = np.linspace(0.5, 1.5, 1000)
    c = np.linspace(1.0, 2.0, 1000)
    eng = gs.Engine()
    # d/dx sum(x * c) = c and d/dx sum(sin(x)) needs cos(x): only graph inputs and
    # constants are read, so there are no residuals to count
    eng.value_and_grad(gs.trace(lambda x: gnp.sum(x * c), x), x)
    assert eng.last_stats.tape_bytes == 0
    eng.value_and_grad(gs.trace(lambda x: gnp.sum(gnp.sin(x)), x), x)
    assert eng.last_stats.tape_bytes <= x.nbytes  # at most cos(x)


def test_last_stats_is_per_thread(mlp_case):
    graph, args = mlp_case
    eng = gs.Engine()
    eng.evaluate(graph, *args)
    seen = {}

    def worker():
        eng.value_and_grad(graph, *args, argnums=(1, 2))
        seen["thread"] = eng.last_stats.tape_bytes

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen["thread"] > 0
    assert eng.last_stats.tape_bytes == 0  # this thread's last call was evaluate


def test_fresh_engine_has_empty_stats():
    stats = gs.Engine().last_stats
    assert stats.tape_bytes == 0 and stats.tape_entries == 0 and stats.peak_bytes == 0


@pytest.mark.parametrize("n", [10])
def test_max_tape_bytes(n):
    x = np.linspace(-1, 1, 1000)
    graph = gs.trace(sin_chain(n), x)
    reference = gs.Engine().grad(graph, x)
    roomy = gs.Engine(max_tape_bytes=10**9)
    np.testing.assert_array_equal(roomy.grad(graph, x), reference)
    tight = gs.Engine(max_tape_bytes=3 * x.nbytes)
    try:
        grad = tight.grad(graph, x)
    except gs.LimitError as err:  # a clear error, naming the bound
        assert "max_tape_bytes" in str(err) or "tape" in str(err)
    else:  # or it recomputed, within the bound, to the same gradient
        np.testing.assert_allclose(grad, reference, rtol=1e-12)
        assert tight.last_stats.tape_bytes <= 3 * x.nbytes


# ---- compile once: the plan is cached by digest -----------------------------------------------


def _long_chain(x):
    for _ in range(100):
        x = gnp.sin(x) * 1.01 + 0.1
    return gnp.sum(x)


@pytest.mark.parametrize("method", ["value_and_grad", "hessian", "jacobian"])
def test_compiled_once(method, monkeypatch):
    from gradserve.engine import engine as engine_module  # engine internals
    from gradserve.engine import plan_cache
    from gradserve.engine.plan import INTERPRETED_RUNS

    built = []

    class CountedPlan(engine_module.Plan):
        def __init__(self, program):
            built.append(program)
            super().__init__(program)

    monkeypatch.setattr(engine_module, "Plan", CountedPlan)
    monkeypatch.setattr(plan_cache, "shared", plan_cache.PlanCache())
    x = np.linspace(0.1, 1.0, 4)
    graph = gs.trace(_long_chain, x)
    eng = gs.Engine()
    call = getattr(eng, method)
    first = call(graph, x)
    assert len(built) == 1
    # past the interpreted runs into the compiled function
    for _ in range(INTERPRETED_RUNS + 4):
        again = call(graph, x)
    # the same graph traced again: a new object with the same digest finds the same plan,
    # and so does a new Engine (the process's shared cache)
    retraced = gs.trace(_long_chain, x)
    call(retraced, x)
    other = getattr(gs.Engine(), method)(retraced, x)
    assert len(built) == 1
    (plan,) = eng._plans.values()
    assert plan.__dict__.get("_straight") is not None  # compiled
    for a, b, c in zip(
        np.atleast_1d(first[1] if method == "value_and_grad" else first),
        np.atleast_1d(again[1] if method == "value_and_grad" else again),
        np.atleast_1d(other[1] if method == "value_and_grad" else other),
    ):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_concurrent_calls_on_one_engine():
    from concurrent.futures import ThreadPoolExecutor

    eng = gs.Engine()
    graph = gs.trace(lambda x, w: gnp.sum(gnp.tanh(x @ w) ** 2), np.ones((8, 5)), np.ones((5, 3)))
    rng = np.random.default_rng(3)
    cases = [(rng.normal(size=(8, 5)), rng.normal(size=(5, 3))) for _ in range(16)]

    def run(case):
        x, w = case
        value, (gx, gw) = eng.value_and_grad(graph, x, w, argnums=(0, 1))
        return value, gx, gw, eng.last_stats.tape_bytes

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run, cases))
    for (x, w), (value, gx, gw, tape) in zip(cases, results):
        h = np.tanh(x @ w)
        d = 2 * h * (1 - h * h)
        assert float(value) == pytest.approx(np.sum(h**2), rel=1e-12)
        np.testing.assert_allclose(gx, d @ w.T, rtol=1e-10)
        np.testing.assert_allclose(gw, x.T @ d, rtol=1e-10)
        assert tape > 0
