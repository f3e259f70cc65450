"""Large tensors on their way in: the server views a request's tensor data where it arrived
(np.frombuffer over the received bytes, read-only, no copy) and the engine never writes into
it; the client encodes a large argument with one copy of its bytes."""

from __future__ import annotations

import functools
import hashlib
import tracemalloc

import grpc
import numpy as np
import pytest
from conftest import ServerProcess
from gradserve.v1 import service_pb2 as pb

import gradserve as gs
import gradserve.numpy as gnp
from gradserve.protocol import array_digest, method_path, split_tensor_data, tensor_ref_parts

N = 655360  # 5 MiB of float64


@pytest.fixture(scope="module")
def running():
    from gradserve.server import serve

    server = serve(block=False, host="127.0.0.1", port=0, metrics_port=-1)
    yield server
    server.stop(0)


def _spy(running, method):
    """Record the request bytes the servicer receives and the arrays the engine's `method`
    gets, each with whether it lay inside those bytes, then run the engine as usual."""
    servicer = running.servicer
    seen = {"requests": [], "args": []}
    handle = servicer._handle

    def recording_handle(method_name, request_cls, compute, request_bytes, *rest):
        seen["requests"].append(request_bytes)
        return handle(method_name, request_cls, compute, request_bytes, *rest)

    engine_method = getattr(servicer.engine, method)

    @functools.wraps(engine_method)
    def recording_method(graph, *args, **kwargs):
        received = np.frombuffer(seen["requests"][-1], np.uint8)
        start = received.ctypes.data
        for a in args:
            inside = start <= a.ctypes.data and a.ctypes.data + a.nbytes <= start + received.size
            seen["args"].append((a, inside, a.flags.writeable, a.flags.owndata))
        return engine_method(graph, *args, **kwargs)

    servicer._handle = recording_handle
    setattr(servicer.engine, method, recording_method)
    return seen


def _unspy(running, method):
    del running.servicer._handle
    delattr(running.servicer.engine, method)


@pytest.mark.parametrize("method", ["evaluate", "value_and_grad"])
def test_a_large_request_tensor_is_a_read_only_view_of_the_received_bytes(running, method):
    x = np.random.default_rng(1).standard_normal(N)
    original = x.copy()
    # Ops whose plan could reuse a buffer in place (the argument's, were it writable).
    graph = gs.trace(lambda x, s: gnp.sum(gnp.exp(x * s) * 0.5 + x), x, 0.1)
    seen = _spy(running, method)
    try:
        with gs.Client(
            f"127.0.0.1:{running.port}", timeout=60, digest_min_bytes=1 << 40, shared_memory=False
        ) as cli:
            if method == "evaluate":
                got = cli.evaluate(graph, x, 0.1)
                want = np.sum(np.exp(x * 0.1) * 0.5 + x)
            else:
                got, (gx, gs_) = cli.value_and_grad(graph, x, 0.1, argnums=(0, 1))
                want = np.sum(np.exp(x * 0.1) * 0.5 + x)
                np.testing.assert_allclose(gx, 0.05 * np.exp(x * 0.1) + 1, rtol=1e-12)
                np.testing.assert_allclose(gs_, np.sum(0.5 * x * np.exp(x * 0.1)), rtol=1e-10)
            digest_before = hashlib.sha256(seen["requests"][-1]).hexdigest()
    finally:
        _unspy(running, method)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    (big, inside, writeable, owndata), (_, small_inside, *_) = seen["args"]
    assert big.shape == (N,) and inside and not writeable and not owndata
    assert not small_inside  # a scalar is parsed by protobuf as before
    np.testing.assert_array_equal(big, original)  # the engine never wrote into it
    assert hashlib.sha256(seen["requests"][-1]).hexdigest() == digest_before
    np.testing.assert_array_equal(x, original)


