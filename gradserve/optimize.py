"""`gs.minimize`: optimisation loops whose derivatives come from an Engine or a Client.

    import gradserve as gs
    graph = gs.trace(loss, gs.Spec((d,)), X, y)          # the first input is optimised
    with gs.Client("localhost:50051") as cli:
        res = gs.minimize(graph, np.zeros(d), X, y, backend=cli)   # L-BFGS-B
    res.x, res.fun, res.history["loss"]

SciPy's gradient methods get the value and the gradient from ONE backend call per evaluation
(`value_and_grad`, passed to SciPy with `jac=True`); Newton-CG, trust-ncg, trust-krylov and
trust-constr get `hessp` from the backend's `hvp` (with argnums=0: the inputs held fixed are
neither differentiated nor sent back), dogleg and trust-exact get `hess` from its
`hessian`; Nelder-Mead, Powell, COBYLA and COBYQA get the value alone (`evaluate`). Besides
SciPy's methods there are two first-order loops, "sgd" (heavy-ball momentum, optionally
Nesterov) and "adam".

The inputs held fixed (`args`) are the same array objects on every call, so a Client sends a
large one once and names it by its digest afterwards (see gs.Client)."""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import sys
import time
import warnings
from collections import OrderedDict

import numpy as np

from gradserve.engine.arguments import coerce
from gradserve.engine.graph import Graph, Spec
from gradserve.engine.pytree import flatten, unflatten

__all__ = ["FIRST_ORDER_METHODS", "minimize"]


def _so():
    # scipy.optimize takes about a second to import: only when minimize runs.
    import scipy.optimize

    return scipy.optimize


FIRST_ORDER_METHODS = ("adam", "sgd")
_HESSP_METHODS = frozenset({"newton-cg", "trust-ncg", "trust-krylov", "trust-constr"})
_HESS_METHODS = frozenset({"dogleg", "trust-exact"})
_GRADIENT_FREE = frozenset({"nelder-mead", "powell", "cobyla", "cobyqa"})
_HISTORY_FIELDS = ("step", "loss", "grad_norm", "time", "nfev")


