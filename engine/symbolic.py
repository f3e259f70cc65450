"""Symbolic differentiation through SymPy: a graph of scalar ops as SymPy expressions
(`gs.to_sympy`), their simplified derivatives (`gs.symbolic_derivative`), and the size of the
expression tree a graph stands for (`gs.expression_size`), which shows expression swell.

SymPy is an optional dependency (``pip install 'gradserve[symbolic]'``), imported only when
`to_sympy` or `symbolic_derivative` is called; `expression_size` needs none.
"""

from __future__ import annotations

from .graph import Graph

# ops whose SymPy form is that of their operands, applied elementwise
_UNARY = {
    "negative": lambda sp, x: -x,
    "exp": lambda sp, x: sp.exp(x),
    "log": lambda sp, x: sp.log(x),
    "log1p": lambda sp, x: sp.log(1 + x),
    "expm1": lambda sp, x: sp.exp(x) - 1,
    "sqrt": lambda sp, x: sp.sqrt(x),
    "square": lambda sp, x: x**2,
    "abs": lambda sp, x: sp.Abs(x),
    "sign": lambda sp, x: sp.sign(x),
    "sin": lambda sp, x: sp.sin(x),
    "cos": lambda sp, x: sp.cos(x),
    "tan": lambda sp, x: sp.tan(x),
    "arcsin": lambda sp, x: sp.asin(x),
    "arccos": lambda sp, x: sp.acos(x),
    "arctan": lambda sp, x: sp.atan(x),
    "sinh": lambda sp, x: sp.sinh(x),
    "cosh": lambda sp, x: sp.cosh(x),
    "tanh": lambda sp, x: sp.tanh(x),
    "floor": lambda sp, x: sp.floor(x),
    "ceil": lambda sp, x: sp.ceiling(x),
    "logical_not": lambda sp, x: sp.Not(_truth(sp, x)),
}

_BINARY = {
    "add": lambda sp, x, y: x + y,
    "subtract": lambda sp, x, y: x - y,
    "multiply": lambda sp, x, y: x * y,
    "mul_or_zero": lambda sp, x, y: x * y,  # equal to x * y wherever both are finite
    "divide": lambda sp, x, y: x / y,
    "div_or_zero": lambda sp, x, y: x / y,
    "power": lambda sp, x, y: x**y,
    "maximum": lambda sp, x, y: sp.Max(x, y),
    "minimum": lambda sp, x, y: sp.Min(x, y),
    "logaddexp": lambda sp, x, y: sp.log(sp.exp(x) + sp.exp(y)),
    "less": lambda sp, x, y: sp.Lt(x, y),
    "less_equal": lambda sp, x, y: sp.Le(x, y),
    "greater": lambda sp, x, y: sp.Gt(x, y),
    "greater_equal": lambda sp, x, y: sp.Ge(x, y),
    "equal": lambda sp, x, y: sp.Eq(x, y),
    "not_equal": lambda sp, x, y: sp.Ne(x, y),
    "logical_and": lambda sp, x, y: sp.And(_truth(sp, x), _truth(sp, y)),
    "logical_or": lambda sp, x, y: sp.Or(_truth(sp, x), _truth(sp, y)),
    "logical_xor": lambda sp, x, y: sp.Xor(_truth(sp, x), _truth(sp, y)),
}

# ops that, on 0-d operands and result, give their (one) operand back: shape ops, and
# reductions of one element
_SCALAR_IDENTITY = {
    "reshape",
    "broadcast_to",
    "transpose",
    "flip",
    "cumsum",
    "reduce_sum",
    "reduce_prod",
    "reduce_max",
    "reduce_min",
    "logsumexp",
    "getitem",
}


def _sympy():
    try:
        import sympy
    except ImportError as exc:  # pragma: no cover - exercised only without SymPy
        raise ImportError(
            "gs.to_sympy and gs.symbolic_derivative need SymPy: pip install 'gradserve[symbolic]'"
        ) from exc
    return sympy


def _truth(sp, x):
    """x as a SymPy boolean: relationals and booleans as they are, numbers as x != 0."""
    if isinstance(x, (sp.logic.boolalg.Boolean, sp.core.relational.Relational)):
        return x
    return sp.Ne(x, 0)


def _number(sp, value, dtype):
    """A 0-d constant as a SymPy number: booleans as true/false, integer values as Integers,
    floats that are simple fractions (0.5) as Rationals, other floats as Floats (exact binary
    value); complex as a + b*I."""
    if dtype == "bool":
        return sp.true if bool(value) else sp.false
    if dtype == "complex128":
        return _number(sp, value.real, "float64") + sp.I * _number(sp, value.imag, "float64")
    value = float(value) if dtype.startswith("float") else int(value)
    if isinstance(value, int) or value.is_integer():
        return sp.Integer(int(value))
    fraction = sp.Rational(value).limit_denominator(1000)
    if float(fraction) == value:
        return fraction
    return sp.Float(value)


