"""`gs.explain`: a graph's evaluation trace with its tangents or adjoints, as a table.

The layout is the one the automatic-differentiation literature uses to teach the two modes
(Baydin, Pearlmutter, Radul and Siskind, "Automatic differentiation in machine learning: a
survey", 2018, tables 2 and 3): for n inputs the rows are v_{1-n}, ..., v_0 = the inputs, then
one row v_1, v_2, ... per value a node computes, in the graph's order, then one row per output
(`y = v_k`). Each row has its primal value and its tangent (forward mode: the derivative of the
row with respect to one input, seeded with 1 there) or its adjoint (reverse mode: the
derivative of the output with respect to the row, seeded with 1 on the output).

How it is computed:
- primal values: node by node, each with its primitive's NumPy `impl`;
- tangents: the engine's forward mode (`Engine.jvp`) on the graph with every intermediate
  value made an output;
- adjoints: the engine's reverse mode (`Engine.vjp`) on the graph with a zero added to every
  intermediate value, `v_i = op(...) + e_i`, each `e_i` a new input held at 0: the derivative
  of the output with respect to `e_i` is the adjoint of `v_i`. One reverse pass gives them
  all, the inputs' adjoints (the gradient) with them.

Constants carry no derivative and get no row: a scalar constant appears by its value in the
definitions (`v_3 = v_2 / 3`), an array constant as c_1, c_2, ..., listed below the table.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import dtypes
from .arguments import arguments, check_argnums, check_graph, coerce
from .graph import Graph, Node, Port
from .primitive import PRIMITIVES

MODES = ("forward", "reverse")
_SYMBOLS = {"add": "+", "subtract": "-", "multiply": "*", "divide": "/", "power": "**"}
_ENGINE = None


def _engine():
    global _ENGINE
    if _ENGINE is None:
        from .engine import Engine

        _ENGINE = Engine(plan_cache_size=32)
    return _ENGINE


class Row(NamedTuple):
    """One row of an evaluation trace.

    - `name`: the trace's name of the value: "v_{-1}", "v_0", "v_1", ..., or "y" ("y_1",
      "y_2", ... for several outputs);
    - `op`: "input", the op that computes it ("log", "multiply", ...), or "output";
    - `inputs`: the names of its operands (trace names, a scalar constant's value, or c_1,
      c_2, ... for array constants); an input row's is its graph input's name;
    - `primal`: its value (an ndarray);
    - `derivative`: its tangent (forward mode) or adjoint (reverse mode), an ndarray, or None
      for a value of an integer or bool dtype, which has none;
    - `definition`: the row as printed: "v_1 = log(v_{-1})", "v_2 = v_{-1} * v_0", "y = v_5";
    - `graph_name`: the value's name in the graph ("x1", "%0").
    """

    name: str
    op: str
    inputs: tuple
    primal: np.ndarray
    derivative: np.ndarray | None
    definition: str
    graph_name: str


class Explanation:
    """The evaluation trace `gs.explain` returns.

    Attributes
    ----------
    rows : list of Row
        Inputs, intermediate values, outputs, in that order (see `gs.explain`).
    mode : str
        "forward" or "reverse".
    wrt : int or None
        Forward mode: the index of the input whose tangent is seeded. None in reverse mode.
    output : int or None
        Reverse mode: the index of the output whose adjoint is seeded. None in forward mode.
    seed : ndarray
        The seeded tangent (of input `wrt`) or adjoint (of output `output`).
    constants : dict of str to ndarray
        The array constants the definitions name c_1, c_2, ...
    """

    def __init__(self, rows, mode, wrt, output, seed, constants, seeded_name):
        self.rows = rows
        self.mode = mode
        self.wrt = wrt
        self.output = output
        self.seed = seed
        self.constants = constants
        self._seeded_name = seeded_name

    def __getitem__(self, name: str) -> Row:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(name)

    def __iter__(self):
        return iter(self.rows)

    def __len__(self):
        return len(self.rows)

    @property
    def title(self) -> str:
        seed = _summary(self.seed)
        if self.mode == "forward":
            x = self._seeded_name
            return (
                f"forward mode: tangent = d v_i / d {x}, seeded with tangent({x}) = {seed}; "
                "computed from the top row down"
            )
        return (
            f"reverse mode: adjoint = d {self._seeded_name} / d v_i, seeded with "
            f"adjoint({self._seeded_name}) = {seed}; computed from the bottom row up"
        )

    def _cells(self):
        header = ("definition", "primal", "tangent" if self.mode == "forward" else "adjoint")
        body = [
            (row.definition, _summary(row.primal), _summary(row.derivative), row.graph_name)
            for row in self.rows
        ]
        return header + ("graph",), body

    def __str__(self):
        header, body = self._cells()
        widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

        def line(cells):
            a, b, c, d = cells
            return (
                f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}  {d:<{widths[3]}}"
            ).rstrip()

        lines = [self.title, line(header)]
        lines.append("  ".join("-" * w for w in widths))
        lines += [line(cells) for cells in body]
        lines += [f"{name} = {_summary(value)}" for name, value in self.constants.items()]
        return "\n".join(lines)

    def _repr_markdown_(self):
        header, body = self._cells()
        lines = [f"*{self.title}*", "", "| " + " | ".join(header) + " |"]
        lines.append("|---|---:|---:|---|")
        lines += ["| " + " | ".join(f"`{c}`" for c in cells) + " |" for cells in body]
        if self.constants:
            lines.append("")
            lines += [f"- `{n} = {_summary(v)}`" for n, v in self.constants.items()]
        return "\n".join(lines)

    def __repr__(self):
        return f"<gs.explain {self.mode} mode: {len(self.rows)} rows>"


# ---- formatting ------------------------------------------------------------------------------


def _number(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (complex, np.complexfloating)):
        imag = _number(float(x.imag))
        return f"{_number(float(x.real))}{'' if imag.startswith('-') else '+'}{imag}j"
    x = float(x)
    if x == 0:
        return "0.000"
    if not np.isfinite(x):
        return str(x)
    return f"{x:.3f}" if 1e-3 <= abs(x) < 1e6 else f"{x:.3e}"


def _literal(x) -> str:
    """A scalar constant as a definition shows it: 2, 0.5, 1e-08."""
    if isinstance(x, (np.floating, float)):
        return f"{float(x):g}"
    return _number(x)


def _summary(value, head: int = 3) -> str:
    """A short text for a value: a scalar's number; an array's dtype and shape, with its
    values when it has at most 4, else its first `head` values and (numbers) its mean."""
    if value is None:
        return "n/a"
    array = np.asarray(value)
    if array.ndim == 0:
        return _number(array[()])
    kind = f"{array.dtype.name}[{','.join(str(d) for d in array.shape)}]"
    flat = array.reshape(-1)
    if flat.size <= 4:
        return f"{kind} [{' '.join(_number(v) for v in flat)}]"
    shown = f"{kind} [{' '.join(_number(v) for v in flat[:head])} ...]"
    if array.dtype.kind in "iufc":
        shown += f" mean={_number(flat.mean())}"
    return shown


def _trace_name(k: int) -> str:
    return f"v_{k}" if 0 <= k <= 9 else f"v_{{{k}}}"


def _attr_text(value) -> str:
    if isinstance(value, Graph):
        return f"<graph of {len(value.nodes)} nodes>"
    return repr(value)


def _definition(name, op, operands, attrs, index=None) -> str:
    if op in _SYMBOLS and len(operands) == 2 and not attrs:
        right = f"({operands[1]})" if operands[1].startswith("-") else operands[1]
        return f"{name} = {operands[0]} {_SYMBOLS[op]} {right}"
    if op == "negative" and len(operands) == 1:
        return f"{name} = -{operands[0]}"
    text = ", ".join(operands)
    if attrs:
        text += "; " + ", ".join(f"{k}={_attr_text(v)}" for k, v in sorted(attrs.items()))
    return f"{name} = {op}({text})" + ("" if index is None else f"[{index}]")


# ---- the table -------------------------------------------------------------------------------


def _fresh(prefix, taken):
    k = 0
    while f"{prefix}{k}" in taken:
        k += 1
    return f"{prefix}{k}"


def _derivable(spec) -> bool:
    return dtypes.is_differentiable(spec.dtype)


def explain(
    graph: Graph,
    *args,
    mode: str = "forward",
    wrt=None,
    tangent=None,
    output: int | None = None,
    cotangent=None,
) -> Explanation:
    """The evaluation trace of `graph` at `args`, with tangents or adjoints, as a table.

    The rows follow the layout of the automatic-differentiation literature (Baydin et al.'s
    survey): the n inputs are v_{1-n}, ..., v_0, each value a node computes is v_1, v_2, ...
    in the graph's order, and each output closes the table as `y = v_k`. Forward mode gives
    every row's tangent (its derivative along the seeded input), reverse mode every row's
    adjoint (the seeded output's derivative with respect to the row). The primal values are
    computed node by node with each op's NumPy implementation, the tangents by the engine's
    forward mode, the adjoints by one pass of its reverse mode (so the inputs' adjoints are
    what `Engine.grad` gives). ``str()`` of the result is the aligned table.

    Parameters
    ----------
    graph : gs.Graph
        The graph, from `gs.trace` or `gs.Graph.from_bytes`.
    *args
        One value per graph input, as `Engine.evaluate` takes them.
    mode : str, optional
        "forward" (the default) or "reverse".
    wrt : int or str, optional
        Forward mode: the input whose tangent is seeded, by index or name (default 0); the
        other inputs' tangents are 0. Not taken in reverse mode, which gives every input's
        adjoint at once.
    tangent : array_like, optional
        Forward mode: the seed, of input `wrt`'s shape. Default 1: for a scalar input, ẋ = 1;
        for an array input, ones (so the tangents are derivatives along the all-ones
        direction: the row sums of the Jacobian).
    output : int, optional
        Reverse mode: the output whose adjoint is seeded (default 0); the others' are 0.
    cotangent : array_like, optional
        Reverse mode: the seed, of that output's shape. Default 1 (ones for an array output:
        the adjoints are those of the sum of its elements).

    Returns
    -------
    Explanation
        `.rows` (a list of `Row`: name, op, inputs, primal, derivative, definition,
        graph_name), `.mode`, `.wrt`, `.output`, `.seed`, `.constants`; indexing by a row's
        name (``table["v_3"]``) gives that row. Arrays print as their dtype, shape and values
        (the first three and the mean beyond four elements); a value of an integer or bool
        dtype has no derivative (None, printed n/a).

    Raises
    ------
    ValueError
        An unknown `mode`; `wrt` or `output` out of range; a seed of the other mode (`wrt` or
        `tangent` in reverse mode, `output` or `cotangent` in forward mode); a seed of the
        wrong shape.
    TypeError
        `wrt` names an input, or `output` an output, of an integer or bool dtype; arguments
        as `Engine.evaluate` refuses them.

    Examples
    --------
    >>> graph = gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0)
    >>> table = gs.explain(graph, 2.0, 5.0, mode="reverse")
    >>> [row.definition for row in table.rows][2:4]
    ['v_1 = log(v_{-1})', 'v_2 = v_{-1} * v_0']
    >>> round(float(table["v_{-1}"].derivative), 3), round(float(table["v_0"].derivative), 3)
    (5.5, 1.716)
    """
    check_graph(graph)
    if mode not in MODES:
        raise ValueError(f"mode must be 'forward' or 'reverse', got {mode!r}")
    values = arguments(graph, args)
    n_in = len(graph.inputs)

    # Names: inputs v_{1-n} .. v_0, constants by value or c_k, node outputs v_1, v_2, ...
    names = {p.name: _trace_name(k - n_in + 1) for k, p in enumerate(graph.inputs)}
    constants = {}
    for name, value in graph.constants.items():
        if value.ndim == 0:
            names[name] = _literal(value[()])
        else:
            names[name] = f"c_{len(constants) + 1}"
            constants[names[name]] = value
    intermediates = [o for node in graph.nodes for o in node.outputs]
    for k, name in enumerate(intermediates, 1):
        names[name] = _trace_name(k)

    # Primal values, node by node with each op's implementation.
    env = {p.name: v for p, v in zip(graph.inputs, values)}
    env.update(graph.constants)
    with np.errstate(all="ignore"):
        for node in graph.nodes:
            prim = PRIMITIVES[node.op]
            out = prim.impl(*[env[n] for n in node.inputs], **node.attrs)
            outs = out if prim.multiple_results else (out,)
            env.update((n, np.asarray(o)) for n, o in zip(node.outputs, outs))

    if mode == "forward":
        if output is not None or cotangent is not None:
            raise ValueError("output= and cotangent= seed reverse mode; forward mode takes wrt=")
        wrt = _input_index(graph, 0 if wrt is None else wrt)
        spec = graph.inputs[wrt].spec
        seed = (
            np.ones(spec.shape, spec.dtype) if tangent is None else coerce(tangent, spec, "tangent")
        )
        derivatives = _tangents(graph, values, intermediates, wrt, seed)
        seeded_name = graph.inputs[wrt].name
    else:
        if wrt is not None or tangent is not None:
            raise ValueError(
                "wrt= and tangent= seed forward mode; reverse mode gives every input's "
                "adjoint at once (choose the output with output=)"
            )
        output = _output_index(graph, 0 if output is None else output)
        spec = graph.outputs[output].spec
        seed = (
            np.ones(spec.shape, spec.dtype)
            if cotangent is None
            else coerce(cotangent, spec, "cotangent")
        )
        derivatives = _adjoints(graph, values, output, seed)
        seeded_name = "y" if len(graph.outputs) == 1 else f"y_{output + 1}"

    rows = []
    for port, value in zip(graph.inputs, values):
        rows.append(
            Row(
                names[port.name],
                "input",
                (port.name,),
                value,
                derivatives.get(port.name),
                f"{names[port.name]} = {port.name}",
                port.name,
            )
        )
    for node in graph.nodes:
        operands = tuple(names[n] for n in node.inputs)
        several = len(node.outputs) > 1
        for j, name in enumerate(node.outputs):
            definition = _definition(
                names[name], node.op, list(operands), node.attrs, j if several else None
            )
            rows.append(
                Row(
                    names[name],
                    node.op,
                    operands,
                    env[name],
                    derivatives.get(name),
                    definition,
                    name,
                )
            )
    for k, port in enumerate(graph.outputs):
        y = "y" if len(graph.outputs) == 1 else f"y_{k + 1}"
        if mode == "reverse":
            derivative = (
                (seed if k == output else np.zeros(port.spec.shape, port.spec.dtype))
                if _derivable(port.spec)
                else None
            )
        elif port.name in graph.constants and _derivable(port.spec):
            derivative = np.zeros(port.spec.shape, port.spec.dtype)
        else:
            derivative = derivatives.get(port.name)
        rows.append(
            Row(
                y,
                "output",
                (names[port.name],),
                np.asarray(env[port.name]),
                derivative,
                f"{y} = {names[port.name]}",
                port.name,
            )
        )
    return Explanation(
        rows,
        mode,
        wrt if mode == "forward" else None,
        output if mode == "reverse" else None,
        seed,
        constants,
        seeded_name,
    )


def _input_index(graph: Graph, wrt) -> int:
    if isinstance(wrt, str):
        names = graph.input_names
        if wrt not in names:
            raise ValueError(f"wrt={wrt!r}: the graph's inputs are {', '.join(names)}")
        wrt = names.index(wrt)
    n = len(graph.inputs)
    if isinstance(wrt, bool) or not isinstance(wrt, (int, np.integer)):
        raise TypeError(f"wrt must be an input's index or name, got {wrt!r}")
    if not -n <= wrt < n:
        raise ValueError(f"wrt={wrt} out of range for {n} inputs")
    return check_argnums(graph, int(wrt))[0]


def _output_index(graph: Graph, output) -> int:
    n = len(graph.outputs)
    if isinstance(output, bool) or not isinstance(output, (int, np.integer)):
        raise TypeError(f"output must be an int, got {output!r}")
    if not -n <= output < n:
        raise ValueError(f"output={output} out of range for {n} outputs")
    output = int(output) % n
    spec = graph.outputs[output].spec
    if not _derivable(spec):
        raise TypeError(f"output {output} has dtype {spec.dtype}: it has no adjoint")
    return output


def _tangents(graph: Graph, values, intermediates, wrt, seed) -> dict:
    """Every value's tangent along input `wrt` (seeded with `seed`), by the engine's forward
    mode on the graph with every intermediate value an output."""
    avals = graph.avals
    wanted = [n for n in intermediates if _derivable(avals[n])]
    derivatives = {}
    for k, port in enumerate(graph.inputs):
        if _derivable(port.spec):
            derivatives[port.name] = (
                seed if k == wrt else np.zeros(port.spec.shape, port.spec.dtype)
            )
    if not wanted:
        return derivatives
    every = Graph(graph.inputs, graph.constants, graph.nodes, wanted)
    tangents = [
        seed if k == wrt else np.zeros(p.spec.shape, p.spec.dtype)
        for k, p in enumerate(graph.inputs)
    ]
    _, out = _engine().jvp(every, values, tangents)
    out = out if isinstance(out, tuple) else (out,)
    derivatives.update(zip(wanted, out))
    return derivatives


def _adjoints(graph: Graph, values, output, seed) -> dict:
    """Every value's adjoint: one reverse pass (`Engine.vjp`) on the graph in which each
    intermediate value v_i is computed as op(...) + e_i, the e_i new inputs held at 0."""
    avals = graph.avals
    taken = set(avals) | set(graph.constants)
    raw_prefix = _fresh("explain:raw:", taken)
    hole_prefix = _fresh("explain:e:", taken)
    holes, nodes = [], []
    for node in graph.nodes:
        renamed = []
        added = []
        for name in node.outputs:
            if _derivable(avals[name]):
                raw, hole = f"{raw_prefix}{len(holes)}", f"{hole_prefix}{len(holes)}"
                holes.append((name, Port(hole, avals[name])))
                renamed.append(raw)
                added.append(Node("add", (raw, hole), (name,), {}))
            else:
                renamed.append(name)
        nodes.append(Node(node.op, node.inputs, tuple(renamed), node.attrs))
        nodes += added
    cut = Graph(
        list(graph.inputs) + [port for _, port in holes],
        graph.constants,
        nodes,
        graph.output_names,
    )
    zeros = [np.zeros(port.spec.shape, port.spec.dtype) for _, port in holes]
    cotangents = tuple(
        seed if k == output else np.zeros(p.spec.shape, p.spec.dtype)
        for k, p in enumerate(graph.outputs)
    )
    _, input_cts = _engine().vjp(cut, list(values) + zeros, cotangents)
    derivatives = {
        port.name: ct for port, ct in zip(graph.inputs, input_cts) if _derivable(port.spec)
    }
    derivatives.update((name, ct) for (name, _), ct in zip(holes, input_cts[len(graph.inputs) :]))
    return derivatives


# ---- `gradserve explain` ---------------------------------------------------------------------


def example_graph() -> Graph:
    """The survey's example, f(x1, x2) = ln(x1) + x1 * x2 - sin(x2), traced at (2, 5)."""
    from . import numpy as gnp
    from .tracing import trace

    return trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0)


