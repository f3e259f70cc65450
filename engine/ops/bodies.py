"""Subgraph helpers shared by the control-flow ops (engine/ops/control.py, loops.py): tracing a
body (closure conversion), running one (as its compiled plan), and the bodies derivatives
need (the tangent body, the linearized body cut into its primal and tangent parts, the
transposed body, a body retyped for other dtypes)."""

from __future__ import annotations

import functools

import numpy as np

from .. import dtypes
from .. import numpy as gnp
from ..graph import Graph, Node, Port
from ..primitive import PRIMITIVES, ShapeError
from ..pytree import flatten
from ..tracing import Builder, Tracer, current_builder

# ---- tracing a body --------------------------------------------------------------------------


def trace_body(fn, specs):
    """Trace `fn` on fresh inputs of `specs` as a subgraph of the current trace. A value `fn`
    reads from an enclosing trace becomes one more input of the subgraph, after those of
    `specs`, which the control-flow node passes in (closure conversion): the subgraph is
    closed. Returns the subgraph, the enclosing values it reads (in the order of those extra
    inputs) and the treedef of what `fn` returns (its leaves are the subgraph's outputs)."""
    with Builder(current_builder()) as builder:
        inputs = [builder.input(f"arg{i}", s) for i, s in enumerate(specs)]
        leaves, treedef = flatten(fn(*inputs))
        graph = builder.build(leaves)
    captured = [outer for outer, _ in builder.captured.values()]
    return graph, captured, treedef


def derived_body(fn, specs) -> Graph:
    """A body a rule makes (tangent, transposed, batched, retyped loop bodies): traced with
    `trace_body`, from the values the rule passes in only."""
    graph, captured, _ = trace_body(fn, specs)
    if captured:
        raise ShapeError("internal: a derivative body read an enclosing value")
    return graph


def captures_first(graph: Graph, n: int) -> Graph:
    """The same graph with the inputs after its first `n` (the captured values) moved first:
    a loop's node takes its constants before its carry."""
    inputs = list(graph.inputs[n:]) + list(graph.inputs[:n])
    return Graph(inputs, graph.constants, graph.nodes, graph.output_names)


def with_unused_inputs(graph: Graph, n: int, before=(), after=()) -> Graph:
    """The same graph with unused inputs of the specs of `before` inserted after its first `n`
    inputs and of `after` appended (so that two branches share a signature)."""
    unused = [Port(f"unused:{i}", s) for i, s in enumerate(list(before) + list(after))]
    inputs = list(graph.inputs)
    inputs = inputs[:n] + unused[: len(before)] + inputs[n:] + unused[len(before) :]
    return Graph(inputs, graph.constants, graph.nodes, graph.output_names)


def leaves_as_arrays(tree):
    """A front end's arguments: the leaves (Tracers, else NumPy arrays) and the treedef."""
    leaves, treedef = flatten(tree)
    leaves = [x if isinstance(x, Tracer) else np.asarray(x) for x in leaves]
    return leaves, treedef


def in_trace(values) -> bool:
    """Whether a front end records a node (else it runs the Python control flow at once)."""
    return current_builder() is not None or any(isinstance(v, Tracer) for v in values)


# ---- running a body --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def body_plan(graph: Graph):
    from ..plan import Plan
    from ..transforms import Program

    return Plan(Program(graph))


def run_body(graph: Graph, args) -> list:
    return body_plan(graph).run(list(args))  # inherits the enclosing call's should_stop


def check_signature(graph: Graph, specs, what):
    got = [p.spec for p in graph.inputs]
    if got != list(specs):
        raise ShapeError(f"{what} takes {got}, the node passes {list(specs)}")


# ---- the bodies derivatives need -------------------------------------------------------------


def differentiable(spec) -> bool:
    return dtypes.is_differentiable(spec.dtype)


def tangent_body(graph: Graph, wrt, loop_tapes) -> Graph:
    """Inputs: graph's inputs, then tangents of inputs `wrt`. Outputs: the output tangents."""
    from ..transforms import Program, jvp, select_outputs

    n = len(graph.outputs)
    return select_outputs(jvp(Program(graph), wrt, loop_tapes=loop_tapes), range(n, 2 * n)).graph


