from gradserve.v1 import graph_pb2 as _graph_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GraphRef(_message.Message):
    __slots__ = ("body", "digest")
    BODY_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    digest: str
    def __init__(self, body: _Optional[bytes] = ..., digest: _Optional[str] = ...) -> None: ...

class TensorRef(_message.Message):
    __slots__ = ("tensor", "digest", "remember")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    REMEMBER_FIELD_NUMBER: _ClassVar[int]
    tensor: _graph_pb2.Tensor
    digest: str
    remember: bool
    def __init__(self, tensor: _Optional[_Union[_graph_pb2.Tensor, _Mapping]] = ..., digest: _Optional[str] = ..., remember: _Optional[bool] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("tensor", "tuple")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    TUPLE_FIELD_NUMBER: _ClassVar[int]
    tensor: _graph_pb2.Tensor
    tuple: Values
    def __init__(self, tensor: _Optional[_Union[_graph_pb2.Tensor, _Mapping]] = ..., tuple: _Optional[_Union[Values, _Mapping]] = ...) -> None: ...

class Values(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Value]
    def __init__(self, items: _Optional[_Iterable[_Union[Value, _Mapping]]] = ...) -> None: ...

class Argnums(_message.Message):
    __slots__ = ("indices", "is_tuple")
    INDICES_FIELD_NUMBER: _ClassVar[int]
    IS_TUPLE_FIELD_NUMBER: _ClassVar[int]
    indices: _containers.RepeatedScalarFieldContainer[int]
    is_tuple: bool
    def __init__(self, indices: _Optional[_Iterable[int]] = ..., is_tuple: _Optional[bool] = ...) -> None: ...

class CallStats(_message.Message):
    __slots__ = ("tape_bytes", "tape_entries", "peak_bytes", "recomputed_ops", "compute_seconds")
    TAPE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TAPE_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    PEAK_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECOMPUTED_OPS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    tape_bytes: int
    tape_entries: int
    peak_bytes: int
    recomputed_ops: int
    compute_seconds: float
    def __init__(self, tape_bytes: _Optional[int] = ..., tape_entries: _Optional[int] = ..., peak_bytes: _Optional[int] = ..., recomputed_ops: _Optional[int] = ..., compute_seconds: _Optional[float] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("graph", "args")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    args: _containers.RepeatedCompositeFieldContainer[TensorRef]
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., args: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("outputs", "stats")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    outputs: Value
    stats: CallStats
    def __init__(self, outputs: _Optional[_Union[Value, _Mapping]] = ..., stats: _Optional[_Union[CallStats, _Mapping]] = ...) -> None: ...

class ValueAndGradRequest(_message.Message):
    __slots__ = ("graph", "args", "argnums")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ARGNUMS_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    args: _containers.RepeatedCompositeFieldContainer[TensorRef]
    argnums: Argnums
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., args: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., argnums: _Optional[_Union[Argnums, _Mapping]] = ...) -> None: ...

class ValueAndGradResponse(_message.Message):
    __slots__ = ("value", "grad", "stats")
    VALUE_FIELD_NUMBER: _ClassVar[int]
    GRAD_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    value: _graph_pb2.Tensor
    grad: Value
    stats: CallStats
    def __init__(self, value: _Optional[_Union[_graph_pb2.Tensor, _Mapping]] = ..., grad: _Optional[_Union[Value, _Mapping]] = ..., stats: _Optional[_Union[CallStats, _Mapping]] = ...) -> None: ...

class VjpRequest(_message.Message):
    __slots__ = ("graph", "primals", "cotangents", "argnums")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    PRIMALS_FIELD_NUMBER: _ClassVar[int]
    COTANGENTS_FIELD_NUMBER: _ClassVar[int]
    ARGNUMS_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    primals: _containers.RepeatedCompositeFieldContainer[TensorRef]
    cotangents: _containers.RepeatedCompositeFieldContainer[TensorRef]
    argnums: Argnums
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., primals: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., cotangents: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., argnums: _Optional[_Union[Argnums, _Mapping]] = ...) -> None: ...

class VjpResponse(_message.Message):
    __slots__ = ("outputs", "input_cotangents", "stats")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_COTANGENTS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    outputs: Value
    input_cotangents: _containers.RepeatedCompositeFieldContainer[_graph_pb2.Tensor]
    stats: CallStats
    def __init__(self, outputs: _Optional[_Union[Value, _Mapping]] = ..., input_cotangents: _Optional[_Iterable[_Union[_graph_pb2.Tensor, _Mapping]]] = ..., stats: _Optional[_Union[CallStats, _Mapping]] = ...) -> None: ...

