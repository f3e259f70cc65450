"""The graph IR: typed inputs, constants, nodes in topological order (SSA), outputs.

A Graph is immutable and always valid: the constructor runs the checker, so a Graph object
that exists has passed it. Encoding to and from the protobuf wire message lives in wire.py.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from . import dtypes
from .limits import DEFAULT_LIMITS, Limits

# The version of the op set (the ops, their attributes and semantics) this engine implements.
# A graph records the version it was written for (`Graph.opset`, the `opset` field of
# gradserve.v1.Graph, where 0 or absent means 1); decoding refuses a newer one.
OPSET = 1


_ITEMSIZE = {name: np.dtype(name).itemsize for name in dtypes.SUPPORTED}


@dataclass(frozen=True)
class Spec:
    """An abstract array: shape and dtype.

    `gs.trace` takes one in place of an example argument (an input known by its shape and
    dtype alone); a graph's inputs and outputs carry theirs (``graph.inputs[0].spec``).

    Parameters
    ----------
    shape : int or tuple of int, optional
        The dimensions; () (the default) for a scalar.
    dtype : str or numpy.dtype, optional
        float64 (the default), float32, complex128, int32, int64 or bool, in any spelling
        NumPy accepts (``np.float32``, ``"f4"``); kept as its name.

    Raises
    ------
    ValueError
        A dimension is negative.
    TypeError
        The dtype is not one gradserve carries.

    Examples
    --------
    >>> spec = gs.Spec((2, 3), np.float32)
    >>> spec, spec.dtype, spec.size, spec.nbytes
    (float32[2, 3], 'float32', 6, 24)
    """

    shape: tuple
    dtype: str = "float64"

    def __init__(self, shape=(), dtype="float64"):
        if isinstance(shape, (int, np.integer)):
            shape = (shape,)
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"negative dimension in shape {shape}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(
            self, "dtype", dtype if dtype == dtypes.TAPE else dtypes.canonical(dtype)
        )

    @property
    def ndim(self) -> int:
        """The number of dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """The number of elements (1 for a scalar)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the array; 0 for a loop tape, whose size is known only at run time."""
        return 0 if self.dtype == dtypes.TAPE else self.size * _ITEMSIZE[self.dtype]

    def __repr__(self):
        return f"{self.dtype}{list(self.shape)}"


class Port(NamedTuple):
    """A graph input or output: its value name and spec."""

    name: str
    spec: Spec


class Node(NamedTuple):
    """One equation: `outputs = op(inputs; attrs)`. Attribute values are ints, floats, strs,
    bools, tuples of ints or floats, or Graphs (subgraphs). (A NamedTuple: builders make
    thousands, and it is made several times faster than a frozen dataclass.)"""

    op: str
    inputs: tuple
    outputs: tuple
    attrs: Mapping[str, Any]

    def describe(self, index: int) -> str:
        return f"node {index} '{self.op}' -> {', '.join(self.outputs) or '()'}"


def readonly(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=not isinstance(array, np.ndarray) or array.flags.writeable)
    array.setflags(write=False)
    return array


