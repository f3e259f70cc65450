"""Numerical differentiation for `check_grad`: forward and central differences and the
complex step, each with its standard step scaled by max(1, |x|), compared with the AD gradient.

All perturbations of one input are evaluated in one batched pass (the `batch` transform), in
chunks, so a check costs a few graph evaluations rather than one per element."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .graph import Spec
from .plan import Stats
from .transforms import Program, batch, retype

CHUNK = 256


def _steps(eps):
    """method -> (relative step, tolerance): the step that balances truncation and rounding
    error, and a tolerance a hundred times the error that step leaves."""
    return {
        "forward": (np.sqrt(eps), 100 * np.sqrt(eps)),
        # central's truncation error h**2 * f'''(x) / 6 grows with the third derivative,
        # which the scale does not bound: with forward's tolerance it never flags a gradient
        # that the (less accurate) forward difference accepts
        "central": (np.cbrt(eps), 100 * np.sqrt(eps)),
        "complex": (1e-20, 100 * eps),
    }


@dataclass(frozen=True)
class GradCheck:
    """What `check_grad` reports: the gradient against its numerical estimate.

    Attributes
    ----------
    method : str
        "central", "forward" or "complex".
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
    eps = np.finfo(graph.outputs[0].spec.dtype).eps
    table = _steps(eps)
    if method not in table:
        raise ValueError(f"method must be one of {sorted(table)}, got {method!r}")
    relative_step, tolerance = table[method]
    wrt = tuple(i for i, p in enumerate(graph.inputs) if p.spec.dtype in ("float64", "float32"))
    if not wrt:
        raise TypeError("check_grad needs at least one real floating-point input")
    value, analytic = engine.value_and_grad(graph, *args, argnums=wrt, should_stop=should_stop)
    scale = max(1.0, float(abs(value)))
    numeric = tuple(
        _numeric_gradient(engine, graph, args, i, method, relative_step, should_stop) for i in wrt
    )
    abs_err = max(
        (float(np.max(np.abs(a - n), initial=0.0)) for a, n in zip(analytic, numeric)), default=0.0
    )
    rel_err = 0.0
    ok = True
    for a, n in zip(analytic, numeric):
        err = np.abs(a - n)
        denom = np.maximum(np.maximum(np.abs(a), np.abs(n)), np.finfo(float).tiny)
        rel_err = max(rel_err, float(np.max(np.where(err == 0, 0.0, err / denom), initial=0.0)))
        ok = ok and bool(np.all(err <= tolerance * (scale + np.abs(n))))
    return GradCheck(method, abs_err, rel_err, ok, analytic, numeric)


def _batch_plan(engine, graph, i, method, chunk):
    """The plan evaluating the graph at `chunk` perturbations of input i at once."""
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
    if method not in _steps(np.finfo(graph.outputs[0].spec.dtype).eps):
        raise ValueError(f"method must be one of {sorted(_steps(1.0))}, got {method!r}")
    wrt = tuple(i for i, p in enumerate(graph.inputs) if p.spec.dtype in ("float64", "float32"))
    if not wrt:
        raise TypeError("check_grad needs at least one real floating-point input")
    figures = [engine.plan_stats(graph, "grad", argnums=wrt)]
    for i in wrt:
        n = graph.inputs[i].spec.size
        if n:
            stats = _batch_plan(engine, graph, i, method, min(n, CHUNK)).stats
            figures.append(stats._replace(peak_bytes=stats.peak_bytes + 3 * 16 * n))
    return Stats(
        max(s.tape_bytes for s in figures),
        max(s.tape_entries for s in figures),
        max(s.peak_bytes for s in figures),
        0,
    )


def _numeric_gradient(engine, graph, args, i, method, relative_step, should_stop):
    x = args[i]
    flat = x.ravel()
    n = flat.size
    if n == 0:  # a zero-size input: nothing to perturb (and a chunk of 0 would not step)
        return np.zeros(x.shape, x.dtype)
    h = relative_step * np.maximum(1.0, np.abs(flat))
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

    if method == "forward":
        base = float(engine.evaluate(graph, *args, should_stop=should_stop))
        grad = (evaluate(h).real - base) / h
    elif method == "central":
        grad = (evaluate(h).real - evaluate(-h).real) / (2 * h)
    else:
        grad = evaluate(1j * h).imag / h
    return grad.reshape(x.shape).astype(x.dtype)
