"""gs.custom_jvp and gs.custom_vjp: the rules are used (a deliberately different rule changes
every derivative: grad, jvp, vjp, jacobian both ways, hvp, hessian, inside scan, cond and
while_loop bodies, through a live server), correct rules agree with closed forms and finite
differences, graphs with rules round-trip through bytes, forward mode through a custom_vjp
function is a clear TypeError, and the examples of docs/api.md give their values."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from gradserve.engine.graph import Graph, Node, Port, Spec
from gradserve.engine.tracing import bind

import gradserve as gs
import gradserve.numpy as gnp

X = np.array([0.3, -1.2, 2.0])


def _roundtrip(graph):
    again = gs.Graph.from_bytes(graph.to_bytes())
    assert again == graph
    return again


def _ops(graph) -> set:
    ops = set()
    for node in graph.nodes:
        ops.add(node.op)
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                ops |= _ops(value)
    return ops


# sin with a rule claiming the derivative is 3x (true: cos x)
wrong_jvp = gs.custom_jvp(gnp.sin)
wrong_jvp.defjvp(lambda p, t: (gnp.sin(p[0]), 3.0 * p[0] * t[0]))

# sin with fwd/bwd claiming the same
wrong_vjp = gs.custom_vjp(gnp.sin)
wrong_vjp.defvjp(lambda x: (gnp.sin(x), x), lambda x, ct: (3.0 * x * ct,))

# sin with its true derivative
true_jvp = gs.custom_jvp(gnp.sin)
true_jvp.defjvp(lambda p, t: (gnp.sin(p[0]), gnp.cos(p[0]) * t[0]))
true_vjp = gs.custom_vjp(gnp.sin)
true_vjp.defvjp(lambda x: (gnp.sin(x), gnp.cos(x)), lambda c, ct: (c * ct,))


# ---- the rules are used, in every mode ---------------------------------------------------------


@pytest.mark.parametrize("fn", [wrong_jvp, wrong_vjp], ids=["custom_jvp", "custom_vjp"])
def test_reverse_mode_and_second_order_use_the_rule(backend, fn):
    total = _roundtrip(gs.trace(lambda x: gnp.sum(fn(x)), X))
    vector = _roundtrip(gs.trace(lambda x: fn(x), X))
    value, grad = backend.value_and_grad(total, X)
    assert np.isclose(value, np.sum(np.sin(X)))  # evaluation runs fun
    assert np.allclose(grad, 3.0 * X)
    ct = np.array([1.0, 2.0, -1.0])
    out, (vjp,) = backend.vjp(vector, (X,), ct)
    assert np.allclose(out, np.sin(X)) and np.allclose(vjp, 3.0 * X * ct)
    assert np.allclose(backend.jacobian(vector, X, mode="rev"), np.diag(3.0 * X))
    v = np.array([1.0, -1.0, 0.5])
    assert np.allclose(backend.hvp(total, (X,), (v,))[0], 3.0 * v)
    assert np.allclose(backend.hessian(total, X), 3.0 * np.eye(3))


def test_forward_mode_uses_the_jvp_rule(backend):
    vector = _roundtrip(gs.trace(lambda x: wrong_jvp(x), X))
    v = np.array([1.0, -1.0, 0.5])
    out, tangent = backend.jvp(vector, (X,), (v,))
    assert np.allclose(out, np.sin(X)) and np.allclose(tangent, 3.0 * X * v)
    assert np.allclose(backend.jacobian(vector, X, mode="fwd"), np.diag(3.0 * X))


@pytest.mark.parametrize("fn", [true_jvp, true_vjp], ids=["custom_jvp", "custom_vjp"])
def test_correct_rules_agree_with_closed_forms_and_differences(fn):
    eng = gs.Engine()
    total = gs.trace(lambda x: gnp.sum(fn(x) * x), X)
    assert np.allclose(eng.grad(total, X), np.cos(X) * X + np.sin(X))
    assert np.allclose(eng.hessian(total, X), np.diag(-np.sin(X) * X + 2 * np.cos(X)))
    for method in ("central", "complex"):  # batched and retyped evaluation of the node
        assert eng.check_grad(total, X, method=method).ok
    vector = gs.trace(lambda x: fn(x), X)
    assert np.allclose(eng.jacobian(vector, X, mode="rev"), np.diag(np.cos(X)))
    if fn is true_jvp:
        assert np.allclose(eng.jacobian(vector, X, mode="fwd"), np.diag(np.cos(X)))


def test_graphs_hold_the_rules_as_subgraphs():
    graph = gs.trace(lambda x: wrong_jvp(x) + wrong_vjp(x), X)
    assert [n.op for n in graph.nodes][:2] == ["custom_jvp_call", "custom_vjp_call"]
    assert set(graph.nodes[0].attrs) == {"fun", "jvp"}
    assert set(graph.nodes[1].attrs) == {"fun", "fwd", "bwd"}
    again = _roundtrip(graph)
    assert np.allclose(gs.Engine().evaluate(again, X), 2 * np.sin(X))


def test_imag_of_a_real_tangent_in_a_rule_transposes_to_zero(backend):
    """A client's jvp rule may apply the `imag` op itself to a real tangent (zeros; gnp.imag
    records no op there): reverse mode gives that term a zero cotangent, so the gradient is
    the rule's cos x, real."""
    rule_with_imag = gs.custom_jvp(gnp.sin)
    rule_with_imag.defjvp(lambda p, t: (gnp.sin(p[0]), gnp.cos(p[0]) * t[0] + bind("imag", t[0])))
    graph = _roundtrip(gs.trace(lambda x: gnp.sum(rule_with_imag(x)), X))
    assert "imag" in _ops(graph)
    grad = backend.grad(graph, X)
    assert grad.dtype == np.float64
    np.testing.assert_allclose(grad, np.cos(X), rtol=1e-15)