def _symbol(sp, name, dtype):
    if dtype == "bool":
        return sp.Symbol(name)
    if dtype.startswith("int"):
        return sp.Symbol(name, integer=True)
    if dtype == "complex128":
        return sp.Symbol(name, complex=True)
    return sp.Symbol(name, real=True)


def _scalar_only(graph, node, what):
    specs = [graph.avals[v] for v in (*node.inputs, *node.outputs)]
    if any(s.shape != () for s in specs):
        shown = ", ".join(f"{v}: {graph.avals[v]}" for v in (*node.inputs, *node.outputs))
        raise TypeError(
            f"{what}: op {node.op!r} on non-scalar values ({shown}); only graphs of scalar"
            f" (0-d) values convert to SymPy"
        )


def _expressions(graph: Graph, what: str):
    """{value name: SymPy expression} for every value of `graph`."""
    sp = _sympy()
    if not isinstance(graph, Graph):
        raise TypeError(f"{what} takes a gs.Graph, got {type(graph).__name__}")
    # non-scalar inputs and constants are named only when an op reads them (so the error
    # names the op) or the graph returns them
    env = {}
    for port in graph.inputs:
        if port.spec.shape == ():
            env[port.name] = _symbol(sp, port.name, port.spec.dtype)
    for name, value in graph.constants.items():
        if value.shape == ():
            env[name] = _number(sp, value[()], str(value.dtype))
    for node in graph.nodes:
        _scalar_only(graph, node, what)
        args = [env[v] for v in node.inputs]
        op = node.op
        if op in _UNARY:
            out = _UNARY[op](sp, *args)
        elif op in _BINARY:
            out = _BINARY[op](sp, *args)
        elif op == "select":
            cond, x, y = args
            out = sp.Piecewise((x, _truth(sp, cond)), (y, True))
        elif op == "convert":
            out = _convert(sp, args[0], graph.avals[node.inputs[0]].dtype, node.attrs["dtype"])
        elif op == "full":
            out = _number(sp, node.attrs["value"], node.attrs["dtype"])
        elif op in _SCALAR_IDENTITY and len(args) == 1:
            out = args[0]
        elif op == "einsum":  # every operand 0-d: their product
            out = sp.Mul(*args)
        else:
            raise TypeError(f"{what}: op {op!r} has no SymPy form here")
        env[node.outputs[0]] = out
    for port in graph.outputs:
        if port.name not in env:
            raise TypeError(
                f"{what}: output {port.name!r} is {port.spec}; only scalar (0-d) values convert"
                f" to SymPy"
            )
    return env


def _convert(sp, x, source, target):
    if target == "bool":
        return _truth(sp, x)
    if source == "bool":
        return sp.Piecewise((sp.Integer(1), x), (sp.Integer(0), True))
    if target.startswith("int") and not source.startswith("int"):
        return sp.sign(x) * sp.floor(sp.Abs(x))  # truncation toward 0, as astype
    if source == "complex128" and target != "complex128":
        return sp.re(x)
    return x  # between float dtypes (and int to float): the same number


def to_sympy(graph: Graph):
    """The graph as SymPy expressions: symbolic differentiation's starting point.

    Every input becomes a SymPy symbol named after it (``graph.input_names``; real for float
    inputs, integer for int ones, complex for complex128, plain for bool), every constant a
    SymPy number (integers and simple fractions exactly, other floats as `Float`), every op
    its SymPy counterpart: arithmetic, ``power``, ``exp``, ``log`` (``log1p`` and ``expm1``
    written out), the trigonometric and hyperbolic functions and their inverses, ``sqrt``,
    ``abs`` (`Abs`), ``sign``, ``floor``/``ceil``, ``maximum``/``minimum`` (`Max`/`Min`),
    ``logaddexp``, comparisons and logical ops (relationals and booleans), ``select``
    (`Piecewise`), ``convert`` (the same number between float dtypes); shape ops and
    reductions of a scalar are the scalar itself.

    Parameters
    ----------
    graph : gs.Graph
        A graph whose inputs, constants and values are scalars (0-d).

    Returns
    -------
    sympy.Expr or tuple of sympy.Expr
        One expression per output; a tuple when the graph has several.

    Raises
    ------
    TypeError
        `graph` is not a `gs.Graph`; an op has no SymPy form (``round``, ``isfinite``,
        control flow, ...) or works on a non-scalar value (``reduce_sum`` of a vector, a
        matmul): the message names the op; an output is a non-scalar input.
    ImportError
        SymPy is not installed (``pip install 'gradserve[symbolic]'``).

    Examples
    --------
    >>> graph = gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0)
    >>> gs.to_sympy(graph)
    x1*x2 + log(x1) - sin(x2)
    """
    env = _expressions(graph, "to_sympy")
    out = tuple(env[name] for name in graph.output_names)
    return out[0] if len(out) == 1 else out


