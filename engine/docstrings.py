"""The docstrings of the methods `gs.Engine` and `gs.Client` share, written once.

Both backends have the same methods with the same semantics; their docstrings differ only in
the per-call parameter (`should_stop` in-process, `timeout` remote), the limits a call can
meet, and the service's own failures. Each template below is one method's docstring with those
parts as fields; `backend_docstring(ENGINE)` or `backend_docstring(CLIENT)` fills them in."""

from __future__ import annotations

ARGS = """\
*args : array_like
    One value per graph input, in order: a number or an array of that input's shape,
    converted to its dtype (see the Notes of `gs.Engine`)."""

ARGNUMS = """\
argnums : int or sequence of int, optional
    The inputs to differentiate with respect to: indices into ``graph.inputs``,
    negative ones counting from the end; each a float or complex input. Default 0."""

VJP_ARGNUMS = """\
argnums : int or sequence of int, optional
    The inputs whose cotangents are returned: indices into ``graph.inputs``, negative
    ones counting from the end; each a float or complex input. An int is a sequence of
    one (the result is a tuple all the same). None (the default): every input."""

TANGENT_ARGNUMS = """\
argnums : int or sequence of int, optional
    The inputs with a tangent; the others are held fixed: indices into
    ``graph.inputs``, negative ones counting from the end, none repeated; each a float
    or complex input. An int is a sequence of one (`tangents` too). None (the
    default): every input."""

GRADIENT_ERRORS = """\
ValueError
    An index in `argnums` is out of range; or an argument's shape differs from its input's.
TypeError
    The graph does not have exactly one output, a float64 or float32 scalar; `argnums` is
    not an int or a sequence of ints, or names an input that is not float or complex; or
    `graph` is not a `gs.Graph`, the number of arguments differs from the graph's inputs, or
    an argument's dtype does not convert to its input's."""

ENGINE = {
    "backend": "gs.Engine()",
    "call": """\
should_stop : callable, optional
    Called with no arguments between operations (and before every control-flow
    operation) while the call runs; raise an exception from it to abort the call,
    which then raises that exception.""",
    "limits": """\
gs.LimitError
    A `gs.while_loop` ran past its `max_iterations`.""",
    "tape_limits": """\
gs.LimitError
    The reverse pass would hold more than `max_tape_bytes` of tape (raised before anything
    runs), a loop cannot be reversed within it, or a `gs.while_loop` ran past its
    `max_iterations`.""",
}

_SERVICE_ERRORS = """
gs.DeadlineExceeded
    The timeout passed before the server answered; the server stops the computation.
gs.ServiceUnavailable
    The server could not be reached, after the retries.
gs.ServiceError
    Any other failure of the service (cancelled, internal error)."""

CLIENT = {
    "backend": 'gs.Client("localhost:50051")',
    "call": """\
timeout : float, optional
    Seconds this call may take, retries included; default (None): the Client's
    `timeout`.""",
    "limits": """\
gs.LimitError
    Over one of the server's limits: a graph or array over its --max-nodes or
    --max-elements, a request over --max-message-bytes, or more memory than the server has;
    or a `gs.while_loop` ran past its `max_iterations`."""
    + _SERVICE_ERRORS,
    "tape_limits": """\
gs.LimitError
    Over one of the server's limits: a graph or array over its --max-nodes or
    --max-elements, a request over --max-message-bytes, a tape over --max-tape-bytes that
    loops cannot checkpoint to fit, or more memory than the server has; or a `gs.while_loop`
    ran past its `max_iterations`."""
    + _SERVICE_ERRORS,
}


def backend_docstring(backend: dict):
    """A decorator giving a method the template named after it, filled in for `backend`."""

    def decorate(method):
        template = TEMPLATES[method.__name__]
        method.__doc__ = template.format(
            args=ARGS,
            argnums=ARGNUMS,
            vjp_argnums=VJP_ARGNUMS,
            tangent_argnums=TANGENT_ARGNUMS,
            gradient_errors=GRADIENT_ERRORS,
            **backend,
        )
        return method

    return decorate


