"""Derivative rules given by the user, as data: the front ends `custom_jvp` and `custom_vjp`
(`gs.custom_jvp`, `gs.custom_vjp`, JAX's API) and their primitives. The function and its rules
are traced into closed subgraphs (bodies.py) held in the node's attributes, so a graph with
custom rules serializes and runs on a server like any other: no Python callable crosses.

- `custom_jvp_call(*args, *captured; fun, jvp)`: evaluating runs `fun`. Its JVP inlines the
  `jvp` subgraph (the rule) into the differentiated graph: the rule's primal outputs and its
  tangent outputs, which must be linear in the tangents. Reverse mode is that JVP transposed,
  as for any graph: the ops of the rule that read no tangent run in the forward pass, the
  others are transposed (JAX's partial evaluation of the rule). Second order differentiates
  the rule's ops.
- `custom_vjp_call(*args, *captured; fun, fwd, bwd)`: evaluating runs `fun`. Its JVP inlines
  `fwd` (the outputs and the residuals) and records `custom_vjp_linear(*residuals, *captured,
  *tangents; bwd)`, linear in the tangents, whose transpose is `bwd` on the residuals and the
  cotangents (a `checkpoint` node whose body is `bwd`, so second order differentiates `bwd`).
  `custom_vjp_linear` cannot run forwards: forward mode through a custom_vjp function is a
  TypeError, as in JAX.

Values the function or a rule reads from the enclosing trace are extra operands (`captured`),
passed to all subgraphs of the node (unused where a subgraph does not read them). A rule gives
the derivative with respect to the arguments; the derivative with respect to a captured value
is that of `fun` itself (its ordinary JVP along those operands).

A call of the function inside one of its own rules (JAX's usual `ans = f(x)` in a JVP rule)
records `fun` itself, not another custom node.
"""

from __future__ import annotations

import threading
from typing import NamedTuple

import numpy as np

from .. import numpy as gnp
from ..graph import Graph, Port
from ..primitive import Linear, OpDoc, ShapeError, primitive
from ..pytree import NONE, flatten, unflatten
from ..tracing import Tracer, bind, spec_of
from .bodies import (
    check_signature,
    differentiable,
    in_trace,
    leaves_as_arrays,
    retyped,
    run_body,
    tangent_body,
    trace_body,
)

FORWARD_MODE_ERROR = (
    "forward-mode differentiation (jvp, jacobian with mode='fwd', ...) of a gs.custom_vjp "
    "function: it has a reverse-mode rule only; give it a forward rule with gs.custom_jvp "
    "instead, or use reverse mode (grad, vjp, jacobian with mode='rev'; hvp and hessian "
    "differentiate its bwd)"
)


# ---- helpers: signatures over the captured values of several subgraphs ----------------------


def _key(value: Tracer):
    return (id(value.builder), value.name)


def _union(*captured_lists):
    """The captured values of several subgraphs, each once, in order of first appearance."""
    seen, union = set(), []
    for captured in captured_lists:
        for value in captured:
            if _key(value) not in seen:
                seen.add(_key(value))
                union.append(value)
    return union


def _over(graph: Graph, head: int, captured, union, tail: int = 0) -> Graph:
    """`graph`, whose inputs are `head` own inputs, `tail` more, then one per value of
    `captured` (trace_body's order), with the inputs (*head, *union, *tail): a value of `union`
    it does not read is an unused input."""
    own = graph.inputs[: head + tail]
    mine = {_key(v): port for v, port in zip(captured, graph.inputs[head + tail :])}
    inputs = list(own[:head])
    inputs += [mine.get(_key(v)) or Port(f"unused:{i}", v.spec) for i, v in enumerate(union)]
    inputs += list(own[head:])
    return Graph(inputs, graph.constants, graph.nodes, graph.output_names)


