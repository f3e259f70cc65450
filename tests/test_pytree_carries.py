"""Pytree carries and operands (dicts, namedtuples, None, nested) through gs.scan,
gs.while_loop, gs.fori_loop and gs.cond: values and derivatives against the same loop
unrolled in Python, traced and run eagerly."""

from __future__ import annotations

import collections

import numpy as np
import pytest

import gradserve as gs
import gradserve.numpy as gnp

State = collections.namedtuple("State", "x k")


def scan_dict(h0, ws, unrolled=False):
    """A dict carry (with a None entry), dict xs and dict ys, scanned from the end."""

    def step(c, w):
        new = {"h": gnp.tanh(c["h"] * w["a"] + c["s"]), "s": c["s"] + w["b"], "none": None}
        return new, {"out": new["h"] * 2.0, "skip": None, "pair": (w["a"], new["s"])}

    init = {"h": h0, "s": 0.0 * h0, "none": None}
    xs = {"a": ws, "b": ws * ws}
    if unrolled:
        c, outs, pairs = init, [], []
        for i in reversed(range(ws.shape[0])):
            c, y = step(c, {"a": ws[i], "b": ws[i] * ws[i]})
            outs.append(y["out"])
            pairs.append(y["pair"][1])
        outs, pairs = outs[::-1], pairs[::-1]  # y of iteration i at index i
    else:
        c, ys = gs.scan(step, init, xs, reverse=True)
        assert set(ys) == {"out", "skip", "pair"} and ys["skip"] is None
        outs, pairs = ys["out"], ys["pair"][1]
        outs = [outs[i] for i in range(ws.shape[0])]
        pairs = [pairs[i] for i in range(ws.shape[0])]
    assert set(c) == {"h", "s", "none"} and c["none"] is None
    weights = np.arange(1.0, ws.shape[0] + 1)
    return sum(o * w for o, w in zip(outs, weights)) + 0.1 * sum(pairs) + c["h"] * c["s"]


def while_namedtuple(a, unrolled=False):
    body = lambda s: State(s.x * gnp.sin(a) + 1.0, s.k + 1)  # noqa: E731
    if unrolled:
        s = State(a, 0)
        while s.k < 4:
            s = body(s)
    else:
        s = gs.while_loop(lambda s: s.k < 4, body, State(a, 0))
        assert isinstance(s, State)
    return s.x


def cond_dict(a, b, unrolled=()):
    ops = {"p": a, "q": {"r": b, "n": None}}
    true_fn = lambda d: {"u": d["p"] * d["q"]["r"], "v": (d["p"],), "n": None}  # noqa: E731
    false_fn = lambda d: {"u": d["p"] - d["q"]["r"] ** 2, "v": (d["q"]["r"],), "n": None}  # noqa: E731
    if unrolled:
        out = true_fn(ops) if unrolled[0] > 0 else false_fn(ops)  # the example's branch
    else:
        out = gs.cond(a > 0, true_fn, false_fn, ops)
    assert out["n"] is None
    return out["u"] * out["v"][0]


def fori_dict(a, unrolled=False):
    body = lambda i, d: {"x": d["x"] * a, "y": (d["y"][0] + d["x"] * i,)}  # noqa: E731
    init = {"x": a, "y": (0.0 * a,)}
    if unrolled:
        d = init
        for i in range(1, 4):
            d = body(i, d)
    else:
        d = gs.fori_loop(1, 4, body, init)
    return d["y"][0]


CASES = [
    ("scan", scan_dict, (0.3, np.linspace(0.1, 0.9, 5))),
    ("while", while_namedtuple, (1.2,)),
    ("cond-true", cond_dict, (1.5, 0.7)),
    ("cond-false", cond_dict, (-1.5, 0.7)),
    ("fori", fori_dict, (1.3,)),
]


@pytest.mark.parametrize("fn, args", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_pytree_carries_match_the_unrolled_loop(fn, args):
    eng = gs.Engine()
    looped = gs.trace(fn, *args)
    unrolled = gs.trace(lambda *a: fn(*a, unrolled=args), *args)
    argnums = tuple(range(len(args)))
    value, grads = eng.value_and_grad(looped, *args, argnums=argnums)
    value_u, grads_u = eng.value_and_grad(unrolled, *args, argnums=argnums)
    np.testing.assert_allclose(value, value_u, rtol=1e-12)
    for g, gu in zip(grads, grads_u):
        np.testing.assert_allclose(g, gu, rtol=1e-10, atol=1e-12)
    # run eagerly (outside a trace) the front ends are the Python they stand for
    np.testing.assert_allclose(fn(*args), value_u, rtol=1e-12)
    # the gradient against central differences
    x = [np.array(a, dtype=np.float64) for a in args]
    for i, g in enumerate(grads):
        fd = np.zeros_like(x[i])
        for j in np.ndindex(x[i].shape):
            up = [a.copy() for a in x]
            down = [a.copy() for a in x]
            up[i][j] += 1e-6
            down[i][j] -= 1e-6
            fd[j] = (eng.evaluate(looped, *up) - eng.evaluate(looped, *down)) / 2e-6
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["scan", "fori", "cond-true", "cond-false"])
def test_pytree_carries_second_order(name):
    (fn, args) = next(c[1:] for c in CASES if c[0] == name)
    eng = gs.Engine()
    looped = gs.trace(fn, *args)
    unrolled = gs.trace(lambda *a: fn(*a, unrolled=args), *args)
    tangents = tuple(np.ones_like(np.asarray(a, dtype=np.float64)) for a in args)
    for h, hu in zip(eng.hvp(looped, args, tangents), eng.hvp(unrolled, args, tangents)):
        np.testing.assert_allclose(h, hu, rtol=1e-10, atol=1e-12)


def test_structure_mismatches_are_type_errors():
    with pytest.raises(TypeError, match="structure"):
        gs.trace(lambda x: gs.scan(lambda c, _: ({"b": c["a"]}, None), {"a": x}, None, 2), 1.0)
    with pytest.raises(TypeError, match="structure"):
        gs.trace(lambda x: gs.while_loop(lambda s: s.k < 2, tuple, State(x, 0)), 1.0)
    with pytest.raises(TypeError, match="structure"):
        gs.trace(lambda x: gs.cond(x > 0, lambda d: d, lambda d: {"b": d["a"]}, {"a": x}), 1.0)