def minimize(
    graph_or_fun,
    x0,
    *args,
    method="L-BFGS-B",
    backend=None,
    options=None,
    progress=None,
    server_side=True,
    **kwargs,
):
    """Minimise the scalar output of a graph over its first input, or of a Python function
    over its first argument (a pytree), starting at `x0`, with the other inputs held at
    `args`.

    SciPy's gradient methods get the value and the gradient from one backend call per
    evaluation (`value_and_grad`); Newton-CG, trust-ncg, trust-krylov and trust-constr get
    Hessian-vector products from `hvp`, dogleg and trust-exact the Hessian from `hessian`;
    Nelder-Mead, Powell, COBYLA and COBYQA the value alone (`evaluate`).

    Parameters
    ----------
    graph_or_fun : gs.Graph or callable
        A graph with one real scalar output; its first input, float64 or float32, is the
        variable. Or a Python function ``fun(params, *args)`` returning a real scalar, where
        `params` has the structure of `x0`: it is traced once with `gs.trace`, as a graph
        whose first input is the flat vector of the leaves of `params` (in pytree order, dict
        keys sorted) and whose other inputs are `args`.
    x0 : array_like or pytree
        The starting point. With a graph: as many elements as the first input (flattened for
        SciPy and reshaped for the graph). With a function: a pytree (tuples, lists, dicts,
        namedtuples, None) of arrays and numbers, every leaf real (integer and bool leaves
        are optimised as float64); SciPy works on the flat vector of its leaves (float32 when
        every leaf is float32, else float64).
    *args : array_like
        The other inputs, in order; converted once and passed unchanged to every call (so a
        `gs.Client` sends a large one once).
    method : str or callable, optional
        Any method of `scipy.optimize.minimize` (name or callable), or "adam" or "sgd".
        Default "L-BFGS-B".
    backend : gs.Engine or gs.Client, optional
        Where the values and derivatives come from (anything with the Engine's methods);
        default a new `gs.Engine`.
    options : dict, optional
        SciPy's options. For "adam" and "sgd": maxiter (1000), learning_rate (0.001 for
        adam, 0.01 for sgd; a number or a function of the step), gtol (1e-5; stop when the
        largest gradient component, projected onto the bounds, is at most gtol), momentum
        (0.9) and nesterov (False) for sgd, beta1 (0.9), beta2 (0.999) and eps (1e-8) for
        adam.
    progress : bool, optional
        A tqdm progress bar (step, loss, gradient norm, steps/s) on stderr while it runs,
        shown when stderr is a terminal unless `progress` is False.
    server_side : bool, optional
        With a `gs.Client` backend: True (the default) runs the whole loop on the server, in
        one streaming call (the same code against the server's engine, so the same result),
        which streams each step back (the progress bar and `callback` run here); the
        Client's `timeout` bounds the whole loop. Options and keyword arguments must then be
        data (numbers, strings, arrays, `Bounds`, `LinearConstraint`): a function among them
        is a TypeError. False drives the loop from here, one call per evaluation.
    **kwargs
        Passed to `scipy.optimize.minimize`: bounds, constraints, tol, callback, hess, hessp
        (not jac: the backend gives the gradient). "adam" and "sgd" take bounds (they
        project onto them), tol (the default gtol) and callback. A callback receives x in the
        input's shape, or with a function objective as a pytree of x0's structure (or,
        declared as ``callback(intermediate_result)``, an OptimizeResult whose x and jac are
        so); returning True or raising StopIteration from it stops. With a pytree x0, bounds
        and constraints are on the flat vector of the leaves (a `scipy.optimize.Bounds` or
        one (low, high) pair per element, in leaf order).

    Returns
    -------
    scipy.optimize.OptimizeResult
        SciPy's result (x and jac in the input's shape, or pytrees of x0's structure with a
        function objective: each leaf a float64 array of its leaf's shape, a float for a
        number; fun, nit, nfev, success, status, message, ...), with `history`, a dict of arrays with one entry per step (step 0 is
        the first point evaluated): "step", "loss", "grad_norm" (Euclidean), "time" (wall
        seconds since the start) and "nfev" (value evaluations so far); and
        `backend_calls`, the number of backend calls by method name.

    Raises
    ------
    TypeError
        `graph_or_fun` is neither a `gs.Graph` nor callable, its output is not one real
        scalar, the graph's first input is not float64 or float32, `args` does not give
        every other input, x0 is a pytree with a graph or has a complex or non-numeric leaf,
        ``jac=`` is passed, "adam" or "sgd" is given an argument it does not take, or (on
        the server) an option or keyword argument is not data.
    ValueError
        `x0` has not as many elements as the first input, or has no elements.

    Examples
    --------
    >>> graph = gs.trace(lambda w: gnp.sum((w - 3.0) ** 2), np.zeros(2))
    >>> res = gs.minimize(graph, np.zeros(2))
    >>> np.round(res.x, 6), res.backend_calls["value_and_grad"] > 0
    (array([3., 3.]), True)
    >>> res = gs.minimize(lambda p: gnp.sum((p["w"] - 3.0) ** 2) + (p["b"] + 1.0) ** 2,
    ...                   {"w": np.zeros(2), "b": 0.0})
    >>> np.round(res.x["w"], 6), round(res.x["b"], 6)
    (array([3., 3.]), -1.0)
    """
    graph, x0, layout = _objective(graph_or_fun, x0, args)
    x0, fixed = prepare(graph, x0, args)
    if server_side and _is_client(backend):
        from gradserve.client.minimize import minimize_on_server

        return minimize_on_server(
            backend, graph, x0, fixed, method, options, progress, layout, kwargs
        )
    return run(graph, x0, fixed, method, backend, options, progress, layout, **kwargs)


def _is_client(backend) -> bool:
    # Without gradserve.client imported, no Client exists (and the engine never imports it).
    module = sys.modules.get("gradserve.client.client")
    return module is not None and isinstance(backend, module.Client)


def _objective(graph_or_fun, x0, args):
    """(graph, x0, layout): a function objective traced, with x0 flattened by its layout."""
    layout = None
    if isinstance(graph_or_fun, Graph):
        graph = graph_or_fun
    elif callable(graph_or_fun):
        layout = _Layout(x0)
        graph = layout.trace(graph_or_fun, args)
        x0 = layout.flatten(x0)
    else:
        raise TypeError(
            "gs.minimize: expected a gs.Graph or a Python function, got "
            f"{type(graph_or_fun).__name__}"
        )
    return graph, x0, layout


