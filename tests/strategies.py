"""Hypothesis strategies for structure-aware fuzzing, shared by tests/test_fuzz.py (the short CI
run) and fuzz/run.py (the long run, which imports this file by path).

Three layers:
- `cases()`: a VALID graph with valid arguments. Every public op of the registry has a
  generator (`OP_CASES`; `test_fuzz.py` checks none is missing), each drawing shapes, dtypes,
  attributes and, for some operands, constants; control flow (`cond`, `scan`, `while_loop`,
  `checkpoint`) is traced with small bodies. A case may be "scalarized" (its first output
  summed to a real scalar) so that the gradient methods apply.
- `mutated_graph_bytes()`: a valid graph's encoding mutated as bytes (flip, set, insert,
  delete, truncate, splice, extend, duplicate, concatenate messages) or as fields (op names,
  attribute kinds and values, value names, declared shapes and dtypes, tensor data, subgraph
  contents, huge and negative numbers, duplicates, cycles, node order).
- `requests()`: a (method, request bytes) pair for every RPC of gradserve.v1.Gradients, valid
  or mutated: the graph inside mutated, argnums out of range, wrong arity, unknown or
  malformed digests, mismatched tensors, bad modes, or the serialized request's bytes.
"""

from __future__ import annotations

import hashlib
import string
from typing import NamedTuple

import numpy as np
from gradserve.engine.graph import Graph, Node, Port, Spec
from gradserve.engine.primitive import PRIMITIVES
from gradserve.v1 import graph_pb2
from gradserve.v1 import service_pb2 as spb
from hypothesis import HealthCheck, reject, settings
from hypothesis import strategies as st

import gradserve as gs
import gradserve.numpy as gnp
from gradserve.protocol import METHODS, to_tensor

DTYPES = ("float64", "float32", "complex128", "int32", "int64", "bool")
INEXACT = ("float64", "float32", "complex128")
REAL = ("float64", "float32")
# Ops the engine makes for itself (reverse mode under a tape budget): not part of the public
# op set a client builds graphs from; the mutations still put them on the wire.
INTERNAL_OPS = tuple(sorted(n for n, p in PRIMITIVES.items() if p.internal))
PUBLIC_OPS = tuple(sorted(n for n in PRIMITIVES if n not in INTERNAL_OPS))
CONTROL_OPS = ("cond", "scan", "while_loop", "checkpoint")
LINALG_OPS = (
    "solve",
    "det",
    "slogdet",
    "cholesky",
    "eigh",
    "eig",
    "svd",
    "qr",
    "svd_full",
    "qr_complete",
)
LOOP_OPS = ("scan", "while_loop", "scan_record", "while_record", "loop_tape")


# Settings profiles: "fuzz-ci" is deterministic (tests/test_fuzz.py scales max_examples per
# test); "fuzz-long" is fuzz/run.py's, random unless it is given a seed.
_QUIET = [HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large]
settings.register_profile(
    "fuzz-ci", derandomize=True, deadline=None, database=None, suppress_health_check=_QUIET
)
settings.register_profile(
    "fuzz-long", deadline=None, database=None, suppress_health_check=_QUIET, print_blob=True
)


class Case(NamedTuple):
    """A valid graph, arguments for it, and the op it was generated for."""

    op: str
    graph: Graph
    args: tuple


# ---- arrays -------------------------------------------------------------------------------------


def sample(spec: Spec, rng) -> np.ndarray:
    """An argument for `spec`: integers are 0 (a valid index on any non-empty axis)."""
    if spec.dtype in ("int32", "int64"):
        return np.zeros(spec.shape, spec.dtype)
    if spec.dtype == "bool":
        return rng.random(spec.shape) > 0.5
    if spec.dtype == "complex128":
        return rng.normal(size=spec.shape) + 1j * rng.normal(size=spec.shape)
    return rng.normal(size=spec.shape).astype(spec.dtype)


def shapes(min_dims=0, max_dims=3, min_side=0, max_side=3):
    return st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims).map(
        tuple
    )


@st.composite
def broadcastable(draw, shape):
    """A shape that broadcasts to `shape`: a suffix of it, some sides replaced by 1."""
    keep = draw(st.integers(0, len(shape)))
    suffix = shape[len(shape) - keep :]
    return tuple(1 if draw(st.booleans()) and draw(st.booleans()) else d for d in suffix)


# ---- one valid graph per op --------------------------------------------------------------------


class _Builder:
    """A graph under construction: operands become inputs or constants."""

    def __init__(self, draw, rng):
        self.draw, self.rng = draw, rng
        self.inputs, self.constants, self.nodes = [], {}, []

    def operand(self, spec: Spec, *, constant=None, value=None) -> str:
        if constant is None:
            constant = self.draw(st.integers(0, 4)) == 0
        if constant or value is not None:
            name = f"c{len(self.constants)}"
            self.constants[name] = sample(spec, self.rng) if value is None else value
        else:
            name = f"x{len(self.inputs)}"
            self.inputs.append(Port(name, spec))
        return name

    def node(self, op, inputs, attrs=None, count=1):
        outs = tuple(f"v{len(self.nodes)}_{k}" for k in range(count))
        self.nodes.append(Node(op, tuple(inputs), outs, dict(attrs or {})))
        return outs

    def graph(self, outputs) -> Graph:
        return Graph(self.inputs, self.constants, self.nodes, list(outputs))