def test_a_remembered_tensor_is_cached_without_the_rest_of_its_request(running):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(N // 4), rng.standard_normal(N // 4)
    graph = gs.trace(lambda a, b: gnp.sum(a * b), a, b)
    with gs.Client(f"127.0.0.1:{running.port}", timeout=60, shared_memory=False) as cli:
        assert cli.evaluate(graph, a, b) == pytest.approx(np.dot(a, b), rel=1e-12)
    cache = running.servicer.cache
    for x in (a, b):  # both sent with `remember` the first time
        cached = cache.get("t" + array_digest(x))
        assert cached is not None and cached.base is None and not cached.flags.writeable
        np.testing.assert_array_equal(cached, x)


def test_the_request_is_parsed_without_the_large_data():
    big, small = np.arange(3000.0), np.arange(3.0)
    head = pb.EvaluateRequest(graph=pb.GraphRef(digest="ab" * 32)).SerializeToString()
    message = b"".join(
        [head]
        + tensor_ref_parts(2, big, remember=True)
        + tensor_ref_parts(2, small)
        + tensor_ref_parts(2, digest="cd" * 32)
        + tensor_ref_parts(2)
        + tensor_ref_parts(2, big)
    )
    rest, views = split_tensor_data(message, {2: "args"}, 16384)
    assert set(views) == {("args", 0), ("args", 4)} and len(rest) < 300
    whole, parsed = pb.EvaluateRequest.FromString(message), pb.EvaluateRequest.FromString(rest)
    for (_, i), view in views.items():
        assert view.obj is message and bytes(view) == whole.args[i].tensor.data
        assert parsed.args[i].tensor.data == b""
        whole.args[i].tensor.data = b""
    assert parsed == whole  # everything else as protobuf parses it
    # Bytes it does not follow (cut short; a Tensor with two data fields) go to protobuf whole.
    assert split_tensor_data(message[:-5], {2: "args"}, 16384) == (message[:-5], {})
    data = _field(3, b"x" * 20000)  # Tensor.data
    # A Tensor with its data twice (protobuf keeps the last); a TensorRef with its tensor
    # twice (protobuf merges them).
    for ref in (_field(1, data + data), _field(1, data) + _field(1, data)):
        message = _field(2, ref)
        assert split_tensor_data(message, {2: "args"}, 16384) == (message, {})


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    size, out = len(payload), bytearray([number << 3 | 2])
    while size >= 0x80:
        out.append(size & 0x7F | 0x80)
        size >>= 7
    return bytes(out) + bytes([size]) + payload


def test_a_short_tensor_under_the_split_is_still_invalid_argument(running):
    data = b"".join(
        [pb.EvaluateRequest(graph=pb.GraphRef(digest="ab" * 32)).SerializeToString()]
        + tensor_ref_parts(2, np.arange(4000.0))
    )
    # Declare one element more than the data holds: the view is checked like the field.
    bad = data.replace(b"\x12\x02\xa0\x1f", b"\x12\x02\xa1\x1f", 1)
    assert bad != data
    with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
        with pytest.raises(grpc.RpcError) as err:
            channel.unary_unary(method_path("Evaluate"))(bad, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (
        "args[0].data: data has 32000 bytes, shape (4001,) of float64 needs 32008"
    )


def test_the_client_encodes_a_large_argument_with_one_copy():
    x = np.random.default_rng(2).standard_normal(N)
    graph = gs.trace(lambda x: gnp.sum(x), x)
    server = ServerProcess()
    try:
        with gs.Client(
            server.address, timeout=60, digest_min_bytes=1 << 40, shared_memory=False
        ) as cli:
            cli.evaluate(graph, x)
            tracemalloc.start()
            try:
                tracemalloc.reset_peak()
                got = cli.evaluate(graph, x)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
    finally:
        server.close()
    assert got == pytest.approx(np.sum(x), rel=1e-12)
    # The join of the message's parts is the one copy; tobytes() or a filled message
    # would make a second.
    assert x.nbytes <= peak < 1.5 * x.nbytes, peak
