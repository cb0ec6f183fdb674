"""SIGLIP_PREPROCESS_MODE=triton: which images go to Triton's JPEG decoder as bytes, and how the
answers come back together.

Engine tests use a fake backend whose "tower" is a fixed function of the pixels, and whose
encoded path decodes exactly as the gateway does: so every result must equal EXACT mode's, in
request order, whichever path each image took. The last test runs over the wire against the
real embedded Triton, whose decoder (torchvision) is close to, not identical with, Pillow.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import pytest_asyncio

from gateway.core.cache import EmbeddingCache
from gateway.core.errors import BackendRejected, InvalidInput
from gateway.core.images import (
    ImageLimits,
    PreprocessMode,
    preprocess_encoded,
    triton_decodable,
)
from gateway.core.model_meta import load_model_meta
from gateway.core.text import TextTokenizer
from gateway.core.types import EncodedImage, RawPixels
from gateway.core.validation import RequestLimits
from gateway.engine import Engine
from gateway.metrics import Metrics
from tests.support import imagegen

aio = pytest.mark.asyncio(loop_scope="session")
LIMITS = ImageLimits()


def _tower(pixels: np.ndarray, dim: int) -> np.ndarray:
    """A stand-in tower: block means of the pixels, so different images differ."""
    return pixels.reshape(len(pixels), dim, -1).mean(axis=2).astype(np.float32) + 1.0


class RoutingBackend:
    """Records what reached each path; `reject` makes the encoded path fail as Triton would."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.pixel_rows: list[int] = []
        self.encoded: list[list[bytes]] = []
        self.reject = False

    async def embed_images(self, pixels, deadline=None):
        self.pixel_rows.append(len(pixels))
        return _tower(pixels, self.dim)

    async def embed_encoded(self, images, deadline=None):
        self.encoded.append(list(images))
        if self.reject:
            raise BackendRejected("inference failed")
        pixels = np.stack([preprocess_encoded(b, field="-", limits=LIMITS) for b in images])
        return _tower(pixels, self.dim)

    async def embed_texts(self, input_ids, deadline=None):
        return np.ones((len(input_ids), self.dim), np.float32)


@pytest.fixture(scope="module")
def meta(tiny_checkpoint):
    return load_model_meta(str(tiny_checkpoint))


@pytest.fixture
def make_engine(meta):
    pool = ThreadPoolExecutor(2)

    def make(mode: PreprocessMode) -> tuple[Engine, RoutingBackend, Metrics]:
        backend, metrics = RoutingBackend(meta.embedding_dim), Metrics()
        engine = Engine(meta=meta, tokenizer=TextTokenizer.for_model(meta),
                        backend=backend, pool=pool, metrics=metrics.for_model("default"),
                        cache=EmbeddingCache(100), request_limits=RequestLimits(),
                        image_limits=LIMITS, mode=mode)
        return engine, backend, metrics

    yield make
    pool.shutdown()


def _decodes(metrics: Metrics, model: str = "default") -> dict[str, float]:
    return {where: metrics.registry.get_sample_value("siglip_gateway_image_decodes_total",
                                                     {"where": where, "model": model})
            for where in ("gateway", "triton", "gateway_retry")}


MIXED = {
    "rgb jpeg": imagegen.photo_jpeg(640, 480, seed=3),
    "png": imagegen.png_rgba(),
    "exif 6 jpeg": imagegen.exif_jpeg(6),
    "cmyk jpeg": imagegen.cmyk_jpeg(),
    "gray jpeg": imagegen.gray_jpeg(),
    "progressive jpeg": imagegen.progressive_jpeg(),
    "exif 1 jpeg": imagegen.exif_jpeg(1),
}
FORWARDED = ("rgb jpeg", "exif 6 jpeg", "gray jpeg", "progressive jpeg", "exif 1 jpeg")


@pytest.mark.parametrize("name", list(MIXED))
def test_triton_decodable_takes_plain_jpegs_only(name):
    assert triton_decodable(MIXED[name], field="images[0]", limits=LIMITS) == (name in FORWARDED)


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty image data"),
    (imagegen.random_bytes(), "not a recognized image"),
    (imagegen.photo_jpeg(640, 480)[:40], "truncated or corrupt JPEG header"),
])
def test_triton_decodable_refuses_what_exact_refuses(data, message):
    with pytest.raises(InvalidInput, match=message) as err:
        triton_decodable(data, field="images[2]", limits=LIMITS)
    assert err.value.field == "images[2]"


def test_triton_decodable_checks_the_pixel_limit_from_the_header():
    data = imagegen.photo_jpeg(400, 300)
    with pytest.raises(InvalidInput, match="more than the limit of 100000"):
        triton_decodable(data, field="images[0]", limits=ImageLimits(max_pixels=100_000))


