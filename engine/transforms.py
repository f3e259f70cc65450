"""Graph-to-graph transformations. Each re-traces a graph through a Builder, calling every
node's rule; the result is again an ordinary Graph, so transformations compose (a Hessian is
a Jacobian of a gradient; an HVP is a JVP of a gradient).

- `jvp`: forward mode, a tangent beside each value (dual numbers).
- `vjp`: reverse mode = JVP, then transposition of the part linear in the tangents. The
  non-linear part runs first (the forward pass); the values it computes that the transposed
  part reads are the tape. Returned with `boundary`, the index of the first backward node.
- `batch`: a leading batch axis on some inputs (a batch of tangents or cotangents in one pass).
- `prune`: drops nodes no output needs.

A Program is a graph with its forward/backward boundary (None when there is no tape).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import NamedTuple

from . import dtypes
from . import numpy as gnp
from .graph import Graph, Spec
from .ops import one_hot
from .primitive import PRIMITIVES, Linear, PartlyBatched
from .tracing import Builder, bind


class Program(NamedTuple):
    graph: Graph
    boundary: int | None = None  # first node of the backward pass


def _replay_node(node, args):
    out = bind(node.op, *args, **node.attrs)
    return out if isinstance(out, tuple) else (out,)


def inline(graph: Graph, args) -> tuple:
    """Replay `graph`'s nodes into the current builder on `args`; its outputs. An arg of None
    marks an input the caller knows is unused."""
    env = {p.name: a for p, a in zip(graph.inputs, args) if a is not None}
    for name, value in graph.constants.items():
        env[name] = value
    for node in graph.nodes:
        env.update(zip(node.outputs, _replay_node(node, [env[n] for n in node.inputs])))
    return tuple(env[p.name] for p in graph.outputs)


def _start(graph: Graph, builder: Builder, specs=None):
    env = {}
    for port, spec in zip(graph.inputs, specs or [p.spec for p in graph.inputs]):
        env[port.name] = builder.input(port.name, spec)
    for name, value in graph.constants.items():
        env[name] = builder.constant(value)
    return env


def _zeros(spec):
    return gnp.zeros(spec.shape, spec.dtype)


def _options(prim, loop_tapes) -> dict:
    """The keywords a rule gets besides the node's attributes: the rules of ops with subgraphs
    pass the transformation's options on to the transformations of their bodies."""
    return {"loop_tapes": loop_tapes} if prim.subgraphs else {}


_linearizing = contextvars.ContextVar("a JVP that vjp transposes", default=False)


@contextlib.contextmanager
def linearizing():
    """Within it, a JVP is traced to be transposed (as `vjp` does): a loop's JVP then keeps
    what its transpose reads per iteration. Outside, a JVP is forward mode, and a loop runs
    its tangents beside its primal values, keeping nothing per iteration."""
    token = _linearizing.set(True)
    try:
        yield
    finally:
        _linearizing.reset(token)


def is_linearizing() -> bool:
    return _linearizing.get()