# ---- forward mode through custom_vjp -----------------------------------------------------------


def test_forward_mode_through_custom_vjp_is_a_clear_type_error(backend):
    vector = gs.trace(lambda x: wrong_vjp(x) * 2.0, X)
    with pytest.raises(TypeError, match="forward-mode differentiation .* gs.custom_vjp"):
        backend.jvp(vector, (X,), (np.ones(3),))
    with pytest.raises(TypeError, match="forward-mode differentiation .* gs.custom_vjp"):
        backend.jacobian(vector, X, mode="fwd")


# ---- inside control flow -----------------------------------------------------------------------


def _scanned(fn):
    def loss(xs):
        carry, _ = gs.scan(lambda c, x: (c + fn(x * c), c), 1.0, xs)
        return carry

    return loss


CONST_JVP = gs.custom_jvp(gnp.sin)  # derivative claimed: 3
CONST_JVP.defjvp(lambda p, t: (gnp.sin(p[0]), 3.0 * t[0]))
CONST_VJP = gs.custom_vjp(gnp.sin)
CONST_VJP.defvjp(lambda x: (gnp.sin(x), ()), lambda _, ct: (3.0 * ct,))


@pytest.mark.parametrize("fn", [CONST_JVP, CONST_VJP], ids=["custom_jvp", "custom_vjp"])
def test_rules_inside_a_scan(backend, fn):
    # c1 = 1 + f(x0), c2 = c1 + f(x1 c1), with f' taken as 3
    xs = np.array([0.1, 0.2])
    graph = _roundtrip(gs.trace(_scanned(fn), xs))
    c1 = 1 + np.sin(0.1)
    expected = [3.0 * (1 + 3 * 0.2), 3.0 * c1]
    assert np.allclose(backend.grad(graph, xs), expected)
    assert np.allclose(backend.jacobian(graph, xs, mode="rev"), expected)
    if fn is CONST_JVP:
        assert np.allclose(backend.jacobian(graph, xs, mode="fwd"), expected)
        assert np.allclose(backend.hessian(graph, xs), [[0.0, 9.0], [9.0, 0.0]])


