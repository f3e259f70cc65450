"""NumPy's own functions on traced values: NumPy's dispatch protocols, NEP 13
(`__array_ufunc__`) and NEP 18 (`__array_function__`), for `gs.Tracer`.

`np.sin(x)`, `np.sum(x, axis=0)`, `np.ones(3) + x`, `np.linalg.solve(A, x)`, `np.add.reduce(x)`
on a traced `x` call the `gradserve.numpy` function of the same name, so they record exactly
the nodes `gnp.sin(x)`, ... record. The tables are names, looked up when called: a function
that `gradserve.numpy` (or `gradserve.numpy.linalg`) gains dispatches without an entry here.
What has no counterpart is a TypeError naming it ("gradserve does not support
numpy.fft.fft"); so is `out=` (a graph's arrays are immutable) and any keyword gradserve
cannot honour.
"""

from __future__ import annotations

import functools
import inspect

import numpy as np

from . import linalg as _linalg
from . import numpy as _gnp
from .tracing import Tracer

_NAMESPACES = {"numpy": _gnp, "numpy.linalg": _linalg}
# NumPy names whose gradserve.numpy counterpart has another name.
_FUNCTION_ALIASES = {"permute_dims": "transpose", "concat": "concatenate"}
_UFUNC_ALIASES = {"rint": "round"}
# Reductions whose dtype= means "compute in dtype": the operand is converted first.
_CONVERT_FIRST = {"sum", "prod", "mean", "var", "std", "cumsum", "cumprod", "max", "min"}
# ufunc methods: the gradserve.numpy function that does `ufunc.method`.
_REDUCE = {
    "add": "sum",
    "multiply": "prod",
    "maximum": "max",
    "minimum": "min",
    "logical_and": "all",
    "logical_or": "any",
}
_ACCUMULATE = {"add": "cumsum", "multiply": "cumprod"}
_BITWISE = {
    "bitwise_and": "logical_and",
    "bitwise_or": "logical_or",
    "bitwise_xor": "logical_xor",
    "invert": "logical_not",
}


def _unsupported(label: str, why: str = "") -> TypeError:
    return TypeError(f"gradserve does not support {label}{why}")


def _lookup(namespace, name):
    """The public function `name` of a gradserve namespace, or None."""
    if name not in getattr(namespace, "__all__", ()):
        return None
    fn = getattr(namespace, name, None)
    return fn if callable(fn) and not isinstance(fn, type) else None


def _show(value) -> str:
    return "a traced value" if isinstance(value, Tracer) else repr(value)


def _label(func) -> str:
    return f"{getattr(func, '__module__', None) or 'numpy'}.{getattr(func, '__name__', func)}"


# ---- __array_function__ (NEP 18) ----------------------------------------------------------


def _as_dtype(value):
    return value.dtype if isinstance(value, Tracer) else value


# NumPy's introspection functions: answered from the Tracer's spec, with NumPy's signatures.
def _shape(a):
    return tuple(a.shape) if isinstance(a, Tracer) else np.shape(a)


def _ndim(a):
    return a.ndim if isinstance(a, Tracer) else np.ndim(a)


def _size(a, axis=None):
    if not isinstance(a, Tracer):
        return np.size(a, axis)
    return a.size if axis is None else a.shape[axis]


def _iscomplexobj(x):
    return np.dtype(_as_dtype(x)).kind == "c" if isinstance(x, Tracer) else np.iscomplexobj(x)


def _isrealobj(x):
    return not _iscomplexobj(x)


def _result_type(*arrays_and_dtypes):
    return np.result_type(*[_as_dtype(a) for a in arrays_and_dtypes])


def _copy(a, order="K", subok=False):
    return a  # a graph's values are never modified: a copy is the value itself


_INTROSPECTION = {
    ("numpy", "shape"): _shape,
    ("numpy", "ndim"): _ndim,
    ("numpy", "size"): _size,
    ("numpy", "iscomplexobj"): _iscomplexobj,
    ("numpy", "isrealobj"): _isrealobj,
    ("numpy", "result_type"): _result_type,
    ("numpy", "copy"): _copy,
}


def function_target(func):
    """The gradserve function a NumPy function dispatches to, or None."""
    module, name = getattr(func, "__module__", None), getattr(func, "__name__", None)
    if (module, name) in _INTROSPECTION:
        return _INTROSPECTION[module, name]
    namespace = _NAMESPACES.get(module)
    if namespace is None:
        return None
    return _lookup(namespace, _FUNCTION_ALIASES.get(name, name))


