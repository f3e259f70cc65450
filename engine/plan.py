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

import functools
from typing import NamedTuple

import numpy as np

from .primitive import PRIMITIVES
from .transforms import Program


class Stats(NamedTuple):
    tape_bytes: int = 0
    tape_entries: int = 0
    peak_bytes: int = 0
    recomputed_ops: int = 0


def rematerialize(nodes, boundary, outputs):
    """Move cheap elementwise forward nodes whose results only the backward pass reads to just
    before their first backward use, when their own inputs stay alive into the backward pass
    anyway. Nothing is computed twice; what changes is that their results are not held on
    the tape (tanh's 1 - y**2 is recomputed from y, which the matmul's transpose keeps)."""
    forward, backward = list(nodes[:boundary]), list(nodes[boundary:])
    position = {id(n): (i, 0) for i, n in enumerate(backward)}
    forward_uses: dict = {}
    for node in forward:
        for name in node.inputs:
            forward_uses[name] = forward_uses.get(name, 0) + 1
    first_backward_use: dict = {}
    for node in backward:
        for name in node.inputs:
            first_backward_use.setdefault(name, position[id(node)])
    defined_forward = {o for n in forward for o in n.outputs}
    outputs = set(outputs)
    counter = 0
    moved = []
    for node in reversed(forward):
        if not PRIMITIVES[node.op].elementwise:
            continue
        if any(forward_uses.get(o) or o in outputs or o not in first_backward_use
               for o in node.outputs):
            continue
        if any(name in defined_forward and name not in first_backward_use for name in node.inputs):
            continue
        counter += 1
        at = min(first_backward_use[o] for o in node.outputs)
        position[id(node)] = (at[0], -counter)
        moved.append(node)
        for name in node.inputs:
            forward_uses[name] -= 1
            first_backward_use[name] = min(first_backward_use.get(name, at), position[id(node)])
    if not moved:
        return list(nodes), boundary
    moved_ids = {id(n) for n in moved}
    forward = [n for n in forward if id(n) not in moved_ids]
    backward = sorted(backward + moved, key=lambda n: position[id(n)])
    return forward + backward, len(forward)


class Plan:
    def __init__(self, program: Program):
        graph = program.graph
        nodes, boundary = list(graph.nodes), program.boundary
        if boundary is not None:
            nodes, boundary = rematerialize(nodes, boundary, graph.output_names)
        self.graph = graph
        self.nodes = nodes
        slot = {}
        for name in list(graph.input_names) + list(graph.constants):
            slot.setdefault(name, len(slot))
        for node in nodes:
            for name in node.outputs:
                slot[name] = len(slot)
        self.template = [None] * len(slot)
        for name, value in graph.constants.items():
            self.template[slot[name]] = value
        self.input_slots = [slot[n] for n in graph.input_names]
        self.output_slots = [slot[n] for n in graph.output_names]

        last_use = {}
        for k, node in enumerate(nodes):
            for name in node.inputs:
                last_use[name] = k
        keep = set(graph.output_names) | set(graph.input_names) | set(graph.constants)
        frees = [[] for _ in nodes]
        for name, k in last_use.items():
            if name not in keep:
                frees[k].append(name)
        for k, node in enumerate(nodes):  # values nothing reads: dropped at once
            frees[k].extend(o for o in node.outputs if o not in last_use and o not in keep)

        self.steps = []
        for k, node in enumerate(nodes):
            impl = PRIMITIVES[node.op].impl
            fn = functools.partial(impl, **node.attrs) if node.attrs else impl
            self.steps.append((fn, tuple(slot[n] for n in node.inputs), slot[node.outputs[0]],
                               tuple(slot[n] for n in frees[k])))
        self.stats = self._memory(nodes, boundary, frees)

    def _memory(self, nodes, boundary, frees) -> Stats:
        graph = self.graph
        external = set(graph.input_names) | set(graph.constants)
        storage, size = {}, {}  # value -> the value that owns its memory (None: not ours)
        for node in nodes:
            base = node.inputs[0] if PRIMITIVES[node.op].view else None
            for name in node.outputs:
                if base is None:
                    storage[name] = name
                    size[name] = graph.avals[name].nbytes
                else:
                    storage[name] = None if base in external else storage[base]
        residual = set()
        if boundary is not None:
            forward = {o for node in nodes[:boundary] for o in node.outputs}
            residual = {storage[n] for node in nodes[boundary:] for n in node.inputs
                        if n in forward and storage[n] is not None}
        refs: dict = {}
        live = sum(graph.avals[n].nbytes for n in graph.input_names)
        peak, tape, tape_peak = live, 0, 0
        for k, node in enumerate(nodes):
            for name in node.outputs:
                base = storage[name]
                if base is None:
                    continue
                if refs.get(base, 0) == 0:
                    live += size[base]
                    tape += size[base] if base in residual else 0
                refs[base] = refs.get(base, 0) + 1
            peak, tape_peak = max(peak, live), max(tape_peak, tape)
            for name in frees[k]:
                base = storage.get(name)
                if base is None:
                    continue
                refs[base] -= 1
                if refs[base] == 0:
                    live -= size[base]
                    tape -= size[base] if base in residual else 0
        return Stats(tape_peak, len(residual), peak, 0)

    def run(self, args, should_stop=None):
        env = self.template.copy()
        for s, a in zip(self.input_slots, args):
            env[s] = a
        with np.errstate(all="ignore"):
            if should_stop is None:
                for fn, ins, out, frees in self.steps:
                    env[out] = fn(*[env[i] for i in ins])
                    for f in frees:
                        env[f] = None
            else:
                for fn, ins, out, frees in self.steps:
                    should_stop()
                    env[out] = fn(*[env[i] for i in ins])
                    for f in frees:
                        env[f] = None
        return [env[s] for s in self.output_slots]

