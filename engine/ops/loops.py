"""Loops: the front ends `scan`, `while_loop` and `fori_loop` (`gs.scan`, ...), the primitives
`scan` and `while_loop`, and the loop tapes that differentiate them in reverse mode under a
tape budget or with a trip count known only at run time (`scan_record`, `while_record`,
`loop_tape`; the runtime side is engine/tape.py).

Two drivers run every loop: `_run_scan` runs scan, scan_record and loop_tape (a loop over a
recorded tape), `_run_while` runs while_loop and while_record. Either calls its body's
compiled plan once per iteration.

In forward mode a scan's JVP is one scan of its body's JVP, the tangents beside the primal
values (`_scan_jvp_forward`): nothing is kept per iteration. A JVP traced to be transposed
(reverse mode, `transforms.linearizing`) is, as for cond (control.py), a second loop linear
in the tangents, and its transpose a loop running the other way. What they read of the
primal loop:
- a scan keeps its body's residuals (`_scan_jvp_residuals`): the primal scan runs the primal
  part of the linearized body and stacks, per iteration, what the tangent part reads; the
  tangent scan runs the tangent part on them, and its transpose reads them backwards. No body
  op runs twice.
- otherwise the carry entering every iteration, from which the tangent loop evaluates the body
  again: stacked by the primal scan (within `recomputing()`: the second-order programs a tape
  budget the residuals would pass builds; or for a body whose residuals cannot be stacked or
  that calls custom rules), or recorded on a loop tape (a while_loop within `recomputing()`
  or with such a body; a scan in the transformations made with `loop_tapes`,
  engine/transforms.py, which the engine builds when the residuals would pass a tape budget:
  the tape then keeps checkpoints only and recomputes the rest).
- a while_loop keeps its body's residuals on its loop tape (`_while_jvp_residuals`): one entry
  per iteration, the carry it gives and what the tangent part reads; under a budget the tape
  keeps some entries and recomputes the others from the carry of the one before.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import itertools

import numpy as np

from .. import dtypes
from .. import numpy as gnp
from ..errors import GraphError, LimitError
from ..graph import Graph, Port, Spec
from ..plan import scalars
from ..primitive import Linear, OpDoc, PartlyBatched, ShapeError, primitive
from ..pytree import flatten, unflatten
from ..tape import LoopTape
from ..tracing import bind, spec_of
from .bodies import (
    body_plan,
    captures_first,
    check_signature,
    derived_body,
    differentiable,
    in_trace,
    leaves_as_arrays,
    linearized_parts,
    loop_retype,
    retyped,
    run_body,
    tangent_body,
    trace_body,
    transposed_body,
    with_unused_inputs,
)

DEFAULT_MAX_ITERATIONS = 1_000_000

_recompute = contextvars.ContextVar("recompute loop bodies", default=False)


@contextlib.contextmanager
def recomputing():
    """Within it, the derivatives of a scan keep only the carry entering every iteration and
    recompute the body in the reverse pass (the JVP evaluating the primal body again), as a
    tape budget the stored residuals would pass needs; outside, they keep the residuals."""
    token = _recompute.set(True)
    try:
        yield
    finally:
        _recompute.reset(token)


def is_recomputing() -> bool:
    """Whether the calling context is inside `recomputing()`."""
    return _recompute.get()


# ---- the drivers, and helpers every loop uses ----------------------------------------------


def _run_scan(body, consts, carry, xs, num_carry, length, reverse, *, steps=None, record=None):
    """The loop of scan, scan_record and loop_tape. Iteration k runs `body` on (consts, carry,
    the extra inputs of step k, the slices x[i] of xs), i = k, or length - 1 - k with
    `reverse`; its first `num_carry` outputs are the next carry, the others are stacked at i.
    `steps` yields (k, extra inputs): by default k = 0 .. length - 1 with none; a loop tape's
    carries, in the order run or backwards, for loop_tape. `record(k, carry)` is given the
    carry entering every iteration. Returns the final carry and the stacked outputs."""
    ys = [np.empty((length,) + p.spec.shape, p.spec.dtype) for p in body.outputs[num_carry:]]
    run = body_plan(body).runner()
    consts, carry = scalars(consts), scalars(carry)
    zero_d = [j for j, p in enumerate(body.outputs[:num_carry]) if not p.spec.shape]
    with np.errstate(all="ignore"):
        for k, extra in zip(range(length), itertools.repeat(())) if steps is None else steps:
            i = length - 1 - k if reverse else k
            if record is not None:
                record(k, tuple(carry))
            out = run(*consts, *carry, *(scalars(extra) if extra else ()), *[x[i] for x in xs])
            for j in zero_d:  # as `scalars` does, for the carry's 0-d values only
                if type(out[j]) is np.ndarray:
                    out[j] = out[j][()]
            carry = out[:num_carry]
            for buffer, y in zip(ys, out[num_carry:]):
                buffer[i] = y
    return tuple(carry) + tuple(ys)


def _run_while(cond, body, cond_consts, body_consts, carry, max_iterations, record=None, keep=None):
    """The loop of while_loop, while_record and while_keep: `body` while `cond` holds, at most
    `max_iterations` times (then LimitError). `record(k, carry)` as for `_run_scan`;
    `keep(k, outputs)` is given what iteration k gives, the next carry first (a body may give
    more than its carry: while_keep's)."""
    k, num_carry = 0, len(carry)
    keep_going, run = body_plan(cond).runner(), body_plan(body).runner()
    cond_consts, body_consts, carry = scalars(cond_consts), scalars(body_consts), scalars(carry)
    with np.errstate(all="ignore"):
        while keep_going(*cond_consts, *carry)[0]:
            if k == max_iterations:
                raise LimitError(
                    f"while_loop ran past its cap of {max_iterations} iterations", "while_loop"
                )
            if record is not None:
                record(k, tuple(carry))
            out = scalars(run(*body_consts, *carry))
            if keep is not None:
                keep(k, tuple(out))
            carry = out[:num_carry]
            k += 1
    return tuple(carry)


def _cut(seq, *sizes):
    """`seq` as lists of `sizes` and a last list of the rest: (consts, carry, xs) of a scan."""
    parts, start = [], 0
    for size in sizes:
        parts.append(list(seq[start : start + size]))
        start += size
    return parts + [list(seq[start:])]


def _new_tape(advance, body, carry) -> LoopTape:
    """A loop tape for a loop whose iteration k, `advance(k, carry)`, runs `body`."""
    nbytes = int(sum(np.asarray(c).nbytes for c in carry))
    return LoopTape(advance, nbytes, len(body_plan(body).steps))


# ---- scan ----------------------------------------------------------------------------------
# inputs: consts, initial carry, xs (scanned along axis 0); body: (consts, carry, x) -> (carry, y)
# outputs: final carry, ys stacked along axis 0.

SCAN_ATTRS = {
    "body": "graph",
    "length": "int",
    "num_consts": "int",
    "num_carry": "int",
    "reverse": "bool",
}
SCAN_DOCS = {
    "body": "subgraph (*consts, *carry, *x) -> (*new_carry, *y): x holds one slice x[i] of "
    "each xs operand (its shape without the leading axis); new_carry has exactly the carry's "
    "shapes and dtypes",
    "length": "the number of iterations, >= 0: the leading axis of every xs operand",
    "num_consts": "how many operands are consts, >= 0",
    "num_carry": "how many operands after the consts are the initial carry, >= 0; the rest are xs",
    "reverse": "run i = length-1 down to 0 instead of 0 up to length-1 (y of iteration i "
    "still lands at index i)",
}
SCAN_RESULT = (
    "the final carry, then each y stacked along a new leading axis of size length (shape "
    "(length, *y.shape))"
)


def scan(f, init, xs, length=None, reverse=False):
    """carry, y = f(carry, x) over the leading axis of xs; returns (carry, stacked ys)."""
    carry_leaves, carry_def = leaves_as_arrays(init)
    x_leaves, x_def = leaves_as_arrays(xs) if xs is not None else ([], None)
    if any(not spec_of(x).shape for x in x_leaves):
        raise ValueError("scan: every array in xs needs a leading axis to scan over")
    lengths = {int(x.shape[0]) for x in x_leaves}
    if length is not None:
        lengths.add(int(length))
    if len(lengths) != 1:
        raise ValueError(f"scan: inconsistent or missing lengths {sorted(lengths)}")
    (n,) = lengths
    carry_specs = [spec_of(c) for c in carry_leaves]
    x_specs = [Spec(spec_of(x).shape[1:], spec_of(x).dtype) for x in x_leaves]
    y_def = None

    def body(*flat):
        nonlocal y_def
        carry = unflatten(carry_def, flat[: len(carry_leaves)])
        x = unflatten(x_def, flat[len(carry_leaves) :]) if xs is not None else None
        new_carry, y = f(carry, x)
        new_leaves, new_def = flatten(new_carry)
        if new_def != carry_def:
            raise TypeError("scan: f must return a carry of the structure it was given")
        y_leaves, y_def = flatten(y)
        return new_leaves + y_leaves

    graph, captured, _ = trace_body(body, carry_specs + x_specs)
    out = bind(
        "scan",
        *captured,
        *carry_leaves,
        *x_leaves,
        body=captures_first(graph, len(carry_leaves) + len(x_leaves)),
        length=n,
        num_consts=len(captured),
        num_carry=len(carry_leaves),
        reverse=bool(reverse),
    )
    carry = unflatten(carry_def, out[: len(carry_leaves)])
    return carry, unflatten(y_def, out[len(carry_leaves) :])


def _bind_scan(consts, carry, xs, body, length, reverse):
    return bind(
        "scan",
        *consts,
        *carry,
        *xs,
        body=body,
        length=length,
        num_consts=len(consts),
        num_carry=len(carry),
        reverse=reverse,
    )


def _loop_shape(consts, carry, tape, xs, body, length):
    """The outputs of scan or loop_tape, whose body takes (consts, carry, the carry a loop tape
    recorded, x slices) and gives (carry, ys): the carry, then the ys stacked."""
    for x in xs:
        if not x.shape or x.shape[0] != length:
            raise ShapeError(f"scanned input of shape {x.shape} has no leading axis of {length}")
    check_signature(body, consts + carry + tape + [Spec(x.shape[1:], x.dtype) for x in xs], "body")
    outs = [p.spec for p in body.outputs]
    if outs[: len(carry)] != carry:
        raise ShapeError(
            f"the body turns carry {carry} into {outs[: len(carry)]}: a carry keeps "
            "its shape and dtype across iterations"
        )
    return tuple(carry + [Spec((length,) + s.shape, s.dtype) for s in outs[len(carry) :]])


def _scan_shape(*args, body, length, num_consts, num_carry, reverse):
    if length < 0 or num_consts < 0 or num_carry < 0 or num_consts + num_carry > len(args):
        raise ShapeError("bad length, num_consts or num_carry")
    consts, carry, xs = _cut(args, num_consts, num_carry)
    return _loop_shape(consts, carry, [], xs, body, length)


def _scan_impl(*args, body, length, num_consts, num_carry, reverse):
    consts, carry, xs = _cut(args, num_consts, num_carry)
    return _run_scan(body, consts, carry, xs, num_carry, length, reverse)


def _with_carries_out(body: Graph, num_consts, num_carry) -> Graph:
    """The body, also giving back the carry it received (stacked by scan: the tape)."""
    carry_in = [p.name for p in body.inputs[num_consts : num_consts + num_carry]]
    return Graph(body.inputs, body.constants, body.nodes, list(body.output_names) + carry_in)


def _scan_jvp_full(primals, tangents, body, length, num_consts, num_carry, reverse, loop_tapes):
    """In forward mode, one scan of the body's JVP (`_scan_jvp_forward`). Traced to be
    transposed: the residuals kept (`_scan_jvp_residuals`) where possible; else the primal
    scan also stacks the carry entering every iteration (the tape); a second
    scan, linear in the tangents, reads it. With `loop_tapes` the carries go on a loop tape
    instead (`scan_record`, `loop_tape`), which can keep checkpoints only."""
    consts, carry, xs = _cut(primals, num_consts, num_carry)
    t_consts, t_carry, t_xs = _cut(tangents, num_consts, num_carry)
    attrs = {
        "body": body,
        "length": length,
        "num_consts": num_consts,
        "num_carry": num_carry,
        "reverse": reverse,
    }
    from ..transforms import is_linearizing

    if not is_linearizing():
        return _scan_jvp_forward(primals, tangents, body, num_consts, num_carry, attrs, loop_tapes)
    if not loop_tapes and not _recompute.get():
        done = _scan_jvp_residuals(primals, tangents, body, length, num_consts, num_carry, reverse)
        if done is not None:
            return done
    if loop_tapes:
        *outs, tape = bind("scan_record", *primals, **attrs)
        tangent_loop = functools.partial(
            _bind_loop_tape, tape=tape, length=length, num_tape=num_carry, reverse=reverse
        )
    else:
        stacked = bind(
            "scan", *primals, **{**attrs, "body": _with_carries_out(body, num_consts, num_carry)}
        )
        outs, carries = stacked[: len(body.outputs)], stacked[len(body.outputs) :]

        def tangent_loop(consts, init, xs, step, linear):
            return _bind_scan(consts, init, list(carries) + list(xs), step, length, reverse)

    t_outs = _tangents(body, consts, t_consts, carry, t_carry, xs, t_xs, tangent_loop, loop_tapes)
    return tuple(outs), t_outs


def _scan_jvp_forward(primals, tangents, body, num_consts, num_carry, attrs, loop_tapes):
    """Forward mode (as JAX's jvp of scan): one scan of the body's JVP, the tangent consts,
    carry and xs beside the primal ones. Nothing is kept per iteration."""
    from ..transforms import Program, jvp

    consts, carry, xs = _cut(primals, num_consts, num_carry)
    t_consts, t_carry, t_xs = _cut(tangents, num_consts, num_carry)
    which_consts = [i for i, t in enumerate(t_consts) if t is not None]
    diff_carry = [i for i, c in enumerate(carry) if differentiable(c.spec)]
    which_xs = [i for i, t in enumerate(t_xs) if t is not None]
    first_x = num_consts + num_carry
    wrt = which_consts + [num_consts + i for i in diff_carry] + [first_x + i for i in which_xs]
    both = jvp(Program(body), wrt, loop_tapes=loop_tapes).graph
    # both: (consts, carry, x, tangents in `wrt`) -> (carry, y, the tangent of each)
    n_in, n_out, n_tc, n_t = len(body.inputs), len(body.outputs), len(which_consts), len(diff_carry)
    ins, t_ins = _cut(both.inputs, n_in)
    outs, t_outs = _cut(both.output_names, n_out)
    step = Graph(
        ins[:num_consts]
        + t_ins[:n_tc]
        + ins[num_consts:first_x]
        + t_ins[n_tc : n_tc + n_t]
        + ins[first_x:]
        + t_ins[n_tc + n_t :],
        both.constants,
        both.nodes,
        outs[:num_carry] + [t_outs[i] for i in diff_carry] + outs[num_carry:] + t_outs[num_carry:],
        _known=both.avals,
    )
    init = [
        t_carry[i] if t_carry[i] is not None else gnp.zeros(carry[i].shape, carry[i].dtype)
        for i in diff_carry
    ]
    out = _bind_scan(
        consts + [t_consts[i] for i in which_consts],
        carry + init,
        xs + [t_xs[i] for i in which_xs],
        step,
        attrs["length"],
        attrs["reverse"],
    )
    n_ys = n_out - num_carry
    carry_out, t_carry_part, ys, t_ys = _cut(out, num_carry, n_t, n_ys)
    t_carry_out = [None] * num_carry
    for j, i in enumerate(diff_carry):
        t_carry_out[i] = t_carry_part[j]
    t_ys = [t if differentiable(t.spec) else None for t in t_ys]
    return tuple(carry_out + ys), tuple(t_carry_out + t_ys)


def _calls_custom_rules(graph: Graph) -> bool:
    """Whether `graph` (or a subgraph) calls a gs.custom_jvp or gs.custom_vjp function. Its
    linearization inlines the rule, so a primal part made from it would lose the call, and
    a derivative of the primal loop (second order) would not use the rule."""
    return any(
        node.op in ("custom_jvp_call", "custom_vjp_call")
        or any(isinstance(a, Graph) and _calls_custom_rules(a) for a in node.attrs.values())
        for node in graph.nodes
    )


def _scan_jvp_residuals(primals, tangents, body, length, num_consts, num_carry, reverse):
    """The JVP of a scan that keeps its body's residuals: the primal scan runs the primal part
    of the linearized body (`linearized_parts`) and stacks the residuals of every iteration
    like ys; the tangent scan runs the tangent part on them. None where a residual cannot be
    stacked (a loop tape of a loop inside the body), or where the body calls custom rules: the
    caller recomputes instead."""
    if _calls_custom_rules(body):
        return None
    consts, carry, xs = _cut(primals, num_consts, num_carry)
    t_consts, t_carry, t_xs = _cut(tangents, num_consts, num_carry)
    which_consts = [i for i, t in enumerate(t_consts) if t is not None]
    diff_carry = [i for i, c in enumerate(carry) if differentiable(c.spec)]
    which_xs = [i for i, t in enumerate(t_xs) if t is not None]
    first_x = num_consts + num_carry
    wrt = which_consts + [num_consts + i for i in diff_carry] + [first_x + i for i in which_xs]
    primal_body, tangent_part, reads, residuals = linearized_parts(
        body, tuple(wrt), range(num_carry)
    )
    if any(primal_body.avals[n].dtype == dtypes.TAPE for n in residuals):
        return None
    outs, per_iteration = _primal_scan(
        primal_body, residuals, reads, consts, carry, xs, length, reverse
    )

    # the tangent scan: (primal consts read, tangent consts; tangent carry; residuals and
    # primal xs read, tangent xs) -> (tangent carry, tangent ys)
    position = {n: j for j, n in enumerate(body.input_names)}
    const_reads = [j for j, n in enumerate(reads) if position.get(n, first_x) < num_consts]
    x_reads = [j for j in range(len(reads)) if j not in const_reads]
    n_reads, n_t = len(reads), len(which_consts) + len(diff_carry)
    step = Graph(
        [tangent_part.inputs[j] for j in const_reads]
        + list(tangent_part.inputs[n_reads : n_reads + n_t])  # tangent consts, carry
        + [tangent_part.inputs[j] for j in x_reads]
        + list(tangent_part.inputs[n_reads + n_t :]),  # tangent xs
        tangent_part.constants,
        tangent_part.nodes,
        [tangent_part.output_names[i] for i in diff_carry]
        + list(tangent_part.output_names[num_carry:]),
        _known=tangent_part.avals,
    )
    init = [
        t_carry[i] if t_carry[i] is not None else gnp.zeros(carry[i].shape, carry[i].dtype)
        for i in diff_carry
    ]
    t_outs = _bind_scan(
        [per_iteration[reads[j]] for j in const_reads] + [t_consts[i] for i in which_consts],
        init,
        [per_iteration[reads[j]] for j in x_reads] + [t_xs[i] for i in which_xs],
        step,
        length,
        reverse,
    )
    t_carry_out = [None] * num_carry
    for j, i in enumerate(diff_carry):
        t_carry_out[i] = t_outs[j]
    t_ys = [t if differentiable(t.spec) else None for t in t_outs[len(diff_carry) :]]
    return tuple(outs), tuple(t_carry_out + t_ys)


def reverse_residual_bytes(graph: Graph, wrt) -> int:
    """The bytes the scans of `graph` stack for a reverse pass along its inputs `wrt`, as
    `_scan_jvp_full` would keep them (residuals, or carries where it recomputes): known from
    the shapes before any plan is built. Scans nested in a scan's body are counted in its
    residuals; scans in other subgraphs (cond, checkpoint) are not counted."""
    active = {graph.input_names[i] for i in wrt}
    total = 0
    for node in graph.nodes:
        flags = [n in active for n in node.inputs]
        if not any(flags):
            continue
        active.update(n for n in node.outputs if differentiable(graph.avals[n]))
        if node.op == "scan":
            total += _scan_residual_bytes(node.attrs, flags)
    return total


def _scan_residual_bytes(attrs, active) -> int:
    body, length = attrs["body"], attrs["length"]
    num_consts, num_carry = attrs["num_consts"], attrs["num_carry"]
    carry_bytes = sum(p.spec.nbytes for p in body.inputs[num_consts : num_consts + num_carry])
    if _calls_custom_rules(body):
        return length * carry_bytes
    first_x = num_consts + num_carry
    diff_carry = [i for i in range(num_carry) if differentiable(body.inputs[num_consts + i].spec)]
    wrt = (
        [i for i in range(num_consts) if active[i]]
        + [num_consts + i for i in diff_carry]
        + [i for i in range(first_x, len(active)) if active[i]]
    )
    primal_body, _, reads, residuals = linearized_parts(body, tuple(wrt), range(num_carry))
    specs = [primal_body.avals[n] for n in residuals]
    if any(s.dtype == dtypes.TAPE for s in specs):
        return length * carry_bytes
    shared, stacked = _kept_carries(primal_body, residuals, reads, num_consts, num_carry)
    carries = [primal_body.inputs[num_consts + i].spec for i in stacked]
    return length * sum(s.nbytes for s in specs + carries) + sum(  # shared: one state more
        primal_body.inputs[num_consts + i].spec.nbytes for i in shared
    )


def _kept_carries(primal_body, residuals, reads, num_consts, num_carry):
    """The carries the tangent part reads that the primal scan keeps: {carry index: the
    residual that is that carry leaving the iteration} for those kept once with it (length +
    1 states), and the indices of the others (stacked entering every iteration)."""
    names = primal_body.input_names
    leaving = {primal_body.output_names[i]: i for i in range(num_carry)}
    read_carries = {i for i in range(num_carry) if names[num_consts + i] in reads}
    shared = {leaving[n]: n for n in residuals if leaving.get(n) in read_carries}
    return shared, sorted(read_carries - set(shared))


def _primal_scan(primal_body, residuals, reads, consts, carry, xs, length, reverse):
    """Binds the scan of `primal_body` (the body's outputs, then `residuals`), also stacking
    the carries in `reads`. Returns the body's outputs and {name in `reads`: what the
    tangent scan takes for it}: a const itself, xs, or a stack of one value per iteration.

    A carry read both entering and leaving an iteration (an RNN's state: h for the weights'
    tangent, tanh(...), the next h, for tanh's) is kept once: one array of the length + 1
    carries, read as two views shifted by one."""
    num_consts, num_carry = len(consts), len(carry)
    names = primal_body.input_names
    n_out = len(primal_body.outputs) - len(residuals)
    shared, stacked = _kept_carries(primal_body, residuals, reads, num_consts, num_carry)
    with_carries = Graph(
        primal_body.inputs,
        primal_body.constants,
        primal_body.nodes,
        list(primal_body.output_names) + [names[num_consts + i] for i in stacked],
        _known=primal_body.avals,
    )
    out = _bind_scan(consts, carry, xs, with_carries, length, reverse)
    per_iteration = dict(zip(names, consts + carry + xs))  # consts, xs: as they are
    per_iteration.update(zip(residuals, out[n_out:]))
    per_iteration.update(
        (names[num_consts + i], s) for i, s in zip(stacked, out[n_out + len(residuals) :])
    )
    for i, name in shared.items():
        first = gnp.reshape(carry[i], (1,) + carry[i].shape)
        both = [per_iteration[name], first] if reverse else [first, per_iteration[name]]
        whole = gnp.concatenate(both)  # the carry entering every iteration, then the last one
        entering, left = (whole[1:], whole[:-1]) if reverse else (whole[:-1], whole[1:])
        per_iteration[names[num_consts + i]], per_iteration[name] = entering, left
    return out[:n_out], per_iteration


def _scan_transpose(cts, *args, body, length, num_consts, num_carry, reverse, loop_tapes):
    consts, carry, xs = _cut(args, num_consts, num_carry)

    def backwards(consts, init, xs, step, linear):
        return _bind_scan(consts, init, xs, step, length, not reverse)

    ct_consts, ct_carry, ct_xs = _transpose_loop(
        cts, consts, carry, xs, body, 0, backwards, loop_tapes
    )
    return tuple(ct_consts + ct_carry + ct_xs)


def _batch_loop(args, batched, num_consts, num_carry, num_tape, body, bind_loop):
    """The batch rule of scan and loop_tape (`args` without the tape). A carry is batched if
    it starts batched or the body makes it so from batched values (found by batching the body
    until the carry's flags settle); the others, such as the primal carry of a forward-mode
    loop under a batch of tangents, stay as they are, and so do the ys that do not depend on
    a batched value. Scanned inputs move their batch axis behind the scanned one."""
    from ..transforms import Program, batch_partly

    size = next(a.shape[0] for a, b in zip(args, batched) if b)
    consts, carry, xs = _cut(list(args), num_consts, num_carry)
    b_consts, b_carry, b_xs = _cut(list(batched), num_consts, num_carry)
    while True:
        flags = b_consts + b_carry + [False] * num_tape + b_xs
        batched_body, out_flags = batch_partly(Program(body), flags, size)
        settled = [b or o for b, o in zip(b_carry, out_flags)]
        if settled == b_carry:
            break
        b_carry = settled
    carry = [
        gnp.broadcast_to(c, (size,) + c.shape) if b and not was else c
        for c, b, was in zip(carry, b_carry, batched[num_consts : num_consts + num_carry])
    ]
    xs = [gnp.moveaxis(x, 0, 1) if b else x for x, b in zip(xs, b_xs)]
    out = bind_loop(consts, carry, xs, _widened(batched_body.graph, b_carry, out_flags, size))
    # batched ys come out (length, size, ...)
    ys = [gnp.moveaxis(y, 1, 0) if b else y for y, b in zip(out[num_carry:], out_flags[num_carry:])]
    return PartlyBatched(tuple(out[:num_carry]) + tuple(ys), tuple(b_carry + out_flags[num_carry:]))


def _widened(graph: Graph, carry_flags, out_flags, size) -> Graph:
    """The batched body, giving the batch axis to the carries batched entering an iteration
    but not leaving it (a carry the body sets from unbatched values only)."""
    from ..transforms import inline

    missing = [i for i, b in enumerate(carry_flags) if b and not out_flags[i]]
    if not missing:
        return graph

    def body(*args):
        out = list(inline(graph, args))
        for i in missing:
            out[i] = gnp.broadcast_to(out[i], (size,) + out[i].shape)
        return tuple(out)

    return derived_body(body, [p.spec for p in graph.inputs])


def _scan_batch(args, batched, body, length, num_consts, num_carry, reverse):
    def bind_loop(consts, carry, xs, body):
        return _bind_scan(consts, carry, xs, body, length, reverse)

    return _batch_loop(args, batched, num_consts, num_carry, 0, body, bind_loop)


def _scan_retype(args, body, length, num_consts, num_carry, reverse):
    consts, carry, xs = _cut(args, num_consts, num_carry)
    const_specs = [c.spec for c in consts]
    x_specs = [Spec(x.shape[1:], x.dtype) for x in xs]
    carry_dtypes, _ = loop_retype(
        [c.dtype.name for c in carry],
        lambda ds: retyped(
            body, const_specs + [Spec(c.shape, d) for c, d in zip(carry, ds)] + x_specs
        ),
    )
    carry = [gnp.astype(c, d) for c, d in zip(carry, carry_dtypes)]
    specs = const_specs + [c.spec for c in carry] + x_specs
    first = retyped(body, specs)
    out_dtypes = carry_dtypes + [p.spec.dtype for p in first.outputs[num_carry:]]
    return _bind_scan(consts, carry, xs, retyped(body, specs, out_dtypes), length, reverse)


primitive(
    "scan",
    impl=_scan_impl,
    shape=_scan_shape,
    arity=(0, None),
    attrs=SCAN_ATTRS,
    multiple_results=True,
    jvp_full=_scan_jvp_full,
    transpose=_scan_transpose,
    batch=_scan_batch,
    retype=_scan_retype,
    doc=OpDoc(
        "a loop over the leading axis of xs carrying state (gs.scan, gs.fori_loop with "
        "Python-int bounds): carry, y = body(consts, carry, xs[i]). The front end passes the "
        "values the function reads from the enclosing graph as consts",
        ("*consts", "*init", "*xs"),
        SCAN_RESULT,
        SCAN_DOCS,
    ),
)


# ---- while_loop ------------------------------------------------------------------------------
# inputs: cond consts, body consts, initial carry; cond: (cond consts, carry) -> bool scalar;
# body: (body consts, carry) -> carry. Stops with LimitError past max_iterations.

WHILE_ATTRS = {
    "cond": "graph",
    "body": "graph",
    "num_cond_consts": "int",
    "num_body_consts": "int",
    "max_iterations": "int",
}
WHILE_DOCS = {
    "cond": "subgraph (*cond_consts, *carry) -> (keep_going): one bool scalar output",
    "body": "subgraph (*body_consts, *carry) -> (*new_carry): new_carry has exactly the "
    "carry's shapes and dtypes",
    "num_cond_consts": "how many operands are cond_consts, >= 0",
    "num_body_consts": "how many operands after those are body_consts, >= 0; the rest are "
    "the initial carry",
    "max_iterations": "the most iterations allowed, >= 0; one more fails the call with "
    "LimitError (RESOURCE_EXHAUSTED). gs.while_loop's default is 1000000",
}


def while_loop(cond_fun, body_fun, init_val, *, max_iterations=DEFAULT_MAX_ITERATIONS):
    """while cond_fun(val): val = body_fun(val); return val. Past `max_iterations` the call
    fails with gs.LimitError."""
    leaves, treedef = leaves_as_arrays(init_val)
    if not in_trace(leaves):
        val = init_val
        while cond_fun(val):
            val = body_fun(val)
        return val
    specs = [spec_of(x) for x in leaves]
    cond_graph, cond_cap, _ = trace_body(lambda *xs: cond_fun(unflatten(treedef, xs)), specs)
    body_graph, body_cap, out_def = trace_body(lambda *xs: body_fun(unflatten(treedef, xs)), specs)
    if out_def != treedef:
        raise TypeError("while_loop: body_fun must return the structure it was given")
    out = bind(
        "while_loop",
        *cond_cap,
        *body_cap,
        *leaves,
        cond=captures_first(cond_graph, len(leaves)),
        body=captures_first(body_graph, len(leaves)),
        num_cond_consts=len(cond_cap),
        num_body_consts=len(body_cap),
        max_iterations=int(max_iterations),
    )
    return unflatten(treedef, out)


def fori_loop(lower, upper, body_fun, init_val):
    """for i in range(lower, upper): val = body_fun(i, val). With Python-int bounds it is a
    scan (so reverse mode works); with traced bounds, a while_loop."""
    if isinstance(lower, (int, np.integer)) and isinstance(upper, (int, np.integer)):

        def step(carry, _):
            i, val = carry
            return (i + 1, body_fun(i, val)), ()

        (_, val), _ = scan(
            step,
            (np.asarray(lower, np.int64), init_val),
            None,
            length=max(int(upper) - int(lower), 0),
        )
        return val

    def keep_going(carry):
        return carry[0] < carry[1]

    def step(carry):
        i, stop, val = carry
        return i + 1, stop, body_fun(i, val)

    _, _, val = while_loop(
        keep_going, step, (gnp.astype(lower, "int64"), gnp.astype(upper, "int64"), init_val)
    )
    return val


def _while_shape(*args, cond, body, num_cond_consts, num_body_consts, max_iterations):
    if min(
        num_cond_consts, num_body_consts, max_iterations
    ) < 0 or num_cond_consts + num_body_consts > len(args):
        raise ShapeError("bad num_cond_consts, num_body_consts or max_iterations")
    cc, bc, carry = _cut(args, num_cond_consts, num_body_consts)
    check_signature(cond, cc + carry, "cond")
    check_signature(body, bc + carry, "body")
    if [p.spec for p in cond.outputs] != [Spec((), "bool")]:
        raise ShapeError("cond must give one bool scalar")
    if [p.spec for p in body.outputs] != carry:
        raise ShapeError(
            f"the body turns carry {carry} into {[p.spec for p in body.outputs]}: a "
            "carry keeps its shape and dtype across iterations"
        )
    return tuple(carry)


def _while_impl(*args, cond, body, num_cond_consts, num_body_consts, max_iterations):
    cc, bc, carry = _cut(args, num_cond_consts, num_body_consts)
    return _run_while(cond, body, cc, bc, carry, max_iterations)


def _while_jvp_full(
    primals, tangents, cond, body, num_cond_consts, num_body_consts, max_iterations, loop_tapes
):
    """The primal loop records on a loop tape (its trip count is known only when it has run)
    what a loop_tape linear in the tangents reads: the body's residuals of every iteration
    (`_while_jvp_residuals`), or, within `recomputing()` or where they cannot be kept, the
    carry entering every iteration, from which the tangent loop evaluates the body again."""
    from ..transforms import is_linearizing

    _cc, bc, carry = _cut(primals, num_cond_consts, num_body_consts)
    _, t_bc, t_carry = _cut(tangents, num_cond_consts, num_body_consts)
    if not is_linearizing():
        return _while_jvp_forward(primals, tangents, cond, body, num_cond_consts, max_iterations)
    if not _recompute.get():
        done = _while_jvp_residuals(primals, tangents, cond, body, num_cond_consts, max_iterations)
        if done is not None:
            return done
    *outs, tape = bind(
        "while_record",
        *primals,
        cond=cond,
        body=body,
        num_cond_consts=num_cond_consts,
        num_body_consts=num_body_consts,
        max_iterations=max_iterations,
    )
    tangent_loop = functools.partial(
        _bind_loop_tape, tape=tape, length=-1, num_tape=len(carry), reverse=False
    )
    t_outs = _tangents(body, bc, t_bc, carry, t_carry, [], [], tangent_loop, loop_tapes)
    return tuple(outs), t_outs


def _while_jvp_forward(primals, tangents, cond, body, num_cond_consts, max_iterations):
    """Forward mode: one while_loop of the body's JVP, the tangent consts and carry beside
    the primal ones; cond reads the primal carry only. Nothing is recorded."""
    from ..transforms import Program, jvp

    num_bc = len(body.inputs) - len(body.outputs)
    cc, bc, carry = _cut(primals, num_cond_consts, num_bc)
    _, t_bc, t_carry = _cut(tangents, num_cond_consts, num_bc)
    which_consts = [i for i, t in enumerate(t_bc) if t is not None]
    diff_carry = [i for i, c in enumerate(carry) if differentiable(c.spec)]
    n_tc = len(which_consts)
    both = jvp(Program(body), which_consts + [num_bc + i for i in diff_carry]).graph
    # both: (body consts, carry, tangents) -> (carry, one tangent per carry)
    ins, t_ins = _cut(both.inputs, len(body.inputs))
    outs, t_outs = _cut(both.output_names, len(carry))
    step = Graph(
        ins[:num_bc] + t_ins[:n_tc] + ins[num_bc:] + t_ins[n_tc:],
        both.constants,
        both.nodes,
        outs + [t_outs[i] for i in diff_carry],
        _known=both.avals,
    )
    init = [
        t_carry[i] if t_carry[i] is not None else gnp.zeros(carry[i].shape, carry[i].dtype)
        for i in diff_carry
    ]
    out = bind(
        "while_loop",
        *cc,
        *bc,
        *[t_bc[i] for i in which_consts],
        *carry,
        *init,
        cond=with_unused_inputs(cond, len(cond.inputs), after=[p.spec for p in init]),
        body=step,
        num_cond_consts=num_cond_consts,
        num_body_consts=num_bc + n_tc,
        max_iterations=max_iterations,
    )
    t_out = [None] * len(carry)
    for j, i in enumerate(diff_carry):
        t_out[i] = out[len(carry) + j]
    return tuple(out[: len(carry)]), tuple(t_out)


def _while_jvp_residuals(primals, tangents, cond, body, num_cond_consts, max_iterations):
    """The primal loop (while_keep) runs the primal part of the linearized body and records,
    per iteration, the carry it gives and the values the tangent part reads (residuals, and
    the carries entering it that are read), one tape entry; the tangent loop runs the tangent
    part on the entries, its transpose reads them backwards. Under a tape budget the tape
    keeps every stride-th entry and recomputes the others from the carry of the one before.
    None where the residuals cannot be kept (a loop tape inside the body, custom rules)."""
    if _calls_custom_rules(body):
        return None
    _cc, bc, carry = _cut(primals, num_cond_consts, len(body.inputs) - len(body.outputs))
    _, t_bc, t_carry = _cut(tangents, num_cond_consts, len(bc))
    num_bc, num_carry = len(bc), len(carry)
    which_consts = [i for i, t in enumerate(t_bc) if t is not None]
    diff_carry = [i for i, c in enumerate(carry) if differentiable(c.spec)]
    wrt = tuple(which_consts + [num_bc + i for i in diff_carry])
    primal_body, tangent_part, reads, _ = linearized_parts(body, wrt, range(num_carry))
    if any(primal_body.avals[n].dtype == dtypes.TAPE for n in reads):
        return None
    const_names = set(primal_body.input_names[:num_bc])
    carry_out = list(primal_body.output_names[:num_carry])
    read = [n for n in reads if n not in const_names]
    entry = carry_out + [n for n in read if n not in carry_out]
    recording = Graph(
        primal_body.inputs,
        primal_body.constants,
        primal_body.nodes,
        entry,
        _known=primal_body.avals,
    )
    *outs, tape = bind(
        "while_keep",
        *primals,
        cond=cond,
        body=recording,
        num_cond_consts=num_cond_consts,
        num_body_consts=num_bc,
        max_iterations=max_iterations,
    )

    # the tangent loop: (primal consts read, tangent consts; tangent carry; the tape entry)
    const_reads = [j for j, n in enumerate(reads) if n in const_names]
    n_reads, n_tc, n_t = len(reads), len(which_consts), len(diff_carry)
    entry_ports = [
        tangent_part.inputs[reads.index(n)]
        if n in read
        else Port(f"unused:{j}", primal_body.avals[n])
        for j, n in enumerate(entry)
    ]
    step = Graph(
        [tangent_part.inputs[j] for j in const_reads]
        + list(tangent_part.inputs[n_reads : n_reads + n_tc + n_t])
        + entry_ports,
        tangent_part.constants,
        tangent_part.nodes,
        [tangent_part.output_names[i] for i in diff_carry],
        _known=dict(tangent_part.avals) | {p.name: p.spec for p in entry_ports},
    )
    init = [
        t_carry[i] if t_carry[i] is not None else gnp.zeros(carry[i].shape, carry[i].dtype)
        for i in diff_carry
    ]
    n_cr, const_values = len(const_reads), dict(zip(primal_body.input_names, bc))
    t_outs = _bind_loop_tape(
        [const_values[reads[j]] for j in const_reads] + [t_bc[i] for i in which_consts],
        init,
        [],
        step,
        list(range(n_cr, n_cr + n_tc + n_t)),
        tape=tape,
        length=-1,
        num_tape=len(entry),
        reverse=False,
    )
    t_carry_out = [None] * num_carry
    for j, i in enumerate(diff_carry):
        t_carry_out[i] = t_outs[j]
    return tuple(outs), tuple(t_carry_out)


def _while_batch(args, batched, cond, body, num_cond_consts, num_body_consts, max_iterations):
    """Every carry is batched; members whose condition has turned false keep their carry
    while the others go on (the loop runs while any member continues)."""
    from ..transforms import Program, batch, inline

    size = next(a.shape[0] for a, b in zip(args, batched) if b)
    cc, bc, carry = _cut(list(args), num_cond_consts, num_body_consts)
    f_cc, f_bc, f_carry = _cut(list(batched), num_cond_consts, num_body_consts)
    carry = [c if b else gnp.broadcast_to(c, (size,) + c.shape) for c, b in zip(carry, f_carry)]
    b_cond = batch(Program(cond), f_cc + [True] * len(carry), size).graph
    b_body = batch(Program(body), f_bc + [True] * len(carry), size).graph
    n_cc, n_bc = len(cc), len(bc)

    def any_cond(*a):
        return (gnp.max(inline(b_cond, list(a))[0]),)

    def masked_body(*a):
        c_consts, b_consts, c = _cut(a, n_cc, n_bc)
        going = inline(b_cond, list(c_consts) + list(c))[0]
        new = inline(b_body, list(b_consts) + list(c))
        return tuple(
            gnp.where(gnp.reshape(going, (size,) + (1,) * (n.ndim - 1)), n, old)
            for n, old in zip(new, c)
        )

    carry_specs = [c.spec for c in carry]
    return bind(
        "while_loop",
        *cc,
        *cc,
        *bc,
        *carry,
        cond=derived_body(any_cond, [c.spec for c in cc] + carry_specs),
        body=derived_body(masked_body, [c.spec for c in cc] + [c.spec for c in bc] + carry_specs),
        num_cond_consts=n_cc,
        num_body_consts=n_cc + n_bc,
        max_iterations=max_iterations,
    )


def _while_retype(args, cond, body, num_cond_consts, num_body_consts, max_iterations):
    cc, bc, carry = _cut(args, num_cond_consts, num_body_consts)
    bc_specs = [c.spec for c in bc]
    carry_dtypes, _ = loop_retype(
        [c.dtype.name for c in carry],
        lambda ds: retyped(body, bc_specs + [Spec(c.shape, d) for c, d in zip(carry, ds)]),
    )
    carry = [gnp.astype(c, d) for c, d in zip(carry, carry_dtypes)]
    carry_specs = [c.spec for c in carry]
    return bind(
        "while_loop",
        *cc,
        *bc,
        *carry,
        cond=retyped(cond, [c.spec for c in cc] + carry_specs),
        body=retyped(body, bc_specs + carry_specs, carry_dtypes),
        num_cond_consts=num_cond_consts,
        num_body_consts=num_body_consts,
        max_iterations=max_iterations,
    )


primitive(
    "while_loop",
    impl=_while_impl,
    shape=_while_shape,
    arity=(0, None),
    attrs=WHILE_ATTRS,
    multiple_results=True,
    jvp_full=_while_jvp_full,
    batch=_while_batch,
    retype=_while_retype,
    doc=OpDoc(
        "while cond(cond_consts, carry): carry = body(body_consts, carry) (gs.while_loop, "
        "gs.fori_loop with traced bounds). The front end passes the values cond reads from "
        "the enclosing graph as cond_consts, those body reads as body_consts",
        ("*cond_consts", "*body_consts", "*init"),
        "the final carry",
        WHILE_DOCS,
    ),
)


# ---- loop tapes: loops that record their carries, and loops that read them back -------------
# A recorded loop gives, besides its results, a tape (engine/tape.py) of the carry entering
# every iteration it ran; `loop_tape` runs a body once per recorded iteration, in the order
# run or backwards, reading that carry. while_loop is differentiated in reverse mode this way
# (its trip count is known only when it has run), and so is scan under a tape budget (the tape
# then keeps checkpoints and recomputes the rest).


def _no_second_order(*args, **kwargs):
    raise GraphError(
        "derivatives of a loop's derivative (second order) through a while_loop, "
        "or through a scan under a tape budget, are not supported; use a scan "
        "without max_tape_bytes for Hessians",
        "loop tape",
    )


def _scan_record_impl(*args, body, length, num_consts, num_carry, reverse):
    consts, carry, xs = _cut(args, num_consts, num_carry)

    def advance(k, c):  # iteration k again, for the tape to recompute a carry it dropped
        i = length - 1 - k if reverse else k
        return tuple(run_body(body, consts + list(c) + [x[i] for x in xs])[:num_carry])

    tape = _new_tape(advance, body, carry)
    out = _run_scan(body, consts, carry, xs, num_carry, length, reverse, record=tape.record)
    return out + (tape,)


primitive(
    "scan_record",
    impl=_scan_record_impl,
    arity=(0, None),
    attrs=SCAN_ATTRS,
    shape=lambda *a, **k: _scan_shape(*a, **k) + (Spec((), dtypes.TAPE),),
    multiple_results=True,
    jvp=_no_second_order,
    internal=True,
    doc=OpDoc(
        "scan that also records the carry entering every iteration on a loop tape (reverse "
        "mode under a tape budget)",
        ("*consts", "*init", "*xs"),
        "as scan, then the loop tape",
        SCAN_DOCS,
    ),
)


def _while_record_impl(*args, cond, body, num_cond_consts, num_body_consts, max_iterations):
    cc, bc, carry = _cut(args, num_cond_consts, num_body_consts)
    tape = _new_tape(lambda k, c: tuple(run_body(body, bc + list(c))), body, carry)
    return _run_while(cond, body, cc, bc, carry, max_iterations, tape.record) + (tape,)


primitive(
    "while_record",
    impl=_while_record_impl,
    arity=(0, None),
    attrs=WHILE_ATTRS,
    shape=lambda *a, **k: _while_shape(*a, **k) + (Spec((), dtypes.TAPE),),
    multiple_results=True,
    jvp=_no_second_order,
    internal=True,
    doc=OpDoc(
        "while_loop that also records the carry entering every iteration on a loop tape "
        "(reverse mode through a while loop whose body's residuals are not kept)",
        ("*cond_consts", "*body_consts", "*init"),
        "as while_loop, then the loop tape",
        WHILE_DOCS,
    ),
)


def _while_keep_shape(*args, cond, body, num_cond_consts, num_body_consts, max_iterations):
    cc, bc, carry = _cut(args, num_cond_consts, num_body_consts)
    check_signature(cond, cc + carry, "cond")
    check_signature(body, bc + carry, "body")
    if [p.spec for p in body.outputs[: len(carry)]] != carry:
        raise ShapeError("the body's first outputs must be the next carry")
    return tuple(carry) + (Spec((), dtypes.TAPE),)


def _while_keep_impl(*args, cond, body, num_cond_consts, num_body_consts, max_iterations):
    cc, bc, carry = _cut(args, num_cond_consts, num_body_consts)
    n = len(carry)

    def advance(k, entry):  # entry k + 1, from the carry iteration k gave
        return tuple(run_body(body, bc + list(entry[:n])))

    entry_bytes = sum(p.spec.nbytes for p in body.outputs)
    tape = LoopTape(advance, entry_bytes, len(body_plan(body).steps))
    return _run_while(cond, body, cc, bc, carry, max_iterations, keep=tape.record) + (tape,)


primitive(
    "while_keep",
    impl=_while_keep_impl,
    arity=(0, None),
    attrs=WHILE_ATTRS,
    shape=_while_keep_shape,
    multiple_results=True,
    jvp=_no_second_order,
    internal=True,
    doc=OpDoc(
        "while_loop whose body gives the next carry and then what the derivative loops read "
        "of the iteration; records all of it per iteration on a loop tape (reverse mode "
        "through a while loop, keeping the body's residuals)",
        ("*cond_consts", "*body_consts", "*init"),
        "as while_loop, then the loop tape",
        {
            **WHILE_DOCS,
            "body": "subgraph (*body_consts, *carry) -> (*new_carry, *kept): the values kept "
            "are recorded on the tape with the new carry",
        },
    ),
)

# inputs: consts, initial carry, xs, the tape; body: (consts, carry, recorded carry, x) ->
# (carry, y). `length` is the recorded loop's (-1 for a while loop: no xs, no ys).
# `linear`: the inputs the loop is linear in (its carry, tangent consts and xs); a JVP along
# those only is the same loop on the tangents (reverse mode of an enclosing loop needs it).
LOOP_TAPE_ATTRS = {
    "body": "graph",
    "length": "int",
    "num_consts": "int",
    "num_carry": "int",
    "num_tape": "int",
    "backward": "bool",
    "reverse": "bool",
    "linear": "ints",
}


def _bind_loop_tape(
    consts, carry, xs, body, linear, *, tape, length, num_tape, reverse, backward=False
):
    return bind(
        "loop_tape",
        *consts,
        *carry,
        *xs,
        tape,
        body=body,
        length=length,
        num_consts=len(consts),
        num_carry=len(carry),
        num_tape=num_tape,
        backward=backward,
        reverse=reverse,
        linear=tuple(linear),
    )


def _loop_tape_shape(
    *args, body, length, num_consts, num_carry, num_tape, backward, reverse, linear
):
    if not args or args[-1].dtype != dtypes.TAPE:
        raise ShapeError("the last input of loop_tape must be a loop tape")
    if any(not 0 <= i < len(args) - 1 for i in linear):
        raise ShapeError(f"linear positions {linear} out of range")
    consts, carry, xs = _cut(args[:-1], num_consts, num_carry)
    if length < 0 and (xs or len(body.outputs) > num_carry):
        raise ShapeError("a loop tape of unknown length cannot scan inputs or stack outputs")
    recorded = body.inputs[num_consts + num_carry : num_consts + num_carry + num_tape]
    return _loop_shape(consts, carry, [p.spec for p in recorded], xs, body, length)


def _loop_tape_impl(
    *args, body, length, num_consts, num_carry, num_tape, backward, reverse, linear
):
    (consts, carry, xs), tape = _cut(args[:-1], num_consts, num_carry), args[-1]
    steps = tape.backward() if backward else tape.forward()
    return _run_scan(body, consts, carry, xs, num_carry, tape.length, reverse, steps=steps)


def _loop_tape_transpose(
    cts,
    *args,
    body,
    length,
    num_consts,
    num_carry,
    num_tape,
    backward,
    reverse,
    linear,
    loop_tapes,
):
    (consts, carry, xs), tape = _cut(args[:-1], num_consts, num_carry), args[-1]
    backwards = functools.partial(
        _bind_loop_tape,
        tape=tape,
        length=length,
        num_tape=num_tape,
        backward=not backward,
        reverse=reverse,
    )
    ct_consts, ct_carry, ct_xs = _transpose_loop(
        cts, consts, carry, xs, body, num_tape, backwards, loop_tapes
    )
    return tuple(ct_consts + ct_carry + ct_xs) + (None,)


def _loop_tape_batch(
    args, batched, body, length, num_consts, num_carry, num_tape, backward, reverse, linear
):
    bind_loop = functools.partial(
        _bind_loop_tape,
        linear=linear,
        tape=args[-1],
        length=length,
        num_tape=num_tape,
        backward=backward,
        reverse=reverse,
    )
    return _batch_loop(args[:-1], batched[:-1], num_consts, num_carry, num_tape, body, bind_loop)


def _loop_tape_jvp(primals, tangents, outs, *, linear, loop_tapes, **attrs):
    """Along its linear inputs only, a loop_tape's JVP is the same loop on the tangents (zeros
    for linear inputs without one). A tangent of the tape or of a primal input is second order."""
    if any(t is not None and i not in linear for i, t in enumerate(tangents)):
        _no_second_order()
    args = [
        (t if t is not None else gnp.zeros(p.shape, p.dtype)) if i in linear else p
        for i, (p, t) in enumerate(zip(primals, tangents))
    ]
    out = bind("loop_tape", *args, linear=linear, **attrs)
    return tuple(o if differentiable(o.spec) else None for o in out)


primitive(
    "loop_tape",
    impl=_loop_tape_impl,
    shape=_loop_tape_shape,
    arity=(1, None),
    attrs=LOOP_TAPE_ATTRS,
    multiple_results=True,
    jvp=_loop_tape_jvp,
    transpose=_loop_tape_transpose,
    batch=_loop_tape_batch,
    internal=True,
    doc=OpDoc(
        "a loop run once per iteration a loop tape recorded, forwards or backwards, its body "
        "reading the carry recorded for that iteration (the derivative loops of while_loop, "
        "and of scan under a tape budget)",
        ("*consts", "*init", "*xs", "tape"),
        "as scan",
        {
            "body": "subgraph (*consts, *carry, *recorded_carry, *x) -> (*new_carry, *y)",
            "length": "the recorded loop's length; -1 for a while loop (then no xs and no y)",
            "num_consts": SCAN_DOCS["num_consts"],
            "num_carry": SCAN_DOCS["num_carry"],
            "num_tape": "how many recorded carry values the body reads",
            "backward": "read the tape from the last iteration to the first",
            "reverse": SCAN_DOCS["reverse"],
            "linear": "the operand positions the loop is linear in",
        },
    ),
)


# ---- the derivative loops, for every loop kind ---------------------------------------------


def _tangents(body, consts, t_consts, carry, t_carry, xs, t_xs, tangent_loop, loop_tapes):
    """The tangents of a loop's outputs, from a second loop linear in the tangents whose body
    reads the primal carry of each iteration. `tangent_loop(consts, init, xs, step, linear)`
    binds that loop: a scan over the stacked carries, or a loop_tape over a recorded tape;
    either way the step gets (consts, tangent consts, tangent carry, primal carry, x, tangent x).
    """
    from ..transforms import inline

    num_consts, num_carry = len(consts), len(carry)
    which_consts = [i for i, t in enumerate(t_consts) if t is not None]
    diff_carry = [i for i, c in enumerate(carry) if differentiable(c.spec)]
    which_xs = [i for i, t in enumerate(t_xs) if t is not None]
    tangent_graph = tangent_body(
        body,
        which_consts
        + [num_consts + i for i in diff_carry]
        + [num_consts + num_carry + i for i in which_xs],
        loop_tapes,
    )
    n_c, n_tc, n_t, n_x = num_consts, len(which_consts), len(diff_carry), len(xs)

    def step(*a):
        pc, tc, tcarry, p_carry, p_x, tx = _cut(a, n_c, n_tc, n_t, num_carry, n_x)
        t_out = inline(tangent_graph, pc + p_carry + p_x + tc + tcarry + tx)
        return tuple(t_out[i] for i in diff_carry) + t_out[num_carry:]

    specs = (
        [c.spec for c in consts]
        + [t_consts[i].spec for i in which_consts]
        + [carry[i].spec for i in diff_carry]
        + [c.spec for c in carry]
        + [Spec(x.shape[1:], x.dtype) for x in xs]
        + [Spec(xs[i].shape[1:], xs[i].dtype) for i in which_xs]
    )
    init = [
        t_carry[i] if t_carry[i] is not None else gnp.zeros(carry[i].shape, carry[i].dtype)
        for i in diff_carry
    ]
    # the tangent loop is linear in the tangent consts, its carry and the tangent xs
    first_tx = n_c + n_tc + n_t + n_x
    linear = list(range(n_c, n_c + n_tc + n_t)) + list(range(first_tx, first_tx + len(which_xs)))
    t_outs = tangent_loop(
        list(consts) + [t_consts[i] for i in which_consts],
        init,
        list(xs) + [t_xs[i] for i in which_xs],
        derived_body(step, specs),
        linear,
    )
    t_carry_out = [None] * num_carry
    for j, i in enumerate(diff_carry):
        t_carry_out[i] = t_outs[j]
    t_ys = [t if differentiable(t.spec) else None for t in t_outs[n_t:]]
    return tuple(t_carry_out + t_ys)


def _transpose_loop(cts, consts, carry, xs, body, num_tape, backwards, loop_tapes):
    """The transpose of a loop (scan, or loop_tape reading `num_tape` recorded carries) that is
    linear in its carry, some consts and some xs: it runs the other way, the carry's cotangent
    flowing from the last iteration to the first, the linear consts' cotangents accumulating in
    extra carries, the linear xs' cotangents stacked. Every carry of such a loop is linear; one
    that starts from a constant zero (a symbolically zero tangent) just gets no cotangent.

    `backwards(consts, init, xs, step, linear)` binds the reversed loop. Returns the
    cotangents of consts, carry and xs, in that order (None where not linear)."""
    from ..transforms import inline

    num_consts, num_carry = len(consts), len(carry)
    lin_consts = [i for i, c in enumerate(consts) if isinstance(c, Linear)]
    lin_xs = [i for i, x in enumerate(xs) if isinstance(x, Linear)]
    p_consts = [c for c in consts if not isinstance(c, Linear)]
    p_xs = [x for x in xs if not isinstance(x, Linear)]
    first_x = num_consts + num_carry + num_tape
    linear = lin_consts + [num_consts + i for i in range(num_carry)] + [first_x + i for i in lin_xs]
    transposed = transposed_body(body, linear, loop_tapes)
    ct_carry, ct_ys = list(cts[:num_carry]), list(cts[num_carry:])
    diff_ys = [j for j, p in enumerate(body.outputs[num_carry:]) if differentiable(p.spec)]
    tape_specs = [p.spec for p in body.inputs[num_consts + num_carry : first_x]]
    n_pc, n_acc = len(p_consts), len(lin_consts)

    def step(*a):
        pc, ctc, acc, tc, px, cty = _cut(a, n_pc, num_carry, n_acc, num_tape, len(p_xs))
        ct_lin_consts, ct_carry_in, ct_xs = _cut(
            inline(transposed, pc + tc + px + ctc + cty), n_acc, num_carry
        )
        return tuple(ct_carry_in + [s + c for s, c in zip(acc, ct_lin_consts)] + ct_xs)

    specs = (
        [c.spec for c in p_consts]
        + [c.spec for c in carry]
        + [consts[i].spec for i in lin_consts]
        + tape_specs
        + [Spec(x.shape[1:], x.dtype) for x in p_xs]
        + [Spec(ct_ys[j].shape[1:], ct_ys[j].dtype) for j in diff_ys]
    )
    init = ct_carry + [gnp.zeros(consts[i].shape, consts[i].dtype) for i in lin_consts]
    # the reversed loop is linear in its carry (cotangents and accumulators) and the ys' cotangents
    n_init = num_carry + n_acc
    linear = list(range(n_pc, n_pc + n_init)) + [
        n_pc + n_init + len(p_xs) + j for j in range(len(diff_ys))
    ]
    back = backwards(
        p_consts, init, p_xs + [ct_ys[j] for j in diff_ys], derived_body(step, specs), linear
    )
    ct_consts, ct_xs = [None] * num_consts, [None] * len(xs)
    ct_init = [back[j] if isinstance(carry[j], Linear) else None for j in range(num_carry)]
    for j, i in enumerate(lin_consts):
        ct_consts[i] = back[num_carry + j]
    for j, i in enumerate(lin_xs):
        ct_xs[i] = back[num_carry + n_acc + j]
    return ct_consts, ct_init, ct_xs