def prepare(graph, x0, args, copy=True):
    """Check the graph, x0 and the fixed inputs as gs.minimize does: (x0 as a flat float64
    vector, the fixed inputs as read-only arrays of their input's dtype). copy=False keeps
    inputs that are already read-only arrays of their dtype (the server's, decoded from
    immutable bytes) instead of copying them."""
    _check_scalar_output(graph)
    if not graph.inputs:
        raise TypeError("gs.minimize: the graph has no inputs to optimise")
    variable = graph.inputs[0]
    if variable.spec.dtype not in ("float64", "float32"):
        raise TypeError(
            f"gs.minimize optimises the first input {variable.name!r}, which must be "
            f"real floating point, got {variable.spec.dtype}"
        )
    if len(args) != len(graph.inputs) - 1:
        names = ", ".join(p.name for p in graph.inputs[1:]) or "none"
        raise TypeError(
            f"gs.minimize: the graph's inputs after {variable.name!r} are held fixed "
            f"and need {len(graph.inputs) - 1} arguments ({names}), got {len(args)}"
        )
    try:
        x0 = np.array(x0, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"gs.minimize: x0 for the graph's input {variable.name!r} must be array_like "
            f"({exc}); to optimise a pytree, pass a Python function instead of a graph"
        ) from None
    if x0.size != variable.spec.size:
        raise ValueError(
            f"x0 for input {variable.name!r} needs {variable.spec.size} elements "
            f"(shape {variable.spec.shape}), got shape {x0.shape}"
        )
    # Copy the fixed inputs once, to read-only C-contiguous arrays of the input's dtype that
    # own their data: the same arrays then go to every call, so a Client neither converts them
    # on each step nor resends them, and since nothing can change them it hashes each large one
    # only once (it names it by its digest afterwards).
    fixed = []
    for a, p in zip(args, graph.inputs[1:]):
        a = coerce(a, p.spec, f"argument {p.name!r}")
        if copy or a.flags.writeable or not a.flags.c_contiguous:
            a = _readonly(np.array(a, order="C"))
        fixed.append(a)
    return x0.reshape(-1), tuple(fixed)


def run(graph, x0, fixed, method, backend, options, progress, layout=None, on_step=None, **kwargs):
    """The loop of gs.minimize on a checked graph (see `prepare`) from the flat `x0`.
    `on_step(step, loss, grad_norm, nfev, seconds)` sees each entry of the history as it is
    recorded (the server streams them)."""
    if backend is None:
        from gradserve.engine import Engine

        backend = Engine()
    options = dict(options or {})
    name = method.lower() if isinstance(method, str) else None
    objective = _Objective(backend, graph, fixed, layout)
    objective.on_step = on_step
    maxiter = options.get("maxiter")
    label = method if name else getattr(method, "__name__", "minimize")
    bar = _progress_bar(progress, maxiter, label)
    try:
        if name in FIRST_ORDER_METHODS:
            res = _first_order(name, objective, x0, options, bar, **kwargs)
        else:
            res = _scipy(method, name, objective, x0, options, bar, **kwargs)
    finally:
        if bar is not None:
            bar.close()
    return _finish(res, objective)


# ---- pytree parameters ------------------------------------------------------------------


class _Layout:
    """Where each leaf of a pytree x0 sits in the flat vector SciPy works on."""

    def __init__(self, x0):
        leaves, self.treedef = flatten(x0)
        self.shapes, self.dtypes, self.numbers = [], [], []
        for i, leaf in enumerate(leaves):
            a = np.asarray(leaf)
            if a.dtype.kind not in "biuf":
                raise TypeError(
                    f"gs.minimize: leaf {i} of x0 must be real numbers, got "
                    f"{type(leaf).__name__} of dtype {a.dtype}"
                )
            self.shapes.append(a.shape)
            self.dtypes.append(np.dtype("float32") if a.dtype == np.float32 else None)
            self.numbers.append(a.ndim == 0 and not isinstance(leaf, np.ndarray))
        self.sizes = [math.prod(s) for s in self.shapes]
        self.size = sum(self.sizes)
        if self.size == 0:
            raise ValueError("gs.minimize: x0 has no elements to optimise")
        every32 = all(d is not None for d in self.dtypes)
        self.dtype = np.dtype("float32" if every32 else "float64")

    def flatten(self, tree):
        leaves, _ = flatten(tree)
        return np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for a in leaves])

    def unflatten(self, flat):
        leaves, start = [], 0
        for shape, size, number in zip(self.shapes, self.sizes, self.numbers):
            leaf = flat[start : start + size].reshape(shape)
            leaves.append(float(leaf[()]) if number else leaf.copy())
            start += size
        return unflatten(self.treedef, leaves)

    def trace(self, fun, args):
        """`fun(params, *args)` as a graph of (flat params, *args)."""
        from gradserve.engine import numpy as gnp
        from gradserve.engine.tracing import trace

        def objective(flat, *fixed):
            leaves, start = [], 0
            for shape, size, dtype in zip(self.shapes, self.sizes, self.dtypes):
                leaf = gnp.reshape(flat[start : start + size], shape)
                if dtype is not None and dtype != self.dtype:
                    leaf = gnp.astype(leaf, dtype.name)
                leaves.append(leaf)
                start += size
            return fun(unflatten(self.treedef, leaves), *fixed)

        with contextlib.suppress(TypeError, ValueError):  # inputs named after fun's parameters
            objective.__signature__ = inspect.signature(fun)
        examples = [a if isinstance(a, Spec) else np.asarray(a) for a in args]
        return trace(objective, Spec((self.size,), self.dtype.name), *examples)