@functools.lru_cache(maxsize=256)  # a tape budget's choice of mode reads it before the rule
def linearized_parts(graph: Graph, wrt: tuple, cheap_outputs=()):
    """Partial evaluation of `graph`'s linearization along `wrt` (its JVP for reverse mode, as
    JAX's scan does): the nodes that read no tangent (the primal part) and those that do (the
    tangent part), so that a loop runs the primal part forwards, keeps what the tangent part
    reads (the residuals) per iteration and runs the tangent part (or its transpose) on them.

    Cheap nodes the tangent part alone needs (elementwise ops, views and constants, e.g. tanh's
    `1 - y*y`) move into it when what they read is available there anyway (an input of `graph`,
    or a residual, or one of the outputs `cheap_outputs` (indices), which the caller can keep
    at little cost: a loop's carry, which it keeps entering the iteration anyway): they are
    recomputed rather than kept.

    Returns (primal, tangent, reads, residuals):
    - `primal`: graph's inputs -> graph's outputs, then the residuals;
    - `tangent`: the graph's primal values in `reads`, then one tangent per input in `wrt` ->
      the output tangents;
    - `reads`: the names of the primal values `tangent` takes (inputs of `graph`, named as in
      `graph`, and residuals);
    - `residuals`: those of `reads` that `primal` computes, in the order it returns them."""
    from ..transforms import Program, jvp, linearizing, prune

    with linearizing():  # for any caller: the cache keeps one answer (loops inside differ)
        lin = jvp(Program(graph), wrt).graph
    n_in, n_out = len(graph.inputs), len(graph.outputs)
    inputs = set(lin.input_names[:n_in]) | set(lin.constants)
    tangent = set(lin.input_names[n_in:])
    producer, in_tangent_part = {}, set()
    for k, node in enumerate(lin.nodes):
        producer.update((o, k) for o in node.outputs)
        if any(n in tangent for n in node.inputs):
            tangent.update(node.outputs)
            in_tangent_part.add(k)
    read = {n for k in in_tangent_part for n in lin.nodes[k].inputs if n not in tangent}
    read.update(n for n in lin.output_names[n_out:] if n not in tangent)
    available = inputs | read | {lin.output_names[i] for i in cheap_outputs}

    @functools.cache
    def recomputable(name) -> bool:
        """Cheap to compute in the tangent part from what it has anyway."""
        k = producer.get(name)
        if k is None:
            return False
        node, prim = lin.nodes[k], PRIMITIVES[lin.nodes[k].op]
        if prim.constant:
            return True
        if prim.multiple_results or not (prim.elementwise or prim.view):
            return False
        return all(n in available or recomputable(n) for n in node.inputs)

    moved = set()

    def move(name):
        k = producer.get(name)
        if k is None or k in moved or k in in_tangent_part or not recomputable(name):
            return
        moved.add(k)
        for n in lin.nodes[k].inputs:
            move(n)

    for name in sorted(read):
        move(name)
    tangent_nodes = [node for k, node in enumerate(lin.nodes) if k in in_tangent_part | moved]
    made = {o for node in tangent_nodes for o in node.outputs} | tangent
    reads = list(
        dict.fromkeys(
            n
            for n in [x for node in tangent_nodes for x in node.inputs]
            + list(lin.output_names[n_out:])
            if n not in made and n not in lin.constants
        )
    )
    residuals = [n for n in reads if n not in inputs]
    used = {n for node in tangent_nodes for n in node.inputs} | set(lin.output_names[n_out:])
    constants = {n: v for n, v in lin.constants.items() if n in used}
    # inputs named apart from the `%k` names a trace through this graph gives its nodes
    renamed = {n: f"primal:{j}" for j, n in enumerate(reads)}
    avals = dict(lin.avals) | {renamed[n]: lin.avals[n] for n in reads}
    tangent_graph = Graph(
        [Port(renamed[n], lin.avals[n]) for n in reads] + list(lin.inputs[n_in:]),
        constants,
        [
            Node(node.op, tuple(renamed.get(n, n) for n in node.inputs), node.outputs, node.attrs)
            for node in tangent_nodes
        ],
        [renamed.get(n, n) for n in lin.output_names[n_out:]],
        _known=avals,
    )
    primal = Graph(
        lin.inputs[:n_in],
        lin.constants,
        [node for k, node in enumerate(lin.nodes) if k not in in_tangent_part],
        list(lin.output_names[:n_out]) + residuals,
        _known=lin.avals,
    )
    return prune(Program(primal)).graph, tangent_graph, reads, residuals


def transposed_body(graph: Graph, linear, loop_tapes) -> Graph:
    """For a graph linear in inputs `linear`: inputs are its other inputs, then one cotangent
    per differentiable output; outputs are the cotangents of the `linear` inputs. (Inside, the
    linear inputs are taken at 0: a linear map's transpose does not depend on the point.)"""
    from ..transforms import Program, inline, select_outputs, vjp

    n = len(graph.outputs)
    full = select_outputs(
        vjp(Program(graph), linear, loop_tapes=loop_tapes), range(n, n + len(linear))
    ).graph
    keep = [p.spec for i, p in enumerate(graph.inputs) if i not in linear]
    n_cts = len(full.inputs) - len(graph.inputs)

    def body(*args):
        primal, cts = iter(args[: len(keep)]), args[len(keep) :]
        inputs = [
            gnp.zeros(p.spec.shape, p.spec.dtype) if i in linear else next(primal)
            for i, p in enumerate(graph.inputs)
        ]
        return inline(full, inputs + list(cts))

    return derived_body(body, keep + [p.spec for p in full.inputs[len(graph.inputs) :][:n_cts]])


def retyped(graph: Graph, specs, out_dtypes=None) -> Graph:
    """`graph` traced again for inputs of `specs`, outputs cast to `out_dtypes` if given."""
    from ..transforms import Program, inline, retype

    body = retype(Program(graph), list(specs)).graph
    if out_dtypes is None:
        return body
    return derived_body(
        lambda *a: tuple(gnp.astype(o, d) for o, d in zip(inline(body, a), out_dtypes)), list(specs)
    )


def common_dtypes(*graphs):
    return [
        dtypes.promote(*[g.outputs[k].spec.dtype for g in graphs])
        for k in range(len(graphs[0].outputs))
    ]


def loop_retype(carry_in, body_specs):
    """Carry dtypes for a loop retyped: widened until the body gives back what it gets."""
    carry = list(carry_in)
    while True:
        body = body_specs(carry)
        out = [p.spec.dtype for p in body.outputs[: len(carry)]]
        wider = [dtypes.promote(c, o) for c, o in zip(carry, out)]
        if wider == carry:
            return carry, body
        carry = wider
