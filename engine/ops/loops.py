"""Loops: `scan` and `while_loop`, and the loop tapes that differentiate them under a tape
budget or with a trip count known only at run time (`scan_record`, `while_record`,
`loop_tape`; the runtime side is engine/tape.py).

As for cond (control.py), a loop's JVP is a second loop linear in the tangents whose body reads
the primal carry of each iteration, and its transpose a loop running the other way. What the
reverse pass keeps is the carry entering every iteration: stacked by the primal scan, or
recorded on a loop tape (which, under a budget, keeps checkpoints only and recomputes the rest).
"""

from __future__ import annotations

import threading

import numpy as np

from .. import dtypes
from .. import numpy as gnp
from ..graph import Graph, Spec
from ..primitive import Linear, ShapeError, primitive
from ..tracing import bind
from .bodies import (
    body_plan,
    check_signature,
    differentiable,
    loop_retype,
    retyped,
    run_body,
    tangent_body,
    trace_closed,
    transposed_body,
)

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


def _split(seq, num_consts, num_carry):
    return (
        list(seq[:num_consts]),
        list(seq[num_consts : num_consts + num_carry]),
        list(seq[num_consts + num_carry :]),
    )


def _scan_shape(*args, body, length, num_consts, num_carry, reverse):
    if length < 0 or num_consts < 0 or num_carry < 0 or num_consts + num_carry > len(args):
        raise ShapeError("bad length, num_consts or num_carry")
    consts, carry, xs = _split(args, num_consts, num_carry)
    for x in xs:
        if not x.shape or x.shape[0] != length:
            raise ShapeError(f"scanned input of shape {x.shape} has no leading axis of {length}")
    check_signature(body, consts + carry + [Spec(x.shape[1:], x.dtype) for x in xs], "body")
    outs = [p.spec for p in body.outputs]
    if outs[:num_carry] != carry:
        raise ShapeError(
            f"the body turns carry {carry} into {outs[:num_carry]}: a carry keeps "
            "its shape and dtype across iterations"
        )
    return tuple(carry + [Spec((length,) + s.shape, s.dtype) for s in outs[num_carry:]])


def _scan_impl(*args, body, length, num_consts, num_carry, reverse):
    consts, carry, xs = _split(args, num_consts, num_carry)
    y_specs = [p.spec for p in body.outputs[num_carry:]]
    ys = [np.empty((length,) + s.shape, s.dtype) for s in y_specs]
    for i in range(length - 1, -1, -1) if reverse else range(length):
        out = run_body(body, consts + carry + [x[i] for x in xs])
        carry = out[:num_carry]
        for buffer, y in zip(ys, out[num_carry:]):
            buffer[i] = y
    return tuple(carry) + tuple(ys)


def _with_carries_out(body: Graph, num_consts, num_carry) -> Graph:
    """The body, also giving back the carry it received (stacked by scan: the tape)."""
    carry_in = [p.name for p in body.inputs[num_consts : num_consts + num_carry]]
    return Graph(body.inputs, body.constants, body.nodes, list(body.output_names) + carry_in)


def _scan_jvp_full(primals, tangents, body, length, num_consts, num_carry, reverse):
    """The primal scan also stacks the carry entering every iteration (the tape); a second
    scan, linear in the tangents, reads it. Under a tape budget the carries go on a loop tape
    instead (`scan_record`, `loop_tape`), which can keep checkpoints only."""
    consts, carry, xs = _split(primals, num_consts, num_carry)
    t_consts, t_carry, t_xs = _split(tangents, num_consts, num_carry)
    if getattr(_mode, "on", False):
        recorded = bind(
            "scan_record",
            *primals,
            body=body,
            length=length,
            num_consts=num_consts,
            num_carry=num_carry,
            reverse=reverse,
        )
        outs, tape = recorded[:-1], recorded[-1]

        def tangent_loop(consts_, init, xs_, step, linear):
            return bind(
                "loop_tape",
                *consts_,
                *init,
                *xs_,
                tape,
                body=step,
                length=length,
                num_consts=len(consts_),
                num_carry=len(init),
                num_tape=num_carry,
                backward=False,
                reverse=reverse,
                linear=tuple(linear),
            )
    else:
        n_out = len(body.outputs)
        stacked = bind(
            "scan",
            *primals,
            body=_with_carries_out(body, num_consts, num_carry),
            length=length,
            num_consts=num_consts,
            num_carry=num_carry,
            reverse=reverse,
        )
        outs, carries = stacked[:n_out], stacked[n_out:]

        def tangent_loop(consts_, init, xs_, step, linear):
            return bind(
                "scan",
                *consts_,
                *init,
                *carries,
                *xs_,
                body=step,
                length=length,
                num_consts=len(consts_),
                num_carry=len(init),
                reverse=reverse,
            )

    return tuple(outs), _tangents(body, consts, t_consts, carry, t_carry, xs, t_xs, tangent_loop)


