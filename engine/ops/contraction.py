"""`einsum` with explicit subscripts ("ij,jk->ik"): matmul, dot, outer and tensordot are all
einsums. Letters name axes; equal letters have equal sizes (no broadcasting: the front end
broadcasts explicitly, so that broadcasting has its own derivative).

Two-operand contractions run as one (batched) matmul, so they use BLAS."""

import functools
import math
import string

import numpy as np

from .. import dtypes
from .. import numpy as gnp
from ..graph import Spec
from ..primitive import Linear, OpDoc, ShapeError, primitive
from ..tracing import bind
from . import one_hot

LETTERS = set(string.ascii_letters)


def parse(subscripts):
    if subscripts.count("->") != 1:
        raise ShapeError(f"einsum subscripts {subscripts!r} need exactly one '->'")
    lhs, out = subscripts.split("->")
    return lhs.split(","), out


def _einsum_shape(*specs, subscripts):
    ins, out = parse(subscripts)
    if len(ins) != len(specs):
        raise ShapeError(f"subscripts name {len(ins)} operands, node has {len(specs)}")
    sizes = {}
    for sub, spec in zip(ins, specs):
        if not set(sub) <= LETTERS or len(sub) != spec.ndim:
            raise ShapeError(f"subscript {sub!r} does not fit an operand of shape {spec.shape}")
        for letter, size in zip(sub, spec.shape):
            if sizes.setdefault(letter, size) != size:
                raise ShapeError(f"axis {letter!r} has sizes {sizes[letter]} and {size}")
    if len(set(out)) != len(out) or not set(out) <= set(sizes):
        raise ShapeError(f"output subscript {out!r} must name distinct input axes")
    return Spec(tuple(sizes[c] for c in out), dtypes.promote(*[s.dtype for s in specs]))


@functools.lru_cache(maxsize=4096)
def _pairwise_plan(sa, sb, out, shape_a, shape_b):
    """How to run one two-operand contraction as a batched matmul (batch, free_a, contracted)
    x (batch, contracted, free_b), the mapping XLA's dot_general makes; cached per shapes.
    Permutations that change nothing are None (no transpose call)."""
    size = dict(zip(sa, shape_a)) | dict(zip(sb, shape_b))
    sum_a = tuple(i for i, c in enumerate(sa) if c not in sb and c not in out)
    sum_b = tuple(i for i, c in enumerate(sb) if c not in sa and c not in out)
    sa = "".join(c for c in sa if c in sb or c in out)
    sb = "".join(c for c in sb if c in sa or c in out)
    batch = [c for c in out if c in sa and c in sb]
    free_a = [c for c in sa if c in out and c not in sb]
    free_b = [c for c in sb if c in out and c not in sa]
    contracted = [c for c in sa if c in sb and c not in out]
    n = lambda letters: math.prod(size[c] for c in letters)  # noqa: E731
    got = batch + free_a + free_b
    shape_a = (n(batch), n(free_a), n(contracted))
    shape_b = (n(batch), n(contracted), n(free_b))
    if not batch:  # a plain matrix product (2-D operands; a vector where no free axis is left:
        # matrix-vector and dot products go to BLAS's own routines, without stacking)
        shape_a = (shape_a[2],) if not free_a else shape_a[1:]
        shape_b = (shape_b[1],) if not free_b else shape_b[1:]
    perm_a = tuple(sa.index(c) for c in batch + free_a + contracted)
    perm_b = tuple(sb.index(c) for c in batch + contracted + free_b)
    perm_out = tuple(got.index(c) for c in out)
    identity = lambda perm: perm == tuple(range(len(perm)))  # noqa: E731
    return (
        sum_a,
        sum_b,
        None if identity(perm_a) else perm_a,
        shape_a,
        None if identity(perm_b) else perm_b,
        shape_b,
        tuple(size[c] for c in got),
        None if identity(perm_out) else perm_out,
    )


def _pairwise(a, b, sa, sb, out):
    return _run_pairwise(_pairwise_plan(sa, sb, out, a.shape, b.shape), a, b)


def _run_pairwise(plan, a, b):
    sum_a, sum_b, perm_a, shape_a, perm_b, shape_b, shape_out, perm_out = plan
    if sum_a or sum_b:  # sum in the result's precision, as np.einsum does
        dtype = np.result_type(a, b)
        a = a.sum(axis=sum_a, dtype=dtype) if sum_a else a
        b = b.sum(axis=sum_b, dtype=dtype) if sum_b else b
    if perm_a is not None:
        a = a.transpose(perm_a)
    if perm_b is not None:
        b = b.transpose(perm_b)
    product = np.matmul(a.reshape(shape_a), b.reshape(shape_b)).reshape(shape_out)
    return product if perm_out is None else product.transpose(perm_out)