def symbolic_derivative(graph: Graph, wrt=0):
    """The simplified symbolic derivative: ``sympy.simplify(sympy.diff(expr, x))`` of
    `to_sympy`'s expression.

    Parameters
    ----------
    graph : gs.Graph
        A graph `to_sympy` converts.
    wrt : int or str, optional
        The input to differentiate with respect to: its index (default 0, negative from the
        end) or its name; a float or complex input.

    Returns
    -------
    sympy.Expr or tuple of sympy.Expr
        The derivative of each output (a tuple when the graph has several), in the inputs'
        symbols: ``sympy.lambdify`` makes it a function.

    Raises
    ------
    TypeError
        As `to_sympy`; or `wrt` is neither an int nor a str, or names an input that is not
        float or complex.
    ValueError
        `wrt` is out of range or names no input.
    ImportError
        SymPy is not installed (``pip install 'gradserve[symbolic]'``).

    Examples
    --------
    >>> graph = gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0)
    >>> gs.symbolic_derivative(graph, wrt=0)
    x2 + 1/x1
    >>> gs.symbolic_derivative(graph, wrt="x2")
    x1 - cos(x2)
    """
    sp = _sympy()
    if not isinstance(graph, Graph):
        raise TypeError(f"symbolic_derivative takes a gs.Graph, got {type(graph).__name__}")
    names = graph.input_names
    if isinstance(wrt, str):
        if wrt not in names:
            raise ValueError(f"wrt: the graph has no input {wrt!r}; its inputs are {names}")
        index = names.index(wrt)
    elif isinstance(wrt, int) and not isinstance(wrt, bool):
        if not -len(names) <= wrt < len(names):
            raise ValueError(f"wrt: input {wrt} out of range for {len(names)} inputs")
        index = wrt % len(names)
    else:
        raise TypeError(f"wrt must be an input's index or name, got {wrt!r}")
    if graph.inputs[index].spec.dtype not in ("float64", "float32", "complex128"):
        raise TypeError(
            f"wrt: input {names[index]!r} is {graph.inputs[index].spec}, not a float or"
            f" complex input"
        )
    env = _expressions(graph, "symbolic_derivative")
    symbol = env[names[index]]
    out = tuple(sp.simplify(sp.diff(env[name], symbol)) for name in graph.output_names)
    return out[0] if len(out) == 1 else out


def expression_size(graph: Graph) -> tuple[int, int]:
    """How large the graph is written out as an expression tree, against the graph itself.

    A graph shares every value it computes once among all its uses; an expression tree
    (what symbolic differentiation manipulates) repeats a subexpression each time it is used.
    The tree's size is counted, never built (dynamic programming over the graph, in Python
    ints): a value's tree has one node for its op plus its operands' trees; inputs and
    constants are leaves of one node. Works on any graph (a control-flow op counts as one
    node, its subgraphs not entered); SymPy is not needed.

    Parameters
    ----------
    graph : gs.Graph

    Returns
    -------
    (int, int)
        The nodes of the expanded trees of the outputs (summed over the outputs), and the
        graph's nodes (``len(graph.nodes)``).

    Raises
    ------
    TypeError
        `graph` is not a `gs.Graph`.

    Examples
    --------
    >>> def f(x):
    ...     for _ in range(20):
    ...         x = gnp.sin(x) * gnp.cos(x)  # x used twice
    ...     return x
    >>> gs.expression_size(gs.trace(f, 1.0))  # the tree: 4 * 2**20 - 3 nodes
    (4194301, 60)
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"expression_size takes a gs.Graph, got {type(graph).__name__}")
    # size[v]: nodes of the tree that value v expands to, every use of a shared value
    # counted again (Python ints: they grow exponentially with the depth of the sharing)
    size = dict.fromkeys(graph.input_names, 1)
    size.update(dict.fromkeys(graph.constants, 1))
    for node in graph.nodes:
        total = 1 + sum(size[v] for v in node.inputs)
        for v in node.outputs:
            size[v] = total
    return sum(size[v] for v in graph.output_names), len(graph.nodes)