def _scan_jvp(primals, tangents, outs, **attrs):
    return _scan_jvp_full(primals, tangents, **attrs)[1]


def _transpose_loop(cts, consts, carry, xs, body, num_tape, run_backwards):
    """The transpose of a loop (scan, or loop_tape reading `num_tape` recorded carries) that is
    linear in its carry, some consts and some xs: it runs the other way, the carry's cotangent
    flowing from the last iteration to the first, the linear consts' cotangents accumulating in
    extra carries, the linear xs' cotangents stacked. Every carry of such a loop is linear; one
    that starts from a constant zero (a symbolically zero tangent) just gets no cotangent.

    `run_backwards(p_consts, init, xs, body, num_consts, num_carry)` binds the reversed loop.
    Returns the cotangents of consts, carry and xs, in that order (None where not linear)."""
    from ..transforms import inline

    num_consts, num_carry = len(consts), len(carry)
    lin_consts = [i for i, c in enumerate(consts) if isinstance(c, Linear)]
    lin_xs = [i for i, x in enumerate(xs) if isinstance(x, Linear)]
    p_consts = [c for c in consts if not isinstance(c, Linear)]
    p_xs = [x for x in xs if not isinstance(x, Linear)]
    first_x = num_consts + num_carry + num_tape
    linear = lin_consts + [num_consts + i for i in range(num_carry)] + [first_x + i for i in lin_xs]
    transposed = transposed_body(body, linear)
    ct_carry, ct_ys = list(cts[:num_carry]), list(cts[num_carry:])
    diff_ys = [j for j, p in enumerate(body.outputs[num_carry:]) if differentiable(p.spec)]
    tape_specs = [p.spec for p in body.inputs[num_consts + num_carry : first_x]]
    n_pc, n_acc = len(p_consts), len(lin_consts)

    def step(*a):
        pc, ctc = a[:n_pc], a[n_pc : n_pc + num_carry]
        acc = a[n_pc + num_carry : n_pc + num_carry + n_acc]
        rest = a[n_pc + num_carry + n_acc :]
        tc, px, cty = (
            rest[:num_tape],
            rest[num_tape : num_tape + len(p_xs)],
            rest[num_tape + len(p_xs) :],
        )
        out = inline(transposed, list(pc) + list(tc) + list(px) + list(ctc) + list(cty))
        ct_lin_consts, ct_carry_in = out[:n_acc], out[n_acc : n_acc + num_carry]
        return (
            tuple(ct_carry_in)
            + tuple(s + c for s, c in zip(acc, ct_lin_consts))
            + tuple(out[n_acc + num_carry :])
        )

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
    back = run_backwards(
        p_consts,
        init,
        p_xs + [ct_ys[j] for j in diff_ys],
        trace_closed(step, specs),
        n_pc,
        n_init,
        linear,
    )
    ct_consts, ct_xs = [None] * num_consts, [None] * len(xs)
    ct_init = [back[j] if isinstance(carry[j], Linear) else None for j in range(num_carry)]
    for j, i in enumerate(lin_consts):
        ct_consts[i] = back[num_carry + j]
    for j, i in enumerate(lin_xs):
        ct_xs[i] = back[num_carry + n_acc + j]
    return ct_consts, ct_init, ct_xs


