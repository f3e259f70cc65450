"""Transformations of Python functions, with JAX's API and semantics: `grad`, `value_and_grad`,
`jacobian` (`jacfwd`, `jacrev`), `hessian`, `jvp`, `vjp`, `hvp`.

Each traces the function into a graph (`trace_body`: once per signature, cached), derives
the graph of what is asked with the engine's graph transformations (`transforms.jvp`, `vjp`,
`batch`; no loop tapes, so the derived graph holds public ops only) and then:

- on concrete arguments, evaluates that derived graph on a backend (a `gs.Engine`, by default
  one shared in-process engine, or a `gs.Client`);
- on traced arguments (inside `gs.trace`, another transformation, a loop body or a branch),
  replays the derived graph's nodes into the enclosing trace (`transforms.inline`), so the
  derivative is recorded like any other computation and can be differentiated again, saved
  and sent to a server.

Arguments and results are pytrees (engine/pytree.py). Python numbers are traced, as JAX does
(a float is a float64 scalar input, an int an int64 one), so `f(1.0)` and `f(2.0)` share a
trace; a new treedef, shape or dtype traces again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from . import dtypes
from . import numpy as gnp
from .arguments import coerce
from .basis import basis as _basis
from .graph import Graph
from .ops.bodies import trace_body
from .pytree import flatten, unflatten
from .tracing import Builder, Tracer, current_builder, spec_of
from .transforms import Program, batch, inline, prune, select_outputs
from .transforms import jvp as jvp_program
from .transforms import vjp as vjp_program

CACHE_SIZE = 256  # derived graphs kept per transformed function (least recently used dropped)

_default_lock = threading.Lock()
_default_engine = None


def _default_backend():
    global _default_engine
    with _default_lock:
        if _default_engine is None:
            from .engine import Engine

            _default_engine = Engine()
        return _default_engine


# ---- arguments ------------------------------------------------------------------------------


def _leaf(value):
    if isinstance(value, (Tracer, bool, int, float, complex, np.ndarray, np.generic)):
        return value
    return np.asarray(value)


def _flatten_args(args):
    """(leaves, per-argument treedefs, per-argument leaf ranges)."""
    leaves, defs, ranges = [], [], []
    for arg in args:
        arg_leaves, treedef = flatten(arg)
        ranges.append(range(len(leaves), len(leaves) + len(arg_leaves)))
        leaves.extend(_leaf(x) for x in arg_leaves)
        defs.append(treedef)
    return leaves, tuple(defs), ranges


def _traced(leaves) -> bool:
    return current_builder() is not None or any(isinstance(x, Tracer) for x in leaves)


def _argnums(argnums, n_args):
    one = isinstance(argnums, (int, np.integer)) and not isinstance(argnums, bool)
    nums = (argnums,) if one else tuple(argnums)
    out = []
    for i in nums:
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise TypeError(f"argnums must be an int or a sequence of ints, got {argnums!r}")
        if not -n_args <= i < n_args:
            raise ValueError(f"argnums {i} is out of range for {n_args} positional argument(s)")
        out.append(int(i) % n_args)
    return one, tuple(out)


def _differentiable(spec) -> bool:
    return dtypes.is_differentiable(spec.dtype)


class _Traced:
    """`fun` traced on leaves of `specs`: the flat graph (inputs: the leaves, then the
    enclosing values it reads), those values, and the treedef of what it returns."""

    def __init__(self, fun, arg_defs, ranges, specs, has_aux=False):
        def flat(*xs):
            args = [unflatten(d, xs[r.start : r.stop]) for d, r in zip(arg_defs, ranges)]
            out = fun(*args)
            if has_aux:
                if not isinstance(out, (tuple, list)) or len(out) != 2:
                    raise TypeError(
                        "has_aux=True: the function must return a pair (output, aux), got "
                        f"{type(out).__name__}"
                    )
                out = tuple(out)
            out_leaves, self.out_def = flatten(out)
            return [_leaf(x) for x in out_leaves]

        self.graph, self.captured, _ = trace_body(flat, specs)
        self.n = len(specs)
        self.specs = specs


# ---- the derived graphs ---------------------------------------------------------------------


def _compose(graph: Graph, parts) -> Graph:
    """A graph with `graph`'s inputs whose outputs are `parts(inputs)` (a list of values)."""
    with Builder() as builder:
        ins = [builder.input(p.name, p.spec) for p in graph.inputs]
        outs = parts(ins)
        return prune(Program(builder.build(list(outs)))).graph


