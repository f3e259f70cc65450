"""Control flow without loops: `cond` and `checkpoint`, the front ends (`gs.cond`,
`gs.checkpoint`) and their primitives, ops whose attributes are subgraphs (closed: a body reads
enclosing values only through inputs the node passes in). Loops are in loops.py; the helpers
both use are in bodies.py.

Derivatives follow one pattern. The JVP of a control-flow node is a second node of the same
kind whose body is the JVP of the original body restricted to tangent outputs; that node is
linear in the tangents, and its transpose is a third node whose body is the transposed
(reverse-mode) body. The bodies of cond and checkpoint recompute their own intermediate
values, so what the reverse pass keeps is only what crosses the node boundary: the operands.
(A scan keeps its body's residuals instead: loops.py.)
"""

from __future__ import annotations

from .. import numpy as gnp
from ..primitive import Linear, OpDoc, ShapeError, primitive
from ..pytree import flatten, unflatten
from ..tracing import bind, spec_of
from .bodies import (
    check_signature,
    common_dtypes,
    differentiable,
    in_trace,
    leaves_as_arrays,
    retyped,
    run_body,
    tangent_body,
    trace_body,
    transposed_body,
    with_unused_inputs,
)

# ---- cond ----------------------------------------------------------------------------------
# inputs: the predicate, the operands, the values the true branch reads from the enclosing
# trace, then those the false branch reads; each branch takes all but the predicate.


def cond(pred, true_fn, false_fn, *operands):
    """true_fn(*operands) if pred else false_fn(*operands); both branches are recorded."""
    if not in_trace([pred, *flatten(operands)[0]]):
        return true_fn(*operands) if pred else false_fn(*operands)
    leaves, treedef = leaves_as_arrays(operands)
    specs = [spec_of(x) for x in leaves]
    true_graph, true_cap, out_def = trace_body(lambda *xs: true_fn(*unflatten(treedef, xs)), specs)
    false_graph, false_cap, false_def = trace_body(
        lambda *xs: false_fn(*unflatten(treedef, xs)), specs
    )
    if out_def != false_def:
        raise TypeError("cond: the branches return different structures")
    # one signature: each branch also takes, unused, what the other reads
    n = len(leaves)
    true_graph = with_unused_inputs(true_graph, n, after=[spec_of(c) for c in false_cap])
    false_graph = with_unused_inputs(false_graph, n, before=[spec_of(c) for c in true_cap])
    pred = gnp.not_equal(pred, 0) if spec_of(pred).dtype != "bool" else pred
    out = bind(
        "cond",
        pred,
        *leaves,
        *true_cap,
        *false_cap,
        true_branch=true_graph,
        false_branch=false_graph,
    )
    return unflatten(out_def, out)


def _cond_shape(pred, *operands, true_branch, false_branch):
    if pred.shape != () or pred.dtype != "bool":
        raise ShapeError(f"the predicate must be a bool scalar, got {pred}")
    check_signature(true_branch, operands, "true_branch")
    check_signature(false_branch, operands, "false_branch")
    outs = [p.spec for p in true_branch.outputs]
    if outs != [p.spec for p in false_branch.outputs]:
        raise ShapeError(
            f"the branches give different outputs: {outs} and "
            f"{[p.spec for p in false_branch.outputs]}"
        )
    return tuple(outs)


def _cond_impl(pred, *operands, true_branch, false_branch):
    return tuple(run_body(true_branch if pred else false_branch, operands))


def _cond_jvp(primals, tangents, outs, true_branch, false_branch, loop_tapes):
    pred, *operands = primals
    wrt = [i for i, t in enumerate(tangents[1:]) if t is not None]
    out = bind(
        "cond",
        pred,
        *operands,
        *[tangents[1 + i] for i in wrt],
        true_branch=tangent_body(true_branch, wrt, loop_tapes),
        false_branch=tangent_body(false_branch, wrt, loop_tapes),
    )
    return tuple(t if differentiable(t.spec) else None for t in out)


def _cond_transpose(cts, pred, *args, true_branch, false_branch, loop_tapes):
    linear = [i for i, a in enumerate(args) if isinstance(a, Linear)]
    primal = [a for a in args if not isinstance(a, Linear)]
    cts = [c for c, p in zip(cts, true_branch.outputs) if differentiable(p.spec)]
    out = bind(
        "cond",
        pred,
        *primal,
        *cts,
        true_branch=transposed_body(true_branch, linear, loop_tapes),
        false_branch=transposed_body(false_branch, linear, loop_tapes),
    )
    result = [None] * (1 + len(args))
    for j, i in enumerate(linear):
        result[1 + i] = out[j]
    return tuple(result)