class Graph:
    """An immutable, validated computation graph: typed inputs, constants, operations in
    order, outputs.

    Made by `gs.trace` (or read by `Graph.from_bytes`). The constructor runs the checker, so
    a Graph that exists is valid: every operation known, its inputs defined before it, its
    shapes and dtypes consistent. Two graphs with the same program and constants have the
    same `digest` and compare equal; ``str(graph)`` lists the operations.

    Attributes
    ----------
    inputs : tuple of gs.Port
        The inputs in order, each a (name, spec) pair.
    outputs : tuple of gs.Port
        The outputs in order.
    constants : dict of str to ndarray
        The arrays the graph holds, read-only, by name.
    nodes : tuple
        The operations, in the order they run.
    opset : int
        The op set version the graph was written for (`gs.trace` writes the engine's, 1).
    node_count : int
        Nodes, subgraphs included (a subgraph counts each time a node holds it): what
        ``Limits.max_nodes`` bounds.
    """

    def __init__(
        self,
        inputs: Sequence[Port],
        constants: Mapping[str, np.ndarray],
        nodes: Sequence[Node],
        outputs: Sequence[str],
        *,
        declared_outputs: Sequence[Spec] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        opset: int = OPSET,
        _known=None,
    ):
        from .validate import check_graph, count_nodes

        if not isinstance(opset, int) or not 1 <= opset <= OPSET:
            from .errors import GraphError

            raise GraphError(
                f"op set version {opset!r}: this engine supports op set version {OPSET}"
                f" (and earlier)",
                "opset",
            )
        self.opset = opset
        self.inputs = tuple(Port(n, s) for n, s in inputs)
        self.constants = {name: readonly(value) for name, value in constants.items()}
        self.nodes = tuple(nodes)
        output_names = tuple(outputs)
        self.avals = check_graph(
            self.inputs,
            self.constants,
            self.nodes,
            output_names,
            declared_outputs,
            limits,
            _known,
        )
        self.node_count = count_nodes(self.nodes)
        self.outputs = tuple(Port(n, self.avals[n]) for n in output_names)
        self._digest = None

    @property
    def input_names(self):
        """The names of the inputs, in order.

        Returns
        -------
        tuple of str
        """
        return tuple(p.name for p in self.inputs)

    @property
    def output_names(self):
        """The names of the values the graph returns, in order.

        Returns
        -------
        tuple of str
        """
        return tuple(p.name for p in self.outputs)

    def to_bytes(self) -> bytes:
        """The graph's canonical encoding: a serialized ``gradserve.v1.Graph`` protobuf
        message, deterministic, so the same graph always gives the same bytes.

        Returns
        -------
        bytes
            What a `gs.Client` sends and `Graph.from_bytes` reads.
        """
        from .wire import graph_to_proto

        return graph_to_proto(self).SerializeToString(deterministic=True)

    @staticmethod
    def from_bytes(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Graph:
        """Read a graph from its encoding (`to_bytes`), checking it.

        Parameters
        ----------
        data : bytes
            A serialized ``gradserve.v1.Graph`` message.
        limits : gs.Limits, optional
            The size limits to check it against; default ``gs.Limits()``.

        Returns
        -------
        gs.Graph

        Raises
        ------
        gs.GraphError
            The bytes are not such a message, or the graph fails the checker (`where` names
            the offending node or field): among others, a dtype other than the six names, an
            op internal to the engine (in a subgraph too), or an `opset` newer than this
            engine's.
        gs.LimitError
            The graph or one of its arrays is over `limits`.

        Examples
        --------
        >>> graph = gs.trace(lambda x: gnp.sin(x), 1.0)
        >>> gs.Graph.from_bytes(graph.to_bytes()) == graph
        True
        """
        from .wire import graph_from_bytes

        return graph_from_bytes(data, limits)

    @property
    def digest(self) -> str:
        """The sha256 of the canonical encoding (`to_bytes`), in hex: same program and
        constants, same digest. A `gs.Client` names a graph the server has by it.

        Returns
        -------
        str
        """
        if self._digest is None:
            from .canonical import encode  # to_bytes' bytes, without building the message

            self._digest = hashlib.sha256(encode(self)).hexdigest()
        return self._digest

    def __eq__(self, other):
        return isinstance(other, Graph) and other.digest == self.digest

    def __hash__(self):
        return hash(self.digest)

    def __repr__(self):
        sig = ", ".join(f"{p.name}: {p.spec}" for p in self.inputs)
        return f"<gs.Graph ({sig}) -> {len(self.outputs)} output(s), {len(self.nodes)} nodes>"

    def __str__(self):
        return "\n".join(_listing(self, indent=""))


def _format_attr(value) -> str:
    if isinstance(value, Graph):
        return "{\n" + "\n".join(_listing(value, indent="    ")) + "\n  }"
    return repr(value)


def _listing(graph: Graph, indent: str):
    sig = ", ".join(f"{p.name}: {p.spec}" for p in graph.inputs)
    yield f"{indent}graph({sig}) {{"
    for name, value in graph.constants.items():
        shown = np.array2string(value, threshold=6, separator=", ") if value.size <= 6 else "..."
        yield f"{indent}  {name}: {Spec(value.shape, value.dtype)} = {shown}"
    for node in graph.nodes:
        attrs = ", ".join(f"{k}={_format_attr(v)}" for k, v in sorted(node.attrs.items()))
        args = ", ".join(node.inputs)
        outs = ", ".join(f"{o}: {graph.avals[o]}" for o in node.outputs)
        yield f"{indent}  {outs} = {node.op}({args}{'; ' + attrs if attrs else ''})"
    yield f"{indent}  return {', '.join(graph.output_names)}"
    yield f"{indent}}}"
