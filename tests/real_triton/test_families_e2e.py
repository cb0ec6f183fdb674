"""Over the wire, per checkpoint family: a real embedded Triton serving a tiny random checkpoint
of the family, the gateway in front, against the HF reference (tests/support/families.py):
scores within 1e-5 with input_ids only, the checkpoint's shapes reported, and Triton's JPEG
decoder following the checkpoint's size and resample filter.

One Triton per family (module-scoped, parametrized: pytest runs a family's tests together), so
each family costs one Triton start; keep the tests per family few.
"""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from gateway.client import SiglipClient
from gateway.config import Settings
from gateway.core.images import ImageLimits, preprocess_encoded
from gateway.core.model_meta import load_model_meta
from gateway.server import GatewayServer
from tests.support import families, imagegen

pytestmark = [pytest.mark.triton, pytest.mark.asyncio(loop_scope="session")]


def _images() -> list[bytes]:
    return [imagegen.photo_jpeg(640, 480, seed=1), imagegen.png_rgba(), imagegen.exif_jpeg(6),
            imagegen.cmyk_jpeg(), imagegen.photo_jpeg(120, 300, seed=3)]


@pytest.fixture(scope="module", params=families.SERVED)
def family(request, family_checkpoint):
    return request.param, family_checkpoint(request.param)


@pytest.fixture(scope="module")
def family_triton(family):
    from gateway.embedded_triton.launcher import EmbeddedTriton

    _, checkpoint = family
    triton = EmbeddedTriton(model=str(checkpoint), startup_timeout_s=270,
                            logger=logging.getLogger("tests.family_triton"))
    triton.start()
    try:
        yield triton
    finally:
        triton.stop(grace_s=5)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def family_client(family, family_triton):
    _, checkpoint = family
    settings = Settings.from_env({}, model=str(checkpoint), host="127.0.0.1", port=0,
                                 metrics_port=-1)
    server = GatewayServer(settings, family_triton.grpc_url)
    await server.start()
    await server.wait_ready(60)
    try:
        async with SiglipClient(f"127.0.0.1:{server.bound.port}") as client:
            yield client
    finally:
        await server.shutdown(grace_s=1)


async def test_scores_and_shapes_match_the_reference(family, family_client):
    name, checkpoint = family
    images, texts = _images(), families.TEXTS
    result = await family_client.score(images, texts, timeout=120)
    logits, image_ref, text_ref = families.reference_scores(checkpoint, images, texts)
    np.testing.assert_allclose(result.logits, logits, atol=1e-5, rtol=0, err_msg=name)
    np.testing.assert_allclose(result.probabilities, 1 / (1 + np.exp(-logits)), atol=1e-5,
                               rtol=0, err_msg=name)
    # Raw pixels at another size are resized with the checkpoint's filter like an image file.
    raw = np.asarray(Image.open(io.BytesIO(images[0])).convert("RGB"))
    embeds = await family_client.embed([raw, texts[1]])
    normed = lambda v: v / np.linalg.norm(v)  # noqa: E731
    assert float(embeds[0] @ normed(image_ref[0])) >= 0.99999
    assert float(embeds[1] @ normed(text_ref[1])) >= 0.99999

    info = await family_client.model_info()
    meta = load_model_meta(str(checkpoint))
    assert (info.image_size, info.text_length, info.embedding_dim) == (
        meta.image_size, meta.text_length, meta.embedding_dim)


async def test_tritons_decoder_follows_the_checkpoint(family, family_triton):
    """siglip_image_decode resizes to the checkpoint's size with its filter: nearer to the
    gateway's exact pixels with that filter than with the other one."""
    import tritonclient.grpc.aio as aioclient

    _, checkpoint = family
    meta = load_model_meta(str(checkpoint))
    other = (Image.Resampling.BICUBIC if meta.image.resample == Image.Resampling.BILINEAR
             else Image.Resampling.BILINEAR)
    images = [imagegen.photo_jpeg(640, 480, seed=4), imagegen.photo_jpeg(100, 150, seed=5)]
    client = aioclient.InferenceServerClient(family_triton.grpc_url)
    try:
        tensor = aioclient.InferInput("images", [len(images), 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[b] for b in images], dtype=np.object_))
        result = await client.infer("siglip_image_decode", [tensor], client_timeout=60)
        decoded = result.as_numpy("pixels")
    finally:
        await client.close()
    size = meta.image_size
    assert decoded.shape == (len(images), size, size, 3)
    for i, data in enumerate(images):
        errors = {}
        for resample in (meta.image.resample, other):
            exact = preprocess_encoded(data, field="-", limits=ImageLimits(
                size=size, resample=resample))
            errors[resample] = np.abs(decoded[i].astype(float) - exact).mean()
        assert errors[meta.image.resample] < 1.0, errors
        assert errors[meta.image.resample] < errors[other], errors