class JvpRequest(_message.Message):
    __slots__ = ("graph", "primals", "tangents", "argnums")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    PRIMALS_FIELD_NUMBER: _ClassVar[int]
    TANGENTS_FIELD_NUMBER: _ClassVar[int]
    ARGNUMS_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    primals: _containers.RepeatedCompositeFieldContainer[TensorRef]
    tangents: _containers.RepeatedCompositeFieldContainer[TensorRef]
    argnums: Argnums
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., primals: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., tangents: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., argnums: _Optional[_Union[Argnums, _Mapping]] = ...) -> None: ...

class JvpResponse(_message.Message):
    __slots__ = ("outputs", "output_tangents", "stats")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TANGENTS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    outputs: Value
    output_tangents: Value
    stats: CallStats
    def __init__(self, outputs: _Optional[_Union[Value, _Mapping]] = ..., output_tangents: _Optional[_Union[Value, _Mapping]] = ..., stats: _Optional[_Union[CallStats, _Mapping]] = ...) -> None: ...

class JacobianRequest(_message.Message):
    __slots__ = ("graph", "args", "argnums", "mode")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ARGNUMS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    args: _containers.RepeatedCompositeFieldContainer[TensorRef]
    argnums: Argnums
    mode: str
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., args: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., argnums: _Optional[_Union[Argnums, _Mapping]] = ..., mode: _Optional[str] = ...) -> None: ...

class JacobianResponse(_message.Message):
    __slots__ = ("jacobian", "stats")
    JACOBIAN_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    jacobian: Value
    stats: CallStats
    def __init__(self, jacobian: _Optional[_Union[Value, _Mapping]] = ..., stats: _Optional[_Union[CallStats, _Mapping]] = ...) -> None: ...

class HvpRequest(_message.Message):
    __slots__ = ("graph", "primals", "tangents", "argnums")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    PRIMALS_FIELD_NUMBER: _ClassVar[int]
    TANGENTS_FIELD_NUMBER: _ClassVar[int]
    ARGNUMS_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    primals: _containers.RepeatedCompositeFieldContainer[TensorRef]
    tangents: _containers.RepeatedCompositeFieldContainer[TensorRef]
    argnums: Argnums
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., primals: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., tangents: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., argnums: _Optional[_Union[Argnums, _Mapping]] = ...) -> None: ...

class HvpResponse(_message.Message):
    __slots__ = ("tangents", "stats")
    TANGENTS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    tangents: _containers.RepeatedCompositeFieldContainer[_graph_pb2.Tensor]
    stats: CallStats
    def __init__(self, tangents: _Optional[_Iterable[_Union[_graph_pb2.Tensor, _Mapping]]] = ..., stats: _Optional[_Union[CallStats, _Mapping]] = ...) -> None: ...

class HessianRequest(_message.Message):
    __slots__ = ("graph", "args", "argnums")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ARGNUMS_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    args: _containers.RepeatedCompositeFieldContainer[TensorRef]
    argnums: Argnums
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., args: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., argnums: _Optional[_Union[Argnums, _Mapping]] = ...) -> None: ...

class HessianResponse(_message.Message):
    __slots__ = ("hessian", "stats")
    HESSIAN_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    hessian: Value
    stats: CallStats
    def __init__(self, hessian: _Optional[_Union[Value, _Mapping]] = ..., stats: _Optional[_Union[CallStats, _Mapping]] = ...) -> None: ...

class CheckGradRequest(_message.Message):
    __slots__ = ("graph", "args", "method")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    args: _containers.RepeatedCompositeFieldContainer[TensorRef]
    method: str
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., args: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., method: _Optional[str] = ...) -> None: ...

class CheckGradResponse(_message.Message):
    __slots__ = ("method", "max_abs_error", "max_rel_error", "ok", "analytic", "numeric", "stats")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_ERROR_FIELD_NUMBER: _ClassVar[int]
    MAX_REL_ERROR_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ANALYTIC_FIELD_NUMBER: _ClassVar[int]
    NUMERIC_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    method: str
    max_abs_error: float
    max_rel_error: float
    ok: bool
    analytic: _containers.RepeatedCompositeFieldContainer[_graph_pb2.Tensor]
    numeric: _containers.RepeatedCompositeFieldContainer[_graph_pb2.Tensor]
    stats: CallStats
    def __init__(self, method: _Optional[str] = ..., max_abs_error: _Optional[float] = ..., max_rel_error: _Optional[float] = ..., ok: _Optional[bool] = ..., analytic: _Optional[_Iterable[_Union[_graph_pb2.Tensor, _Mapping]]] = ..., numeric: _Optional[_Iterable[_Union[_graph_pb2.Tensor, _Mapping]]] = ..., stats: _Optional[_Union[CallStats, _Mapping]] = ...) -> None: ...