def _parse_value(text: str, port: Port):
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"--args: {text!r} is not a number or a JSON list") from None
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"--args: {text!r} is not a number or a JSON list of numbers")
    if array.ndim == 0 and port.spec.shape:
        array = np.full(port.spec.shape, array[()])
    return array


def command(graph_file, values, mode, wrt, output, example) -> str:
    """What `gradserve explain` prints: the table(s) for a graph file (or the example)."""
    from pathlib import Path

    if example == (graph_file is not None):
        raise ValueError("give a GRAPH_FILE or --example (one of them)")
    if example:
        graph = example_graph()
        values = values or ["2", "5"]
    else:
        graph = Graph.from_bytes(Path(graph_file).read_bytes())
        if not values and graph.inputs:
            raise ValueError(f"--args: give one value per input ({', '.join(graph.input_names)})")
    values = values or []
    if len(values) != len(graph.inputs):
        raise ValueError(
            f"--args: the graph takes {len(graph.inputs)} values "
            f"({', '.join(graph.input_names)}), got {len(values)}"
        )
    args = [_parse_value(text, port) for text, port in zip(values, graph.inputs)]
    if wrt is not None and mode == "reverse":
        raise ValueError("--wrt seeds forward mode; reverse mode gives every input's adjoint")
    if output is not None and mode == "forward":
        raise ValueError("--output seeds reverse mode; forward mode takes --wrt")
    if wrt is not None and wrt.lstrip("-").isdigit():
        wrt = int(wrt)
    modes = [mode] if mode else (["forward", "reverse"] if example else ["forward"])
    tables = []
    for m in modes:
        seeds = {"wrt": wrt} if m == "forward" else {"output": output}
        tables.append(str(explain(graph, *args, mode=m, **seeds)))
    return "\n\n".join(tables)