def _vjp_graph(graph: Graph, wrt, *, seed_ones=False, outputs=None) -> Graph:
    """Inputs: the graph's, then one cotangent per differentiable output of `outputs` (all by
    default; none with `seed_ones`). Outputs: those outputs, then one cotangent per `wrt`."""
    program = Program(graph)
    if outputs is not None:
        program = select_outputs(program, outputs)
    return vjp_program(program, tuple(wrt), seed_ones=seed_ones).graph


def _jvp_graph(graph: Graph, wrt) -> Graph:
    """Inputs: the graph's, then one tangent per `wrt`. Outputs: the outputs, then tangents."""
    return jvp_program(Program(graph), tuple(wrt)).graph


def _jacobian_graph(graph: Graph, wrt, n_out, mode) -> Graph:
    """Outputs: block (k, j) = d output k / d input wrt[j], of shape out.shape + in.shape, for
    k over the first `n_out` outputs and j over `wrt`, row by row."""
    n_in = len(graph.inputs)
    outs = [p.spec for p in graph.outputs[:n_out]]
    program = select_outputs(Program(graph), range(n_out))

    def parts(ins):
        blocks = [[None] * len(wrt) for _ in outs]
        if mode == "fwd":
            for j, i in enumerate(wrt):
                spec = graph.inputs[i].spec
                tangent = select_outputs(jvp_program(program, (i,)), range(n_out, 2 * n_out))
                batched = batch(tangent, [False] * n_in + [True], spec.size, basis=n_in).graph
                for k, col in enumerate(inline(batched, ins + [_basis(spec)])):
                    col = gnp.moveaxis(col, 0, -1) if col.ndim > 1 else col
                    blocks[k][j] = gnp.reshape(col, outs[k].shape + spec.shape)
        else:
            for k, out in enumerate(outs):
                if not _differentiable(out):
                    for j, i in enumerate(wrt):
                        spec = graph.inputs[i].spec
                        blocks[k][j] = gnp.zeros(out.shape + spec.shape, spec.dtype)
                    continue
                row = select_outputs(
                    vjp_program(select_outputs(program, (k,)), wrt), range(1, 1 + len(wrt))
                )
                batched = batch(row, [False] * n_in + [True], out.size, basis=n_in).graph
                for j, rows in enumerate(inline(batched, ins + [_basis(out)])):
                    blocks[k][j] = gnp.reshape(rows, out.shape + graph.inputs[wrt[j]].spec.shape)
        return [b for row in blocks for b in row]

    return _compose(graph, parts)


# ---- running a derived graph ----------------------------------------------------------------


def _run(derived: Graph, inputs, backend, traced):
    """The derived graph's outputs, as a list: evaluated on `backend`, or recorded into the
    enclosing trace when `traced`."""
    if traced:
        return list(inline(derived, list(inputs)))
    if not derived.outputs:
        return []
    out = (backend or _default_backend()).evaluate(derived, *inputs)
    return list(out) if len(derived.outputs) > 1 else [out]


def _conform(values, specs, what):
    """Tangents or cotangents as leaves of `specs` (None: zeros; a differentiable leaf of
    another dtype is cast, as the backends convert an argument)."""
    out = []
    for k, (value, spec) in enumerate(zip(values, specs)):
        if value is None:
            out.append(np.zeros(spec.shape, spec.dtype))
            continue
        value = _leaf(value)
        have = spec_of(value) if isinstance(value, Tracer) else spec_of(np.asarray(value))
        if have.shape != spec.shape:
            raise ValueError(f"{what}: leaf {k} has shape {have.shape}, expected {spec.shape}")
        if have.dtype != spec.dtype:
            if isinstance(value, Tracer):
                value = gnp.astype(value, spec.dtype)
            else:  # as the backends convert an argument (a complex value for a real leaf: no)
                value = coerce(value, spec, f"{what} leaf {k}")
        out.append(value)
    return out


