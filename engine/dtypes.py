"""The dtypes a graph may carry, and NumPy's promotion between them.

In Python a dtype may be given in any spelling NumPy accepts (`canonical`); on the wire only
the six names of SUPPORTED are dtypes (`wire_name`): no aliases ("double", "f8"), no byte
orders (">f8": wire data is always little-endian), no internal pseudo-dtypes ("tape")."""

import functools

import numpy as np

SUPPORTED = ("float64", "float32", "complex128", "int32", "int64", "bool")
INEXACT = ("float64", "float32", "complex128")
# Internal only (never on the wire): a loop's recorded carries, kept for its reverse pass.
TAPE = "tape"


def canonical(dtype) -> str:
    """The dtype's name, or TypeError for one gradserve does not carry."""
    if type(dtype) is str and dtype in SUPPORTED:  # already canonical (the common case)
        return dtype
    if isinstance(dtype, np.dtype):
        name = _NAMES.get(dtype)
        if name is not None:
            return name
    try:
        name = np.dtype(dtype).name
    except TypeError as exc:
        raise TypeError(f"unsupported dtype {dtype!r}") from exc
    if name not in SUPPORTED:
        raise TypeError(f"unsupported dtype {name!r}; gradserve carries {', '.join(SUPPORTED)}")
    if isinstance(dtype, np.dtype) and len(_NAMES) < 256:
        _NAMES[dtype] = name
    return name


_NAMES: dict = {}  # np.dtype -> its canonical name, for the dtypes seen


def wire_name(name: str) -> str:
    """`name` when it is one of the six dtype names the wire carries, else TypeError."""
    if name in SUPPORTED:
        return name
    shown = repr(name)
    if len(shown) > 40:
        shown = shown[:40] + "..."
    raise TypeError(
        f"unsupported dtype {shown}; the wire carries exactly {', '.join(SUPPORTED)}"
        " (by these names; data little-endian)"
    )


def is_differentiable(dtype: str) -> bool:
    return dtype in INEXACT


@functools.lru_cache(maxsize=1024)
def promote(*dtypes: str) -> str:
    return canonical(np.result_type(*[np.dtype(d) for d in dtypes]))


def weak_scalar_dtype(dtype: str, scalar) -> str:
    """The dtype a Python number takes next to an array of `dtype` (NumPy 2's weak scalars:
    `float32_array * 0.5` stays float32)."""
    return canonical(np.result_type(np.dtype(dtype), scalar))
