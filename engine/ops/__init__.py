"""Importing this package registers every primitive."""

from . import (  # noqa: F401
    contraction,
    control,
    custom,
    elementwise,
    indexing,
    linalg,
    loops,
    reductions,
    shapes,
)
