"""`import gradserve.numpy as gnp`: NumPy-named functions that record into a graph."""

from gradserve.engine.numpy import *  # noqa: F403
from gradserve.engine.numpy import abs, max, min, round, sum  # noqa: F401  (shadow builtins)
