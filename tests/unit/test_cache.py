"""EmbeddingCache: LRU order, bounds, counters, immutability, concurrent use."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from gateway.core.cache import EmbeddingCache

M = "google/siglip-base-patch16-256"


def vec(i: float, dim: int = 4) -> np.ndarray:
    return np.full(dim, i, dtype=np.float32)


def test_get_put_and_counters():
    cache = EmbeddingCache(8)
    assert cache.get_many([(M, "a"), (M, "b")]) == [None, None]
    assert (cache.hits, cache.misses) == (0, 2)
    cache.put_many([(M, "a"), (M, "b")], np.stack([vec(1), vec(2)]))
    a, missing, b = cache.get_many([(M, "a"), (M, "c"), (M, "b")])
    assert missing is None
    np.testing.assert_array_equal(a, vec(1))
    np.testing.assert_array_equal(b, vec(2))
    assert (cache.hits, cache.misses) == (2, 3)
    assert len(cache) == 2


def test_keys_include_the_model():
    cache = EmbeddingCache(8)
    cache.put_many([("model-a", "dog")], [vec(1)])
    assert cache.get_many([("model-b", "dog")]) == [None]


def test_lru_eviction_order():
    cache = EmbeddingCache(3)
    cache.put_many([(M, t) for t in "abc"], [vec(i) for i in range(3)])
    cache.get_many([(M, "a")])  # a is now the most recent; b the least
    cache.put_many([(M, "d")], [vec(3)])
    got = cache.get_many([(M, t) for t in "abcd"])
    assert [g is None for g in got] == [False, True, False, False]
    assert len(cache) == 3 and cache.evictions == 1


def test_overwrite_refreshes_value_and_recency():
    cache = EmbeddingCache(2)
    cache.put_many([(M, "a"), (M, "b")], [vec(1), vec(2)])
    cache.put_many([(M, "a")], [vec(9)])
    cache.put_many([(M, "c")], [vec(3)])  # evicts b, not the rewritten a
    a, b = cache.get_many([(M, "a"), (M, "b")])
    np.testing.assert_array_equal(a, vec(9))
    assert b is None


def test_stored_vectors_are_private_and_read_only():
    cache = EmbeddingCache(4)
    source = np.stack([vec(1), vec(2)]).astype(np.float64)
    cache.put_many([(M, "a"), (M, "b")], source)
    source[:] = 0  # the caller reuses its buffer
    (a,) = cache.get_many([(M, "a")])
    assert a.dtype == np.float32 and a.shape == (4,)
    np.testing.assert_array_equal(a, vec(1))
    with pytest.raises(ValueError):
        a[0] = 5.0
    np.testing.assert_array_equal(cache.get_many([(M, "a")])[0], vec(1))


def test_disabled_and_bad_arguments():
    cache = EmbeddingCache(0)
    cache.put_many([(M, "a")], [vec(1)])
    assert cache.get_many([(M, "a")]) == [None] and len(cache) == 0
    with pytest.raises(ValueError):
        EmbeddingCache(-1)
    with pytest.raises(ValueError, match="2 keys but 1 vectors"):
        EmbeddingCache(4).put_many([(M, "a"), (M, "b")], [vec(1)])


def test_clear():
    cache = EmbeddingCache(4)
    cache.put_many([(M, "a")], [vec(1)])
    cache.clear()
    assert len(cache) == 0 and cache.get_many([(M, "a")]) == [None]


def test_concurrent_use_keeps_bounds_and_counts():
    cache = EmbeddingCache(50)
    threads, rounds = 8, 300
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            barrier.wait()
            for _ in range(rounds):
                keys = [(M, f"t{int(k)}") for k in rng.integers(0, 120, size=4)]
                got = cache.get_many(keys)
                for key, value in zip(keys, got, strict=True):
                    if value is not None:
                        # Values are always the ones written for that key.
                        assert value[0] == float(key[1][1:])
                misses = [k for k, v in zip(keys, got, strict=True) if v is None]
                cache.put_many(misses, [vec(float(k[1][1:])) for k in misses])
        except BaseException as exc:  # surfaced below; a thread cannot fail the test itself
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    assert not errors, errors[0]
    assert len(cache) <= 50
    assert cache.hits + cache.misses == threads * rounds * 4
    assert cache.hits > 0 and cache.evictions > 0


def test_flags_are_stored_with_their_vectors():
    cache = EmbeddingCache(2)
    cache.put_many([(M, "a"), (M, "b")], [vec(1), vec(2)], [True, False])
    cache.put_many([(M, "c")], [vec(3)])  # no flags: False; evicts "a"
    assert cache.get_flagged([(M, "a")]) == [None]
    (_, b_flag), (c, c_flag) = cache.get_flagged([(M, "b"), (M, "c")])
    assert (b_flag, c_flag) == (False, False)
    np.testing.assert_array_equal(c, vec(3))
    cache.put_many([(M, "b")], [vec(4)], [True])
    assert cache.get_flagged([(M, "b")])[0][1] is True
    # Longer keys (the engine's ensembles: model, templates, label) never meet 2-tuples.
    cache.put_many([(M, '["{}"]', "b")], [vec(5)])
    np.testing.assert_array_equal(cache.get_many([(M, "b")])[0], vec(4))
    with pytest.raises(ValueError):
        cache.put_many([(M, "x")], [vec(1)], [True, False])
