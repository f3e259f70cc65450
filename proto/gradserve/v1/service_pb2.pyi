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
    __slots__ = ("tensor", "digest", "shared_memory", "remember")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    REMEMBER_FIELD_NUMBER: _ClassVar[int]
    tensor: _graph_pb2.Tensor
    digest: str
    shared_memory: SharedMemoryRef
    remember: bool
    def __init__(self, tensor: _Optional[_Union[_graph_pb2.Tensor, _Mapping]] = ..., digest: _Optional[str] = ..., shared_memory: _Optional[_Union[SharedMemoryRef, _Mapping]] = ..., remember: _Optional[bool] = ...) -> None: ...

class Value(_message.Message):
    __slots__ = ("tensor", "tuple", "shared_memory")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    TUPLE_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    tensor: _graph_pb2.Tensor
    tuple: Values
    shared_memory: SharedMemoryRef
    def __init__(self, tensor: _Optional[_Union[_graph_pb2.Tensor, _Mapping]] = ..., tuple: _Optional[_Union[Values, _Mapping]] = ..., shared_memory: _Optional[_Union[SharedMemoryRef, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("graph", "args", "shared_memory")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    args: _containers.RepeatedCompositeFieldContainer[TensorRef]
    shared_memory: SharedMemoryCall
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., args: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., shared_memory: _Optional[_Union[SharedMemoryCall, _Mapping]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("outputs", "stats")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    outputs: Value
    stats: CallStats
    def __init__(self, outputs: _Optional[_Union[Value, _Mapping]] = ..., stats: _Optional[_Union[CallStats, _Mapping]] = ...) -> None: ...

class ValueAndGradRequest(_message.Message):
    __slots__ = ("graph", "args", "argnums", "shared_memory")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ARGNUMS_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    args: _containers.RepeatedCompositeFieldContainer[TensorRef]
    argnums: Argnums
    shared_memory: SharedMemoryCall
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., args: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., argnums: _Optional[_Union[Argnums, _Mapping]] = ..., shared_memory: _Optional[_Union[SharedMemoryCall, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("graph", "primals", "cotangents", "argnums", "shared_memory")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    PRIMALS_FIELD_NUMBER: _ClassVar[int]
    COTANGENTS_FIELD_NUMBER: _ClassVar[int]
    ARGNUMS_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    primals: _containers.RepeatedCompositeFieldContainer[TensorRef]
    cotangents: _containers.RepeatedCompositeFieldContainer[TensorRef]
    argnums: Argnums
    shared_memory: SharedMemoryCall
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., primals: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., cotangents: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., argnums: _Optional[_Union[Argnums, _Mapping]] = ..., shared_memory: _Optional[_Union[SharedMemoryCall, _Mapping]] = ...) -> None: ...

class VjpResponse(_message.Message):
    __slots__ = ("outputs", "input_cotangents", "stats", "input_cotangents_value")
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_COTANGENTS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    INPUT_COTANGENTS_VALUE_FIELD_NUMBER: _ClassVar[int]
    outputs: Value
    input_cotangents: _containers.RepeatedCompositeFieldContainer[_graph_pb2.Tensor]
    stats: CallStats
    input_cotangents_value: Value
    def __init__(self, outputs: _Optional[_Union[Value, _Mapping]] = ..., input_cotangents: _Optional[_Iterable[_Union[_graph_pb2.Tensor, _Mapping]]] = ..., stats: _Optional[_Union[CallStats, _Mapping]] = ..., input_cotangents_value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...

class JvpRequest(_message.Message):
    __slots__ = ("graph", "primals", "tangents", "argnums", "shared_memory")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    PRIMALS_FIELD_NUMBER: _ClassVar[int]
    TANGENTS_FIELD_NUMBER: _ClassVar[int]
    ARGNUMS_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    primals: _containers.RepeatedCompositeFieldContainer[TensorRef]
    tangents: _containers.RepeatedCompositeFieldContainer[TensorRef]
    argnums: Argnums
    shared_memory: SharedMemoryCall
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., primals: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., tangents: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., argnums: _Optional[_Union[Argnums, _Mapping]] = ..., shared_memory: _Optional[_Union[SharedMemoryCall, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("graph", "args", "argnums", "mode", "shared_memory")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ARGNUMS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    args: _containers.RepeatedCompositeFieldContainer[TensorRef]
    argnums: Argnums
    mode: str
    shared_memory: SharedMemoryCall
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., args: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., argnums: _Optional[_Union[Argnums, _Mapping]] = ..., mode: _Optional[str] = ..., shared_memory: _Optional[_Union[SharedMemoryCall, _Mapping]] = ...) -> None: ...

class JacobianResponse(_message.Message):
    __slots__ = ("jacobian", "stats")
    JACOBIAN_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    jacobian: Value
    stats: CallStats
    def __init__(self, jacobian: _Optional[_Union[Value, _Mapping]] = ..., stats: _Optional[_Union[CallStats, _Mapping]] = ...) -> None: ...

class HvpRequest(_message.Message):
    __slots__ = ("graph", "primals", "tangents", "argnums", "shared_memory")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    PRIMALS_FIELD_NUMBER: _ClassVar[int]
    TANGENTS_FIELD_NUMBER: _ClassVar[int]
    ARGNUMS_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    primals: _containers.RepeatedCompositeFieldContainer[TensorRef]
    tangents: _containers.RepeatedCompositeFieldContainer[TensorRef]
    argnums: Argnums
    shared_memory: SharedMemoryCall
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., primals: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., tangents: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., argnums: _Optional[_Union[Argnums, _Mapping]] = ..., shared_memory: _Optional[_Union[SharedMemoryCall, _Mapping]] = ...) -> None: ...

class HvpResponse(_message.Message):
    __slots__ = ("tangents", "stats", "tangents_value")
    TANGENTS_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    TANGENTS_VALUE_FIELD_NUMBER: _ClassVar[int]
    tangents: _containers.RepeatedCompositeFieldContainer[_graph_pb2.Tensor]
    stats: CallStats
    tangents_value: Value
    def __init__(self, tangents: _Optional[_Iterable[_Union[_graph_pb2.Tensor, _Mapping]]] = ..., stats: _Optional[_Union[CallStats, _Mapping]] = ..., tangents_value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...

class HessianRequest(_message.Message):
    __slots__ = ("graph", "args", "argnums", "shared_memory")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    ARGNUMS_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    args: _containers.RepeatedCompositeFieldContainer[TensorRef]
    argnums: Argnums
    shared_memory: SharedMemoryCall
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., args: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., argnums: _Optional[_Union[Argnums, _Mapping]] = ..., shared_memory: _Optional[_Union[SharedMemoryCall, _Mapping]] = ...) -> None: ...

class HessianResponse(_message.Message):
    __slots__ = ("hessian", "stats")
    HESSIAN_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    hessian: Value
    stats: CallStats
    def __init__(self, hessian: _Optional[_Union[Value, _Mapping]] = ..., stats: _Optional[_Union[CallStats, _Mapping]] = ...) -> None: ...

class CheckGradRequest(_message.Message):
    __slots__ = ("graph", "args", "method", "shared_memory")
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    SHARED_MEMORY_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    args: _containers.RepeatedCompositeFieldContainer[TensorRef]
    method: str
    shared_memory: SharedMemoryCall
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., args: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., method: _Optional[str] = ..., shared_memory: _Optional[_Union[SharedMemoryCall, _Mapping]] = ...) -> None: ...

class CheckGradResponse(_message.Message):
    __slots__ = ("method", "max_abs_error", "max_rel_error", "ok", "analytic", "numeric", "stats", "analytic_value", "numeric_value")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    MAX_ABS_ERROR_FIELD_NUMBER: _ClassVar[int]
    MAX_REL_ERROR_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ANALYTIC_FIELD_NUMBER: _ClassVar[int]
    NUMERIC_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    ANALYTIC_VALUE_FIELD_NUMBER: _ClassVar[int]
    NUMERIC_VALUE_FIELD_NUMBER: _ClassVar[int]
    method: str
    max_abs_error: float
    max_rel_error: float
    ok: bool
    analytic: _containers.RepeatedCompositeFieldContainer[_graph_pb2.Tensor]
    numeric: _containers.RepeatedCompositeFieldContainer[_graph_pb2.Tensor]
    stats: CallStats
    analytic_value: Value
    numeric_value: Value
    def __init__(self, method: _Optional[str] = ..., max_abs_error: _Optional[float] = ..., max_rel_error: _Optional[float] = ..., ok: _Optional[bool] = ..., analytic: _Optional[_Iterable[_Union[_graph_pb2.Tensor, _Mapping]]] = ..., numeric: _Optional[_Iterable[_Union[_graph_pb2.Tensor, _Mapping]]] = ..., stats: _Optional[_Union[CallStats, _Mapping]] = ..., analytic_value: _Optional[_Union[Value, _Mapping]] = ..., numeric_value: _Optional[_Union[Value, _Mapping]] = ...) -> None: ...

class SharedMemoryStatusRequest(_message.Message):
    __slots__ = ("lease",)
    LEASE_FIELD_NUMBER: _ClassVar[int]
    lease: str
    def __init__(self, lease: _Optional[str] = ...) -> None: ...

class SharedMemoryRegion(_message.Message):
    __slots__ = ("region", "key", "byte_size")
    REGION_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    region: str
    key: str
    byte_size: int
    def __init__(self, region: _Optional[str] = ..., key: _Optional[str] = ..., byte_size: _Optional[int] = ...) -> None: ...

class SharedMemoryStatusResponse(_message.Message):
    __slots__ = ("enabled", "host_id", "challenge", "lease_seconds", "max_bytes_per_client", "max_bytes", "lease_known", "regions")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_PER_CLIENT_FIELD_NUMBER: _ClassVar[int]
    MAX_BYTES_FIELD_NUMBER: _ClassVar[int]
    LEASE_KNOWN_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    host_id: str
    challenge: bytes
    lease_seconds: float
    max_bytes_per_client: int
    max_bytes: int
    lease_known: bool
    regions: _containers.RepeatedCompositeFieldContainer[SharedMemoryRegion]
    def __init__(self, enabled: _Optional[bool] = ..., host_id: _Optional[str] = ..., challenge: _Optional[bytes] = ..., lease_seconds: _Optional[float] = ..., max_bytes_per_client: _Optional[int] = ..., max_bytes: _Optional[int] = ..., lease_known: _Optional[bool] = ..., regions: _Optional[_Iterable[_Union[SharedMemoryRegion, _Mapping]]] = ...) -> None: ...

class RegisterSharedMemoryRequest(_message.Message):
    __slots__ = ("lease", "key", "byte_size", "challenge")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    lease: str
    key: str
    byte_size: int
    challenge: bytes
    def __init__(self, lease: _Optional[str] = ..., key: _Optional[str] = ..., byte_size: _Optional[int] = ..., challenge: _Optional[bytes] = ...) -> None: ...

class RegisterSharedMemoryResponse(_message.Message):
    __slots__ = ("lease", "region", "lease_seconds")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    LEASE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    lease: str
    region: str
    lease_seconds: float
    def __init__(self, lease: _Optional[str] = ..., region: _Optional[str] = ..., lease_seconds: _Optional[float] = ...) -> None: ...

class UnregisterSharedMemoryRequest(_message.Message):
    __slots__ = ("lease", "region")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    lease: str
    region: str
    def __init__(self, lease: _Optional[str] = ..., region: _Optional[str] = ...) -> None: ...

class UnregisterSharedMemoryResponse(_message.Message):
    __slots__ = ("unregistered",)
    UNREGISTERED_FIELD_NUMBER: _ClassVar[int]
    unregistered: int
    def __init__(self, unregistered: _Optional[int] = ...) -> None: ...

class SharedMemoryRef(_message.Message):
    __slots__ = ("region", "offset", "byte_size", "dtype", "shape", "fortran_order")
    REGION_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    BYTE_SIZE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    FORTRAN_ORDER_FIELD_NUMBER: _ClassVar[int]
    region: str
    offset: int
    byte_size: int
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    fortran_order: bool
    def __init__(self, region: _Optional[str] = ..., offset: _Optional[int] = ..., byte_size: _Optional[int] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., fortran_order: _Optional[bool] = ...) -> None: ...

class SharedMemoryCall(_message.Message):
    __slots__ = ("lease", "output", "output_min_bytes")
    LEASE_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_MIN_BYTES_FIELD_NUMBER: _ClassVar[int]
    lease: str
    output: SharedMemoryRef
    output_min_bytes: int
    def __init__(self, lease: _Optional[str] = ..., output: _Optional[_Union[SharedMemoryRef, _Mapping]] = ..., output_min_bytes: _Optional[int] = ...) -> None: ...

class Datum(_message.Message):
    __slots__ = ("number", "integer", "flag", "text", "array")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    FLAG_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ARRAY_FIELD_NUMBER: _ClassVar[int]
    number: float
    integer: int
    flag: bool
    text: str
    array: _graph_pb2.Tensor
    def __init__(self, number: _Optional[float] = ..., integer: _Optional[int] = ..., flag: _Optional[bool] = ..., text: _Optional[str] = ..., array: _Optional[_Union[_graph_pb2.Tensor, _Mapping]] = ...) -> None: ...

class LinearConstraint(_message.Message):
    __slots__ = ("A", "lb", "ub", "keep_feasible")
    A_FIELD_NUMBER: _ClassVar[int]
    LB_FIELD_NUMBER: _ClassVar[int]
    UB_FIELD_NUMBER: _ClassVar[int]
    KEEP_FEASIBLE_FIELD_NUMBER: _ClassVar[int]
    A: _graph_pb2.Tensor
    lb: _graph_pb2.Tensor
    ub: _graph_pb2.Tensor
    keep_feasible: bool
    def __init__(self, A: _Optional[_Union[_graph_pb2.Tensor, _Mapping]] = ..., lb: _Optional[_Union[_graph_pb2.Tensor, _Mapping]] = ..., ub: _Optional[_Union[_graph_pb2.Tensor, _Mapping]] = ..., keep_feasible: _Optional[bool] = ...) -> None: ...

class MinimizeProblem(_message.Message):
    __slots__ = ("graph", "x0", "args", "method", "options", "lower", "upper", "tol", "constraints", "kwargs", "callback", "result_only")
    class OptionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Datum
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Datum, _Mapping]] = ...) -> None: ...
    class KwargsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Datum
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Datum, _Mapping]] = ...) -> None: ...
    GRAPH_FIELD_NUMBER: _ClassVar[int]
    X0_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    TOL_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    KWARGS_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_FIELD_NUMBER: _ClassVar[int]
    RESULT_ONLY_FIELD_NUMBER: _ClassVar[int]
    graph: GraphRef
    x0: TensorRef
    args: _containers.RepeatedCompositeFieldContainer[TensorRef]
    method: str
    options: _containers.MessageMap[str, Datum]
    lower: _graph_pb2.Tensor
    upper: _graph_pb2.Tensor
    tol: float
    constraints: _containers.RepeatedCompositeFieldContainer[LinearConstraint]
    kwargs: _containers.MessageMap[str, Datum]
    callback: bool
    result_only: bool
    def __init__(self, graph: _Optional[_Union[GraphRef, _Mapping]] = ..., x0: _Optional[_Union[TensorRef, _Mapping]] = ..., args: _Optional[_Iterable[_Union[TensorRef, _Mapping]]] = ..., method: _Optional[str] = ..., options: _Optional[_Mapping[str, Datum]] = ..., lower: _Optional[_Union[_graph_pb2.Tensor, _Mapping]] = ..., upper: _Optional[_Union[_graph_pb2.Tensor, _Mapping]] = ..., tol: _Optional[float] = ..., constraints: _Optional[_Iterable[_Union[LinearConstraint, _Mapping]]] = ..., kwargs: _Optional[_Mapping[str, Datum]] = ..., callback: _Optional[bool] = ..., result_only: _Optional[bool] = ...) -> None: ...

