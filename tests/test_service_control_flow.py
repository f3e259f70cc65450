"""Control flow and the tape budget through a live server (`gradserve serve --max-tape-bytes`):
the same gradient as in-process, checkpointed loops counted in the reply's stats and in
gradserve_recomputed_ops_total, a loop that cannot fit is RESOURCE_EXHAUSTED, and a deadline
stops a loop that would run for ever."""

from __future__ import annotations

import os
import time
import urllib.request

import numpy as np
import pytest
from conftest import ServerProcess
from gradserve.client import DeadlineExceeded
from prometheus_client.parser import text_string_to_metric_families
from test_control_flow import _rnn_inputs
from test_control_flow import rnn_loss_in_carry as rnn_loss

import gradserve as gs
import gradserve.numpy as gnp

BUDGET = 16 * 1024


@pytest.fixture(scope="module")
def budgeted():
    proc = ServerProcess("--max-tape-bytes", str(BUDGET), "--workers", "2")
    yield proc
    proc.close()


def metric(server, name, **labels) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def test_budgeted_scan_gradient_is_the_plain_one_and_counts_recomputation(budgeted):
    args = _rnn_inputs(hidden=16, steps=300)
    graph = gs.trace(rnn_loss, *args)
    plain_engine = gs.Engine()
    plain = plain_engine.grad(graph, *args, argnums=(0, 1, 2))
    assert plain_engine.last_stats.tape_bytes > 2 * BUDGET  # would not fit without checkpoints
    before = metric(budgeted, "gradserve_recomputed_ops_total", method="ValueAndGrad")
    with gs.Client(budgeted.address, timeout=60) as cli:
        remote = cli.grad(graph, *args, argnums=(0, 1, 2))
        stats = cli.last_stats
    for a, b in zip(remote, plain):
        assert np.array_equal(a, b)
    assert 0 < stats.tape_bytes <= BUDGET
    assert stats.recomputed_ops > 0
    after = metric(budgeted, "gradserve_recomputed_ops_total", method="ValueAndGrad")
    assert after - before == stats.recomputed_ops


def test_while_loop_reverse_mode_remotely(budgeted):
    graph = gs.trace(
        lambda x: gs.while_loop(
            lambda c: c[0] > 1.0, lambda c: (c[0] * 0.5, c[1] * gnp.sin(c[0])), (x, x)
        )[1],
        10.0,
    )
    with gs.Client(budgeted.address, timeout=60) as cli:
        assert cli.grad(graph, 10.0) == pytest.approx(
            float(gs.Engine().grad(graph, 10.0)), rel=1e-15
        )


def test_a_loop_that_cannot_fit_is_resource_exhausted(budgeted):
    wide = np.ones(BUDGET)  # one carry is 8x the budget
    graph = gs.trace(lambda x: gnp.sum(gs.fori_loop(0, 10, lambda i, c: gnp.sin(c), x)), wide)
    with gs.Client(budgeted.address, timeout=60) as cli:
        with pytest.raises(gs.LimitError, match="tape"):
            cli.grad(graph, wide)
        assert float(cli.evaluate(graph, wide)) == pytest.approx(
            float(gs.Engine().evaluate(graph, wide))
        )
    assert budgeted.health() == "SERVING"


def _cpu_seconds(pid) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_deadline_stops_a_loop_that_would_run_for_ever(budgeted):
    forever = gs.trace(
        lambda x: gs.while_loop(lambda c: c > 0, lambda c: c + 1.0, x, max_iterations=10**12), 1.0
    )
    with gs.Client(budgeted.address, timeout=0.5) as cli:
        start = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            cli.evaluate(forever, 1.0)
        assert time.monotonic() - start < 2.0
    deadline = time.monotonic() + 5
    while metric(budgeted, "gradserve_inflight_requests") and time.monotonic() < deadline:
        time.sleep(0.05)
    cpu = _cpu_seconds(budgeted.proc.pid)
    time.sleep(1.0)
    assert _cpu_seconds(budgeted.proc.pid) - cpu < 0.3
    capped = gs.trace(
        lambda x: gs.while_loop(lambda c: c > 0, lambda c: c + 1.0, x, max_iterations=100), 1.0
    )
    with gs.Client(budgeted.address, timeout=30) as cli:
        with pytest.raises(gs.LimitError, match="100 iterations"):
            cli.evaluate(capped, 1.0)
