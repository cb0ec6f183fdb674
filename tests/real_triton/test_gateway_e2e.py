"""Over the wire: real gateway, real embedded Triton, tiny checkpoint, against the HF reference.

The reference is ``SiglipModel`` called with ``input_ids`` and ``pixel_values`` only (no
attention mask) on ``SiglipProcessor(..., padding="max_length", max_length=64,
truncation=True)``, with images loaded as ``transformers.image_utils.load_image`` does.
"""

from __future__ import annotations

import asyncio
import io
import urllib.request

import grpc
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from gateway.client import SiglipClient
from gateway.config import Settings
from gateway.server import GatewayServer
from tests.support import imagegen
from tests.support.hf_reference import siglip_processor

pytestmark = [pytest.mark.triton, pytest.mark.asyncio(loop_scope="session")]

LABELS = [
    "a cat", "A DOG!!", "naïve café, déjà vu", "the ÜBER-fast car?", "",
    "mountain " * 40,  # far more than 64 tokens: truncated
    "日本語のテキスト", "emoji 🐱 label",
]


def _images() -> dict[str, bytes]:
    return {
        "photo.jpg": imagegen.photo_jpeg(640, 480, seed=1),
        "rgba.png": imagegen.png_rgba(),
        "palette.png": imagegen.png_palette(),
        "cmyk.jpg": imagegen.cmyk_jpeg(),
        "exif6.jpg": imagegen.exif_jpeg(6),
        "gray16.png": imagegen.png_gray16(),
    }


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    import torch
    from transformers import SiglipModel
    from transformers.image_utils import load_image

    model = SiglipModel.from_pretrained(tiny_checkpoint).eval()
    processor = siglip_processor(tiny_checkpoint)

    def run(images: list[bytes], texts: list[str]):
        pil = [load_image(Image.open(io.BytesIO(b))) for b in images]
        inputs = processor(text=texts, images=pil, padding="max_length", max_length=64,
                           truncation=True, return_tensors="pt")
        with torch.inference_mode():
            out = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"])
        return (out.logits_per_image.numpy(), out.image_embeds.numpy(), out.text_embeds.numpy())

    return run


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(embedded_triton, tiny_checkpoint):
    settings = Settings.from_env({}, model=str(tiny_checkpoint), host="127.0.0.1", port=0,
                                 metrics_port=0)
    server = GatewayServer(settings, embedded_triton.grpc_url)
    await server.start()
    await server.wait_ready(60)
    yield server
    await server.shutdown(grace_s=1)


@pytest_asyncio.fixture(loop_scope="session")
async def client(gateway):
    async with SiglipClient(f"127.0.0.1:{gateway.bound.port}") as c:
        yield c


async def test_classify_matches_reference(client, reference):
    images = _images()
    results = await client.classify(list(images.values()), LABELS, timeout=60)
    prompts = [f"This is a photo of {label}." for label in LABELS]
    logits, _, _ = reference(list(images.values()), prompts)
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert len(results) == len(images)
    for i, scores in enumerate(results):
        assert [s.probability for s in scores] == sorted((s.probability for s in scores),
                                                         reverse=True)
        got = {s.label: s for s in scores}
        assert set(got) == set(LABELS)
        for j, label in enumerate(LABELS):
            assert abs(got[label].logit - logits[i, j]) <= 1e-5, (i, label)
            assert abs(got[label].probability - probs[i, j]) <= 1e-5, (i, label)


async def test_classify_verbatim_template_and_top_k(client, reference):
    image = imagegen.photo_jpeg(320, 200, seed=2)
    results = await client.classify([image], LABELS[:4], prompt_template="{}", top_k=2)
    logits, _, _ = reference([image], LABELS[:4])
    expected = np.argsort(-logits[0], kind="stable")[:2]
    assert [s.label for s in results[0]] == [LABELS[j] for j in expected]
    for s, j in zip(results[0], expected, strict=True):
        assert abs(s.logit - logits[0, j]) <= 1e-5


async def test_embed_matches_reference(client, reference):
    images = _images()
    texts = LABELS[:5]
    raw = np.asarray(Image.open(io.BytesIO(images["photo.jpg"])).convert("RGB"))
    embeds = await client.embed([images["photo.jpg"], texts[0], images["exif6.jpg"], *texts[1:],
                                 raw])
    _, image_ref, text_ref = reference([images["photo.jpg"], images["exif6.jpg"]], texts)
    got_images = embeds[[0, 2, len(embeds) - 1]]
    got_texts = embeds[[1, 3, 4, 5, 6]]
    np.testing.assert_allclose(np.linalg.norm(embeds, axis=1), 1.0, atol=1e-5)
    for got, ref in zip(got_images, [image_ref[0], image_ref[1], image_ref[0]], strict=True):
        assert float(got @ ref) >= 0.99999
    for got, ref in zip(got_texts, text_ref, strict=True):
        assert float(got @ ref) >= 0.99999


async def test_score_matrix_matches_reference(client, reference):
    images = list(_images().values())[:3]
    texts = ["a photo of a cat", "Two Dogs, playing!", "x"]
    result = await client.score(images, texts)
    logits, _, _ = reference(images, texts)
    np.testing.assert_allclose(result.logits, logits, atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.probabilities, 1 / (1 + np.exp(-logits)), atol=1e-5, rtol=0)


async def test_repeated_labels_make_no_text_tower_call(client, gateway):
    labels = ["label-cache-a", "label-cache-b", "label-cache-c"]
    image = imagegen.photo_jpeg(64, 64, seed=3)
    await client.classify([image], labels)
    stats_before = await gateway._backend.statistics("siglip_text")
    hits_before = gateway.metrics.cache_hits._value.get()
    misses_before = gateway.metrics.cache_misses._value.get()
    await client.classify([image], labels)
    stats_after = await gateway._backend.statistics("siglip_text")
    assert stats_after["inference_count"] == stats_before["inference_count"]
    assert gateway.metrics.cache_hits._value.get() - hits_before == len(labels)
    assert gateway.metrics.cache_misses._value.get() == misses_before


async def test_model_info_says_random(client, tiny_checkpoint):
    info = await client.model_info()
    assert info.random_weights is True
    assert info.model_id == str(tiny_checkpoint)
    assert info.image_size == 256 and info.text_length == 64
    assert info.embedding_dim > 0
    assert info.default_prompt_template == "This is a photo of {}."


async def test_health_reflection_and_metrics(client, gateway):
    assert await client.health("") == "SERVING"
    assert await client.health("siglip.v1.SiglipService") == "SERVING"
    assert await client.health("liveness") == "SERVING"

    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    stub = reflection_pb2_grpc.ServerReflectionStub(client.channel)

    async def one_request():
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    services = []
    async for response in stub.ServerReflectionInfo(one_request()):
        services = [s.name for s in response.list_services_response.service]
    assert "siglip.v1.SiglipService" in services

    url = f"http://127.0.0.1:{gateway.bound.metrics_port}/metrics"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    for name in ("siglip_gateway_requests_total", "siglip_gateway_stage_duration_seconds_bucket",
                 "siglip_gateway_requests_in_flight", "siglip_gateway_text_cache_hits_total"):
        assert name in body, name
    from prometheus_client.parser import text_string_to_metric_families

    ok_classify = [
        sample.value for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "siglip_gateway_requests_total"
        and sample.labels == {"method": "Classify", "code": "OK", "protocol": "grpc"}]
    assert ok_classify and ok_classify[0] >= 1


async def test_bad_image_names_field(client):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.classify([imagegen.photo_jpeg(32, 32), b"not an image"], ["a"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images[1]" in info.value.details()