class MinimizeRequest(_message.Message):
    __slots__ = ("problem", "stop")
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    problem: MinimizeProblem
    stop: bool
    def __init__(self, problem: _Optional[_Union[MinimizeProblem, _Mapping]] = ..., stop: _Optional[bool] = ...) -> None: ...

class MinimizeStep(_message.Message):
    __slots__ = ("step", "loss", "grad_norm", "nfev", "time")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    NFEV_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    step: int
    loss: float
    grad_norm: float
    nfev: int
    time: float
    def __init__(self, step: _Optional[int] = ..., loss: _Optional[float] = ..., grad_norm: _Optional[float] = ..., nfev: _Optional[int] = ..., time: _Optional[float] = ...) -> None: ...

class MinimizeCallback(_message.Message):
    __slots__ = ("x", "fun", "jac", "state")
    class StateEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Datum
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Datum, _Mapping]] = ...) -> None: ...
    X_FIELD_NUMBER: _ClassVar[int]
    FUN_FIELD_NUMBER: _ClassVar[int]
    JAC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    x: _graph_pb2.Tensor
    fun: float
    jac: _graph_pb2.Tensor
    state: _containers.MessageMap[str, Datum]
    def __init__(self, x: _Optional[_Union[_graph_pb2.Tensor, _Mapping]] = ..., fun: _Optional[float] = ..., jac: _Optional[_Union[_graph_pb2.Tensor, _Mapping]] = ..., state: _Optional[_Mapping[str, Datum]] = ...) -> None: ...

