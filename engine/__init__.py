"""The gradserve engine: graph IR, tracing front end, transformations, planner, executor."""

from . import ops  # noqa: F401  (registers every primitive)
from .engine import Engine
from .errors import GraphError, LimitError, TracerBoolError
from .functions import grad, hessian, hvp, jacfwd, jacobian, jacrev, jvp, value_and_grad, vjp
from .graph import Graph, Port, Spec
from .limits import Limits
from .numerical import GradCheck, numeric_grad
from .ops.control import checkpoint, cond
from .ops.custom import custom_jvp, custom_vjp
from .ops.loops import fori_loop, scan, while_loop
from .plan import Stats
from .symbolic import expression_size, symbolic_derivative, to_sympy
from .tracing import Tracer, trace

__all__ = [
    "Engine",
    "GradCheck",
    "Graph",
    "GraphError",
    "LimitError",
    "Limits",
    "Port",
    "Spec",
    "Stats",
    "Tracer",
    "TracerBoolError",
    "checkpoint",
    "cond",
    "custom_jvp",
    "custom_vjp",
    "expression_size",
    "fori_loop",
    "grad",
    "hessian",
    "hvp",
    "jacfwd",
    "jacobian",
    "jacrev",
    "jvp",
    "numeric_grad",
    "scan",
    "symbolic_derivative",
    "to_sympy",
    "trace",
    "value_and_grad",
    "vjp",
    "while_loop",
]
