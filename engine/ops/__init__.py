"""Importing this package registers every primitive."""
from . import contraction, control, elementwise, indexing, reductions, shapes  # noqa: F401