def test_second_order_through_a_custom_vjp_in_a_scan_is_refused():
    """The primal scan of reverse mode runs the custom_vjp call itself, so its tangent (which
    hessian needs) would be forward mode through it."""
    graph = gs.trace(_scanned(CONST_VJP), np.array([0.1, 0.2]))
    with pytest.raises(TypeError, match="forward-mode"):
        gs.Engine().hessian(graph, np.array([0.1, 0.2]))


@pytest.mark.parametrize("fn", [wrong_jvp, wrong_vjp], ids=["custom_jvp", "custom_vjp"])
def test_rules_inside_a_cond(backend, fn):
    graph = _roundtrip(gs.trace(lambda x: gs.cond(x > 0, lambda v: fn(v) * v, gnp.cos, x), 0.5))
    assert np.isclose(backend.grad(graph, 0.5), 3 * 0.5 * 0.5 + np.sin(0.5))
    assert np.isclose(backend.grad(graph, -0.5), np.sin(0.5))
    assert np.isclose(backend.hvp(graph, (0.5,), (1.0,))[0], 2 * 3 * 0.5 + np.cos(0.5))


@pytest.mark.parametrize("fn", [CONST_JVP, CONST_VJP], ids=["custom_jvp", "custom_vjp"])
def test_rules_inside_a_while_loop(backend, fn):
    def loss(x):
        return gs.while_loop(lambda c: c < 2.0, lambda c: c + fn(x), 0.0)

    graph = _roundtrip(gs.trace(loss, 1.0))
    assert np.isclose(backend.evaluate(graph, 1.0), 3 * np.sin(1.0))  # three iterations
    assert np.isclose(backend.grad(graph, 1.0), 9.0)


# ---- arguments, captured values, nondiff_argnums ------------------------------------------------


def test_values_read_from_the_enclosing_function_are_differentiated_through_fun():
    def model(x, w):
        scaled = gs.custom_jvp(lambda a: a * w)
        scaled.defjvp(lambda p, t: (p[0] * w, 3.0 * t[0]))  # claims d/dx = 3, not w
        return gnp.sum(scaled(x))

    graph = _roundtrip(gs.trace(model, np.ones(2), 2.0))
    gx, gw = gs.Engine().grad(graph, np.array([1.0, 4.0]), 2.0, argnums=(0, 1))
    assert np.allclose(gx, 3.0) and np.isclose(gw, 5.0)


def test_gradient_along_captured_values_only_is_funs_own():
    """No tangent on the argument, one on a value the function reads: fun's own derivative."""

    def model(x, w):
        scaled = gs.custom_jvp(lambda a: a * w)
        scaled.defjvp(lambda p, t: (p[0] * w, 3.0 * t[0]))
        return gnp.sum(scaled(x))

    x = np.array([1.0, 4.0])
    graph = gs.trace(model, x, 2.0)
    assert np.isclose(gs.Engine().grad(graph, x, 2.0, argnums=1), np.sum(x))


def test_custom_vjp_reading_two_enclosing_values_under_check_grad():
    """check_grad batches the graph over perturbations of one input at a time: the rule's
    node is batched with some captured operands batched and others not."""

    def model(x, w1, w2):
        f = gs.custom_vjp(lambda a: gnp.sin(a) * w1 + w2)
        f.defvjp(lambda a: (gnp.sin(a) * w1 + w2, gnp.cos(a)), lambda c, ct: (c * w1 * ct,))
        return gnp.sum(f(x))

    w1, w2 = np.array([1.5, -0.5, 2.0]), np.array([0.1, 0.2, 0.3])
    graph = gs.trace(model, X, w1, w2)
    report = gs.Engine().check_grad(graph, X, w1, w2)
    assert report.ok
    want = (np.cos(X) * w1, np.sin(X), np.ones(3))
    for got, expected in zip(report.analytic, want):
        np.testing.assert_allclose(got, expected, rtol=1e-13)


