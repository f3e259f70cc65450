"""Shared memory between a client and a server on one machine, end to end: real servers over
loopback, real POSIX regions in /dev/shm. Results equal those of the bytes path and of the
Engine; the data really travels in the region (small requests and replies on the wire); a
killed client leaves no region behind; bad references, other clients' regions and limits are
refused with the documented status codes; a server that is off, or elsewhere, gets bytes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import grpc
import numpy as np
import pytest
from conftest import ServerProcess
from google.rpc import error_details_pb2
from gradserve.client import shm as client_shm
from gradserve.v1 import service_pb2 as pb
from grpc_status import rpc_status

import gradserve as gs
import gradserve.numpy as gnp
from gradserve.protocol import method_path

LEASE = 2.0
SHM_SERVICE = "/gradserve.v1.SharedMemory/"


@pytest.fixture(scope="module")
def server():
    proc = ServerProcess(
        "--shared-memory-lease-seconds",
        LEASE,
        "--max-shared-memory-bytes-per-client",
        "8MiB",
        "--max-shared-memory-bytes",
        "64MiB",
    )
    yield proc
    proc.close()


class Sizes(grpc.UnaryUnaryClientInterceptor):
    """Records (method, request bytes, reply bytes) of every call on a channel."""

    def __init__(self):
        self.calls = []

    def intercept_unary_unary(self, continuation, details, request):
        outcome = continuation(details, request)
        try:
            reply = len(outcome.result())
        except Exception:
            reply = -1
        self.calls.append((details.method.rsplit("/", 1)[-1], len(request), reply))
        return outcome


def regions_in_dev_shm() -> set:
    return {name for name in os.listdir("/dev/shm") if name.startswith("gradserve-")}


def server_maps(proc, key) -> bool:
    with open(f"/proc/{proc.pid}/maps") as f:
        return f"/dev/shm/{key}" in f.read()


def status_of(err: grpc.RpcError):
    """(code, ErrorInfo reason, BadRequest field) of a failed call."""
    reason, field = "", ""
    for detail in rpc_status.from_call(err).details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            field = bad.field_violations[0].field
    return err.code(), reason, field


# ---- results equal the bytes path, for every RPC that carries tensors ------------------------


def _mlp(W1, W2, X):
    return gnp.sum(gnp.tanh(gnp.tanh(X @ W1) @ W2) ** 2)


def _layers(W1, W2, X):
    h = gnp.tanh(X @ W1)
    return h, gnp.tanh(h @ W2)


RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((48, 64)) / 7  # 24 KiB: over the 16 KiB threshold
W2 = RNG.standard_normal((64, 40)) / 8  # 20 KiB
X = RNG.standard_normal((80, 48))  # 30 KiB
SCALAR = gs.trace(_mlp, W1, W2, X)
LAYERS = gs.trace(_layers, W1, W2, X)
T1, T2, TX = (RNG.standard_normal(a.shape) for a in (W1, W2, X))
CT = (RNG.standard_normal((80, 64)), RNG.standard_normal((80, 40)))


def _calls(backend):
    """Every method with tensors, on graphs whose arguments and results are large."""
    small = gs.trace(lambda w: gnp.sum(gnp.sin(w) ** 2), np.ones(12))
    return {
        "evaluate": backend.evaluate(LAYERS, W1, W2, X),
        "value_and_grad": backend.value_and_grad(SCALAR, W1, W2, X, argnums=(0, 1, 2)),
        "vjp": backend.vjp(LAYERS, (W1, W2, X), CT),
        "jvp": backend.jvp(LAYERS, (W1, W2, X), (T1, T2, TX)),
        "jacobian": backend.jacobian(gs.trace(lambda w: gnp.tanh(w) * 2.0, X[:10]), X[:10]),
        "hvp": backend.hvp(SCALAR, (W1, W2, X), (T1, T2, TX)),
        "hessian": backend.hessian(small, np.linspace(0, 1, 12) + W1[0, :12]),
        "check_grad": backend.check_grad(SCALAR, W1, W2, X).analytic,
    }


def _flat(result):
    if isinstance(result, (tuple, list)):
        return [a for r in result for a in _flat(r)]
    return [np.asarray(result)]


def test_every_method_gives_the_bytes_paths_results(server):
    sizes = Sizes()
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), sizes)
    with gs.Client(channel, timeout=60, shared_memory=True) as shared:
        first = _calls(shared)  # the Jacobian (1.8 MB) is larger than the region's window ...
        by_shm = _calls(shared)  # ... which has grown for the second round
    channel.close()
    with gs.Client(server.address, timeout=60, shared_memory=False) as plain:
        by_bytes = _calls(plain)
    by_engine = _calls(gs.Engine())
    for name in by_bytes:
        a, b, c = _flat(by_shm[name]), _flat(by_bytes[name]), _flat(by_engine[name])
        assert len(a) == len(b) == len(c), name
        for x, y, z, w in zip(a, b, c, _flat(first[name])):
            np.testing.assert_array_equal(w, y, err_msg=name)
            assert x.shape == y.shape and x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)  # the same server's numbers
            np.testing.assert_allclose(x, z, rtol=1e-12, atol=1e-12, err_msg=name)
            # not a view of the region: its own memory, or the bytes of an inline result
            assert x.flags.writeable and (x.flags.owndata or type(x.base) is bytearray), name
    calls = {m: (q, r) for m, q, r in sizes.calls}  # each method's last call
    # The arguments (74 KiB) went through the region, not the request ...
    for method in ("Evaluate", "ValueAndGrad", "Vjp", "Jvp", "Hvp", "CheckGrad"):
        assert calls[method][0] < 4096, (method, calls[method])
    # ... and so did the large results (a 20-40 KiB array each)
    for method in ("Evaluate", "ValueAndGrad", "Vjp", "Jvp", "Jacobian", "Hvp", "CheckGrad"):
        assert calls[method][1] < 4096, (method, calls[method])
    assert {"SharedMemoryStatus", "RegisterSharedMemory"} <= set(calls)


def test_inputs_in_the_region_are_not_written_by_the_engine(server):
    """An identity and an in-place-looking graph: the argument's bytes in the region are the
    ones the client put there, and the results are copies."""
    x = np.linspace(0.0, 1.0, 4096)
    g = gs.trace(lambda v: (v, v * 2.0), x)
    with gs.Client(server.address, timeout=60, shared_memory=True) as cli:
        same, double = cli.evaluate(g, x)
        region = next(iter(cli._shared_memory._regions.values()))
        in_region = np.ndarray(x.shape, x.dtype, buffer=region.shm.buf)
        np.testing.assert_array_equal(in_region, x)
        del in_region
    np.testing.assert_array_equal(same, x)
    np.testing.assert_array_equal(double, 2.0 * x)


def test_a_larger_call_grows_the_region(server):
    with gs.Client(server.address, timeout=60, shared_memory=True) as cli:
        for n in (4096, 200_000, 4096):
            x = np.arange(n, dtype=np.float64)
            g = gs.trace(lambda v: v * 3.0, x)
            np.testing.assert_array_equal(cli.evaluate(g, x), 3.0 * x)
        (region,) = cli._shared_memory._regions.values()
        assert region.size >= 2 * 200_000 * 8
        keys = [region.shm.name]
    assert not regions_in_dev_shm() & set(keys)  # close() unlinked it


# ---- a client that dies: its regions are unlinked, the server unmaps them after the lease ------

_DYING_CLIENT = """
import sys, time
import numpy as np
import gradserve as gs
cli = gs.Client(sys.argv[1], timeout=60, shared_memory=True)
x = np.ones(50_000)
assert cli.evaluate(gs.trace(lambda v: v + 1.0, x), x)[0] == 2.0
(region,) = cli._shared_memory._regions.values()
print(region.shm.name, flush=True)
time.sleep(600)
"""


def test_a_killed_client_leaves_no_region_and_no_mapping(server):
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_DYING_CLIENT), server.address],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        key = child.stdout.readline().strip()
        assert key.startswith("gradserve-"), key
        assert key in regions_in_dev_shm()
        assert server_maps(server, key)
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
    deadline = time.monotonic() + LEASE + 15
    while time.monotonic() < deadline:
        if key not in regions_in_dev_shm() and not server_maps(server, key):
            break
        time.sleep(0.2)
    assert key not in regions_in_dev_shm(), "the region is still in /dev/shm"
    assert not server_maps(server, key), "the server still maps the region after the lease"
    assert server.health() == "SERVING"


def test_an_idle_client_outliving_the_lease_registers_again(server):
    x = np.linspace(0, 1, 10_000)
    g = gs.trace(lambda v: v * v, x)
    with gs.Client(server.address, timeout=60, shared_memory=True) as cli:
        np.testing.assert_array_equal(cli.evaluate(g, x), x * x)
        first = cli._shared_memory.lease
        time.sleep(LEASE + 1.5)  # the server unmaps the lease
        np.testing.assert_array_equal(cli.evaluate(g, x + 1), (x + 1) * (x + 1))
        assert cli._shared_memory.lease and cli._shared_memory.lease != first


# ---- bad references are INVALID_ARGUMENT with a field violation; other clients' are refused ----


def _raw_evaluate(address, lease, ref):
    """An Evaluate of v + 1 with its argument named by `ref` in `lease`."""
    x = np.zeros(4096)
    g = gs.trace(lambda v: v + 1.0, x)
    request = pb.EvaluateRequest(graph=pb.GraphRef(body=g.to_bytes()))
    request.args.add().shared_memory.CopyFrom(ref)
    request.shared_memory.lease = lease
    with grpc.insecure_channel(address) as channel:
        call = channel.unary_unary(method_path("Evaluate"))
        return pb.EvaluateResponse.FromString(call(request.SerializeToString(), timeout=30))


@pytest.fixture
def owner(server):
    """A client with a registered region holding 0..4095 as float64 at offset 0."""
    x = np.arange(4096, dtype=np.float64)
    with gs.Client(server.address, timeout=60, shared_memory=True) as cli:
        cli.evaluate(gs.trace(lambda v: v * 1.0, x), x)
        region = next(iter(cli._shared_memory._regions.values()))
        yield cli._shared_memory.lease, region


def _ref(region, offset=0, byte_size=4096 * 8, dtype="float64", shape=(4096,)):
    return pb.SharedMemoryRef(
        region=region.handle, offset=offset, byte_size=byte_size, dtype=dtype, shape=shape
    )


def test_a_valid_raw_reference_reads_the_region(server, owner):
    lease, region = owner
    reply = _raw_evaluate(server.address, lease, _ref(region))
    out = np.frombuffer(reply.outputs.tensor.data)  # no output window: the result inline
    np.testing.assert_array_equal(out, np.arange(4096) + 1.0)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"offset": 1 << 40}, "args[0].shared_memory.offset"),
        ({"offset": -8}, "args[0].shared_memory.offset"),
        ({"offset": 8}, None),  # in range: the region is 1 MiB
        ({"byte_size": 8, "shape": (1,), "offset": (1 << 20) - 4}, "args[0].shared_memory.offset"),
        ({"byte_size": 100}, "args[0].shared_memory.byte_size"),
        ({"dtype": "float16"}, "args[0].shared_memory.dtype"),
    ],
)
def test_references_outside_the_region_are_invalid_argument(server, owner, change, field):
    lease, region = owner
    ref = _ref(region, **change)
    if field is None:
        _raw_evaluate(server.address, lease, ref)
        return
    with pytest.raises(grpc.RpcError) as info:
        _raw_evaluate(server.address, lease, ref)
    code, _, where = status_of(info.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert where == field
    assert server.health() == "SERVING"


def test_an_unregistered_region_is_invalid_argument(server, owner):
    lease, region = owner
    ref = _ref(region)
    ref.region = "0" * 32
    with pytest.raises(grpc.RpcError) as info:
        _raw_evaluate(server.address, lease, ref)
    assert status_of(info.value) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "UnknownSharedMemory",
        "args[0].shared_memory.region",
    )


def test_another_clients_region_is_refused(server, owner):
    lease, region = owner
    x = np.ones(4096)
    with gs.Client(server.address, timeout=60, shared_memory=True) as other:
        other.evaluate(gs.trace(lambda v: v * 1.0, x), x)
        other_lease = other._shared_memory.lease
        assert other_lease and other_lease != lease
        with pytest.raises(grpc.RpcError) as info:
            _raw_evaluate(server.address, other_lease, _ref(region))
        assert status_of(info.value) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "UnknownSharedMemory",
            "args[0].shared_memory.region",
        )
        with pytest.raises(grpc.RpcError) as info:  # nor may it unregister it
            with grpc.insecure_channel(server.address) as channel:
                channel.unary_unary(SHM_SERVICE + "UnregisterSharedMemory")(
                    pb.UnregisterSharedMemoryRequest(
                        lease=other_lease, region=region.handle
                    ).SerializeToString(),
                    timeout=30,
                )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    _raw_evaluate(server.address, lease, _ref(region))  # still the owner's


# ---- registration: the challenge proves the region is shared; limits ------------------------


def _register(address, key, byte_size, challenge=None, lease=""):
    with grpc.insecure_channel(address) as channel:
        status = pb.SharedMemoryStatusResponse.FromString(
            channel.unary_unary(SHM_SERVICE + "SharedMemoryStatus")(b"", timeout=30)
        )
        request = pb.RegisterSharedMemoryRequest(
            lease=lease,
            key=key,
            byte_size=byte_size,
            challenge=status.challenge if challenge is None else challenge,
        )
        return status, channel.unary_unary(SHM_SERVICE + "RegisterSharedMemory")(
            request.SerializeToString(), timeout=30
        )


@pytest.fixture
def region_1mib():
    from multiprocessing import shared_memory

    shm = shared_memory.SharedMemory(
        name="gradserve-test-" + os.urandom(4).hex(), create=True, size=1 << 20
    )
    yield shm
    shm.close()
    shm.unlink()


def test_a_region_without_the_challenge_is_refused(server, region_1mib):
    with pytest.raises(grpc.RpcError) as info:  # the region holds zeros, not the challenge
        _register(server.address, region_1mib.name, 1 << 20)
    assert status_of(info.value)[:2] == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "SharedMemoryUnavailable",
    )
    with pytest.raises(grpc.RpcError) as info:  # a challenge the server never gave
        _register(server.address, region_1mib.name, 1 << 20, challenge=b"x" * 16)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as info:
        _register(server.address, "no-such-region-" + os.urandom(4).hex(), 1 << 20)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_registration_over_the_per_client_limit_is_resource_exhausted(server, region_1mib):
    with pytest.raises(grpc.RpcError) as info:  # 16 MiB > --max-shared-memory-bytes-per-client
        _register(server.address, region_1mib.name, 16 << 20)
    assert status_of(info.value) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "LimitError",
        "byte_size",
    )
    assert server.health() == "SERVING"


def test_a_call_too_large_for_the_limit_falls_back_to_bytes(server):
    x = np.linspace(0.0, 1.0, 1_500_000)  # 12 MB each way: no region fits in 8 MiB
    g = gs.trace(lambda v: v * 2.0, x)
    with gs.Client(server.address, timeout=60) as auto:
        np.testing.assert_array_equal(auto.evaluate(g, x), 2.0 * x)
        assert not auto._shared_memory._regions
    with gs.Client(server.address, timeout=60, shared_memory=True) as required:
        with pytest.raises(client_shm.SharedMemoryUnavailable, match="limit"):
            required.evaluate(g, x)


# ---- the fallback: a server that maps no shared memory, or runs elsewhere ----------------------


def test_a_server_with_shared_memory_off_gets_bytes():
    x = np.linspace(0.0, 1.0, 20_000)
    g = gs.trace(lambda v: gnp.exp(v), x)
    before = regions_in_dev_shm()
    with ServerProcess("--max-shared-memory-bytes", "0") as off:
        sizes = Sizes()
        channel = grpc.intercept_channel(grpc.insecure_channel(off.address), sizes)
        with gs.Client(channel, timeout=60) as cli:
            np.testing.assert_allclose(cli.evaluate(g, x), np.exp(x), rtol=1e-15)
            assert not regions_in_dev_shm() - before
        channel.close()
        (evaluate,) = [c for c in sizes.calls if c[0] == "Evaluate"]
        assert evaluate[1] > x.nbytes and evaluate[2] > x.nbytes  # the bytes went by gRPC
        with gs.Client(off.address, timeout=60, shared_memory=True) as required:
            with pytest.raises(client_shm.SharedMemoryUnavailable, match="maps no shared"):
                required.evaluate(g, x)


def test_a_server_on_another_host_gets_bytes(server, monkeypatch):
    """A server whose boot id differs from ours is not asked to map anything."""
    monkeypatch.setattr(client_shm, "host_id", lambda: "another-machine")
    x = np.linspace(0.0, 1.0, 20_000)
    g = gs.trace(lambda v: gnp.exp(v), x)
    with gs.Client(server.address, timeout=60) as cli:
        np.testing.assert_allclose(cli.evaluate(g, x), np.exp(x), rtol=1e-15)
        assert not cli._shared_memory._regions and cli._shared_memory._off
    with gs.Client(server.address, timeout=60, shared_memory=True) as required:
        with pytest.raises(client_shm.SharedMemoryUnavailable, match="another host"):
            required.evaluate(g, x)


def test_small_arrays_and_shared_memory_false_use_bytes(server):
    before = regions_in_dev_shm()
    with gs.Client(server.address, timeout=60) as cli:
        x = np.ones(100)
        np.testing.assert_array_equal(cli.evaluate(gs.trace(lambda v: v + 1.0, x), x), x + 1)
        assert not cli._shared_memory._regions  # under 16 KiB: never registered
    with gs.Client(server.address, timeout=60, shared_memory=False) as cli:
        x = np.ones(100_000)
        np.testing.assert_array_equal(cli.evaluate(gs.trace(lambda v: v + 1.0, x), x), x + 1)
        assert cli._shared_memory is None
    assert not regions_in_dev_shm() - before


def test_status_reports_the_host_and_limits(server):
    with grpc.insecure_channel(server.address) as channel:
        status = pb.SharedMemoryStatusResponse.FromString(
            channel.unary_unary(SHM_SERVICE + "SharedMemoryStatus")(b"", timeout=30)
        )
    with open("/proc/sys/kernel/random/boot_id") as f:
        assert status.host_id == f.read().strip()
    assert status.enabled and len(status.challenge) == 16
    assert status.lease_seconds == LEASE
    assert status.max_bytes_per_client == 8 << 20 and status.max_bytes == 64 << 20


def test_column_major_results_travel_in_their_order(server):
    """A transposed result is written as it lies in memory (fortran_order), not transposed."""
    replies = []

    class Keep(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation, details, request):
            outcome = continuation(details, request)
            if details.method.endswith("/Evaluate"):
                replies.append(pb.EvaluateResponse.FromString(outcome.result()))
            return outcome

    a = np.arange(300 * 200, dtype=np.float64).reshape(300, 200)
    g = gs.trace(lambda m: (m.T, m * 2.0), a)
    channel = grpc.intercept_channel(grpc.insecure_channel(server.address), Keep())
    with gs.Client(channel, timeout=60, shared_memory=True) as cli:
        transposed, doubled = cli.evaluate(g, a)
    channel.close()
    np.testing.assert_array_equal(transposed, a.T)
    np.testing.assert_array_equal(doubled, 2.0 * a)
    first, second = (item.shared_memory for item in replies[-1].outputs.tuple.items)
    assert first.fortran_order and tuple(first.shape) == (200, 300)
    assert not second.fortran_order


def test_threads_of_one_client_each_get_their_own_region(server):
    from concurrent.futures import ThreadPoolExecutor

    g = gs.trace(lambda v, w: gnp.tanh(v @ w), np.ones((64, 64)), np.ones((64, 64)))
    rng = np.random.default_rng(7)
    cases = [(rng.standard_normal((64, 64)), rng.standard_normal((64, 64))) for _ in range(24)]
    with gs.Client(server.address, timeout=60, shared_memory=True) as cli:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda c: cli.evaluate(g, *c), cases))
        assert 1 <= len(cli._shared_memory._regions) <= 4
    for (v, w), out in zip(cases, results):
        np.testing.assert_allclose(out, np.tanh(v @ w), rtol=1e-13)


def test_the_metrics_count_mapped_regions(server):
    import urllib.request

    def mapped():
        text = urllib.request.urlopen(server.metrics_url, timeout=10).read().decode()
        (line,) = [s for s in text.splitlines() if s.startswith("gradserve_shared_memory_bytes ")]
        return float(line.split()[1])

    before = mapped()
    x = np.ones(10_000)
    with gs.Client(server.address, timeout=60, shared_memory=True) as cli:
        cli.evaluate(gs.trace(lambda v: v * 2.0, x), x)
        (region,) = cli._shared_memory._regions.values()
        assert mapped() == before + region.size
    assert mapped() == before  # close() unregistered it


def test_a_client_letting_go_mid_call_does_not_pull_the_arguments_away(server):
    """The client's deadline passes and close() unregisters its region while the server is
    still multiplying the matrices that live there: the server keeps its mapping until the
    call's arrays are gone (no crash), stops at the deadline and serves on."""
    X = np.random.default_rng(1).standard_normal((400, 400))

    def many_products(x, w):
        acc = x
        for _ in range(300):
            acc = gnp.tanh(acc @ w) + x  # reads both arguments, in the region, every time
        return acc

    graph = gs.trace(many_products, X, X)
    for _ in range(3):
        with gs.Client(server.address, timeout=0.3, shared_memory=True) as cli:
            with pytest.raises(gs.DeadlineExceeded):
                cli.evaluate(graph, X, X)
    assert server.health() == "SERVING"
    small = gs.trace(lambda v: v * 2.0, X)
    with gs.Client(server.address, timeout=60, shared_memory=True) as cli:
        np.testing.assert_array_equal(cli.evaluate(small, X), 2.0 * X)


def test_a_restarted_server_gets_a_new_lease_and_the_same_answers():
    x = np.linspace(0.0, 1.0, 20_000)
    g = gs.trace(lambda v: gnp.sin(v) * 3.0, x)
    first = ServerProcess()
    try:
        with gs.Client(first.address, timeout=60, retries=20, shared_memory=True) as cli:
            np.testing.assert_array_equal(cli.evaluate(g, x), np.sin(x) * 3.0)
            lease = cli._shared_memory.lease
            first.kill()  # its leases, cache and mappings are gone
            second = ServerProcess(port=first.port, metrics_port=first.metrics_port)
            try:
                # The first call finds the lease unknown and goes inline, the next registers.
                for k in range(3):
                    np.testing.assert_array_equal(cli.evaluate(g, x + k), np.sin(x + k) * 3.0)
                assert cli._shared_memory.lease not in ("", lease)
                assert len(cli._shared_memory._regions) == 1
            finally:
                second.close()
    finally:
        first.close()