def _leaves_like(tree, treedef, specs, what):
    """The leaves of `tree`, which must have the structure `treedef` and leaves of `specs`
    (None gives zeros; a differentiable leaf of another dtype is cast)."""
    if tree is None and treedef != NONE:
        return [gnp.zeros(s.shape, s.dtype) for s in specs]
    leaves, got = flatten(tree)
    if got != treedef:
        raise TypeError(f"{what}: expected the structure {treedef}, got {got}")
    out = []
    for k, (leaf, spec) in enumerate(zip(leaves, specs)):
        if leaf is None:
            out.append(gnp.zeros(spec.shape, spec.dtype))
            continue
        leaf = leaf if isinstance(leaf, Tracer) else np.asarray(leaf)
        have = spec_of(leaf)
        if have.shape != spec.shape:
            raise TypeError(f"{what}: leaf {k} has shape {have.shape}, expected {spec.shape}")
        if have.dtype != spec.dtype:
            if not (differentiable(have) and differentiable(spec)):
                raise TypeError(f"{what}: leaf {k} is {have.dtype}, expected {spec.dtype}")
            leaf = gnp.astype(leaf, spec.dtype)
        out.append(leaf)
    return out


class _Traced(NamedTuple):
    """A custom function's call, `fun` traced on the leaves of its differentiable arguments."""

    static: list  # the nondiff arguments
    diff: tuple  # the others
    full: object  # puts (replacements of) the others back among the nondiff ones
    leaves: list
    treedef: object
    specs: list
    fun_graph: object
    fun_cap: list
    out_def: object
    out_specs: list


class _Custom:
    """What custom_jvp and custom_vjp share: the function, nondiff_argnums, the guard against
    a rule calling its own function."""

    def __init__(self, fun, nondiff_argnums=()):
        self.fun = fun
        self.nondiff_argnums = tuple(sorted(int(i) for i in nondiff_argnums))
        self._local = threading.local()
        self.__name__ = getattr(fun, "__name__", type(self).__name__)
        self.__doc__ = getattr(fun, "__doc__", None)
        self.__wrapped__ = fun

    def _in_rule(self) -> bool:
        return getattr(self._local, "depth", 0) > 0

    def _tracing_rule(self, fn):
        def wrapped(*args):
            self._local.depth = getattr(self._local, "depth", 0) + 1
            try:
                return fn(*args)
            finally:
                self._local.depth -= 1

        return wrapped

    def _traced(self, args, rule, missing):
        """None when `fun` is to run as it is (no traced argument, or inside its own rule);
        else the call's pieces, `fun` traced on its differentiable arguments (a _Traced)."""
        if rule is None:
            raise TypeError(f"{type(self).__name__} {self.__name__}: {missing}")
        static, diff, full = self._split(args)
        leaves, treedef = leaves_as_arrays(diff)
        if self._in_rule() or not in_trace(leaves):
            return None
        specs = [spec_of(x) for x in leaves]
        fun_graph, fun_cap, out_def = trace_body(
            lambda *xs: self.fun(*full(unflatten(treedef, xs))), specs
        )
        out_specs = [p.spec for p in fun_graph.outputs]
        return _Traced(
            static, diff, full, leaves, treedef, specs, fun_graph, fun_cap, out_def, out_specs
        )

    def _outputs_like(self, value, call, what):
        """The leaves of a rule's primal output, which must be what `fun` gives."""
        outs = _leaves_like(value, call.out_def, call.out_specs, what)
        for k, (p, s) in enumerate(zip(outs, call.out_specs)):
            if spec_of(p) != s:
                raise TypeError(f"{what} {k} is {spec_of(p)}, fun gives {s}")
        return outs

    def _split(self, args):
        """(the nondiff arguments, the others, and a function putting the others back)."""
        for i in self.nondiff_argnums:
            if not -len(args) <= i < len(args):
                raise TypeError(f"nondiff_argnums {self.nondiff_argnums}: {len(args)} arguments")
        nondiff = [i % len(args) for i in self.nondiff_argnums]
        static = [args[i] for i in nondiff]
        diff = tuple(a for i, a in enumerate(args) if i not in nondiff)

        def full(diff_args):
            it = iter(diff_args)
            return [args[i] if i in nondiff else next(it) for i in range(len(args))]

        return static, diff, full


# ---- custom_jvp ------------------------------------------------------------------------------


