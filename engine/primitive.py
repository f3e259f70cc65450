"""The primitive registry. Each op is declared once, in one place (engine/ops/*.py), with all
that the tracer, the simplifier, the transformations and the planner know about it: none of
them matches op names.

Rules (callables):
- `impl(*arrays, **attrs)`: the NumPy forward computation;
- `shape(*specs, **attrs) -> Spec`: the shape and dtype rule (raises ShapeError); a tuple of
  Specs for ops with `multiple_results`;
- `jvp(primals, tangents, out, **attrs)`: the forward-mode rule, written with the engine's own
  front end so that it is itself differentiable; a tangent of None is a symbolic zero;
- `jvp_full(primals, tangents, **attrs) -> (outputs, tangents)`: used instead of `jvp` when
  a tangent comes in, by ops whose JVP also changes how the primal is computed (a loop that
  keeps its carries for the reverse pass);
- for ops linear in some inputs, `transpose(ct, *args, **attrs)`: one cotangent per input, where
  the linear inputs arrive as `Linear` placeholders; reverse mode is JVP plus transposition;
- `batch(args, batched, **attrs)`: the rule for a leading batch axis (Jacobians in one pass);
  every output gets it, unless the rule returns `PartlyBatched` (a loop whose primal carry
  does not depend on the batched inputs keeps it unbatched);
- `batch_scaled(args, batched, built, **attrs)`: tried before `batch` in a Jacobian's batched
  pass, where an operand may be an `ops.one_hot.Scaled` (a batched value kept symbolic: the
  one-hot basis, or a batched value times an unbatched one): the output (a Tracer or a
  Scaled), or None to have the operands built (`built(k)`: operand k as a Tracer) and `batch`
  applied;
- `retype(args, **attrs) -> outputs`: for ops with subgraphs, which trace their bodies again
  for arguments of other dtypes (the complex step);
- `complex_step(args, **attrs) -> outputs`: the holomorphic-friendly extension the complex
  step evaluates instead of the op where an operand was real in the graph and is complex only
  because of the step (abs: x * sign(Re x)); an operand complex in the graph itself keeps the
  op's own (NumPy's) meaning;
- `simplify(args, splats, out, **attrs)`: an algebraic shortcut taken while tracing, so that no
  node is recorded: one of `args` when the output equals it (x * 1), a number when the output
  holds that number everywhere (2 * 3), else None. `splats[i]` is the number filling `args[i]`
  everywhere, or None when that is not known;
- `scale_factor(args, splats) -> (number, index) or None`: the op multiplies operand `index` by
  `number` (negative: -1; a product with a splat): the simplifier makes two such ops in a row
  one, when the product of their numbers is exact;
- `splat(**attrs)`: the number filling the output everywhere, from the attributes alone
  (`full`): the simplifier tracks it;
- `add_into(total, *args, **attrs)`: `total + op(*args)` without making the op's output
  (scatter_add adds its updates into `total`); reverse mode sums cotangents with it.
- `kernel(*specs, **attrs)`: `impl` specialized to operands of those specs, or None: the
  planner calls it once per node and the plan runs what it returns (einsum works out its
  matmul once, not on every call: loop bodies run it once per iteration).

Flags:
- `elementwise`: applies elementwise and broadcasts its operands by itself; cheap, so the
  planner may move it into the backward pass rather than keep its result on the tape;
- `view`: the output aliases its first input's memory (reshape, transpose, ...);
- `ufunc` (a NumPy ufunc computing `impl`) or `inplace(*args, **attrs)` (may overwrite
  args[0]): the planner may have the op write into an input that dies at that step;
- `fresh`: `impl` always returns a new writable array that nothing else refers to, so a later
  op may write into it (true of every op with a `ufunc`); or `fresh(node) -> bool` when that
  depends on the node (einsum: fresh with several operands; with one it may give a view);
- `constant`: the output depends on the attributes alone (no inputs): the planner computes
  small ones once, when it compiles the plan, like graph constants;
- `splat_preserving`: the output holds one number everywhere when the first input does (the
  same number): shape ops such as reshape and broadcast_to;
- `pure_broadcast`: the output is the first input broadcast to the output's shape, nothing
  else: an elementwise op reading it may read the first input instead;
- `multiple_results`: the op gives a tuple of outputs (control flow);
- `internal`: the engine records the op in graphs it builds itself (the loop-tape ops of
  reverse mode) and no client may send it: decoding a graph from bytes (`Graph.from_bytes`,
  the server) rejects it, in subgraphs too.

Attribute kinds: int, float, str, bool, ints, floats, graph (a subgraph), and dtype: a str that
is one of the six dtype names (never an alias such as "double" or ">f8", nor "tape").

Documentation: `doc`, an `OpDoc`, holds what the rules cannot say about the op on the wire: a
one-line description, the operands' names in order, the result in words, what each attribute
means, and who records the op. `python -m gradserve.engine.opdoc` renders every op's `doc`
(with the attribute kinds, arity and dtype rules read from the primitive itself) into
docs/wire.md.

Ops with subgraph attributes (control flow) differentiate their bodies inside their `jvp`,
`jvp_full` and `transpose` rules, so those rules also get `loop_tapes`, a keyword: whether the
enclosing transformation differentiates loops through loop tapes (under a tape budget), to be
passed on to the transformations of the bodies.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from . import dtypes
from .graph import Graph

ATTR_KINDS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, float),
    "str": lambda v: isinstance(v, str),
    "bool": lambda v: isinstance(v, bool),
    "ints": lambda v: (
        isinstance(v, tuple) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    ),
    "floats": lambda v: isinstance(v, tuple) and all(isinstance(x, float) for x in v),
    "graph": lambda v: isinstance(v, Graph),
    "dtype": lambda v: isinstance(v, str) and v in dtypes.SUPPORTED,
}


class ShapeError(ValueError):
    """A shape rule's rejection; the checker wraps it in a GraphError naming the node."""