def _linearize(graph: Graph, builder: Builder, wrt, boundary, loop_tapes):
    """Record `graph` with a tangent beside each value into `builder`: the primal nodes as
    they are (`Builder.adopt`: no shape rule runs again), and each differentiated node's JVP
    rule. Returns (values, tangents: value name -> its tangent's Tracer, where a missing
    tangent is a zero, the tangent inputs in the order of `wrt`, the index in builder.nodes
    of the first node recorded for graph node `boundary`)."""
    env = _start(graph, builder)
    tangents = {}
    tangent_inputs = []
    for i in wrt:
        port = graph.inputs[i]
        tangents[port.name] = builder.input(f"tangent:{port.name}", port.spec)
        tangent_inputs.append(tangents[port.name])
    avals = graph.avals
    new_boundary = None
    for k, node in enumerate(graph.nodes):
        if k == boundary:
            new_boundary = len(builder.nodes)
        args = [env[n] for n in node.inputs]
        if tangents.keys().isdisjoint(node.inputs):  # no tangent comes in: the node as it is
            env.update(
                zip(node.outputs, builder.adopt(node, args, [avals[n] for n in node.outputs]))
            )
            continue
        ins = [tangents.get(n) for n in node.inputs]
        prim = PRIMITIVES[node.op]
        options = _options(prim, loop_tapes)
        if prim.jvp_full is not None:
            outs, out_t = prim.jvp_full(args, ins, **node.attrs, **options)
        else:
            outs = builder.adopt(node, args, [avals[n] for n in node.outputs])
            out = outs if prim.multiple_results else outs[0]
            out_t = prim.jvp(args, ins, out, **node.attrs, **options)
        env.update(zip(node.outputs, outs))
        if out_t is not None:
            out_t = out_t if isinstance(out_t, tuple) else (out_t,)
            tangents.update((n, t) for n, t in zip(node.outputs, out_t) if t is not None)
    if new_boundary is None and boundary is not None:
        new_boundary = len(builder.nodes)
    return env, tangents, tangent_inputs, new_boundary


def jvp(program: Program, wrt, *, loop_tapes: bool = False) -> Program:
    """Inputs: the primals, then one tangent per input in `wrt` (indices of differentiable
    inputs). Outputs: the primal outputs, then their tangents. With `loop_tapes`, a scan keeps
    the carries its reverse pass reads on a loop tape (which can checkpoint under a tape
    budget) rather than stacked in an array."""
    graph, boundary = program
    with Builder() as builder:
        env, tangents, _, new_boundary = _linearize(graph, builder, wrt, boundary, loop_tapes)
        primal_out = [env[p.name] for p in graph.outputs]
        tangent_out = [
            tangents[p.name] if p.name in tangents else _zeros(p.spec) for p in graph.outputs
        ]
        return Program(builder.build(primal_out + tangent_out, internal=True), new_boundary)


def vjp(program: Program, wrt, *, seed_ones: bool = False, loop_tapes: bool = False) -> Program:
    """Inputs: the primals, then one cotangent per output (none with `seed_ones`, for the
    gradient of a scalar). Outputs: the primal outputs, then one cotangent per input in `wrt`.
    `loop_tapes`: as for `jvp`.

    The linearization (the JVP) is recorded into the same builder the result is built in; its
    nodes are then split: those that read a tangent (the linear part, transposed below) leave
    the builder, the rest stay as the forward pass."""
    graph = program.graph
    with Builder() as builder:
        with linearizing():  # argnums may repeat
            env, tangents, tangent_inputs, _ = _linearize(
                graph, builder, tuple(dict.fromkeys(wrt)), None, loop_tapes
            )
        linear = {t.name for t in tangent_inputs}
        forward, linear_nodes = [], []
        for node in builder.nodes:
            if linear.isdisjoint(node.inputs):
                forward.append(node)
            else:
                linear.update(node.outputs)
                linear_nodes.append(node)
        builder.nodes = forward
        tangent_names = {t.name for t in tangent_inputs}
        builder.inputs = [p for p in builder.inputs if p.name not in tangent_names]
        # what the linear part computed is not there for the backward pass to share
        builder.forget(linear_nodes)
        boundary = len(builder.nodes)

        cotangents: dict = {}

        def accumulate(name, ct):
            if name not in cotangents:
                cotangents[name] = ct
                return
            total = cotangents[name]
            for dense, sparse in ((total, ct), (ct, total)):
                node = builder.producer.get(sparse.name)
                add_into = None if node is None else PRIMITIVES[node.op].add_into
                if add_into is not None and dense.spec == sparse.spec:
                    # add a slice into the running total: no zeroed array per slice
                    parts = [builder.tracer(n) for n in node.inputs]
                    cotangents[name] = add_into(dense, *parts, **node.attrs)
                    return
            cotangents[name] = total + ct

        for k, port in enumerate(graph.outputs):
            if not dtypes.is_differentiable(port.spec.dtype):
                continue
            seed = (
                gnp.ones(port.spec.shape, port.spec.dtype)
                if seed_ones
                else builder.input(f"cotangent:{k}", port.spec)
            )
            tangent = tangents.get(port.name)
            if tangent is not None and tangent.name in linear:
                accumulate(tangent.name, seed)

        specs = builder.specs
        for node in reversed(linear_nodes):
            cts = [cotangents.pop(n, None) for n in node.outputs]
            if all(ct is None for ct in cts):
                continue
            prim = PRIMITIVES[node.op]
            if prim.transpose is None:  # only a custom_jvp rule can make such a graph
                raise TypeError(
                    f"reverse mode: '{node.op}' is applied to a tangent and is not linear; the "
                    "tangent outputs of a gs.custom_jvp rule must be linear in its tangents"
                )
            if not prim.multiple_results:
                ct = cts[0]
            else:  # several outputs: the rule gets one cotangent each, zeros made explicit
                ct = tuple(_zeros(specs[n]) if c is None else c for n, c in zip(node.outputs, cts))
            args = [Linear(specs[n]) if n in linear else builder.tracer(n) for n in node.inputs]
            options = _options(prim, loop_tapes)
            for name, ct_in in zip(node.inputs, prim.transpose(ct, *args, **node.attrs, **options)):
                if ct_in is not None and name in linear:
                    accumulate(name, ct_in)

        primal_out = [env[p.name] for p in graph.outputs]
        grads = [cotangents.get(t.name) for t in tangent_inputs]
        by_input = dict(zip(dict.fromkeys(wrt), grads))
        grads = [
            by_input[i] if by_input[i] is not None else _zeros(graph.inputs[i].spec) for i in wrt
        ]
        return _build_pruned(builder, primal_out + grads, boundary)