class custom_jvp(_Custom):
    """`fun` with a forward-mode rule given by `defjvp` (JAX's custom_jvp); see docs/api.md."""

    def __init__(self, fun, nondiff_argnums=()):
        super().__init__(fun, nondiff_argnums)
        self.jvp = None

    def defjvp(self, jvp):
        """Set the rule `jvp(primals, tangents) -> (primal_out, tangent_out)`; returns it (so
        usable as a decorator)."""
        self.jvp = jvp
        return jvp

    def __call__(self, *args):
        call = self._traced(args, self.jvp, "no JVP rule; call defjvp first")
        if call is None:
            return self.fun(*args)
        static, _, _, leaves, treedef, specs, fun_graph, fun_cap, out_def, out_specs = call
        n = len(leaves)

        def rule(*xs):
            primals = unflatten(treedef, xs[:n])
            tangents = unflatten(treedef, xs[n:])
            result = self.jvp(*static, tuple(primals), tuple(tangents))
            if not (isinstance(result, (tuple, list)) and len(result) == 2):
                raise TypeError(
                    f"custom_jvp {self.__name__}: the rule must return (primal_out, tangent_out)"
                )
            what = f"custom_jvp {self.__name__}: the rule's"
            primal_out = self._outputs_like(result[0], call, f"{what} primal output")
            tangent_out = _leaves_like(result[1], out_def, out_specs, f"{what} tangent output")
            return primal_out + tangent_out

        jvp_graph, jvp_cap, _ = trace_body(self._tracing_rule(rule), specs + specs)
        captured = _union(fun_cap, jvp_cap)
        out = bind(
            "custom_jvp_call",
            *leaves,
            *captured,
            fun=_over(fun_graph, n, fun_cap, captured),
            jvp=_over(jvp_graph, 2 * n, jvp_cap, captured),
        )
        return unflatten(out_def, out)


def _custom_jvp_shape(*operands, fun, jvp):
    check_signature(fun, operands, "fun")
    n = len(jvp.inputs) - len(operands)
    if not 0 <= n <= len(operands):
        raise ShapeError(f"jvp takes {len(jvp.inputs)} inputs for {len(operands)} operands")
    check_signature(jvp, list(operands[:n]) * 2 + list(operands[n:]), "jvp")
    outs = [p.spec for p in fun.outputs]
    if [p.spec for p in jvp.outputs] != outs * 2:
        raise ShapeError(
            f"jvp gives {[p.spec for p in jvp.outputs]}, expected fun's outputs {outs} twice"
        )
    return tuple(outs)


def _captured_tangents(fun, primals, tangents, n, loop_tapes):
    """The tangents of fun's outputs along its captured operands (those after the first `n`)
    that have a tangent: fun's ordinary JVP. None when none has."""
    wrt = [i for i in range(n, len(primals)) if tangents[i] is not None]
    if not wrt:
        return None
    from ..transforms import inline

    body = tangent_body(fun, wrt, loop_tapes)
    return inline(body, list(primals) + [tangents[i] for i in wrt])


def _add_tangents(outs, extra):
    if extra is None:
        return list(outs)
    return [o if e is None else (e if o is None else o + e) for o, e in zip(outs, extra)]


def _custom_jvp_jvp_full(primals, tangents, fun, jvp, loop_tapes):
    from ..transforms import inline

    n = len(jvp.inputs) - len(primals)
    m = len(fun.outputs)
    if any(t is not None for t in tangents[:n]):
        arg_tangents = [
            t if t is not None else gnp.zeros(p.shape, p.dtype)
            for t, p in zip(tangents[:n], primals[:n])
        ]
        result = inline(jvp, list(primals[:n]) + arg_tangents + list(primals[n:]))
        outs, t_outs = list(result[:m]), list(result[m:])
    else:
        outs, t_outs = list(bind("custom_jvp_call", *primals, fun=fun, jvp=jvp)), [None] * m
    t_outs = _add_tangents(t_outs, _captured_tangents(fun, primals, tangents, n, loop_tapes))
    return tuple(outs), _differentiable_only(t_outs, fun)


