"""`gs.Engine`: the in-process differentiation engine.

Every method turns (graph, method, argnums) into a Program by graph transformations, compiles
it once into a Plan (cached by the graph's digest), and runs the plan on the arguments."""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict

import numpy as np

from . import dtypes
from .arguments import argnums_key, arguments, check_argnums, check_graph, coerce, single
from .errors import LimitError
from .graph import Graph, Spec, readonly
from .limits import DEFAULT_LIMITS, Limits
from .plan import Plan, Stats
from .tape import meter
from .transforms import Program, batch, jvp, select_outputs, vjp


def _single_or_tuple(items, one):
    return items[0] if one else tuple(items)


class Engine:
    """The in-process differentiation engine.

    Each method turns the graph into a program for what is asked (values, a gradient, a VJP,
    ...), compiles it once into a plan cached by the graph's digest, and runs that plan on the
    arguments. `gs.Client` has the same methods with the same arguments and results, computed
    by a gradserve server (it takes ``timeout=`` where the Engine takes ``should_stop=``). One
    Engine may serve several threads at once; `last_stats` is per thread.

    Parameters
    ----------
    max_tape_bytes : int or None, optional
        Bound on the tape one call may hold: the intermediate values the reverse pass reads.
        A call whose plan would hold more raises `gs.LimitError` before anything runs. Under a
        bound, loops (`gs.scan`, `gs.while_loop`) are differentiated through loop tapes that
        recompute (checkpoint) to fit, and a loop that cannot fit raises `gs.LimitError`.
        None (the default): unbounded.
    limits : gs.Limits, optional
        Size limits (nodes, elements, name length) for graphs and arrays decoded for this
        engine; a server checks every request against its engine's limits. Default
        ``gs.Limits()``.
    plan_cache_size : int, optional
        Number of compiled plans kept, least recently used dropped first. Default 512.

    Notes
    -----
    Arguments are given as one value per graph input, in the order of ``graph.inputs``: a
    number or an array of that input's shape. Each is converted to its input's dtype when
    NumPy's same-kind casting allows it (an int to a float, float64 to float32); otherwise
    (a float for an int input, a complex for a float input) it is a TypeError.

    Examples
    --------
    >>> import numpy as np
    >>> import gradserve as gs
    >>> import gradserve.numpy as gnp
    >>> graph = gs.trace(lambda x, y: gnp.sum(gnp.sin(x) * y), np.zeros(3), 2.0)
    >>> eng = gs.Engine()
    >>> eng.grad(graph, np.zeros(3), 2.0)
    array([2., 2., 2.])
    """

    def __init__(
        self,
        max_tape_bytes: int | None = None,
        *,
        limits: Limits = DEFAULT_LIMITS,
        plan_cache_size: int = 512,
    ):
        self.max_tape_bytes = max_tape_bytes
        self.limits = limits
        self._plans: OrderedDict = OrderedDict()
        self._plan_cache_size = plan_cache_size
        self._lock = threading.Lock()
        self._local = threading.local()
        self._argnums_cache: dict = {}

    # ---- plumbing ----------------------------------------------------------------------

    @property
    def tape_bytes_in_use(self) -> int:
        """The tape this thread's call in progress holds.

        Returns
        -------
        int
            Bytes: at most what the running plan keeps for its reverse pass, plus what its loop
            tapes hold now; 0 between calls. A `should_stop` callback may read it.
        """
        running = getattr(self._local, "running", None)
        return 0 if running is None else running + meter.held

    @property
    def last_stats(self) -> Stats:
        """Memory figures of this thread's most recent call.

        Returns
        -------
        gs.Stats
            Tape and peak bytes of that call (all zero before the first call). For `jacobian`
            and `hessian`, which run one pass per input or output, each figure is its largest
            over the passes.
        """
        return getattr(self._local, "stats", Stats())

    def _plan(self, graph: Graph, key, build) -> Plan:
        """The plan of `build(loop_tapes)`, the Program for (graph, key), built once."""
        full_key = (graph.digest,) + key
        with self._lock:
            plan = self._plans.get(full_key)
            if plan is not None:
                self._plans.move_to_end(full_key)
                return plan
        # Under a budget, scans are differentiated through loop tapes (which can checkpoint),
        # except for second-order programs (hvp, hessian), which loop tapes do not support yet:
        # there a scan stacks its carries and the budget is checked as for any residual.
        second_order = key[0] in ("hvp", "hessian")
        loop_tapes = self.max_tape_bytes is not None and not second_order
        plan = Plan(build(loop_tapes))
        with self._lock:
            self._plans[full_key] = plan
            while len(self._plans) > self._plan_cache_size:
                self._plans.popitem(last=False)
        return plan

    def _run(self, plan: Plan, args, *, tape=True, should_stop=None):
        stats = plan.stats
        budget = self.max_tape_bytes
        if tape and budget is not None and stats.tape_bytes > budget:
            # Known before anything runs: the schedule fixes what the reverse pass holds.
            raise LimitError(
                f"the reverse pass would hold {stats.tape_bytes} bytes of tape, "
                f"over the budget of {budget} (max_tape_bytes)",
                "tape",
            )
        # Loop tapes (engine/tape.py) get what the static residuals leave of the budget.
        meter.reset(None if budget is None else budget - stats.tape_bytes)
        self._local.running = stats.tape_bytes if tape else 0
        try:
            out = plan.run(args, should_stop)
        finally:
            self._local.running = None
        loops = meter.peak
        self._local.stats = Stats(
            (stats.tape_bytes if tape else 0) + loops,
            (stats.tape_entries if tape else 0) + meter.tapes,
            stats.peak_bytes + loops,
            meter.recomputed_ops,
        )
        return [np.asarray(o) for o in out]

    _check_graph = staticmethod(check_graph)

    def _arguments(self, graph: Graph, args, what="arguments"):
        return arguments(graph, args, what)

    def _argnums(self, graph: Graph, argnums):
        key = (graph.digest, argnums_key(argnums))
        cached = self._argnums_cache.get(key)
        if cached is None:
            if len(self._argnums_cache) >= 4096:
                self._argnums_cache.clear()
            cached = self._argnums_cache[key] = check_argnums(graph, argnums)
        return cached

    @staticmethod
    def _scalar_output(graph: Graph, method):
        if (
            len(graph.outputs) != 1
            or graph.outputs[0].spec.shape != ()
            or graph.outputs[0].spec.dtype not in ("float64", "float32")
        ):
            got = ", ".join(str(p.spec) for p in graph.outputs)
            raise TypeError(
                f"{method} needs a graph with one real scalar output; this one gives {got}"
            )

    @staticmethod
    def _differentiable(graph: Graph):
        return tuple(
            i for i, p in enumerate(graph.inputs) if dtypes.is_differentiable(p.spec.dtype)
        )

    def _one_pass_plan(self, graph: Graph, method, nums=None) -> Plan:
        """The plan of a method that runs one pass: "evaluate", "grad" (value_and_grad, with
        `nums` checked), "vjp", "jvp", "hvp" (over every differentiable input)."""
        if method == "evaluate":
            return self._plan(graph, ("evaluate",), lambda loop_tapes: Program(graph))
        if method == "grad":
            return self._plan(
                graph,
                ("grad", nums),
                lambda loop_tapes: vjp(Program(graph), nums, seed_ones=True, loop_tapes=loop_tapes),
            )
        wrt = self._differentiable(graph)
        if method == "vjp":
            return self._plan(
                graph, ("vjp",), lambda loop_tapes: vjp(Program(graph), wrt, loop_tapes=loop_tapes)
            )
        if method == "jvp":
            return self._plan(
                graph, ("jvp",), lambda loop_tapes: jvp(Program(graph), wrt, loop_tapes=loop_tapes)
            )
        n_wrt = len(wrt)

        def build(loop_tapes):  # hvp: forward over reverse
            gradient = select_outputs(
                vjp(Program(graph), wrt, seed_ones=True, loop_tapes=loop_tapes),
                range(1, 1 + n_wrt),
            )
            forward = jvp(gradient, wrt, loop_tapes=loop_tapes)
            return select_outputs(forward, range(n_wrt, 2 * n_wrt))

        return self._plan(graph, ("hvp",), build)

    def plan_stats(
        self, graph: Graph, method: str, *, argnums=0, mode="auto", check_method="central"
    ) -> Stats:
        """The memory figures a call's schedule fixes, known before it runs.

        Builds (and caches, as the call would) the plans of `method` on `graph` without
        running them. Loop tapes, which grow as loops run, are not included: under
        `max_tape_bytes` they hold at most what the static tape leaves of it.

        Parameters
        ----------
        graph : gs.Graph
            The graph of the call.
        method : str
            The Engine method's name: "evaluate", "value_and_grad", "grad", "vjp", "jvp",
            "jacobian", "hvp", "hessian" or "check_grad".
        argnums, mode : optional
            As the method takes them (ignored by the methods that do not).
        check_method : str, optional
            check_grad's `method` ("central", "forward" or "complex").

        Returns
        -------
        gs.Stats
            `tape_bytes`, `tape_entries` and `peak_bytes` of the schedule (for `jacobian`,
            `hessian` and `check_grad`, which run several passes, the largest over the
            passes), `recomputed_ops` 0. `peak_bytes` includes the arguments and, for the
            batched passes, the batch of basis vectors or perturbed inputs.

        Raises
        ------
        As the method would, for the same graph, `argnums` and `mode`.

        Examples
        --------
        >>> graph = gs.trace(lambda x: gnp.sum(gnp.sin(x)), np.ones(1000))
        >>> gs.Engine().plan_stats(graph, "grad").peak_bytes >= 8000
        True
        """
        self._check_graph(graph)
        taped = True
        if method in ("value_and_grad", "grad", "hvp", "hessian", "check_grad"):
            self._scalar_output(graph, method)
        if method in ("evaluate", "vjp", "jvp", "hvp"):
            plans = [self._one_pass_plan(graph, method)]
            taped = method not in ("evaluate", "jvp")
        elif method in ("value_and_grad", "grad"):
            plans = [self._one_pass_plan(graph, "grad", self._argnums(graph, argnums))]
        elif method in ("jacobian", "hessian"):
            nums = self._argnums(graph, argnums)
            if method == "jacobian":
                mode = self._mode(
                    mode, [graph.inputs[i].spec for i in nums], [p.spec for p in graph.outputs]
                )
            passes, _ = self._jacobian_plans(
                graph, method, nums, mode if method == "jacobian" else "fwd"
            )
            plans = [plan for plan, _, _ in passes]
        elif method == "check_grad":
            from .numerical import plan_stats as numerical_plan_stats

            return numerical_plan_stats(self, graph, check_method)
        else:
            raise ValueError(f"no Engine method {method!r}")
        figures = [plan.stats for plan in plans]
        return Stats(
            max(s.tape_bytes for s in figures) if taped else 0,
            max(s.tape_entries for s in figures) if taped else 0,
            max(s.peak_bytes for s in figures),
            0,
        )

    # ---- the API -----------------------------------------------------------------------

    def evaluate(self, graph: Graph, *args, should_stop=None):
        """The graph's outputs at `args`.

        Parameters
        ----------
        graph : gs.Graph
            The graph to run.
        *args : array_like
            One value per graph input, in order: a number or an array of that input's shape,
            converted to its dtype (see the Notes of `gs.Engine`).
        should_stop : callable, optional
            Called with no arguments between operations (and before every control-flow
            operation) while the call runs; raise an exception from it to abort the call,
            which then raises that exception.

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
        gs.LimitError
            A `gs.while_loop` ran past its `max_iterations`.

        Examples
        --------
        >>> graph = gs.trace(lambda x, y: (x * y, x + y), 2.0, 3.0)
        >>> gs.Engine().evaluate(graph, 2.0, 3.0)
        (array(6.), array(5.))
        """
        args = self._arguments(graph, args)
        plan = self._one_pass_plan(graph, "evaluate")
        out = self._run(plan, args, tape=False, should_stop=should_stop)
        return _single_or_tuple(out, len(out) == 1)

    def value_and_grad(self, graph: Graph, *args, argnums=0, should_stop=None):
        """The value of a graph with one real scalar output, and its gradient.

        Parameters
        ----------
        graph : gs.Graph
            A graph whose one output is a float64 or float32 scalar.
        *args : array_like
            One value per graph input, in order: a number or an array of that input's shape,
            converted to its dtype (see the Notes of `gs.Engine`).
        argnums : int or sequence of int, optional
            The inputs to differentiate with respect to: indices into ``graph.inputs``,
            negative ones counting from the end; each a float or complex input. Default 0.
        should_stop : callable, optional
            Called with no arguments between operations (and before every control-flow
            operation) while the call runs; raise an exception from it to abort the call,
            which then raises that exception.

        Returns
        -------
        value : ndarray
            The output, a 0-d array.
        grad : ndarray or tuple of ndarray
            For an int `argnums`, the gradient with respect to that input, of its shape and
            dtype; for a sequence, a tuple of them in the order of `argnums`.

        Raises
        ------
        ValueError
            An index in `argnums` is out of range; or an argument's shape differs from its input's.
        TypeError
            The graph does not have exactly one output, a float64 or float32 scalar; `argnums` is
            not an int or a sequence of ints, or names an input that is not float or complex; or
            `graph` is not a `gs.Graph`, the number of arguments differs from the graph's inputs, or
            an argument's dtype does not convert to its input's.
        gs.LimitError
            The reverse pass would hold more than `max_tape_bytes` of tape (raised before anything
            runs), a loop cannot be reversed within it, or a `gs.while_loop` ran past its
            `max_iterations`.

        See Also
        --------
        grad : the gradient alone.
        check_grad : the gradient compared with finite differences.

        Examples
        --------
        >>> graph = gs.trace(lambda x1, x2: gnp.log(x1) + x1 * x2 - gnp.sin(x2), 2.0, 5.0)
        >>> value, (g1, g2) = gs.Engine().value_and_grad(graph, 2.0, 5.0, argnums=(0, 1))
        >>> round(float(value), 6), float(g1), round(float(g2), 6)
        (11.652071, 5.5, 1.716338)
        """
        self._check_graph(graph)
        self._scalar_output(graph, "value_and_grad")
        nums = self._argnums(graph, argnums)
        args = self._arguments(graph, args)
        plan = self._one_pass_plan(graph, "grad", nums)
        value, *grads = self._run(plan, args, should_stop=should_stop)
        return value, _single_or_tuple(grads, single(argnums))

    def grad(self, graph: Graph, *args, argnums=0, should_stop=None):
        """The gradient of a graph with one real scalar output: `value_and_grad` without the
        value.

        Parameters
        ----------
        graph : gs.Graph
            A graph whose one output is a float64 or float32 scalar.
        *args : array_like
            One value per graph input, in order: a number or an array of that input's shape,
            converted to its dtype (see the Notes of `gs.Engine`).
        argnums : int or sequence of int, optional
            The inputs to differentiate with respect to: indices into ``graph.inputs``,
            negative ones counting from the end; each a float or complex input. Default 0.
        should_stop : callable, optional
            Called with no arguments between operations (and before every control-flow
            operation) while the call runs; raise an exception from it to abort the call,
            which then raises that exception.

        Returns
        -------
        ndarray or tuple of ndarray
            For an int `argnums`, the gradient with respect to that input, of its shape and
            dtype; for a sequence, a tuple of them in the order of `argnums`.

        Raises
        ------
        ValueError
            An index in `argnums` is out of range; or an argument's shape differs from its input's.
        TypeError
            The graph does not have exactly one output, a float64 or float32 scalar; `argnums` is
            not an int or a sequence of ints, or names an input that is not float or complex; or
            `graph` is not a `gs.Graph`, the number of arguments differs from the graph's inputs, or
            an argument's dtype does not convert to its input's.
        gs.LimitError
            The reverse pass would hold more than `max_tape_bytes` of tape (raised before anything
            runs), a loop cannot be reversed within it, or a `gs.while_loop` ran past its
            `max_iterations`.

        Examples
        --------
        >>> graph = gs.trace(lambda x: gnp.sum(x * x), np.array([1.0, 2.0]))
        >>> gs.Engine().grad(graph, np.array([1.0, 2.0]))
        array([2., 4.])
        """
        return self.value_and_grad(graph, *args, argnums=argnums, should_stop=should_stop)[1]

    def vjp(self, graph: Graph, primals, cotangents, should_stop=None):
        """Vector-Jacobian product (reverse mode): the outputs at `primals` and the cotangents
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
        should_stop : callable, optional
            Called with no arguments between operations (and before every control-flow
            operation) while the call runs; raise an exception from it to abort the call,
            which then raises that exception.

        Returns
        -------
        outputs : ndarray or tuple of ndarray
            The outputs, as `evaluate` returns them.
        input_cotangents : tuple of ndarray
            One per graph input, of its shape and dtype: the sum over the outputs of
            ``cotangent · d output / d input``; zeros for inputs that are not float or complex.

        Raises
        ------
        ValueError
            A cotangent's shape differs from its output's; or an argument's shape differs from its
            input's.
        TypeError
            The number of cotangents differs from the graph's outputs, or a cotangent's dtype does
            not convert to its output's; or `graph` is not a `gs.Graph`, the number of arguments
            differs from the graph's inputs, or an argument's dtype does not convert to its input's.
        gs.LimitError
            The reverse pass would hold more than `max_tape_bytes` of tape (raised before anything
            runs), a loop cannot be reversed within it, or a `gs.while_loop` ran past its
            `max_iterations`.

        Examples
        --------
        >>> graph = gs.trace(lambda x: x * x, np.array([1.0, 2.0]))
        >>> outputs, (ct,) = gs.Engine().vjp(graph, (np.array([1.0, 2.0]),), np.ones(2))
        >>> ct
        array([2., 4.])
        """
        self._check_graph(graph)
        primals = self._arguments(graph, tuple(primals), "primals")
        cotangents = (
            (cotangents,)
            if len(graph.outputs) == 1 and not isinstance(cotangents, tuple)
            else tuple(cotangents)
        )
        if len(cotangents) != len(graph.outputs):
            raise TypeError(
                f"the graph has {len(graph.outputs)} outputs, got {len(cotangents)} cotangents"
            )
        cts = [
            coerce(c, p.spec, f"cotangent of output {k}")
            for k, (c, p) in enumerate(zip(cotangents, graph.outputs))
            if dtypes.is_differentiable(p.spec.dtype)
        ]
        wrt = self._differentiable(graph)
        plan = self._one_pass_plan(graph, "vjp")
        out = self._run(plan, primals + cts, should_stop=should_stop)
        n = len(graph.outputs)
        grads = dict(zip(wrt, out[n:]))
        input_cts = tuple(
            grads[i] if i in grads else np.zeros(p.spec.shape, p.spec.dtype)
            for i, p in enumerate(graph.inputs)
        )
        return _single_or_tuple(out[:n], n == 1), input_cts

    def jvp(self, graph: Graph, primals, tangents, should_stop=None):
        """Jacobian-vector product (forward mode): the outputs at `primals` and their
        derivatives along `tangents`.

        Parameters
        ----------
        graph : gs.Graph
            The graph to differentiate; any outputs.
        primals : sequence of array_like
            One value per graph input, in order, converted as `args` are for `evaluate`.
        tangents : sequence of array_like
            One per graph input, of that input's shape and dtype (converted as `primals`
            are); those of inputs that are not float or complex are ignored.
        should_stop : callable, optional
            Called with no arguments between operations (and before every control-flow
            operation) while the call runs; raise an exception from it to abort the call,
            which then raises that exception.

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
            An argument's shape differs from its input's.
        TypeError
            `graph` is not a `gs.Graph`, the number of arguments differs from the graph's inputs, or
            an argument's dtype does not convert to its input's.
        gs.LimitError
            A `gs.while_loop` ran past its `max_iterations`.

        Examples
        --------
        >>> graph = gs.trace(lambda x: gnp.sin(x), 0.0)
        >>> gs.Engine().jvp(graph, (0.0,), (2.0,))
        (array(0.), array(2.))
        """
        self._check_graph(graph)
        primals = self._arguments(graph, tuple(primals), "primals")
        tangents = self._arguments(graph, tuple(tangents), "tangents")
        wrt = self._differentiable(graph)
        plan = self._one_pass_plan(graph, "jvp")
        out = self._run(
            plan, primals + [tangents[i] for i in wrt], tape=False, should_stop=should_stop
        )
        n = len(graph.outputs)
        return _single_or_tuple(out[:n], n == 1), _single_or_tuple(out[n:], n == 1)

    def jacobian(self, graph: Graph, *args, argnums=0, mode="auto", should_stop=None):
        """The Jacobian of every output with respect to the inputs named by `argnums`.

        Parameters
        ----------
        graph : gs.Graph
            The graph to differentiate; any outputs.
        *args : array_like
            One value per graph input, in order: a number or an array of that input's shape,
            converted to its dtype (see the Notes of `gs.Engine`).
        argnums : int or sequence of int, optional
            The inputs to differentiate with respect to: indices into ``graph.inputs``,
            negative ones counting from the end; each a float or complex input. Default 0.
        mode : {"auto", "fwd", "rev"}, optional
            "fwd": one batched forward-mode pass per input in `argnums`, over all its elements
            at once; "rev": one batched reverse-mode pass per output. "auto" (the default)
            takes "fwd" when the inputs in `argnums` have fewer elements in total than the
            outputs, else "rev". The result is the same.
        should_stop : callable, optional
            Called with no arguments between operations (and before every control-flow
            operation) while the call runs; raise an exception from it to abort the call,
            which then raises that exception.

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
        gs.LimitError
            The reverse pass would hold more than `max_tape_bytes` of tape (raised before anything
            runs), a loop cannot be reversed within it, or a `gs.while_loop` ran past its
            `max_iterations`.

        Examples
        --------
        >>> graph = gs.trace(lambda x: 2.0 * gnp.sin(x), np.zeros(2))
        >>> gs.Engine().jacobian(graph, np.zeros(2))
        array([[2., 0.],
               [0., 2.]])
        """
        self._check_graph(graph)
        nums = self._argnums(graph, argnums)
        args = self._arguments(graph, args)
        mode = self._mode(
            mode, [graph.inputs[i].spec for i in nums], [p.spec for p in graph.outputs]
        )
        blocks = self._jacobian_blocks(graph, "jacobian", args, nums, mode, should_stop)
        return self._nest(blocks, len(graph.outputs) == 1, single(argnums))

    def hvp(self, graph: Graph, primals, tangents, should_stop=None):
        """Hessian-vector product of a graph with one real scalar output: the derivative of its
        gradient along `tangents` (forward mode over reverse mode).

        Parameters
        ----------
        graph : gs.Graph
            A graph whose one output is a float64 or float32 scalar.
        primals : sequence of array_like
            One value per graph input, in order, converted as `args` are for `evaluate`.
        tangents : sequence of array_like
            One per graph input, of that input's shape and dtype (converted as `primals`
            are); those of inputs that are not float or complex are ignored.
        should_stop : callable, optional
            Called with no arguments between operations (and before every control-flow
            operation) while the call runs; raise an exception from it to abort the call,
            which then raises that exception.

        Returns
        -------
        tuple of ndarray
            One per graph input (a tuple even for one input), of its shape and dtype:
            ``sum over j of H[i, j] · tangents[j]``, with H the Hessian over every float and
            complex input; zeros for the other inputs.

        Raises
        ------
        ValueError
            An argument's shape differs from its input's.
        TypeError
            The graph does not have exactly one output, a float64 or float32 scalar; or `graph` is
            not a `gs.Graph`, the number of arguments differs from the graph's inputs, or an
            argument's dtype does not convert to its input's.
        gs.LimitError
            The reverse pass would hold more than `max_tape_bytes` of tape (raised before anything
            runs), a loop cannot be reversed within it, or a `gs.while_loop` ran past its
            `max_iterations`.
        gs.GraphError
            The graph has a `gs.while_loop`: second derivatives through one are not supported.

        Examples
        --------
        >>> graph = gs.trace(lambda x: gnp.sum(x**3), np.ones(2))
        >>> gs.Engine().hvp(graph, (np.array([1.0, 2.0]),), (np.array([1.0, 0.0]),))
        (array([6., 0.]),)
        """
        self._check_graph(graph)
        self._scalar_output(graph, "hvp")
        primals = self._arguments(graph, tuple(primals), "primals")
        tangents = self._arguments(graph, tuple(tangents), "tangents")
        wrt = self._differentiable(graph)
        plan = self._one_pass_plan(graph, "hvp")
        out = dict(
            zip(wrt, self._run(plan, primals + [tangents[i] for i in wrt], should_stop=should_stop))
        )
        return tuple(
            out[i] if i in out else np.zeros(p.spec.shape, p.spec.dtype)
            for i, p in enumerate(graph.inputs)
        )

    def hessian(self, graph: Graph, *args, argnums=0, should_stop=None):
        """The Hessian of a graph with one real scalar output, with respect to the inputs
        named by `argnums` (forward mode over reverse mode).

        Parameters
        ----------
        graph : gs.Graph
            A graph whose one output is a float64 or float32 scalar.
        *args : array_like
            One value per graph input, in order: a number or an array of that input's shape,
            converted to its dtype (see the Notes of `gs.Engine`).
        argnums : int or sequence of int, optional
            The inputs to differentiate with respect to: indices into ``graph.inputs``,
            negative ones counting from the end; each a float or complex input. Default 0.
        should_stop : callable, optional
            Called with no arguments between operations (and before every control-flow
            operation) while the call runs; raise an exception from it to abort the call,
            which then raises that exception.

        Returns
        -------
        ndarray or tuple of tuple of ndarray
            For an int `argnums`, one array of shape ``x.shape + x.shape``, x the input; for a
            sequence, a nested tuple ``H[i][j]`` of shape
            ``inputs[argnums[i]].shape + inputs[argnums[j]].shape``.

        Raises
        ------
        ValueError
            An index in `argnums` is out of range; or an argument's shape differs from its input's.
        TypeError
            The graph does not have exactly one output, a float64 or float32 scalar; `argnums` is
            not an int or a sequence of ints, or names an input that is not float or complex; or
            `graph` is not a `gs.Graph`, the number of arguments differs from the graph's inputs, or
            an argument's dtype does not convert to its input's.
        gs.LimitError
            The reverse pass would hold more than `max_tape_bytes` of tape (raised before anything
            runs), a loop cannot be reversed within it, or a `gs.while_loop` ran past its
            `max_iterations`.
        gs.GraphError
            The graph has a `gs.while_loop`: second derivatives through one are not supported.

        Examples
        --------
        >>> graph = gs.trace(lambda x, y: x * x * y, 1.0, 3.0)
        >>> gs.Engine().hessian(graph, 1.0, 3.0, argnums=(0, 1))
        ((array(6.), array(2.)), (array(2.), array(0.)))
        """
        self._check_graph(graph)
        self._scalar_output(graph, "hessian")
        nums = self._argnums(graph, argnums)
        args = self._arguments(graph, args)
        blocks = self._jacobian_blocks(graph, "hessian", args, nums, "fwd", should_stop)
        return self._nest(blocks, single(argnums), single(argnums))

    def check_grad(self, graph: Graph, *args, method="central", should_stop=None):
        """The gradient compared with numerical differentiation, for a graph with one real
        scalar output.

        The gradient with respect to every float64 and float32 input (other inputs are held
        fixed) is compared with finite differences, each element perturbed by a step scaled by
        ``max(1, |x|)``; all the perturbations of an input are evaluated in a few batched
        passes.

        Parameters
        ----------
        graph : gs.Graph
            A graph whose one output is a float64 or float32 scalar.
        *args : array_like
            One value per graph input, in order: a number or an array of that input's shape,
            converted to its dtype (see the Notes of `gs.Engine`).
        method : {"central", "forward", "complex"}, optional
            "central" (the default): ``(f(x + h) - f(x - h)) / 2h`` with h ≈ cbrt(eps);
            "forward": ``(f(x + h) - f(x)) / h`` with h ≈ sqrt(eps); "complex": the complex
            step ``Im f(x + ih) / h`` with h = 1e-20 (the input takes complex values), exact to
            rounding where the graph is analytic. eps is the machine epsilon of the output's
            dtype.
        should_stop : callable, optional
            Called with no arguments between operations (and before every control-flow
            operation) while the call runs; raise an exception from it to abort the call,
            which then raises that exception.

        Returns
        -------
        gs.GradCheck
            `ok` is True when every element agrees within ``tol · (max(1, |f|) + |numeric|)``,
            tol being 100 sqrt(eps) ("central", "forward") or 100 eps ("complex"); with the
            largest absolute and relative errors and both gradients, one array per input
            checked.

        Raises
        ------
        ValueError
            `method` is not "central", "forward" or "complex"; or an argument's shape differs from
            its input's.
        TypeError
            The graph does not have exactly one output, a float64 or float32 scalar; the graph has
            no float64 or float32 input; or `graph` is not a `gs.Graph`, the number of arguments
            differs from the graph's inputs, or an argument's dtype does not convert to its input's.
        gs.LimitError
            The reverse pass would hold more than `max_tape_bytes` of tape (raised before anything
            runs), a loop cannot be reversed within it, or a `gs.while_loop` ran past its
            `max_iterations`.

        Examples
        --------
        >>> graph = gs.trace(lambda x: gnp.sum(gnp.exp(x)), np.zeros(3))
        >>> report = gs.Engine().check_grad(graph, np.zeros(3), method="complex")
        >>> report.ok, report.max_abs_error
        (True, 0.0)
        """
        from .numerical import check_grad

        return check_grad(self, graph, args, method, should_stop)

    # ---- Jacobians: a batch of tangents (forward) or cotangents (reverse) in one pass --------

    @staticmethod
    def _mode(mode, in_specs, out_specs):
        if mode not in ("auto", "fwd", "rev"):
            raise ValueError(f"mode must be 'fwd', 'rev' or 'auto', got {mode!r}")
        if mode == "auto":
            n_in = sum(s.size for s in in_specs)
            n_out = sum(s.size for s in out_specs)
            return "fwd" if n_in < n_out else "rev"
        return mode

    def _jacobian_plans(self, graph, what, nums, mode):
        """The passes of a Jacobian ("jacobian") or Hessian ("hessian", the Jacobian of the
        gradient): [(plan, basis spec, index)], one per input in `nums` ("fwd", index into
        `nums`) or per output ("rev", index of the output), and the output specs of the
        program differentiated."""
        n_in = len(graph.inputs)
        if what == "hessian":
            outs = [graph.inputs[i].spec for i in nums]
            key = ("hessian", nums)

            def make_program(loop_tapes):
                return select_outputs(
                    vjp(Program(graph), nums, seed_ones=True, loop_tapes=loop_tapes),
                    range(1, 1 + len(nums)),
                )

        else:
            outs = [p.spec for p in graph.outputs]
            key = ("jacobian",)

            def make_program(loop_tapes):
                return Program(graph)

        passes = []
        if mode == "fwd":
            for j, i in enumerate(nums):
                spec = graph.inputs[i].spec
                size = spec.size

                def build(loop_tapes, i=i, size=size):
                    tangent_program = select_outputs(
                        jvp(make_program(loop_tapes), (i,), loop_tapes=loop_tapes),
                        range(len(outs), 2 * len(outs)),
                    )
                    return batch(tangent_program, [False] * n_in + [True], size)

                passes.append((self._plan(graph, key + ("fwd", i), build), spec, j))
        else:
            for k, out_spec in enumerate(outs):
                size = out_spec.size

                def build(loop_tapes, k=k, size=size):
                    row_program = select_outputs(
                        vjp(
                            select_outputs(make_program(loop_tapes), (k,)),
                            nums,
                            loop_tapes=loop_tapes,
                        ),
                        range(1, 1 + len(nums)),
                    )
                    return batch(row_program, [False] * n_in + [True], size)

                passes.append((self._plan(graph, key + ("rev", k, nums), build), out_spec, k))
        return passes, outs

    def _jacobian_blocks(self, graph, what, args, nums, mode, should_stop):
        """blocks[k][j]: d output k of the program / d input nums[j], shape out.shape + in.shape
        (the program: the graph for "jacobian", its gradient for "hessian")."""
        passes, outs = self._jacobian_plans(graph, what, nums, mode)
        blocks = [[None] * len(nums) for _ in outs]
        stats = []
        for plan, basis_spec, index in passes:
            results = self._run(plan, args + [_basis(basis_spec)], should_stop=should_stop)
            if mode == "fwd":
                j, spec = index, basis_spec
                for k, column in enumerate(results):
                    blocks[k][j] = np.moveaxis(column, 0, -1).reshape(outs[k].shape + spec.shape)
            else:
                k = index
                for j, rows in enumerate(results):
                    spec = graph.inputs[nums[j]].spec
                    blocks[k][j] = rows.reshape(basis_spec.shape + spec.shape)
            stats.append(self.last_stats)
        self._local.stats = Stats(*[max(s[f] for s in stats) for f in range(len(Stats._fields))])
        return blocks

    @staticmethod
    def _nest(blocks, single_output, single_arg):
        rows = [row[0] if single_arg else tuple(row) for row in blocks]
        return rows[0] if single_output else tuple(rows)


@functools.lru_cache(maxsize=64)
def _basis(spec: Spec) -> np.ndarray:
    """The identity as a batch of one-hot arrays of `spec` (read-only, made once)."""
    return readonly(np.eye(spec.size, dtype=spec.dtype).reshape((spec.size,) + spec.shape))