def test_structured_arguments_and_outputs():
    @gs.custom_vjp
    def pair(p):
        a, b = p
        return a * b, a + b

    def fwd(p):
        return pair(p), p

    def bwd(res, ct):
        (a, b), (c_prod, c_sum) = res, ct
        return ((10 * c_prod * b + c_sum, c_prod * a),)  # claims d(a b)/da = 10 b

    pair.defvjp(fwd, bwd)
    graph = gs.trace(lambda a, b: gnp.sum(pair((a, b))[0]) + gnp.sum(pair((a, b))[1]), X, X)
    ga, gb = gs.Engine().grad(graph, X, 2 * X, argnums=(0, 1))
    assert np.allclose(ga, 10 * 2 * X + 1) and np.allclose(gb, X)


def test_nondiff_argnums():
    @partial(gs.custom_jvp, nondiff_argnums=(0,))
    def apply(fn, x):
        return fn(x)

    @apply.defjvp
    def _(fn, primals, tangents):
        return fn(primals[0]), 7.0 * tangents[0]

    @partial(gs.custom_vjp, nondiff_argnums=(1,))
    def scale(x, k):
        return x * k

    scale.defvjp(lambda x, k: (x * k, None), lambda k, _, ct: (ct * k * 10,))
    eng = gs.Engine()
    assert eng.grad(gs.trace(lambda x: apply(gnp.sin, x), 0.3), 0.3) == 7.0
    assert eng.grad(gs.trace(lambda x: scale(x, 2.0), 0.3), 0.3) == 20.0
    assert np.isclose(apply(np.sin, 0.3), np.sin(0.3)) and scale(0.3, 2.0) == 0.6  # untraced


def test_rule_leaves_of_another_float_dtype_are_cast_and_none_is_zero():
    """A float64 tangent for a float32 output is cast down, a float32 cotangent for a float64
    argument cast up, an int64 output's leaf is kept, None is a zero tangent."""
    x32 = X.astype(np.float32)
    down = gs.custom_jvp(gnp.sin)
    down.defjvp(lambda p, t: (gnp.sin(p[0]), gnp.astype(gnp.cos(p[0]) * t[0], np.float64)))
    grad = gs.Engine().grad(gs.trace(lambda x: gnp.sum(down(x)), x32), x32)
    assert grad.dtype == np.float32
    np.testing.assert_allclose(grad, np.cos(X), rtol=1e-6)

    up = gs.custom_vjp(gnp.sin)
    up.defvjp(lambda x: (gnp.sin(x), gnp.cos(x)), lambda c, ct: (gnp.astype(c * ct, np.float32),))
    grad = gs.Engine().grad(gs.trace(lambda x: gnp.sum(up(x)), X), X)
    assert grad.dtype == np.float64
    np.testing.assert_allclose(grad, np.cos(X), rtol=1e-6)

    with_int = gs.custom_jvp(lambda x: (gnp.sin(x), gnp.astype(x, np.int64)))
    with_int.defjvp(
        lambda p, t: (
            (gnp.sin(p[0]), gnp.astype(p[0], np.int64)),
            (gnp.cos(p[0]) * t[0], np.zeros((), np.int64)),
        )
    )
    graph = gs.trace(lambda x: 2.0 * with_int(x)[0] + with_int(x)[1], 1.3)
    assert np.isclose(gs.Engine().grad(graph, 1.3), 2.0 * np.cos(1.3))

    flat = gs.custom_jvp(gnp.sin)
    flat.defjvp(lambda p, t: (gnp.sin(p[0]), None))
    grad = gs.Engine().grad(gs.trace(lambda x: gnp.sum(flat(x)), X), X)
    assert np.array_equal(grad, np.zeros(3))


# ---- errors ------------------------------------------------------------------------------------


def test_a_rule_not_linear_in_the_tangents_is_refused_in_reverse_mode():
    bad = gs.custom_jvp(gnp.sin)
    bad.defjvp(lambda p, t: (gnp.sin(p[0]), gnp.sin(t[0])))
    graph = gs.trace(lambda x: bad(x), 1.0)
    assert np.isclose(gs.Engine().jvp(graph, (1.0,), (1.0,))[1], np.sin(1.0))
    with pytest.raises(TypeError, match="must be linear in its tangents"):
        gs.Engine().grad(graph, 1.0)