def _differentiable_only(t_outs, fun):
    return tuple(
        t if t is not None and differentiable(p.spec) else None for t, p in zip(t_outs, fun.outputs)
    )


def _custom_jvp_batch(args, batched, fun, jvp):
    from ..transforms import Program, batch

    size = next(a.shape[0] for a, b in zip(args, batched) if b)
    n = len(jvp.inputs) - len(args)
    flags = list(batched)
    return bind(
        "custom_jvp_call",
        *args,
        fun=batch(Program(fun), flags, size).graph,
        jvp=batch(Program(jvp), flags[:n] * 2 + flags[n:], size).graph,
    )


def _retype_fun(args, fun, **_):
    """The complex step measures `fun` itself: the retyped graph runs `fun` retyped."""
    from ..transforms import inline

    return inline(retyped(fun, [a.spec for a in args]), args)


primitive(
    "custom_jvp_call",
    impl=lambda *operands, fun, jvp: tuple(run_body(fun, operands)),
    shape=_custom_jvp_shape,
    arity=(0, None),
    attrs={"fun": "graph", "jvp": "graph"},
    multiple_results=True,
    jvp_full=_custom_jvp_jvp_full,
    batch=_custom_jvp_batch,
    retype=_retype_fun,
    doc=OpDoc(
        "runs fun on the operands; forward and reverse mode differentiate it with the rule "
        "jvp instead of fun's own operations (gs.custom_jvp). The first n operands are the "
        "function's arguments, the rest the values fun or jvp read from the enclosing graph "
        "(their derivative is fun's own)",
        ("*operands",),
        "one result per fun output",
        {
            "fun": "subgraph (*operands) -> (*results): inputs of exactly the operands' shapes "
            "and dtypes, in order",
            "jvp": "subgraph (*arguments, *tangents, *captured) -> (*results, *tangents of the "
            "results), the tangents of the shapes and dtypes of the arguments and results; n is "
            "its input count less the operand count. Its result tangents must be linear in "
            "its tangent inputs (reverse mode transposes them)",
        },
    ),
)


# ---- custom_vjp ------------------------------------------------------------------------------


class custom_vjp(_Custom):
    """`fun` with a reverse-mode rule given by `defvjp` (JAX's custom_vjp); see docs/api.md."""

    def __init__(self, fun, nondiff_argnums=()):
        super().__init__(fun, nondiff_argnums)
        self.fwd = self.bwd = None

    def defvjp(self, fwd, bwd):
        """Set the rule: `fwd(*args) -> (out, residuals)`, `bwd(residuals, ct) -> one
        cotangent per argument` (a tuple; None for a zero cotangent)."""
        self.fwd, self.bwd = fwd, bwd

    def __call__(self, *args):
        call = self._traced(args, self.fwd, "no VJP rule; call defvjp first")
        if call is None:
            return self.fun(*args)
        static, diff, full, leaves, treedef, specs, fun_graph, fun_cap, out_def, out_specs = call
        n = len(leaves)
        name = f"custom_vjp {self.__name__}"
        res_def = []

        def fwd(*xs):
            result = self.fwd(*full(unflatten(treedef, xs)))
            if not (isinstance(result, (tuple, list)) and len(result) == 2):
                raise TypeError(f"{name}: fwd must return (output, residuals)")
            outs = self._outputs_like(result[0], call, f"{name}: fwd's output")
            residuals, rdef = flatten(result[1])
            res_def.append(rdef)
            return outs + residuals

        fwd_graph, fwd_cap, _ = trace_body(self._tracing_rule(fwd), specs)
        res_specs = [p.spec for p in fwd_graph.outputs[len(out_specs) :]]
        arg_defs = [flatten(a)[1] for a in diff]
        arg_sizes = [len(flatten(a)[0]) for a in diff]

        def bwd(*xs):
            k = len(res_specs)
            residuals = unflatten(res_def[0], xs[:k])
            ct = unflatten(out_def, xs[k:])
            result = self.bwd(*static, residuals, ct)
            if not isinstance(result, (tuple, list)) or len(result) != len(diff):
                raise TypeError(
                    f"{name}: bwd must return a tuple of {len(diff)} cotangent(s), one per "
                    f"argument{' not in nondiff_argnums' if static else ''}"
                )
            cts, start = [], 0
            for j, (ct_j, d, size) in enumerate(zip(result, arg_defs, arg_sizes)):
                part = specs[start : start + size]
                cts += _leaves_like(ct_j, d, part, f"{name}: bwd's cotangent of argument {j}")
                start += size
            return cts

        bwd_graph, bwd_cap, _ = trace_body(self._tracing_rule(bwd), res_specs + out_specs)
        captured = _union(fun_cap, fwd_cap, bwd_cap)
        out = bind(
            "custom_vjp_call",
            *leaves,
            *captured,
            fun=_over(fun_graph, n, fun_cap, captured),
            fwd=_over(fwd_graph, n, fwd_cap, captured),
            bwd=_over(bwd_graph, len(res_specs), bwd_cap, captured, tail=len(out_specs)),
        )
        return unflatten(out_def, out)