def batch(program: Program, batched_inputs, size: int, *, basis: int | None = None) -> Program:
    """The same computation over a leading axis of `size` on the inputs flagged in
    `batched_inputs`; every output gets that leading axis. `basis`: the index of a batched
    input that will hold the identity basis (`size` one-hot rows, as a Jacobian's pass gets),
    which the pass may then exploit (engine/ops/one_hot.py, the ops' `batch_scaled` rules): its
    products with unbatched values and its contractions are built without the basis where
    they can be."""
    return _batch(program, batched_inputs, size, broadcast=True, basis=basis)[0]


def batch_partly(program: Program, batched_inputs, size: int) -> tuple[Program, list]:
    """As `batch`, but the outputs that do not depend on a batched input keep their shape;
    also returns which outputs have the batch axis."""
    return _batch(program, batched_inputs, size, broadcast=False)


def _batch(program: Program, batched_inputs, size: int, broadcast: bool, basis=None):
    graph, boundary = program
    specs = [
        Spec((size,) + p.spec.shape, p.spec.dtype) if b else p.spec
        for p, b in zip(graph.inputs, batched_inputs)
    ]
    with Builder() as builder:
        env = _start(graph, builder, specs)
        batched = {p.name for p, b in zip(graph.inputs, batched_inputs) if b}
        if basis is not None:
            name = graph.inputs[basis].name
            env[name] = one_hot.basis(env[name])
        new_boundary = None
        for k, node in enumerate(graph.nodes):
            if k == boundary:
                new_boundary = len(builder.nodes)
            args = [env[n] for n in node.inputs]
            flags = [n in batched for n in node.inputs]
            if any(flags):
                out = None
                rule = PRIMITIVES[node.op].batch_scaled
                if basis is not None and rule is not None:

                    def built(j, names=node.inputs):
                        env[names[j]] = one_hot.materialize(env[names[j]])
                        return env[names[j]]

                    out = rule(args, flags, built, **node.attrs)
                if out is None:
                    for n, a in zip(node.inputs, args):
                        if isinstance(a, one_hot.Scaled):  # built once, for every reader
                            env[n] = one_hot.materialize(a)
                    args = [env[n] for n in node.inputs]
                    out = PRIMITIVES[node.op].batch(args, flags, **node.attrs)
                if isinstance(out, PartlyBatched):
                    outs = out.values
                    batched.update(n for n, b in zip(node.outputs, out.batched) if b)
                else:
                    outs = out if isinstance(out, tuple) else (out,)
                    batched.update(node.outputs)
            else:
                outs = _replay_node(node, args)
            env.update(zip(node.outputs, outs))
        outs = []
        for port in graph.outputs:
            value = env[port.name] = one_hot.materialize(env[port.name])
            outs.append(
                value
                if port.name in batched or not broadcast
                else gnp.broadcast_to(value, (size,) + port.spec.shape)
            )
        flags = [broadcast or p.name in batched for p in graph.outputs]
        return Program(builder.build(outs, internal=True), new_boundary), flags