def test_rules_of_the_wrong_shape_or_arity_are_refused_when_traced():
    no_rule = gs.custom_jvp(gnp.sin)
    with pytest.raises(TypeError, match="defjvp"):
        gs.trace(lambda x: no_rule(x), 1.0)
    shape = gs.custom_jvp(gnp.sin)
    shape.defjvp(lambda p, t: (gnp.sin(p[0]), gnp.sum(t[0])))
    with pytest.raises(TypeError, match="shape"):
        gs.trace(lambda x: shape(x), X)
    arity = gs.custom_vjp(gnp.sin)
    arity.defvjp(lambda x: (gnp.sin(x), ()), lambda _, ct: ct)
    with pytest.raises(TypeError, match="tuple of 1 cotangent"):
        gs.trace(lambda x: arity(x), 1.0)
    primal = gs.custom_vjp(gnp.sin)
    primal.defvjp(lambda x: (gnp.sum(x), ()), lambda _, ct: (ct,))
    with pytest.raises(TypeError, match="fwd's output"):
        gs.trace(lambda x: primal(x), X)


def test_fwd_and_bwd_of_the_wrong_arity_are_refused_when_traced():
    """fwd must give exactly (output, residuals); bwd exactly one cotangent per argument."""
    three = gs.custom_vjp(gnp.sin)
    three.defvjp(lambda x: (gnp.sin(x), x, x), lambda x, ct: (ct,))
    with pytest.raises(TypeError, match=r"fwd must return \(output, residuals\)"):
        gs.trace(lambda x: three(x), 1.0)
    for cts in (lambda ct: (ct,), lambda ct: (ct, ct, ct)):
        product = gs.custom_vjp(lambda a, b: a * b)
        product.defvjp(lambda a, b: (a * b, ()), lambda _, ct, cts=cts: cts(ct))
        with pytest.raises(TypeError, match="tuple of 2 cotangent"):
            gs.trace(lambda a, b: product(a, b), 1.0, 2.0)


def _custom_node(op, shape, **attrs):
    """A graph of one `op` node on one float64 input of `shape`, built as a client sends it."""
    node = Node(op, ("w",), ("y",), attrs)
    return Graph([Port("w", Spec(shape, "float64"))], {}, [node], ["y"])


def test_hand_built_custom_nodes_whose_rules_do_not_match_fun_are_refused():
    fun = gs.trace(gnp.sin, X)
    primal_only = gs.trace(lambda x, t: gnp.sin(x), X, X)
    with pytest.raises(gs.GraphError, match="expected fun's outputs"):
        _custom_node("custom_jvp_call", (3,), fun=fun, jvp=primal_only)
    fwd = gs.trace(lambda x: (gnp.sin(x), gnp.cos(x)), X)
    summed = gs.trace(lambda c, ct: gnp.sum(c * ct), X, X)
    with pytest.raises(gs.GraphError, match="one cotangent per argument"):
        _custom_node("custom_vjp_call", (3,), fun=fun, fwd=fwd, bwd=summed)


def test_hand_built_custom_jvp_with_no_arguments_differentiates_fun():
    """A jvp taking as many inputs as there are operands has no arguments (n = 0): every
    operand is a captured value, differentiated through fun, not through the rule."""
    fun = gs.trace(gnp.sin, 0.3)
    jvp = gs.trace(lambda w: (gnp.sin(w), 5.0 * w), 0.3)
    graph = _roundtrip(_custom_node("custom_jvp_call", (), fun=fun, jvp=jvp))
    value, grad = gs.Engine().value_and_grad(graph, 0.3)
    assert np.isclose(value, np.sin(0.3)) and np.isclose(grad, np.cos(0.3))


def test_custom_vjp_linear_checks_its_residuals_and_is_refused_on_the_wire():
    """The engine's own node for the linear part of a custom_vjp: its bwd must start with the
    residuals' specs, and a graph holding it does not come back from bytes."""
    bwd = gs.trace(lambda c, ct: c * ct, X, X)

    def linear(residual_shape):
        ports = [Port("r", Spec(residual_shape, "float64")), Port("t", Spec((3,), "float64"))]
        node = Node("custom_vjp_linear", ("r", "t"), ("y",), {"bwd": bwd})
        return Graph(ports, {}, [node], ["y"])

    with pytest.raises(gs.GraphError, match="must start with the residuals"):
        linear((2,))
    with pytest.raises(gs.GraphError, match="internal to the engine"):
        gs.Graph.from_bytes(linear((3,)).to_bytes())


