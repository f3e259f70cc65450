"""The process's shared plan cache (engine/plan_cache.py): Engines find each other's plans for
the same graph and signature, never a plan made under other options, from several threads at
once; the cache stays within its bounds by count and by bytes."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from gradserve.engine import plan_cache  # engine internals
from gradserve.engine.plan import Plan
from gradserve.engine.transforms import Program

import gradserve as gs
import gradserve.numpy as gnp


@pytest.fixture
def shared(monkeypatch):
    cache = plan_cache.PlanCache()
    monkeypatch.setattr(plan_cache, "shared", cache)
    return cache


def _graph(k=0, n=5):
    return gs.trace(lambda x: gnp.sum(gnp.tanh(x) * (k + 1.0)), np.ones(n))


def test_a_new_engine_finds_the_plan_another_made(shared):
    graph = _graph()
    x = np.linspace(-1, 1, 5)
    first = gs.Engine()
    value, grad = first.value_and_grad(graph, x)
    second = gs.Engine()
    again = second.value_and_grad(gs.trace(lambda x: gnp.sum(gnp.tanh(x) * 1.0), np.ones(5)), x)
    (key,) = first._plans
    assert second._plans[key] is first._plans[key] is shared.get(key)
    assert again[0] == value
    np.testing.assert_array_equal(again[1], grad)
    np.testing.assert_allclose(grad, 1 - np.tanh(x) ** 2, rtol=1e-14)


def test_a_tape_budget_makes_other_plans():
    """Under a max_tape_bytes its residuals would pass, a scan is differentiated through a loop
    tape: another plan, never the unbudgeted Engine's (and the other way round)."""
    graph = gs.trace(
        lambda x: gnp.sum(gs.scan(lambda c, _: (gnp.sin(c) * 1.1, None), x, None, length=20)[0]),
        np.ones(4),
    )
    x = np.linspace(0.1, 0.5, 4)
    free = gs.Engine()
    g_free = free.grad(graph, x)
    budget = free.last_stats.tape_bytes // 2
    budgeted = gs.Engine(max_tape_bytes=budget)
    g_budget = budgeted.grad(graph, x)
    (free_plan,) = free._plans.values()
    (budget_plan,) = budgeted._plans.values()
    assert free_plan is not budget_plan
    ops = {n.op for n in budget_plan.nodes} - {n.op for n in free_plan.nodes}
    assert ops  # the loop-tape ops
    np.testing.assert_allclose(g_free, g_budget, rtol=1e-13)
    # a third Engine of each kind gets the matching plan
    gs.Engine().grad(graph, x)
    other = gs.Engine(max_tape_bytes=budget)
    other.grad(graph, x)
    assert next(iter(other._plans.values())) is budget_plan


def test_engines_on_threads_share_plans_and_get_their_own_results(shared):
    graph = gs.trace(lambda x, w: gnp.sum(gnp.tanh(x @ w) ** 2), np.ones((70, 5)), np.ones((5, 60)))
    rng = np.random.default_rng(0)
    cases = [(rng.normal(size=(70, 5)), rng.normal(size=(5, 60))) for _ in range(24)]

    def run(case):  # a new Engine per call, as a server handler or a test might make
        x, w = case
        return gs.Engine().value_and_grad(graph, x, w, argnums=(0, 1))

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(run, cases))
    assert len(shared) == 1
    for (x, w), (value, (gx, gw)) in zip(cases, results):
        h = np.tanh(x @ w)
        d = 2 * h * (1 - h * h)
        assert float(value) == pytest.approx(np.sum(h**2), rel=1e-12)
        np.testing.assert_allclose(gx, d @ w.T, rtol=1e-10)
        np.testing.assert_allclose(gw, x.T @ d, rtol=1e-10)


def _plan(n):
    return Plan(Program(_graph(n=n)))


def test_least_recently_used_plans_go_first_by_count():
    cache = plan_cache.PlanCache(max_plans=2)
    plans = [_plan(n) for n in (3, 4, 5)]
    cache.put("a", plans[0])
    cache.put("b", plans[1])
    assert cache.get("a") is plans[0]  # now b is the least recently used
    cache.put("c", plans[2])
    assert cache.get("b") is None
    assert cache.get("a") is plans[0] and cache.get("c") is plans[2]
    assert len(cache) == 2


def test_the_byte_bound_holds_and_a_plan_over_it_is_not_kept():
    small, big = _plan(10), _plan(100_000)
    assert plan_cache.plan_bytes(big) > plan_cache.plan_bytes(small)
    # at least the call's working set: the input and tanh's result (the product is written
    # into tanh's buffer)
    assert plan_cache.plan_bytes(big) >= 2 * 100_000 * 8
    cache = plan_cache.PlanCache(max_bytes=2 * plan_cache.plan_bytes(small) + 1)
    cache.put("one", small)
    cache.put("two", _plan(10))  # the same size: two fit
    assert cache.nbytes <= cache.max_bytes
    cache.put("big", big)
    assert cache.get("big") is None  # over the bound alone
    assert cache.get("one") is small  # and it did not push the others out
    cache.put("three", _plan(10))
    assert cache.nbytes <= cache.max_bytes and len(cache) == 2
    assert cache.get("two") is None  # the least recently used went ("one" was just read)
    assert cache.get("one") is small
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0
