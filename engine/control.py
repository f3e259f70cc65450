"""The control-flow front end, with JAX's semantics: `cond`, `while_loop`, `fori_loop`,
`scan`, `checkpoint`. Each traces its functions into subgraphs; values the functions read from
the enclosing trace become explicit inputs of the node (closure conversion)."""

from __future__ import annotations

import numpy as np

from . import numpy as gnp
from .pytree import flatten, unflatten
from .tracing import Builder, Tracer, bind, current_builder, spec_of

DEFAULT_MAX_ITERATIONS = 1_000_000


def _trace_body(fn, specs, treedef_in=None):
    """Trace fn on inputs of `specs` (rebuilt into `treedef_in`); returns (graph, the enclosing
    values it reads, its output treedef)."""
    parent = current_builder()
    with Builder(parent) as builder:
        inputs = [builder.input(f"arg{i}", s) for i, s in enumerate(specs)]
        args = inputs if treedef_in is None else [unflatten(treedef_in, inputs)]
        out = fn(*args)
        leaves, treedef = flatten(out)
        graph = builder.build(leaves)
    captured = [outer for outer, _ in builder.captured.values()]
    return graph, captured, treedef


def _with_extra_inputs(graph, specs):
    """The same graph with unused inputs appended (so two branches share a signature)."""
    from .graph import Graph, Port

    extra = [Port(f"unused:{i}", s) for i, s in enumerate(specs)]
    return Graph(list(graph.inputs) + extra, graph.constants, graph.nodes, graph.output_names)


def _leaves_as_arrays(tree):
    leaves, treedef = flatten(tree)
    leaves = [x if isinstance(x, Tracer) else np.asarray(x) for x in leaves]
    return leaves, treedef


def _in_trace(values):
    return current_builder() is not None or any(isinstance(v, Tracer) for v in values)


def cond(pred, true_fn, false_fn, *operands):
    """true_fn(*operands) if pred else false_fn(*operands); both branches are recorded."""
    if not _in_trace([pred, *flatten(operands)[0]]):
        return true_fn(*operands) if pred else false_fn(*operands)
    leaves, treedef = _leaves_as_arrays(operands)
    specs = [spec_of(x) for x in leaves]
    true_graph, true_cap, out_def = _trace_body(lambda t: true_fn(*t), specs, treedef)
    false_graph, false_cap, false_def = _trace_body(lambda t: false_fn(*t), specs, treedef)
    if out_def != false_def:
        raise TypeError("cond: the branches return different structures")
    true_graph = _with_extra_inputs(true_graph, [spec_of(c) for c in false_cap])
    false_graph = _with_extra_inputs(false_graph, [spec_of(c) for c in true_cap])
    # false_graph's inputs: operands, its captures, then true's captures: reorder to match
    from .graph import Graph

    n = len(leaves)
    order = (
        list(range(n))
        + [n + len(false_cap) + i for i in range(len(true_cap))]
        + [n + i for i in range(len(false_cap))]
    )
    false_graph = Graph(
        [false_graph.inputs[i] for i in order],
        false_graph.constants,
        false_graph.nodes,
        false_graph.output_names,
    )
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


def while_loop(cond_fun, body_fun, init_val, *, max_iterations=DEFAULT_MAX_ITERATIONS):
    """while cond_fun(val): val = body_fun(val); return val. Past `max_iterations` the call
    fails with gs.LimitError."""
    leaves, treedef = _leaves_as_arrays(init_val)
    if not _in_trace(leaves):
        val = init_val
        while cond_fun(val):
            val = body_fun(val)
        return val
    specs = [spec_of(x) for x in leaves]
    cond_graph, cond_cap, _ = _trace_body(cond_fun, specs, treedef)
    body_graph, body_cap, out_def = _trace_body(body_fun, specs, treedef)
    if out_def != treedef:
        raise TypeError("while_loop: body_fun must return the structure it was given")
    cond_graph = _move_captures_first(cond_graph, len(leaves))
    body_graph = _move_captures_first(body_graph, len(leaves))
    out = bind(
        "while_loop",
        *cond_cap,
        *body_cap,
        *leaves,
        cond=cond_graph,
        body=body_graph,
        num_cond_consts=len(cond_cap),
        num_body_consts=len(body_cap),
        max_iterations=int(max_iterations),
    )
    return unflatten(treedef, out)


def _move_captures_first(graph, n_carry):
    from .graph import Graph

    inputs = list(graph.inputs[n_carry:]) + list(graph.inputs[:n_carry])
    return Graph(inputs, graph.constants, graph.nodes, graph.output_names)


def scan(f, init, xs, length=None, reverse=False):
    """carry, y = f(carry, x) over the leading axis of xs; returns (carry, stacked ys)."""
    carry_leaves, carry_def = _leaves_as_arrays(init)
    x_leaves, x_def = _leaves_as_arrays(xs) if xs is not None else ([], None)
    if any(not spec_of(x).shape for x in x_leaves):
        raise ValueError("scan: every array in xs needs a leading axis to scan over")
    lengths = {int(x.shape[0]) for x in x_leaves}
    if length is not None:
        lengths.add(int(length))
    if len(lengths) != 1:
        raise ValueError(f"scan: inconsistent or missing lengths {sorted(lengths)}")
    (n,) = lengths
    carry_specs = [spec_of(c) for c in carry_leaves]
    x_specs = [type(spec_of(x))(spec_of(x).shape[1:], spec_of(x).dtype) for x in x_leaves]

    def body(flat):
        carry = unflatten(carry_def, flat[: len(carry_leaves)])
        x = unflatten(x_def, flat[len(carry_leaves) :]) if xs is not None else None
        new_carry, y = f(carry, x)
        new_leaves, new_def = flatten(new_carry)
        if new_def != carry_def:
            raise TypeError("scan: f must return a carry of the structure it was given")
        y_leaves, y_def = flatten(y)
        body.y_def = y_def
        return new_leaves + y_leaves

    graph, captured, _ = _trace_body(lambda *a: body(list(a)), carry_specs + x_specs)
    graph = _move_captures_first(graph, len(carry_leaves) + len(x_leaves))
    out = bind(
        "scan",
        *captured,
        *carry_leaves,
        *x_leaves,
        body=graph,
        length=n,
        num_consts=len(captured),
        num_carry=len(carry_leaves),
        reverse=bool(reverse),
    )
    carry = unflatten(carry_def, out[: len(carry_leaves)])
    return carry, unflatten(body.y_def, out[len(carry_leaves) :])


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


def checkpoint(fn):
    """fn, recorded so that the reverse pass keeps only its inputs and recomputes the rest."""

    def wrapped(*args):
        leaves, treedef = _leaves_as_arrays(args)
        if not _in_trace(leaves):
            return fn(*args)
        graph, captured, out_def = _trace_body(
            lambda t: fn(*t), [spec_of(x) for x in leaves], treedef
        )
        out = bind("checkpoint", *leaves, *captured, body=graph)
        return unflatten(out_def, out)

    return wrapped
