"""`import gradserve.numpy as gnp`: NumPy-named functions that record into a graph.

Only NumPy's names are public here (see `__all__`); a traced value's type is `gs.Tracer`."""

from gradserve.engine.numpy import *  # noqa: F403
from gradserve.engine.numpy import __all__  # noqa: F401  (the same public names)