def _custom_vjp_shape(*operands, fun, fwd, bwd):
    check_signature(fun, operands, "fun")
    check_signature(fwd, operands, "fwd")
    outs = [p.spec for p in fun.outputs]
    m = len(outs)
    got = [p.spec for p in fwd.outputs]
    if got[:m] != outs:
        raise ShapeError(f"fwd gives {got[:m]} first, fun gives {outs}")
    n = len(bwd.outputs)
    if n > len(operands) or [p.spec for p in bwd.outputs] != list(operands[:n]):
        raise ShapeError(
            f"bwd gives {[p.spec for p in bwd.outputs]}: expected one cotangent per argument, "
            f"of the first of the operands {list(operands)}"
        )
    check_signature(bwd, got[m:] + list(operands[n:]) + outs, "bwd")
    return tuple(outs)


def _custom_vjp_jvp_full(primals, tangents, fun, fwd, bwd, loop_tapes):
    from ..transforms import inline

    n, m = len(bwd.outputs), len(fun.outputs)
    if any(t is not None for t in tangents[:n]):
        result = inline(fwd, primals)
        outs, residuals = list(result[:m]), list(result[m:])
        arg_tangents = [
            t if t is not None else gnp.zeros(p.shape, p.dtype)
            for t, p in zip(tangents[:n], primals[:n])
        ]
        t_outs = list(bind("custom_vjp_linear", *residuals, *primals[n:], *arg_tangents, bwd=bwd))
    else:
        outs = list(bind("custom_vjp_call", *primals, fun=fun, fwd=fwd, bwd=bwd))
        t_outs = [None] * m
    t_outs = _add_tangents(t_outs, _captured_tangents(fun, primals, tangents, n, loop_tapes))
    return tuple(outs), _differentiable_only(t_outs, fun)


def _custom_vjp_batch(args, batched, fun, fwd, bwd):
    from ..transforms import Program, batch

    size = next(a.shape[0] for a, b in zip(args, batched) if b)
    n = len(bwd.outputs)
    # every argument batched, so that bwd's cotangents have the arguments' (batched) shapes
    args = [
        a if b or i >= n else gnp.broadcast_to(a, (size, *a.shape))
        for i, (a, b) in enumerate(zip(args, batched))
    ]
    flags = [True] * n + list(batched[n:])
    n_res = len(fwd.outputs) - len(fun.outputs)
    return bind(
        "custom_vjp_call",
        *args,
        fun=batch(Program(fun), flags, size).graph,
        fwd=batch(Program(fwd), flags, size).graph,
        bwd=batch(Program(bwd), [True] * n_res + flags[n:] + [True] * len(fun.outputs), size).graph,
    )