# ---- the examples of docs/api.md ---------------------------------------------------------------


@gs.custom_jvp
def log1pexp(x):
    return gnp.log1p(gnp.exp(x))


@log1pexp.defjvp
def _log1pexp_jvp(primals, tangents):
    (x,), (x_dot,) = primals, tangents
    return log1pexp(x), (1.0 - 1.0 / (1.0 + gnp.exp(x))) * x_dot


@gs.custom_vjp
def clip_gradient(x):
    return x


clip_gradient.defvjp(lambda x: (x, ()), lambda _, ct: (gnp.clip(ct, -1.0, 1.0),))


def _cubic_root(a):
    def not_converged(carry):
        y, _ = carry
        return gnp.max(gnp.abs(y**3 + y - a) / (1.0 + gnp.abs(a))) > 1e-12

    def newton(carry):
        y, iterations = carry
        return y - (y**3 + y - a) / (3.0 * y**2 + 1.0), iterations + 1

    root, _ = gs.while_loop(not_converged, newton, (gnp.zeros_like(a), 0))
    return root


implicit_vjp = gs.custom_vjp(_cubic_root)
implicit_vjp.defvjp(lambda a: (implicit_vjp(a),) * 2, lambda y, ct: (ct / (3.0 * y**2 + 1.0),))
implicit_jvp = gs.custom_jvp(_cubic_root)


@implicit_jvp.defjvp
def _implicit_jvp_rule(primals, tangents):
    y = implicit_jvp(primals[0])
    return y, tangents[0] / (3.0 * y**2 + 1.0)


def test_doc_example_stable_gradient(backend):
    at = np.array([0.0, 2.0, 1000.0])
    stable = gs.trace(lambda x: gnp.sum(log1pexp(x)), at)
    naive = gs.trace(lambda x: gnp.sum(gnp.log1p(gnp.exp(x))), at)
    expected = 1 / (1 + np.exp(-at))
    assert np.allclose(backend.grad(stable, at), expected)
    assert np.isnan(backend.grad(naive, at)[2])
    assert np.allclose(backend.jvp(stable, (at,), (np.ones(3),))[1], expected.sum())
    assert np.allclose(np.diag(backend.hessian(stable, at))[:2], (expected * (1 - expected))[:2])


def test_doc_example_clipped_gradient(backend):
    clipped = gs.trace(lambda x: gnp.sum(clip_gradient(x) ** 2), X)
    assert np.allclose(backend.grad(clipped, np.array([0.25, 3.0, -2.0])), [0.5, 1.0, -1.0])
    assert np.isclose(backend.evaluate(clipped, X), np.sum(X**2))


@pytest.mark.parametrize("fn", [implicit_vjp, implicit_jvp], ids=["custom_vjp", "custom_jvp"])
def test_doc_example_implicit_function(backend, fn):
    graph = gs.trace(fn, 10.0)
    assert "while_loop" in _ops(graph)
    y = backend.evaluate(graph, 10.0)
    assert np.isclose(y, 2.0)
    assert np.isclose(backend.grad(graph, 10.0), 1 / 13)
    assert np.isclose(backend.hessian(graph, 10.0), -6 * y / 13**3)
    a = np.array([0.5, 10.0, 30.0])
    roots = gs.trace(lambda a: fn(a), a)
    ys = backend.evaluate(roots, a)
    assert np.allclose(ys**3 + ys, a)
    assert np.allclose(backend.jacobian(roots, a, mode="rev"), np.diag(1 / (3 * ys**2 + 1)))
    # against differences of the solver itself
    check = gs.Engine().check_grad(gs.trace(lambda a: gnp.sum(fn(a)), a), a)
    assert check.ok, check
