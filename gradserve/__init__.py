"""gradserve: values and derivatives of serialized computation graphs, in-process or over gRPC.

import gradserve as gs
import gradserve.numpy as gnp
graph = gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0)
gs.Engine().value_and_grad(graph, 2.0, 5.0, argnums=(0, 1))

`__all__` lists the public surface: the two backends (Engine, Client), tracing (trace, Spec,
Graph, Port, Tracer), control flow, gs.minimize, the numerical and symbolic derivatives
(numeric_grad, to_sympy, symbolic_derivative, expression_size), the types the backends return
(Stats, RemoteStats, GradCheck) and the exceptions they raise."""

from gradserve.engine import (
    Engine,
    GradCheck,
    Graph,
    GraphError,
    LimitError,
    Limits,
    Port,
    Spec,
    Stats,
    Tracer,
    TracerBoolError,
    checkpoint,
    cond,
    expression_size,
    fori_loop,
    nn,
    numeric_grad,
    scan,
    symbolic_derivative,
    to_sympy,
    trace,
    while_loop,
)
from gradserve.optimize import minimize


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradserve")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0+unknown"


__version__ = _version()

__all__ = [
    "Client",
    "DeadlineExceeded",
    "Engine",
    "GradCheck",
    "Graph",
    "GraphError",
    "LimitError",
    "Limits",
    "Port",
    "RemoteStats",
    "ServiceError",
    "ServiceUnavailable",
    "Spec",
    "Stats",
    "Tracer",
    "TracerBoolError",
    "checkpoint",
    "cond",
    "expression_size",
    "fori_loop",
    "minimize",
    "nn",
    "numeric_grad",
    "scan",
    "symbolic_derivative",
    "to_sympy",
    "trace",
    "while_loop",
]

_CLIENT_NAMES = ("Client", "DeadlineExceeded", "RemoteStats", "ServiceError", "ServiceUnavailable")


def __getattr__(name):
    # The client pulls in grpc; import it only when asked for.
    if name in _CLIENT_NAMES:
        from gradserve import client

        return getattr(client, name)
    raise AttributeError(f"module 'gradserve' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
