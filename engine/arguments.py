"""Checking what a caller passes: the graph, the arguments, argnums. The Engine and the Client
both use these, so the same bad input raises the same exception with the same message."""

from __future__ import annotations

import numpy as np

from . import dtypes
from .graph import Graph, Spec

_NUMPY_DTYPES = {name: np.dtype(name) for name in dtypes.SUPPORTED}


def check_graph(graph):
    if not isinstance(graph, Graph):
        raise TypeError(f"expected a gs.Graph, got {type(graph).__name__}")


def arguments(graph: Graph, args, what="arguments") -> list:
    """One array per graph input, checked and converted (see coerce)."""
    check_graph(graph)
    if len(args) != len(graph.inputs):
        names = ", ".join(p.name for p in graph.inputs)
        raise TypeError(f"the graph takes {len(graph.inputs)} {what} ({names}), got {len(args)}")
    return [coerce(a, p.spec, f"{what[:-1]} {p.name!r}") for a, p in zip(args, graph.inputs)]


def coerce(value, spec: Spec, what: str) -> np.ndarray:
    """An argument as an array of `spec`: a ValueError for a wrong shape, a TypeError for a
    dtype that does not convert safely (float to int, complex to float)."""
    try:
        array = value if type(value) is np.ndarray else np.asarray(value)
    except Exception as exc:
        raise TypeError(
            f"{what}: cannot convert {type(value).__name__} to an array ({exc})"
        ) from None
    if array.shape != spec.shape:
        raise ValueError(f"{what} expects shape {spec.shape}, got {array.shape}")
    want = _NUMPY_DTYPES[spec.dtype]
    if array.dtype != want:
        if array.dtype.kind not in "biufc":
            raise TypeError(f"{what}: unsupported dtype {array.dtype}")
        if not np.can_cast(array.dtype, want, casting="same_kind"):
            raise TypeError(f"{what} expects {spec.dtype}, got {array.dtype.name}")
        array = array.astype(want)
    return array


def single(argnums) -> bool:
    """argnums names one input (an int, NumPy's included, not a bool) rather than a sequence."""
    return isinstance(argnums, (int, np.integer)) and not isinstance(argnums, bool)


def argnums_key(argnums):
    """A hashable form of argnums (an int or a tuple), or TypeError."""
    try:
        return int(argnums) if single(argnums) else tuple(argnums)
    except TypeError:
        raise TypeError(f"argnums must be an int or a sequence of ints, got {argnums!r}") from None


def check_argnums(graph: Graph, argnums) -> tuple:
    """The input indices argnums names, non-negative; each must be a differentiable input."""
    key = argnums_key(argnums)
    nums = (key,) if single(argnums) else key
    n = len(graph.inputs)
    for i in nums:
        if not single(i) or not -n <= i < n:
            raise ValueError(f"argnums {argnums!r} out of range for {n} inputs")
    nums = tuple(int(i) % n for i in nums)
    for i in nums:
        spec = graph.inputs[i].spec
        if not dtypes.is_differentiable(spec.dtype):
            raise TypeError(
                f"input {graph.inputs[i].name!r} has dtype {spec.dtype} and is not "
                "differentiable (only float and complex inputs are)"
            )
    return nums


def selected_inputs(graph: Graph, argnums, method, nums=None) -> tuple:
    """The inputs vjp, jvp or hvp differentiate: every float and complex input for argnums
    None, else those argnums names (checked as for grad; `nums`: already checked). jvp and hvp
    take one tangent per selected input, so there an input may not be named twice."""
    if argnums is None:
        return tuple(
            i for i, p in enumerate(graph.inputs) if dtypes.is_differentiable(p.spec.dtype)
        )
    if nums is None:
        nums = check_argnums(graph, argnums)
    if method != "vjp" and len(set(nums)) != len(nums):
        raise ValueError(
            f"argnums {argnums!r} names an input twice; {method} takes one tangent per "
            "selected input"
        )
    return nums


def tangent_arguments(graph: Graph, tangents, argnums, wrt) -> list:
    """The tangents of jvp and hvp for the inputs `wrt` (checked and converted as arguments
    are). argnums None: `tangents` has one per graph input (those of inputs not in `wrt` are
    checked and dropped); else one per selected input, in the order of argnums, in a tuple or
    list (for an int argnums too)."""
    if argnums is None:
        every = arguments(graph, tuple(tangents), "tangents")
        return [every[i] for i in wrt]
    if not isinstance(tangents, (tuple, list)):
        raise TypeError(
            "with argnums, tangents is a tuple or list of one array per selected input, "
            f"got {type(tangents).__name__}"
        )
    if len(tangents) != len(wrt):
        names = ", ".join(graph.inputs[i].name for i in wrt)
        raise TypeError(
            f"argnums {argnums!r} selects {len(wrt)} inputs ({names}), got {len(tangents)} tangents"
        )
    return [
        coerce(t, graph.inputs[i].spec, f"tangent {graph.inputs[i].name!r}")
        for t, i in zip(tangents, wrt)
    ]
