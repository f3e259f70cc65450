"""Tracing: running a Python function on Tracers records a Graph.

`bind(op, *args, **attrs)` is the one door to every primitive: with a Tracer among the args
it records a node in the innermost open Builder, otherwise it computes with NumPy at once.
"""

from __future__ import annotations

import inspect
import threading

import numpy as np

from . import dtypes
from .errors import GraphError, TracerBoolError
from .graph import Graph, Node, Port, Spec
from .primitive import PRIMITIVES
from .pytree import flatten, flatten_with_path, unflatten
from .simplify import propagate, simplify, splat_of_constant, unbroadcast_operands

_state = threading.local()
_WIDEST = {"f": "float64", "i": "int64", "u": "int64", "c": "complex128"}

CONTROL_FLOW_HINT = (
    "Python control flow on a traced value is not recorded in the graph; "
    "use gs.cond, gs.while_loop, gs.fori_loop or gs.scan, or gnp.where"
)


def _stack() -> list:
    if not hasattr(_state, "builders"):
        _state.builders = []
    return _state.builders


class Builder:
    """Collects inputs, constants and nodes; `build(outputs)` makes the Graph."""

    def __init__(self, parent: Builder | None = None):
        self.parent = parent
        self.inputs: list[Port] = []
        self.constants: dict[str, np.ndarray] = {}
        self.nodes: list[Node] = []
        self._small_constants: dict = {}
        self._big_constants: dict = {}
        self.specs: dict[str, Spec] = {}  # every value's spec, by name
        self.producer: dict[str, Node] = {}  # the node that defines each value
        self.splats: dict[str, float] = {}  # values known to be one number everywhere
        self._computed: dict = {}  # (op, inputs, attrs) -> outputs, to share work
        self.captured: dict = {}  # enclosing builders' values read here
        self._count = 0

    def __enter__(self):
        _stack().append(self)
        return self

    def __exit__(self, *exc):
        _stack().pop()
        # Its Tracers refer to it and these caches to them: emptied, the builder and what it
        # recorded are freed as soon as nothing else refers to them, not by a later sweep of
        # the cycle collector (a derivative's builder holds thousands of Tracers).
        self._computed.clear()
        self._small_constants.clear()
        self._big_constants.clear()

    def _fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count - 1}"

    def input(self, name: str, spec: Spec) -> Tracer:
        self.inputs.append(Port(name, spec))
        self.specs[name] = spec
        return Tracer(self, name, spec)

    def tracer(self, name: str) -> Tracer:
        return Tracer(self, name, self.specs[name])

    def splat(self, spec: Spec, value: float) -> Tracer:
        """An array of `spec` filled with `value`: one scalar, broadcast (a view)."""
        scalar = self.add(
            PRIMITIVES["full"], (), {"shape": (), "dtype": spec.dtype, "value": float(value)}
        )
        if spec.shape == ():
            return scalar
        return self.add(PRIMITIVES["broadcast_to"], (scalar,), {"shape": spec.shape})

    def constant(self, value) -> Tracer:
        if isinstance(value, Tracer):
            return value
        array = np.asarray(value)
        try:
            dtypes.canonical(array.dtype)  # (dtype.name is slow)
        except TypeError:
            if array.dtype.kind in _WIDEST:
                array = array.astype(_WIDEST[array.dtype.kind])  # float16, uint8, ...: widened
        spec = Spec(array.shape, array.dtype)  # anything else: TypeError naming the dtype
        if array.size <= 16:
            key = (spec, array.tobytes())
            cache = self._small_constants
        else:
            key = id(value)
            cache = self._big_constants
        if key not in cache:
            name = self._fresh("%c")
            self.constants[name] = array
            self.specs[name] = spec
            splat = splat_of_constant(array)
            if splat is not None:
                self.splats[name] = splat
            cache[key] = (Tracer(self, name, spec), value)
        return cache[key][0]

    def add(self, prim, args, attrs) -> Tracer | tuple:
        inputs = [
            arg if isinstance(arg, Tracer) and arg.builder is self else self.capture(arg)
            for arg in args
        ]
        try:
            out = prim.shape(*[t.spec for t in inputs], **attrs)
        except (ValueError, TypeError, IndexError) as exc:
            raise GraphError(str(exc), f"node {len(self.nodes)} '{prim.name}'") from None
        several = isinstance(out, tuple)
        if not several:
            if prim.simplify is not None:
                simpler = simplify(self, prim, inputs, attrs, out)
                if simpler is not None:
                    return simpler
            if prim.elementwise and len(inputs) > 1:
                inputs = unbroadcast_operands(self, prim, inputs, out)
        names = tuple([t.name for t in inputs])
        key = (prim.name, names, tuple(sorted(attrs.items())) if attrs else ())
        known = self._computed.get(key)
        if known is not None:  # the same op on the same values: reuse it
            return known
        if several:
            tracers = tuple([Tracer(self, self._fresh("%"), spec) for spec in out])
        else:
            tracers = (Tracer(self, self._fresh("%"), out),)
        node = Node(prim.name, names, tuple([t.name for t in tracers]), attrs)
        self.nodes.append(node)
        for t in tracers:
            self.specs[t.name] = t.spec
            self.producer[t.name] = node
        if prim.splat_preserving or prim.splat is not None:
            propagate(self, prim, inputs, attrs, tracers[0])
        result = tracers if several else tracers[0]
        self._computed[key] = result
        return result

    def adopt(self, node: Node, args, specs) -> tuple:
        """Record `node`, a node of a valid graph, on `args` (Tracers of this builder with the
        specs its inputs have there; `specs`: those of its outputs there). That graph's
        checks ran its shape rule and its simplifications were taken when it was traced:
        neither runs again. Returns its outputs, a tuple."""
        names = tuple([a.name for a in args])
        key = (node.op, names, tuple(sorted(node.attrs.items())) if node.attrs else ())
        known = self._computed.get(key)
        if known is not None:
            return known if isinstance(known, tuple) else (known,)
        tracers = tuple([Tracer(self, self._fresh("%"), spec) for spec in specs])
        new = Node(node.op, names, tuple([t.name for t in tracers]), node.attrs)
        self.nodes.append(new)
        for t in tracers:
            self.specs[t.name] = t.spec
            self.producer[t.name] = new
        prim = PRIMITIVES[node.op]
        if prim.splat_preserving or prim.splat is not None:
            propagate(self, prim, args, node.attrs, tracers[0])
        self._computed[key] = tracers if prim.multiple_results else tracers[0]
        return tracers

    def forget(self, nodes):
        """Let no later node reuse (`add`'s sharing of work) these nodes, which the caller took
        out of `self.nodes`."""
        for node in nodes:
            key = (node.op, node.inputs, tuple(sorted(node.attrs.items())) if node.attrs else ())
            self._computed.pop(key, None)

    def capture(self, value) -> Tracer:
        """A value from outside this builder: a constant, or a Tracer of an enclosing builder.
        A subgraph reads an enclosing value through an extra input of its own (closure
        conversion); the control-flow node passes the value in."""
        if not isinstance(value, Tracer):
            return self.constant(value)
        if value.builder is self:
            return value
        builder = self.parent
        while builder is not None and builder is not value.builder:
            builder = builder.parent
        if builder is None:
            raise GraphError(
                "a traced value escaped the function that traced it (it belongs to another trace)",
                "tracing",
            )
        key = (id(value.builder), value.name)
        if key not in self.captured:
            self.captured[key] = (value, self.input(f"captured:{len(self.captured)}", value.spec))
        return self.captured[key][1]

    def build(self, outputs, *, internal=False) -> Graph:
        """The graph of the nodes recorded. `internal`: a graph the engine's own
        transformations traced (every shape rule ran as its nodes were recorded), whose
        validation does not run those rules again."""
        single = not isinstance(outputs, (tuple, list))
        outs = [self.capture(o) for o in ([outputs] if single else outputs)]
        return Graph(
            self.inputs,
            self.constants,
            self.nodes,
            [o.name for o in outs],
            _known=self.specs if internal else None,
        )


