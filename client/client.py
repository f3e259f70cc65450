"""`gs.Client`: the Engine's API over gRPC.

    with gs.Client("localhost:50051", timeout=30) as cli:
        value, grads = cli.value_and_grad(graph, 2.0, 5.0, argnums=(0, 1))

Arguments are checked and converted here exactly as the engine does (same exception classes
and messages); the server checks them again. Errors come back as the engine's exception
classes (GraphError, LimitError, ValueError, TypeError); an exceeded deadline raises
DeadlineExceeded (a TimeoutError)."""

from __future__ import annotations

import json
import os
import random
import threading
import time
import weakref
from collections import OrderedDict

import grpc
from google.rpc import error_details_pb2
from gradserve.engine import GraphError, LimitError, dtypes
from gradserve.engine.arguments import (
    argnums_key,
    arguments,
    check_argnums,
    check_graph,
    coerce,
    single,
)
from gradserve.engine.graph import Graph
from gradserve.engine.numerical import GradCheck
from gradserve.engine.plan import Stats
from gradserve.v1 import service_pb2 as pb
from grpc_status import rpc_status

from gradserve.protocol import (
    GRAPH_RESOURCE,
    METHODS,
    TENSOR_RESOURCE,
    array_digest,
    canonical_array,
    fill_tensor,
    from_value,
    method_path,
    result_array,
    tensor_ref_parts,
)

# Tensors at least this big may travel as their digest once the server has them.
DIGEST_MIN_BYTES = 64 * 1024
_FINGERPRINT_SAMPLES = 32
# After a NOT_FOUND for a digest, its body travels inline this many more times. Behind a
# per-call load balancer (round robin over replicas) the resend reaches the *next* replica,
# so without this a replica visited in lockstep would never receive the body.
INLINE_AFTER_MISS = 8


class DeadlineExceeded(TimeoutError):
    """The call's deadline (the Client's `timeout`) passed before the server answered; the
    server stops computing when it sees this."""


