"""Shared memory: the same-host transport without copies (the SharedMemory service), on Linux
(regions are files of /dev/shm; elsewhere registration fails and clients send bytes).

A client on this machine registers POSIX shared-memory regions it created; requests then name
tensors by (region, offset, byte_size) and the server reads them as read-only NumPy views of
its mapping (no copy on decode), and writes large results into the request's output window.

- Proof of sharing: SharedMemoryStatus hands out a random challenge; the client writes it at
  offset 0 of its region and registers the region by name with that challenge. The server maps
  the name and compares: a region it cannot see, or one holding other bytes (another machine's
  or container's /dev/shm, or a segment the client does not control), is refused.
- Ownership: regions belong to a lease (a random id the first registration returns); a
  request names its lease, and may only name that lease's regions.
- Bounds: --max-shared-memory-bytes over all leases (0: the service is off) and
  --max-shared-memory-bytes-per-client per lease; beyond, RESOURCE_EXHAUSTED.
- Lease: a lease unused (no call, status or registration naming it) for
  --shared-memory-lease-seconds is unmapped, so a client that died without unregistering does
  not pin memory; its own regions are unlinked by its process's resource tracker."""

from __future__ import annotations

import logging
import mmap
import os
import re
import secrets
import stat
import threading
import time

import grpc
import numpy as np
from gradserve.engine import dtypes
from gradserve.v1 import service_pb2 as pb
from prometheus_client import Gauge

from gradserve.protocol import canonical_array, dtype_name, host_id

from .errors import Failure, to_status

log = logging.getLogger("gradserve.server")

SERVICE = pb.DESCRIPTOR.services_by_name["SharedMemory"]
CHALLENGE_BYTES = 16
CHALLENGE_SECONDS = 60.0
MAX_REGIONS_PER_CLIENT = 64
MAX_REGIONS = 4096
ALIGNMENT = 64  # results are written at offsets that are multiples of this

_KEY = re.compile(r"[A-Za-z0-9_.\-]{1,200}\Z")
_INVALID = grpc.StatusCode.INVALID_ARGUMENT
_UNAVAILABLE = grpc.StatusCode.FAILED_PRECONDITION
_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
# The reason of a request naming a lease or region the server does not have (expired lease,
# restarted server, another client's): the client registers again and sends bytes meanwhile.
UNKNOWN = "UnknownSharedMemory"

MAPPED_BYTES = Gauge(
    "gradserve_shared_memory_bytes", "Bytes of client shared-memory regions the server maps."
)
MAPPED_REGIONS = Gauge(
    "gradserve_shared_memory_regions", "Client shared-memory regions the server maps."
)


class Mapping:
    """A client's region mapped from /dev/shm. It is unmapped when the last reference to it
    goes: arrays of a call in flight that view it keep it mapped (NumPy keeps a reference to
    the buffer's owner, not a buffer export, so an explicit munmap under them would crash)."""

    def __init__(self, key: str, byte_size: int):
        fd = os.open(os.path.join("/dev/shm", key), os.O_RDWR | os.O_NOFOLLOW)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(f"{key!r} is not a shared-memory object")
            self.size = info.st_size
            if self.size < byte_size:
                raise ValueError(f"it has {self.size} bytes, fewer than byte_size {byte_size}")
            self.buf = memoryview(mmap.mmap(fd, byte_size))
        finally:
            os.close(fd)


class Region:
    def __init__(self, handle: str, key: str, byte_size: int, mapping: Mapping):
        self.handle = handle
        self.key = key
        self.byte_size = byte_size
        self.buf = mapping.buf


class Lease:
    def __init__(self, lease_id: str):
        self.id = lease_id
        self.regions: dict[str, Region] = {}
        self.last_seen = time.monotonic()
        self.active = 0  # calls in flight naming this lease

    @property
    def nbytes(self) -> int:
        return sum(r.byte_size for r in self.regions.values())


def _failure(code, message, reason, where):
    return Failure(code, message, reason, where)