def current_builder() -> Builder | None:
    stack = _stack()
    return stack[-1] if stack else None


def bind(op: str, *args, **attrs):
    prim = PRIMITIVES[op]
    if any(isinstance(a, Tracer) for a in args):
        builder = current_builder()
        if builder is None:
            raise GraphError(
                "a traced value was used after the function that traced it "
                "returned; compute with it inside the traced function",
                "tracing",
            )
        return builder.add(prim, args, attrs)
    if not args and current_builder() is not None:  # `full` inside a trace: a node, not data
        return current_builder().add(prim, args, attrs)
    arrays = [np.asarray(a) for a in args]
    if prim.subgraphs:  # a body is checked against its operands as a traced call would be
        try:
            prim.shape(*[spec_of(a) for a in arrays], **attrs)
        except ValueError as exc:
            raise GraphError(f"{op}: {exc}", op) from None
    with np.errstate(all="ignore"):
        return prim.impl(*arrays, **attrs)


def spec_of(value) -> Spec:
    if isinstance(value, Spec):
        return value
    if isinstance(value, Tracer):
        return value.spec
    if isinstance(value, bool):
        return Spec((), "bool")
    if isinstance(value, int):
        return Spec((), "int64")
    if isinstance(value, float):
        return Spec((), "float64")
    if isinstance(value, complex):
        return Spec((), "complex128")
    if isinstance(value, (np.ndarray, np.generic)):
        return Spec(value.shape, value.dtype)
    raise TypeError(
        f"cannot trace with an argument of type {type(value).__name__}; "
        "give a number, a NumPy array or a gs.Spec"
    )


