"""The identity basis a Jacobian's batched pass runs over: `size` one-hot rows of a spec's
shape, made once per spec and kept in a cache bounded by bytes (an identity is size² items:
a few large ones must not pin gigabytes)."""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from .graph import Spec, readonly

MAX_BYTES = 64 * 1024 * 1024  # all the bases kept, together


class BasisCache:
    """Least recently used bases first out once their bytes pass `max_bytes`; a basis larger
    than `max_bytes` is made for its call and not kept."""

    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, spec: Spec) -> np.ndarray:
        with self._lock:
            basis = self._entries.get(spec)
            if basis is not None:
                self._entries.move_to_end(spec)
                return basis
        basis = readonly(np.eye(spec.size, dtype=spec.dtype).reshape((spec.size,) + spec.shape))
        if basis.nbytes > self.max_bytes:
            return basis
        with self._lock:
            if spec not in self._entries:
                self._entries[spec] = basis
                self.bytes += basis.nbytes
            while self.bytes > self.max_bytes:
                _, dropped = self._entries.popitem(last=False)
                self.bytes -= dropped.nbytes
        return basis


basis = BasisCache()
