"""gradserve: values and derivatives of serialized computation graphs, in-process or over gRPC.

import gradserve as gs
import gradserve.numpy as gnp
graph = gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0)
gs.Engine().value_and_grad(graph, 2.0, 5.0, argnums=(0, 1))

`__all__` lists the public surface: the two backends (Engine, Client), tracing (trace, Spec,
Graph, Port, Tracer), control flow, gs.minimize, gs.explain, the numerical and symbolic
derivatives (numeric_grad, to_sympy, symbolic_derivative, expression_size), the types the backends return (Stats,
RemoteStats, GradCheck) and the exceptions they raise.

The names are imported on first use: `import gradserve` alone loads neither NumPy nor the
engine, so that `gradserve health` (a probe run every few seconds) stays light."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gradserve.client import (
        Client,
        DeadlineExceeded,
        RemoteStats,
        ServiceError,
        ServiceUnavailable,
    )
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
        custom_jvp,
        custom_vjp,
        expression_size,
        fori_loop,
        grad,
        hessian,
        hvp,
        jacfwd,
        jacobian,
        jacrev,
        jvp,
        nn,
        numeric_grad,
        scan,
        symbolic_derivative,
        to_sympy,
        trace,
        value_and_grad,
        vjp,
        while_loop,
    )
    from gradserve.engine.explain import explain
    from gradserve.optimize import minimize

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
    "custom_jvp",
    "custom_vjp",
    "explain",
    "expression_size",
    "fori_loop",
    "grad",
    "hessian",
    "hvp",
    "jacfwd",
    "jacobian",
    "jacrev",
    "jvp",
    "minimize",
    "nn",
    "numeric_grad",
    "scan",
    "symbolic_derivative",
    "to_sympy",
    "trace",
    "value_and_grad",
    "vjp",
    "while_loop",
]

# Where each public name lives. The client pulls in grpc, the rest NumPy and the engine.
_HOMES = {
    **dict.fromkeys(
        ("Client", "DeadlineExceeded", "RemoteStats", "ServiceError", "ServiceUnavailable"),
        "gradserve.client",
    ),
    "minimize": "gradserve.optimize",
    "explain": "gradserve.engine.explain",
}
_HOMES.update((name, "gradserve.engine") for name in __all__ if name not in _HOMES)
_SUBMODULES = ("client", "engine", "numpy", "optimize", "protocol", "server", "v1")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gradserve")
    except PackageNotFoundError:  # a source tree on sys.path, not installed
        return "0+unknown"


def __getattr__(name):
    if name in _HOMES:
        home = importlib.import_module(_HOMES[name])
        # As `from home import name`: a submodule (engine.nn) when the package lacks the name.
        value = getattr(home, name, None) or importlib.import_module(f"{home.__name__}.{name}")
    elif name == "__version__":
        value = _version()
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'gradserve' has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | {"__version__"})