@functools.cache
def _signature(fn):
    try:
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _takes(sig, name) -> bool:
    if sig is None:
        return False
    param = sig.parameters.get(name)
    if param is not None:
        return param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
    return any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def _positional_name(sig, index):
    """The name of the target's `index`-th positional parameter ('*' for *args), or None."""
    if sig is None:
        return None
    params = [
        p
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    for i, p in enumerate(params):
        if p.kind == p.VAR_POSITIONAL:
            return "*"
        if i == index:
            return p.name
    return None


def _ignorable(name, value) -> bool:
    """Keywords whose value changes nothing in a graph (memory layout, copies, devices)."""
    if value is np._NoValue:
        return True
    if name in ("copy", "subok", "like", "optimize"):
        return True
    if name == "order":
        return value in (None, "C", "K", "A")
    if name == "device":
        return value in (None, "cpu")
    if name == "casting":
        return value in ("same_kind", "unsafe", "safe")
    if name == "where":
        return value is True
    if name == "keepdims":
        return value is False
    return value is None and name in ("dtype", "out", "axes", "axis", "signature")


def _arguments(func, target, label, args, kwargs):
    """NumPy's call, bound to NumPy's signature, as a call of the gradserve function:
    (positional, keywords, dtype to convert the first operand to)."""
    np_sig, sig = _signature(func), _signature(target)
    if np_sig is None:  # a builtin without a signature: the arguments as given
        items = [(None, i, a) for i, a in enumerate(args)] + [
            (k, None, v) for k, v in kwargs.items()
        ]
    else:
        try:
            bound = np_sig.bind(*args, **kwargs)
        except TypeError as exc:
            raise TypeError(f"{label}: {exc}") from None
        names = list(np_sig.parameters)
        items = []
        for name, value in bound.arguments.items():
            param = np_sig.parameters[name]
            if param.kind == param.VAR_POSITIONAL:
                items += [(None, None, v) for v in value]
            elif param.kind == param.VAR_KEYWORD:
                items += [(k, None, v) for k, v in value.items()]
            else:
                items.append((name, names.index(name), value))
    positional, keywords, convert = [], {}, None
    for name, index, value in items:
        if name is None:  # *args, or a builtin's positional argument
            positional.append(value)
            continue
        if name == "out" and value is not None:
            raise TypeError(
                f"{label}: out= is not supported: the arrays of a graph are immutable; "
                "use the value it returns"
            )
        if value is np._NoValue:
            continue
        if index is not None and index == len(positional):
            target_name = _positional_name(sig, index)
            if index == 0 or target_name == name:
                positional.append(value)
                continue
        if _takes(sig, name):
            keywords[name] = value
        elif name == "dtype" and value is not None and func.__name__ in _CONVERT_FIRST:
            convert = value
        elif not _ignorable(name, value):
            hint = "; apply np.where(mask, x, identity) first" if name == "where" else ""
            raise TypeError(
                f"gradserve's {label} does not take {name}={_show(value)} "
                f"(it takes {sig if sig is not None else 'other arguments'}){hint}"
            )
    return positional, keywords, convert


def array_function(func, types, args, kwargs):
    """`Tracer.__array_function__`: NumPy function `func` called with a Tracer among its
    array arguments."""
    if not all(issubclass(t, (Tracer, np.ndarray)) for t in types):
        return NotImplemented
    label = _label(func)
    target = function_target(func)
    if target is None:
        raise _unsupported(label)
    if getattr(target, "__module__", None) == __name__:  # introspection: NumPy's signature
        return target(*args, **kwargs)
    positional, keywords, convert = _arguments(func, target, label, args, kwargs)
    sig = _signature(target)
    if sig is not None:
        try:
            sig.bind(*positional, **keywords)
        except TypeError as exc:
            raise TypeError(f"gradserve's {label} takes {sig}: {exc}") from None
    if convert is not None:
        positional[0] = _gnp.astype(positional[0], convert)
    return target(*positional, **keywords)


# ---- __array_ufunc__ (NEP 13) ---------------------------------------------------------------


def _operand(value):
    if isinstance(value, (Tracer, np.ndarray, np.generic, bool, int, float, complex)):
        return value
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    return NotImplemented


def _dtype_name(value) -> str:
    return value.spec.dtype if isinstance(value, Tracer) else np.asarray(value).dtype.name


def ufunc_target(ufunc, inputs=()):
    """The gradserve function that computes `ufunc(*inputs)`, or None."""
    name = ufunc.__name__
    if name == "positive":
        return lambda x: x
    if name in _BITWISE:  # on booleans, the logical operation (what & | ^ ~ do on Tracers)
        if inputs and all(_dtype_name(x) == "bool" for x in inputs):
            return _lookup(_gnp, _BITWISE[name])
        return None
    return _lookup(_gnp, _UFUNC_ALIASES.get(name, name))


def _bool_valued(ufunc) -> bool:
    return all(t.endswith("?") for t in ufunc.types if "O" not in t)


def _check_kwargs(label, kwargs, allowed=()):
    for name, value in kwargs.items():
        if name in allowed:
            continue
        if name == "where" and value is not True:
            raise TypeError(
                f"{label}: where= is not supported (NumPy leaves the masked entries "
                "uninitialised); use np.where(mask, f(x), other) instead"
            )
        if not _ignorable(name, value):
            raise TypeError(f"gradserve does not support {label} with {name}={_show(value)}")


def _convert(value, dtype):
    if isinstance(value, Tracer):
        return _gnp.astype(value, dtype)
    return np.asarray(value).astype(dtype)


def array_ufunc(ufunc, method, inputs, kwargs):
    """`Tracer.__array_ufunc__`: `ufunc.method(*inputs, **kwargs)` with a Tracer among the
    inputs (also what `ndarray + tracer` comes to)."""
    label = f"numpy.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
    inputs = [_operand(x) for x in inputs]
    if any(x is NotImplemented for x in inputs):
        return NotImplemented
    out = kwargs.pop("out", None)
    if out is not None and any(o is not None for o in out):
        raise TypeError(
            f"{label}: out= is not supported: the arrays of a graph are immutable; "
            "use the value it returns (for `array += traced`, write `array = array + traced`)"
        )
    if method == "__call__":
        return _call(ufunc, label, inputs, kwargs)
    if method == "reduce":
        return _reduce(ufunc, label, inputs[0], **kwargs)
    if method == "accumulate":
        return _accumulate(ufunc, label, inputs[0], **kwargs)
    if method == "outer":
        return _outer(ufunc, label, inputs, kwargs)
    why = (
        " (it updates an array in place; a graph's arrays are immutable)" if method == "at" else ""
    )
    raise _unsupported(label, why)


def _call(ufunc, label, inputs, kwargs):
    fn = ufunc_target(ufunc, inputs)
    if fn is None:
        raise _unsupported(label)
    dtype = kwargs.pop("dtype", None)
    _check_kwargs(label, kwargs)
    if dtype is not None:
        if _bool_valued(ufunc):
            raise TypeError(f"gradserve does not support {label} with dtype={dtype!r}")
        inputs = [_convert(x, dtype) for x in inputs]
    return fn(*inputs)


def _reduce(
    ufunc, label, x, axis=0, dtype=None, keepdims=False, initial=np._NoValue, where=True, **rest
):
    fn = _lookup(_gnp, _REDUCE.get(ufunc.__name__, ""))
    if fn is None:
        raise _unsupported(label)
    _check_kwargs(label, rest)
    if dtype is not None:
        x = _convert(x, dtype)
    if where is not True:
        fill = ufunc.identity if initial is np._NoValue else initial
        if fill is None:
            raise ValueError(
                f"reduction operation '{ufunc.__name__}' does not have an identity, "
                "so to use a where mask one has to specify 'initial'"
            )
        x = _gnp.where(where, x, fill)
    result = fn(x, axis=axis, keepdims=keepdims)
    if initial is not np._NoValue and initial is not None:
        result = ufunc_target(ufunc)(result, initial)
    return result


def _accumulate(ufunc, label, x, axis=0, dtype=None, **rest):
    fn = _lookup(_gnp, _ACCUMULATE.get(ufunc.__name__, ""))
    if fn is None:
        raise _unsupported(label)
    _check_kwargs(label, rest)
    if dtype is not None:
        x = _convert(x, dtype)
    return fn(x, axis=axis)


def _outer(ufunc, label, inputs, kwargs):
    a, b = inputs
    if ufunc.__name__ == "multiply" and _ndim(a) == 1 and _ndim(b) == 1 and not kwargs:
        return _gnp.outer(a, b)  # the same graph as np.outer / gnp.outer
    if ufunc.nin != 2:
        raise _unsupported(label)
    a = _gnp.reshape(a, _shape(a) + (1,) * _ndim(b))
    return _call(ufunc, label, [a, b], kwargs)