@functools.lru_cache(maxsize=4096)
def _as_matmul(subscripts):
    """(a's letters, b's letters, output letters) when a two-operand einsum runs as a batched
    matmul, else None: decided once per subscripts. A product that sums nothing (outer,
    elementwise) is faster in einsum's own loop; a repeated letter (a diagonal) needs it."""
    ins, out = parse(subscripts)
    if (
        len(ins) == 2
        and all(len(set(s)) == len(s) for s in ins)
        and set(ins[0] + ins[1]) != set(out)
    ):
        return ins[0], ins[1], out
    return None


def _einsum_kernel(*specs, subscripts):
    """The contraction for these operand shapes with its matmul worked out once, when the plan
    is built (what `_einsum_impl` looks up per call); None where einsum's own loop runs it."""
    letters = _as_matmul(subscripts) if len(specs) == 2 else None
    if letters is None:
        return None
    return functools.partial(
        _run_pairwise, _pairwise_plan(*letters, specs[0].shape, specs[1].shape)
    )


def _einsum_impl(*arrays, subscripts):
    if len(arrays) == 2:
        letters = _as_matmul(subscripts)
        if letters is not None:
            return _pairwise(arrays[0], arrays[1], *letters)
        return np.einsum(subscripts, *arrays)
    return np.einsum(subscripts, *arrays, optimize=len(arrays) > 2)


def einsum(subscripts, *operands):
    return bind("einsum", *operands, subscripts=subscripts)


def _einsum_jvp(primals, tangents, ans, subscripts):
    total = None
    for k, t in enumerate(tangents):
        if t is not None:
            term = einsum(subscripts, *primals[:k], t, *primals[k + 1 :])
            total = term if total is None else total + term
    return total


def _einsum_transpose(ct, *operands, subscripts):
    ins, out = parse(subscripts)
    cts = []
    for k, (sub, x) in enumerate(zip(ins, operands)):
        if not isinstance(x, Linear):
            cts.append(None)
            continue
        size = dict(zip(sub, x.shape))
        others = [(s, o) for j, (s, o) in enumerate(zip(ins, operands)) if j != k]
        reachable = set(out).union(*[set(s) for s, _ in others])
        unique = "".join(dict.fromkeys(sub))
        kept = "".join(c for c in unique if c in reachable)
        lhs = ",".join([out] + [s for s, _ in others])
        part = einsum(f"{lhs}->{kept}", ct, *[o for _, o in others])
        if kept != unique:  # axes summed only inside this operand: broadcast back
            part = gnp.reshape(part, tuple(size[c] if c in kept else 1 for c in unique))
            part = gnp.broadcast_to(part, tuple(size[c] for c in unique))
        if unique != sub:  # a repeated axis (a diagonal): embed with identity matrices
            spare = iter(c for c in string.ascii_letters if c not in subscripts)
            renamed, eyes, seen = "", [], set()
            for c in sub:
                if c in seen:
                    fresh = next(spare)
                    eyes.append((c + fresh, np.eye(size[c], dtype=ct.dtype)))
                    c = fresh
                seen.add(c)
                renamed += c
            part = einsum(
                f"{unique},{','.join(s for s, _ in eyes)}->{renamed}", part, *[e for _, e in eyes]
            )
        cts.append(gnp.astype(part, x.dtype) if part.dtype != np.dtype(x.dtype) else part)
    return tuple(cts)


def _einsum_batch_scaled(args, batched, built, subscripts):
    ins, out = parse(subscripts)
    return one_hot.contraction(args, batched, ins, out)


def _einsum_batch(args, batched, subscripts):
    ins, out = parse(subscripts)
    fresh = next(c for c in string.ascii_letters if c not in subscripts)
    ins = [fresh + s if b else s for s, b in zip(ins, batched)]
    return einsum(f"{','.join(ins)}->{fresh}{out}", *args)


primitive(
    "einsum",
    impl=_einsum_impl,
    shape=_einsum_shape,
    arity=(1, None),
    attrs={"subscripts": "str"},
    # one operand may give a view of it ("ij->ji"); a contraction of several, a new array
    fresh=lambda node: len(node.inputs) > 1,
    jvp=_einsum_jvp,
    transpose=_einsum_transpose,
    batch=_einsum_batch,
    kernel=_einsum_kernel,
    batch_scaled=_einsum_batch_scaled,
    doc=OpDoc(
        "Einstein summation with explicit output subscripts: products of the operands' "
        "elements, summed over every letter the output does not name (matmul, dot, outer and "
        "tensordot are einsums)",
        ("*operands",),
        "one axis per output letter, of that letter's size; the dtype the operands promote to",
        {
            "subscripts": 'explicit form "ij,jk->ik": one term per operand, comma-separated, '
            'then exactly one "->" and the output term; letters a-z and A-Z only (no "...", '
            "no spaces); a term has one letter per axis of its operand; a letter repeated "
            "within a term takes a diagonal; equal letters have equal sizes (no broadcasting); "
            "the output letters are distinct and each appears in some operand"
        },
        probe=lambda dtype: ([Spec((2,), dtype)] * 2, {"subscripts": "i,i->"}),
    ),
)
