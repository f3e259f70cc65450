"""The Minimize RPC's messages and the Python values they carry (service.proto, Minimize),
shared by the client and the server: plain data (Datum), bounds, linear constraints, the
callback's state and the OptimizeResult.

Only data crosses the wire: numbers, booleans, strings and arrays. A function (a callback, a
learning-rate schedule, a nonlinear constraint) has no encoding, and the client says so."""

from __future__ import annotations

import numbers

import numpy as np

from gradserve.protocol import fill_tensor, result_array
from gradserve.v1 import service_pb2 as pb

__all__ = [
    "HISTORY_FIELDS",
    "NotData",
    "data_map",
    "fill_datum",
    "fill_result",
    "from_datum",
    "from_map",
    "result_fields",
]

HISTORY_FIELDS = ("step", "loss", "grad_norm", "nfev", "time")
# OptimizeResult fields with a field of their own in MinimizeResult.
_RESULT_FIELDS = ("x", "fun", "jac", "nit", "nfev", "njev", "status", "success", "message")
_RESULT_OWN = frozenset(_RESULT_FIELDS) | {"history", "backend_calls"}


class NotData(TypeError):
    """A value that cannot be sent (a function, an object)."""


def fill_datum(msg: pb.Datum, value):
    """Set a Datum from a number, bool, string or array_like of numbers; NotData otherwise."""
    if isinstance(value, (bool, np.bool_)):
        msg.flag = bool(value)
    elif isinstance(value, numbers.Integral):
        msg.integer = int(value)
    elif isinstance(value, numbers.Real):
        msg.number = float(value)
    elif isinstance(value, str):
        msg.text = value
    else:
        if callable(value):
            raise NotData(f"a {type(value).__name__} is not data")
        try:
            array = np.asarray(value)
        except Exception:
            raise NotData(f"a {type(value).__name__} is not data") from None
        if array.dtype.kind not in "biufc":
            raise NotData(f"a {type(value).__name__} is not an array of numbers")
        if array.dtype.kind in "iu":
            array = array.astype(np.int64)
        elif array.dtype.kind == "f" and array.dtype != np.float32:
            array = array.astype(np.float64)
        elif array.dtype.kind == "c":
            array = array.astype(np.complex128)
        fill_tensor(msg.array, array)


def from_datum(msg: pb.Datum):
    kind = msg.WhichOneof("kind")
    if kind == "array":
        return result_array(msg.array)
    if kind is None:
        raise ValueError("a Datum carries no value")
    return getattr(msg, kind)


def data_map(target, items, skip_non_data=False):
    """Fill a map<string, Datum> from (name, value) pairs; a value that is not data raises
    NotData naming it, or is left out with `skip_non_data`."""
    for name, value in items:
        try:
            fill_datum(target[str(name)], value)
        except NotData as exc:
            del target[str(name)]
            if not skip_non_data:
                raise NotData(f"{name!r}: {exc}") from None


def from_map(source) -> dict:
    return {name: from_datum(datum) for name, datum in source.items()}


# ---- the result -------------------------------------------------------------------------------


def fill_result(msg: pb.MinimizeResult, res):
    """MinimizeResult from gs.minimize's OptimizeResult (x and jac flat)."""
    fill_tensor(msg.x, np.asarray(res.x, dtype=np.float64).reshape(-1))
    msg.fun = float(np.asarray(res.fun))
    jac = res.get("jac")
    if isinstance(jac, np.ndarray) and jac.dtype.kind in "fiu":
        fill_tensor(msg.jac, np.asarray(jac, dtype=np.float64).reshape(-1))
    for name in ("nit", "nfev", "njev"):
        if res.get(name) is not None:
            setattr(msg, name, int(res[name]))
    msg.status = int(res.get("status", 0))
    msg.success = bool(res.get("success", False))
    msg.message = str(res.get("message", ""))
    for name in HISTORY_FIELDS:
        getattr(msg.history, name).extend(np.asarray(res.history[name]).tolist())
    msg.backend_calls.update({k: int(v) for k, v in res.backend_calls.items()})
    extra = [(k, v) for k, v in res.items() if k not in _RESULT_OWN]
    data_map(msg.extra, extra, skip_non_data=True)


def result_fields(msg: pb.MinimizeResult) -> dict:
    """The OptimizeResult's fields from a MinimizeResult: x and jac flat float64 arrays, the
    history as gs.minimize records it."""
    fields = from_map(msg.extra)
    fields["x"] = result_array(msg.x)
    fields["fun"] = msg.fun
    if msg.HasField("jac"):
        fields["jac"] = result_array(msg.jac)
    for name in ("nit", "nfev", "njev"):
        if msg.HasField(name):
            fields[name] = getattr(msg, name)
    fields["status"] = msg.status
    fields["success"] = msg.success
    fields["message"] = msg.message
    fields["history"] = {
        name: np.asarray(
            list(getattr(msg.history, name)),
            dtype=np.int64 if name in ("step", "nfev") else np.float64,
        )
        for name in HISTORY_FIELDS
    }
    fields["backend_calls"] = dict(msg.backend_calls)
    return fields