def _probe_dtypes(op):
    """The dtypes an attribute-free op accepts (all operands of that dtype), from its rule."""
    prim = PRIMITIVES[op]
    ok = []
    for dtype in DTYPES:
        specs = [Spec((2,), dtype)] * prim.arity[0]
        if op == "select":
            specs = [Spec((2,), "bool"), Spec((2,), dtype), Spec((2,), dtype)]
        try:
            prim.shape(*specs)
        except (ValueError, TypeError):
            continue
        ok.append(dtype)
    return tuple(ok)


ELEMENTWISE = tuple(
    n
    for n in PUBLIC_OPS
    if not PRIMITIVES[n].attrs and PRIMITIVES[n].arity[0] in (1, 2) and n not in LINALG_OPS
) + ("select",)
ELEMENTWISE_DTYPES = {op: _probe_dtypes(op) for op in ELEMENTWISE}


def _elementwise(b, op):
    draw = b.draw
    dtypes = ELEMENTWISE_DTYPES[op]
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(shapes())
    arity = PRIMITIVES[op].arity[0]
    if op == "select":
        specs = [Spec(draw(broadcastable(shape)), "bool"), Spec(shape, dtype)]
        specs.append(Spec(draw(broadcastable(shape)), dtype))
    else:
        specs = [Spec(shape, dtype)]
        for _ in range(arity - 1):
            other = draw(st.sampled_from(dtypes)) if draw(st.booleans()) else dtype
            specs.append(Spec(draw(broadcastable(shape)), other))
        if arity == 2 and draw(st.booleans()):
            specs.reverse()
    return b.node(op, [b.operand(s) for s in specs])


def _axes(draw, ndim):
    return tuple(sorted(draw(st.sets(st.integers(0, max(ndim - 1, 0)), max_size=ndim))))


def _reduction(b, op):
    draw = b.draw
    dtypes = {"logsumexp": INEXACT, "reduce_max": DTYPES, "reduce_min": DTYPES}.get(op, DTYPES)
    nonempty = op in ("reduce_max", "reduce_min", "argmax", "argmin", "logsumexp")
    spec = Spec(draw(shapes(min_side=1 if nonempty else 0)), draw(st.sampled_from(dtypes)))
    if op in ("argmax", "argmin"):
        axes = (
            () if not spec.ndim or draw(st.booleans()) else (draw(st.integers(0, spec.ndim - 1)),)
        )
    else:
        axes = _axes(draw, spec.ndim) if spec.ndim else ()
    return b.node(op, [b.operand(spec)], {"axes": axes, "keepdims": draw(st.booleans())})


def _cumsum(b, op):
    spec = Spec(b.draw(shapes(min_dims=1)), b.draw(st.sampled_from(DTYPES)))
    return b.node(op, [b.operand(spec)], {"axis": b.draw(st.integers(0, spec.ndim - 1))})


def _flip(b, op):
    spec = Spec(b.draw(shapes()), b.draw(st.sampled_from(DTYPES)))
    return b.node(op, [b.operand(spec)], {"axes": _axes(b.draw, spec.ndim) if spec.ndim else ()})


def _transpose(b, op):
    spec = Spec(b.draw(shapes()), b.draw(st.sampled_from(DTYPES)))
    perm = tuple(b.draw(st.permutations(range(spec.ndim))))
    return b.node(op, [b.operand(spec)], {"perm": perm})


def _reshape(b, op):
    draw = b.draw
    spec = Spec(draw(shapes(max_dims=4)), draw(st.sampled_from(DTYPES)))
    dims = list(spec.shape)
    draw(st.randoms(use_true_random=False)).shuffle(dims)
    out = []
    for d in dims:  # merge some neighbours, insert some ones
        if out and draw(st.booleans()):
            out[-1] *= d
        else:
            out.append(d)
        if draw(st.integers(0, 5)) == 0:
            out.append(1)
    return b.node(op, [b.operand(spec)], {"shape": tuple(out)})


def _broadcast_to(b, op):
    draw = b.draw
    target = draw(shapes())
    spec = Spec(draw(broadcastable(target)), draw(st.sampled_from(DTYPES)))
    return b.node(op, [b.operand(spec)], {"shape": target})


def _concatenate(b, op):
    draw = b.draw
    shape = list(draw(shapes(min_dims=1)))
    dtype = draw(st.sampled_from(DTYPES))
    axis = draw(st.integers(0, len(shape) - 1))
    names = []
    for _ in range(draw(st.integers(1, 3))):
        shape[axis] = draw(st.integers(0, 3))
        names.append(b.operand(Spec(tuple(shape), dtype)))
    return b.node(op, names, {"axis": axis})


def _convert(b, op):
    spec = Spec(b.draw(shapes()), b.draw(st.sampled_from(DTYPES)))
    return b.node(op, [b.operand(spec)], {"dtype": b.draw(st.sampled_from(DTYPES))})


def _full(b, op):
    draw = b.draw
    value = draw(st.sampled_from([0.0, 1.0, -2.5, 3.0, float("inf"), float("nan"), 1e300]))
    attrs = {"shape": draw(shapes()), "dtype": draw(st.sampled_from(DTYPES)), "value": value}
    return b.node(op, [], attrs)


EINSUMS = (
    "ij,jk->ik",
    "i,i->",
    "ij->ji",
    "ii->i",
    "i,j->ij",
    "bij,bjk->bik",
    "ij->",
    "ij,ij->ij",
    "i->i",
    "->",
    ",->",
    "ijk->kji",
    "ij,j->i",
)


