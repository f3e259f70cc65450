"""`gs.Engine`: the in-process differentiation engine.

Every method turns (graph, method, argnums) into a Program by graph transformations, compiles
it once into a Plan (cached by the graph's digest), and runs the plan on the arguments."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from . import dtypes, plan_cache
from .arguments import (
    argnums_key,
    arguments,
    check_argnums,
    check_graph,
    coerce,
    selected_inputs,
    single,
    tangent_arguments,
)
from .basis import basis as _basis
from .docstrings import ENGINE, backend_docstring
from .errors import LimitError
from .graph import Graph
from .limits import DEFAULT_LIMITS, Limits
from .ops.loops import is_recomputing, recomputing, reverse_residual_bytes
from .plan import Plan, Stats
from .tape import meter
from .transforms import Program, batch, is_linearizing, jvp, select_outputs, vjp


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
        self._jacobians: OrderedDict = OrderedDict()  # (digest, what, nums, mode) -> passes

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

    def _build(self, graph: Graph, key, build, wrt) -> Plan:
        """Scans keep their bodies' residuals, unless those alone would pass a tape budget
        (known from their shapes, `reverse_residual_bytes`, before anything is built): then
        scans are differentiated through loop tapes (which can checkpoint), except in
        second-order programs (hvp, hessian), which loop tapes do not support yet and which
        keep each residual's tangent too: there a scan stacks only its carries and
        recomputes its body, and the budget is checked as for any residual. Where the
        residuals fit but the plan's whole tape does not (other residuals take the room), it
        is built a second time the other way."""
        budget = self.max_tape_bytes
        if budget is None or wrt is None:
            return Plan(build(False))
        second_order = key[0] in ("hvp", "hessian")
        residuals = reverse_residual_bytes(graph, wrt) * (2 if second_order else 1)
        if residuals <= budget:
            plan = Plan(build(False))
            if not residuals or plan.stats.tape_bytes <= budget:
                return plan
        if second_order:
            with recomputing():
                return Plan(build(False))
        return Plan(build(True))

    def _plan(self, graph: Graph, key, build, wrt=None) -> Plan:
        """The plan of `build(loop_tapes)`, the Program for (graph, key), built once: kept by
        this Engine and in the process's shared cache (engine/plan_cache.py), where other
        Engines find it. `wrt`: the inputs its reverse pass differentiates (None: no reverse
        pass). The tape budget, `recomputing()` and `linearizing()` are part of the key: they
        decide how loops are differentiated."""
        full_key = (graph.digest, *key, self.max_tape_bytes, is_recomputing(), is_linearizing())
        with self._lock:
            plan = self._plans.get(full_key)
            if plan is not None:
                self._plans.move_to_end(full_key)
                return plan
        shared = plan_cache.shared
        plan = shared.get(full_key)
        if plan is None:
            plan = self._build(graph, key, build, wrt)
            shared.put(full_key, plan)
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
            loops, tapes, recomputed = meter.peak, meter.tapes, meter.recomputed_ops
        finally:
            self._local.running = None
            meter.reset(None)  # the budget is this call's: loops run outside a call have none
        self._local.stats = Stats(
            (stats.tape_bytes if tape else 0) + loops,
            (stats.tape_entries if tape else 0) + tapes,
            stats.peak_bytes + loops,
            recomputed,
        )
        return [np.asarray(o) for o in out]

    _check_graph = staticmethod(check_graph)
    _tangents = staticmethod(tangent_arguments)

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

    def _selected(self, graph: Graph, argnums, method) -> tuple:
        """The inputs vjp, jvp or hvp differentiate (see arguments.selected_inputs)."""
        if argnums is None:
            return self._differentiable(graph)
        nums = self._argnums(graph, argnums)
        return selected_inputs(graph, argnums, method, nums)

    def _one_pass_plan(self, graph: Graph, method, nums=None) -> Plan:
        """The plan of a method that runs one pass: "evaluate", "grad" (value_and_grad, with
        `nums` checked), "vjp", "jvp", "hvp" (over the inputs `nums`; None: every
        differentiable input). Cached per (graph, method, nums)."""
        if method == "evaluate":
            return self._plan(graph, ("evaluate",), lambda loop_tapes: Program(graph))
        if method == "grad":
            return self._plan(
                graph,
                ("grad", nums),
                lambda loop_tapes: vjp(Program(graph), nums, seed_ones=True, loop_tapes=loop_tapes),
                nums,
            )
        wrt = self._differentiable(graph) if nums is None else tuple(nums)
        if method == "vjp":
            return self._plan(
                graph,
                ("vjp", wrt),
                lambda loop_tapes: vjp(Program(graph), wrt, loop_tapes=loop_tapes),
                wrt,
            )
        if method == "jvp":
            return self._plan(
                graph,
                ("jvp", wrt),
                lambda loop_tapes: jvp(Program(graph), wrt, loop_tapes=loop_tapes),
            )
        n_wrt = len(wrt)

        def build(loop_tapes):  # hvp: forward over reverse
            gradient = select_outputs(
                vjp(Program(graph), wrt, seed_ones=True, loop_tapes=loop_tapes),
                range(1, 1 + n_wrt),
            )
            forward = jvp(gradient, wrt, loop_tapes=loop_tapes)
            return select_outputs(forward, range(n_wrt, 2 * n_wrt))

        return self._plan(graph, ("hvp", wrt), build, wrt)

    def plan_stats(
        self, graph: Graph, method: str, *, argnums=None, mode="auto", check_method="central"
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
            As the method takes them (ignored by the methods that do not); argnums None is
            the method's default (0; every float and complex input for vjp, jvp and hvp).
        check_method : str, optional
            check_grad's `method` ("central", "forward", "complex" or "richardson").

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
        if method == "evaluate":
            plans = [self._one_pass_plan(graph, method)]
            taped = False
        elif method in ("vjp", "jvp", "hvp"):
            plans = [self._one_pass_plan(graph, method, self._selected(graph, argnums, method))]
            taped = method != "jvp"
        elif method in ("value_and_grad", "grad"):
            nums = self._argnums(graph, 0 if argnums is None else argnums)
            plans = [self._one_pass_plan(graph, "grad", nums)]
        elif method in ("jacobian", "hessian"):
            nums = self._argnums(graph, 0 if argnums is None else argnums)
            if method == "jacobian":
                mode = self._mode(
                    mode, [graph.inputs[i].spec for i in nums], [p.spec for p in graph.outputs]
                )
            passes, _ = self._jacobian_plans(
                graph, method, nums, mode if method == "jacobian" else "fwd"
            )
            plans = [plan for plan, _, _ in passes if plan is not None]
        elif method == "check_grad":
            from .numerical import plan_stats as numerical_plan_stats

            return numerical_plan_stats(self, graph, check_method)
        else:
            raise ValueError(f"no Engine method {method!r}")
        figures = [plan.stats for plan in plans] or [Stats()]
        return Stats(
            max(s.tape_bytes for s in figures) if taped else 0,
            max(s.tape_entries for s in figures) if taped else 0,
            max(s.peak_bytes for s in figures),
            0,
        )

    # ---- the API -----------------------------------------------------------------------

    @backend_docstring(ENGINE)
    def evaluate(self, graph: Graph, *args, should_stop=None):
        args = self._arguments(graph, args)
        plan = self._one_pass_plan(graph, "evaluate")
        out = self._run(plan, args, tape=False, should_stop=should_stop)
        return _single_or_tuple(out, len(out) == 1)

    @backend_docstring(ENGINE)
    def value_and_grad(self, graph: Graph, *args, argnums=0, should_stop=None):
        self._check_graph(graph)
        self._scalar_output(graph, "value_and_grad")
        nums = self._argnums(graph, argnums)
        args = self._arguments(graph, args)
        plan = self._one_pass_plan(graph, "grad", nums)
        value, *grads = self._run(plan, args, should_stop=should_stop)
        return value, _single_or_tuple(grads, single(argnums))

    @backend_docstring(ENGINE)
    def grad(self, graph: Graph, *args, argnums=0, should_stop=None):
        return self.value_and_grad(graph, *args, argnums=argnums, should_stop=should_stop)[1]

    @backend_docstring(ENGINE)
    def vjp(self, graph: Graph, primals, cotangents, argnums=None, should_stop=None):
        self._check_graph(graph)
        wrt = self._selected(graph, argnums, "vjp")
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
        plan = self._one_pass_plan(graph, "vjp", wrt)
        out = self._run(plan, primals + cts, should_stop=should_stop)
        n = len(graph.outputs)
        outputs = _single_or_tuple(out[:n], n == 1)
        if argnums is not None:  # the selected inputs' cotangents, in the order of argnums
            return outputs, tuple(out[n:])
        grads = dict(zip(wrt, out[n:]))
        input_cts = tuple(
            grads[i] if i in grads else np.zeros(p.spec.shape, p.spec.dtype)
            for i, p in enumerate(graph.inputs)
        )
        return outputs, input_cts

    @backend_docstring(ENGINE)
    def jvp(self, graph: Graph, primals, tangents, argnums=None, should_stop=None):
        self._check_graph(graph)
        wrt = self._selected(graph, argnums, "jvp")
        primals = self._arguments(graph, tuple(primals), "primals")
        tangents = self._tangents(graph, tangents, argnums, wrt)
        plan = self._one_pass_plan(graph, "jvp", wrt)
        out = self._run(plan, primals + tangents, tape=False, should_stop=should_stop)
        n = len(graph.outputs)
        return _single_or_tuple(out[:n], n == 1), _single_or_tuple(out[n:], n == 1)

    @backend_docstring(ENGINE)
    def jacobian(self, graph: Graph, *args, argnums=0, mode="auto", should_stop=None):
        self._check_graph(graph)
        nums = self._argnums(graph, argnums)
        args = self._arguments(graph, args)
        if mode not in ("auto", "fwd", "rev"):
            raise ValueError(f"mode must be 'fwd', 'rev' or 'auto', got {mode!r}")
        blocks = self._jacobian_blocks(graph, "jacobian", args, nums, mode, should_stop)
        return self._nest(blocks, len(graph.outputs) == 1, single(argnums))

    @backend_docstring(ENGINE)
    def hvp(self, graph: Graph, primals, tangents, argnums=None, should_stop=None):
        self._check_graph(graph)
        self._scalar_output(graph, "hvp")
        wrt = self._selected(graph, argnums, "hvp")
        primals = self._arguments(graph, tuple(primals), "primals")
        tangents = self._tangents(graph, tangents, argnums, wrt)
        plan = self._one_pass_plan(graph, "hvp", wrt)
        products = self._run(plan, primals + tangents, should_stop=should_stop)
        if argnums is not None:  # one per selected input, in the order of argnums
            return tuple(products)
        out = dict(zip(wrt, products))
        return tuple(
            out[i] if i in out else np.zeros(p.spec.shape, p.spec.dtype)
            for i, p in enumerate(graph.inputs)
        )

    @backend_docstring(ENGINE)
    def hessian(self, graph: Graph, *args, argnums=0, should_stop=None):
        self._check_graph(graph)
        self._scalar_output(graph, "hessian")
        nums = self._argnums(graph, argnums)
        args = self._arguments(graph, args)
        blocks = self._jacobian_blocks(graph, "hessian", args, nums, "fwd", should_stop)
        return self._nest(blocks, single(argnums), single(argnums))

    @backend_docstring(ENGINE)
    def check_grad(self, graph: Graph, *args, method="central", should_stop=None):
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
            reverse_wrt = nums  # the gradient's reverse pass

            def make_program(loop_tapes):
                return select_outputs(
                    vjp(Program(graph), nums, seed_ones=True, loop_tapes=loop_tapes),
                    range(1, 1 + len(nums)),
                )

        else:
            outs = [p.spec for p in graph.outputs]
            key = ("jacobian",)
            reverse_wrt = None

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
                    return batch(tangent_program, [False] * n_in + [True], size, basis=n_in)

                passes.append((self._plan(graph, key + ("fwd", i), build, reverse_wrt), spec, j))
        else:
            for k, out_spec in enumerate(outs):
                if not dtypes.is_differentiable(out_spec.dtype):
                    passes.append((None, out_spec, k))  # an integer output: zero rows, no pass
                    continue
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
                    return batch(row_program, [False] * n_in + [True], size, basis=n_in)

                plan = self._plan(graph, key + ("rev", k, nums), build, nums)
                passes.append((plan, out_spec, k))
        return passes, outs

    def _jacobian_passes(self, graph, what, nums, mode):
        """`_jacobian_plans` (for a Jacobian, with "auto" resolved to the mode it takes), with
        whether each plan reads its basis, and that mode; cached: a call looks its passes up
        once instead of each of their plans (which stay alive while their entry does)."""
        key = (graph.digest, what, nums, mode)
        with self._lock:
            cached = self._jacobians.get(key)
            if cached is not None:
                self._jacobians.move_to_end(key)
                return cached
        if what == "jacobian":
            mode = self._mode(
                mode, [graph.inputs[i].spec for i in nums], [p.spec for p in graph.outputs]
            )
        passes, outs = self._jacobian_plans(graph, what, nums, mode)
        passes = [
            (plan, spec, index, plan is not None and _reads_last_input(plan))
            for plan, spec, index in passes
        ]
        cached = passes, outs, mode
        with self._lock:
            self._jacobians[key] = cached
            while len(self._jacobians) > self._plan_cache_size:
                self._jacobians.popitem(last=False)
        return cached

    def _jacobian_blocks(self, graph, what, args, nums, mode, should_stop):
        """blocks[k][j]: d output k of the program / d input nums[j], shape out.shape + in.shape
        (the program: the graph for "jacobian", its gradient for "hessian")."""
        passes, outs, mode = self._jacobian_passes(graph, what, nums, mode)
        blocks = [[None] * len(nums) for _ in outs]
        stats = []
        for plan, basis_spec, index, reads_basis in passes:
            if plan is None:  # rev, an integer output: its rows are zeros
                for j, i in enumerate(nums):
                    spec = graph.inputs[i].spec
                    blocks[index][j] = np.zeros(basis_spec.shape + spec.shape, spec.dtype)
                continue
            # a pass whose products with the basis were all built without it does not read it
            basis = _basis(basis_spec) if reads_basis else None
            results = self._run(plan, args + [basis], should_stop=should_stop)
            if mode == "fwd":
                j, spec = index, basis_spec
                for k, column in enumerate(results):
                    column = column.transpose((*range(1, column.ndim), 0))  # batch axis last
                    blocks[k][j] = column.reshape(outs[k].shape + spec.shape)
            else:
                k = index
                for j, rows in enumerate(results):
                    spec = graph.inputs[nums[j]].spec
                    blocks[k][j] = rows.reshape(basis_spec.shape + spec.shape)
            stats.append(self.last_stats)
        if len(stats) != 1:  # several passes, or none (integer outputs only)
            self._local.stats = Stats(*map(max, zip(*stats))) if stats else Stats()
        return blocks

    @staticmethod
    def _nest(blocks, single_output, single_arg):
        rows = [row[0] if single_arg else tuple(row) for row in blocks]
        return rows[0] if single_output else tuple(rows)


def _reads_last_input(plan: Plan) -> bool:
    name = plan.graph.inputs[-1].name
    return name in plan.graph.output_names or any(name in node.inputs for node in plan.nodes)
