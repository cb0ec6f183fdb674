"""Bounded LRU cache of text embeddings, keyed by (model id, final prompt text).

Thread-safe: one lock around O(1) dict operations, held for microseconds, so it is fine to call
from the event loop and from worker threads alike. Stored vectors are private read-only float32
copies; what ``get_many`` returns cannot be modified by the caller (writes raise), so a cached
value can never be corrupted after the fact.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

CacheKey = tuple[str, str]


class EmbeddingCache:
    """LRU over (model_id, text) -> 1-D float32 vector. ``max_entries=0`` disables caching."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._data: OrderedDict[CacheKey, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get_many(self, keys: Sequence[CacheKey]) -> list[np.ndarray | None]:
        """One entry per key, None for a miss. Hits become most recently used."""
        out: list[np.ndarray | None] = []
        with self._lock:
            for key in keys:
                vec = self._data.get(key)
                if vec is None:
                    self._misses += 1
                else:
                    self._data.move_to_end(key)
                    self._hits += 1
                out.append(vec)
        return out

    def put_many(self, keys: Sequence[CacheKey],
                 vectors: Sequence[np.ndarray] | np.ndarray) -> None:
        """Store ``vectors[i]`` under ``keys[i]`` (rows of a 2-D array work); evicts LRU entries."""
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys but {len(vectors)} vectors")
        if self.max_entries == 0:
            return
        # Copy outside the lock; the copy is what makes the cache immune to callers' later writes.
        frozen = [_frozen_copy(v) for v in vectors]
        with self._lock:
            for key, vec in zip(keys, frozen, strict=True):
                self._data[key] = vec
                self._data.move_to_end(key)
            while len(self._data) > self.max_entries:
                self._data.popitem(last=False)
                self._evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)

    @property
    def hits(self) -> int:
        return self._hits

    @property
    def misses(self) -> int:
        return self._misses

    @property
    def evictions(self) -> int:
        return self._evictions


def _frozen_copy(vector: np.ndarray) -> np.ndarray:
    vec = np.array(vector, dtype=np.float32, copy=True).reshape(-1)
    vec.flags.writeable = False
    return vec
