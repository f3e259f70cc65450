"""gradserve: values and derivatives of serialized computation graphs, in-process or over gRPC.

    import gradserve as gs
    import gradserve.numpy as gnp
    graph = gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0)
    gs.Engine().value_and_grad(graph, 2.0, 5.0, argnums=(0, 1))
"""
from gradserve.engine import (Engine, Graph, GraphError, LimitError, Limits, Port, Spec, Stats,
                              TracerBoolError, trace)
from gradserve.engine import nn  # noqa: F401
from gradserve.engine.control import checkpoint, cond, fori_loop, scan, while_loop
from gradserve.optimize import minimize  # noqa: F401  (gs.minimize; imports SciPy when called)

__all__ = ["Engine", "Graph", "GraphError", "LimitError", "Limits", "Port", "Spec", "Stats",
           "TracerBoolError", "trace", "nn", "cond", "while_loop", "fori_loop", "scan", "checkpoint"]


def __getattr__(name):
    # The client pulls in grpc; import it only when asked for.
    if name == "Client":
        from gradserve.client import Client
        return Client
    raise AttributeError(f"module 'gradserve' has no attribute {name!r}")
