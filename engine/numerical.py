"""Numerical differentiation: `gs.numeric_grad` (forward and central differences, the complex
step, Richardson extrapolation) and `check_grad`, which compares it with the AD gradient.
Steps are relative: h = step * max(1, |x|), elementwise.

All perturbations of one input are evaluated in one batched pass (the `batch` transform), in
chunks, so a gradient costs a few graph evaluations rather than one per element."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .graph import Spec
from .plan import Stats
from .transforms import Program, batch, retype

CHUNK = 256

# The ways numeric_grad differentiates; check_grad adds "richardson" (central differences,
# extrapolated).
METHODS = ("central", "complex", "forward")
CHECK_METHODS = ("central", "complex", "forward", "richardson")
# Richardson extrapolation: differences at h, h/2 and h/4, combined to cancel the two leading
# powers of h of the error (h**2 and h**4 for central differences, h and h**2 for forward).
RICHARDSON_LEVELS = 3


def default_step(method: str, richardson: bool, eps: float) -> float:
    """The relative step numeric_grad takes when none is given: the one that balances the
    truncation error left (h**2 central, h forward; h**6 and h**3 after Richardson) against
    the rounding error (about eps / h): cbrt(eps), sqrt(eps), eps**(1/7), eps**(1/4); 1e-20
    for the complex step, which has no rounding error to balance."""
    if method == "complex":
        return 1e-20
    if method == "forward":
        return float(eps ** (1 / 4) if richardson else np.sqrt(eps))
    return float(eps ** (1 / 7) if richardson else np.cbrt(eps))


def _tolerance(method: str, eps: float) -> float:
    """check_grad's tolerance: a hundred times the error forward differences' step leaves, for
    every difference (central's truncation error h**2 * f'''(x) / 6 grows with the third
    derivative, Richardson's with the seventh, which the scale does not bound: with a tighter
    tolerance they would flag gradients that the less accurate forward difference accepts);
    a hundred eps for the complex step."""
    return 100 * eps if method == "complex" else 100 * np.sqrt(eps)


def _float_inputs(graph, what):
    wrt = tuple(i for i, p in enumerate(graph.inputs) if p.spec.dtype in ("float64", "float32"))
    if not wrt:
        raise TypeError(f"{what} needs at least one real floating-point input")
    return wrt


def _check_method(method, richardson=False, methods=METHODS):
    if not isinstance(method, str) or method not in methods:
        raise ValueError(f"method must be one of {sorted(methods)}, got {method!r}")
    if not isinstance(richardson, (bool, np.bool_)):
        raise TypeError(f"richardson must be True or False, got {richardson!r}")
    if richardson and method == "complex":
        raise ValueError(
            "richardson=True extrapolates 'central' or 'forward' differences; the complex step"
            " has no rounding error to trade against and needs none"
        )


@dataclass(frozen=True)
class GradCheck:
    """What `check_grad` reports: the gradient against its numerical estimate.

    Attributes
    ----------
    method : str
        "central", "forward", "complex" or "richardson".
    max_abs_error : float
        The largest ``|analytic - numeric|`` over every element checked.
    max_rel_error : float
        The largest ``|analytic - numeric| / max(|analytic|, |numeric|)`` (0 where both
        agree exactly).
    ok : bool
        Whether every element agrees within the method's tolerance (see
        `gs.Engine.check_grad`); False where either gradient is inf or nan.
    analytic : tuple of ndarray
        The gradient by automatic differentiation, one array per float64 or float32 input,
        in the order of the graph's inputs.
    numeric : tuple of ndarray
        The numerical estimate, likewise.
    """

    method: str
    max_abs_error: float
    max_rel_error: float
    ok: bool
    analytic: tuple
    numeric: tuple


def check_grad(engine, graph, args, method="central", should_stop=None) -> GradCheck:
    # At a singular point the gradients and differences are inf or nan: the report says so
    # (ok is False); NumPy's warnings about it must not reach the user.
    with np.errstate(all="ignore"):
        return _check_grad(engine, graph, args, method, should_stop)


def _check_grad(engine, graph, args, method, should_stop) -> GradCheck:
    engine._check_graph(graph)
    engine._scalar_output(graph, "check_grad")
    args = engine._arguments(graph, args)
    _check_method(method, methods=CHECK_METHODS)
    wrt = _float_inputs(graph, "check_grad")
    tolerance = _tolerance(method, _eps(graph, wrt))
    value, analytic = engine.value_and_grad(graph, *args, argnums=wrt, should_stop=should_stop)
    scale = max(1.0, float(abs(value)))
    if method == "richardson":
        numeric = numeric_gradients(engine, graph, args, wrt, "central", None, True, should_stop)
    else:
        numeric = numeric_gradients(engine, graph, args, wrt, method, None, False, should_stop)
    abs_err = rel_err = 0.0
    ok = True
    for a, n in zip(analytic, numeric):
        err = np.abs(a - n)
        denom = np.maximum(np.maximum(np.abs(a), np.abs(n)), np.finfo(float).tiny)
        # np.max keeps a nan (Python's max would drop it depending on the order)
        abs_err = float(np.max(np.append(err, abs_err)))
        rel_err = float(np.max(np.append(np.where(err == 0, 0.0, err / denom), rel_err)))
        ok = ok and bool(np.all(err <= tolerance * (scale + np.abs(n))))
    return GradCheck(method, abs_err, rel_err, ok, analytic, numeric)


def numeric_grad(graph, *args, method="central", step=None, richardson=False, engine=None):
    """The gradient by finite differences or the complex step: what `check_grad` compares the
    AD gradient with.

    Differentiates the graph's one real scalar output with respect to every float64 or
    float32 input (other inputs are held fixed), perturbing each element in turn; all the
    perturbations of one input run in one batched pass. The step is relative: element i
    moves by ``h_i = step * max(1, |x_i|)`` (the step actually taken is ``(x_i + h_i) -
    x_i``, exact).

    Parameters
    ----------
    graph : gs.Graph
        A graph whose one output is a float64 or float32 scalar.
    *args : array_like
        One argument per graph input.
    method : {"central", "forward", "complex"}, optional
        "central" (the default): ``(f(x + h) - f(x - h)) / 2h``, error O(h**2);
        "forward": ``(f(x + h) - f(x)) / h``, error O(h); "complex": the complex step
        ``Im f(x + ih) / h``, exact to rounding where the graph is analytic (the input
        takes complex values).
    step : float, optional
        The relative step. Default: the one balancing truncation and rounding error, with
        eps the machine epsilon of the output's dtype: cbrt(eps) central (6.1e-6 for
        float64), sqrt(eps) forward (1.5e-8), eps**(1/7) central with Richardson (5.8e-3),
        eps**(1/4) forward with Richardson (1.2e-4), 1e-20 complex.
    richardson : bool, optional
        Richardson extrapolation: the difference at h, h/2 and h/4, combined to cancel the
        two leading terms of its error: h**2 and h**4 central (order 6:
        ``(64 D(h/4) - 20 D(h/2) + D(h)) / 45``), h and h**2 forward (order 3). Three
        times the evaluations. Not with "complex".
    engine : gs.Engine, optional
        The engine to evaluate with (its compiled plans are reused); default one shared
        engine.

    Returns
    -------
    ndarray or tuple of ndarray
        With one float input, its gradient (an array of its shape and dtype); with several,
        a tuple of them, in the order of the graph's inputs (as ``grad(...,
        argnums=(those inputs))``).

    Raises
    ------
    ValueError
        `method` is not one of the three; `richardson` with "complex"; `step` not positive
        and finite; or an argument's shape differs from its input's.
    TypeError
        The graph does not have exactly one real scalar output, or has no float64 or
        float32 input; `step` is not a number; the arguments do not match the inputs.

    Examples
    --------
    >>> graph = gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0)
    >>> d1, d2 = gs.numeric_grad(graph, 2.0, 5.0, method="complex")
    >>> float(d1), round(float(d2), 10)
    (5.5, 1.7163378145)
    >>> g = gs.numeric_grad(graph, 2.0, 5.0, richardson=True)
    >>> bool(abs(g[0] - 5.5) < 1e-12)
    True
    """
    from .engine import Engine

    if engine is None:
        engine = _default_engine()
    elif not isinstance(engine, Engine):
        raise TypeError(f"engine must be a gs.Engine, got {type(engine).__name__}")
    engine._check_graph(graph)
    engine._scalar_output(graph, "numeric_grad")
    _check_method(method, richardson)
    args = engine._arguments(graph, args)
    wrt = _float_inputs(graph, "numeric_grad")
    with np.errstate(all="ignore"):
        grads = numeric_gradients(engine, graph, args, wrt, method, step, richardson)
    return grads[0] if len(grads) == 1 else grads


_ENGINE = None


def _default_engine():
    global _ENGINE
    if _ENGINE is None:
        from .engine import Engine

        _ENGINE = Engine()
    return _ENGINE


def _eps(graph, wrt) -> float:
    """The machine epsilon of the least precise of the output and the inputs differentiated:
    a float32 input rounds a step smaller than its epsilon away."""
    specs = [graph.outputs[0].spec, *(graph.inputs[i].spec for i in wrt)]
    return max(float(np.finfo(np.dtype(s.dtype)).eps) for s in specs)


def numeric_gradients(
    engine, graph, args, wrt, method="central", step=None, richardson=False, should_stop=None
):
    """The difference (or complex-step) gradient of a checked graph's scalar output with
    respect to each input in `wrt`, at checked `args`: a tuple of arrays."""
    if step is None:
        step = default_step(method, richardson, _eps(graph, wrt))
    elif isinstance(step, (bool, np.bool_)) or not isinstance(
        step, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"step must be a number, got {step!r}")
    elif not 0 < step < np.inf:
        raise ValueError(f"step must be positive and finite, got {step!r}")
    return tuple(
        _numeric_gradient(engine, graph, args, i, method, float(step), richardson, should_stop)
        for i in wrt
    )


def _batch_plan(engine, graph, i, method, chunk):
    """The plan evaluating the graph at `chunk` perturbations of input i at once: complex ones
    for the complex step, real ones for every difference."""
    method = "complex" if method == "complex" else "central"  # one real plan for the others
    specs = [p.spec for p in graph.inputs]
    if method == "complex":
        specs[i] = Spec(specs[i].shape, "complex128")

    def build(loop_tapes):  # no derivative in this program
        program = Program(graph) if method != "complex" else retype(Program(graph), specs)
        return batch(program, [k == i for k in range(len(specs))], chunk)

    return engine._plan(graph, ("check_grad", method, i, chunk), build)


def plan_stats(engine, graph, method="central") -> Stats:
    """Engine.plan_stats of check_grad: the gradient's pass and the batched evaluations,
    the largest of each figure; the batched perturbed inputs and the differences (an array
    of every input's size per evaluation) are added to the peak."""
    _check_method(method, methods=CHECK_METHODS)
    wrt = _float_inputs(graph, "check_grad")
    # Richardson holds the differences of its three steps
    held = (3 + 2 * (RICHARDSON_LEVELS - 1)) if method == "richardson" else 3
    figures = [engine.plan_stats(graph, "grad", argnums=wrt)]
    for i in wrt:
        n = graph.inputs[i].spec.size
        if n:
            stats = _batch_plan(engine, graph, i, method, min(n, CHUNK)).stats
            figures.append(stats._replace(peak_bytes=stats.peak_bytes + held * 16 * n))
    return Stats(
        max(s.tape_bytes for s in figures),
        max(s.tape_entries for s in figures),
        max(s.peak_bytes for s in figures),
        0,
    )


def _numeric_gradient(engine, graph, args, i, method, step, richardson, should_stop):
    x = args[i]
    flat = x.ravel()
    n = flat.size
    if n == 0:  # a zero-size input: nothing to perturb (and a chunk of 0 would not step)
        return np.zeros(x.shape, x.dtype)
    h = step * np.maximum(1.0, np.abs(flat))
    chunk = min(n, CHUNK)
    complex_step = method == "complex"
    dtype = "complex128" if complex_step else x.dtype
    plan = _batch_plan(engine, graph, i, method, chunk)

    def evaluate(offsets):
        """f at x + offsets[j] (along element j) for every j: one batched pass per chunk."""
        out = np.empty(n, dtype=np.complex128 if complex_step else np.float64)
        for start in range(0, n, chunk):
            idx = np.arange(start, start + chunk) % n
            perturbed = np.repeat(flat[None, :].astype(dtype), chunk, axis=0)
            perturbed[np.arange(chunk), idx] += offsets[idx]
            batch_args = args[:i] + [perturbed.reshape((chunk,) + x.shape)] + args[i + 1 :]
            values = engine._run(plan, batch_args, tape=False, should_stop=should_stop)[0]
            out[idx[: min(chunk, n - start)]] = values[: min(chunk, n - start)]
        return out

    if complex_step:
        return (evaluate(1j * h).imag / h).reshape(x.shape).astype(x.dtype)
    if method == "forward":
        base = float(engine.evaluate(graph, *args, should_stop=should_stop))

    def difference(h):
        # the step actually taken, (x + h) - x, exact: no error from rounding x + h
        h = ((flat + h.astype(x.dtype)) - flat).astype(np.float64)
        if method == "forward":
            return (evaluate(h).real - base) / h
        return (evaluate(h).real - evaluate(-h).real) / (2 * h)

    if not richardson:
        grad = difference(h)
    else:
        # Richardson's table: entry j of the first column is the difference at h / 2**j; each
        # further column cancels the next power of h of the error (h**2, h**4 central; h,
        # h**2 forward)
        power = 2 if method == "central" else 1
        column = [difference(h / 2**j) for j in range(RICHARDSON_LEVELS)]
        for k in range(1, RICHARDSON_LEVELS):
            factor = 2.0 ** (power * k)
            column = [(factor * b - a) / (factor - 1) for a, b in itertools.pairwise(column)]
        grad = column[0]
    return grad.reshape(x.shape).astype(x.dtype)
