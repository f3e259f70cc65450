"""gradserve: values and derivatives of serialized computation graphs, in-process or over gRPC.

import gradserve as gs
import gradserve.numpy as gnp
graph = gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0)
gs.Engine().value_and_grad(graph, 2.0, 5.0, argnums=(0, 1))
"""

from gradserve.engine import (
    Engine,
    Graph,
    GraphError,
    LimitError,
    Limits,
    Port,
    Spec,
    Stats,
    TracerBoolError,
    checkpoint,
    cond,
    fori_loop,
    nn,
    scan,
    trace,
    while_loop,
)
from gradserve.optimize import minimize

__all__ = [
    "Client",
    "DeadlineExceeded",
    "Engine",
    "Graph",
    "GraphError",
    "LimitError",
    "Limits",
    "Port",
    "ServiceError",
    "ServiceUnavailable",
    "Spec",
    "Stats",
    "TracerBoolError",
    "checkpoint",
    "cond",
    "fori_loop",
    "minimize",
    "nn",
    "scan",
    "trace",
    "while_loop",
]

_CLIENT_NAMES = ("Client", "DeadlineExceeded", "ServiceError", "ServiceUnavailable")


def __getattr__(name):
    # The client pulls in grpc; import it only when asked for.
    if name in _CLIENT_NAMES:
        from gradserve import client

        return getattr(client, name)
    raise AttributeError(f"module 'gradserve' has no attribute {name!r}")