EVALUATE = """\
The graph's outputs at `args`.

Parameters
----------
graph : gs.Graph
    The graph to run.
{args}
{call}

Returns
-------
ndarray or tuple of ndarray
    The output when the graph has one, else a tuple with one array per output.

Raises
------
ValueError
    An argument's shape differs from its input's.
TypeError
    `graph` is not a `gs.Graph`, the number of arguments differs from the graph's inputs, or
    an argument's dtype does not convert to its input's.
{limits}

Examples
--------
>>> graph = gs.trace(lambda x, y: (x * y, x + y), 2.0, 3.0)
>>> {backend}.evaluate(graph, 2.0, 3.0)
(array(6.), array(5.))
"""

VALUE_AND_GRAD = """\
The value of a graph with one real scalar output, and its gradient.

Parameters
----------
graph : gs.Graph
    A graph whose one output is a float64 or float32 scalar.
{args}
{argnums}
{call}

Returns
-------
value : ndarray
    The output, a 0-d array.
grad : ndarray or tuple of ndarray
    For an int `argnums`, the gradient with respect to that input, of its shape and
    dtype; for a sequence, a tuple of them in the order of `argnums`.

Raises
------
{gradient_errors}
{tape_limits}

See Also
--------
grad : the gradient alone.
check_grad : the gradient compared with finite differences.

Examples
--------
>>> graph = gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0)
>>> value, (g1, g2) = {backend}.value_and_grad(graph, 2.0, 5.0, argnums=(0, 1))
>>> round(float(value), 6), float(g1), round(float(g2), 6)
(11.652071, 5.5, 1.716338)
"""

GRAD = """\
The gradient of a graph with one real scalar output: `value_and_grad` without the
value.

Parameters
----------
graph : gs.Graph
    A graph whose one output is a float64 or float32 scalar.
{args}
{argnums}
{call}

Returns
-------
ndarray or tuple of ndarray
    For an int `argnums`, the gradient with respect to that input, of its shape and
    dtype; for a sequence, a tuple of them in the order of `argnums`.

Raises
------
{gradient_errors}
{tape_limits}

Examples
--------
>>> graph = gs.trace(lambda x: gnp.sum(x * x), np.array([1.0, 2.0]))
>>> {backend}.grad(graph, np.array([1.0, 2.0]))
array([2., 4.])
"""

VJP = """\
Vector-Jacobian product (reverse mode): the outputs at `primals` and the cotangents
of every input.

Parameters
----------
graph : gs.Graph
    The graph to differentiate; any outputs.
primals : sequence of array_like
    One value per graph input, in order, converted as `args` are for `evaluate`.
cotangents : array_like or tuple of array_like
    One per graph output, of that output's shape (converted to its dtype); a graph with
    one output also takes the array itself. The cotangents of outputs that are not
    float or complex are ignored (None will do).
{vjp_argnums}
{call}

Returns
-------
outputs : ndarray or tuple of ndarray
    The outputs, as `evaluate` returns them.
input_cotangents : tuple of ndarray
    One per graph input, of its shape and dtype: the sum over the outputs of
    ``cotangent · d output / d input``; zeros for inputs that are not float or complex.
    With `argnums`, one per index of `argnums`, in its order (a tuple of one for an int).

Raises
------
ValueError
    A cotangent's shape differs from its output's; an index in `argnums` is out of range;
    or an argument's shape differs from its input's.
TypeError
    The number of cotangents differs from the graph's outputs, or a cotangent's dtype does
    not convert to its output's; `argnums` is not an int or a sequence of ints, or names an
    input that is not float or complex; or `graph` is not a `gs.Graph`, the number of
    arguments differs from the graph's inputs, or an argument's dtype does not convert to
    its input's.
{tape_limits}

Examples
--------
>>> graph = gs.trace(lambda x: x * x, np.array([1.0, 2.0]))
>>> outputs, (ct,) = {backend}.vjp(graph, (np.array([1.0, 2.0]),), np.ones(2))
>>> ct
array([2., 4.])
>>> data = gs.trace(lambda w, X: gnp.sum(X @ w), np.zeros(2), np.zeros((3, 2)))
>>> outputs, (ct_w,) = {backend}.vjp(data, (np.ones(2), np.ones((3, 2))), 1.0, argnums=0)
>>> ct_w
array([3., 3.])
"""

