"""The primitive registry. Each op is declared once, in one place (engine/ops/*.py), with:

- `impl(*arrays, **attrs)`: the NumPy forward computation;
- `shape(*specs, **attrs) -> Spec`: the shape and dtype rule (raises ShapeError);
- `jvp(primals, tangents, out, **attrs)`: the forward-mode rule, written with the engine's own
  front end so that it is itself differentiable; a tangent of None is a symbolic zero;
- for ops linear in some inputs, `transpose(ct, *args, **attrs)`: one cotangent per input, where
  the linear inputs arrive as `Linear` placeholders; reverse mode is JVP plus transposition;
- `batch(args, batched, **attrs)`: the rule for a leading batch axis (Jacobians in one pass).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

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
}


class ShapeError(ValueError):
    """A shape rule's rejection; the checker wraps it in a GraphError naming the node."""


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
        view: bool = False,
        elementwise: bool = False,
        ufunc=None,
        inplace=None,
        multiple_results: bool = False,
        jvp_full=None,
        retype=None,
    ):
        self.name = name
        self.impl = impl
        self.shape = shape
        self.arity = (arity, arity) if isinstance(arity, int) else arity  # (min, max or None)
        self.attrs = dict(attrs or {})
        self.jvp = jvp
        self.transpose = transpose
        self.batch = batch
        self.view = view  # output aliases its first input's memory (reshape, transpose, ...)
        self.elementwise = elementwise  # cheap to recompute: the planner may move it later
        # Buffer reuse: a NumPy ufunc computing impl (the planner may pass out= an input that
        # dies at this step), or `inplace(*args, **attrs)` that may overwrite args[0].
        self.ufunc = ufunc
        self.inplace = inplace
        # Ops with a tuple of outputs (control flow); their shape rules return tuples.
        self.multiple_results = multiple_results
        # `jvp_full(primals, tangents, **attrs) -> (outputs, tangents)`: for ops whose JVP also
        # changes how the primal is computed (a loop that keeps its carries for reverse mode).
        self.jvp_full = jvp_full
        # `retype(args, **attrs) -> outputs`: ops with subgraphs re-trace their bodies for
        # arguments of other dtypes (the complex step).
        self.retype = retype

    def __repr__(self):
        return f"<primitive {self.name}>"


PRIMITIVES: dict[str, Primitive] = {}


def primitive(name: str, **kwargs) -> Primitive:
    if name in PRIMITIVES:
        raise RuntimeError(f"primitive {name!r} registered twice")
    prim = PRIMITIVES[name] = Primitive(name, **kwargs)
    return prim