# ---- evaluations -------------------------------------------------------------------------


class _Objective:
    """The backend calls, the record of evaluations (for the per-step history) and the steps."""

    def __init__(self, backend, graph, fixed, layout=None):
        self.backend = backend
        self.graph = graph
        self.fixed = fixed
        self.layout = layout
        spec = graph.inputs[0].spec
        self.shape, self.dtype = spec.shape, np.dtype(spec.dtype)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.calls: dict[str, int] = {}
        self.nfev = 0
        self._seen: OrderedDict = OrderedDict()  # x bytes -> (loss, gradient or None)
        self.start = time.perf_counter()
        self.history = {k: [] for k in _HISTORY_FIELDS}
        self.bar = None
        self.on_step = None

    def _x(self, xflat):
        return np.asarray(xflat).reshape(self.shape).astype(self.dtype, copy=True)

    def user(self, xflat):
        """A flat vector (x or a gradient) as the user sees it: in the first input's shape,
        or a pytree of x0's structure (fresh arrays either way)."""
        return user_form(xflat, self.shape, self.layout)

    def _count(self, name):
        self.calls[name] = self.calls.get(name, 0) + 1

    def _remember(self, xflat, f, g):
        self.nfev += 1
        key = np.asarray(xflat, dtype=np.float64).tobytes()
        self._seen[key] = (f, g)
        self._seen.move_to_end(key)
        while len(self._seen) > 16:
            self._seen.popitem(last=False)
        if not self.history["step"]:
            self.record(f, g)  # step 0: the first point evaluated

    def value_and_grad(self, xflat):
        self._count("value_and_grad")
        value, grad = self.backend.value_and_grad(
            self.graph, self._x(xflat), *self.fixed, argnums=0
        )
        f = float(value)
        g = np.asarray(grad, dtype=np.float64).reshape(-1)
        self._remember(xflat, f, g)
        return f, g

    def value(self, xflat):
        self._count("evaluate")
        f = float(self.backend.evaluate(self.graph, self._x(xflat), *self.fixed))
        self._remember(xflat, f, None)
        return f

    def hessp(self, xflat, p):
        self._count("hvp")
        # argnums=0: only x is differentiated and gets a tangent; the fixed data is neither
        # differentiated nor, over the wire, answered with a product of its size.
        (out,) = self.backend.hvp(
            self.graph, (self._x(xflat),) + self.fixed, (self._x(p),), argnums=0
        )
        return np.asarray(out, dtype=np.float64).reshape(-1)

    def hess(self, xflat):
        self._count("hessian")
        h = self.backend.hessian(self.graph, self._x(xflat), *self.fixed, argnums=0)
        return np.asarray(h, dtype=np.float64).reshape(self.size, self.size)

    def lookup(self, xflat):
        """(loss, gradient) at x: from the record when x was evaluated, else a new call."""
        key = np.asarray(xflat, dtype=np.float64).tobytes()
        hit = self._seen.get(key)
        if hit is not None and (hit[1] is not None or self.calls.get("value_and_grad", 0) == 0):
            return hit
        if self.calls.get("value_and_grad", 0) == 0:  # a gradient-free method
            return self.value(xflat), None
        return self.value_and_grad(xflat)

    def record(self, f, g):
        h = self.history
        with np.errstate(over="ignore", invalid="ignore"):
            gnorm = float(np.linalg.norm(g)) if g is not None else math.nan
        h["step"].append(len(h["step"]))
        h["loss"].append(f)
        h["grad_norm"].append(gnorm)
        h["time"].append(time.perf_counter() - self.start)
        h["nfev"].append(self.nfev)
        show_step(self.bar, h["step"][-1], f, gnorm)
        if self.on_step is not None:
            self.on_step(h["step"][-1], f, gnorm, self.nfev, h["time"][-1])