primitive(
    "custom_vjp_call",
    impl=lambda *operands, fun, fwd, bwd: tuple(run_body(fun, operands)),
    shape=_custom_vjp_shape,
    arity=(0, None),
    attrs={"fun": "graph", "fwd": "graph", "bwd": "graph"},
    multiple_results=True,
    jvp_full=_custom_vjp_jvp_full,
    batch=_custom_vjp_batch,
    retype=_retype_fun,
    doc=OpDoc(
        "runs fun on the operands; reverse mode differentiates it with the rule fwd/bwd instead "
        "of fun's own operations (gs.custom_vjp); forward mode through it is an error. The "
        "first n operands are the function's arguments, the rest the values fun, fwd or bwd "
        "read from the enclosing graph (their derivative is fun's own)",
        ("*operands",),
        "one result per fun output",
        {
            "fun": "subgraph (*operands) -> (*results): inputs of exactly the operands' shapes "
            "and dtypes, in order",
            "fwd": "subgraph (*operands) -> (*results, *residuals): the results as fun gives "
            "them, then any values bwd reads",
            "bwd": "subgraph (*residuals, *captured, *cotangents of the results) -> "
            "(*cotangents of the arguments): n is its output count, one per argument, of the "
            "arguments' shapes and dtypes",
        },
    ),
)


# ---- the linear part of a custom_vjp_call's JVP ----------------------------------------------
# inputs: the residuals, the captured values, then one tangent per argument.


def _linear_split(n_operands, bwd):
    return n_operands - len(bwd.outputs)


def _custom_vjp_linear_shape(*operands, bwd):
    t = len(bwd.outputs)
    if t > len(operands):
        raise ShapeError(f"bwd gives {t} cotangents for {len(operands)} operands")
    k = len(operands) - t
    if [p.spec for p in bwd.outputs] != list(operands[k:]):
        raise ShapeError(
            f"bwd gives {[p.spec for p in bwd.outputs]}, the tangents are {list(operands[k:])}"
        )
    if len(bwd.inputs) < k or [p.spec for p in bwd.inputs[:k]] != list(operands[:k]):
        raise ShapeError(
            f"bwd takes {[p.spec for p in bwd.inputs]}, which must start with the residuals "
            f"and captured values {list(operands[:k])}"
        )
    return tuple(p.spec for p in bwd.inputs[k:])


def _forward_mode(*args, **kwargs):
    raise TypeError(FORWARD_MODE_ERROR)


def _custom_vjp_linear_jvp(primals, tangents, outs, bwd, loop_tapes):
    k = _linear_split(len(primals), bwd)
    if any(t is not None for t in tangents[:k]):
        raise TypeError(FORWARD_MODE_ERROR)
    t_in = [
        t if t is not None else gnp.zeros(p.shape, p.dtype)
        for t, p in zip(tangents[k:], primals[k:])
    ]
    out = bind("custom_vjp_linear", *primals[:k], *t_in, bwd=bwd)
    return tuple(t if differentiable(t.spec) else None for t in out)


def _custom_vjp_linear_transpose(cts, *args, bwd, loop_tapes):
    k = _linear_split(len(args), bwd)
    if any(isinstance(a, Linear) for a in args[:k]):
        raise TypeError(FORWARD_MODE_ERROR)
    out = bind("checkpoint", *args[:k], *cts, body=bwd)
    out = out if isinstance(out, tuple) else (out,)
    return (None,) * k + tuple(o if isinstance(a, Linear) else None for o, a in zip(out, args[k:]))


primitive(
    "custom_vjp_linear",
    impl=_forward_mode,
    shape=_custom_vjp_linear_shape,
    arity=(0, None),
    attrs={"bwd": "graph"},
    multiple_results=True,
    jvp=_custom_vjp_linear_jvp,
    transpose=_custom_vjp_linear_transpose,
    batch=_forward_mode,
    # only reverse mode makes it, and transposes it away: a graph a client sends never holds it
    internal=True,
    doc=OpDoc(
        "the part of a custom_vjp_call's JVP linear in the tangents: reverse mode transposes "
        "it into bwd applied to the residuals and the cotangents; running it forwards (forward "
        "mode through a gs.custom_vjp function) is an error",
        ("*operands",),
        "one tangent per result of the custom_vjp_call",
        {
            "bwd": "subgraph (*residuals, *captured, *cotangents) -> (*cotangents of the "
            "arguments): the operands are its inputs before the cotangents, then one tangent "
            "per output of bwd"
        },
    ),
)