class _Cache:
    """A bounded LRU of traced signatures: key -> dict of what was derived for it."""

    def __init__(self, size=CACHE_SIZE):
        self.size = size
        self.entries: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key, make):
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None:
                self.entries.move_to_end(key)
                return entry
        entry = make()
        with self.lock:
            self.entries[key] = entry
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)
        return entry


class _Entry:
    """One signature: the traced function and the graphs derived from it (made on demand)."""

    def __init__(self, traced: _Traced):
        self.traced = traced
        self.derived: dict = {}
        self.lock = threading.Lock()

    def graph(self, key, make):
        with self.lock:
            if key not in self.derived:
                self.derived[key] = make(self.traced)
            return self.derived[key]


def _leaf_key(x):
    """What of a concrete leaf its trace depends on, cheaper to compute than its Spec."""
    if isinstance(x, (np.ndarray, np.generic)):
        return (x.shape, x.dtype)
    return type(x)


def _cell_id(cell):
    try:
        return id(cell.cell_contents)
    except ValueError:  # a cell not yet bound
        return None


def _entry(cache: _Cache | None, fun, arg_defs, ranges, leaves, has_aux=False) -> _Entry:
    def make():
        specs = [spec_of(x) for x in leaves]
        return _Entry(_Traced(fun, arg_defs, ranges, specs, has_aux))

    if cache is None:  # inside a trace: the function may read the enclosing trace's values
        return make()
    # values `fun` closes over are frozen into its trace: a cell bound to another object since
    # is another signature (arrays changed in place are not seen: pass them as arguments)
    cells = tuple(map(_cell_id, getattr(fun, "__closure__", None) or ()))
    return cache.get((arg_defs, cells, tuple(_leaf_key(x) for x in leaves)), make)


# ---- the transformed functions --------------------------------------------------------------


class _Transformed:
    """A transformed function: traces `fun` once per signature, caches the derived graph."""

    kind = ""

    def __init__(self, fun, argnums, backend, **options):
        if not callable(fun):
            raise TypeError(f"expected a callable, got {type(fun).__name__}")
        self.fun = fun
        self.argnums = argnums
        self.backend = backend
        self.options = options
        self._cache = _Cache()
        self.__wrapped__ = fun
        name = getattr(fun, "__name__", type(fun).__name__)
        self.__name__ = f"{self.kind}({name})"
        self.__qualname__ = self.__name__
        self.__doc__ = getattr(fun, "__doc__", None)

    def _key(self):
        argnums = self.argnums if isinstance(self.argnums, int) else tuple(self.argnums)
        return (self.kind, self.fun, argnums, self.backend, tuple(sorted(self.options.items())))

    def __eq__(self, other):
        return type(other) is type(self) and other._key() == self._key()

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return f"<gs.{self.kind} of {self.fun!r}, argnums={self.argnums!r}>"

    def __call__(self, *args):
        leaves, arg_defs, ranges = _flatten_args(args)
        one, nums = _argnums(self.argnums, len(args))
        traced = _traced(leaves)
        has_aux = self.options.get("has_aux", False)
        cache = None if traced else self._cache
        entry = _entry(cache, self.fun, arg_defs, ranges, leaves, has_aux)
        wrt = entry.graph(("wrt", nums), lambda t: self._wrt(t, nums, ranges))
        return self._apply(entry, leaves, arg_defs, ranges, one, nums, wrt, traced)

    def _wrt(self, traced: _Traced, nums, ranges):
        """The leaves differentiated: those of the arguments `nums`, each float or complex."""
        for a in nums:
            for i in ranges[a]:
                if not _differentiable(traced.specs[i]):
                    raise TypeError(
                        f"{self.kind} differentiates float or complex inputs only; argument "
                        f"{a} has a leaf of dtype {traced.specs[i].dtype}"
                    )
        return tuple(i for a in nums for i in ranges[a])

    def _grads(self, leaves_out, arg_defs, ranges, one, nums):
        """Per-leaf results (one per differentiated leaf) in the arguments' structures."""
        out, k = [], 0
        for a in nums:
            n = len(ranges[a])
            out.append(unflatten(arg_defs[a], leaves_out[k : k + n]))
            k += n
        return out[0] if one else tuple(out)


