"""Compiling a Program once into an execution plan: a flat list of steps over numbered slots,
each value dropped right after its last use, and the memory figures of that schedule.

Memory accounting is static: shapes are known, so the bytes alive after every step follow
from the schedule. View ops (reshape, transpose, broadcast_to, flip) share their input's
storage; a storage is alive while any value on it is.
- tape: storages that forward-pass nodes created and backward-pass nodes read (the residuals);
  `tape_bytes` is their largest total alive at once, `tape_entries` their number.
- peak: every array alive, inputs included (graph constants are the graph's, not the call's).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import itertools
import linecache
import threading
import weakref
from typing import NamedTuple

import numpy as np

from .graph import readonly
from .primitive import PRIMITIVES
from .transforms import Program, prune

_running = threading.local()  # the should_stop of the call in progress, for nested plans


class Stats(NamedTuple):
    """Memory figures of one call (`gs.Engine.last_stats`), all zero before the first.

    Attributes
    ----------
    tape_bytes : int
        The most bytes the tape held at once: the intermediate values the reverse pass
        reads, loop tapes included; 0 for calls without a reverse pass.
    tape_entries : int
        The number of arrays on the tape (a loop tape counts as one).
    peak_bytes : int
        The most bytes of arrays alive at once, arguments included (the graph's constants
        are the graph's, not the call's).
    recomputed_ops : int
        Operations run again to fit `max_tape_bytes` (loops checkpointed); 0 without a
        budget.
    """

    tape_bytes: int = 0
    tape_entries: int = 0
    peak_bytes: int = 0
    recomputed_ops: int = 0


def rematerialize(nodes, boundary, outputs):
    """Move chains of cheap elementwise forward nodes whose results only the backward pass
    reads to just before their first backward use, when what they start from stays alive into
    the backward pass anyway (a graph input or constant, a view of one, or a value the backward
    pass reads). Nothing is computed twice; what changes is that their results are not held on
    the tape: tanh's `1 - y*y` (two nodes) is recomputed from y, which the matmul's transpose
    keeps."""
    forward, backward = list(nodes[:boundary]), list(nodes[boundary:])
    producer = {o: n for n in forward for o in n.outputs}
    users: dict = {}
    for node in nodes:
        for name in node.inputs:
            users.setdefault(name, []).append(node)
    position = {id(n): (i, 0, 0) for i, n in enumerate(backward)}
    first_use: dict = {}  # value -> position of its first reader in the backward pass
    for node in backward:
        for name in node.inputs:
            first_use.setdefault(name, position[id(node)])
    outputs = set(outputs)

    def in_backward(node):
        return id(node) in position

    def free(name):
        """Holding it costs the tape nothing: an input, a constant or a view of one, or a value
        the backward pass reads anyway."""
        while name in producer and PRIMITIVES[producer[name].op].view:
            if name in first_use:
                return True
            name = producer[name].inputs[0]
        return name not in producer or name in first_use

    def cone(node, chain):
        """`node` and the forward producers it alone needs, in order; None if it cannot move."""
        if not PRIMITIVES[node.op].elementwise or any(o in outputs for o in node.outputs):
            return None
        if any(
            not in_backward(u) and id(u) not in chain
            for o in node.outputs
            for u in users.get(o, [])
        ):
            return None
        part = []
        for name in node.inputs:
            if free(name):
                continue
            sub = cone(producer[name], chain | {id(node)})
            if sub is None:
                return None
            part += [n for n in sub if n not in part]
        return part + [node]

    counter = 0
    for node in reversed(forward):
        if in_backward(node) or not all(o in first_use for o in node.outputs):
            continue
        chain = cone(node, set())
        if chain is None:
            continue
        counter += 1
        at = min(first_use[o] for n in chain for o in n.outputs if o in first_use)[0]
        for j, moved in enumerate(chain):
            position[id(moved)] = (at, -counter, j)
            for name in moved.inputs:
                first_use[name] = min(first_use.get(name, position[id(moved)]), position[id(moved)])
    cone = None  # a recursive closure is a cycle: broken, what it holds is freed on return
    if counter == 0:
        return list(nodes), boundary
    kept = [n for n in forward if not in_backward(n)]
    moved = [n for n in forward if in_backward(n)]
    return kept + sorted(backward + moved, key=lambda n: position[id(n)]), len(kept)


def _into(ufunc, position):
    def step(*args):
        return ufunc(*args, out=args[position])

    return step


def _unaliased(fn, positions):
    """`fn`, for an op the planner takes to return new memory but that NumPy does not promise
    does (an einsum of one operand returns a view of it): a result that is one of the arguments
    at `positions`, or a view of one, is copied. Those arguments are buffers the plan writes
    into or pools later, so the result must not share their memory."""

    def step(*args):
        out = fn(*args)
        base = getattr(out, "base", None)
        for i in positions:
            arg = args[i]
            if out is arg or (
                base is not None and (base is arg or base is getattr(arg, "base", None))
            ):
                return out.copy()
        return out

    return step


# Buffer pool: a large array that dies inside a call goes back to its plan's pool (one per
# thread), and a later elementwise op of that shape and dtype, in this call or the next,
# writes into it instead of asking malloc, which would fault fresh pages in on every call.
# Which arrays go back is decided statically, when the plan is built (Plan._walk): the value
# that owns the buffer dies, no other value shares its memory (a view, or a value written
# into it in place), it is not an output, and no op with subgraphs read it.
POOL_MIN_ELEMENTS = 4096
STOP_CHECK_ELEMENTS = 1 << 16
_POOL_DTYPES = ("float64", "float32", "complex128", "int64", "int32", "bool")


def _from_pool(ufunc, key, pools):
    def step(*args):
        free = pools.__dict__.get(key)
        return ufunc(*args, out=free.pop()) if free else ufunc(*args)

    return step


def _recycler(key, pools, most: int):
    def recycle(array):
        # Nothing else refers to it (the planner made sure); an array that does not own its
        # memory (an einsum may return a view of an array of its own) is left alone. A pool
        # keeps at most as many buffers as the plan's steps can take from it in one call:
        # more would pile up call after call.
        if type(array) is np.ndarray and array.base is None:
            free = pools.__dict__.setdefault(key, [])
            if len(free) < most:
                free.append(array)

    return recycle


def _shown(name, limit: int = 40) -> str:
    """A value name (chosen by the request) as it may appear in a comment of generated source:
    `ascii()` escapes line breaks, control and non-ASCII characters, so the comment cannot
    end early or hide text; long names are cut."""
    return ascii(name) if len(name) <= limit else ascii(name[:limit]) + "..."


def _listed(names, most: int = 6) -> str:
    shown = ", ".join(_shown(n) for n in names[:most])
    return shown + (f", ... ({len(names)} in all)" if len(names) > most else "")


_plan_numbers = itertools.count(1)  # unique pseudo-filenames for the generated source


def scalars(values) -> list:
    """`values` with 0-d arrays as NumPy scalars: arithmetic on scalars is several times faster."""
    return [a[()] if type(a) is np.ndarray and a.ndim == 0 else a for a in values]


def _filename(source: str, checked: bool) -> str:
    """The pseudo-filename of generated source. Named by a hash of the source: the digest of a
    derived graph would cost a full serialization of it."""
    return (
        f"<gradserve plan {hashlib.sha256(source.encode()).hexdigest()[:12]}"
        f" #{next(_plan_numbers)}{' checked' if checked else ''}>"
    )


# A plan's first runs execute its steps from the list (Plan._interpret); the run after these
# compiles the generated function, which then serves every later call. On W1's gradient (3998
# steps, CPU time) an interpreted run took 1.75 ms, a compiled one 0.29 ms, and generating and
# compiling the function 68 ms (`compile()` of a line per step): it pays for itself after
# about 50 runs. Compiling at the 25th run keeps a plan run N times, for any N, within about
# 2.5 times the cost of the better choice for that N (the worst case is N = 25), and a plan
# that runs once or a few times never pays for compiling.
INTERPRETED_RUNS = 24


class Plan:
    def __init__(self, program: Program):
        # nodes nothing reads do not run (a simplification may leave some behind: c * (2 * x)
        # folded into 2c * x does not need 2 * x any more)
        program = prune(program)
        graph = program.graph
        nodes, boundary = list(graph.nodes), program.boundary
        if boundary is not None:
            nodes, boundary = rematerialize(nodes, boundary, graph.output_names)
        self.graph = graph
        # Small arrays made from nothing (`constant` ops) are computed once, here, like constants.
        # Read-only, like constants: one array serves every call (and may be an output).
        avals = graph.avals
        self.precomputed = {
            n.outputs[0]: readonly(PRIMITIVES[n.op].impl(**n.attrs))
            for n in nodes
            if not n.inputs and PRIMITIVES[n.op].constant and avals[n.outputs[0]].size <= 4096
        }
        if self.precomputed:
            kept = [
                k for k, n in enumerate(nodes) if n.inputs or n.outputs[0] not in self.precomputed
            ]
            if boundary is not None:
                boundary = sum(1 for k in kept if k < boundary)
            nodes = [nodes[k] for k in kept]
        self.nodes = nodes
        prims = [PRIMITIVES[n.op] for n in nodes]
        slot = {}
        for name in (*graph.input_names, *graph.constants, *self.precomputed):
            slot.setdefault(name, len(slot))
        for node in nodes:
            for name in node.outputs:
                slot[name] = len(slot)
        self.template = [None] * len(slot)
        for name, value in (*graph.constants.items(), *self.precomputed.items()):
            # a 0-d array as a NumPy scalar: arithmetic on scalars is several times faster
            self.template[slot[name]] = value[()] if value.ndim == 0 else value
        self.input_slots = [slot[n] for n in graph.input_names]
        self.output_slots = [slot[n] for n in graph.output_names]

        last_use = {}
        for k, node in enumerate(nodes):
            for name in node.inputs:
                last_use[name] = k
        keep = {*graph.output_names, *graph.input_names, *graph.constants, *self.precomputed}
        frees = [[] for _ in nodes]
        for name, k in last_use.items():
            if name not in keep:
                frees[k].append(name)
        for k, node in enumerate(nodes):  # values nothing reads: dropped at once
            for o in node.outputs:
                if o not in last_use and o not in keep:
                    frees[k].append(o)

        donations, guarded, recycled = self._walk(nodes, prims, boundary, frees, keep)
        self.donations = donations  # {step: the input it writes its result into}
        self._slot_names = list(slot)  # for the comments of the generated source
        pools = threading.local()
        # One step per node: (function, input slots, output slot or slots, slots dropped
        # after it, (recycle function, slot) of the buffers it gives back to the pool).
        steps = []
        slot_of = slot.__getitem__
        takes_from_pool = [
            k not in donations
            and prims[k].ufunc is not None
            and avals[node.outputs[0]].size >= POOL_MIN_ELEMENTS
            for k, node in enumerate(nodes)
        ]
        takers = collections.Counter(
            (avals[node.outputs[0]].shape, avals[node.outputs[0]].dtype)
            for node, takes in zip(nodes, takes_from_pool)
            if takes
        )
        for k, node in enumerate(nodes):
            prim = prims[k]
            kernel = None
            if k in donations:
                fn = _into(prim.ufunc, donations[k]) if prim.ufunc is not None else prim.inplace
            elif takes_from_pool[k]:
                spec = avals[node.outputs[0]]
                fn = _from_pool(prim.ufunc, (spec.shape, spec.dtype), pools)
            else:
                fn = prim.impl
                if prim.kernel is not None:
                    kernel = prim.kernel(*[avals[n] for n in node.inputs], **node.attrs)
            if kernel is not None:
                fn = kernel
            elif node.attrs:
                fn = functools.partial(fn, **node.attrs)
            if k in guarded:
                fn = _unaliased(fn, guarded[k])
            outs = tuple(map(slot_of, node.outputs))
            steps.append(
                (
                    fn,
                    tuple(map(slot_of, node.inputs)),
                    outs if prim.multiple_results else outs[0],
                    tuple(map(slot_of, frees[k])),
                    tuple(
                        (_recycler(key, pools, takers[key]), slot[n])
                        for n in recycled[k]
                        if takers[key := (avals[n].shape, avals[n].dtype)]
                    ),
                )
            )
        self._sources: dict = {}  # checked -> lines of the compiled source
        self._runs = 0  # runs so far without a compiled function
        self.steps = steps

    @property
    def steps(self) -> list:
        """The schedule, one step per node of `nodes`. The generated functions are compiled
        from it: setting it (to wrap step functions, say) drops them, the next call recompiles."""
        return self._steps

    @steps.setter
    def steps(self, steps):
        self._steps = steps
        for compiled in ("_straight", "_checked", "_checks"):
            self.__dict__.pop(compiled, None)
        self._sources.clear()

    def _walk(self, nodes, prims, boundary, frees, keep):
        """One pass over the schedule with the storage each value lives on. Decides
        - which steps write into an input that dies there: {step: input position};
        - which steps' results must not share memory with some inputs, checked at run time
          (`_unaliased`): {step: input positions};
        - which buffers go back to the pool after each step: [[value, ...] per step];
        and computes `self.stats`.

        Ownership is tracked statically, for the buffers that ops returning a new array of
        their own (`Primitive.gives_fresh`) return, which alone are written into or pooled: the
        values on a buffer are its owner, the values written into it in place, and views of
        any of them. A buffer is written into (donated) only by the last value alive on it,
        and goes back to the pool only when its owner dies and no value is left on it: not
        while a view of it is still to be read, nor when it, or a view of it, is an output
        (outputs never die). An op with subgraphs may keep or return any operand: a buffer
        it reads is `pinned`, neither donated nor pooled from then on."""
        graph = self.graph
        avals = graph.avals
        external = set(graph.input_names) | set(graph.constants) | set(self.precomputed)
        storage, size = {}, {}  # value -> the value that owns its memory (None: not ours)
        refs: dict = {}
        donations = {}
        residual_names = set()
        if boundary is not None:
            forward = {o for node in nodes[:boundary] for o in node.outputs}
            residual_names = {n for node in nodes[boundary:] for n in node.inputs if n in forward}
        residual = set()  # tape storages alive
        entries = 0
        live = sum(avals[n].nbytes for n in graph.input_names)
        peak, tape, tape_peak = live, 0, 0
        fresh = set()
        pinned = set()  # buffers an op with subgraphs read
        guarded = {}
        recycled = [[] for _ in nodes]
        producers = {o: k for k, n in enumerate(nodes) for o in n.outputs}

        def covers_its_buffer(name):
            """Not a view of part of its buffer, nor a broadcast of it (read-only, even at the
            same size): writing into it writes each element of the buffer once."""
            prim = prims[producers[name]]
            if not prim.view:
                return True
            value, owner = avals[name], avals[storage[name]]
            return (
                not prim.pure_broadcast and value.size == owner.size and value.dtype == owner.dtype
            )

        for k, node in enumerate(nodes):
            prim = prims[k]
            spec = avals[node.outputs[0]]
            gives_fresh = prim.gives_fresh(node)
            if prim.multiple_results or prim.subgraphs:
                # An op with subgraphs (control flow): an output may be an operand itself or a
                # view of one (a branch or body that returns its argument), and a loop tape
                # keeps operands for the reverse pass. The planner does not follow what they
                # keep: their operands are never written into nor given back to the pool.
                pinned.update(storage[name] for name in node.inputs if name in storage)
            elif not prim.view and not gives_fresh:
                # Taken to return new memory: checked where an input's buffer may be reused.
                positions = tuple(
                    i
                    for i, name in enumerate(node.inputs)
                    if storage.get(name) in fresh and avals[storage[name]].shape
                )
                if positions:
                    guarded[k] = positions
            if spec.shape and (prim.ufunc is not None or prim.inplace is not None):
                positions = range(len(node.inputs)) if prim.ufunc is not None else (0,)
                dying = frees[k]
                # the last value alive on a buffer of ours: its owner, a value an op wrote
                # into it (a chain of elementwise ops runs in one buffer), or a view of all of it
                candidates = [
                    i
                    for i in positions
                    if storage.get(node.inputs[i]) in fresh
                    and covers_its_buffer(node.inputs[i])
                    and storage[node.inputs[i]] not in pinned
                    and node.inputs[i] in dying
                    and refs.get(storage[node.inputs[i]]) == 1
                    and avals[node.inputs[i]] == spec
                ]
                # Prefer a buffer that could not go back to the pool anyway (an einsum's):
                # a pooled one given up here might leave the call as an output.
                candidates.sort(key=lambda i: prims[producers[node.inputs[i]]].ufunc is not None)
                if candidates:
                    donations[k] = candidates[0]
            base = node.inputs[0] if prim.view else None
            for out in node.outputs:
                if k in donations:
                    owner = storage[out] = storage[node.inputs[donations[k]]]
                    if owner in residual:  # the tape entry ends here; its buffer lives on
                        residual.discard(owner)
                        tape -= size[owner]
                elif base is None:
                    owner = storage[out] = out
                    size[out] = avals[out].nbytes
                    if gives_fresh:
                        fresh.add(out)
                else:
                    owner = storage[out] = None if base in external else storage[base]
                if owner is not None:
                    count = refs.get(owner, 0)
                    if count == 0:
                        live += size[owner]
                    refs[owner] = count + 1
                    if out in residual_names and owner not in residual:
                        residual.add(owner)
                        entries += 1
                        tape += size[owner]
            if live > peak:
                peak = live
            if tape > tape_peak:
                tape_peak = tape
            if not frees[k]:
                continue
            for name in frees[k]:
                owner = storage.get(name)
                if owner is None:
                    continue
                refs[owner] -= 1
                if refs[owner] == 0:
                    live -= size[owner]
                    if owner in residual:
                        residual.discard(owner)
                        tape -= size[owner]
            # after every value dropped here is gone: a buffer nothing is on any more, through
            # the last value on it (its owner, or a value an op wrote into it in place), once
            given_back = set()
            for name in frees[k]:
                owner = storage.get(name)
                if (
                    owner in fresh
                    and owner not in given_back
                    and refs[owner] == 0
                    and owner not in pinned
                    and avals[owner].size >= POOL_MIN_ELEMENTS
                    and avals[owner].dtype in _POOL_DTYPES
                    and not prims[producers[name]].view
                ):
                    given_back.add(owner)
                    recycled[k].append(name)
        self.stats = Stats(tape_peak, entries, peak, 0)
        return donations, guarded, recycled

    def run(self, args, should_stop=None):
        """The outputs for `args`. `should_stop()` is called before every step (raise from it
        to abort); loop bodies run inside this call check the same function."""
        outer = getattr(_running, "should_stop", None)
        _running.should_stop = should_stop = should_stop or outer
        try:
            return self._run(args, should_stop)
        finally:
            _running.should_stop = outer

    def runner(self):
        """The compiled function itself, for a caller that runs this plan many times inside
        the call in progress (a loop, its body once per iteration): it takes the arguments
        as parameters, 0-d arrays as NumPy scalars (`scalars`), and the caller holds
        `np.errstate(all="ignore")`, so nothing of `run` is repeated per iteration. Stops
        when that call's should_stop says so."""
        should_stop = getattr(_running, "should_stop", None)
        if should_stop is None:
            return self._straight
        return functools.partial(self._checked, should_stop)

    def _run(self, args, should_stop):
        args = scalars(args)
        checked = should_stop is not None
        with np.errstate(all="ignore"):
            compiled = self.__dict__.get("_checked" if checked else "_straight")
            if compiled is None:
                self._runs += 1
                if self._runs <= INTERPRETED_RUNS:
                    return self._interpret(args, should_stop)
                compiled = self._checked if checked else self._straight
            return compiled(should_stop, *args) if checked else compiled(*args)

    def _interpret(self, args, should_stop):
        """Run the steps from the list, without compiling: what the generated function does,
        line for line, at about six times its cost per op, but with nothing to compile first.
        A failure gets a note showing the line of the generated source it happened on."""
        values = list(self.template)
        for s, arg in zip(self.input_slots, args):
            values[s] = arg
        checks = self._stop_checks() if should_stop is not None else ()
        k = 0
        stopping = False
        try:
            for k, (fn, ins, out, frees, recycles) in enumerate(self._steps):
                if k in checks:
                    stopping = True
                    should_stop()
                    stopping = False
                result = fn(*[values[i] for i in ins])
                if type(out) is int:
                    values[out] = result
                else:
                    (*results,) = result
                    if len(results) != len(out):
                        raise ValueError(f"expected {len(out)} results, got {len(results)}")
                    for o, r in zip(out, results):
                        values[o] = r
                for recycle, s in recycles:
                    recycle(values[s])
                for s in frees:
                    values[s] = None
        except BaseException as exc:
            try:
                note = self._where(k, should_stop is not None, stopping)
            except Exception:  # the failure itself matters, not where it is shown to be
                note = None
            if note is not None:
                exc.add_note(note)
            raise
        return [values[s] for s in self.output_slots]

    def _where(self, k: int, checked: bool, stopping: bool) -> str:
        """Step `k` as a traceback would show its line of the generated source."""
        lines, _, step_lines = self._generate(checked)
        source = "".join(lines)
        number = step_lines[k] - (1 if stopping else 0)
        return (
            f'  File "{_filename(source, checked)}", line {number + 1}, in run (interpreted)\n'
            f"    {lines[number].strip()}"
        )

    def _stop_checks(self) -> frozenset:
        """The steps before which a call with should_stop checks it: once the elements read
        and written since the last check reach STOP_CHECK_ELEMENTS, and before every op that
        runs a loop or branch (whose bodies check too). Tiny ops skip the check."""
        checks = self.__dict__.get("_checks")
        if checks is None:
            checks = []
            avals = self.graph.avals
            sizes = [avals[name].size for name in self._slot_names]
            work = STOP_CHECK_ELEMENTS  # check before the first step
            for k, (_, ins, out, _, _) in enumerate(self._steps):
                outs = (out,) if type(out) is int else out
                if work >= STOP_CHECK_ELEMENTS or type(out) is not int:
                    checks.append(k)
                    work = 0
                work += sum(sizes[v] for v in ins) + sum(sizes[v] for v in outs)
            checks = self._checks = frozenset(checks)
        return checks

    def _generate(self, checked: bool):
        """The plan as straight-line Python: one local variable per slot, `del` at last use.
        Running it costs a call per op and no interpreter loop. The source holds only names
        made here (v<slot>, F<step>, K<slot>, R<slot>); functions and constants come in through
        the namespace, never as text, so nothing a request sent is ever compiled. Each line
        that runs an op is commented with the op, the node's index in `graph.nodes` and the
        values it computes; value names come from the request and appear only as `_shown`
        makes them (one-line ASCII string literals inside the comment).
        Returns (lines, namespace, the index in lines of each step's line)."""
        graph = self.graph
        names = self._slot_names
        where = {id(node): i for i, node in enumerate(graph.nodes)}
        made_by = {out: i for i, node in enumerate(graph.nodes) for out in node.outputs}
        namespace = {}
        params = (["stop"] if checked else []) + [f"v{s}" for s in self.input_slots]
        inputs = [names[s] for s in self.input_slots]
        lines = [f"def run({', '.join(params)}):" + (f"  # {_listed(inputs)}" if inputs else "")]
        for s, value in enumerate(self.template):
            if value is not None:
                namespace[f"K{s}"] = value
                name = names[s]
                if name in self.precomputed:
                    what = f"full  node {made_by[name]} -> {_shown(name)}, computed once"
                else:
                    what = f"constant {_shown(name)}"
                lines.append(f"    v{s} = K{s}  # {what}")
        checks = self._stop_checks() if checked else ()
        step_lines = []
        for k, (fn, ins, out, frees, recycles) in enumerate(self.steps):
            node = self.nodes[k]
            namespace[f"F{k}"] = fn
            if k in checks:
                lines.append("    stop()")
            step_lines.append(len(lines))
            call = f"F{k}({', '.join(f'v{i}' for i in ins)})"
            if type(out) is int:
                target = f"v{out}"
            else:
                target = ", ".join(f"v{o}" for o in out) + ("," if len(out) == 1 else "")
            op = PRIMITIVES[node.op].name
            lines.append(
                f"    {target} = {call}  # {op}  node {where[id(node)]} -> {_listed(node.outputs)}"
            )
            for recycle, s in recycles:
                namespace[f"R{s}"] = recycle
                lines.append(f"    R{s}(v{s})  # {_shown(names[s])} back to the pool")
            if frees:
                lines.append(f"    del {', '.join(f'v{f}' for f in frees)}")
        outputs = [names[s] for s in self.output_slots]
        lines.append(
            f"    return [{', '.join(f'v{s}' for s in self.output_slots)}]"
            + (f"  # {_listed(outputs)}" if outputs else "")
        )
        return [line + "\n" for line in lines], namespace, step_lines

    def _compile(self, checked: bool):
        """The generated function, compiled under a pseudo-filename of its own that linecache
        knows (tracebacks and profilers show the generated lines) for as long as the code
        lives."""
        lines, namespace, _ = self._generate(checked)
        source = "".join(lines)
        filename = _filename(source, checked)
        exec(compile(source, filename, "exec"), namespace)
        run = namespace.pop("run")  # no cycle through its globals: freed with the plan
        linecache.cache[filename] = (len(source), None, lines, filename)
        # The entry goes when the code object does (the plan dropped from its cache, and no
        # traceback left holding one of its frames): linecache stays as bounded as the plans.
        weakref.finalize(run.__code__, linecache.cache.pop, filename, None).atexit = False
        self._sources[checked] = lines
        return run

    @property
    def source(self) -> str:
        """The Python source this plan runs (when called without should_stop)."""
        return "".join(self._sources.get(False) or self._generate(False)[0])

    @property
    def checked_source(self) -> str:
        """The Python source this plan runs when called with should_stop."""
        return "".join(self._sources.get(True) or self._generate(True)[0])

    @functools.cached_property
    def _straight(self):
        return self._compile(checked=False)

    @functools.cached_property
    def _checked(self):
        return self._compile(checked=True)