def _einsum(b, op):
    draw = b.draw
    subscripts = draw(st.sampled_from(EINSUMS))
    sizes = {c: draw(st.integers(0, 3)) for c in string.ascii_lowercase[:12]}
    dtype = draw(st.sampled_from(INEXACT + ("int64",)))
    ins = subscripts.split("->")[0].split(",")
    names = [b.operand(Spec(tuple(sizes[c] for c in term), dtype)) for term in ins]
    return b.node(op, names, {"subscripts": subscripts})


@st.composite
def _index_key(draw, shape, rng):
    """A NumPy index into `shape` (ints, slices, None, Ellipsis, concrete index arrays)."""
    key = []
    arrays = 0
    for n in shape:
        kind = draw(st.integers(0, 3 if n else 1))
        if kind == 0:
            start = draw(st.one_of(st.none(), st.integers(-4, 4)))
            stop = draw(st.one_of(st.none(), st.integers(-4, 4)))
            step = draw(st.sampled_from([None, 1, 2, -1, -2, 3]))
            key.append(slice(start, stop, step))
        elif kind == 1:
            key.append(slice(None))
        elif kind == 2:
            key.append(draw(st.integers(-n, n - 1)))
        elif arrays < 2:
            arrays += 1
            key.append(rng.integers(-n, n, size=draw(shapes(max_dims=2))))
        else:
            key.append(draw(st.integers(0, n - 1)))
        if draw(st.integers(0, 6)) == 0:
            key.append(None)
    if key and draw(st.integers(0, 5)) == 0:
        key[draw(st.integers(0, len(key) - 1))] = Ellipsis
    return tuple(key)


def _getitem_node(b):
    """A traced getitem of a fresh operand (its index attribute canonical), rebuilt here so
    that index arrays are inputs or constants; returns (x spec, index, array names, out spec)."""
    draw = b.draw
    spec = Spec(draw(shapes(min_dims=1)), draw(st.sampled_from(DTYPES)))
    key = draw(_index_key(spec.shape, b.rng))
    traced = gs.trace(lambda x: x[key], spec)
    node = next((n for n in traced.nodes if n.op == "getitem"), None)
    if node is None or node.inputs[0] != traced.input_names[0]:
        reject()  # a plain view, simplified away
    arrays = []
    for name in node.inputs[1:]:  # index arrays: constants, or inputs (zeros when sampled)
        value = traced.constants[name]
        if b.draw(st.booleans()):
            arrays.append(b.operand(Spec(value.shape, value.dtype), value=value))
        else:
            arrays.append(b.operand(Spec(value.shape, value.dtype), constant=False))
    return spec, node.attrs["index"], arrays, traced.avals[node.outputs[0]]


def _getitem(b, op):
    spec, index, arrays, _ = _getitem_node(b)
    x = b.operand(spec, constant=False)
    return b.node(op, [x, *arrays], {"index": index})


def _scatter_add(b, op):
    spec, index, arrays, out = _getitem_node(b)
    updates = b.operand(out, constant=False)
    return b.node(op, [updates, *arrays], {"shape": spec.shape, "index": index})


def _add_at(b, op):
    spec, index, arrays, out = _getitem_node(b)
    base = b.operand(spec)
    updates = b.operand(out)
    return b.node(op, [base, updates, *arrays], {"index": index})


# control flow: traced with small bodies ---------------------------------------------------------

BODY_FNS = {
    "sin": gnp.sin,
    "tanh": gnp.tanh,
    "square": lambda v: v * v,
    "half": lambda v: v * 0.5,
    "exp_neg": lambda v: gnp.exp(-v),
    "cumsum": lambda v: gnp.cumsum(v, axis=0) if v.ndim else v + 1.0,
    "flip": lambda v: gnp.flip(v) if v.ndim else -v,
    "sum_keep": lambda v: v + gnp.sum(v),
}


def _control(b, op):
    """A traced graph whose only interesting node is `op`: returns the whole Graph."""
    draw = b.draw
    dtype = draw(st.sampled_from(REAL + ("complex128",) if op != "while_loop" else REAL))
    shape = draw(shapes(max_dims=2, max_side=3))
    f = BODY_FNS[draw(st.sampled_from(sorted(BODY_FNS)))]
    g = BODY_FNS[draw(st.sampled_from(sorted(BODY_FNS)))]
    outer = draw(st.booleans())  # the body reads a value of the enclosing graph
    if op == "cond":
        pred_kind = draw(st.sampled_from(["bool", "int64", "float64"]))

        def fn(x, y, p):
            c = p > 0 if pred_kind == "float64" else p
            return gs.cond(c, lambda v: f(v) * (y if outer else 1.0), g, x)

        pred = Spec((), pred_kind)
        return gs.trace(fn, Spec(shape, dtype), Spec(shape, dtype), pred)
    if op == "checkpoint":

        def fn(x, y):
            return gs.checkpoint(lambda v: g(f(v) + (y if outer else 0.0)))(x)

        return gs.trace(fn, Spec(shape, dtype), Spec(shape, dtype))
    if op == "scan":
        n = draw(st.integers(0, 4))
        reverse = draw(st.booleans())
        with_xs = draw(st.booleans())

        def fn(c, xs, y):
            def step(carry, x):
                new = f(carry) + (x if with_xs else 0.0) * (y if outer else 1.0)
                return new, g(carry)

            return gs.scan(step, c, xs if with_xs else None, length=n, reverse=reverse)

        return gs.trace(fn, Spec(shape, dtype), Spec((n, *shape), dtype), Spec(shape, dtype))
    # while_loop: a counter to a small bound, with a float carry
    bound = draw(st.integers(0, 4))

    def fn(x, y):
        def body(c):
            return c[0] + 1, f(c[1]) + (y if outer else 0.0)

        return gs.while_loop(lambda c: c[0] < bound, body, (0, x))[1]

    return gs.trace(fn, Spec(shape, dtype), Spec(shape, dtype))