def user_form(xflat, shape, layout=None):
    """A flat vector as the user sees it: in `shape`, or a pytree by `layout`."""
    xflat = np.array(xflat, dtype=np.float64).reshape(-1)
    if layout is not None:
        return layout.unflatten(xflat)
    return xflat.reshape(shape)


def _readonly(a):
    a.flags.writeable = False
    return a


def _check_scalar_output(graph):
    outs = graph.outputs
    if (
        len(outs) != 1
        or outs[0].spec.shape != ()
        or outs[0].spec.dtype not in ("float64", "float32")
    ):
        got = ", ".join(str(p.spec) for p in outs) or "no outputs"
        raise TypeError(
            f"gs.minimize needs a graph with one real scalar output; this one gives {got}"
        )


# ---- progress --------------------------------------------------------------------------


def _progress_bar(progress, maxiter, desc):
    if progress is False:
        return None
    try:
        interactive = sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):
        interactive = False
    if not interactive:
        return None
    from tqdm import tqdm

    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):
        size = os.terminal_size((0, 0))
    # A terminal that reports no size (a bare pty) would hide the bar: assume 100 x 24.
    return tqdm(
        total=maxiter if isinstance(maxiter, (int, np.integer)) else None,
        desc=desc,
        unit="step",
        file=sys.stderr,
        leave=True,
        ncols=None if size.columns > 0 else 100,
        nrows=None if size.lines > 0 else 24,
    )


def show_step(bar, step, loss, grad_norm):
    if bar is not None and step > 0:
        bar.set_postfix({"loss": f"{loss:.6g}", "grad_norm": f"{grad_norm:.3g}"}, refresh=False)
        bar.update(1)


# ---- user callbacks ----------------------------------------------------------------------


def _wants_result(callback) -> bool:
    try:
        return set(inspect.signature(callback).parameters) == {"intermediate_result"}
    except (TypeError, ValueError):
        return False


def _call_user(callback, wants_result, x, f, g, extra=None, nit=None):
    """Call the user's callback as SciPy would; its returning True stops, as raising
    StopIteration does (SciPy's trust-constr's convention, for every method)."""
    if callback is None:
        return
    if wants_result:
        r = _so().OptimizeResult(extra or {})
        r.x, r.fun = x, f
        if g is not None:
            r.jac = g
        if nit is not None:
            r.nit = nit
        stop = callback(intermediate_result=r)
    elif extra is not None and "constr_violation" in extra:  # trust-constr's (x, state)
        stop = callback(x, _so().OptimizeResult(extra, x=x))
    else:
        stop = callback(x)
    if stop is True:
        raise StopIteration


# ---- SciPy ------------------------------------------------------------------------------


def _scipy(method, name, obj: _Objective, x0, options, bar, **kwargs):
    if "jac" in kwargs:
        raise TypeError("gs.minimize computes the gradient with the backend; do not pass jac")
    user_callback = kwargs.pop("callback", None)
    wants_result = user_callback is not None and _wants_result(user_callback)
    obj.bar = bar

    def step(intermediate_result):
        # SciPy calls this once per iteration, with an OptimizeResult (or a bare x for TNC
        # and COBYLA): record the step, update the bar, hand over to the user's callback.
        r = intermediate_result
        x = np.array(getattr(r, "x", r), dtype=np.float64).reshape(-1)
        f, g = obj.lookup(x)
        obj.record(f, g)
        if user_callback is not None:
            extra = dict(r) if isinstance(r, _so().OptimizeResult) else None
            if extra is not None:
                extra.pop("x", None)
            _call_user(
                user_callback,
                wants_result,
                obj.user(x),
                f,
                None if g is None else obj.user(g),
                extra,
            )

    if name in _GRADIENT_FREE:
        fun, jac = obj.value, None
    else:
        fun, jac = obj.value_and_grad, True
    if name in _HESSP_METHODS and "hess" not in kwargs and "hessp" not in kwargs:
        kwargs["hessp"] = obj.hessp
    if name in _HESS_METHODS and "hess" not in kwargs and "hessp" not in kwargs:
        kwargs["hess"] = obj.hess
    return _so().minimize(
        fun, x0, method=method, jac=jac, callback=step, options=options or None, **kwargs
    )


# ---- first-order loops -------------------------------------------------------------------


