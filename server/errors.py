"""Mapping exceptions to gRPC status codes with google.rpc.Status details.

Every failure carries an ErrorInfo whose `reason` is the Python exception class the engine
raised (the client re-raises that class) and, when something can be named, a BadRequest
field violation naming the node, field or input."""

from __future__ import annotations

import re

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from gradserve.engine import GraphError, LimitError
from grpc_status import rpc_status

from gradserve.protocol import ERROR_DOMAIN


class Failure(Exception):
    """A request that fails with `code`; raised inside the servicer and turned into a status."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: str = "",
        where: str = "",
        missing=(),
        metadata=None,
        retry_delay: float | None = None,
    ):
        super().__init__(message)
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}  # ErrorInfo's
        self.retry_delay = retry_delay  # seconds: a RetryInfo detail (the call may be retried)
        self.code = code
        self.message = message
        self.reason = reason
        self.where = where
        self.missing = tuple(missing)  # (resource_type, digest) pairs for NOT_FOUND


class Stopped(Exception):
    """Raised between ops when the client cancelled (deadline=False) or the client's deadline
    passed (deadline=True)."""

    def __init__(self, message: str, deadline: bool = False):
        super().__init__(message)
        self.deadline = deadline


_ARGUMENT = re.compile(r"^((?:argument|primal|tangent|input) '[^']*'|cotangent of output \d+)")
_PREFIXES = (
    ("argnums", "argnums"),
    ("mode must", "mode"),
    ("method must", "method"),
    ("the graph takes", "args"),
    ("the graph has", "cotangents"),
)


def argument_field(message: str) -> str:
    """The request field or input an argument error is about, from the engine's message
    ("argument 'x1' expects shape (), got (3,)" -> "argument 'x1'")."""
    match = _ARGUMENT.match(message)
    if match:
        return match.group(1)
    for prefix, field in _PREFIXES:
        if message.startswith(prefix):
            return field
    return "arguments"


def failure_from_exception(exc: BaseException) -> Failure:
    if isinstance(exc, Failure):
        return exc
    if isinstance(exc, LimitError):
        return Failure(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc), "LimitError", exc.where)
    if isinstance(exc, GraphError):
        return Failure(grpc.StatusCode.INVALID_ARGUMENT, str(exc), "GraphError", exc.where)
    if isinstance(exc, MemoryError):
        return Failure(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"the server ran out of memory for this request ({exc})",
            "MemoryError",
        )
    if isinstance(exc, (TypeError, ValueError)):
        kind = "TypeError" if isinstance(exc, TypeError) else "ValueError"
        return Failure(grpc.StatusCode.INVALID_ARGUMENT, str(exc), kind, argument_field(str(exc)))
    return Failure(
        grpc.StatusCode.INTERNAL,
        f"internal error ({type(exc).__name__}: {exc})",
        type(exc).__name__,
    )


def _pack(message) -> any_pb2.Any:
    detail = any_pb2.Any()
    detail.Pack(message)
    return detail


def to_status(failure: Failure) -> grpc.Status:
    details = []
    if failure.reason:
        metadata = {"where": failure.where} if failure.where else {}
        metadata.update(failure.metadata)
        details.append(
            _pack(
                error_details_pb2.ErrorInfo(
                    reason=failure.reason, domain=ERROR_DOMAIN, metadata=metadata
                )
            )
        )
    if failure.where:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=failure.where, description=failure.message
        )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=[violation])))
    if failure.retry_delay is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(failure.retry_delay * 1e9))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    for resource_type, name in failure.missing:
        details.append(
            _pack(
                error_details_pb2.ResourceInfo(
                    resource_type=resource_type,
                    resource_name=name,
                    description="unknown digest: send the body",
                )
            )
        )
    message = failure.message
    if len(message) > 4000:
        message = message[:4000] + " ..."
    return rpc_status.to_status(
        status_pb2.Status(code=failure.code.value[0], message=message, details=details)
    )