class _ValueAndGrad(_Transformed):
    kind = "value_and_grad"

    def _apply(self, entry, leaves, arg_defs, ranges, one, nums, wrt, traced):
        has_aux = self.options["has_aux"]

        def make(t: _Traced):
            out_def = t.out_def
            if has_aux:
                value_def, aux_def = out_def.children()
            else:
                value_def, aux_def = out_def, None
            g = t.graph
            n_value = value_def.num_leaves
            spec = g.outputs[0].spec if n_value else None
            if n_value != 1 or spec.shape != () or spec.dtype not in ("float64", "float32"):
                raise TypeError(
                    f"{self.kind} needs a function whose output is one real scalar; this one "
                    f"gives {[p.spec for p in g.outputs[:n_value]]}"
                )
            gradient = _vjp_graph(g, wrt, seed_ones=True, outputs=(0,))
            if has_aux:  # the value, the gradients, then aux's leaves
                n_aux = len(g.outputs) - 1
                gradient = _compose(
                    g,
                    lambda ins: list(inline(gradient, ins)) + list(inline(g, ins)[1 : 1 + n_aux]),
                )
            if not with_value:  # gs.grad: no value output (nor its nodes, when inlined)
                n = len(gradient.outputs)
                gradient = select_outputs(Program(gradient), range(1, n)).graph
            return gradient, aux_def

        with_value = self.kind == "value_and_grad"
        derived, aux_def = entry.graph(("grad", tuple(wrt)), make)
        outs = _run(derived, leaves + entry.traced.captured, self.backend, traced)
        if not with_value:
            outs = [None] + outs
        value, grads = outs[0], outs[1 : 1 + len(wrt)]
        grads = self._grads(grads, arg_defs, ranges, one, nums)
        if aux_def is None:
            return value, grads
        return (value, unflatten(aux_def, outs[1 + len(wrt) :])), grads


class _Grad(_ValueAndGrad):
    kind = "grad"

    def _apply(self, *a):
        result = super()._apply(*a)
        if self.options["has_aux"]:
            (_, aux), grads = result
            return grads, aux
        return result[1]


