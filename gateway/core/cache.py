"""Bounded LRU cache of text embeddings, keyed by (model id, final prompt text).

Entries may carry a flag (the engine's: the text was truncated to the model's text length), and
keys may be longer tuples (the engine's prompt-ensemble entries: model id, templates, label).

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

CacheKey = tuple[str, ...]


class EmbeddingCache:
    """LRU over (model_id, text) -> 1-D float32 vector. ``max_entries=0`` disables caching."""

    def __init__(self, max_entries: int) -> None:
        if max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_entries = max_entries
        self._data: OrderedDict[CacheKey, tuple[np.ndarray, bool]] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = 0
        self._misses = 0
        self._evictions = 0

    def get_many(self, keys: Sequence[CacheKey]) -> list[np.ndarray | None]:
        """One entry per key, None for a miss. Hits become most recently used."""
        return [None if entry is None else entry[0] for entry in self.get_flagged(keys)]

    def get_flagged(self, keys: Sequence[CacheKey]) -> list[tuple[np.ndarray, bool] | None]:
        """Like ``get_many``, with each vector's flag as stored by ``put_many``."""
        out: list[tuple[np.ndarray, bool] | None] = []
        with self._lock:
            for key in keys:
                entry = self._data.get(key)
                if entry is None:
                    self._misses += 1
                else:
                    self._data.move_to_end(key)
                    self._hits += 1
                out.append(entry)
        return out

    def put_many(self, keys: Sequence[CacheKey], vectors: Sequence[np.ndarray] | np.ndarray,
                 flags: Sequence[bool] | np.ndarray | None = None) -> None:
        """Store ``vectors[i]`` (and ``flags[i]``, default False) under ``keys[i]`` (rows of a 2-D
        array work); evicts LRU entries."""
        if len(keys) != len(vectors):
            raise ValueError(f"{len(keys)} keys but {len(vectors)} vectors")
        if flags is not None and len(flags) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(flags)} flags")
        if self.max_entries == 0:
            return
        # Copy outside the lock; the copy is what makes the cache immune to callers' later writes.
        frozen = [_frozen_copy(v) for v in vectors]
        marks = [False] * len(keys) if flags is None else [bool(f) for f in flags]
        with self._lock:
            for key, vec, mark in zip(keys, frozen, marks, strict=True):
                self._data[key] = (vec, mark)
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
