"""Loop tapes: what a loop's reverse pass reads, one entry per iteration run: a while_loop's
residuals with the carry each iteration gives, or the carry entering each iteration (a scan's
under a tape budget its stored residuals would pass, from which the derivative loops
evaluate the body again). The tape calls either entry a carry: `advance` makes the next one.

Without a budget every carry is kept. With a budget in bytes, the tape keeps checkpoints
(every `stride`-th carry, the stride doubling whenever they would take more than half the
budget) and the reverse pass recomputes the carries between two checkpoints from the earlier
one, recursively in smaller segments where a segment does not fit either (multi-level
checkpointing in the manner of revolve). The recomputed carries are bit-for-bit the stored
ones would have been, and the reverse loop runs the same operations in the same order, so the
gradient is the same to the last bit.

Bytes held and iterations recomputed are counted per thread by `meter`, which the engine
reads after each call.
"""

from __future__ import annotations

import threading

from .errors import LimitError


def _segment_lengths(length: int, room: int) -> list[int]:
    """Cut `length` iterations into segments to reverse holding at most `room` carries: while
    segment j is reversed the checkpoints of segments 0..j are held, so segment j gets room
    `room - j`. With `reach(r, d)` the longest loop reversible in room r with d levels of
    recomputation (reach(r, 0) = r; reach(r, d) = reach(r - 1, d) + reach(r, d - 1), a
    binomial count as in Griewank's revolve), take the fewest levels that reach `length`."""
    if room < 2:
        raise LimitError(
            f"a tape budget of {room} carries cannot reverse {length} iterations", "tape"
        )
    previous = list(range(room + 1))  # reach(r, 0) for r = 0..room
    for _ in range(64):
        current = [0] * (room + 1)
        for r in range(1, room + 1):
            current[r] = current[r - 1] + previous[r]
        if current[room] >= length:
            lengths, left = [], length
            for j in range(room):
                if left <= 0:
                    break
                lengths.append(min(previous[room - j], left))
                left -= lengths[-1]
            return lengths
        previous = current
    raise LimitError(f"a tape budget of {room} carries cannot reverse {length} iterations", "tape")


class _Meter(threading.local):
    def __init__(self):
        self.reset(None)

    def reset(self, budget):
        self.budget = budget  # bytes loop tapes may hold, or None
        self.held = 0
        self.peak = 0
        self.recomputed_ops = 0
        self.tapes = 0  # loop tapes recorded

    def hold(self, nbytes):
        self.held += nbytes
        self.peak = max(self.peak, self.held)

    def release(self, nbytes):
        self.held -= nbytes

    def slots(self, carry_bytes):
        """How many carries of this size a new loop tape may hold (None: no budget): half of
        what the budget has left, so that loops nested in its body, whose tapes are recorded
        while it is reversed, have the other half (and so on down)."""
        if self.budget is None or carry_bytes == 0:
            return None
        return (self.budget - self.held) // 2 // carry_bytes


meter = _Meter()


class LoopTape:
    """Carries of one loop run. `advance(k, carry)` runs iteration k of the loop's body."""

    def __init__(self, advance, carry_bytes: int, body_ops: int):
        self.advance = advance
        self.carry_bytes = carry_bytes
        self.body_ops = body_ops
        self.slots = meter.slots(carry_bytes)
        if self.slots is not None and self.slots < 2:
            raise LimitError(
                f"a loop tape needs room for at least two carries of {carry_bytes} "
                f"bytes; the tape budget leaves {max(self.slots, 0)}",
                "tape",
            )
        self.stride = 1
        self.saved = {}
        self.length = 0
        meter.tapes += 1

    def _keep(self, count):
        meter.hold(count * self.carry_bytes)

    def _drop(self, count):
        meter.release(count * self.carry_bytes)

    def record(self, k, carry):
        """Called with the carry entering iteration k, for k = 0, 1, ... in order."""
        self.length = k + 1
        if k % self.stride:
            return
        self.saved[k] = carry
        self._keep(1)
        if self.slots is not None and len(self.saved) > self.slots // 2:
            self.stride *= 2
            before = len(self.saved)
            self.saved = {j: c for j, c in self.saved.items() if j % self.stride == 0}
            self._drop(before - len(self.saved))

    def _recompute(self, k, carry):
        meter.recomputed_ops += self.body_ops
        return self.advance(k, carry)

    def forward(self):
        """The carries in the order the loop ran, recomputed from the first where not kept."""
        carry = None
        for k in range(self.length):
            carry = self.saved[k] if k in self.saved else self._recompute(k - 1, carry)
            yield k, carry

    def backward(self):
        """The carries from the last iteration to the first; the tape is used up."""
        starts = sorted(self.saved)
        for start in reversed(starts):
            carry = self.saved.pop(start)
            length = min(self.stride, self.length - start)
            room = None if self.slots is None else self.slots - len(self.saved)
            yield from self._reverse(start, carry, length, room)
            self._drop(1)

    def _reverse(self, start, carry, length, room):
        """Carries start .. start+length-1 in reverse, from the carry at `start`, holding at
        most `room` carries (the one given included) at a time."""
        if room is None or length <= room:
            buffer = [carry]
            for k in range(start, start + length - 1):
                buffer.append(self._recompute(k, buffer[-1]))
            self._keep(len(buffer) - 1)
            for k in range(start + length - 1, start - 1, -1):
                yield k, buffer.pop()
            self._drop(length - 1)
            return
        lengths = _segment_lengths(length, room)
        checkpoints = [carry]
        for j in range(1, len(lengths)):
            checkpoints.append(
                self._advance_many(start + sum(lengths[: j - 1]), checkpoints[-1], lengths[j - 1])
            )
        self._keep(len(checkpoints) - 1)
        for j in range(len(lengths) - 1, -1, -1):
            seg_start = start + sum(lengths[:j])
            yield from self._reverse(
                seg_start, checkpoints.pop(), lengths[j], room - len(checkpoints)
            )
            if j:
                self._drop(1)

    def _advance_many(self, k, carry, count):
        for step in range(k, k + count):
            carry = self._recompute(step, carry)
        return carry
