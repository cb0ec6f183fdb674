"""The Triton models (model_repository/) served by the embedded Triton, over gRPC.

Against the in-process HF reference: `SiglipModel.get_image_features(pixel_values)` with
pixel_values = (uint8/255 - 0.5)/0.5 in NCHW float32, and `get_text_features(input_ids)` with
no attention mask. Also: dynamic batching really batches concurrent requests, and a malformed
request fails alone.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import tritonclient.grpc.aio as aioclient
from tritonclient.utils import InferenceServerException

from siglip_tools.checkpoint import shape_of
from tests.support.hf_reference import features
from tests.support.triton_calls import assert_close, infer_async

pytestmark = [pytest.mark.triton, pytest.mark.asyncio(loop_scope="session")]

TOLERANCE = 1e-5

# The session tiny checkpoint's shapes (tests/conftest.py makes it with the defaults).
IMAGE_SIZE, TEXT_LENGTH = shape_of("tiny")["image_size"], shape_of("tiny")["text_length"]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """(image_features(uint8 NHWC), text_features(int64 ids), vocab_size) from HF."""
    import torch
    from transformers import SiglipModel

    model = SiglipModel.from_pretrained(tiny_checkpoint).eval()

    def image_features(pixels: np.ndarray) -> np.ndarray:
        x = (pixels.astype(np.float32) / 255.0 - 0.5) / 0.5
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        with torch.inference_mode():
            return features(model.get_image_features(pixel_values=x)).numpy()

    def text_features(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return features(model.get_text_features(input_ids=torch.from_numpy(ids))).numpy()

    return image_features, text_features, model.config.text_config.vocab_size


@pytest.fixture(scope="module")
def tokens(tiny_checkpoint):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)

    def encode(texts: list[str]) -> np.ndarray:
        return tokenizer(texts, padding="max_length", max_length=TEXT_LENGTH, truncation=True,
                         return_tensors="np")["input_ids"].astype(np.int64)

    return encode


@pytest.fixture
async def client(embedded_triton):
    c = aioclient.InferenceServerClient(embedded_triton.grpc_url)
    try:
        yield c
    finally:
        await c.close()


def _pixels(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(rows, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


def _ids(rows: int, seed: int, vocab: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, size=(rows, TEXT_LENGTH), dtype=np.int64)


async def _stats(client, model: str) -> tuple[int, int, int]:
    """(requests succeeded, rows inferred, model executions) so far."""
    stats = (await client.get_inference_statistics(model, as_json=True))["model_stats"][0]
    success = int(stats.get("inference_stats", {}).get("success", {}).get("count", 0))
    return success, int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


async def test_both_models_ready(client, embedded_triton):
    for model in ("siglip_vision", "siglip_text"):
        assert await client.is_model_ready(model)
    assert embedded_triton.is_running() and embedded_triton.is_ready()


async def test_vision_batch_1_matches_reference(client, reference):
    image_features, _, _ = reference
    pixels = _pixels(1, seed=0)
    assert_close(await infer_async(client, "siglip_vision", pixels), image_features(pixels),
                 TOLERANCE)


async def test_text_batch_1_matches_reference(client, reference, tokens):
    _, text_features, _ = reference
    ids = tokens(["a photo of a cat"])
    assert ids.shape == (1, TEXT_LENGTH)
    assert_close(await infer_async(client, "siglip_text", ids), text_features(ids), TOLERANCE)


async def test_concurrent_requests_match_reference(client, reference):
    image_features, text_features, vocab = reference
    rows = [1 + i % 3 for i in range(16)]
    pixels = [_pixels(n, seed=100 + i) for i, n in enumerate(rows)]
    ids = [_ids(n, seed=200 + i, vocab=vocab) for i, n in enumerate(rows)]
    got = await asyncio.gather(*(infer_async(client, "siglip_vision", p) for p in pixels),
                               *(infer_async(client, "siglip_text", t) for t in ids))
    want_images = np.split(image_features(np.concatenate(pixels)), np.cumsum(rows)[:-1])
    want_texts = np.split(text_features(np.concatenate(ids)), np.cumsum(rows)[:-1])
    for g, w in zip(got, [*want_images, *want_texts], strict=True):
        assert_close(g, w, TOLERANCE)


@pytest.mark.parametrize("model", ["siglip_vision", "siglip_text"])
async def test_dynamic_batching_batches_concurrent_requests(client, reference, model):
    _, _, vocab = reference
    requests = 48  # single-row requests: rows inferred == requests
    make = (lambda i: _pixels(1, seed=i)) if model == "siglip_vision" else \
        (lambda i: _ids(1, seed=i, vocab=vocab))
    arrays = [make(i) for i in range(requests)]
    before = await _stats(client, model)
    await asyncio.gather(*(infer_async(client, model, a) for a in arrays))
    # Triton counts a batch after its responses are sent: wait until ours are all counted.
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        after = await _stats(client, model)
        succeeded, inferred, executions = (a - b for a, b in zip(after, before, strict=True))
        if succeeded >= requests or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert succeeded >= requests and inferred >= requests  # others may share this Triton
    assert executions < inferred, f"{executions} executions for {inferred} rows: no batching"


async def test_malformed_request_fails_alone(client, reference):
    image_features, text_features, vocab = reference
    good_ids = [_ids(2, seed=300 + i, vocab=vocab) for i in range(6)]
    bad_ids = np.full((1, TEXT_LENGTH), vocab, dtype=np.int64)  # id out of range
    good_pixels = _pixels(1, seed=400)
    bad_pixels = np.zeros((1, 128, 128, 3), dtype=np.uint8)  # wrong shape
    results = await asyncio.gather(
        *(infer_async(client, "siglip_text", ids) for ids in good_ids[:3]),
        infer_async(client, "siglip_text", bad_ids),
        *(infer_async(client, "siglip_text", ids) for ids in good_ids[3:]),
        infer_async(client, "siglip_vision", bad_pixels),
        infer_async(client, "siglip_vision", good_pixels),
        return_exceptions=True)
    texts = results[:3] + results[4:7]
    for got, ids in zip(texts, good_ids, strict=True):
        assert not isinstance(got, BaseException), got
        assert_close(got, text_features(ids), TOLERANCE)
    for error in (results[3], results[7]):
        assert isinstance(error, InferenceServerException), error
        assert error.status() == "StatusCode.INVALID_ARGUMENT", error
    assert "input_ids" in results[3].message()
    assert not isinstance(results[8], BaseException), results[8]
    assert_close(results[8], image_features(good_pixels), TOLERANCE)
    # Still serving afterwards.
    assert_close(await infer_async(client, "siglip_text", good_ids[0]),
                 text_features(good_ids[0]), TOLERANCE)