def parameter_names(fn, count: int) -> list[str]:
    names = []
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    for p in params:
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
        elif p.kind == p.VAR_POSITIONAL:
            names.extend(f"{p.name}_{i}" for i in range(count - len(names)))
    names = names[:count]
    names += [f"x{i}" for i in range(len(names), count)]
    return names


def trace(fn, *example_args) -> Graph:
    """Record `fn` applied to inputs shaped like `example_args` as a Graph.

    `fn` runs once, on `gs.Tracer` values that stand for its arguments; every `gradserve.numpy`
    function, operator and method it applies to them records a node. Python control flow on a
    traced value cannot be recorded: use `gs.cond`, `gs.while_loop`, `gs.fori_loop`,
    `gs.scan` or `gnp.where`.

    Parameters
    ----------
    fn : callable
        Takes one positional argument per example argument and returns one array, or a pytree
        of them (a tuple, list, dict, namedtuple, nested): the graph's outputs are its leaves,
        in order (dict keys sorted). The inputs are named after its parameters (``*args``
        gives args_0, args_1, ...; a callable without a signature x0, x1, ...).
    *example_args : number, ndarray, gs.Spec, or a pytree of them
        One per argument of `fn`, giving shapes and dtypes (not values): a Python bool, int,
        float or complex is a scalar of bool, int64, float64 or complex128; an array or NumPy
        scalar gives its own; a `gs.Spec` is itself. The dtype must be one gradserve carries:
        float64, float32, complex128, int32, int64 or bool. A pytree (tuple, list, dict,
        namedtuple) gives one graph input per leaf, named after the parameter and the path
        (``params.W``, ``params.b``), in the order of its leaves: the Engine and the Client
        take those leaves as the graph's arguments.

    Returns
    -------
    gs.Graph
        The recorded graph, validated.

    Raises
    ------
    TypeError
        An example argument is of another type or dtype.
    ValueError, IndexError
        A `gradserve.numpy` function was given a bad axis, shape or index, as NumPy raises.
    gs.TracerBoolError
        `fn` used a traced value where Python needs a concrete one (`if`, `while`, `bool()`,
        `float()`, ...).
    gs.GraphError
        An operation rejected its operands (shapes that do not broadcast, for example), or a
        traced value was used outside the function that traced it.
    gs.LimitError
        The graph has more nodes, or a value more elements, than ``gs.Limits()`` allows.

    Examples
    --------
    >>> graph = gs.trace(lambda x, w: gnp.tanh(x @ w), np.ones((4, 3)), gs.Spec((3,)))
    >>> graph
    <gs.Graph (x: float64[4, 3], w: float64[3]) -> 1 output(s), 2 nodes>
    >>> gs.Engine().evaluate(graph, np.ones((4, 3)), np.zeros(3))
    array([0., 0., 0., 0.])
    """
    names = parameter_names(fn, len(example_args))
    with Builder() as builder:
        arguments = []
        for name, example in zip(names, example_args):
            paths, leaves, treedef = flatten_with_path(example)
            inputs = [
                builder.input(".".join([name, *map(str, path)]), spec_of(leaf))
                for path, leaf in zip(paths, leaves)
            ]
            arguments.append(unflatten(treedef, inputs))
        outputs, treedef = flatten(fn(*arguments))
        return builder.build(outputs[0] if treedef.num_nodes == 1 else outputs)


