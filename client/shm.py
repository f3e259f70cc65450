"""The client's side of shared memory (see gradserve.server.shm and docs/wire.md).

Each thread of a Client that sends large arrays gets one POSIX shared-memory region, created
here and registered with the server once: a call copies its large arrays into the region,
names them by offset, and leaves the rest of the region as the output window the server
writes large results into; the reply's Values name them and are copied out before the thread's
next call reuses the region. The region grows (a new one) when a call needs more.

Used only when the server shares this machine: its host identity (the kernel's boot id) must
equal ours, and the server must map our region by name and find in it the challenge it handed
out. Otherwise, and for arrays under `min_bytes`, the bytes path of gRPC carries the data.
Regions are unregistered and unlinked by close(); a process killed before that has its regions
unlinked by Python's resource tracker, and the server unmaps them when the lease runs out."""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
from multiprocessing import shared_memory

import grpc
import numpy as np
from google.rpc import error_details_pb2
from gradserve.v1 import service_pb2 as pb
from grpc_status import rpc_status

from gradserve.protocol import canonical_array, dtype_name, fill_tensor, host_id, shared_regions

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SharedMemory"].full_name
MIN_BYTES = 16384  # arrays and results smaller than this travel inline
ALIGNMENT = 64
REGION_QUANTUM = 1 << 20  # region sizes are whole MiB
MAX_REGIONS = 16  # threads of one Client with a region; further threads send bytes
UNKNOWN = "UnknownSharedMemory"  # the server no longer has our lease or region