JVP = """\
Jacobian-vector product (forward mode): the outputs at `primals` and their
derivatives along `tangents`.

Parameters
----------
graph : gs.Graph
    The graph to differentiate; any outputs.
primals : sequence of array_like
    One value per graph input, in order, converted as `args` are for `evaluate`.
tangents : sequence of array_like
    One per graph input, of that input's shape and dtype (converted as `primals`
    are); those of inputs that are not float or complex are ignored. With `argnums`, a
    tuple or list of one per index of `argnums`, in its order.
{tangent_argnums}
{call}

Returns
-------
outputs : ndarray or tuple of ndarray
    The outputs, as `evaluate` returns them.
output_tangents : ndarray or tuple of ndarray
    The directional derivative of each output, of its shape and dtype, structured as
    `outputs` (an array when the graph has one output); zeros for outputs that are not
    float or complex.

Raises
------
ValueError
    An index in `argnums` is out of range or repeated; or an argument's shape differs from
    its input's.
TypeError
    `argnums` is not an int or a sequence of ints, or names an input that is not float or
    complex; the number of tangents differs from the inputs selected; or `graph` is not a
    `gs.Graph`, the number of arguments differs from the graph's inputs, or an argument's
    dtype does not convert to its input's.
{limits}

Examples
--------
>>> graph = gs.trace(lambda x: gnp.sin(x), 0.0)
>>> {backend}.jvp(graph, (0.0,), (2.0,))
(array(0.), array(2.))
>>> scaled = gs.trace(lambda x, a: a * gnp.sin(x), 0.0, 3.0)
>>> {backend}.jvp(scaled, (0.0, 3.0), (2.0,), argnums=0)  # a held fixed
(array(0.), array(6.))
"""

JACOBIAN = """\
The Jacobian of every output with respect to the inputs named by `argnums`.

Parameters
----------
graph : gs.Graph
    The graph to differentiate; any outputs.
{args}
{argnums}
mode : {{"auto", "fwd", "rev"}}, optional
    "fwd": one batched forward-mode pass per input in `argnums`, over all its elements
    at once; "rev": one batched reverse-mode pass per output. "auto" (the default)
    takes "fwd" when the inputs in `argnums` have fewer elements in total than the
    outputs, else "rev". The result is the same.
{call}

Returns
-------
ndarray or tuple
    The block of output ``k`` and input ``argnums[j]`` has shape
    ``outputs[k].shape + inputs[argnums[j]].shape``: its element ``[o..., i...]`` is
    ``d out[o...] / d in[i...]``. With one output and an int `argnums`, that block;
    with a sequence `argnums`, a tuple of blocks over `argnums`; with several outputs,
    a tuple over the outputs of those: ``J[k][j]`` (``J[k]`` for an int `argnums`).

Raises
------
ValueError
    `mode` is not "auto", "fwd" or "rev"; an index in `argnums` is out of range; or an
    argument's shape differs from its input's.
TypeError
    `argnums` is not an int or a sequence of ints, or names an input that is not float or
    complex; or `graph` is not a `gs.Graph`, the number of arguments differs from the
    graph's inputs, or an argument's dtype does not convert to its input's.
{tape_limits}

Examples
--------
>>> graph = gs.trace(lambda x: 2.0 * gnp.sin(x), np.zeros(2))
>>> {backend}.jacobian(graph, np.zeros(2))
array([[2., 0.],
       [0., 2.]])
"""

HVP = """\
Hessian-vector product of a graph with one real scalar output: the derivative of its
gradient along `tangents` (forward mode over reverse mode).

Parameters
----------
graph : gs.Graph
    A graph whose one output is a float64 or float32 scalar.
primals : sequence of array_like
    One value per graph input, in order, converted as `args` are for `evaluate`.
tangents : sequence of array_like
    One per graph input, of that input's shape and dtype (converted as `primals`
    are); those of inputs that are not float or complex are ignored. With `argnums`, a
    tuple or list of one per index of `argnums`, in its order.
{tangent_argnums}
{call}

Returns
-------
tuple of ndarray
    One per graph input (a tuple even for one input), of its shape and dtype:
    ``sum over j of H[i, j] · tangents[j]``, with H the Hessian over every float and
    complex input; zeros for the other inputs. With `argnums`, one per index of
    `argnums`, in its order (a tuple of one for an int), i and j running over the
    selected inputs only.

Raises
------
ValueError
    An index in `argnums` is out of range or repeated; or an argument's shape differs from
    its input's.
TypeError
    The graph does not have exactly one output, a float64 or float32 scalar; `argnums` is
    not an int or a sequence of ints, or names an input that is not float or complex; the
    number of tangents differs from the inputs selected; or `graph` is not a `gs.Graph`,
    the number of arguments differs from the graph's inputs, or an argument's dtype does
    not convert to its input's.
{tape_limits}
gs.GraphError
    The graph has a `gs.while_loop`: second derivatives through one are not supported.

Examples
--------
>>> graph = gs.trace(lambda x: gnp.sum(x**3), np.ones(2))
>>> {backend}.hvp(graph, (np.array([1.0, 2.0]),), (np.array([1.0, 0.0]),))
(array([6., 0.]),)
>>> fit = gs.trace(lambda w, X: gnp.sum((X @ w) ** 2), np.zeros(2), np.zeros((3, 2)))
>>> {backend}.hvp(fit, (np.zeros(2), np.ones((3, 2))), (np.array([1.0, 0.0]),), argnums=0)
(array([6., 6.]),)
"""

