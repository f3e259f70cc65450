"""The dtypes a graph may carry, and NumPy's promotion between them."""

import numpy as np

SUPPORTED = ("float64", "float32", "complex128", "int32", "int64", "bool")
INEXACT = ("float64", "float32", "complex128")
# Internal only (never on the wire): a loop's recorded carries, kept for its reverse pass.
TAPE = "tape"


def canonical(dtype) -> str:
    """The dtype's name, or TypeError for one gradserve does not carry."""
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise TypeError(f"unsupported dtype {dtype!r}") from exc
    if name not in SUPPORTED:
        raise TypeError(f"unsupported dtype {name!r}; gradserve carries {', '.join(SUPPORTED)}")
    return name


def is_differentiable(dtype: str) -> bool:
    return dtype in INEXACT


def promote(*dtypes: str) -> str:
    return canonical(np.result_type(*[np.dtype(d) for d in dtypes]))


def weak_scalar_dtype(dtype: str, scalar) -> str:
    """The dtype a Python number takes next to an array of `dtype` (NumPy 2's weak scalars:
    `float32_array * 0.5` stays float32)."""
    return canonical(np.result_type(np.dtype(dtype), scalar))