class MinimizeHistory(_message.Message):
    __slots__ = ("step", "loss", "grad_norm", "nfev", "time")
    STEP_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    NFEV_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    step: _containers.RepeatedScalarFieldContainer[int]
    loss: _containers.RepeatedScalarFieldContainer[float]
    grad_norm: _containers.RepeatedScalarFieldContainer[float]
    nfev: _containers.RepeatedScalarFieldContainer[int]
    time: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, step: _Optional[_Iterable[int]] = ..., loss: _Optional[_Iterable[float]] = ..., grad_norm: _Optional[_Iterable[float]] = ..., nfev: _Optional[_Iterable[int]] = ..., time: _Optional[_Iterable[float]] = ...) -> None: ...

class MinimizeResult(_message.Message):
    __slots__ = ("x", "fun", "jac", "nit", "nfev", "njev", "status", "success", "message", "history", "backend_calls", "extra")
    class BackendCallsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class ExtraEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Datum
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Datum, _Mapping]] = ...) -> None: ...
    X_FIELD_NUMBER: _ClassVar[int]
    FUN_FIELD_NUMBER: _ClassVar[int]
    JAC_FIELD_NUMBER: _ClassVar[int]
    NIT_FIELD_NUMBER: _ClassVar[int]
    NFEV_FIELD_NUMBER: _ClassVar[int]
    NJEV_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    BACKEND_CALLS_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    x: _graph_pb2.Tensor
    fun: float
    jac: _graph_pb2.Tensor
    nit: int
    nfev: int
    njev: int
    status: int
    success: bool
    message: str
    history: MinimizeHistory
    backend_calls: _containers.ScalarMap[str, int]
    extra: _containers.MessageMap[str, Datum]
    def __init__(self, x: _Optional[_Union[_graph_pb2.Tensor, _Mapping]] = ..., fun: _Optional[float] = ..., jac: _Optional[_Union[_graph_pb2.Tensor, _Mapping]] = ..., nit: _Optional[int] = ..., nfev: _Optional[int] = ..., njev: _Optional[int] = ..., status: _Optional[int] = ..., success: _Optional[bool] = ..., message: _Optional[str] = ..., history: _Optional[_Union[MinimizeHistory, _Mapping]] = ..., backend_calls: _Optional[_Mapping[str, int]] = ..., extra: _Optional[_Mapping[str, Datum]] = ...) -> None: ...

class MinimizeProgress(_message.Message):
    __slots__ = ("record", "callback", "result")
    RECORD_FIELD_NUMBER: _ClassVar[int]
    CALLBACK_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    record: MinimizeStep
    callback: MinimizeCallback
    result: MinimizeResult
    def __init__(self, record: _Optional[_Union[MinimizeStep, _Mapping]] = ..., callback: _Optional[_Union[MinimizeCallback, _Mapping]] = ..., result: _Optional[_Union[MinimizeResult, _Mapping]] = ...) -> None: ...
