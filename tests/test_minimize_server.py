"""gs.minimize with a Client backend runs the loop on the server (the Minimize RPC): the same
result as in-process for every method, the steps streamed, a callback that sees what it sees
in-process and stops the loop at the same step, cancellation and the deadline stop the loop on
the server, the server's limits hold, and server_side=False keeps the loop on the client."""

from __future__ import annotations

import contextlib
import io
import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest
from conftest import Recorder, ServerProcess
from gradserve.v1 import service_pb2 as pb
from prometheus_client.parser import text_string_to_metric_families
from scipy.optimize import Bounds, LinearConstraint, NonlinearConstraint
from test_control_flow import _rnn_inputs, rnn_loss_in_carry

import gradserve as gs
import gradserve.numpy as gnp
from gradserve.protocol import method_path, to_tensor

BUDGET = 16 * 1024


@pytest.fixture(scope="module")
def srv():
    proc = ServerProcess("--max-tape-bytes", str(BUDGET), "--workers", "2")
    yield proc
    proc.close()


@pytest.fixture(scope="module")
def cli(srv):
    with gs.Client(srv.address, timeout=120) as client:
        yield client


def metric(server, name, **labels) -> float:
    text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def logistic_loss(w, X, y):
    z = X @ w
    return gnp.mean(gs.nn.softplus(z) - y * z) + 1e-3 * gnp.sum(w * w)


