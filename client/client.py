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
import re
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
    selected_inputs,
    single,
    tangent_arguments,
)
from gradserve.engine.docstrings import CLIENT, backend_docstring
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
    result_arrays,
    tensor_ref_parts,
)

from .shm import MIN_BYTES as SHARED_MEMORY_MIN_BYTES
from .shm import SharedMemoryTransport

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
    """The server could not be reached, or was overloaded, after the retries."""


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
    # A one-request stream (gs.minimize's loop on the server) read in the caller's thread,
    # without a thread of its own per call.
    ("SingleThreadedUnaryStream", 1),
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
        if not any(self.large):
            return
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
        """Add the TensorRefs to a repeated field of a message, in place (for a message nested
        in another, as the Minimize stream's problem, which `encode` does not reach)."""
        for a, d, remember, how in zip(
            self.arrays, self.digests, self.remember, self._choices(force_inline)
        ):
            ref = repeated.add()
            if how == "digest":
                ref.digest = d
            elif how == "inline":
                fill_tensor(ref.tensor, a)
                ref.remember = remember

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
        A ready channel's own options apply: gRPC receives at most 4 MiB by default, and a
        larger reply raises `gs.LimitError` (``where == "reply"``) saying so; create it with
        ``("grpc.max_receive_message_length", -1)``.
    timeout : float or None, optional
        Seconds each call may take, retries included; None (the default): no deadline.
        Every method also takes ``timeout=`` for that call.
    retries : int, optional
        Further attempts when the server is UNAVAILABLE, after pauses growing from
        `backoff` seconds (doubling, jittered) up to `max_backoff`; or overloaded
        (RESOURCE_EXHAUSTED with a RetryInfo), no sooner than the delay it asks for. A refusal
        for a limit of the request is not retried. Default 5.
    backoff, max_backoff : float, optional
        The first and the longest pause between attempts, in seconds (0.05 and 2.0).
    options : list of (str, object), optional
        gRPC channel options for a target string, merged over the defaults (which lift
        gRPC's message size limits, balance calls round robin and try a lost connection
        again at least every 2 s): an option given here
        replaces the default of the same name, the other defaults stay.
    root_certificates : bytes or str, optional
        PEM root certificates to verify the server with, as bytes or as the path of a file;
        giving it (or `private_key` and `certificate_chain`, or ``tls=True``) makes the
        channel TLS. With ``tls=True`` alone, the system's roots are used.
    private_key, certificate_chain : bytes or str, optional
        This client's PEM key and certificate chain (bytes or file paths), for servers that
        require client certificates (mutual TLS, ``--tls-client-ca``).
    token : str, optional
        A bearer token (``--auth-token-file``), sent with every call as
        ``authorization: Bearer <token>``: as call credentials over TLS, as call metadata
        over plaintext (or on a ready channel).
    tls : bool, optional
        None (the default): TLS when any certificate argument is given; True: TLS always.
    digest_min_bytes : int, optional
        Arrays at least this large may travel as their digest once the server has them.
        Default 65536.
    shared_memory : bool or None, optional
        Pass large arrays and results through POSIX shared memory with a server on this
        machine. None (the default): when the server shares this machine (its boot id and a
        challenge written into the client's region prove it), else gRPC bytes; True: always,
        raising `gradserve.client.shm.SharedMemoryUnavailable` when the server cannot;
        False: never.
    shared_memory_min_bytes : int, optional
        Arrays and results at least this large go through shared memory. Default 16384.

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
        root_certificates=None,
        private_key=None,
        certificate_chain=None,
        token: str | None = None,
        tls: bool | None = None,
        shared_memory: bool | None = None,
        shared_memory_min_bytes: int = SHARED_MEMORY_MIN_BYTES,
    ):
        if token is not None:
            token = str(token).strip()
            if not token or any(c.isspace() for c in token) or not token.isprintable():
                raise ValueError("token must be a non-empty string without spaces or newlines")
        self._metadata = None
        if isinstance(target_or_channel, grpc.Channel):
            self._channel = target_or_channel
            self._owns_channel = False
            self.target = getattr(target_or_channel, "target", None) or repr(target_or_channel)
            if token is not None:
                self._metadata = (("authorization", f"Bearer {token}"),)
        elif isinstance(target_or_channel, str):
            merged = dict(_DEFAULT_OPTIONS)
            merged.update(dict(options or ()))
            channel_options = list(merged.items())
            certs = (root_certificates, private_key, certificate_chain)
            if tls or (tls is None and any(c is not None for c in certs)):
                if (private_key is None) != (certificate_chain is None):
                    raise ValueError("private_key and certificate_chain go together (mutual TLS)")
                credentials = grpc.ssl_channel_credentials(*(_pem(c) for c in certs))
                if token is not None:
                    credentials = grpc.composite_channel_credentials(
                        credentials, grpc.access_token_call_credentials(token)
                    )
                self._channel = grpc.secure_channel(
                    target_or_channel, credentials, options=channel_options
                )
            else:
                # gRPC refuses call credentials on an insecure channel: the token travels as
                # call metadata instead.
                if token is not None:
                    self._metadata = (("authorization", f"Bearer {token}"),)
                self._channel = grpc.insecure_channel(target_or_channel, options=channel_options)
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
        if shared_memory not in (None, True, False):
            raise ValueError(f"shared_memory must be None, True or False, got {shared_memory!r}")
        self._shared_memory = (
            None
            if shared_memory is False
            else SharedMemoryTransport(self, bool(shared_memory), shared_memory_min_bytes)
        )

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

    @backend_docstring(CLIENT)
    def evaluate(self, graph: Graph, *args, timeout=None):
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

    @backend_docstring(CLIENT)
    def value_and_grad(self, graph: Graph, *args, argnums=0, timeout=None):
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

    @backend_docstring(CLIENT)
    def grad(self, graph: Graph, *args, argnums=0, timeout=None):
        return self.value_and_grad(graph, *args, argnums=argnums, timeout=timeout)[1]

    @backend_docstring(CLIENT)
    def vjp(self, graph: Graph, primals, cotangents, argnums=None, timeout=None):
        check_graph(graph)
        nums = None if argnums is None else _encode_argnums(argnums, graph)
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
            lambda g: pb.VjpRequest(graph=g, argnums=nums),
        )
        return from_value(reply.outputs), result_arrays(reply, "input_cotangents")

    @backend_docstring(CLIENT)
    def jvp(self, graph: Graph, primals, tangents, argnums=None, timeout=None):
        check_graph(graph)
        nums, tangents = _selected_tangents(graph, tangents, argnums, "jvp")
        primals = _arguments(graph, tuple(primals), "primals")
        reply = self._call(
            "Jvp",
            pb.JvpResponse,
            graph,
            [("primals", primals), ("tangents", tangents)],
            timeout,
            lambda g: pb.JvpRequest(graph=g, argnums=nums),
        )
        return from_value(reply.outputs), from_value(reply.output_tangents)

    @backend_docstring(CLIENT)
    def jacobian(self, graph: Graph, *args, argnums=0, mode="auto", timeout=None):
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

    @backend_docstring(CLIENT)
    def hvp(self, graph: Graph, primals, tangents, argnums=None, timeout=None):
        check_graph(graph)
        nums, tangents = _selected_tangents(graph, tangents, argnums, "hvp")
        primals = _arguments(graph, tuple(primals), "primals")
        reply = self._call(
            "Hvp",
            pb.HvpResponse,
            graph,
            [("primals", primals), ("tangents", tangents)],
            timeout,
            lambda g: pb.HvpRequest(graph=g, argnums=nums),
        )
        return result_arrays(reply, "tangents")

    @backend_docstring(CLIENT)
    def hessian(self, graph: Graph, *args, argnums=0, timeout=None):
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

    @backend_docstring(CLIENT)
    def check_grad(self, graph: Graph, *args, method="central", timeout=None):
        args = _arguments(graph, args)
        if not isinstance(method, str):
            raise ValueError(
                "method must be one of ['central', 'complex', 'forward', 'richardson'],"
                f" got {method!r}"
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
            result_arrays(reply, "analytic"),
            result_arrays(reply, "numeric"),
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
            if self._shared_memory is not None:
                self._shared_memory.close()
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
        shared = (
            None
            if self._shared_memory is None
            else self._shared_memory.prepare(groups, (method, digest))
        )
        tensors = [] if shared else self._tensors(digest, groups)
        force_inline: set = set()
        for attempt in (0, 1):
            graph_ref = (
                pb.GraphRef(body=graph.to_bytes()) if send_body else pb.GraphRef(digest=digest)
            )
            request = build(graph_ref)
            if shared is not None:  # large arrays in shared memory (client/shm.py)
                parts = [shared.encode(request, groups)]
            else:
                # The TensorRefs are hand-encoded after the rest of the request: one copy of a
                # large array's bytes (the join), and for small ones cheaper than filling them in.
                fields = request.DESCRIPTOR.fields_by_name
                parts = [request.SerializeToString()]
                for field, t in tensors:
                    parts += t.encode(fields[field].number, force_inline)
            try:
                data = self._unary(method, b"".join(parts), deadline, timeout)
            except grpc.RpcError as err:
                if shared is not None and attempt == 0 and self._shared_memory.stale(err):
                    # The server lost our lease (a restart loses digests too): all inline.
                    shared, tensors = None, self._tensors(digest, groups)
                    send_body = True
                    force_inline = {d for _, t in tensors for d in t.digests if d is not None}
                    continue
                missing = _missing(err) if err.code() == grpc.StatusCode.NOT_FOUND else None
                if missing and attempt == 0:  # send the bodies, once
                    send_body = self._forget_missing(missing, force_inline) or send_body
                    continue
                raise _exception(err, method, timeout) from None
            break
        if send_body:  # named by its digest, it is known already
            with self._lock:
                self._known_graphs.add(digest)
        try:
            reply = reply_cls.FromString(data)
        except Exception as exc:
            raise ServiceError(f"{method}: the server's reply does not decode ({exc})") from None
        if shared is not None:
            shared.done(reply)
        elif self._shared_memory is not None and len(data) >= self._shared_memory.min_bytes:
            self._shared_memory.observe((method, digest), reply)  # large results by bytes
        s = reply.stats
        stats = RemoteStats(s.tape_bytes, s.tape_entries, s.peak_bytes, s.recomputed_ops)
        stats.compute_seconds = s.compute_seconds
        self._local.stats = stats
        return reply

    def _tensors(self, digest, groups):
        return [(field, _Tensors(self, digest, field, list(group))) for field, group in groups]

    def _pause(self, delay: float, hint) -> float:
        """Seconds to wait before a retry: the backoff `delay`, capped and jittered; after an
        overloaded server's `hint` (RetryInfo), not before it, jittered after."""
        pause = min(delay, self.max_backoff) * (0.5 + random.random() / 2)
        if hint is not None:
            pause = max(hint, pause) * (1 + random.random() / 2)
        return pause

    def _forget_missing(self, missing, force_inline: set) -> bool:
        """The server does not have (or no longer has) these resources: send them in full next
        time (a tensor's digest joins `force_inline`). True when the graph's body must go."""
        send_body = False
        for kind, name in missing:
            if kind == GRAPH_RESOURCE:
                self._missed(("g", name))
                send_body = True
            else:
                self._missed(("t", name))
                force_inline.add(name)
        return send_body

    def _unary(self, method, data, deadline, timeout):
        stub = self._stubs[method]
        delay = self.backoff
        unavailable = None  # the last UNAVAILABLE answer, if any
        for attempt in range(self.retries + 1):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                if unavailable is not None:
                    raise DeadlineExceeded(
                        f"gradserve {method}: the deadline of {timeout} s passed while retrying "
                        f"an unavailable server ({self.target}: {unavailable.details()})"
                    )
                raise DeadlineExceeded(
                    f"gradserve {method}: the deadline of {timeout} s passed while preparing "
                    f"and sending the request ({len(data)} bytes), before the server answered"
                )
            try:
                return stub(data, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as err:
                hint = _retry_delay(err) if err.code() == _EXHAUSTED else None
                retry = err.code() == grpc.StatusCode.UNAVAILABLE or hint is not None
                if not retry or attempt == self.retries:
                    err._gradserve_sent = len(data)
                    err._gradserve_unavailable = unavailable is not None
                    raise
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    unavailable = err
                refused = err
            pause = self._pause(delay, hint)
            if hint is not None and deadline is not None and time.monotonic() + pause >= deadline:
                raise refused from None  # retrying would only meet the deadline
            if deadline is not None:
                pause = min(pause, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
            delay *= 2
        raise AssertionError("unreachable")


def _pem(value):
    """PEM bytes from bytes, or from the file a str/path names (None stays None)."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, (str, os.PathLike)):
        with open(value, "rb") as f:
            return f.read()
    raise TypeError(f"expected PEM bytes or a file path, got {type(value).__name__}")


# ---- argument handling, as the engine does it ---------------------------------------------


def _arguments(graph, args, what="arguments"):
    return [canonical_array(a) for a in arguments(graph, args, what)]


def _selected_tangents(graph, tangents, argnums, method):
    """(argnums as sent or None, the tangents sent): every input's without argnums (as the
    contract has it: one per input), else only the selected inputs', checked as the engine
    checks them."""
    if argnums is None:
        return None, _arguments(graph, tuple(tangents), "tangents")
    wrt = selected_inputs(graph, argnums, method)
    selected = tangent_arguments(graph, tangents, argnums, wrt)
    return _encode_argnums(argnums, graph), [canonical_array(t) for t in selected]


# (id(graph), argnums_key) -> (weakref to the graph, its pb.Argnums): argnums checked before
_ARGNUMS: dict = {}


def _encode_argnums(argnums, graph) -> pb.Argnums:
    """argnums as sent; checked as the engine checks them (the same exceptions), once for
    each graph and argnums."""
    key = argnums_key(argnums)
    try:
        known = _ARGNUMS.get((id(graph), key))
    except TypeError:  # unhashable elements: check_argnums says what is wrong
        known = None
    if known is not None and known[0]() is graph:
        return known[1]
    check_argnums(graph, argnums)
    if single(argnums):
        msg = pb.Argnums(indices=[key], is_tuple=False)
    else:
        msg = pb.Argnums(indices=list(key), is_tuple=True)
    if len(_ARGNUMS) >= 4096:
        _ARGNUMS.clear()
    _ARGNUMS[(id(graph), key)] = (weakref.ref(graph), msg)
    return msg


# ---- errors ---------------------------------------------------------------------------------


def _details(err):
    try:
        status = rpc_status.from_call(err)
    except Exception:
        return []
    return [] if status is None else list(status.details)


_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def _retry_delay(err):
    """The seconds a RESOURCE_EXHAUSTED refusal says to wait before retrying (its RetryInfo:
    the server was overloaded), or None: a limit of the request, which retrying cannot help."""
    for detail in _details(err):
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            info = error_details_pb2.RetryInfo()
            detail.Unpack(info)
            return info.retry_delay.ToNanoseconds() / 1e9
    return None


def _missing(err):
    missing = []
    for detail in _details(err):
        if detail.Is(error_details_pb2.ResourceInfo.DESCRIPTOR):
            info = error_details_pb2.ResourceInfo()
            detail.Unpack(info)
            if info.resource_type in (GRAPH_RESOURCE, TENSOR_RESOURCE):
                missing.append((info.resource_type, info.resource_name))
    return missing


_TOO_LARGE = re.compile(
    r"(CLIENT|SERVER)?:?\s*Received message larger than max \((\d+) vs\. (\d+)\)"
)


def _exception(err: grpc.RpcError, method: str, timeout) -> Exception:
    code = err.code()
    message = err.details() or code.name
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        if getattr(err, "_gradserve_unavailable", False):
            where = "while retrying an unavailable server"
        else:
            where = "while sending the request or waiting for the reply"
        return DeadlineExceeded(
            f"gradserve {method}: the deadline of {timeout} s passed {where}; "
            f"the server stops any computation it started ({message})"
        )
    reason, where = "", ""
    for detail in _details(err):
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason, where = info.reason, info.metadata.get("where", "")
    cls = _EXCEPTIONS.get(reason)
    if reason == "Overloaded" or (code == _EXHAUSTED and _retry_delay(err) is not None):
        return ServiceUnavailable(
            f"gradserve {method}: the server is overloaded, after the retries ({message})", code
        )
    if cls is None and code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        too_large = _TOO_LARGE.search(message)
        if too_large is not None:
            side, size, limit = too_large.group(1), int(too_large.group(2)), too_large.group(3)
            sent = getattr(err, "_gradserve_sent", None)
            if side == "CLIENT" or (side is None and sent is not None and size != sent):
                # This client's own receive limit (the channel's grpc.max_receive_message_length).
                return LimitError(
                    f"the reply ({size} bytes) is larger than this client's receive limit "
                    f"({limit} bytes): raise the channel's grpc.max_receive_message_length "
                    f"(-1: unlimited, gs.Client's default) ({message})",
                    "reply",
                )
        # gRPC's own receive limit on the server: the request is over --max-message-bytes.
        return LimitError(message, "request")
    if cls is None:
        kind = ServiceUnavailable if code == grpc.StatusCode.UNAVAILABLE else ServiceError
        return kind(f"gradserve {method}: {code.name}: {message}", code)
    if issubclass(cls, GraphError):
        prefix = f"{where}: "
        reason = message[len(prefix) :] if message.startswith(prefix) else message
        return cls(reason, where or "graph")
    return cls(message)