def _aligned(n: int) -> int:
    return -(-n // ALIGNMENT) * ALIGNMENT


def _whole_mib(n: int) -> int:
    return -(-n // REGION_QUANTUM) * REGION_QUANTUM


def _reason(err: grpc.RpcError) -> str:
    try:
        status = rpc_status.from_call(err)
    except Exception:
        return ""
    for detail in () if status is None else status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


class SharedMemoryUnavailable(RuntimeError):
    """The server cannot use this client's shared memory (another host, or turned off)."""


def _reserve(name: str, size: int):
    """Allocate the region's pages now (Linux): a page of a full /dev/shm first touched by a
    write is a SIGBUS, here or in the server writing results; reserved, it is an OSError now."""
    path = os.path.join("/dev/shm", name)
    if hasattr(os, "posix_fallocate") and os.path.exists(path):
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)


class _Region:
    """One registered region: our mapping and the server's handle for it."""

    def __init__(self, size: int):
        self.shm = shared_memory.SharedMemory(
            name=f"gradserve-{secrets.token_hex(8)}", create=True, size=size
        )
        try:
            _reserve(self.shm.name, size)
        except OSError:
            self.shm.close()
            self.shm.unlink()
            raise
        self.size = size
        self.handle = ""
        self.lease = ""  # the lease it is registered under

    def close(self):
        shared_regions.pop(self.handle, None)
        try:
            self.shm.close()
        finally:
            self.shm.unlink()


class SharedRequest:
    """One call's arrays in its thread's region, and the output window after them."""

    def __init__(self, transport, region, groups, key=None):
        self.transport = transport
        self.key = key
        self.region = region
        self.placed = {}  # id(array) -> SharedMemoryRef
        offset = 0
        for _, arrays in groups:
            for given in arrays:
                if given is None or given.nbytes < transport.min_bytes or id(given) in self.placed:
                    continue
                a = canonical_array(given)
                np.ndarray(a.shape, a.dtype, buffer=region.shm.buf, offset=offset)[...] = a
                self.placed[id(given)] = pb.SharedMemoryRef(
                    region=region.handle,
                    offset=offset,
                    byte_size=a.nbytes,
                    dtype=dtype_name(a),
                    shape=a.shape,
                )
                offset = _aligned(offset + a.nbytes)
        self.output = pb.SharedMemoryRef(
            region=region.handle, offset=offset, byte_size=region.size - offset
        )

    def encode(self, request, groups) -> bytes:
        """The request with its TensorRefs: large arrays by place, small ones inline."""
        request.shared_memory.lease = self.region.lease
        request.shared_memory.output.CopyFrom(self.output)
        request.shared_memory.output_min_bytes = self.transport.min_bytes
        for field, arrays in groups:
            repeated = getattr(request, field)
            for a in arrays:
                ref = repeated.add()
                if a is None:
                    continue
                placed = self.placed.get(id(a))
                if placed is not None:
                    ref.shared_memory.CopyFrom(placed)
                else:
                    fill_tensor(ref.tensor, a)
        return request.SerializeToString()

    def done(self, reply):
        self.transport.observe(self.key, reply)
        self.transport._last_contact = time.monotonic()


def _value_bytes(msg, min_bytes) -> int:
    kind = msg.WhichOneof("kind")
    if kind == "tuple":
        return sum(_value_bytes(item, min_bytes) for item in msg.tuple.items)
    if kind == "shared_memory":
        return _aligned(msg.shared_memory.byte_size)
    if kind == "tensor" and len(msg.tensor.data) >= min_bytes:
        return _aligned(len(msg.tensor.data))
    return 0


class SharedMemoryTransport:
    """A Client's regions and lease. `required`: raise instead of falling back to bytes."""

    def __init__(self, client, required: bool, min_bytes: int = MIN_BYTES):
        self.client = client
        self.required = required
        self.min_bytes = max(1, int(min_bytes))
        self.lease = ""
        self.lease_seconds = 30.0
        self._checked = False  # the server's identity was compared with ours
        self._off = False  # not the same host, or shared memory is off there
        self._lock = threading.Lock()
        self._register_lock = threading.Lock()
        self._needs: dict = {}  # (method, graph digest) -> bytes of its last large results
        self._refused = float("inf")  # the smallest region size the server refused
        self._regions: dict[int, _Region] = {}  # thread id -> its region
        self._last_contact = 0.0
        channel = client._channel
        self._status = channel.unary_unary(f"/{SERVICE_NAME}/SharedMemoryStatus")
        self._register = channel.unary_unary(f"/{SERVICE_NAME}/RegisterSharedMemory")
        self._unregister = channel.unary_unary(f"/{SERVICE_NAME}/UnregisterSharedMemory")

    # -- the service ----------------------------------------------------------------------------

    def _rpc(self, stub, request, reply_cls):
        timeout = min(self.client.timeout or 10.0, 10.0)
        data = stub(request.SerializeToString(), timeout=timeout, metadata=self.client._metadata)
        return reply_cls.FromString(data)

    def status(self) -> pb.SharedMemoryStatusResponse:
        return self._rpc(
            self._status,
            pb.SharedMemoryStatusRequest(lease=self.lease),
            pb.SharedMemoryStatusResponse,
        )

    def _give_up(self, why: str):
        self._off = True
        if self.required:
            raise SharedMemoryUnavailable(f"shared memory with {self.client.target}: {why}")

    def _check_server(self) -> bool:
        """Once: does the server share this machine and map regions?"""
        try:
            status = self.status()
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return False  # not now: ask again next time
            self._give_up(f"the server does not answer SharedMemoryStatus ({err.code().name})")
            return False
        self._checked = True
        self.lease_seconds = status.lease_seconds or self.lease_seconds
        if not status.enabled:
            self._give_up("the server maps no shared memory (--max-shared-memory-bytes 0)")
        elif not status.host_id or status.host_id != host_id():
            self._give_up("the server runs on another host (its boot id differs)")
        return not self._off

    def _new_region(self, size: int) -> _Region | None:
        """Create, challenge and register a region of `size` bytes (None: bytes this time).
        One thread at a time: the first registration starts the lease the others join."""
        with self._register_lock:
            return self._register_region(size)

    def _register_region(self, size: int) -> _Region | None:
        region = _Region(size)
        try:
            for attempt in (0, 1):
                status = self.status()
                if self.lease and not status.lease_known:
                    self._forget_lease(self.lease)
                region.shm.buf[: len(status.challenge)] = status.challenge
                try:
                    reply = self._rpc(
                        self._register,
                        pb.RegisterSharedMemoryRequest(
                            lease=self.lease,
                            key=region.shm.name,
                            byte_size=size,
                            challenge=status.challenge,
                        ),
                        pb.RegisterSharedMemoryResponse,
                    )
                except grpc.RpcError as err:
                    if attempt == 0 and _reason(err) == UNKNOWN:
                        self._forget_lease(self.lease)
                        continue
                    if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                        self._give_up(err.details())
                    elif err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                        self._refused = min(self._refused, size)
                    if self.required:
                        raise SharedMemoryUnavailable(
                            f"registering {size} bytes of shared memory: {err.details()}"
                        ) from None
                    region.close()
                    return None
                break
        except BaseException:
            region.close()
            raise
        self.lease = region.lease = reply.lease
        self.lease_seconds = reply.lease_seconds or self.lease_seconds
        region.handle = reply.region
        shared_regions[region.handle] = region.shm.buf
        self._last_contact = time.monotonic()
        return region

    def _forget_lease(self, lost: str):
        """The server lost this lease (it ran out, or the server restarted): its regions are
        unknown there. The next registration starts a new lease; each thread closes its old
        region when it next calls (another thread may be reading results from its own)."""
        with self._lock:
            if self.lease == lost:
                self.lease = ""

    # -- calls ----------------------------------------------------------------------------------

    def prepare(self, groups, key=None) -> SharedRequest | None:
        """The call's arrays placed in this thread's region; None: send bytes. `key` names
        the kind of call (method and graph), whose results' size is remembered."""
        if self._off:
            return None
        try:
            return self._prepare(groups, key)
        except (grpc.RpcError, OSError) as exc:
            # The server is unreachable (the call itself will say so, and retry), or no
            # region could be created here (/dev/shm full).
            if self.required and isinstance(exc, OSError):
                raise SharedMemoryUnavailable(f"creating a region: {exc}") from None
            return None

    def observe(self, key, reply):
        """After a reply (by either path): remember the room its large results need."""
        if self._off:
            return
        need = 0
        for field, value in reply.ListFields():
            if field.message_type is pb.Value.DESCRIPTOR:
                need += _value_bytes(value, self.min_bytes)
        if len(self._needs) > 4096:
            self._needs.clear()
        self._needs[key] = need

    def _prepare(self, groups, key):
        large = sum(
            _aligned(a.nbytes)
            for _, arrays in groups
            for a in arrays
            if a is not None and a.nbytes >= self.min_bytes
        )
        if not large and not self._needs.get(key):
            return None
        with self._lock:
            if not self._checked and not self._check_server():
                return None
        if self.lease and time.monotonic() - self._last_contact > self.lease_seconds / 2:
            lease = self.lease
            status = self.status()  # renews the lease, or says it ran out
            if not status.lease_known:
                self._forget_lease(lease)
            self._last_contact = time.monotonic()
        # Room for the arguments and for the results that the last call of this method and
        # graph received (before any: as much as the arguments).
        want = _whole_mib(max(1, large + self._needs.get(key, large)))
        me = threading.get_ident()
        region = self._regions.get(me)
        if region is not None and region.lease != self.lease:
            self._drop(me)  # of a lease the server lost
            region = None
        if region is not None and region.size >= want:
            return SharedRequest(self, region, groups, key)
        if want >= self._refused:  # over the server's limit: the arguments alone, if they fit
            want = _whole_mib(max(1, large))
            if region is not None and region.size >= want:
                return SharedRequest(self, region, groups, key)
            if want >= self._refused:
                return None
        if region is None and len(self._regions) >= MAX_REGIONS:
            return None
        if region is not None:
            self._drop(me)
        region = self._new_region(want)
        if region is None:
            return None
        with self._lock:
            self._regions[me] = region
        return SharedRequest(self, region, groups, key)

    def _drop(self, thread_id):
        with self._lock:
            region = self._regions.pop(thread_id, None)
        if region is None:
            return
        if region.lease == self.lease:
            with contextlib.suppress(grpc.RpcError):  # else the lease unmaps it
                self._rpc(
                    self._unregister,
                    pb.UnregisterSharedMemoryRequest(lease=region.lease, region=region.handle),
                    pb.UnregisterSharedMemoryResponse,
                )
        region.close()

    def stale(self, err: grpc.RpcError) -> bool:
        """True when the call failed because the server lost our lease or region; the
        regions are then dropped (the next call registers anew)."""
        if err.code() == grpc.StatusCode.INVALID_ARGUMENT and _reason(err) == UNKNOWN:
            region = self._regions.get(threading.get_ident())
            self._forget_lease(region.lease if region is not None else self.lease)
            return True
        return False

    def close(self):
        """Unregister everything and unlink our regions."""
        with self._lock:
            regions = list(self._regions.values())
            self._regions.clear()
            lease, self.lease = self.lease, ""
        if lease:
            with contextlib.suppress(grpc.RpcError):  # else the lease unmaps them
                self._rpc(
                    self._unregister,
                    pb.UnregisterSharedMemoryRequest(lease=lease),
                    pb.UnregisterSharedMemoryResponse,
                )
        for region in regions:
            region.close()