def _scan_transpose(cts, *args, body, length, num_consts, num_carry, reverse):
    consts, carry, xs = _split(args, num_consts, num_carry)

    def run_backwards(p_consts, init, xs, step, n_consts, n_carry, linear):
        return bind(
            "scan",
            *p_consts,
            *init,
            *xs,
            body=step,
            length=length,
            num_consts=n_consts,
            num_carry=n_carry,
            reverse=not reverse,
        )

    ct_consts, ct_carry, ct_xs = _transpose_loop(cts, consts, carry, xs, body, 0, run_backwards)
    return tuple(ct_consts + ct_carry + ct_xs)


def _scan_batch(args, batched, body, length, num_consts, num_carry, reverse):
    """Every carry is batched (a carry that starts unbatched usually becomes batched in the
    first iteration); scanned inputs move their batch axis behind the scanned one."""
    from ..transforms import Program, batch

    size = next(a.shape[0] for a, b in zip(args, batched) if b)
    consts, carry, xs = _split(list(args), num_consts, num_carry)
    b_consts, b_carry, b_xs = _split(list(batched), num_consts, num_carry)
    carry = [c if b else gnp.broadcast_to(c, (size,) + c.shape) for c, b in zip(carry, b_carry)]
    xs = [gnp.moveaxis(x, 0, 1) if b else x for x, b in zip(xs, b_xs)]
    batched_body = batch(Program(body), b_consts + [True] * num_carry + b_xs, size).graph
    out = bind(
        "scan",
        *consts,
        *carry,
        *xs,
        body=batched_body,
        length=length,
        num_consts=num_consts,
        num_carry=num_carry,
        reverse=reverse,
    )
    # batch() makes every body output batched: ys come out (length, size, ...)
    return tuple(out[:num_carry]) + tuple(gnp.moveaxis(y, 1, 0) for y in out[num_carry:])


def _scan_retype(args, body, length, num_consts, num_carry, reverse):
    consts, carry, xs = _split(args, num_consts, num_carry)
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
    return bind(
        "scan",
        *consts,
        *carry,
        *xs,
        body=retyped(body, specs, out_dtypes),
        length=length,
        num_consts=num_consts,
        num_carry=num_carry,
        reverse=reverse,
    )


primitive(
    "scan",
    impl=_scan_impl,
    shape=_scan_shape,
    arity=(0, None),
    attrs=SCAN_ATTRS,
    multiple_results=True,
    jvp=_scan_jvp,
    jvp_full=_scan_jvp_full,
    transpose=_scan_transpose,
    batch=_scan_batch,
    retype=_scan_retype,
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


def _while_split(args, num_cond_consts, num_body_consts):
    n = num_cond_consts + num_body_consts
    return list(args[:num_cond_consts]), list(args[num_cond_consts:n]), list(args[n:])


def _while_shape(*args, cond, body, num_cond_consts, num_body_consts, max_iterations):
    if min(
        num_cond_consts, num_body_consts, max_iterations
    ) < 0 or num_cond_consts + num_body_consts > len(args):
        raise ShapeError("bad num_cond_consts, num_body_consts or max_iterations")
    cc, bc, carry = _while_split(args, num_cond_consts, num_body_consts)
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
    from ..errors import LimitError

    cc, bc, carry = _while_split(args, num_cond_consts, num_body_consts)
    iterations = 0
    while run_body(cond, cc + carry)[0]:
        if iterations == max_iterations:
            raise LimitError(
                f"while_loop ran past its cap of {max_iterations} iterations", "while_loop"
            )
        carry = run_body(body, bc + carry)
        iterations += 1
    return tuple(carry)


def _while_batch(args, batched, cond, body, num_cond_consts, num_body_consts, max_iterations):
    """Every carry is batched; members whose condition has turned false keep their carry
    while the others go on (the loop runs while any member continues)."""
    from ..transforms import Program, batch, inline

    size = next(a.shape[0] for a, b in zip(args, batched) if b)
    cc, bc, carry = _while_split(list(args), num_cond_consts, num_body_consts)
    f_cc, f_bc, f_carry = _while_split(list(batched), num_cond_consts, num_body_consts)
    carry = [c if b else gnp.broadcast_to(c, (size,) + c.shape) for c, b in zip(carry, f_carry)]
    b_cond = batch(Program(cond), f_cc + [True] * len(carry), size).graph
    b_body = batch(Program(body), f_bc + [True] * len(carry), size).graph
    n_cc, n_bc = len(cc), len(bc)

    def any_cond(*a):
        return (gnp.max(inline(b_cond, list(a))[0]),)

    def masked_body(*a):
        c_consts, b_consts, c = a[:n_cc], a[n_cc : n_cc + n_bc], a[n_cc + n_bc :]
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
        cond=trace_closed(any_cond, [c.spec for c in cc] + carry_specs),
        body=trace_closed(masked_body, [c.spec for c in cc] + [c.spec for c in bc] + carry_specs),
        num_cond_consts=n_cc,
        num_body_consts=n_cc + n_bc,
        max_iterations=max_iterations,
    )