class ServiceError(RuntimeError):
    """Any other failure of the service (unavailable after retries, cancelled, internal)."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None):
        super().__init__(message)
        self.code = code


class ServiceUnavailable(ServiceError, ConnectionError):
    """The server could not be reached, after the retries."""


class RemoteStats(Stats):
    """`gs.Stats` of the server's computation, plus the time it took.

    A `gs.Stats` (a named tuple of the same four fields, comparing equal to the Engine's
    figures for the same call), with one more attribute.

    Attributes
    ----------
    compute_seconds : float
        The time the server spent in its engine on the call, in seconds.
    """

    compute_seconds: float = 0.0

    def __repr__(self):
        fields = ", ".join(f"{name}={value!r}" for name, value in zip(self._fields, self))
        return f"RemoteStats({fields}, compute_seconds={self.compute_seconds!r})"


class _LruSet:
    def __init__(self, size: int):
        self._items: OrderedDict = OrderedDict()
        self._size = size

    def __contains__(self, key):
        if key in self._items:
            self._items.move_to_end(key)
            return True
        return False

    def add(self, key):
        self._items[key] = None
        self._items.move_to_end(key)
        while len(self._items) > self._size:
            self._items.popitem(last=False)

    def discard(self, key):
        self._items.pop(key, None)


_EXCEPTIONS = {
    "GraphError": GraphError,
    "LimitError": LimitError,
    "ValueError": ValueError,
    "TypeError": TypeError,
    "MemoryError": LimitError,
}

_DEFAULT_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    ("grpc.max_send_message_length", -1),
    # Per-call balancing over every address of a name (dns:///name:port, headless services).
    ("grpc.service_config", json.dumps({"loadBalancingConfig": [{"round_robin": {}}]})),
    # Reconnect to a server that went away within 2 s of its return. gRPC's own backoff grows
    # to 120 s, and while it waits every call fails at once with UNAVAILABLE, so the Client's
    # retries ran out against a server that was back up (a restart of a few seconds).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


_POOL = None
_POOL_LOCK = threading.Lock()


def _hash_pool():
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            from concurrent.futures import ThreadPoolExecutor

            _POOL = ThreadPoolExecutor(
                max_workers=max(2, min(4, os.cpu_count() or 2)), thread_name_prefix="gradserve-hash"
            )
        return _POOL


class _Tensors:
    """How one call sends its arrays. Small ones inline. A large one (>= digest_min_bytes):
    - by its digest once it was sent with `remember` (the client hashes it then; a NOT_FOUND
      answer gets it inline again, see Client._missed);
    - else inline, with `remember` (the server hashes and keeps it) unless it sits where the
      previous call of this graph had a different array that was never seen again: weights
      that change every call are neither hashed nor kept, data held fixed travels once."""

    def __init__(self, client, graph_digest, field, arrays):
        self.client = client
        self.arrays = arrays = [None if a is None else canonical_array(a) for a in arrays]
        self.digests = [None] * len(arrays)
        self.large = [a is not None and a.nbytes >= client.digest_min_bytes for a in arrays]
        self.remember = [False] * len(arrays)
        todo = []
        for i, a in enumerate(arrays):
            if not self.large[i]:
                continue
            if client._sent_before(a, (graph_digest, field, i), self.remember, i):
                todo.append(i)
        for i in list(todo):
            known = client._digest_of_readonly(arrays[i])
            if known is not None:
                self.digests[i] = known
                self.remember[i] = True
                todo.remove(i)
        if len(todo) > 1 and sum(arrays[i].nbytes for i in todo) >= 1 << 20:
            # sha256 releases the GIL: hash megabytes on several cores at once.
            digests = _hash_pool().map(array_digest, [arrays[i] for i in todo])
        else:
            digests = [array_digest(arrays[i]) for i in todo]
        for i, d in zip(todo, digests):
            self.digests[i] = d
            self.remember[i] = True  # if it has to go inline after all (NOT_FOUND)
            client._note_readonly(arrays[i], d)

    def _choices(self, force_inline):
        """Per array: "none", "digest" or "inline"."""
        client = self.client
        out = []
        for a, d in zip(self.arrays, self.digests):
            if a is None:
                out.append("none")
            elif d is not None and d not in force_inline and client._by_digest(("t", d)):
                out.append("digest")
            else:
                out.append("inline")
        return out

    def fill(self, repeated, force_inline=frozenset()):
        """Add the TensorRefs to the request's repeated field, in place (small arrays:
        cheaper than hand encoding)."""
        for a, d, remember, how in zip(
            self.arrays, self.digests, self.remember, self._choices(force_inline)
        ):
            ref = repeated.add()
            if how == "digest":
                ref.digest = d
            elif how == "inline":
                fill_tensor(ref.tensor, a)
                ref.remember = remember

    def any_large(self) -> bool:
        return any(a is not None and a.nbytes >= 16384 for a in self.arrays)

    def encode(self, field: int, force_inline=frozenset()) -> list:
        """The TensorRefs of repeated field number `field`, hand-encoded (gradserve.protocol)."""
        parts = []
        for a, d, remember, how in zip(
            self.arrays, self.digests, self.remember, self._choices(force_inline)
        ):
            if how == "digest":
                parts += tensor_ref_parts(field, digest=d)
            elif how == "inline":
                parts += tensor_ref_parts(field, a, remember=remember)
            else:
                parts += tensor_ref_parts(field)
        return parts


class Client:
    """The Engine's methods, computed by a gradserve server over gRPC.

    Every method takes the arguments of the `gs.Engine` method of the same name and returns
    the same results, with ``timeout=`` where the Engine takes ``should_stop=``. Arguments
    are checked and converted here as the Engine does (same exception classes and messages)
    before anything is sent; the server's errors come back as the Engine's exception classes.
    A graph is sent once and named by its digest afterwards; so is a large array passed again
    unchanged (data held fixed), while one that changes every call (weights) travels inline.
    One Client may serve several threads at once; `last_stats` is per thread.

    Parameters
    ----------
    target_or_channel : str or grpc.Channel
        "host:port" or any gRPC target (e.g. "dns:///name:port", whose addresses are then
        balanced per call), or a ready `grpc.Channel` (your credentials, interceptors and
        options; `close` leaves it open).
    timeout : float or None, optional
        Seconds each call may take, retries included; None (the default): no deadline.
        Every method also takes ``timeout=`` for that call.
    retries : int, optional
        Further attempts when the server is UNAVAILABLE, after pauses growing from
        `backoff` seconds (doubling, jittered) up to `max_backoff`. Default 5.
    backoff, max_backoff : float, optional
        The first and the longest pause between attempts, in seconds (0.05 and 2.0).
    options : list of (str, object), optional
        gRPC channel options for a target string, in place of the defaults (which lift
        gRPC's message size limits, balance calls round robin and try a lost connection
        again at least every 2 s).
    digest_min_bytes : int, optional
        Arrays at least this large may travel as their digest once the server has them.
        Default 65536.

    Raises
    ------
    TypeError
        `target_or_channel` is neither a string nor a `grpc.Channel`.
    ValueError
        `timeout` is not a positive number or None.

    Examples
    --------
    >>> with gs.Client("localhost:50051", timeout=30) as cli:  # doctest: +SKIP
    ...     value, grads = cli.value_and_grad(graph, 2.0, 5.0, argnums=(0, 1))
    ...     cli.last_stats.compute_seconds
    """

    def __init__(
        self,
        target_or_channel,
        timeout: float | None = None,
        *,
        retries: int = 5,
        backoff: float = 0.05,
        max_backoff: float = 2.0,
        options=None,
        digest_min_bytes: int = DIGEST_MIN_BYTES,
    ):
        if isinstance(target_or_channel, grpc.Channel):
            self._channel = target_or_channel
            self._owns_channel = False
            self.target = getattr(target_or_channel, "target", None) or repr(target_or_channel)
        elif isinstance(target_or_channel, str):
            self._channel = grpc.insecure_channel(
                target_or_channel, options=list(options or _DEFAULT_OPTIONS)
            )
            self._owns_channel = True
            self.target = target_or_channel
        else:
            raise TypeError(
                "gs.Client takes a target string ('host:port') or a grpc.Channel, "
                f"got {type(target_or_channel).__name__}"
            )
        if timeout is not None and not timeout > 0:
            raise ValueError(
                f"timeout must be a positive number of seconds or None, got {timeout!r}"
            )
        self.timeout = timeout
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.digest_min_bytes = int(digest_min_bytes)
        self._stubs = {name: self._channel.unary_unary(method_path(name)) for name in METHODS}
        self._lock = threading.Lock()
        self._known_graphs = _LruSet(4096)  # graph digests the server has
        self._fingerprints = _LruSet(4096)  # large arrays seen (cheap fingerprints)
        self._remembered = _LruSet(4096)  # ... and sent with `remember`
        self._positions: dict = {}  # (graph, field, index) -> last fingerprint
        self._readonly_digests: dict = {}  # id -> (weakref, digest) of read-only arrays
        self._inline_budget: dict = {}  # ("g"|"t", digest) -> inline sends left
        self._local = threading.local()
        self._closed = False

    # ---- the API --------------------------------------------------------------------------

    @property
    def last_stats(self) -> RemoteStats:
        """Memory figures of this thread's most recent call, from the server's reply.

        Returns
        -------
        gs.RemoteStats
            The `gs.Stats` of the server's computation (what a `gs.Engine` with the server's
            settings reports for the same call), with `compute_seconds`, the time the server
            spent computing; all zero before the first call.
        """
        return getattr(self._local, "stats", RemoteStats())

    def evaluate(self, graph: Graph, *args, timeout=None):
        """The graph's outputs at `args`.

        Parameters
        ----------
        graph : gs.Graph
            The graph to run.
        *args : array_like
            One value per graph input, in order: a number or an array of that input's shape,
            converted to its dtype (see the Notes of `gs.Engine`).
        timeout : float, optional
            Seconds this call may take, retries included; default (None): the Client's
            `timeout`.

        Returns
        -------
        ndarray or tuple of ndarray
            The output when the graph has one, else a tuple with one array per output.

        Raises
        ------
        ValueError
            An argument's shape differs from its input's.
        TypeError
            `graph` is not a `gs.Graph`, the number of arguments differs from the graph's inputs, or
            an argument's dtype does not convert to its input's.
        gs.LimitError
            Over one of the server's limits: a graph or array over its --max-nodes or
            --max-elements, a request over --max-message-bytes, or more memory than the server has;
            or a `gs.while_loop` ran past its `max_iterations`.
        gs.DeadlineExceeded
            The timeout passed before the server answered; the server stops the computation.
        gs.ServiceUnavailable
            The server could not be reached, after the retries.
        gs.ServiceError
            Any other failure of the service (cancelled, internal error).
        """
        args = _arguments(graph, args)
        reply = self._call(
            "Evaluate",
            pb.EvaluateResponse,
            graph,
            [("args", args)],
            timeout,
            lambda g: pb.EvaluateRequest(graph=g),
        )
        return from_value(reply.outputs)

    def value_and_grad(self, graph: Graph, *args, argnums=0, timeout=None):
        """The value of a graph with one real scalar output, and its gradient.

        Parameters
        ----------
        graph : gs.Graph
            A graph whose one output is a float64 or float32 scalar.
        *args : array_like
            One value per graph input, in order: a number or an array of that input's shape,
            converted to its dtype (see the Notes of `gs.Engine`).
        argnums : int or sequence of int, optional
            The inputs to differentiate with respect to: indices into ``graph.inputs``,
            negative ones counting from the end; each a float or complex input. Default 0.
        timeout : float, optional
            Seconds this call may take, retries included; default (None): the Client's
            `timeout`.

        Returns
        -------
        value : ndarray
            The output, a 0-d array.
        grad : ndarray or tuple of ndarray
            For an int `argnums`, the gradient with respect to that input, of its shape and
            dtype; for a sequence, a tuple of them in the order of `argnums`.

        Raises
        ------
        ValueError
            An index in `argnums` is out of range; or an argument's shape differs from its input's.
        TypeError
            The graph does not have exactly one output, a float64 or float32 scalar; `argnums` is
            not an int or a sequence of ints, or names an input that is not float or complex; or
            `graph` is not a `gs.Graph`, the number of arguments differs from the graph's inputs, or
            an argument's dtype does not convert to its input's.
        gs.LimitError
            Over one of the server's limits: a graph or array over its --max-nodes or
            --max-elements, a request over --max-message-bytes, a tape over --max-tape-bytes that
            loops cannot checkpoint to fit, or more memory than the server has; or a `gs.while_loop`
            ran past its `max_iterations`.
        gs.DeadlineExceeded
            The timeout passed before the server answered; the server stops the computation.
        gs.ServiceUnavailable
            The server could not be reached, after the retries.
        gs.ServiceError
            Any other failure of the service (cancelled, internal error).

        See Also
        --------
        grad : the gradient alone.
        check_grad : the gradient compared with finite differences.
        """
        check_graph(graph)
        nums = _encode_argnums(argnums, graph)
        args = _arguments(graph, args)
        reply = self._call(
            "ValueAndGrad",
            pb.ValueAndGradResponse,
            graph,
            [("args", args)],
            timeout,
            lambda g: pb.ValueAndGradRequest(graph=g, argnums=nums),
        )
        return result_array(reply.value), from_value(reply.grad)

    def grad(self, graph: Graph, *args, argnums=0, timeout=None):
        """The gradient of a graph with one real scalar output: `value_and_grad` without the
        value.

        Parameters
        ----------
        graph : gs.Graph
            A graph whose one output is a float64 or float32 scalar.
        *args : array_like
            One value per graph input, in order: a number or an array of that input's shape,
            converted to its dtype (see the Notes of `gs.Engine`).
        argnums : int or sequence of int, optional
            The inputs to differentiate with respect to: indices into ``graph.inputs``,
            negative ones counting from the end; each a float or complex input. Default 0.
        timeout : float, optional
            Seconds this call may take, retries included; default (None): the Client's
            `timeout`.

        Returns
        -------
        ndarray or tuple of ndarray
            For an int `argnums`, the gradient with respect to that input, of its shape and
            dtype; for a sequence, a tuple of them in the order of `argnums`.

        Raises
        ------
        ValueError
            An index in `argnums` is out of range; or an argument's shape differs from its input's.
        TypeError
            The graph does not have exactly one output, a float64 or float32 scalar; `argnums` is
            not an int or a sequence of ints, or names an input that is not float or complex; or
            `graph` is not a `gs.Graph`, the number of arguments differs from the graph's inputs, or
            an argument's dtype does not convert to its input's.
        gs.LimitError
            Over one of the server's limits: a graph or array over its --max-nodes or
            --max-elements, a request over --max-message-bytes, a tape over --max-tape-bytes that
            loops cannot checkpoint to fit, or more memory than the server has; or a `gs.while_loop`
            ran past its `max_iterations`.
        gs.DeadlineExceeded
            The timeout passed before the server answered; the server stops the computation.
        gs.ServiceUnavailable
            The server could not be reached, after the retries.
        gs.ServiceError
            Any other failure of the service (cancelled, internal error).
        """
        return self.value_and_grad(graph, *args, argnums=argnums, timeout=timeout)[1]

    def vjp(self, graph: Graph, primals, cotangents, timeout=None):
        """Vector-Jacobian product (reverse mode): the outputs at `primals` and the cotangents
        of every input.

        Parameters
        ----------
        graph : gs.Graph
            The graph to differentiate; any outputs.
        primals : sequence of array_like
            One value per graph input, in order, converted as `args` are for `evaluate`.
        cotangents : array_like or tuple of array_like
            One per graph output, of that output's shape (converted to its dtype); a graph with
            one output also takes the array itself. The cotangents of outputs that are not
            float or complex are ignored (None will do).
        timeout : float, optional
            Seconds this call may take, retries included; default (None): the Client's
            `timeout`.

        Returns
        -------
        outputs : ndarray or tuple of ndarray
            The outputs, as `evaluate` returns them.
        input_cotangents : tuple of ndarray
            One per graph input, of its shape and dtype: the sum over the outputs of
            ``cotangent · d output / d input``; zeros for inputs that are not float or complex.

        Raises
        ------
        ValueError
            A cotangent's shape differs from its output's; or an argument's shape differs from its
            input's.
        TypeError
            The number of cotangents differs from the graph's outputs, or a cotangent's dtype does
            not convert to its output's; or `graph` is not a `gs.Graph`, the number of arguments
            differs from the graph's inputs, or an argument's dtype does not convert to its input's.
        gs.LimitError
            Over one of the server's limits: a graph or array over its --max-nodes or
            --max-elements, a request over --max-message-bytes, a tape over --max-tape-bytes that
            loops cannot checkpoint to fit, or more memory than the server has; or a `gs.while_loop`
            ran past its `max_iterations`.
        gs.DeadlineExceeded
            The timeout passed before the server answered; the server stops the computation.
        gs.ServiceUnavailable
            The server could not be reached, after the retries.
        gs.ServiceError
            Any other failure of the service (cancelled, internal error).
        """
        check_graph(graph)
        primals = _arguments(graph, tuple(primals), "primals")
        single = len(graph.outputs) == 1 and not isinstance(cotangents, tuple)
        cotangents = (cotangents,) if single else tuple(cotangents)
        if len(cotangents) != len(graph.outputs):
            raise TypeError(
                f"the graph has {len(graph.outputs)} outputs, got {len(cotangents)} cotangents"
            )
        cts = [
            coerce(c, p.spec, f"cotangent of output {k}")
            if dtypes.is_differentiable(p.spec.dtype)
            else None
            for k, (c, p) in enumerate(zip(cotangents, graph.outputs))
        ]
        reply = self._call(
            "Vjp",
            pb.VjpResponse,
            graph,
            [("primals", primals), ("cotangents", cts)],
            timeout,
            lambda g: pb.VjpRequest(graph=g),
        )
        return from_value(reply.outputs), tuple(result_array(t) for t in reply.input_cotangents)

    def jvp(self, graph: Graph, primals, tangents, timeout=None):
        """Jacobian-vector product (forward mode): the outputs at `primals` and their
        derivatives along `tangents`.

        Parameters
        ----------
        graph : gs.Graph
            The graph to differentiate; any outputs.
        primals : sequence of array_like
            One value per graph input, in order, converted as `args` are for `evaluate`.
        tangents : sequence of array_like
            One per graph input, of that input's shape and dtype (converted as `primals`
            are); those of inputs that are not float or complex are ignored.
        timeout : float, optional
            Seconds this call may take, retries included; default (None): the Client's
            `timeout`.

        Returns
        -------
        outputs : ndarray or tuple of ndarray
            The outputs, as `evaluate` returns them.
        output_tangents : ndarray or tuple of ndarray
            The directional derivative of each output, of its shape and dtype, structured as
            `outputs` (an array when the graph has one output); zeros for outputs that are not
            float or complex.

        Raises
        ------
        ValueError
            An argument's shape differs from its input's.
        TypeError
            `graph` is not a `gs.Graph`, the number of arguments differs from the graph's inputs, or
            an argument's dtype does not convert to its input's.
        gs.LimitError
            Over one of the server's limits: a graph or array over its --max-nodes or
            --max-elements, a request over --max-message-bytes, or more memory than the server has;
            or a `gs.while_loop` ran past its `max_iterations`.
        gs.DeadlineExceeded
            The timeout passed before the server answered; the server stops the computation.
        gs.ServiceUnavailable
            The server could not be reached, after the retries.
        gs.ServiceError
            Any other failure of the service (cancelled, internal error).
        """
        check_graph(graph)
        primals = _arguments(graph, tuple(primals), "primals")
        tangents = _arguments(graph, tuple(tangents), "tangents")
        reply = self._call(
            "Jvp",
            pb.JvpResponse,
            graph,
            [("primals", primals), ("tangents", tangents)],
            timeout,
            lambda g: pb.JvpRequest(graph=g),
        )
        return from_value(reply.outputs), from_value(reply.output_tangents)

    def jacobian(self, graph: Graph, *args, argnums=0, mode="auto", timeout=None):
        """The Jacobian of every output with respect to the inputs named by `argnums`.

        Parameters
        ----------
        graph : gs.Graph
            The graph to differentiate; any outputs.
        *args : array_like
            One value per graph input, in order: a number or an array of that input's shape,
            converted to its dtype (see the Notes of `gs.Engine`).
        argnums : int or sequence of int, optional
            The inputs to differentiate with respect to: indices into ``graph.inputs``,
            negative ones counting from the end; each a float or complex input. Default 0.
        mode : {"auto", "fwd", "rev"}, optional
            "fwd": one batched forward-mode pass per input in `argnums`, over all its elements
            at once; "rev": one batched reverse-mode pass per output. "auto" (the default)
            takes "fwd" when the inputs in `argnums` have fewer elements in total than the
            outputs, else "rev". The result is the same.
        timeout : float, optional
            Seconds this call may take, retries included; default (None): the Client's
            `timeout`.

        Returns
        -------
        ndarray or tuple
            The block of output ``k`` and input ``argnums[j]`` has shape
            ``outputs[k].shape + inputs[argnums[j]].shape``: its element ``[o..., i...]`` is
            ``d out[o...] / d in[i...]``. With one output and an int `argnums`, that block;
            with a sequence `argnums`, a tuple of blocks over `argnums`; with several outputs,
            a tuple over the outputs of those: ``J[k][j]`` (``J[k]`` for an int `argnums`).

        Raises
        ------
        ValueError
            `mode` is not "auto", "fwd" or "rev"; an index in `argnums` is out of range; or an
            argument's shape differs from its input's.
        TypeError
            `argnums` is not an int or a sequence of ints, or names an input that is not float or
            complex; or `graph` is not a `gs.Graph`, the number of arguments differs from the
            graph's inputs, or an argument's dtype does not convert to its input's.
        gs.LimitError
            Over one of the server's limits: a graph or array over its --max-nodes or
            --max-elements, a request over --max-message-bytes, a tape over --max-tape-bytes that
            loops cannot checkpoint to fit, or more memory than the server has; or a `gs.while_loop`
            ran past its `max_iterations`.
        gs.DeadlineExceeded
            The timeout passed before the server answered; the server stops the computation.
        gs.ServiceUnavailable
            The server could not be reached, after the retries.
        gs.ServiceError
            Any other failure of the service (cancelled, internal error).
        """
        check_graph(graph)
        nums = _encode_argnums(argnums, graph)
        args = _arguments(graph, args)
        if not isinstance(mode, str):
            raise ValueError(f"mode must be 'fwd', 'rev' or 'auto', got {mode!r}")
        reply = self._call(
            "Jacobian",
            pb.JacobianResponse,
            graph,
            [("args", args)],
            timeout,
            lambda g: pb.JacobianRequest(graph=g, argnums=nums, mode=mode),
        )
        return from_value(reply.jacobian)

    def hvp(self, graph: Graph, primals, tangents, timeout=None):
        """Hessian-vector product of a graph with one real scalar output: the derivative of its
        gradient along `tangents` (forward mode over reverse mode).

        Parameters
        ----------
        graph : gs.Graph
            A graph whose one output is a float64 or float32 scalar.
        primals : sequence of array_like
            One value per graph input, in order, converted as `args` are for `evaluate`.
        tangents : sequence of array_like
            One per graph input, of that input's shape and dtype (converted as `primals`
            are); those of inputs that are not float or complex are ignored.
        timeout : float, optional
            Seconds this call may take, retries included; default (None): the Client's
            `timeout`.

        Returns
        -------
        tuple of ndarray
            One per graph input (a tuple even for one input), of its shape and dtype:
            ``sum over j of H[i, j] · tangents[j]``, with H the Hessian over every float and
            complex input; zeros for the other inputs.

        Raises
        ------
        ValueError
            An argument's shape differs from its input's.
        TypeError
            The graph does not have exactly one output, a float64 or float32 scalar; or `graph` is
            not a `gs.Graph`, the number of arguments differs from the graph's inputs, or an
            argument's dtype does not convert to its input's.
        gs.LimitError
            Over one of the server's limits: a graph or array over its --max-nodes or
            --max-elements, a request over --max-message-bytes, a tape over --max-tape-bytes that
            loops cannot checkpoint to fit, or more memory than the server has; or a `gs.while_loop`
            ran past its `max_iterations`.
        gs.GraphError
            The graph has a `gs.while_loop`: second derivatives through one are not supported.
        gs.DeadlineExceeded
            The timeout passed before the server answered; the server stops the computation.
        gs.ServiceUnavailable
            The server could not be reached, after the retries.
        gs.ServiceError
            Any other failure of the service (cancelled, internal error).
        """
        check_graph(graph)
        primals = _arguments(graph, tuple(primals), "primals")
        tangents = _arguments(graph, tuple(tangents), "tangents")
        reply = self._call(
            "Hvp",
            pb.HvpResponse,
            graph,
            [("primals", primals), ("tangents", tangents)],
            timeout,
            lambda g: pb.HvpRequest(graph=g),
        )
        return tuple(result_array(t) for t in reply.tangents)

    def hessian(self, graph: Graph, *args, argnums=0, timeout=None):
        """The Hessian of a graph with one real scalar output, with respect to the inputs
        named by `argnums` (forward mode over reverse mode).

        Parameters
        ----------
        graph : gs.Graph
            A graph whose one output is a float64 or float32 scalar.
        *args : array_like
            One value per graph input, in order: a number or an array of that input's shape,
            converted to its dtype (see the Notes of `gs.Engine`).
        argnums : int or sequence of int, optional
            The inputs to differentiate with respect to: indices into ``graph.inputs``,
            negative ones counting from the end; each a float or complex input. Default 0.
        timeout : float, optional
            Seconds this call may take, retries included; default (None): the Client's
            `timeout`.

        Returns
        -------
        ndarray or tuple of tuple of ndarray
            For an int `argnums`, one array of shape ``x.shape + x.shape``, x the input; for a
            sequence, a nested tuple ``H[i][j]`` of shape
            ``inputs[argnums[i]].shape + inputs[argnums[j]].shape``.

        Raises
        ------
        ValueError
            An index in `argnums` is out of range; or an argument's shape differs from its input's.
        TypeError
            The graph does not have exactly one output, a float64 or float32 scalar; `argnums` is
            not an int or a sequence of ints, or names an input that is not float or complex; or
            `graph` is not a `gs.Graph`, the number of arguments differs from the graph's inputs, or
            an argument's dtype does not convert to its input's.
        gs.LimitError
            Over one of the server's limits: a graph or array over its --max-nodes or
            --max-elements, a request over --max-message-bytes, a tape over --max-tape-bytes that
            loops cannot checkpoint to fit, or more memory than the server has; or a `gs.while_loop`
            ran past its `max_iterations`.
        gs.GraphError
            The graph has a `gs.while_loop`: second derivatives through one are not supported.
        gs.DeadlineExceeded
            The timeout passed before the server answered; the server stops the computation.
        gs.ServiceUnavailable
            The server could not be reached, after the retries.
        gs.ServiceError
            Any other failure of the service (cancelled, internal error).
        """
        check_graph(graph)
        nums = _encode_argnums(argnums, graph)
        args = _arguments(graph, args)
        reply = self._call(
            "Hessian",
            pb.HessianResponse,
            graph,
            [("args", args)],
            timeout,
            lambda g: pb.HessianRequest(graph=g, argnums=nums),
        )
        return from_value(reply.hessian)

    def check_grad(self, graph: Graph, *args, method="central", timeout=None):
        """The gradient compared with numerical differentiation, for a graph with one real
        scalar output.

        The gradient with respect to every float64 and float32 input (other inputs are held
        fixed) is compared with finite differences, each element perturbed by a step scaled by
        ``max(1, |x|)``; all the perturbations of an input are evaluated in a few batched
        passes.

        Parameters
        ----------
        graph : gs.Graph
            A graph whose one output is a float64 or float32 scalar.
        *args : array_like
            One value per graph input, in order: a number or an array of that input's shape,
            converted to its dtype (see the Notes of `gs.Engine`).
        method : {"central", "forward", "complex"}, optional
            "central" (the default): ``(f(x + h) - f(x - h)) / 2h`` with h ≈ cbrt(eps);
            "forward": ``(f(x + h) - f(x)) / h`` with h ≈ sqrt(eps); "complex": the complex
            step ``Im f(x + ih) / h`` with h = 1e-20 (the input takes complex values), exact to
            rounding where the graph is analytic. eps is the machine epsilon of the output's
            dtype.
        timeout : float, optional
            Seconds this call may take, retries included; default (None): the Client's
            `timeout`.

        Returns
        -------
        gs.GradCheck
            `ok` is True when every element agrees within ``tol · (max(1, |f|) + |numeric|)``,
            tol being 100 sqrt(eps) ("central", "forward") or 100 eps ("complex"); with the
            largest absolute and relative errors and both gradients, one array per input
            checked.

        Raises
        ------
        ValueError
            `method` is not "central", "forward" or "complex"; or an argument's shape differs from
            its input's.
        TypeError
            The graph does not have exactly one output, a float64 or float32 scalar; the graph has
            no float64 or float32 input; or `graph` is not a `gs.Graph`, the number of arguments
            differs from the graph's inputs, or an argument's dtype does not convert to its input's.
        gs.LimitError
            Over one of the server's limits: a graph or array over its --max-nodes or
            --max-elements, a request over --max-message-bytes, a tape over --max-tape-bytes that
            loops cannot checkpoint to fit, or more memory than the server has; or a `gs.while_loop`
            ran past its `max_iterations`.
        gs.DeadlineExceeded
            The timeout passed before the server answered; the server stops the computation.
        gs.ServiceUnavailable
            The server could not be reached, after the retries.
        gs.ServiceError
            Any other failure of the service (cancelled, internal error).
        """
        args = _arguments(graph, args)
        if not isinstance(method, str):
            raise ValueError(
                f"method must be one of ['central', 'complex', 'forward'], got {method!r}"
            )
        reply = self._call(
            "CheckGrad",
            pb.CheckGradResponse,
            graph,
            [("args", args)],
            timeout,
            lambda g: pb.CheckGradRequest(graph=g, method=method),
        )
        return GradCheck(
            reply.method,
            reply.max_abs_error,
            reply.max_rel_error,
            reply.ok,
            tuple(result_array(t) for t in reply.analytic),
            tuple(result_array(t) for t in reply.numeric),
        )

    # ---- lifecycle --------------------------------------------------------------------------

    def close(self):
        """Close the channel, when the Client created it (a channel passed in stays open).

        Returns
        -------
        None
        """
        if not self._closed:
            self._closed = True
            if self._owns_channel:
                self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"gs.Client({self.target!r}, timeout={self.timeout!r})"

    # ---- the protocol -----------------------------------------------------------------------

    def _sent_before(self, array, position, remember, i) -> bool:
        """True when this large array (by a cheap fingerprint of sampled elements) was sent
        with `remember` before: then it is hashed and named by digest. Otherwise sets
        remember[i] (see _Tensors) and records the array as seen at `position`."""
        flat = array.reshape(-1)
        step = max(1, flat.size // _FINGERPRINT_SAMPLES)
        fingerprint = (array.dtype.str, array.shape, flat[::step][:_FINGERPRINT_SAMPLES].tobytes())
        with self._lock:
            if fingerprint in self._remembered:
                self._positions[position] = fingerprint
                return True
            last = self._positions.get(position)
            keep = last is None or last == fingerprint or fingerprint in self._fingerprints
            self._positions[position] = fingerprint
            if len(self._positions) > 4096:
                self._positions.pop(next(iter(self._positions)))
            self._fingerprints.add(fingerprint)
            if keep:
                self._remembered.add(fingerprint)
            remember[i] = keep
            return False

    def _digest_of_readonly(self, array):
        """The digest of a read-only array that owns its data, hashed before: nothing can
        change such an array, so it is hashed once (gs.minimize passes its fixed data so)."""
        if array.flags.writeable or array.base is not None:
            return None
        with self._lock:
            entry = self._readonly_digests.get(id(array))
        return entry[1] if entry is not None and entry[0]() is array else None

    def _note_readonly(self, array, digest):
        if array.flags.writeable or array.base is not None:
            return
        with self._lock:
            self._readonly_digests[id(array)] = (weakref.ref(array), digest)
            if len(self._readonly_digests) > 4096:
                self._readonly_digests.pop(next(iter(self._readonly_digests)))

    def _by_digest(self, key) -> bool:
        """Whether to name this graph ("g", digest) or tensor ("t", digest) by its digest:
        the server has it, and no recent NOT_FOUND asks for more inline sends."""
        with self._lock:
            left = self._inline_budget.get(key)
            if left:
                if left == 1:
                    del self._inline_budget[key]
                else:
                    self._inline_budget[key] = left - 1
                return False
            if key[0] == "t":
                # Seen before (so sent with `remember` then): the server has it, or answers
                # NOT_FOUND and gets it inline.
                return True
            return key[1] in self._known_graphs

    def _missed(self, key):
        with self._lock:
            if key[0] == "g":
                self._known_graphs.discard(key[1])
            if len(self._inline_budget) > 4096:
                self._inline_budget.clear()
            self._inline_budget[key] = INLINE_AFTER_MISS

    def _call(self, method, reply_cls, graph, groups, timeout, build):
        timeout = self.timeout if timeout is None else timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        digest = graph.digest
        send_body = not self._by_digest(("g", digest))
        tensors = [(field, _Tensors(self, digest, field, list(group))) for field, group in groups]
        force_inline: set = set()
        for attempt in (0, 1):
            graph_ref = (
                pb.GraphRef(body=graph.to_bytes()) if send_body else pb.GraphRef(digest=digest)
            )
            request = build(graph_ref)
            if any(t.any_large() for _, t in tensors):
                # Megabytes: hand-encode the TensorRefs, one copy of each array's bytes.
                fields = request.DESCRIPTOR.fields_by_name
                parts = [request.SerializeToString()]
                for field, t in tensors:
                    parts += t.encode(fields[field].number, force_inline)
            else:
                for field, t in tensors:
                    t.fill(getattr(request, field), force_inline)
                parts = [request.SerializeToString()]
            try:
                data = self._unary(method, b"".join(parts), deadline, timeout)
            except grpc.RpcError as err:
                missing = _missing(err) if err.code() == grpc.StatusCode.NOT_FOUND else None
                if missing and attempt == 0:
                    # The server does not have (or no longer has) these: send the bodies, once.
                    for kind, name in missing:
                        if kind == GRAPH_RESOURCE:
                            self._missed(("g", name))
                            send_body = True
                        else:
                            self._missed(("t", name))
                            force_inline.add(name)
                    continue
                raise _exception(err, method, timeout) from None
            break
        with self._lock:
            self._known_graphs.add(digest)
        try:
            reply = reply_cls.FromString(data)
        except Exception as exc:
            raise ServiceError(f"{method}: the server's reply does not decode ({exc})") from None
        s = reply.stats
        stats = RemoteStats(s.tape_bytes, s.tape_entries, s.peak_bytes, s.recomputed_ops)
        stats.compute_seconds = s.compute_seconds
        self._local.stats = stats
        return reply

    def _unary(self, method, data, deadline, timeout):
        stub = self._stubs[method]
        delay = self.backoff
        for attempt in range(self.retries + 1):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise DeadlineExceeded(
                    f"gradserve {method}: the deadline of {timeout} s passed "
                    f"while retrying an unavailable server ({self.target})"
                )
            try:
                return stub(data, timeout=remaining)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:
                    raise
            pause = min(delay, self.max_backoff) * (0.5 + random.random() / 2)
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
            delay *= 2
        raise AssertionError("unreachable")


# ---- argument handling, as the engine does it ---------------------------------------------


def _arguments(graph, args, what="arguments"):
    return [canonical_array(a) for a in arguments(graph, args, what)]


def _encode_argnums(argnums, graph) -> pb.Argnums:
    """argnums as sent; checked as the engine checks them (the same exceptions)."""
    check_argnums(graph, argnums)
    key = argnums_key(argnums)
    if single(argnums):
        return pb.Argnums(indices=[key], is_tuple=False)
    return pb.Argnums(indices=list(key), is_tuple=True)


# ---- errors ---------------------------------------------------------------------------------


def _details(err):
    try:
        status = rpc_status.from_call(err)
    except Exception:
        return []
    return [] if status is None else list(status.details)


def _missing(err):
    missing = []
    for detail in _details(err):
        if detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            info = error_details_pb2.ResourceInfo()
            detail.Unpack(info)
            if info.resource_type in (GRAPH_RESOURCE, TENSOR_RESOURCE):
                missing.append((info.resource_type, info.resource_name))
    return missing


def _exception(err: grpc.RpcError, method: str, timeout) -> Exception:
    code = err.code()
    message = err.details() or code.name
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(
            f"gradserve {method}: deadline exceeded (timeout {timeout} s); "
            f"the server stopped the computation ({message})"
        )
    reason, where = "", ""
    for detail in _details(err):
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, where = info.reason, info.metadata.get("where", "")
    cls = _EXCEPTIONS.get(reason)
    if cls is None and code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # gRPC's own receive limit: the request is over the server's --max-message-bytes.
        return LimitError(message, "request")
    if cls is None:
        kind = ServiceUnavailable if code == grpc.StatusCode.UNAVAILABLE else ServiceError
        return kind(f"gradserve {method}: {code.name}: {message}", code)
    if issubclass(cls, GraphError):
        prefix = f"{where}: "
        reason = message[len(prefix) :] if message.startswith(prefix) else message
        return cls(reason, where or "graph")
    return cls(message)