def _custom(b, op):
    """A traced custom_jvp or custom_vjp function of one array: returns the whole Graph."""
    draw = b.draw
    dtype = draw(st.sampled_from(REAL))
    shape = draw(shapes(max_dims=2, max_side=3))
    f = BODY_FNS[draw(st.sampled_from(sorted(BODY_FNS)))]
    if op == "custom_jvp_call":
        fun = gs.custom_jvp(lambda v: f(v))
        fun.defjvp(lambda primals, tangents: (f(primals[0]), tangents[0] * 2.0))
    else:
        fun = gs.custom_vjp(lambda v: f(v))
        fun.defvjp(lambda v: (f(v), ()), lambda residuals, ct: (ct * 2.0,))
    return gs.trace(fun, Spec(shape, dtype))


def _linalg(b, op):
    """A traced gnp.linalg function of a stack of square matrices: returns the whole Graph."""
    draw = b.draw
    dtype = draw(st.sampled_from((*REAL, "complex128") if op == "eig" else REAL))
    n = draw(st.integers(1, 3))
    stack = draw(shapes(max_dims=1, max_side=2))
    a = Spec((*stack, n, n), dtype)
    if op in ("svd_full", "qr_complete"):  # tall (wide too for svd): where "full" differs
        extra = draw(st.integers(1, 2))
        wide = op == "svd_full" and draw(st.booleans())
        a = Spec((*stack, n, n + extra) if wide else (*stack, n + extra, n), dtype)
    if op == "solve":
        return gs.trace(gnp.linalg.solve, a, Spec((*stack, n, draw(st.integers(1, 2))), dtype))
    fn = {
        "det": gnp.linalg.det,
        "slogdet": lambda m: tuple(gnp.linalg.slogdet(m)),
        "cholesky": gnp.linalg.cholesky,
        "eigh": lambda m: tuple(gnp.linalg.eigh(m)),
        "svd": lambda m: tuple(gnp.linalg.svd(m)),
        "qr": lambda m: tuple(gnp.linalg.qr(m)),
        "eig": lambda m: tuple(gnp.linalg.eig(m)),
        "svd_full": lambda m: tuple(gnp.linalg.svd(m)),
        "qr_complete": lambda m: tuple(gnp.linalg.qr(m, mode="complete")),
    }[op]
    return gs.trace(fn, a)


OP_CASES = {
    **dict.fromkeys(ELEMENTWISE, _elementwise),
    **dict.fromkeys(
        ("reduce_sum", "reduce_prod", "reduce_max", "reduce_min", "logsumexp"), _reduction
    ),
    "argmax": _reduction,
    "argmin": _reduction,
    "cumsum": _cumsum,
    "argsort": _cumsum,  # one array of any dtype, one axis
    "flip": _flip,
    "transpose": _transpose,
    "reshape": _reshape,
    "broadcast_to": _broadcast_to,
    "concatenate": _concatenate,
    "convert": _convert,
    "full": _full,
    "einsum": _einsum,
    "getitem": _getitem,
    "scatter_add": _scatter_add,
    "add_at": _add_at,
    **dict.fromkeys(CONTROL_OPS, _control),
    **dict.fromkeys(("custom_jvp_call", "custom_vjp_call"), _custom),
    **dict.fromkeys(LINALG_OPS, _linalg),
}


def _scalarize(graph: Graph) -> Graph:
    """`graph` with one more step: its first output summed (and made real) to a float scalar,
    the only output, so that value_and_grad, hessian and check_grad apply."""
    out = graph.outputs[0]
    nodes = list(graph.nodes)
    name = out.name
    spec = out.spec
    if spec.dtype != "float64":
        nodes.append(Node("convert", (name,), ("s_real",), {"dtype": "float64"}))
        name = "s_real"
    if spec.ndim:
        axes = tuple(range(spec.ndim))
        nodes.append(Node("reduce_sum", (name,), ("s_sum",), {"axes": axes, "keepdims": False}))
        name = "s_sum"
    return Graph(graph.inputs, graph.constants, nodes, [name])


@st.composite
def cases(draw, ops=PUBLIC_OPS):
    """A valid graph built around one op of `ops`, with valid arguments."""
    op = draw(st.sampled_from(ops))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b = _Builder(draw, rng)
    try:
        if op in CONTROL_OPS or op in LINALG_OPS or op in ("custom_jvp_call", "custom_vjp_call"):
            graph = OP_CASES[op](b, op)
        else:
            outs = OP_CASES[op](b, op)
            graph = b.graph(outs)
    except gs.GraphError:  # a combination the rules refuse (rare): not a valid case
        reject()
    if draw(st.booleans()):
        graph = _scalarize(graph)
    args = tuple(sample(p.spec, rng) for p in graph.inputs)
    return Case(op, graph, args)


# ---- mutating bytes ------------------------------------------------------------------------------

_VARINT_EDGES = [
    b"\xff\xff\xff\xff\x0f",
    b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
    b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
    b"\x80",
    b"\x00",
]