HESSIAN = """\
The Hessian of a graph with one real scalar output, with respect to the inputs
named by `argnums` (forward mode over reverse mode).

Parameters
----------
graph : gs.Graph
    A graph whose one output is a float64 or float32 scalar.
{args}
{argnums}
{call}

Returns
-------
ndarray or tuple of tuple of ndarray
    For an int `argnums`, one array of shape ``x.shape + x.shape``, x the input; for a
    sequence, a nested tuple ``H[i][j]`` of shape
    ``inputs[argnums[i]].shape + inputs[argnums[j]].shape``.

Raises
------
{gradient_errors}
{tape_limits}
gs.GraphError
    The graph has a `gs.while_loop`: second derivatives through one are not supported.

Examples
--------
>>> graph = gs.trace(lambda x, y: x * x * y, 1.0, 3.0)
>>> {backend}.hessian(graph, 1.0, 3.0, argnums=(0, 1))
((array(6.), array(2.)), (array(2.), array(0.)))
"""

CHECK_GRAD = """\
The gradient compared with numerical differentiation, for a graph with one real
scalar output.

The gradient with respect to every float64 and float32 input (other inputs are held
fixed) is compared with finite differences, each element perturbed by a step scaled by
``max(1, |x|)``; all the perturbations of an input are evaluated in a few batched
passes.

Parameters
----------
graph : gs.Graph
    A graph whose one output is a float64 or float32 scalar.
{args}
method : {{"central", "forward", "complex", "richardson"}}, optional
    "central" (the default): ``(f(x + h) - f(x - h)) / 2h`` with h ≈ cbrt(eps);
    "forward": ``(f(x + h) - f(x)) / h`` with h ≈ sqrt(eps); "complex": the complex
    step ``Im f(x + ih) / h`` with h = 1e-20 (the input takes complex values), exact to
    rounding where the graph is analytic; "richardson": central differences at h, h/2
    and h/4 with h ≈ eps**(1/7), extrapolated to cancel the h**2 and h**4 terms of their
    error (``gs.numeric_grad(..., richardson=True)``). eps is the machine epsilon of the
    output's dtype; each h is scaled by max(1, |x|).
{call}

Returns
-------
gs.GradCheck
    `ok` is True when every element agrees within ``tol · (max(1, |f|) + |numeric|)``,
    tol being 100 sqrt(eps) ("central", "forward", "richardson") or 100 eps
    ("complex"); with the
    largest absolute and relative errors and both gradients, one array per input
    checked.

Raises
------
ValueError
    `method` is not "central", "forward", "complex" or "richardson"; or an argument's shape differs from
    its input's.
TypeError
    The graph does not have exactly one output, a float64 or float32 scalar; the graph has
    no float64 or float32 input; or `graph` is not a `gs.Graph`, the number of arguments
    differs from the graph's inputs, or an argument's dtype does not convert to its input's.
{tape_limits}

Examples
--------
>>> graph = gs.trace(lambda x: gnp.sum(gnp.exp(x)), np.zeros(3))
>>> report = {backend}.check_grad(graph, np.zeros(3), method="complex")
>>> report.ok, report.max_abs_error
(True, 0.0)
"""

TEMPLATES = {
    "evaluate": EVALUATE,
    "value_and_grad": VALUE_AND_GRAD,
    "grad": GRAD,
    "vjp": VJP,
    "jvp": JVP,
    "jacobian": JACOBIAN,
    "hvp": HVP,
    "hessian": HESSIAN,
    "check_grad": CHECK_GRAD,
}
