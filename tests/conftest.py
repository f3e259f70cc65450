"""Shared fixtures. `backend` runs the contract tests against every implementation of the
API: the in-process Engine here; the service adds a Client talking to a live server."""
import pytest

import gradserve as gs


@pytest.fixture(params=["engine"])
def backend(request):
    return gs.Engine()