@st.composite
def mutate_bytes(draw, data: bytes, other: bytes = b"") -> bytes:
    """1-4 byte-level edits of `data`; `other` is another valid message to splice from."""
    b = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(
            st.sampled_from(
                [
                    "flip",
                    "set",
                    "insert",
                    "delete",
                    "truncate",
                    "splice",
                    "extend",
                    "duplicate",
                    "concat",
                    "varint",
                ]
            )
        )
        at = draw(st.integers(0, max(len(b) - 1, 0)))
        if kind == "flip" and b:
            b[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and b:
            b[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        elif kind == "insert":
            b[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete" and b:
            del b[at : at + draw(st.integers(1, 16))]
        elif kind == "truncate":
            del b[at:]
        elif kind == "splice" and other:
            start = draw(st.integers(0, len(other) - 1))
            b[at:] = other[start:]
        elif kind == "extend":  # a field that may be valid, or garbage, at the end
            tag = draw(st.sampled_from([0x0A, 0x12, 0x1A, 0x22, 0x08, 0x10, 0x2A, 0xFA]))
            payload = draw(st.binary(max_size=12))
            b += bytes([tag, len(payload)]) + payload
        elif kind == "duplicate" and b:
            end = min(len(b), at + draw(st.integers(1, 64)))
            b[at:at] = b[at:end]
        elif kind == "concat":  # protobuf merges concatenated messages: repeated fields double
            b += other or bytes(b)
        elif kind == "varint":
            b[at:at] = draw(st.sampled_from(_VARINT_EDGES))
    return bytes(b)


# ---- mutating fields -----------------------------------------------------------------------------

BAD_OPS = [
    *INTERNAL_OPS,
    "",
    "nonexistent",
    "Add",
    "add ",
    "__class__",
    "sin\x00",
    "é",
    "x" * 300,
    "impl",
]
BAD_DTYPES = [
    "",
    "float16",
    "uint8",
    "int8",
    "complex64",
    "object",
    "O",
    "U8",
    "S3",
    "V8",
    "f8",
    "<f8",
    ">f8",
    "i4",
    "?",
    "tape",
    "datetime64",
    "float128",
    "xx",
    "float64\x00",
]
HUGE = [
    -1,
    -(2**31),
    2**31,
    2**32 + 1,
    2**40,
    2**62,
    2**63 - 1,
    -(2**63),
    10**6,
    10**9,
]
BAD_FLOATS = [float("nan"), float("inf"), -float("inf"), 1e308, -0.0, 5e-324, 2.0**63]
BAD_STRS = [
    "",
    "ij->",
    "i,i->i",
    "->",
    "ab,bc->ac",
    "a->aa",
    "...",
    "ii",
    "i->j",
    "float64",
    "int8",
    "tape",
    "ij,jk,kl->il",
    "i" * 60 + "->",
    "aA->",
    "i,->",
    "\x00",
]


def _names(g: graph_pb2.Graph):
    return (
        [i.name for i in g.inputs]
        + [c.name for c in g.constants]
        + [o for n in g.nodes for o in n.outputs]
    )


def _subgraphs(g: graph_pb2.Graph):
    """Every graph message inside `g` (g included), depth first."""
    out = [g]
    for n in g.nodes:
        for a in n.attributes:
            if a.WhichOneof("value") == "graph":
                out += _subgraphs(a.graph)
    return out


def _pick(draw, seq):
    return seq[draw(st.integers(0, len(seq) - 1))]


def _mutate_attribute(draw, a: graph_pb2.Attribute):
    kind = draw(st.sampled_from(["value", "kind", "clear", "rename", "huge_list", "empty_list"]))
    current = a.WhichOneof("value")
    if kind == "value":
        if current == "i":
            a.i = draw(st.one_of(st.sampled_from(HUGE), st.integers(-4, 8)))
        elif current == "f":
            a.f = draw(st.sampled_from(BAD_FLOATS))
        elif current == "s":
            a.s = draw(st.sampled_from(BAD_STRS + [*DTYPES, *BAD_DTYPES]))
        elif current == "b":
            a.b = not a.b
        elif current == "ints":
            vals = list(a.ints.values) or [0]
            vals[draw(st.integers(0, len(vals) - 1))] = draw(
                st.one_of(st.sampled_from(HUGE), st.integers(-4, 8))
            )
            if draw(st.booleans()):
                vals.append(draw(st.integers(-4, 8)))
            a.ints.values[:] = vals
        elif current == "floats":
            a.floats.values.append(draw(st.sampled_from(BAD_FLOATS)))
        elif current == "graph":
            a.graph.CopyFrom(_mutate_fields_once(draw, a.graph))
    elif kind == "kind":  # the same name, another kind of value
        other = draw(st.sampled_from(["i", "f", "s", "b", "ints", "floats", "graph"]))
        if other == "i":
            a.i = draw(st.integers(-3, 3))
        elif other == "f":
            a.f = 1.5
        elif other == "s":
            a.s = "float64"
        elif other == "b":
            a.b = True
        elif other == "ints":
            a.ints.values[:] = draw(st.lists(st.integers(-2, 4), max_size=4))
        elif other == "floats":
            a.floats.values[:] = [0.5]
        else:
            a.graph.CopyFrom(graph_pb2.Graph())
    elif kind == "clear":
        a.ClearField(current) if current else None
    elif kind == "rename":
        a.name = draw(st.sampled_from(["", "axes", "axis", "shape", "body", "x", "index"]))
    elif kind == "huge_list":
        a.ints.values[:] = [draw(st.sampled_from([0, 1, 2, -1, 2**40]))] * draw(
            st.sampled_from([64, 1000, 4096])
        )
    else:
        a.ints.values[:] = []


def _mutate_value_info(draw, v: graph_pb2.ValueInfo):
    kind = draw(st.sampled_from(["shape", "huge", "many_dims", "dtype", "name"]))
    if kind == "shape":
        v.shape[:] = draw(st.lists(st.integers(-2, 5), max_size=4))
    elif kind == "huge":
        shape = list(v.shape) or [1]
        shape[draw(st.integers(0, len(shape) - 1))] = draw(st.sampled_from(HUGE))
        v.shape[:] = shape
    elif kind == "many_dims":
        v.shape[:] = [draw(st.sampled_from([0, 1, 2, 2**31]))] * draw(
            st.sampled_from([33, 65, 200])
        )
    elif kind == "dtype":
        v.dtype = draw(st.sampled_from(DTYPES + tuple(BAD_DTYPES)))
    else:
        v.name = draw(st.sampled_from(["", "x" * 257, "v0_0", "x0", "c0", "\x00", "é"]))


def _mutate_tensor(draw, t: graph_pb2.Tensor):
    kind = draw(st.sampled_from(["data_short", "data_long", "dtype", "shape", "huge", "empty"]))
    if kind == "data_short" and t.data:
        t.data = t.data[: draw(st.integers(0, len(t.data) - 1))]
    elif kind == "data_long":
        t.data += draw(st.binary(min_size=1, max_size=17))
    elif kind == "dtype":
        t.dtype = draw(st.sampled_from(DTYPES + tuple(BAD_DTYPES)))
    elif kind == "shape":
        t.shape[:] = draw(st.lists(st.integers(-2, 6), max_size=4))
    elif kind == "huge":
        t.shape[:] = draw(
            st.sampled_from([[2**31, 2**31], [2**62, 4], [2**63 - 1], [-(2**63)], [10**12]])
        )
    else:
        t.ClearField("data")


FIELD_MUTATIONS = (
    "op",
    "input",
    "output",
    "attribute",
    "drop_attribute",
    "dup_attribute",
    "add_attribute",
    "drop_input",
    "add_input",
    "add_output",
    "cycle",
    "swap_nodes",
    "reverse_nodes",
    "drop_node",
    "dup_node",
    "value_info",
    "dup_value_info",
    "drop_value_info",
    "graph_output",
    "dup_output",
    "constant_tensor",
    "dup_constant",
    "constant_name",
    "subgraph",
)


def _mutate_fields_once(draw, g: graph_pb2.Graph) -> graph_pb2.Graph:
    g = graph_pb2.Graph.FromString(g.SerializeToString())
    kind = draw(st.sampled_from(FIELD_MUTATIONS))
    names = _names(g) + ["", "undefined", "x" * 300]
    node = _pick(draw, g.nodes) if g.nodes else None
    if kind == "op" and node:
        node.op = draw(st.sampled_from(list(PUBLIC_OPS) + BAD_OPS))
    elif kind == "input" and node and node.inputs:
        node.inputs[draw(st.integers(0, len(node.inputs) - 1))] = _pick(draw, names)
    elif kind == "output" and node and node.outputs:
        node.outputs[draw(st.integers(0, len(node.outputs) - 1))] = _pick(draw, names)
    elif kind == "attribute" and node and node.attributes:
        _mutate_attribute(draw, _pick(draw, node.attributes))
    elif kind == "drop_attribute" and node and node.attributes:
        del node.attributes[draw(st.integers(0, len(node.attributes) - 1))]
    elif kind == "dup_attribute" and node and node.attributes:
        node.attributes.append(_pick(draw, node.attributes))
    elif kind == "add_attribute" and node:
        node.attributes.append(
            graph_pb2.Attribute(name=draw(st.sampled_from(["extra", "axes", "body"])), i=1)
        )
    elif kind == "drop_input" and node and node.inputs:
        del node.inputs[draw(st.integers(0, len(node.inputs) - 1))]
    elif kind == "add_input" and node:
        for _ in range(draw(st.sampled_from([1, 1, 2, 50]))):
            node.inputs.append(_pick(draw, names))
    elif kind == "add_output" and node:
        node.outputs.append(draw(st.sampled_from(["extra", *node.outputs, ""])))
    elif kind == "cycle" and node and node.outputs:  # a node reading its own or a later output
        later = [o for n in g.nodes[list(g.nodes).index(node) :] for o in n.outputs]
        if node.inputs:
            node.inputs[0] = _pick(draw, later)
        else:
            node.inputs.append(_pick(draw, later))
    elif kind == "swap_nodes" and len(g.nodes) > 1:
        i, j = draw(st.integers(0, len(g.nodes) - 1)), draw(st.integers(0, len(g.nodes) - 1))
        a, b = graph_pb2.Node(), graph_pb2.Node()
        a.CopyFrom(g.nodes[i])
        b.CopyFrom(g.nodes[j])
        g.nodes[i].CopyFrom(b)
        g.nodes[j].CopyFrom(a)
    elif kind == "reverse_nodes":
        nodes = [graph_pb2.Node.FromString(n.SerializeToString()) for n in g.nodes][::-1]
        del g.nodes[:]
        g.nodes.extend(nodes)
    elif kind == "drop_node" and node:
        g.nodes.remove(node)
    elif kind == "dup_node" and node:
        g.nodes.insert(draw(st.integers(0, len(g.nodes))), node)
    elif kind == "value_info" and (g.inputs or g.outputs):
        _mutate_value_info(draw, _pick(draw, list(g.inputs) + list(g.outputs)))
    elif kind == "dup_value_info" and g.inputs:
        g.inputs.append(_pick(draw, g.inputs))
    elif kind == "drop_value_info" and (g.inputs or g.outputs):
        field = g.inputs if g.inputs and draw(st.booleans()) else g.outputs
        if field:
            del field[draw(st.integers(0, len(field) - 1))]
    elif kind == "graph_output" and g.outputs:
        _pick(draw, g.outputs).name = _pick(draw, names)
    elif kind == "dup_output" and g.outputs:
        g.outputs.append(_pick(draw, g.outputs))
    elif kind == "constant_tensor" and g.constants:
        _mutate_tensor(draw, _pick(draw, g.constants).value)
    elif kind == "dup_constant" and g.constants:
        g.constants.append(_pick(draw, g.constants))
    elif kind == "constant_name" and g.constants:
        _pick(draw, g.constants).name = _pick(draw, names)
    elif kind == "subgraph":
        subs = _subgraphs(g)[1:]
        if subs:
            _pick(draw, subs).CopyFrom(_mutate_fields_once(draw, _pick(draw, subs)))
    return g


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(tag: int, payload: bytes) -> bytes:
    return bytes([tag]) + _varint(len(payload)) + payload


def nest(data: bytes, depth: int, op: str = "checkpoint") -> bytes:
    """The graph `data` as the body of a `checkpoint` node, `depth` levels deep (encoded by
    hand: protobuf's Python objects refuse messages past 100 levels)."""
    g = graph_pb2.Graph.FromString(data)
    shell = graph_pb2.Graph(inputs=g.inputs, outputs=g.outputs).SerializeToString()
    node = graph_pb2.Node(
        op=op, inputs=[i.name for i in g.inputs], outputs=[o.name for o in g.outputs]
    ).SerializeToString()
    for _ in range(depth):
        attribute = _field(0x0A, b"body") + _field(0x42, data)  # name = 1, graph = 8
        data = shell + _field(0x1A, node + _field(0x22, attribute))  # nodes = 3, attributes = 4
    return data


@st.composite
def mutate_fields(draw, data: bytes) -> bytes:
    """1-3 structured edits of a valid graph's message; sometimes nested in checkpoints, a few
    or very many levels deep."""
    g = graph_pb2.Graph.FromString(data)
    for _ in range(draw(st.integers(1, 3))):
        g = _mutate_fields_once(draw, g)
    data = g.SerializeToString()
    if draw(st.integers(0, 9)) == 0:
        data = nest(data, draw(st.sampled_from([1, 2, 30, 99, 100, 101, 400])))
    return data


@st.composite
def mutated_graph_bytes(draw, ops=PUBLIC_OPS):
    """(case, bytes): a valid case's graph encoding, mutated by bytes or by fields."""
    case = draw(cases(ops))
    data = case.graph.to_bytes()
    if draw(st.booleans()):
        other = draw(cases(ops)).graph.to_bytes() if draw(st.booleans()) else data
        return case, draw(mutate_bytes(data, other))
    return case, draw(mutate_fields(data))


# ---- requests -----------------------------------------------------------------------------------


def tensor_refs(arrays):
    return [spb.TensorRef(tensor=to_tensor(np.asarray(a))) for a in arrays]


def _float_indices(graph):
    return [i for i, p in enumerate(graph.inputs) if p.spec.dtype in INEXACT]


def _real_float_indices(graph):
    return [i for i, p in enumerate(graph.inputs) if p.spec.dtype in REAL]


def valid_request(method: str, case: Case, draw=None):
    """The request message of `method` for `case` (valid unless the graph does not suit the
    method, e.g. a gradient of a non-scalar output: then a client error is the answer)."""
    graph, args = case.graph, case.args
    ref = spb.GraphRef(body=graph.to_bytes())
    rng = np.random.default_rng(len(args))
    floats = _float_indices(graph)
    nums = spb.Argnums(indices=floats or [0], is_tuple=True)
    if draw is not None and floats and draw(st.booleans()):
        nums = spb.Argnums(indices=[draw(st.sampled_from(floats))], is_tuple=False)
    tangents = [sample(p.spec, rng) for p in graph.inputs]
    if method == "Evaluate":
        return spb.EvaluateRequest(graph=ref, args=tensor_refs(args))
    if method == "ValueAndGrad":
        return spb.ValueAndGradRequest(graph=ref, args=tensor_refs(args), argnums=nums)
    if method == "Vjp":
        cts = [sample(p.spec, rng) for p in graph.outputs]
        return spb.VjpRequest(graph=ref, primals=tensor_refs(args), cotangents=tensor_refs(cts))
    if method == "Jvp":
        return spb.JvpRequest(graph=ref, primals=tensor_refs(args), tangents=tensor_refs(tangents))
    if method == "Jacobian":
        mode = draw(st.sampled_from(["fwd", "rev", "auto"])) if draw else "auto"
        return spb.JacobianRequest(graph=ref, args=tensor_refs(args), argnums=nums, mode=mode)
    if method == "Hvp":
        return spb.HvpRequest(graph=ref, primals=tensor_refs(args), tangents=tensor_refs(tangents))
    if method == "Hessian":
        return spb.HessianRequest(graph=ref, args=tensor_refs(args), argnums=nums)
    if method == "CheckGrad":
        how = draw(st.sampled_from(["central", "forward", "complex"])) if draw else "central"
        return spb.CheckGradRequest(graph=ref, args=tensor_refs(args), method=how)
    raise ValueError(method)


def _arg_fields(req):
    """The repeated TensorRef fields of a request."""
    return [
        getattr(req, f)
        for f in ("args", "primals", "tangents", "cotangents")
        if f in req.DESCRIPTOR.fields_by_name
    ]


def _fake_digest(draw):
    return draw(
        st.sampled_from(
            [
                hashlib.sha256(b"never sent").hexdigest(),
                "0" * 64,
                "F" * 64,  # upper case: not a digest
                "abc",
                "",
                "g" * 64,
                "0" * 65,
                "é" * 64,
            ]
        )
    )


REQUEST_MUTATIONS = (
    "argnums",
    "argnums_int_many",
    "drop_arg",
    "add_arg",
    "arg_shape",
    "arg_dtype",
    "arg_data",
    "arg_huge",
    "arg_empty_ref",
    "arg_digest",
    "arg_remember",
    "arg_special",
    "arg_ints",
    "graph_digest",
    "graph_none",
    "graph_fields",
    "graph_bytes",
    "mode",
    "request_bytes",
)


def _mutate_request(draw, req, case: Case):
    """One structured edit of a request message; returns bytes (some edits act on bytes)."""
    kind = draw(st.sampled_from(REQUEST_MUTATIONS))
    fields = [f for f in _arg_fields(req) if len(f)] or _arg_fields(req)
    field = _pick(draw, fields)
    ref = _pick(draw, field) if len(field) else None
    if kind == "argnums" and "argnums" in req.DESCRIPTOR.fields_by_name:
        req.argnums.indices[:] = draw(
            st.lists(st.one_of(st.sampled_from(HUGE), st.integers(-5, 5)), max_size=4)
        )
        req.argnums.is_tuple = draw(st.booleans())
    elif kind == "argnums_int_many" and "argnums" in req.DESCRIPTOR.fields_by_name:
        req.argnums.is_tuple = False
        req.argnums.indices[:] = draw(st.sampled_from([[], [0, 0], [0, 1, 2]]))
    elif kind == "drop_arg" and ref is not None:
        field.remove(ref)
    elif kind == "add_arg":
        for _ in range(draw(st.sampled_from([1, 2, 30]))):
            field.add().tensor.CopyFrom(to_tensor(np.float64(1.0)))
    elif kind == "arg_shape" and ref is not None:
        t = ref.tensor
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        size = int(np.prod(shape)) if shape else 1
        itemsize = {"float32": 4, "int32": 4, "bool": 1, "complex128": 16}.get(t.dtype, 8)
        t.shape[:] = shape
        t.data = bytes(size * itemsize)
    elif kind == "arg_dtype" and ref is not None:
        ref.tensor.dtype = draw(st.sampled_from(DTYPES + tuple(BAD_DTYPES)))
    elif kind == "arg_data" and ref is not None:
        _mutate_tensor(draw, ref.tensor)
    elif kind == "arg_huge" and ref is not None:
        ref.tensor.shape[:] = draw(st.sampled_from([[10**6, 10**6], [2**62, 2], [2**31], [-1]]))
    elif kind == "arg_empty_ref" and ref is not None:
        ref.ClearField("tensor")
    elif kind == "arg_digest" and ref is not None:
        ref.digest = _fake_digest(draw)
    elif kind == "arg_remember" and ref is not None:
        ref.remember = True
    elif kind == "arg_special" and ref is not None and ref.tensor.dtype in INEXACT:
        value = np.frombuffer(ref.tensor.data, ref.tensor.dtype).copy()
        if value.size:
            with np.errstate(over="ignore"):  # 1e308 into a float32 is inf: fine
                value[draw(st.integers(0, value.size - 1))] = draw(st.sampled_from(BAD_FLOATS))
        ref.tensor.data = value.tobytes()
    elif kind == "arg_ints" and ref is not None and ref.tensor.dtype in ("int32", "int64"):
        value = np.frombuffer(ref.tensor.data, ref.tensor.dtype).copy()
        if value.size:
            bound = np.iinfo(value.dtype)
            value[draw(st.integers(0, value.size - 1))] = draw(
                st.sampled_from([-1, 1, 3, 7, -100, bound.max, bound.min])
            )
        ref.tensor.data = value.tobytes()
    elif kind == "graph_digest":
        req.graph.digest = _fake_digest(draw)
    elif kind == "graph_none":
        req.ClearField("graph")
    elif kind == "graph_fields":
        req.graph.body = draw(mutate_fields(case.graph.to_bytes()))
    elif kind == "graph_bytes":
        req.graph.body = draw(mutate_bytes(case.graph.to_bytes()))
    elif kind == "mode":
        if "mode" in req.DESCRIPTOR.fields_by_name:
            req.mode = draw(st.sampled_from(["", "FWD", "forward", "x" * 1000, "rev\x00"]))
        elif "method" in req.DESCRIPTOR.fields_by_name:
            req.method = draw(st.sampled_from(["", "Central", "backward", "complex "]))
    elif kind == "request_bytes":
        return draw(mutate_bytes(req.SerializeToString()))
    return req.SerializeToString()


@st.composite
def requests(draw, ops=PUBLIC_OPS, mutate=None):
    """(method, case, request bytes, mutated?) for any method of the service."""
    method = draw(st.sampled_from(METHODS))
    case = draw(cases(ops))
    req = valid_request(method, case, draw)
    if mutate is None:
        mutate = draw(st.integers(0, 3)) > 0
    if not mutate:
        return method, case, req.SerializeToString(), False
    data = req
    for _ in range(draw(st.integers(1, 2))):
        data = _mutate_request(draw, data, case)
        try:
            data = type(req).FromString(data)
        except Exception:  # byte edits may leave an unparseable request: send it as is
            return method, case, data, True
    return method, case, data.SerializeToString(), True
