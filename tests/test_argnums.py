"""argnums on vjp, jvp and hvp (Engine and a live Client, the `backend` fixture): the selected
inputs' results against the full ones, int vs tuple, negative indices, the errors; over the
wire, only the selected tangents travel and only the selected products come back."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp


def loss(w, X, b, n):
    z = X @ w + b
    return gnp.sum(gnp.sin(z) * z) * n + gnp.sum(w**3) * b


GRAPH = gs.trace(loss, gs.Spec((3,)), gs.Spec((5, 3)), 0.0, 2)
RNG = np.random.default_rng(0)
W, X, B, N = RNG.normal(size=3), RNG.normal(size=(5, 3)), 0.7, 2
PRIMALS = (W, X, B, N)
TW, TX, TB = RNG.normal(size=3), RNG.normal(size=(5, 3)), 0.3

# outputs: a scalar and a vector, for vjp and jvp
PAIR = gs.trace(lambda w, X, n: (gnp.sum(X @ w) * n, gnp.tanh(X @ w)), W, X, 2)


def _close(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


# ---- vjp ----------------------------------------------------------------------------------


def test_vjp_argnums_selects_the_full_results(backend):
    cts = (1.5, RNG.normal(size=5))
    outs, full = backend.vjp(PAIR, (W, X, N), cts)
    assert len(full) == 3 and not full[2].any()  # the int input: zeros
    for argnums, picked in [((0, 1), (0, 1)), ((1, 0), (1, 0)), ((-2,), (1,)), ((0, 0), (0, 0))]:
        outs2, sel = backend.vjp(PAIR, (W, X, N), cts, argnums=argnums)
        assert isinstance(sel, tuple) and len(sel) == len(picked)
        for got, i in zip(sel, picked):
            _close(got, full[i])
        for a, b in zip(outs, outs2):
            _close(a, b)


def test_vjp_int_argnums_still_gives_a_tuple(backend):
    _, full = backend.vjp(PAIR, (W, X, N), (1.0, np.ones(5)))
    _, sel = backend.vjp(PAIR, (W, X, N), (1.0, np.ones(5)), argnums=-3)
    assert isinstance(sel, tuple) and len(sel) == 1
    _close(sel[0], full[0])
    assert sel[0].shape == (3,)


# ---- jvp ----------------------------------------------------------------------------------


def test_jvp_argnums_holds_the_other_inputs_fixed(backend):
    outs, full = backend.jvp(PAIR, (W, X, N), (TW, np.zeros((5, 3)), 0))
    for argnums, tangents in [(0, (TW,)), ((0,), [TW]), ((-3,), (TW,))]:
        outs2, sel = backend.jvp(PAIR, (W, X, N), tangents, argnums=argnums)
        for a, b in zip(full, sel):
            _close(a, b)
        for a, b in zip(outs, outs2):
            _close(a, b)
    # both, in another order
    _, both = backend.jvp(PAIR, (W, X, N), (TW, TX, 0))
    _, sel = backend.jvp(PAIR, (W, X, N), (TX, TW), argnums=(1, 0))
    for a, b in zip(both, sel):
        _close(a, b)


# ---- hvp ----------------------------------------------------------------------------------


def test_hvp_argnums_against_the_hessian_blocks(backend):
    H = gs.Engine().hessian(GRAPH, *PRIMALS, argnums=(0, 1, 2))
    (hw,) = backend.hvp(GRAPH, PRIMALS, (TW,), argnums=0)
    _close(hw, H[0][0] @ TW)
    hb, hw2 = backend.hvp(GRAPH, PRIMALS, (TB, TW), argnums=(2, 0))
    _close(hw2, H[0][0] @ TW + H[0][2] * TB)
    _close(hb, H[2][0] @ TW + H[2][2] * TB)
    (hw3,) = backend.hvp(GRAPH, PRIMALS, [TW], argnums=(-4,))
    _close(hw3, hw)
    # with every input selected it is the full product
    full = backend.hvp(GRAPH, PRIMALS, (TW, TX, TB, 0))
    sel = backend.hvp(GRAPH, PRIMALS, (TW, TX, TB), argnums=(0, 1, 2))
    assert len(full) == 4 and not full[3].any()
    for a, b in zip(full, sel):
        _close(a, b)
    # zero tangents for the others = argnums
    full = backend.hvp(GRAPH, PRIMALS, (TW, np.zeros((5, 3)), 0.0, 0))
    _close(full[0], hw)


def test_hvp_int_argnums_gives_a_tuple_of_one(backend):
    out = backend.hvp(GRAPH, PRIMALS, (TW,), argnums=0)
    assert isinstance(out, tuple) and len(out) == 1 and out[0].shape == (3,)


@pytest.mark.parametrize("method", ["vjp", "jvp", "hvp"])
@pytest.mark.parametrize(
    "argnums, error, words",
    [
        (4, ValueError, "out of range"),
        ((0, -5), ValueError, "out of range"),
        (3, TypeError, "not differentiable"),
        ("0", ValueError, "out of range"),  # as grad has it
        (1.0, TypeError, "argnums"),
    ],
)
def test_argnums_errors(backend, method, argnums, error, words):
    count = 1 if not isinstance(argnums, tuple) else len(argnums)
    with pytest.raises(error, match=words):
        if method == "vjp":
            backend.vjp(GRAPH, PRIMALS, 1.0, argnums=argnums)
        else:
            getattr(backend, method)(GRAPH, PRIMALS, (TW,) * count, argnums=argnums)


@pytest.mark.parametrize("method", ["jvp", "hvp"])
def test_tangents_must_match_the_selection(backend, method):
    fn = getattr(backend, method)
    with pytest.raises(ValueError, match="twice"):
        fn(GRAPH, PRIMALS, (TW, TW), argnums=(0, 0))
    with pytest.raises(TypeError, match="selects 2 inputs"):
        fn(GRAPH, PRIMALS, (TW,), argnums=(0, 2))
    with pytest.raises(TypeError, match="tuple or list"):
        fn(GRAPH, PRIMALS, TW, argnums=0)  # a bare array, not a sequence of one
    with pytest.raises(ValueError, match="tangent 'X'"):
        fn(GRAPH, PRIMALS, (np.ones(3),), argnums=1)


def test_plans_are_cached_per_argnums():
    eng = gs.Engine()
    eng.hvp(GRAPH, PRIMALS, (TW,), argnums=0)
    eng.hvp(GRAPH, PRIMALS, (TW,), argnums=-4)  # the same plan
    eng.hvp(GRAPH, PRIMALS, (TW, TX, TB, 0))
    keys = [k for k in eng._plans if k[1] == "hvp"]
    assert sorted(k[2] for k in keys) == [(0,), (0, 1, 2)]
    # and the selected pass is smaller
    assert (
        eng.plan_stats(GRAPH, "hvp", argnums=0).peak_bytes < eng.plan_stats(GRAPH, "hvp").peak_bytes
    )


# ---- over the wire --------------------------------------------------------------------------


class Sizes(grpc.UnaryUnaryClientInterceptor):
    """(method, request bytes, reply bytes) of every call on a channel."""

    def __init__(self):
        self.calls = []

    def intercept_unary_unary(self, continuation, details, request):
        outcome = continuation(details, request)
        reply = outcome.result()
        self.calls.append((details.method.rsplit("/", 1)[-1], len(request), len(reply)))
        return outcome


def _sizes_client(server):
    sizes = Sizes()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), sizes)
    return sizes, channel


def test_hvp_with_argnums_sends_and_returns_only_the_selected(server):
    big = np.random.default_rng(1).normal(size=(20_000, 3))  # 480 KB held fixed
    graph = gs.trace(loss, gs.Spec((3,)), gs.Spec(big.shape), 0.0, 2)
    primals = (W, big, B, N)
    sizes, channel = _sizes_client(server)
    with gs.Client(channel, timeout=60, shared_memory=False) as cli:  # all over gRPC
        full = cli.hvp(graph, primals, (TW, np.zeros(big.shape), 0.0, 0))
        (hw,) = cli.hvp(graph, primals, (TW,), argnums=0)
        (hw_again,) = cli.hvp(graph, primals, (TW,), argnums=0)
    channel.close()
    _close(hw, full[0])
    _close(hw_again, hw)
    (_, req_full, rep_full), (_, req_first, rep_sel), (_, req_sel, rep_sel2) = sizes.calls
    assert rep_full > big.nbytes  # the product for the data comes back in full
    assert rep_sel < 1000 and rep_sel2 < 1000  # only w's
    assert req_full > 2 * big.nbytes  # the data and its zero tangent
    assert req_first < 1000  # the data by digest (the server has it), no tangent for it
    assert req_sel < 1000


def test_vjp_and_jvp_with_argnums_over_the_wire(server):
    big = np.random.default_rng(2).normal(size=(20_000, 3))
    graph = gs.trace(lambda w, X: gnp.sum(gnp.tanh(X @ w)), W, big)
    sizes, channel = _sizes_client(server)
    with gs.Client(channel, timeout=60, shared_memory=False) as cli:  # all over gRPC
        _, (ct_w, ct_X) = cli.vjp(graph, (W, big), 1.0)
        _, (ct_w2,) = cli.vjp(graph, (W, big), 1.0, argnums=0)
        _, t_full = cli.jvp(graph, (W, big), (TW, np.zeros(big.shape)))
        _, t_sel = cli.jvp(graph, (W, big), (TW,), argnums=0)
    channel.close()
    _close(ct_w, ct_w2)
    assert ct_X.shape == big.shape
    _close(t_full, t_sel)
    (vjp_full, vjp_sel, jvp_full, jvp_sel) = sizes.calls
    assert vjp_full[2] > big.nbytes and vjp_sel[2] < 1000
    assert jvp_full[1] > big.nbytes and jvp_sel[1] < 1000  # no zero tangent for the data


def test_absent_argnums_is_every_input_on_the_wire(server):
    """A request without argnums (an older client) gets one result per input."""
    from gradserve.v1 import service_pb2 as pb

    from gradserve.protocol import fill_tensor

    channel = grpc.insecure_channel(server.address)
    stub = channel.unary_unary(
        "/gradserve.v1.Gradients/Hvp",
        request_serializer=pb.HvpRequest.SerializeToString,
        response_deserializer=pb.HvpResponse.FromString,
    )
    req = pb.HvpRequest(graph=pb.GraphRef(body=GRAPH.to_bytes()))
    for a in (W, X, np.float64(B), np.int64(N)):
        fill_tensor(req.primals.add().tensor, np.asarray(a))
    for a in (TW, TX, np.float64(TB), np.int64(0)):
        fill_tensor(req.tangents.add().tensor, np.asarray(a))
    reply = stub(req, timeout=30)
    assert len(reply.tangents) == 4
    req.ClearField("tangents")
    fill_tensor(req.tangents.add().tensor, TW)
    req.argnums.CopyFrom(pb.Argnums(indices=[0], is_tuple=False))
    reply = stub(req, timeout=30)
    assert len(reply.tangents) == 1
    channel.close()


def test_newton_cg_hvp_carries_no_fixed_data(server):
    """gs.minimize's hessp asks hvp for x's product alone: no zero tangents for the data go
    out, no product of the data's size comes back."""
    rng = np.random.default_rng(3)
    X_ = rng.normal(size=(3000, 10))
    y = (X_ @ rng.normal(size=10) > 0).astype(float)

    def logistic(w, X, y):
        z = X @ w
        return gnp.mean(gs.nn.softplus(z) - y * z) + 0.01 * gnp.sum(w * w)

    graph = gs.trace(logistic, gs.Spec((10,)), gs.Spec(X_.shape), gs.Spec(y.shape))
    sizes, channel = _sizes_client(server)
    with gs.Client(channel, timeout=60, shared_memory=False) as cli:  # all over gRPC
        res = gs.minimize(
            graph,
            np.zeros(10),
            X_,
            y,
            backend=cli,
            method="Newton-CG",
            progress=False,
            server_side=False,  # the loop on this side: one Hvp request per product
        )
    channel.close()
    ref = gs.minimize(graph, np.zeros(10), X_, y, method="Newton-CG", progress=False)
    np.testing.assert_allclose(res.x, ref.x, rtol=1e-8, atol=1e-10)
    hvp = [(req, rep) for m, req, rep in sizes.calls if m == "Hvp"]
    assert len(hvp) == res.nhev > 3
    assert max(rep for _, rep in hvp) < 1000  # w's product alone
    assert max(req for req, _ in hvp) < y.nbytes + 4000  # w, p, y inline, X by digest


def test_newton_cg_calls_hvp_with_argnums():
    seen = []

    class Backend:
        engine = gs.Engine()

        def value_and_grad(self, *args, **kwargs):
            return self.engine.value_and_grad(*args, **kwargs)

        def hvp(self, graph, primals, tangents, argnums=None):
            seen.append((len(tangents), argnums))
            return self.engine.hvp(graph, primals, tangents, argnums=argnums)

    res = gs.minimize(GRAPH, np.zeros(3), X, B, N, method="Newton-CG", backend=Backend())
    assert seen and set(seen) == {(1, 0)} and res.nhev == len(seen)
