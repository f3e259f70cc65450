"""Shared fixtures. `backend` runs the contract tests against every implementation of the
API: the in-process Engine, and a Client talking to a live server on loopback, started the way
a user starts it (`python -m gradserve serve --port ... --metrics-port ...` in a subprocess)."""

from __future__ import annotations

import grpc
import pytest
from gradserve.server.process import ServerProcess, free_port  # noqa: F401  (tests import them)
from hypothesis import Phase, settings

import gradserve as gs

# tools/mutate.py runs the tests once per planted bug and needs only whether they fail: no
# shrinking of a failing example (which can take longer than the whole run)
settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate])


@pytest.fixture(scope="session")
def server():
    """The shared live server (default settings)."""
    proc = ServerProcess()
    yield proc
    proc.close()


@pytest.fixture(scope="session")
def remote(server):
    """A Client of the shared server."""
    with gs.Client(server.address, timeout=120) as client:
        yield client


@pytest.fixture(params=["engine", "client"])
def backend(request):
    if request.param == "engine":
        return gs.Engine()
    return request.getfixturevalue("remote")


class Recorder(grpc.UnaryUnaryClientInterceptor):
    """Records (method, request bytes) of every call on a channel."""

    def __init__(self):
        self.calls = []

    def intercept_unary_unary(self, continuation, details, request):
        self.calls.append((details.method.rsplit("/", 1)[-1], len(request)))
        return continuation(details, request)