def _while_retype(args, cond, body, num_cond_consts, num_body_consts, max_iterations):
    cc, bc, carry = _while_split(args, num_cond_consts, num_body_consts)
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
    jvp=lambda primals, tangents, outs, **attrs: _while_jvp_full(primals, tangents, **attrs)[1],
    jvp_full=lambda primals, tangents, **attrs: _while_jvp_full(primals, tangents, **attrs),
    batch=_while_batch,
    retype=_while_retype,
)


# ---- loop tapes: loops that record their carries, and loops that read them back -------------
# A recorded loop gives, besides its results, a tape (engine/tape.py) of the carry entering
# every iteration it ran; `loop_tape` runs a body once per recorded iteration, in the order
# run or backwards, reading that carry. while_loop is differentiated in reverse mode this way
# (its trip count is known only when it has run), and so is scan under a tape budget (the tape
# then keeps checkpoints and recomputes the rest).

_mode = threading.local()


class tape_mode:
    """Within it, scans are differentiated through loop tapes (used under a tape budget)."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.before = getattr(_mode, "on", False)
        _mode.on = self.on

    def __exit__(self, *exc):
        _mode.on = self.before


def _no_second_order(*args, **kwargs):
    from ..errors import GraphError

    raise GraphError(
        "derivatives of a loop's derivative (second order) through a while_loop, "
        "or through a scan under a tape budget, are not supported; use a scan "
        "without max_tape_bytes for Hessians",
        "loop tape",
    )


def _carry_bytes(carry) -> int:
    return int(sum(np.asarray(c).nbytes for c in carry))


def _scan_record_impl(*args, body, length, num_consts, num_carry, reverse):
    from ..tape import LoopTape

    consts, carry, xs = _split(args, num_consts, num_carry)

    def index(k):
        return length - 1 - k if reverse else k

    def advance(k, c):
        return tuple(run_body(body, consts + list(c) + [x[index(k)] for x in xs])[:num_carry])

    tape = LoopTape(advance, _carry_bytes(carry), len(body_plan(body).steps))
    ys = [np.empty((length,) + p.spec.shape, p.spec.dtype) for p in body.outputs[num_carry:]]
    for k in range(length):
        tape.record(k, tuple(carry))
        out = run_body(body, consts + list(carry) + [x[index(k)] for x in xs])
        carry = out[:num_carry]
        for buffer, y in zip(ys, out[num_carry:]):
            buffer[index(k)] = y
    return tuple(carry) + tuple(ys) + (tape,)


primitive(
    "scan_record",
    impl=_scan_record_impl,
    arity=(0, None),
    attrs=SCAN_ATTRS,
    shape=lambda *a, **k: _scan_shape(*a, **k) + (Spec((), dtypes.TAPE),),
    multiple_results=True,
    jvp=_no_second_order,
)


def _while_record_impl(*args, cond, body, num_cond_consts, num_body_consts, max_iterations):
    from ..errors import LimitError
    from ..tape import LoopTape

    cc, bc, carry = _while_split(args, num_cond_consts, num_body_consts)
    tape = LoopTape(
        lambda k, c: tuple(run_body(body, bc + list(c))),
        _carry_bytes(carry),
        len(body_plan(body).steps),
    )
    k = 0
    while run_body(cond, cc + list(carry))[0]:
        if k == max_iterations:
            raise LimitError(
                f"while_loop ran past its cap of {max_iterations} iterations", "while_loop"
            )
        tape.record(k, tuple(carry))
        carry = run_body(body, bc + list(carry))
        k += 1
    return tuple(carry) + (tape,)


primitive(
    "while_record",
    impl=_while_record_impl,
    arity=(0, None),
    attrs=WHILE_ATTRS,
    shape=lambda *a, **k: _while_shape(*a, **k) + (Spec((), dtypes.TAPE),),
    multiple_results=True,
    jvp=_no_second_order,
)

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


def _loop_tape_split(args, num_consts, num_carry):
    consts, carry, rest = _split(args, num_consts, num_carry)
    return consts, carry, rest[:-1], rest[-1]


def _loop_tape_shape(
    *args, body, length, num_consts, num_carry, num_tape, backward, reverse, linear
):
    if not args or args[-1].dtype != dtypes.TAPE:
        raise ShapeError("the last input of loop_tape must be a loop tape")
    if any(not 0 <= i < len(args) - 1 for i in linear):
        raise ShapeError(f"linear positions {linear} out of range")
    consts, carry, xs, _ = _loop_tape_split(args, num_consts, num_carry)
    if length < 0 and xs:
        raise ShapeError("a loop tape of unknown length cannot scan inputs")
    tape_specs = [
        p.spec for p in body.inputs[num_consts + num_carry : num_consts + num_carry + num_tape]
    ]
    x_specs = [Spec(x.shape[1:], x.dtype) for x in xs]
    if any(not x.shape or x.shape[0] != length for x in xs):
        raise ShapeError(f"scanned inputs must have a leading axis of {length}")
    check_signature(body, consts + carry + tape_specs + x_specs, "body")
    outs = [p.spec for p in body.outputs]
    if outs[:num_carry] != carry:
        raise ShapeError("the body must give back a carry of the shape and dtype it gets")
    if length < 0 and len(outs) > num_carry:
        raise ShapeError("a loop tape of unknown length cannot stack outputs")
    return tuple(carry + [Spec((length,) + s.shape, s.dtype) for s in outs[num_carry:]])


def _loop_tape_impl(
    *args, body, length, num_consts, num_carry, num_tape, backward, reverse, linear
):
    consts, carry, xs, tape = _loop_tape_split(args, num_consts, num_carry)
    n = tape.length
    ys = [np.empty((n,) + p.spec.shape, p.spec.dtype) for p in body.outputs[num_carry:]]
    for k, tape_carry in tape.backward() if backward else tape.forward():
        i = n - 1 - k if reverse else k
        out = run_body(body, consts + list(carry) + list(tape_carry) + [x[i] for x in xs])
        carry = out[:num_carry]
        for buffer, y in zip(ys, out[num_carry:]):
            buffer[i] = y
    return tuple(carry) + tuple(ys)


def _loop_tape_transpose(
    cts, *args, body, length, num_consts, num_carry, num_tape, backward, reverse, linear
):
    consts, carry, xs, tape = _loop_tape_split(args, num_consts, num_carry)

    def run_backwards(p_consts, init, xs, step, n_consts, n_carry, linear):
        return bind(
            "loop_tape",
            *p_consts,
            *init,
            *xs,
            tape,
            body=step,
            length=length,
            num_consts=n_consts,
            num_carry=n_carry,
            num_tape=num_tape,
            backward=not backward,
            reverse=reverse,
            linear=tuple(linear),
        )

    ct_consts, ct_carry, ct_xs = _transpose_loop(
        cts, consts, carry, xs, body, num_tape, run_backwards
    )
    return tuple(ct_consts + ct_carry + ct_xs) + (None,)


def _loop_tape_batch(
    args, batched, body, length, num_consts, num_carry, num_tape, backward, reverse, linear
):
    from ..transforms import Program, batch

    size = next(a.shape[0] for a, b in zip(args, batched) if b)
    consts, carry, xs, tape = _loop_tape_split(list(args), num_consts, num_carry)
    b_consts, b_carry, b_xs, _ = _loop_tape_split(list(batched), num_consts, num_carry)
    carry = [c if b else gnp.broadcast_to(c, (size,) + c.shape) for c, b in zip(carry, b_carry)]
    xs = [gnp.moveaxis(x, 0, 1) if b else x for x, b in zip(xs, b_xs)]
    flags = b_consts + [True] * num_carry + [False] * num_tape + b_xs
    out = bind(
        "loop_tape",
        *consts,
        *carry,
        *xs,
        tape,
        body=batch(Program(body), flags, size).graph,
        length=length,
        num_consts=num_consts,
        num_carry=num_carry,
        num_tape=num_tape,
        backward=backward,
        reverse=reverse,
        linear=linear,
    )
    return tuple(out[:num_carry]) + tuple(gnp.moveaxis(y, 1, 0) for y in out[num_carry:])


def _loop_tape_jvp(primals, tangents, outs, *, linear, **attrs):
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
)


def _tangents(body, consts, t_consts, carry, t_carry, xs, t_xs, tangent_loop):
    """The tangents of a loop's outputs, from a second loop linear in the tangents whose body
    reads the primal carry of each iteration. `tangent_loop(consts, init, xs, step)` binds that
    loop: a scan over the stacked carries, or a loop_tape over a recorded tape; either way the
    step gets (consts, tangent consts, tangent carry, primal carry, x, tangent x)."""
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
    )
    n_c, n_tc, n_t, n_x = num_consts, len(which_consts), len(diff_carry), len(xs)

    def step(*a):
        pc, tc, tcarry = a[:n_c], a[n_c : n_c + n_tc], a[n_c + n_tc : n_c + n_tc + n_t]
        rest = a[n_c + n_tc + n_t :]
        p_carry, p_x, tx = (
            rest[:num_carry],
            rest[num_carry : num_carry + n_x],
            rest[num_carry + n_x :],
        )
        t_out = inline(
            tangent_graph, list(pc) + list(p_carry) + list(p_x) + list(tc) + list(tcarry) + list(tx)
        )
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
    linear = (
        list(range(n_c, n_c + n_tc))
        + list(range(n_c + n_tc, n_c + n_tc + n_t))
        + list(range(n_c + n_tc + n_t + n_x, n_c + n_tc + n_t + n_x + len(which_xs)))
    )
    t_outs = tangent_loop(
        list(consts) + [t_consts[i] for i in which_consts],
        init,
        list(xs) + [t_xs[i] for i in which_xs],
        trace_closed(step, specs),
        linear,
    )
    t_carry_out = [None] * num_carry
    for j, i in enumerate(diff_carry):
        t_carry_out[i] = t_outs[j]
    t_ys = [t if differentiable(t.spec) else None for t in t_outs[n_t:]]
    return tuple(t_carry_out + t_ys)


def _while_jvp_full(
    primals, tangents, cond, body, num_cond_consts, num_body_consts, max_iterations
):
    _cc, bc, carry = _while_split(primals, num_cond_consts, num_body_consts)
    _, t_bc, t_carry = _while_split(tangents, num_cond_consts, num_body_consts)
    recorded = bind(
        "while_record",
        *primals,
        cond=cond,
        body=body,
        num_cond_consts=num_cond_consts,
        num_body_consts=num_body_consts,
        max_iterations=max_iterations,
    )
    outs, tape = recorded[:-1], recorded[-1]

    def tangent_loop(consts, init, xs, step, linear):
        return bind(
            "loop_tape",
            *consts,
            *init,
            *xs,
            tape,
            body=step,
            length=-1,
            num_consts=len(consts),
            num_carry=len(init),
            num_tape=len(carry),
            backward=False,
            reverse=False,
            linear=tuple(linear),
        )

    return outs, _tangents(body, bc, t_bc, carry, t_carry, [], [], tangent_loop)