class _Jacobian(_Transformed):
    kind = "jacobian"

    def _apply(self, entry, leaves, arg_defs, ranges, one, nums, wrt, traced):
        mode = self.options["mode"]
        if mode not in ("auto", "fwd", "rev"):
            raise ValueError(f"mode must be 'fwd', 'rev' or 'auto', got {mode!r}")

        def make(t: _Traced):
            g = t.graph
            n_out = len(g.outputs)
            chosen = mode
            if mode == "auto":
                n_in = sum(g.inputs[i].spec.size for i in wrt)
                n_outs = sum(p.spec.size for p in g.outputs)
                chosen = "fwd" if n_in < n_outs else "rev"
            return _jacobian_graph(g, tuple(wrt), n_out, chosen)

        derived = entry.graph(("jacobian", tuple(wrt)), make)
        blocks = _run(derived, leaves + entry.traced.captured, self.backend, traced)
        n = len(wrt)
        rows = [
            self._grads(blocks[k * n : (k + 1) * n], arg_defs, ranges, one, nums)
            for k in range(len(blocks) // n if n else 0)
        ]
        return unflatten(entry.traced.out_def, rows)


# ---- the public API -------------------------------------------------------------------------


def value_and_grad(fun, argnums=0, has_aux=False, *, backend=None):
    """A function that gives `fun`'s value and its gradient, as JAX's ``value_and_grad``.

    Parameters
    ----------
    fun : callable
        Takes positional arguments that are pytrees (nested tuples, lists, dicts and
        namedtuples of arrays and numbers, and None) and returns a real scalar (with
        `has_aux`, a pair ``(scalar, aux)``). It is traced on `gs.Tracer` values once per
        signature (structure, shapes and dtypes of the arguments; a Python float is a float64
        scalar, so it is traced, not static) and the derived graph is cached (256 signatures).
    argnums : int or sequence of int, optional
        The arguments to differentiate with respect to (default 0); each leaf a float or
        complex.
    has_aux : bool, optional
        `fun` returns ``(output, aux)``; aux is evaluated, not differentiated, and returned.
    backend : gs.Engine or gs.Client, optional
        Where the derived graph runs on concrete arguments: default, one shared in-process
        `gs.Engine`. On traced arguments (inside `gs.trace` or another transformation) the
        derivative is recorded into the enclosing graph instead.

    Returns
    -------
    callable
        ``f(*args) -> (value, grad)``, ``((value, aux), grad)`` with `has_aux`; `grad` has
        the structure of the argument (`argnums` an int) or is a tuple of them.

    Examples
    --------
    >>> f = gs.value_and_grad(lambda p: gnp.sum(p["w"] ** 2) + p["b"])
    >>> value, g = f({"w": np.array([1.0, 2.0]), "b": 3.0})
    >>> float(value), g["w"], float(g["b"])
    (8.0, array([2., 4.]), 1.0)
    """
    return _ValueAndGrad(fun, argnums, backend, has_aux=bool(has_aux))


def grad(fun, argnums=0, has_aux=False, *, backend=None):
    """A function that gives the gradient of `fun`, as JAX's ``grad``.

    Parameters
    ----------
    fun : callable
        Returns a real scalar (with `has_aux`, a pair ``(scalar, aux)``); its arguments are
        pytrees. Traced once per signature, as for `gs.value_and_grad`.
    argnums : int or sequence of int, optional
        The arguments to differentiate with respect to (default 0).
    has_aux : bool, optional
        `fun` returns ``(output, aux)``; the result is then ``(grad, aux)``.
    backend : gs.Engine or gs.Client, optional
        Where it runs on concrete arguments (default: a shared in-process `gs.Engine`).

    Returns
    -------
    callable
        ``f(*args) -> grad`` with the structure of the argument(s) differentiated. Called on
        traced values it records the gradient into the enclosing trace, so it composes:
        ``gs.grad(gs.grad(gs.grad(gnp.sin)))(0.5) == -cos(0.5)``.

    Examples
    --------
    >>> d3 = gs.grad(gs.grad(gs.grad(gnp.sin)))
    >>> bool(np.isclose(d3(0.5), -np.cos(0.5)))
    True
    """
    return _Grad(fun, argnums, backend, has_aux=bool(has_aux))


def jacobian(fun, argnums=0, mode="auto", *, backend=None):
    """A function that gives the Jacobian of `fun`, as JAX's ``jacfwd`` / ``jacrev``.

    Parameters
    ----------
    fun : callable
        Takes pytrees and returns a pytree of arrays.
    argnums : int or sequence of int, optional
        The arguments to differentiate with respect to (default 0).
    mode : {"auto", "fwd", "rev"}, optional
        Forward mode (one batched JVP per input leaf), reverse mode (one batched VJP per output
        leaf) or "auto": forward when the inputs have fewer elements than the outputs.
    backend : gs.Engine or gs.Client, optional
        Where it runs on concrete arguments (default: a shared in-process `gs.Engine`).

    Returns
    -------
    callable
        ``f(*args)``: the output's structure, each leaf holding the argument's structure
        (a tuple of them for a sequence `argnums`) of blocks of shape
        ``out.shape + in.shape``.

    Examples
    --------
    >>> gs.jacobian(lambda x: x * x)(np.array([1.0, 2.0]))
    array([[2., 0.],
           [0., 4.]])
    """
    return _Jacobian(fun, argnums, backend, mode=mode)


def jacfwd(fun, argnums=0, *, backend=None):
    """`gs.jacobian` in forward mode.

    Parameters
    ----------
    fun, argnums, backend
        As for `gs.jacobian`.

    Returns
    -------
    callable
        As `gs.jacobian(fun, argnums, mode="fwd")`.
    """
    return _Jacobian(fun, argnums, backend, mode="fwd")


def jacrev(fun, argnums=0, *, backend=None):
    """`gs.jacobian` in reverse mode.

    Parameters
    ----------
    fun, argnums, backend
        As for `gs.jacobian`.

    Returns
    -------
    callable
        As `gs.jacobian(fun, argnums, mode="rev")`.
    """
    return _Jacobian(fun, argnums, backend, mode="rev")


def hessian(fun, argnums=0, *, backend=None):
    """A function that gives the Hessian of a scalar `fun`: ``jacfwd(jacrev(fun))``, as JAX.

    Parameters
    ----------
    fun : callable
        Returns a real scalar; its arguments are pytrees.
    argnums : int or sequence of int, optional
        The arguments to differentiate with respect to (default 0).
    backend : gs.Engine or gs.Client, optional
        Where it runs on concrete arguments (default: a shared in-process `gs.Engine`).

    Returns
    -------
    callable
        ``f(*args)``: blocks of shape ``in_i.shape + in_j.shape``, nested as the arguments'
        structures (twice; tuples of tuples for a sequence `argnums`).

    Examples
    --------
    >>> gs.hessian(lambda x: gnp.sum(x**3))(np.array([1.0, 2.0]))
    array([[ 6.,  0.],
           [ 0., 12.]])
    """
    return _Jacobian(_Jacobian(fun, argnums, None, mode="rev"), argnums, backend, mode="fwd")


_call_caches: OrderedDict = OrderedDict()
_call_lock = threading.Lock()


def _call_cache(kind, fun) -> _Cache:
    """The signature cache of `gs.jvp(fun, ...)` / `gs.vjp(fun, ...)`, per function (LRU over
    256 functions)."""
    key = (kind, fun)
    with _call_lock:
        cache = _call_caches.get(key)
        if cache is None:
            cache = _call_caches[key] = _Cache()
            while len(_call_caches) > CACHE_SIZE:
                _call_caches.popitem(last=False)
        else:
            _call_caches.move_to_end(key)
        return cache


def _check_tree(tree, arg_defs, what):
    leaves, defs, _ = _flatten_args(tree)
    if defs != arg_defs:
        raise TypeError(f"{what} must have the structure of the primals: {arg_defs}, got {defs}")
    return leaves


def jvp(fun, primals, tangents, *, backend=None):
    """`fun`'s value and its directional derivative, as JAX's ``jvp`` (forward mode).

    Parameters
    ----------
    fun : callable
        Takes pytrees and returns a pytree of arrays.
    primals : tuple or list
        The arguments, one per positional parameter of `fun`.
    tangents : tuple or list
        One per primal, of the same structures and shapes (the tangent of an integer leaf is
        ignored).
    backend : gs.Engine or gs.Client, optional
        Where it runs on concrete arguments (default: a shared in-process `gs.Engine`).

    Returns
    -------
    tuple
        ``(out, tangent_out)``, both with the structure `fun` returns.

    Examples
    --------
    >>> out, t = gs.jvp(gnp.sin, (0.0,), (2.0,))
    >>> float(out), float(t)
    (0.0, 2.0)
    """
    return _jvp(fun, primals, tangents, backend, True)


def _jvp(fun, primals, tangents, backend, with_primal):
    primals, tangents = tuple(primals), tuple(tangents)
    leaves, arg_defs, ranges = _flatten_args(primals)
    tangent_leaves = _check_tree(tangents, arg_defs, "tangents")
    traced = _traced(leaves + tangent_leaves)
    entry = _entry(None if traced else _call_cache("jvp", fun), fun, arg_defs, ranges, leaves)
    specs = entry.traced.specs
    wrt = tuple(i for i, s in enumerate(specs) if _differentiable(s))

    def make(t: _Traced):
        derived = _jvp_graph(t.graph, wrt)
        if with_primal:
            return derived
        n = len(t.graph.outputs)  # hvp: the tangents only (nor the primal's nodes, inlined)
        return select_outputs(Program(derived), range(n, 2 * n)).graph

    derived = entry.graph(("jvp", wrt, with_primal), make)
    ts = _conform([tangent_leaves[i] for i in wrt], [specs[i] for i in wrt], "tangents")
    outs = _run(derived, leaves + entry.traced.captured + ts, backend, traced)
    out_def = entry.traced.out_def
    if not with_primal:
        return unflatten(out_def, outs)
    n = len(outs) // 2
    return unflatten(out_def, outs[:n]), unflatten(out_def, outs[n:])


def vjp(fun, *primals, backend=None):
    """`fun`'s value and a function that pulls cotangents back, as JAX's ``vjp``.

    Parameters
    ----------
    fun : callable
        Takes pytrees and returns a pytree of arrays.
    *primals
        The arguments.
    backend : gs.Engine or gs.Client, optional
        Where it runs on concrete arguments (default: a shared in-process `gs.Engine`).

    Returns
    -------
    tuple
        ``(out, vjp_fn)``: `out` with the structure `fun` returns; ``vjp_fn(cotangent)``
        takes a cotangent of that structure and returns a tuple with one cotangent per
        primal, of its structure (zeros for integer leaves). `vjp_fn` may be called any
        number of times; each call runs the reverse pass (and the forward pass it reads)
        again. Made on traced primals, it must be called inside the same trace.

    Examples
    --------
    >>> out, pullback = gs.vjp(lambda x, y: x * y, 2.0, 3.0)
    >>> [float(c) for c in pullback(1.0)]
    [3.0, 2.0]
    """
    leaves, arg_defs, ranges = _flatten_args(primals)
    traced = _traced(leaves)
    entry = _entry(None if traced else _call_cache("vjp", fun), fun, arg_defs, ranges, leaves)
    t = entry.traced
    inputs = leaves + t.captured
    out = unflatten(t.out_def, _run(t.graph, inputs, backend, traced))
    specs = t.specs
    wrt = tuple(i for i, s in enumerate(specs) if _differentiable(s))
    out_specs = [p.spec for p in t.graph.outputs]

    def vjp_fn(cotangent):
        ct_leaves, got = flatten(cotangent)
        if got != t.out_def:
            raise TypeError(
                f"the cotangent must have the structure of the output: {t.out_def}, got {got}"
            )
        keep = [k for k, s in enumerate(out_specs) if _differentiable(s)]
        cts = _conform([ct_leaves[k] for k in keep], [out_specs[k] for k in keep], "cotangent")
        derived = entry.graph(("vjp", wrt), lambda t: _vjp_graph(t.graph, wrt))
        result = _run(derived, inputs + cts, backend, traced)[len(out_specs) :]
        grads = dict(zip(wrt, result))
        flat = [grads[i] if i in grads else np.zeros(s.shape, s.dtype) for i, s in enumerate(specs)]
        return tuple(unflatten(d, flat[r.start : r.stop]) for d, r in zip(arg_defs, ranges))

    return out, vjp_fn


def hvp(fun, primals, tangents, *, backend=None):
    """The Hessian of a scalar `fun` times a vector: forward over reverse,
    ``jvp(grad(fun, argnums=all), primals, tangents)[1]``.

    Parameters
    ----------
    fun : callable
        Returns a real scalar; its arguments are pytrees.
    primals : tuple or list
        The arguments.
    tangents : tuple or list
        The vector: one per primal, of the same structures.
    backend : gs.Engine or gs.Client, optional
        Where it runs on concrete arguments (default: a shared in-process `gs.Engine`).

    Returns
    -------
    tuple
        One product per primal, of its structure.

    Examples
    --------
    >>> gs.hvp(lambda x: gnp.sum(x**3), (np.array([1.0, 2.0]),), (np.ones(2),))
    (array([ 6., 12.]),)
    """
    primals = tuple(primals)
    gradient = _Grad(fun, tuple(range(len(primals))), None, has_aux=False)
    return _jvp(gradient, primals, tangents, backend, False)
