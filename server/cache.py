"""A byte-bounded cache shared by all clients: decoded graphs and large tensors by digest.

Segmented LRU: an entry put "on probation" (a tensor seen for the first time) lives in a
probation segment of at most a quarter of the bytes, and moves to the protected segment when
it is used again. A client whose large arguments change on every call (weights in a training
loop) then only churns the probation segment; graphs and data that repeat stay."""

from __future__ import annotations

import threading
from collections import OrderedDict

ENTRY_OVERHEAD = 256  # bytes charged per entry on top of its payload (keys, objects)


class ByteLRU:
    def __init__(self, max_bytes: int, on_change=None, probation_fraction: float = 0.25):
        self.max_bytes = int(max_bytes)
        self.max_probation_bytes = int(max_bytes * probation_fraction)
        self._protected: OrderedDict = OrderedDict()  # key -> (value, nbytes)
        self._probation: OrderedDict = OrderedDict()
        self._bytes = 0
        self._probation_bytes = 0
        self._lock = threading.Lock()
        self._on_change = on_change or (lambda entries, nbytes: None)

    def get(self, key):
        with self._lock:
            item = self._protected.get(key)
            if item is not None:
                self._protected.move_to_end(key)
                return item[0]
            item = self._probation.pop(key, None)
            if item is None:
                return None
            self._probation_bytes -= item[1]
            self._protected[key] = item  # used again: promoted
            self._evict()
            entries, total = len(self), self._bytes
        self._on_change(entries, total)
        return item[0]

    def put(self, key, value, nbytes: int, probation: bool = False) -> bool:
        """Store `value`; False (and nothing stored) when it alone is over its segment."""
        nbytes = int(nbytes) + ENTRY_OVERHEAD
        if nbytes > (self.max_probation_bytes if probation else self.max_bytes):
            return False
        with self._lock:
            self._remove(key)
            if probation:
                self._probation[key] = (value, nbytes)
                self._probation_bytes += nbytes
            else:
                self._protected[key] = (value, nbytes)
            self._bytes += nbytes
            self._evict()
            entries, total = len(self), self._bytes
        self._on_change(entries, total)
        return True

    def _remove(self, key):
        for segment in (self._protected, self._probation):
            old = segment.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
                if segment is self._probation:
                    self._probation_bytes -= old[1]

    def _evict(self):
        while self._probation_bytes > self.max_probation_bytes:
            _, (_, size) = self._probation.popitem(last=False)
            self._probation_bytes -= size
            self._bytes -= size
        while self._bytes > self.max_bytes:
            if self._probation:
                _, (_, size) = self._probation.popitem(last=False)
                self._probation_bytes -= size
            else:
                _, (_, size) = self._protected.popitem(last=False)
            self._bytes -= size

    def nbytes_of(self, key) -> int:
        """The payload bytes of an entry (0 if absent); neither a use nor a hit."""
        item = self._protected.get(key) or self._probation.get(key)
        return 0 if item is None else item[1] - ENTRY_OVERHEAD

    def __contains__(self, key):
        return key in self._protected or key in self._probation

    def __len__(self):
        return len(self._protected) + len(self._probation)

    @property
    def nbytes(self) -> int:
        return self._bytes