class Tracer:
    """A value inside a function being traced (see `gs.trace`).

    It supports NumPy's operators, indexing and the usual array methods (``sum``, ``mean``,
    ``reshape``, ``T``, ``astype``, ...), each recording a node; `gradserve.numpy` functions
    take it as NumPy's take arrays, and so do NumPy's own functions and ufuncs (`np.sin(x)`,
    `np.sum(x, axis=0)`, `np.ones(3) + x`: NEP 13 and NEP 18 dispatch to `gradserve.numpy`).
    It has no concrete value: `bool()`, `float()` and conversion to a NumPy array raise
    `gs.TracerBoolError`.

    Attributes
    ----------
    shape : tuple of int
    dtype : numpy.dtype
    ndim : int
    size : int
    spec : gs.Spec
        Its shape and dtype.
    """

    __slots__ = ("builder", "name", "spec")
    __array_priority__ = 1000

    def __init__(self, builder, name, spec):
        self.builder = builder
        self.name = name
        self.spec = spec

    shape = property(lambda self: self.spec.shape)
    dtype = property(lambda self: np.dtype(self.spec.dtype))
    ndim = property(lambda self: len(self.spec.shape))
    size = property(lambda self: self.spec.size)

    def __repr__(self):
        return f"Tracer({self.name}: {self.spec})"

    def __bool__(self):
        raise TracerBoolError(f"bool() of traced value {self.name}. {CONTROL_FLOW_HINT}")

    def _concrete(self, *_):
        raise TracerBoolError(
            f"a traced value {self.name} has no concrete value while tracing. {CONTROL_FLOW_HINT}"
        )

    __float__ = __int__ = __index__ = __complex__ = _concrete

    def __array__(self, *_, **__):
        raise TracerBoolError(
            f"np.asarray() or np.array() of traced value {self.name}: it has no concrete value "
            "while tracing. Apply NumPy functions to it (np.sin(x), np.stack([x, y]), ...) or "
            "gradserve.numpy ones: they record into the graph; gs.Engine().evaluate(graph, ...) "
            f"gives values. {CONTROL_FLOW_HINT}"
        )

    # NumPy's dispatch protocols: np.sin(x), np.sum(x), ndarray + x, ... (engine/dispatch.py)
    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        from .dispatch import array_ufunc

        return array_ufunc(ufunc, method, inputs, kwargs)

    def __array_function__(self, func, types, args, kwargs):
        from .dispatch import array_function

        return array_function(func, types, args, kwargs)

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d traced array")
        return self.shape[0]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    __hash__ = object.__hash__
