"""Importing this package registers every primitive."""

from . import contraction, control, elementwise, indexing, loops, reductions, shapes  # noqa: F401
