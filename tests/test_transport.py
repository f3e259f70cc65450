"""The transport, end to end over loopback: deadlines counted as such, the client's deadline
and size messages, channel options, reflection v1 and v1alpha, and connections that age out."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from conftest import ServerProcess
from test_service import SEED, _long_chain, _wait_idle, sample, scrape

import gradserve as gs
import gradserve.numpy as gnp
from gradserve.protocol import SERVICE_NAME


@pytest.fixture(scope="module")
def proc():
    """A server of its own, so that counters and log lines are this module's."""
    p = ServerProcess()
    yield p
    p.close()


# ---- 1. a deadline that passes during a long op is DEADLINE_EXCEEDED, not CANCELLED --------------


def test_deadline_during_a_long_op_is_counted_and_logged_as_deadline_exceeded(proc):
    graph, x, W = _long_chain()
    before = scrape(proc)
    for _ in range(2):
        with gs.Client(proc.address, timeout=0.5) as cli:
            with pytest.raises(gs.DeadlineExceeded):
                cli.evaluate(graph, x, W)
    _wait_idle(proc, timeout=5.0)
    after = scrape(proc)

    def delta(code):
        return sample(after, "gradserve_requests_total", method="Evaluate", code=code) - sample(
            before, "gradserve_requests_total", method="Evaluate", code=code
        )

    assert delta("DEADLINE_EXCEEDED") == 2
    assert delta("CANCELLED") == 0
    log = proc.output()
    assert "Evaluate DEADLINE_EXCEEDED" in log
    assert "Evaluate CANCELLED" not in log


# ---- 2. a request too large to send within its deadline: not "retrying an unavailable server" ---


def test_deadline_while_sending_does_not_blame_an_unavailable_server(proc):
    big = np.random.default_rng(0).random(8_000_000)  # 64 MB: its encoding alone takes longer
    graph = gs.trace(lambda x: gnp.sum(x), big)
    for timeout in (1e-6, 0.02):
        with gs.Client(proc.address, timeout=timeout) as cli:
            with pytest.raises(gs.DeadlineExceeded) as info:
                cli.evaluate(graph, big)
        message = str(info.value)
        assert "unavailable" not in message and "retrying" not in message, message
        assert "sending" in message and "deadline" in message, message
    assert proc.health() == "SERVING"


# ---- 3. channel options: the client's unlimited receive size survives user options ---------------


def _big_reply():
    """A small request (8 kB) whose reply is 8 MB."""
    x = np.linspace(0.0, 1.0, 1000)
    return gs.trace(lambda x: x[:, None] * x[None, :], x), x


def test_user_options_are_merged_over_the_defaults(proc):
    graph, x = _big_reply()
    with gs.Client(proc.address, timeout=60, options=[("grpc.enable_retries", 0)]) as cli:
        out = cli.evaluate(graph, x)
    assert out.shape == (1000, 1000) and out.nbytes == 8_000_000
    # the user may still lower it
    with gs.Client(
        proc.address, timeout=60, retries=0, options=[("grpc.max_receive_message_length", 1 << 20)]
    ) as cli:
        with pytest.raises(gs.LimitError, match="reply"):
            cli.evaluate(graph, x)


def test_a_reply_over_a_ready_channels_receive_limit_blames_the_reply(proc):
    graph, x = _big_reply()
    with grpc.insecure_channel(proc.address) as channel:  # gRPC's default: 4 MiB received
        with gs.Client(channel, timeout=60, retries=0) as cli:
            with pytest.raises(gs.LimitError) as info:
                cli.evaluate(graph, x)
    message = str(info.value)
    assert info.value.where == "reply", message
    assert "reply" in message and "receive limit" in message, message
    assert "request" not in message.split("(", maxsplit=1)[0], message


# ---- 4. reflection: v1 and v1alpha -----------------------------------------------------------------


def _list_services(address, version):
    from grpc_reflection.v1alpha import reflection_pb2

    with grpc.insecure_channel(address) as ch:
        # v1 and v1alpha messages are the same on the wire: only the service name differs.
        info = ch.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        replies = list(
            info(
                iter(
                    [
                        reflection_pb2.ServerReflectionRequest(list_services=""),
                        reflection_pb2.ServerReflectionRequest(
                            file_containing_symbol="grpc.reflection.v1.ServerReflection"
                        ),
                        reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAME),
                    ]
                ),
                timeout=10,
            )
        )
    return replies


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_v1_and_v1alpha(proc, version):
    from google.protobuf import descriptor_pb2

    replies = _list_services(proc.address, version)
    names = {s.name for s in replies[0].list_services_response.service}
    assert {
        SERVICE_NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in replies[1].file_descriptor_response.file_descriptor_proto
    ]
    v1 = next(f for f in files if f.package == "grpc.reflection.v1")
    assert v1.name == "grpc/reflection/v1/reflection.proto"
    assert v1.service[0].method[0].input_type == ".grpc.reflection.v1.ServerReflectionRequest"
    assert replies[2].file_descriptor_response.file_descriptor_proto


# ---- 5. connections age out, and clients reconnect transparently ---------------------------------


def test_connections_are_closed_after_max_connection_age_and_clients_reconnect():
    from gradserve.server import serve

    running = serve(
        block=False, host="127.0.0.1", port=0, metrics_port=-1, max_connection_age_seconds=0.5
    )
    try:
        states = []
        seen = threading.Condition()

        def watch(state):
            with seen:
                states.append(state)
                seen.notify_all()

        with gs.Client(f"127.0.0.1:{running.port}", timeout=30, retries=0) as cli:
            cli._channel.subscribe(watch, try_to_connect=False)
            assert float(cli.evaluate(SEED, 2.0, 5.0)) == pytest.approx(11.652071455223084)
            with seen:
                assert seen.wait_for(
                    lambda: grpc.ChannelConnectivity.READY in states, timeout=10
                ), states
                ready_at = states.index(grpc.ChannelConnectivity.READY)
                # GOAWAY after about 0.5 s (+-10% jitter): the channel leaves READY by itself
                assert seen.wait_for(
                    lambda: any(
                        s != grpc.ChannelConnectivity.READY for s in states[ready_at + 1 :]
                    ),
                    timeout=10,
                ), states
            # the next call reconnects, no retry needed (retries=0)
            for _ in range(3):
                assert float(cli.evaluate(SEED, 2.0, 5.0)) == pytest.approx(11.652071455223084)
                time.sleep(0.4)
            cli._channel.unsubscribe(watch)
    finally:
        running.stop(0)


def test_max_connection_age_flag_and_environment():
    p = ServerProcess(env={"GRADSERVE_MAX_CONNECTION_AGE_SECONDS": "0"})
    try:
        with gs.Client(p.address, timeout=30) as cli:
            assert float(cli.evaluate(SEED, 2.0, 5.0)) == pytest.approx(11.652071455223084)
    finally:
        p.close()