def select_outputs(program: Program, indices) -> Program:
    graph = program.graph
    pruned = Graph(
        graph.inputs,
        graph.constants,
        graph.nodes,
        [graph.outputs[i].name for i in indices],
        _known=graph.avals,  # a valid graph's nodes: their shape rules ran when it was made
    )
    return prune(Program(pruned, program.boundary))


def _build_pruned(builder: Builder, outputs, boundary) -> Program:
    """`builder.build(outputs, internal=True)` without the nodes no output needs and the
    constants nothing reads, as `prune` would make it, in one Graph."""
    outs = [builder.capture(o) for o in outputs]
    needed = {o.name for o in outs}
    keep = []
    nodes = builder.nodes
    for k in range(len(nodes) - 1, -1, -1):
        node = nodes[k]
        if not needed.isdisjoint(node.outputs):
            keep.append(k)
            needed.update(node.inputs)
    keep.reverse()
    graph = Graph(
        builder.inputs,
        {n: v for n, v in builder.constants.items() if n in needed},
        [nodes[k] for k in keep],
        [o.name for o in outs],
        _known=builder.specs,
    )
    return Program(graph, sum(1 for k in keep if k < boundary))


def prune(program: Program) -> Program:
    """Remove nodes whose outputs nothing needs, and constants nothing reads."""
    graph, boundary = program
    needed = set(graph.output_names)
    keep = []
    for k in range(len(graph.nodes) - 1, -1, -1):
        node = graph.nodes[k]
        if not needed.isdisjoint(node.outputs):
            keep.append(k)
            needed.update(node.inputs)
    keep.reverse()
    if len(keep) == len(graph.nodes) and all(c in needed for c in graph.constants):
        return program
    nodes = [graph.nodes[k] for k in keep]
    constants = {n: v for n, v in graph.constants.items() if n in needed}
    new_boundary = None if boundary is None else sum(1 for k in keep if k < boundary)
    return Program(
        Graph(graph.inputs, constants, nodes, graph.output_names, _known=graph.avals), new_boundary
    )


def retype(program: Program, specs) -> Program:
    """The same graph traced again for inputs of other specs (complex inputs for the complex
    step): every shape and dtype rule runs anew. An op with a `complex_step` extension (abs)
    evaluates it where an operand was real in `graph` and is complex now."""
    graph, _boundary = program
    with Builder() as builder:
        env = _start(graph, builder, specs)
        for node in graph.nodes:
            args = [env[n] for n in node.inputs]
            prim = PRIMITIVES[node.op]
            if prim.retype is not None:  # ops with subgraphs retype their bodies
                outs = prim.retype(args, **node.attrs)
            elif prim.complex_step is not None and any(
                a.spec.dtype == "complex128" and graph.avals[n].dtype != "complex128"
                for n, a in zip(node.inputs, args)
            ):  # real in the graph, complex for the step: the op's holomorphic extension
                outs = prim.complex_step(args, **node.attrs)
                outs = outs if isinstance(outs, tuple) else (outs,)
            else:
                outs = _replay_node(node, args)
            env.update(zip(node.outputs, outs))
        return Program(builder.build([env[p.name] for p in graph.outputs], internal=True), None)