def logistic_data(n=80, d=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = (X @ rng.standard_normal(d) + rng.standard_normal(n) > 0).astype(np.float64)
    return X, y


X, Y = logistic_data()
GRAPH = gs.trace(logistic_loss, gs.Spec((4,)), gs.Spec(X.shape), gs.Spec(Y.shape))
W0 = np.full(4, 0.1)
CAP = Bounds([-np.inf, -0.2, -np.inf, -np.inf], [0.3, np.inf, np.inf, 0.25])

# (method, options, kwargs): every kind gs.minimize offers, with bounds where they apply.
CASES = [
    ("L-BFGS-B", None, {"bounds": CAP}),
    ("L-BFGS-B", None, {}),
    ("BFGS", None, {}),
    ("CG", None, {}),
    ("TNC", None, {"bounds": [(None, 0.3), (-0.2, None), (None, None), (None, 0.25)]}),
    ("SLSQP", None, {"bounds": CAP}),
    ("Newton-CG", None, {}),
    ("trust-ncg", None, {}),
    ("trust-krylov", None, {}),
    ("trust-constr", {"maxiter": 60}, {"bounds": CAP}),
    ("dogleg", None, {}),
    ("trust-exact", None, {}),
    ("Nelder-Mead", {"maxiter": 400}, {"bounds": CAP}),
    ("Powell", None, {"bounds": CAP}),
    ("COBYLA", {"maxiter": 300}, {}),
    ("COBYQA", {"maxiter": 100}, {"bounds": CAP}),
    ("adam", {"maxiter": 150, "learning_rate": 0.05}, {"bounds": CAP}),
    ("sgd", {"maxiter": 100, "learning_rate": 0.5, "nesterov": True}, {"tol": 1e-4}),
]


def assert_close(far, near, err_msg=""):
    """Equal to a few units in the last place (see assert_same_result)."""
    np.testing.assert_allclose(far, near, rtol=1e-13, atol=1e-300, err_msg=err_msg)


def assert_same_result(far, near):
    """The same steps and the same numbers. Floats are compared to a few units in the last
    place: BLAS kernels may round differently for operands at other memory alignments, and the
    server's arrays sit elsewhere than the in-process ones (once seen: SLSQP's x off by 1 ulp)."""

    def same(a, b, key):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape and a.dtype == b.dtype, key
        if a.dtype.kind == "f":
            assert_close(a, b, key)
        else:
            np.testing.assert_array_equal(a, b, err_msg=key)

    same(far.x, near.x, "x")
    same(far.fun, near.fun, "fun")
    for key in ("nit", "nfev", "njev", "status", "message"):
        assert far.get(key) == near.get(key), key
    assert bool(far.success) == bool(near.success)
    if isinstance(near.get("jac"), np.ndarray):
        same(far.jac, near.jac, "jac")
    for key in ("step", "loss", "grad_norm", "nfev"):
        same(far.history[key], near.history[key], key)
    assert np.all(np.diff(far.history["time"]) >= 0)
    assert far.backend_calls == near.backend_calls
    # Every field that is data comes back (L-BFGS-B's hess_inv is an operator, Nelder-Mead's
    # final_simplex a pair of arrays, trust-constr's jac a list of the constraints' ones).
    assert set(near) - set(far) <= {"hess_inv", "final_simplex", "jac"}
    for key in set(near) & set(far) - {"history", "backend_calls", "time", "execution_time"}:
        if isinstance(near[key], (np.ndarray, float, int, np.number)):
            same(far[key], near[key], key)


@pytest.mark.parametrize(
    "method, options, kwargs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_server_side_is_the_in_process_result(cli, method, options, kwargs):
    near = gs.minimize(GRAPH, W0, X, Y, method=method, options=options, progress=False, **kwargs)
    far = gs.minimize(
        GRAPH, W0, X, Y, method=method, options=options, backend=cli, progress=False, **kwargs
    )
    assert_same_result(far, near)
    assert len(near.history["step"]) > 2


def test_linear_constraints_travel_as_data(cli):
    # w0 + w1 >= 0.5 and w2 - w3 == 0.1: SciPy's answer in-process is the reference.
    cons = [
        LinearConstraint([[1.0, 1.0, 0.0, 0.0]], 0.5, np.inf),
        LinearConstraint([[0.0, 0.0, 1.0, -1.0]], 0.1, 0.1),
    ]
    for method in ("SLSQP", "trust-constr"):
        near = gs.minimize(GRAPH, W0, X, Y, method=method, constraints=cons, progress=False)
        far = gs.minimize(
            GRAPH, W0, X, Y, method=method, constraints=cons, backend=cli, progress=False
        )
        assert_same_result(far, near)
        assert far.x[0] + far.x[1] >= 0.5 - 1e-6
        assert far.x[2] - far.x[3] == pytest.approx(0.1, abs=1e-6)


def test_a_finite_difference_hessian_named_by_a_string(cli):
    options = {"maxiter": 30}
    near = gs.minimize(GRAPH, W0, X, Y, method="trust-constr", hess="2-point", options=options)
    far = gs.minimize(
        GRAPH, W0, X, Y, method="trust-constr", hess="2-point", options=options, backend=cli
    )
    assert_same_result(far, near)
    assert "hvp" not in far.backend_calls


def test_a_pytree_objective_and_its_callback(cli):
    def loss(p, X, y):
        return logistic_loss(gnp.concatenate([p["w"], gnp.reshape(p["b"], (1,))]), X, y)

    start = {"w": np.zeros(3), "b": 0.0}
    near_steps, far_steps = [], []
    near = gs.minimize(loss, start, X, Y, method="BFGS", callback=near_steps.append)
    far = gs.minimize(loss, start, X, Y, method="BFGS", backend=cli, callback=far_steps.append)
    assert set(far.x) == {"w", "b"} and isinstance(far.x["b"], float)
    assert_close(far.x["w"], near.x["w"])
    assert far.x["b"] == pytest.approx(near.x["b"], rel=1e-13)
    assert len(far_steps) == len(near_steps) == near.nit
    for a, b in zip(far_steps, near_steps):
        assert_close(a["w"], b["w"])
        assert a["b"] == pytest.approx(b["b"], rel=1e-13)


# ---- the stream -----------------------------------------------------------------------------


def _raw_minimize(address, problem, answers=()):
    """The Minimize call as a client in another language makes it: every message back."""
    first = pb.MinimizeRequest(problem=problem).SerializeToString()
    requests = [first] + [pb.MinimizeRequest(stop=s).SerializeToString() for s in answers]
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(method_path("Minimize"))
        return [pb.MinimizeProgress.FromString(b) for b in call(iter(requests), timeout=60)]


def _problem(method, maxiter=None):
    problem = pb.MinimizeProblem(method=method)
    problem.graph.body = GRAPH.to_bytes()
    problem.x0.tensor.CopyFrom(to_tensor(W0))
    for a in (X, Y):
        problem.args.add().tensor.CopyFrom(to_tensor(a))
    if maxiter is not None:
        problem.options["maxiter"].integer = maxiter
    return problem


@pytest.mark.parametrize("method", ["L-BFGS-B", "Newton-CG", "Powell", "adam"])
def test_one_progress_message_per_step_then_the_result(srv, method):
    near = gs.minimize(GRAPH, W0, X, Y, method=method, options={"maxiter": 40}, progress=False)
    messages = _raw_minimize(srv.address, _problem(method, maxiter=40))
    kinds = [m.WhichOneof("kind") for m in messages]
    assert kinds == ["record"] * len(near.history["step"]) + ["result"]
    records = [m.record for m in messages[:-1]]
    assert [r.step for r in records] == list(near.history["step"])
    assert_close([r.loss for r in records], near.history["loss"])
    assert [r.nfev for r in records] == list(near.history["nfev"])
    result = messages[-1].result
    assert result.nit == near.nit and result.message == near.message
    assert_close(np.frombuffer(result.x.data), near.x)


def test_result_only_sends_the_result_alone(srv):
    problem = _problem("L-BFGS-B")
    problem.result_only = True
    (message,) = _raw_minimize(srv.address, problem)
    near = gs.minimize(GRAPH, W0, X, Y, progress=False)
    assert list(message.result.history.loss) == list(near.history["loss"])


def test_callback_messages_wait_for_the_answer_and_stop_stops(srv):
    problem = _problem("BFGS")
    problem.callback = True
    messages = _raw_minimize(srv.address, problem, answers=[False, False, True])
    kinds = [m.WhichOneof("kind") for m in messages]
    # step 0, then (record, callback) per iteration until the third callback said stop
    assert kinds == ["record"] + ["record", "callback"] * 3 + ["result"]
    result = messages[-1].result
    assert result.status == 99 and result.nit == 3 and not result.success
    np.testing.assert_array_equal(result.x.data, messages[-2].callback.x.data)


def test_callback_returning_true_stops_at_the_same_step(cli, srv):
    before = metric(srv, "gradserve_minimize_loops_total", outcome="stopped")
    near_seen, far_seen = [], []

    def stop_after(seen, k):
        def callback(intermediate_result):
            seen.append(intermediate_result)
            return len(seen) >= k

        return callback

    near = gs.minimize(GRAPH, W0, X, Y, method="L-BFGS-B", callback=stop_after(near_seen, 4))
    far = gs.minimize(
        GRAPH, W0, X, Y, method="L-BFGS-B", backend=cli, callback=stop_after(far_seen, 4)
    )
    assert far.status == near.status == 99 and far.nit == near.nit
    assert_same_result(far, near)
    assert len(far_seen) == len(near_seen) == 4
    for a, b in zip(far_seen, near_seen):
        assert set(a) == set(b)
        assert_close(a.x, b.x)
        assert_close(a.jac, b.jac)
        assert a.fun == pytest.approx(b.fun, rel=1e-13)
    assert metric(srv, "gradserve_minimize_loops_total", outcome="stopped") == before + 1


@pytest.mark.parametrize("method", ["adam", "trust-constr", "COBYLA"])
def test_callbacks_get_the_in_process_arguments(cli, method):
    def run(backend):
        plain, state = [], []
        gs.minimize(
            GRAPH,
            W0,
            X,
            Y,
            method=method,
            options={"maxiter": 15},
            backend=backend,
            callback=lambda x, *rest: plain.append((x, len(rest))),
        )
        gs.minimize(
            GRAPH,
            W0,
            X,
            Y,
            method=method,
            options={"maxiter": 15},
            backend=backend,
            callback=lambda intermediate_result: state.append(intermediate_result),
        )
        return plain, state

    near_plain, near_state = run(None)
    far_plain, far_state = run(cli)
    assert len(far_plain) == len(near_plain) > 3
    for (a, na), (b, nb) in zip(far_plain, near_plain):
        assert_close(a, b)
        assert na == nb  # trust-constr passes (x, state)
    for a, b in zip(far_state, near_state):
        assert_close(a.x, b.x)
        assert a.fun == pytest.approx(b.fun, rel=1e-13) and a.get("nit") == b.get("nit")


# ---- stopping the loop on the server --------------------------------------------------------


def _long_loop(backend, **kwargs):
    # gtol 0: adam runs its maxiter steps, which takes far longer than any test waits
    return gs.minimize(
        GRAPH,
        W0,
        X,
        Y,
        method="adam",
        options={"maxiter": 10**7, "gtol": 0.0},
        backend=backend,
        progress=False,
        **kwargs,
    )


def _wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_interrupting_the_client_cancels_the_loop_on_the_server(cli, srv):
    cancelled = metric(srv, "gradserve_minimize_loops_total", outcome="cancelled")
    calls = metric(srv, "gradserve_requests_total", method="Minimize", code="CANCELLED")
    steps = []

    def callback(x):
        steps.append(x)
        if len(steps) == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _long_loop(cli, callback=callback)
    _wait_for(
        lambda: metric(srv, "gradserve_minimize_loops_total", outcome="cancelled") > cancelled
    )
    # the handler counts the call when it has ended, after the loop counted its outcome
    _wait_for(
        lambda: (
            metric(srv, "gradserve_requests_total", method="Minimize", code="CANCELLED")
            == calls + 1
        )
    )
    _wait_for(lambda: metric(srv, "gradserve_inflight_requests") == 0)
    res = gs.minimize(GRAPH, W0, X, Y, backend=cli)  # and the server goes on serving
    assert res.success


def test_cancelling_the_stream_stops_the_loop(srv):
    cancelled = metric(srv, "gradserve_minimize_loops_total", outcome="cancelled")
    before = metric(srv, "gradserve_minimize_steps_total")
    problem = _problem("adam", maxiter=10**7)
    problem.options["gtol"].number = 0.0
    with grpc.insecure_channel(srv.address) as channel:
        call = channel.stream_stream(method_path("Minimize"))(
            iter([pb.MinimizeRequest(problem=problem).SerializeToString()]), timeout=60
        )
        for i, _ in enumerate(call):
            if i == 20:
                call.cancel()
                break
    _wait_for(
        lambda: metric(srv, "gradserve_minimize_loops_total", outcome="cancelled") > cancelled
    )
    ran = metric(srv, "gradserve_minimize_steps_total") - before
    assert 20 <= ran < 10**6
    time.sleep(0.5)  # a loop that went on would keep counting steps: it does not
    assert metric(srv, "gradserve_minimize_steps_total") - before == ran


def test_a_deadline_ends_the_loop_with_deadline_exceeded(srv):
    ended = metric(srv, "gradserve_minimize_loops_total", outcome="deadline")
    with gs.Client(srv.address, timeout=1.0) as short:
        start = time.monotonic()
        with pytest.raises(gs.DeadlineExceeded, match="Minimize"):
            _long_loop(short)
        assert time.monotonic() - start < 10
    _wait_for(lambda: metric(srv, "gradserve_minimize_loops_total", outcome="deadline") > ended)
    with gs.Client(srv.address, timeout=60) as cli:
        assert cli.evaluate(GRAPH, W0, X, Y) == gs.Engine().evaluate(GRAPH, W0, X, Y)


# ---- the server's limits --------------------------------------------------------------------


def test_the_tape_budget_checkpoints_every_step_with_the_same_result(cli, srv):
    W, U, h0, xs = _rnn_inputs(hidden=16, steps=300)
    graph = gs.trace(rnn_loss_in_carry, W, U, h0, xs)
    plain = gs.Engine()
    plain.value_and_grad(graph, W, U, h0, xs)
    assert plain.last_stats.tape_bytes > 2 * BUDGET  # the loop would not fit unless checkpointed
    recomputed = metric(srv, "gradserve_recomputed_ops_total", method="ValueAndGrad")
    options = {"maxiter": 10}
    budgeted = gs.Engine(max_tape_bytes=BUDGET)
    near = gs.minimize(graph, W, U, h0, xs, backend=budgeted, options=options)
    far = gs.minimize(graph, W, U, h0, xs, backend=cli, options=options)
    assert_same_result(far, near)
    # the loop's engine calls are Minimize's, not ValueAndGrad requests
    assert metric(srv, "gradserve_recomputed_ops_total", method="ValueAndGrad") == recomputed
    assert 0 < metric(srv, "gradserve_tape_bytes_sum", method="Minimize") <= BUDGET * 100


def test_request_memory_and_admission_limits():
    big = np.zeros((3000, 400))  # 9.6 MB held fixed: over the 4 MiB bound
    graph = gs.trace(lambda w, A: gnp.sum((A @ w - 1.0) ** 2), np.zeros(400), big)
    with ServerProcess(
        "--max-request-memory", "4MiB", "--max-concurrent-rpcs", "1", "--workers", "1"
    ) as limited:
        with gs.Client(limited.address, timeout=60, retries=0) as client:
            with pytest.raises(gs.LimitError, match="max-request-memory"):
                gs.minimize(graph, np.zeros(400), big, backend=client)
            # One loop in flight is the server's one call: another is refused, not queued.
            running = threading.Thread(target=lambda: _swallow(_long_loop, client), daemon=True)
            running.start()
            _wait_for(lambda: metric(limited, "gradserve_inflight_requests") == 1)
            with pytest.raises(gs.ServiceUnavailable, match="overloaded"):
                client.evaluate(GRAPH, W0, X, Y)
            with pytest.raises(gs.ServiceUnavailable, match="overloaded"):
                gs.minimize(GRAPH, W0, X, Y, backend=client)
            assert metric(limited, "gradserve_refused_requests_total", reason="overloaded") == 2
        limited.terminate(timeout=60)  # stops the running loop: the drain ends it
        running.join(30)
        assert not running.is_alive()


def _swallow(fn, *args):
    with contextlib.suppress(Exception):
        fn(*args)


# ---- what the client sends ------------------------------------------------------------------


def test_server_side_false_keeps_one_call_per_evaluation(srv):
    rec = Recorder()
    channel = grpc.intercept_channel(grpc.insecure_channel(srv.address), rec)
    with gs.Client(channel, timeout=60) as client:
        local = gs.minimize(GRAPH, W0, X, Y, backend=client, server_side=False)
        assert [m for m, _ in rec.calls] == ["ValueAndGrad"] * local.nfev
        rec.calls.clear()
        remote = gs.minimize(GRAPH, W0, X, Y, backend=client)
        assert rec.calls == []  # one Minimize stream, no unary call
    channel.close()
    assert_same_result(remote, local)


def test_functions_cannot_be_sent(cli):
    hint = "server_side=False"
    with pytest.raises(TypeError, match=hint):
        gs.minimize(
            GRAPH, W0, X, Y, backend=cli, method="adam", options={"learning_rate": lambda k: 0.1}
        )
    with pytest.raises(TypeError, match=hint):
        gs.minimize(
            GRAPH,
            W0,
            X,
            Y,
            backend=cli,
            method="trust-constr",
            constraints=NonlinearConstraint(lambda w: w[0], 0, 1),
        )
    with pytest.raises(TypeError, match=hint):
        gs.minimize(
            GRAPH,
            W0,
            X,
            Y,
            backend=cli,
            method="SLSQP",
            constraints={"type": "eq", "fun": lambda w: w[0]},
        )
    with pytest.raises(TypeError, match=hint):
        gs.minimize(GRAPH, W0, X, Y, backend=cli, method="Newton-CG", hessp=lambda w, p: p)
    with pytest.raises(TypeError, match=hint):
        gs.minimize(GRAPH, W0, X, Y, backend=cli, method=lambda *a, **k: None)
    # ... and each runs driven from the client
    res = gs.minimize(
        GRAPH,
        W0,
        X,
        Y,
        backend=cli,
        method="adam",
        server_side=False,
        options={"learning_rate": lambda k: 0.1, "maxiter": 20},
    )
    assert res.nit == 20


def test_errors_come_back_as_the_in_process_exceptions(cli, srv):
    with pytest.raises(ValueError, match="Unknown solver"):
        gs.minimize(GRAPH, W0, X, Y, backend=cli, method="no-such-method")
    with pytest.raises(ValueError, match="Unknown solver"):
        gs.minimize(GRAPH, W0, X, Y, method="no-such-method")
    with pytest.raises(TypeError, match="does not take"):
        gs.minimize(GRAPH, W0, X, Y, backend=cli, method="adam", hess="2-point")
    with pytest.raises(TypeError, match="unexpected keyword argument 'foo'"):
        gs.minimize(GRAPH, W0, X, Y, method="BFGS", foo=1.0)
    with pytest.raises(TypeError, match="keyword argument 'foo'"):
        gs.minimize(GRAPH, W0, X, Y, backend=cli, method="BFGS", foo=1.0)
    assert metric(srv, "gradserve_minimize_loops_total", outcome="error") >= 2
    assert gs.minimize(GRAPH, W0, X, Y, backend=cli).success


def test_graph_and_data_travel_once_across_loops(server):
    sizes = []

    class Sizes(grpc.UnaryStreamClientInterceptor):  # one request: a unary-stream call
        def intercept_unary_stream(self, continuation, details, request):
            sizes.append(len(request))
            return continuation(details, request)

    Xb, Yb = logistic_data(4000, 4, seed=9)  # X: 128 KB, over the digest threshold
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), Sizes())
    graph = gs.trace(logistic_loss, gs.Spec((4,)), gs.Spec(Xb.shape), gs.Spec(Yb.shape))
    with gs.Client(channel, timeout=60) as client:
        for _ in range(3):
            gs.minimize(graph, W0, Xb, Yb, backend=client)
    channel.close()
    assert sizes[0] > Xb.nbytes and max(sizes[1:]) < Yb.nbytes + 2000, sizes


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_the_progress_bar_shows_the_streamed_steps(cli, monkeypatch):
    term = FakeTerminal()
    monkeypatch.setattr("sys.stderr", term)
    res = gs.minimize(GRAPH, W0, X, Y, backend=cli, method="adam", options={"maxiter": 20})
    out = term.getvalue()
    assert res.nit == 20 and "adam" in out and "20/20" in out
    assert f"loss={res.history['loss'][-1]:.6g}" in out and "grad_norm=" in out
    term.truncate(0)
    gs.minimize(
        GRAPH, W0, X, Y, backend=cli, method="adam", options={"maxiter": 20}, progress=False
    )
    assert term.getvalue() == ""