class SharedMemoryRegistry:
    """The server's leases and mapped regions, and the SharedMemory service."""

    def __init__(self, max_bytes: int, max_bytes_per_client: int, lease_seconds: float):
        self.max_bytes = max(0, int(max_bytes))
        self.max_bytes_per_client = max(0, int(max_bytes_per_client))
        self.lease_seconds = float(lease_seconds)
        self.host_id = host_id()
        self._lock = threading.Lock()
        self._leases: dict[str, Lease] = {}
        self._challenges: dict[bytes, float] = {}  # challenge -> expiry
        self._stop = threading.Event()
        self._reaper = None

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    # -- the lease --------------------------------------------------------------------------

    def start(self):
        if self.enabled:
            self._reaper = threading.Thread(
                target=self._reap_loop, name="gradserve-shm-lease", daemon=True
            )
            self._reaper.start()

    def _reap_loop(self):
        while not self._stop.wait(max(0.05, min(1.0, self.lease_seconds / 4))):
            self.reap()

    def reap(self):
        """Unmap the leases whose lease ran out, and regions left to close."""
        now = time.monotonic()
        with self._lock:
            expired = [
                s
                for s in self._leases.values()
                if s.active == 0 and now - s.last_seen > self.lease_seconds
            ]
            for s in expired:
                del self._leases[s.id]
                self._retire(s.regions.values())
                s.regions.clear()
            self._challenges = {c: t for c, t in self._challenges.items() if t > now}
        for _ in expired:
            log.info("shared memory: a client's lease ran out; its regions are unmapped")

    def _retire(self, regions):
        """Forget regions (under the lock): each is unmapped when the last array of a call
        that views it goes, at once when none does."""
        for region in list(regions):
            MAPPED_BYTES.dec(region.byte_size)
            MAPPED_REGIONS.dec()

    def shutdown(self, wait: bool = False):
        """Stop the lease thread and unmap everything (with the server)."""
        self._stop.set()
        with self._lock:
            for s in self._leases.values():
                self._retire(s.regions.values())
            self._leases.clear()

    def mapped_keys(self) -> list[str]:
        with self._lock:
            return [r.key for s in self._leases.values() for r in s.regions.values()]

    # -- the service --------------------------------------------------------------------------

    def status(self, req: pb.SharedMemoryStatusRequest) -> pb.SharedMemoryStatusResponse:
        reply = pb.SharedMemoryStatusResponse(
            enabled=self.enabled,
            host_id=self.host_id,
            lease_seconds=self.lease_seconds,
            max_bytes_per_client=self.max_bytes_per_client,
            max_bytes=self.max_bytes,
        )
        if not self.enabled:
            return reply
        challenge = secrets.token_bytes(CHALLENGE_BYTES)
        with self._lock:
            if len(self._challenges) >= 4 * MAX_REGIONS:
                self._challenges.pop(next(iter(self._challenges)))
            self._challenges[challenge] = time.monotonic() + CHALLENGE_SECONDS
            lease = self._leases.get(req.lease) if req.lease else None
            if lease is not None:
                lease.last_seen = time.monotonic()
                reply.lease_known = True
                for r in lease.regions.values():
                    reply.regions.add(region=r.handle, key=r.key, byte_size=r.byte_size)
        reply.challenge = challenge
        return reply

    def register(self, req: pb.RegisterSharedMemoryRequest) -> pb.RegisterSharedMemoryResponse:
        if not self.enabled:
            raise _failure(
                _UNAVAILABLE,
                "this server maps no shared memory (--max-shared-memory-bytes 0)",
                "SharedMemoryUnavailable",
                "key",
            )
        if not _KEY.match(req.key):
            raise _failure(
                _INVALID,
                f"key {req.key[:80]!r} is not a shared-memory name (1-200 of A-Z a-z 0-9 _ . -)",
                "ValueError",
                "key",
            )
        if req.byte_size < CHALLENGE_BYTES:
            raise _failure(
                _INVALID,
                f"byte_size must be at least {CHALLENGE_BYTES} (the challenge), "
                f"got {req.byte_size}",
                "ValueError",
                "byte_size",
            )
        self._check_limits(req.lease, req.byte_size)
        with self._lock:
            expiry = self._challenges.pop(bytes(req.challenge), None)
        if expiry is None or expiry < time.monotonic():
            raise _failure(
                _INVALID,
                "challenge: not one this server handed out (SharedMemoryStatus), or used or "
                "expired",
                "ValueError",
                "challenge",
            )
        try:
            mapping = Mapping(req.key, req.byte_size)
        except (OSError, ValueError) as exc:
            raise _failure(
                _UNAVAILABLE,
                f"the server cannot map shared memory {req.key!r} "
                f"({type(exc).__name__}: {exc}): not the same host, or not the same /dev/shm",
                "SharedMemoryUnavailable",
                "key",
            ) from None
        if bytes(mapping.buf[:CHALLENGE_BYTES]) != req.challenge:
            raise _failure(
                _UNAVAILABLE,
                f"shared memory {req.key!r} as the server sees it does not start with the "
                "challenge: not the client's region (another host or /dev/shm)",
                "SharedMemoryUnavailable",
                "key",
            )
        region = Region(secrets.token_hex(16), req.key, int(req.byte_size), mapping)
        with self._lock:
            lease = self._lease_for_register(req.lease, region.byte_size)
            lease.regions[region.handle] = region
            lease.last_seen = time.monotonic()
            MAPPED_BYTES.inc(region.byte_size)
            MAPPED_REGIONS.inc()
        return pb.RegisterSharedMemoryResponse(
            lease=lease.id, region=region.handle, lease_seconds=self.lease_seconds
        )

    def _check_limits(self, lease_id, byte_size):
        """The limits, before mapping (checked again under the lock when adding)."""
        with self._lock:
            self._limits(self._leases.get(lease_id) if lease_id else None, byte_size)

    def _limits(self, lease, byte_size):
        total = sum(s.nbytes for s in self._leases.values())
        regions = sum(len(s.regions) for s in self._leases.values())
        mine = lease.nbytes if lease is not None else 0
        count = len(lease.regions) if lease is not None else 0
        if mine + byte_size > self.max_bytes_per_client:
            raise _failure(
                _EXHAUSTED,
                f"registering {byte_size} bytes would give this client {mine + byte_size} bytes "
                f"of shared memory, over the limit of {self.max_bytes_per_client} "
                "(--max-shared-memory-bytes-per-client)",
                "LimitError",
                "byte_size",
            )
        if total + byte_size > self.max_bytes:
            raise _failure(
                _EXHAUSTED,
                f"registering {byte_size} bytes would map {total + byte_size} bytes of shared "
                f"memory, over the limit of {self.max_bytes} (--max-shared-memory-bytes)",
                "LimitError",
                "byte_size",
            )
        if count >= MAX_REGIONS_PER_CLIENT or regions >= MAX_REGIONS:
            raise _failure(
                _EXHAUSTED,
                f"too many shared-memory regions (at most {MAX_REGIONS_PER_CLIENT} per "
                f"client, {MAX_REGIONS} in all)",
                "LimitError",
                "key",
            )

    def _lease_for_register(self, lease_id, byte_size) -> Lease:
        if lease_id:
            lease = self._leases.get(lease_id)
            if lease is None:
                raise _failure(
                    _INVALID,
                    "lease: not a lease of this server (its lease ran out, or the server "
                    "restarted): register with an empty lease",
                    UNKNOWN,
                    "lease",
                )
        else:
            lease = None
        self._limits(lease, byte_size)
        if lease is None:
            lease = Lease(secrets.token_hex(16))
            self._leases[lease.id] = lease
        return lease

    def unregister(self, req):
        with self._lock:
            lease = self._leases.get(req.lease)
            if lease is None:
                raise _failure(_INVALID, "lease: not a lease of this server", UNKNOWN, "lease")
            if req.region:
                region = lease.regions.pop(req.region, None)
                if region is None:
                    raise _failure(
                        _INVALID,
                        "region: not a region of this lease",
                        UNKNOWN,
                        "region",
                    )
                gone = [region]
                lease.last_seen = time.monotonic()
            else:
                gone = list(lease.regions.values())
                lease.regions.clear()
                if lease.active == 0:
                    del self._leases[lease.id]
            self._retire(gone)
        return pb.UnregisterSharedMemoryResponse(unregistered=len(gone))

    # -- calls --------------------------------------------------------------------------------

    def begin(self, msg: pb.SharedMemoryCall, should_stop=None):
        """The call's view of its lease (a CallMemory), its lease held until release().
        `should_stop` raises when the call already ended (then a region the client has let go
        of meanwhile is not its error)."""
        with self._lock:
            lease = self._leases.get(msg.lease) if msg.lease else None
            if lease is None:
                if should_stop is not None:
                    should_stop()
                raise _failure(
                    _INVALID,
                    "shared_memory.lease: not a lease of this server (its lease ran out, "
                    "or the server restarted, or shared memory is off): register again",
                    UNKNOWN,
                    "shared_memory.lease",
                )
            lease.active += 1
            lease.last_seen = time.monotonic()
        call = CallMemory(self, lease, should_stop)
        try:
            if msg.HasField("output"):
                call.set_window(msg.output, max(1, msg.output_min_bytes))
        except Failure:
            call.release()
            raise
        return call

    def _release(self, lease):
        with self._lock:
            lease.active -= 1
            lease.last_seen = time.monotonic()
            if lease.id not in self._leases and lease.active == 0:
                self._retire(lease.regions.values())
                lease.regions.clear()

    def handler(self) -> grpc.GenericRpcHandler:
        """The SharedMemory service (raw bytes in, so that any request is a status code)."""
        methods = {
            "SharedMemoryStatus": (pb.SharedMemoryStatusRequest, self.status),
            "RegisterSharedMemory": (pb.RegisterSharedMemoryRequest, self.register),
            "UnregisterSharedMemory": (pb.UnregisterSharedMemoryRequest, self.unregister),
        }

        def make(name, request_cls, fn):
            def handle(request_bytes, context):
                try:
                    try:
                        request = request_cls.FromString(request_bytes)
                    except Exception as exc:
                        raise _failure(
                            _INVALID,
                            f"the request is not a valid gradserve.v1.{request_cls.__name__} "
                            f"message ({exc})",
                            "ValueError",
                            "request",
                        ) from None
                    return fn(request).SerializeToString()
                except Failure as failure:
                    log.info("%s %s: %s", name, failure.code.name, failure.reason)
                    context.abort_with_status(to_status(failure))

            return grpc.unary_unary_rpc_method_handler(handle)

        return grpc.method_handlers_generic_handler(
            SERVICE.full_name, {name: make(name, *pair) for name, pair in methods.items()}
        )


