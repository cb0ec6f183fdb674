"""The engine with a fake backend: what reaches the towers, and in what shape."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from gateway.core.cache import EmbeddingCache
from gateway.core.errors import InvalidInput
from gateway.core.images import ImageLimits, PreprocessMode
from gateway.core.model_meta import load_model_meta
from gateway.core.text import TextTokenizer
from gateway.core.types import RawPixels
from gateway.core.validation import RequestLimits
from gateway.engine import Engine
from gateway.metrics import Metrics

pytestmark = pytest.mark.asyncio(loop_scope="session")


class CountingBackend:
    """Deterministic embeddings after a delay; records the rows of every tower call."""

    def __init__(self, dim: int, delay_s: float = 0.05) -> None:
        self.dim = dim
        self.delay_s = delay_s
        self.text_calls: list[int] = []
        self.image_calls: list[int] = []

    async def embed_images(self, pixels, deadline=None):
        self.image_calls.append(len(pixels))
        await asyncio.sleep(self.delay_s)
        return np.ones((len(pixels), self.dim), np.float32)

    async def embed_texts(self, input_ids, deadline=None):
        self.text_calls.append(len(input_ids))
        await asyncio.sleep(self.delay_s)
        return input_ids[:, : self.dim].astype(np.float32) + 1.0


@pytest.fixture
def engine_and_backend(tiny_checkpoint):
    meta = load_model_meta(str(tiny_checkpoint))
    backend = CountingBackend(meta.embedding_dim)
    with ThreadPoolExecutor(2) as pool:
        yield Engine(meta=meta, tokenizer=TextTokenizer.for_model(meta),
                     backend=backend, pool=pool, metrics=Metrics().for_model("default"),
                     cache=EmbeddingCache(1000), request_limits=RequestLimits(),
                     image_limits=ImageLimits(), mode=PreprocessMode.EXACT), backend


async def test_concurrent_cold_requests_fetch_each_text_once(engine_and_backend):
    engine, backend = engine_and_backend
    image = RawPixels(bytes(8 * 8 * 3), 8, 8)
    labels = [f"single-flight {i}" for i in range(10)]
    results = [c.scores for c in await asyncio.gather(*(
        engine.classify_detailed([image], labels, None, 0, None) for _ in range(5)))]
    assert sum(backend.text_calls) == len(labels)  # not 5 x 10
    assert all([s.label for s in r[0]] == [s.label for s in results[0][0]] for r in results)
    assert len(backend.image_calls) == 5


async def test_failed_fetch_lets_waiters_fetch_for_themselves(engine_and_backend):
    engine, backend = engine_and_backend
    original = backend.embed_texts
    failures = iter([RuntimeError("triton down")])

    async def first_call_fails(input_ids, deadline=None):
        backend.text_calls.append(len(input_ids))
        await asyncio.sleep(backend.delay_s)
        if (error := next(failures, None)) is not None:
            raise error
        return await original(input_ids, deadline)

    backend.embed_texts = first_call_fails
    first, second = await asyncio.gather(
        engine.embed(["shared text"], None), engine.embed(["shared text"], None),
        return_exceptions=True)
    assert isinstance(first, RuntimeError)
    assert isinstance(second, np.ndarray) and second.shape[0] == 1


async def test_concurrent_ensembles_fetch_each_prompt_once(engine_and_backend):
    engine, backend = engine_and_backend
    image = RawPixels(bytes(8 * 8 * 3), 8, 8)
    labels = [f"ensemble {i}" for i in range(4)]
    templates = ["a {}.", "the {}!", "{} here"]
    results = await asyncio.gather(*(
        engine.classify_detailed([image], labels, None, 0, None, templates=templates)
        for _ in range(3)))
    assert sum(backend.text_calls) == len(labels) * len(templates)
    assert all(r.scores == results[0].scores for r in results)
    assert results[0].truncated_labels == []


async def test_embed_raw_is_the_backends_output_and_truncation_names_the_input(
        engine_and_backend):
    engine, backend = engine_and_backend
    image = RawPixels(bytes(8 * 8 * 3), 8, 8)
    long_text = "word " * 200
    raw = await engine.embed_detailed(["short", image, long_text], None, normalize=False)
    ids = engine._tokenizer.encode(["short", long_text])
    np.testing.assert_array_equal(raw.embeddings[[0, 2]],
                                  ids[:, : backend.dim].astype(np.float32) + 1.0)
    np.testing.assert_array_equal(raw.embeddings[1], np.ones(backend.dim, np.float32))
    assert raw.truncated_inputs == [2]
    unit = await engine.embed_detailed(["short", image, long_text], None)
    np.testing.assert_allclose(np.linalg.norm(unit.embeddings, axis=1), 1.0, atol=1e-6)
    with pytest.raises(InvalidInput) as err:
        await engine.embed_detailed(["short", image, long_text], None, truncate=False)
    assert err.value.field == "inputs[2].text"