def _cond_batch(args, batched, true_branch, false_branch):
    from ..transforms import Program, batch, inline

    pred, *operands = args
    size = next(a.shape[0] for a, b in zip(args, batched) if b)
    flags = batched[1:]
    branches = [batch(Program(g), flags, size).graph for g in (true_branch, false_branch)]
    if not batched[0]:
        return bind("cond", pred, *operands, true_branch=branches[0], false_branch=branches[1])
    # a predicate per batch member: run both branches and select
    taken, other = inline(branches[0], operands), inline(branches[1], operands)
    return tuple(
        gnp.where(gnp.reshape(pred, (size,) + (1,) * (t.ndim - 1)), t, f)
        for t, f in zip(taken, other)
    )


def _cond_retype(args, true_branch, false_branch):
    pred, *operands = args
    specs = [o.spec for o in operands]
    branches = [retyped(g, specs) for g in (true_branch, false_branch)]
    common = common_dtypes(*branches)
    branches = [retyped(g, specs, common) for g in (true_branch, false_branch)]
    return bind("cond", pred, *operands, true_branch=branches[0], false_branch=branches[1])


primitive(
    "cond",
    impl=_cond_impl,
    shape=_cond_shape,
    arity=(1, None),
    attrs={"true_branch": "graph", "false_branch": "graph"},
    multiple_results=True,
    jvp=_cond_jvp,
    transpose=_cond_transpose,
    batch=_cond_batch,
    retype=_cond_retype,
    doc=OpDoc(
        "runs true_branch on the operands if pred is true, else false_branch (gs.cond). The "
        "front end passes the operands, then the values the true branch reads from the "
        "enclosing graph, then those the false branch reads; each branch takes all of them",
        ("pred", "*operands"),
        "one result per branch output: the outputs of the branch taken",
        {
            "true_branch": "subgraph (*operands) -> (*results): inputs of exactly the "
            "operands' shapes and dtypes, in order",
            "false_branch": "subgraph (*operands) -> (*results), the same inputs as "
            "true_branch and outputs of the same shapes and dtypes",
        },
    ),
)


# ---- checkpoint: a call whose body is recomputed in the backward pass -----------------------
# inputs: the operands, then the values the body reads from the enclosing trace.


def checkpoint(fn):
    """fn, recorded so that the reverse pass keeps only its inputs and recomputes the rest."""

    def wrapped(*args):
        leaves, treedef = leaves_as_arrays(args)
        if not in_trace(leaves):
            return fn(*args)
        graph, captured, out_def = trace_body(
            lambda *xs: fn(*unflatten(treedef, xs)), [spec_of(x) for x in leaves]
        )
        out = bind("checkpoint", *leaves, *captured, body=graph)
        return unflatten(out_def, out)

    return wrapped


def _checkpoint_shape(*operands, body):
    check_signature(body, operands, "body")
    return tuple(p.spec for p in body.outputs)


def _checkpoint_jvp(primals, tangents, outs, body, loop_tapes):
    wrt = [i for i, t in enumerate(tangents) if t is not None]
    body = tangent_body(body, wrt, loop_tapes)
    out = bind("checkpoint", *primals, *[tangents[i] for i in wrt], body=body)
    return tuple(t if differentiable(t.spec) else None for t in out)


def _checkpoint_transpose(cts, *args, body, loop_tapes):
    linear = [i for i, a in enumerate(args) if isinstance(a, Linear)]
    primal = [a for a in args if not isinstance(a, Linear)]
    cts = [c for c, p in zip(cts, body.outputs) if differentiable(p.spec)]
    out = bind("checkpoint", *primal, *cts, body=transposed_body(body, linear, loop_tapes))
    result = [None] * len(args)
    for j, i in enumerate(linear):
        result[i] = out[j]
    return tuple(result)


def _checkpoint_batch(args, batched, body):
    from ..transforms import Program, batch

    size = next(a.shape[0] for a, b in zip(args, batched) if b)
    return bind("checkpoint", *args, body=batch(Program(body), batched, size).graph)


primitive(
    "checkpoint",
    impl=lambda *operands, body: tuple(run_body(body, operands)),
    shape=_checkpoint_shape,
    arity=(0, None),
    attrs={"body": "graph"},
    multiple_results=True,
    jvp=_checkpoint_jvp,
    transpose=_checkpoint_transpose,
    batch=_checkpoint_batch,
    retype=lambda args, body: bind("checkpoint", *args, body=retyped(body, [a.spec for a in args])),
    doc=OpDoc(
        "runs body on the operands; reverse mode keeps only the operands and runs body again "
        "(gs.checkpoint). The front end passes the arguments, then the values the function "
        "reads from the enclosing graph",
        ("*operands",),
        "one result per body output",
        {
            "body": "subgraph (*operands) -> (*results): inputs of exactly the operands' "
            "shapes and dtypes, in order"
        },
    ),
)
