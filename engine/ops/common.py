"""Pieces every op family shares: elementwise shape/dtype rules, `unbroadcast` (the one place
that undoes broadcasting in reverse mode), and the generic batch rules."""

from __future__ import annotations

import functools

import numpy as np

from .. import dtypes
from .. import numpy as gnp
from ..graph import Spec
from ..primitive import ShapeError
from ..tracing import Tracer, bind


@functools.lru_cache(maxsize=4096)
def _result_dtype(fn, in_dtypes):
    with np.errstate(all="ignore"):
        probe = fn(*[np.ones((), d) for d in in_dtypes])
    return dtypes.canonical(probe.dtype)


def elementwise_shape(fn, *, inexact=False):
    """Broadcast shapes; the dtype NumPy's own ufunc gives for these input dtypes."""

    def rule(*specs, **attrs):
        if inexact and not all(dtypes.is_differentiable(s.dtype) for s in specs):
            raise ShapeError(f"needs float or complex inputs, got {[s.dtype for s in specs]}")
        first = specs[0] if specs else None
        if first is not None and not attrs and all(s is first or s == first for s in specs):
            dtype = first.dtype
            if _result_dtype(fn, (dtype,) * len(specs)) == dtype:
                return first  # the same spec in and out (the common case): no new Spec
        shape = specs[0].shape if specs else ()
        try:
            if any(s.shape != shape for s in specs):
                shape = np.broadcast_shapes(*[s.shape for s in specs])
        except ValueError:
            raise ShapeError(f"shapes {[s.shape for s in specs]} do not broadcast") from None
        return Spec(
            shape,
            _result_dtype(
                functools.partial(fn, **attrs) if attrs else fn, tuple(s.dtype for s in specs)
            ),
        )

    return rule


def _has_dtype(x, dtype: str) -> bool:
    """A Tracer's from its spec (its `dtype` makes a NumPy dtype on every read)."""
    if isinstance(x, Tracer):
        return x.spec.dtype == dtype
    return np.asarray(x).dtype == np.dtype(dtype)


def unbroadcast(ct, spec):
    """Sum `ct` down to `spec`'s shape (undoing broadcasting) and cast to its dtype."""
    extra = ct.ndim - len(spec.shape)
    axes = tuple(range(extra)) + tuple(
        extra + i for i, d in enumerate(spec.shape) if d == 1 and ct.shape[extra + i] != 1
    )
    if axes:
        ct = gnp.sum(ct, axis=axes, keepdims=True)
        ct = gnp.reshape(ct, spec.shape)
    if not _has_dtype(ct, spec.dtype):
        ct = gnp.astype(ct, spec.dtype)
    return ct


def broadcast_tangent(t, spec):
    """A tangent of a broadcast operand, brought to the output's shape and dtype."""
    if t.shape != spec.shape:
        t = gnp.broadcast_to(t, spec.shape)
    if not _has_dtype(t, spec.dtype):
        t = gnp.astype(t, spec.dtype)
    return t


def align_batched(args, batched):
    """For elementwise ops: give every batched arg (batch axis 0) the output's rank, so that
    NumPy's right-aligned broadcasting leaves the batch axis in front."""
    rank = max(a.ndim - b for a, b in zip(args, batched))
    out = []
    for a, b in zip(args, batched):
        if b and a.ndim - 1 < rank:
            a = gnp.reshape(a, (a.shape[0],) + (1,) * (rank - a.ndim + 1) + a.shape[1:])
        out.append(a)
    return out


def batch_elementwise(name):
    def rule(args, batched, **attrs):
        return bind(name, *align_batched(args, batched), **attrs)

    return rule


def batch_shift_axes(name):
    """For ops with an `axes` (ints) or `axis` (int) attribute on a single batched input."""

    def rule(args, batched, **attrs):
        attrs = dict(attrs)
        if "axes" in attrs:
            attrs["axes"] = tuple(a + 1 for a in attrs["axes"])
        if "axis" in attrs:
            attrs["axis"] = attrs["axis"] + 1
        return bind(name, *args, **attrs)

    return rule


def normalize_axes(axes, ndim):
    """Validated, sorted, non-negative axes (for shape rules)."""
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"axis {a} is out of range for {ndim} dimensions")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"repeated axis in {axes}")
    return tuple(sorted(out))