class OpDoc(NamedTuple):
    """An op's documentation (docs/wire.md), beside its rules.

    - `summary`: one line, what the op computes;
    - `operands`: the operands' names in order; a name starting with "*" stands for any number
      of operands (the last such group takes what the others leave);
    - `result`: the result's shape (and dtype, where the probe below does not show it), in words;
    - `attrs`: attribute name -> its meaning (every attribute; the kind comes from `attrs`);
    - `role`: who records the op: "front end" (gradserve.numpy, gs.nn, the control-flow
      functions) or "derivative" (only derivative rules; a client may still send it); ops
      no client may send are flagged `internal` on the primitive;
    - `probe(dtype) -> (specs, attrs)`: operands and attributes of `dtype` to call the shape
      rule with, so that the generated table shows the result dtype for each operand dtype;
      None for ops where that says nothing (control flow).
    """

    summary: str
    operands: tuple = ("x",)
    result: str = ""
    attrs: dict = {}  # noqa: RUF012  (never mutated)
    role: str = "front end"
    probe: Callable | None = None


ROLES = ("front end", "derivative")


class PartlyBatched(NamedTuple):
    """What a batch rule returns when only some outputs have the batch axis."""

    values: tuple
    batched: tuple  # one bool per output


class Linear(NamedTuple):
    """Stands for a linear input in a transpose rule: only its spec is known."""

    spec: object

    @property
    def shape(self):
        return self.spec.shape

    @property
    def dtype(self):
        return self.spec.dtype


class Primitive:
    def __init__(
        self,
        name: str,
        *,
        impl: Callable,
        shape: Callable,
        arity=1,
        attrs=None,
        jvp=None,
        transpose=None,
        batch=None,
        batch_scaled=None,
        view: bool = False,
        elementwise: bool = False,
        ufunc=None,
        inplace=None,
        multiple_results: bool = False,
        jvp_full=None,
        retype=None,
        complex_step=None,
        simplify=None,
        scale_factor=None,
        splat=None,
        add_into=None,
        kernel=None,
        fresh=False,
        constant: bool = False,
        splat_preserving: bool = False,
        pure_broadcast: bool = False,
        internal: bool = False,
        doc: OpDoc | None = None,
    ):
        self.name = name
        self.impl = impl
        self.shape = shape
        self.arity = (arity, arity) if isinstance(arity, int) else arity  # (min, max or None)
        self.attrs = dict(attrs or {})
        self.jvp = jvp
        self.transpose = transpose
        self.batch = batch
        self.batch_scaled = batch_scaled
        self.view = view
        self.elementwise = elementwise
        self.ufunc = ufunc
        self.inplace = inplace
        self.multiple_results = multiple_results
        self.jvp_full = jvp_full
        self.retype = retype
        self.complex_step = complex_step
        self.simplify = simplify
        self.scale_factor = scale_factor
        self.splat = splat
        self.add_into = add_into
        self.kernel = kernel
        self.fresh = fresh
        self.constant = constant
        self.splat_preserving = splat_preserving
        self.pure_broadcast = pure_broadcast
        self.internal = internal
        self.doc = doc
        # ops with subgraphs (control flow) get the transformation's options in their rules
        self.subgraphs = tuple(a for a, kind in self.attrs.items() if kind == "graph")

    def gives_fresh(self, node) -> bool:
        """Whether `node`'s output is a new array nothing else refers to (see `fresh`)."""
        if self.ufunc is not None:
            return True
        return self.fresh(node) if callable(self.fresh) else self.fresh

    def __repr__(self):
        return f"<primitive {self.name}>"


PRIMITIVES: dict[str, Primitive] = {}


def primitive(name: str, **kwargs) -> Primitive:
    if name in PRIMITIVES:
        raise RuntimeError(f"primitive {name!r} registered twice")
    prim = PRIMITIVES[name] = Primitive(name, **kwargs)
    return prim