@aio
async def test_mixed_request_matches_exact_mode_in_order(make_engine):
    items = [EncodedImage(b) for b in MIXED.values()]
    items.insert(2, RawPixels(bytes(range(256)) * 3 * 4, 32, 32))
    exact, _, _ = make_engine(PreprocessMode.EXACT)
    triton, backend, metrics = make_engine(PreprocessMode.TRITON)
    want = await exact.embed(items, None)
    got = await triton.embed(items, None)
    np.testing.assert_array_equal(got, want)
    assert backend.encoded == [[MIXED[name] for name in FORWARDED]]  # bytes untouched, in order
    assert backend.pixel_rows == [len(items) - len(FORWARDED)]
    assert _decodes(metrics) == {"gateway": 3, "triton": 5, "gateway_retry": 0}


@aio
async def test_all_forwarded_makes_no_pixel_call(make_engine):
    engine, backend, _ = make_engine(PreprocessMode.TRITON)
    images = [EncodedImage(imagegen.photo_jpeg(320, 240, seed=s)) for s in range(3)]
    embeds = await engine.embed(images, None)
    assert embeds.shape == (3, backend.dim) and backend.pixel_rows == []
    assert len(backend.encoded) == 1 and len(backend.encoded[0]) == 3


@aio
async def test_rejected_by_triton_decodes_here_and_names_the_bad_field(make_engine):
    engine, backend, metrics = make_engine(PreprocessMode.TRITON)
    good = imagegen.photo_jpeg(320, 240, seed=5)
    truncated = imagegen.photo_jpeg(640, 480, seed=6)[:4000]  # header fine, scan data cut
    assert triton_decodable(truncated, field="x", limits=LIMITS)
    backend.reject = True
    with pytest.raises(InvalidInput, match="truncated JPEG") as err:
        await engine.embed([EncodedImage(good), "a text", EncodedImage(truncated)], None)
    assert err.value.field == "inputs[2].image"
    # Triton's refusal of a batch it could not decode is retried here, where it succeeds.
    exact, _, _ = make_engine(PreprocessMode.EXACT)
    got = await engine.embed([EncodedImage(good)], None)
    np.testing.assert_array_equal(got, await exact.embed([EncodedImage(good)], None))
    assert _decodes(metrics)["gateway_retry"] == 3


@aio
async def test_bad_image_fails_before_any_tower_call(make_engine):
    engine, backend, _ = make_engine(PreprocessMode.TRITON)
    with pytest.raises(InvalidInput) as err:
        await engine.classify_detailed([EncodedImage(imagegen.photo_jpeg(64, 64)),
                                        EncodedImage(imagegen.pdf_bytes())], ["a"], None, 1,
                                       None)
    assert err.value.field == "images[1]"
    assert backend.encoded == [] and backend.pixel_rows == []


# --- over the wire, real embedded Triton ------------------------------------------------------

@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateways(embedded_triton, tiny_checkpoint):
    from gateway.config import Settings
    from gateway.server import GatewayServer

    servers = {}
    for mode in ("exact", "triton"):
        settings = Settings.from_env({}, model=str(tiny_checkpoint), host="127.0.0.1", port=0,
                                     metrics_port=-1, http_port=-1, preprocess_mode=mode)
        servers[mode] = GatewayServer(settings, embedded_triton.grpc_url)
        await servers[mode].start()
    for server in servers.values():
        await server.wait_ready(60)
    yield servers
    await asyncio.gather(*(s.shutdown(grace_s=1) for s in servers.values()))


@aio
@pytest.mark.triton
async def test_triton_decoding_is_close_to_exact_over_the_wire(gateways):
    from gateway.client import SiglipClient

    images = [MIXED[name] for name in ("rgb jpeg", "cmyk jpeg", "gray jpeg", "exif 6 jpeg")]
    images += [imagegen.photo_jpeg(4000, 3000, seed=7), imagegen.png_rgba()]
    embeds = {}
    for mode, server in gateways.items():
        async with SiglipClient(f"127.0.0.1:{server.bound.port}") as client:
            embeds[mode] = await client.embed([*images, "a photo"])
    cosines = np.sum(embeds["triton"] * embeds["exact"], axis=1)
    # Forwarded JPEGs (0, 2, 3, 4) were decoded and resized by siglip_image_decode; the CMYK
    # JPEG, the PNG and the text (1, 5, 6) were computed exactly as in exact mode.
    assert cosines[[0, 2, 3, 4]].min() >= 0.999, cosines
    assert cosines[[1, 5, 6]].min() >= 0.99999, cosines
    decodes = _decodes(gateways["triton"].metrics, gateways["triton"].specs[0].name)
    assert decodes["triton"] == 4 and decodes["gateway"] == 2, decodes