def _aligned(offset: int) -> int:
    return -(-offset // ALIGNMENT) * ALIGNMENT


class CallMemory:
    """One request's shared memory: its arguments as views, its results written back."""

    def __init__(self, registry: SharedMemoryRegistry, lease: Lease, should_stop=None):
        self.registry = registry
        self.lease = lease
        self.should_stop = should_stop
        self.window = None  # (region, start, end)
        self.min_bytes = 1
        self._released = False

    def _region(self, handle, where) -> Region:
        region = self.lease.regions.get(handle)
        if region is None:
            if self.should_stop is not None:
                self.should_stop()
            raise _failure(
                _INVALID,
                f"region {handle[:40]!r} is not a region of this request's lease "
                "(unregistered, expired, or another client's)",
                UNKNOWN,
                where,
            )
        return region

    def _bounds(self, region, offset, byte_size, where):
        if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
            raise _failure(
                _INVALID,
                f"offset {offset} and byte_size {byte_size} are outside the region's "
                f"{region.byte_size} bytes",
                "ValueError",
                f"{where}.offset",
            )

    def set_window(self, ref, min_bytes):
        where = "shared_memory.output"
        region = self._region(ref.region, f"{where}.region")
        self._bounds(region, ref.offset, ref.byte_size, where)
        self.window = [region, ref.offset, ref.offset + ref.byte_size]
        self.min_bytes = min_bytes

    def array(self, ref, where, limits) -> np.ndarray:
        """The tensor `ref` names, as a read-only view of the mapping (no copy)."""
        where = f"{where}.shared_memory"
        region = self._region(ref.region, f"{where}.region")
        try:
            wire = np.dtype(dtypes.wire_name(ref.dtype)).newbyteorder("<")
        except TypeError as exc:
            raise _failure(_INVALID, str(exc), "GraphError", f"{where}.dtype") from None
        shape = tuple(ref.shape)
        if any(d < 0 for d in shape):
            raise _failure(
                _INVALID, f"negative dimension in shape {shape}", "GraphError", f"{where}.shape"
            )
        size = 1
        for d in shape:
            size *= d
        if size > limits.max_elements:
            raise _failure(
                _EXHAUSTED,
                f"shape {shape} has {size} elements, over the limit of {limits.max_elements}",
                "LimitError",
                f"{where}.shape",
            )
        if ref.byte_size != size * wire.itemsize:
            raise _failure(
                _INVALID,
                f"byte_size is {ref.byte_size}, shape {shape} of {ref.dtype} needs "
                f"{size * wire.itemsize}",
                "GraphError",
                f"{where}.byte_size",
            )
        self._bounds(region, ref.offset, ref.byte_size, where)
        order = "F" if ref.fortran_order else "C"
        if size == 0:
            array = np.zeros(shape, wire)
        else:
            array = np.ndarray(shape, wire, buffer=region.buf, offset=ref.offset, order=order)
        array.flags.writeable = False  # the engine never writes into its inputs
        return array if wire.isnative else array.astype(wire.newbyteorder("="))

    def place(self, reply):
        """Write the reply's large results (its Value fields) into the output window; each
        becomes a SharedMemoryRef. What does not fit, or is small, stays inline."""
        if self.window is None:
            return
        fields = reply.msg.DESCRIPTOR.fields_by_name
        for name, (kind, obj) in list(reply.fields.items()):
            if kind == "value":
                reply.fields[name] = (kind, self._place(obj))
            elif kind == "tensors" and name + "_value" in fields:
                # A repeated Tensor field cannot name shared memory: its `_value` twin, a
                # tuple, is sent instead.
                del reply.fields[name]
                reply.fields[name + "_value"] = ("value", tuple(self._place(t) for t in obj))

    def _place(self, result):
        if isinstance(result, tuple):
            return tuple(self._place(r) for r in result)
        array = np.asarray(result)
        # A column-major result (the engine's transposed products) is written as it is: one
        # memcpy instead of a transposing copy here and a copy out on the client.
        fortran = array.ndim > 1 and array.flags.f_contiguous and not array.flags.c_contiguous
        if not fortran or array.dtype.byteorder == ">" or dtype_name(array) != array.dtype.name:
            array, fortran = canonical_array(array), False
        region, cursor, end = self.window
        start = _aligned(cursor)
        if array.nbytes < self.min_bytes or start + array.nbytes > end:
            return array
        order = "F" if fortran else "C"
        target = np.ndarray(array.shape, array.dtype, region.buf, start, order=order)
        np.copyto(target, array)
        del target
        self.window[1] = start + array.nbytes
        return pb.SharedMemoryRef(
            region=region.handle,
            offset=start,
            byte_size=array.nbytes,
            dtype=dtype_name(array),
            shape=array.shape,
            fortran_order=fortran,
        )

    def release(self):
        if not self._released:
            self._released = True
            self.window = None
            self.registry._release(self.lease)
