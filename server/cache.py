"""A byte-bounded LRU cache shared by all clients: decoded graphs and large tensors by digest."""
from __future__ import annotations

import threading
from collections import OrderedDict

ENTRY_OVERHEAD = 256  # bytes charged per entry on top of its payload (keys, objects)


class ByteLRU:
    def __init__(self, max_bytes: int, on_change=None):
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict = OrderedDict()  # key -> (value, nbytes)
        self._bytes = 0
        self._lock = threading.Lock()
        self._on_change = on_change or (lambda entries, nbytes: None)

    def get(self, key):
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def put(self, key, value, nbytes: int) -> bool:
        """Store `value`; False (and nothing stored) when it alone is over the bound."""
        nbytes = int(nbytes) + ENTRY_OVERHEAD
        if nbytes > self.max_bytes:
            return False
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.max_bytes:
                _, (_, size) = self._items.popitem(last=False)
                self._bytes -= size
            entries, total = len(self._items), self._bytes
        self._on_change(entries, total)
        return True

    def __len__(self):
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes
