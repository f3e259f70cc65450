"""Importing this package registers every primitive."""
from . import contraction, elementwise, indexing, reductions, shapes  # noqa: F401