def _first_order(
    name, obj: _Objective, x, options, bar, *, bounds=None, tol=None, callback=None, **kwargs
):
    if kwargs:
        raise TypeError(
            f"method {name!r} does not take {', '.join(sorted(kwargs))} "
            "(it takes options, bounds, tol and callback)"
        )
    opts = dict(options)
    maxiter = int(opts.pop("maxiter", 1000))
    lr = opts.pop("learning_rate", 1e-3 if name == "adam" else 1e-2)
    gtol = float(opts.pop("gtol", 1e-5 if tol is None else tol))
    if name == "sgd":
        momentum = float(opts.pop("momentum", 0.9))
        nesterov = bool(opts.pop("nesterov", False))
    else:
        beta1 = float(opts.pop("beta1", 0.9))
        beta2 = float(opts.pop("beta2", 0.999))
        eps = float(opts.pop("eps", 1e-8))
    opts.pop("disp", None)
    if opts:
        warnings.warn(
            f"Unknown solver options: {', '.join(sorted(opts))}",
            _so().OptimizeWarning,
            stacklevel=3,
        )
    if maxiter < 0:
        raise ValueError(f"maxiter must be >= 0, got {maxiter}")
    learning_rate = lr if callable(lr) else (lambda k, lr=float(lr): lr)
    lower, upper = _bounds(bounds, x.size)
    if lower is not None:
        x = np.clip(x, lower, upper)
    wants_result = callback is not None and _wants_result(callback)
    obj.bar = bar
    velocity = np.zeros_like(x)
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    status, message = 1, "Maximum number of iterations has been exceeded."
    nit = 0
    f, g = math.nan, np.full_like(x, math.nan)
    for k in range(maxiter + 1):
        f, g = obj.value_and_grad(x)
        if k:
            obj.record(f, g)
        if not (math.isfinite(f) and np.all(np.isfinite(g))):
            status, message = 3, "NaN or infinite loss or gradient encountered."
            break
        if k:
            try:
                _call_user(callback, wants_result, obj.user(x), f, obj.user(g), nit=nit)
            except StopIteration:
                status, message = 99, "`callback` raised `StopIteration`."
                break
        pg = g if lower is None else x - np.clip(x - g, lower, upper)
        if np.max(np.abs(pg), initial=0.0) <= gtol:
            status, message = 0, "Optimization terminated successfully (gradient norm <= gtol)."
            break
        if k == maxiter:
            break
        rate = float(learning_rate(k))
        with np.errstate(over="ignore", invalid="ignore"):  # divergence: status 3 next step
            if name == "sgd":
                velocity = momentum * velocity - rate * g
                x = x + (momentum * velocity - rate * g if nesterov else velocity)
            else:
                t = k + 1
                m = beta1 * m + (1 - beta1) * g
                v = beta2 * v + (1 - beta2) * (g * g)
                m_hat = m / (1 - beta1**t)
                v_hat = v / (1 - beta2**t)
                x = x - rate * m_hat / (np.sqrt(v_hat) + eps)
            if lower is not None:
                x = np.clip(x, lower, upper)
        nit += 1
    return _so().OptimizeResult(
        x=x,
        fun=f,
        jac=g,
        nit=nit,
        nfev=obj.nfev,
        njev=obj.nfev,
        status=status,
        success=status == 0,
        message=message,
    )


def _bounds(bounds, n):
    if bounds is None:
        return None, None
    if isinstance(bounds, _so().Bounds):
        lb, ub = bounds.lb, bounds.ub
    else:
        pairs = list(bounds)
        if len(pairs) != n:
            raise ValueError(f"bounds has {len(pairs)} pairs for {n} variables")
        lb = [-np.inf if p[0] is None else p[0] for p in pairs]
        ub = [np.inf if p[1] is None else p[1] for p in pairs]
    lb = np.broadcast_to(np.asarray(lb, dtype=np.float64), (n,))
    ub = np.broadcast_to(np.asarray(ub, dtype=np.float64), (n,))
    return lb, ub


# ---- the result --------------------------------------------------------------------------


def _finish(res, obj: _Objective):
    x = np.asarray(res.x, dtype=np.float64)
    if x.size == obj.size:
        res.x = obj.user(x)
    jac = res.get("jac")
    if isinstance(jac, np.ndarray) and jac.size == obj.size:
        res.jac = obj.user(jac)
    if "fun" in res:
        res.fun = float(np.asarray(res.fun))
    res.history = {
        k: np.asarray(v, dtype=np.int64 if k in ("step", "nfev") else np.float64)
        for k, v in obj.history.items()
    }
    res.backend_calls = dict(obj.calls)
    return res
