"""Subgraph helpers shared by the control-flow ops (engine/ops/control.py, loops.py): running a
body, tracing one, and the bodies derivatives need (the tangent body, the transposed body, a
body retyped for other dtypes)."""

from __future__ import annotations

import functools

from .. import dtypes
from .. import numpy as gnp
from ..graph import Graph
from ..primitive import ShapeError
from ..tracing import Builder


@functools.lru_cache(maxsize=1024)
def body_plan(graph: Graph):
    from ..plan import Plan
    from ..transforms import Program

    return Plan(Program(graph))


def run_body(graph: Graph, args) -> list:
    return body_plan(graph).run(list(args))  # inherits the enclosing call's should_stop


def differentiable(spec) -> bool:
    return dtypes.is_differentiable(spec.dtype)


def tangent_body(graph: Graph, wrt) -> Graph:
    """Inputs: graph's inputs, then tangents of inputs `wrt`. Outputs: the output tangents."""
    from ..transforms import Program, jvp, select_outputs

    n = len(graph.outputs)
    return select_outputs(jvp(Program(graph), wrt), range(n, 2 * n)).graph


def transposed_body(graph: Graph, linear) -> Graph:
    """For a graph linear in inputs `linear`: inputs are its other inputs, then one cotangent
    per differentiable output; outputs are the cotangents of the `linear` inputs. (Inside, the
    linear inputs are taken at 0: a linear map's transpose does not depend on the point.)"""
    from ..transforms import Program, inline, select_outputs, vjp

    n = len(graph.outputs)
    full = select_outputs(vjp(Program(graph), linear), range(n, n + len(linear))).graph
    keep = [p.spec for i, p in enumerate(graph.inputs) if i not in linear]
    n_cts = len(full.inputs) - len(graph.inputs)

    def body(*args):
        primal, cts = iter(args[: len(keep)]), args[len(keep) :]
        inputs = [
            gnp.zeros(p.spec.shape, p.spec.dtype) if i in linear else next(primal)
            for i, p in enumerate(graph.inputs)
        ]
        return inline(full, inputs + list(cts))

    return trace_closed(body, keep + [p.spec for p in full.inputs[len(graph.inputs) :][:n_cts]])


def retyped(graph: Graph, specs, out_dtypes=None) -> Graph:
    """`graph` traced again for inputs of `specs`, outputs cast to `out_dtypes` if given."""
    from ..transforms import Program, inline, retype

    body = retype(Program(graph), list(specs)).graph
    if out_dtypes is None:
        return body
    return trace_closed(
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


def check_signature(graph: Graph, specs, what):
    got = [p.spec for p in graph.inputs]
    if got != list(specs):
        raise ShapeError(f"{what} takes {got}, the node passes {list(specs)}")


def trace_closed(fn, specs) -> Graph:
    """Trace `fn` on fresh inputs of `specs` as a closed subgraph of the current builder."""
    from ..tracing import current_builder

    with Builder(current_builder()) as builder:
        inputs = [builder.input(f"arg{i}", s) for i, s in enumerate(specs)]
        out = fn(*inputs)
        graph = builder.build(list(out))
    if builder.captured:
        raise ShapeError("internal: a derivative body read an enclosing value")
    return graph
