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
                                 metrics_port=0, http_port=-1)
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
    hits_before = _cache(gateway, "hits")
    misses_before = _cache(gateway, "misses")
    await client.classify([image], labels)
    stats_after = await gateway._backend.statistics("siglip_text")
    assert stats_after["inference_count"] == stats_before["inference_count"]
    assert _cache(gateway, "hits") - hits_before == len(labels)
    assert _cache(gateway, "misses") == misses_before


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
        and sample.labels == {"method": "Classify", "code": "OK", "protocol": "grpc",
                              "model": gateway.specs[0].name}]
    assert ok_classify and ok_classify[0] >= 1


async def test_bad_image_names_field(client):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.classify([imagegen.photo_jpeg(32, 32), b"not an image"], ["a"])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "images[1]" in info.value.details()


# Zero-shot the way it is evaluated: prompt ensembles, raw embeddings, float16, truncation.

TEMPLATES = ["a photo of a {}.", "a blurry photo of the {}!", "{}, in a drawing"]


@pytest.fixture(scope="module")
def reference_features(tiny_checkpoint):
    """The towers' raw outputs (``get_image_features`` / ``get_text_features(input_ids)``)."""
    import torch
    from transformers import SiglipModel
    from transformers.image_utils import load_image

    from tests.support.hf_reference import features

    model = SiglipModel.from_pretrained(tiny_checkpoint).eval()
    processor = siglip_processor(tiny_checkpoint)

    def images(data: list[bytes]) -> np.ndarray:
        pil = [load_image(Image.open(io.BytesIO(b))) for b in data]
        pixels = processor(images=pil, return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            return features(model.get_image_features(pixel_values=pixels)).numpy()

    def texts(prompts: list[str]) -> np.ndarray:
        ids = processor(text=prompts, padding="max_length", max_length=64, truncation=True,
                        return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            return features(model.get_text_features(input_ids=ids)).numpy()

    scale, bias = model.logit_scale.exp().item(), model.logit_bias.item()
    return images, texts, scale, bias, processor.tokenizer


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _fitting_and_overflowing(tokenizer) -> tuple[str, str]:
    """A text of exactly 64 tokens (fits) and one of 65 (truncated), by the reference tokenizer."""
    lengths = {n: len(tokenizer("mountain " * n)["input_ids"]) for n in range(1, 200)}
    fits = next(n for n, length in lengths.items() if length == 64)
    over = next(n for n, length in lengths.items() if length == 65)
    return "mountain " * fits, "mountain " * over


async def test_classify_template_ensemble_matches_reference(client, reference_features):
    ref_images, ref_texts, scale, bias, tokenizer = reference_features
    images = list(_images().values())[:3]
    labels = [*LABELS, "river " * 70]  # the last one's prompts are far longer than 64 tokens
    reply = await client.classify_reply(images, labels, prompt_templates=TEMPLATES, timeout=60)
    prompts = [t.format(label) for label in labels for t in TEMPLATES]
    prompt_units = _unit(ref_texts(prompts)).reshape(len(labels), len(TEMPLATES), -1)
    label_units = _unit(prompt_units.mean(axis=1))
    logits = scale * (_unit(ref_images(images)) @ label_units.T) + bias
    for i, scores in enumerate(reply.results):
        got = {s.label: s for s in scores}
        for j, label in enumerate(labels):
            assert abs(got[label].logit - logits[i, j]) <= 1e-5, (i, label)
            assert abs(got[label].probability - 1 / (1 + np.exp(-logits[i, j]))) <= 1e-5
    too_long = [j for j, label in enumerate(labels)
                if any(len(tokenizer(t.format(label))["input_ids"]) > 64 for t in TEMPLATES)]
    assert too_long and list(reply.truncated_labels) == too_long


async def test_ensemble_is_cached_per_label(client, gateway):
    labels = ["ensemble-cache-a", "ensemble-cache-b"]
    image = imagegen.photo_jpeg(64, 64, seed=4)

    async def text_calls_and_prompt_lookups() -> tuple[int, float]:
        stats = await gateway._backend.statistics("siglip_text")
        hits = _cache(gateway, "hits")
        return int(stats["inference_count"]), hits + _cache(gateway, "misses")

    await client.classify([image], labels, prompt_templates=TEMPLATES)
    calls, lookups = await text_calls_and_prompt_lookups()
    # Reordered and repeated labels: each is a hit on its (model, templates, label) entry, so
    # no prompt is even looked up, let alone sent to the text tower.
    await client.classify([image], labels[::-1] + labels, prompt_templates=TEMPLATES)
    assert await text_calls_and_prompt_lookups() == (calls, lookups)
    # Other templates are another entry: its prompts come from the per-prompt cache.
    await client.classify([image], labels, prompt_templates=TEMPLATES[:2])
    assert await text_calls_and_prompt_lookups() == (calls, lookups + 2 * 2)


async def test_one_template_in_the_list_equals_prompt_template(client):
    image = imagegen.photo_jpeg(96, 64, seed=5)
    single = await client.classify([image], LABELS[:4], prompt_template=TEMPLATES[1])
    listed = await client.classify([image], LABELS[:4], prompt_templates=TEMPLATES[1:2])
    assert [(s.label, s.logit) for s in single[0]] == [(s.label, s.logit) for s in listed[0]]


async def test_embed_raw_float16_and_truncation(client, reference_features):
    ref_images, ref_texts, _, _, tokenizer = reference_features
    photo = _images()["photo.jpg"]
    fits, overflows = _fitting_and_overflowing(tokenizer)
    inputs = [fits, photo, overflows, "a cat"]
    raw = await client.embed_reply(inputs, normalize=False)
    ref = np.concatenate([ref_texts([fits]), ref_images([photo]), ref_texts([overflows, "a cat"])])
    np.testing.assert_allclose(raw.embeddings, ref, rtol=1e-4, atol=1e-5)
    assert np.linalg.norm(raw.embeddings, axis=1).min() > 0
    assert raw.truncated_inputs == (2,)
    unit = await client.embed(inputs)
    np.testing.assert_allclose(unit, _unit(raw.embeddings), atol=1e-6)
    half = await client.embed_reply(inputs, dtype="float16")
    assert half.embeddings.dtype == np.float16 and half.truncated_inputs == (2,)
    np.testing.assert_array_equal(half.embeddings, unit.astype(np.float16))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.embed(inputs, truncate=False)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("inputs[2].text: ")
    assert len(await client.embed([fits, photo], truncate=False)) == 2  # an exact fit is fine


async def test_classify_and_score_truncate_false(client, reference_features):
    *_, tokenizer = reference_features
    _, overflows = _fitting_and_overflowing(tokenizer)
    image = imagegen.photo_jpeg(64, 64, seed=6)
    scored = await client.score([image], ["a cat", overflows])
    assert scored.truncated_texts == (1,)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.score([image], ["a cat", overflows], truncate=False)
    assert info.value.details().startswith("texts[1]: ")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await client.classify([image], ["dog", overflows], prompt_templates=TEMPLATES,
                              truncate=False)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith("labels[1]: ")


async def test_embed_stream_options_per_message(client):
    from siglip.v1 import siglip_pb2 as pb

    texts = ["stream one", "stream two"]
    unit = await client.embed(texts)
    raw = await client.embed(texts, normalize=False)

    async def messages():
        inputs = [pb.EmbedInput(text=t) for t in texts]
        yield pb.EmbedStreamRequest(inputs=inputs, normalize=False)
        yield pb.EmbedStreamRequest(inputs=inputs, dtype=pb.EMBEDDING_DTYPE_FLOAT16)

    responses = [r async for r in client.stub.EmbedStream(messages(), timeout=60)]
    got_raw = np.array([e.values for e in responses[0].embeddings], np.float32)
    got_half = np.stack([np.frombuffer(e.float16_values, "<f2") for e in responses[1].embeddings])
    np.testing.assert_array_equal(got_raw, raw)
    np.testing.assert_array_equal(got_half, unit.astype(np.float16))
    assert all(not e.values for e in responses[1].embeddings)


def _cache(gateway: GatewayServer, what: str) -> float:
    """The text cache's hits or misses of the one model served."""
    return getattr(gateway.metrics, f"cache_{what}").labels(gateway.specs[0].name)._value.get()
