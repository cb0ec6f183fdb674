"""Two models at once, over the wire: one real embedded Triton serving two tiny random
checkpoints of different shapes (base architecture at 16 px patches, and a patch-14 SigLIP at
another image size; the Triton tests/real_triton/test_triton_two_models.py uses), one gateway
in front. Each model passes the family parity test (scores
within 1e-5 of its own HF reference with input_ids only, raw pixels resized with its own
filter, its own shapes reported), and Triton's JPEG decoder path (SIGLIP_PREPROCESS_MODE=triton)
serves each model with its own decoder."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import pytest_asyncio
from PIL import Image

from gateway.core.model_meta import load_model_meta
from gateway.server import GatewayServer
from siglip.v1 import siglip_pb2 as pb
from siglip.v1 import siglip_pb2_grpc as pb_grpc
from tests.support import families, imagegen
from tests.support.gateway_harness import gateway_settings

# The first test waits for one Triton loading eight models (two of each kind).
pytestmark = [pytest.mark.triton, pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.timeout(600)]

NAMES = ("tiny", "p14")


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint, family_checkpoint):
    return {"tiny": tiny_checkpoint, "p14": family_checkpoint("siglip_p14")}


@pytest.fixture(scope="module")
def two_model_triton(two_model_triton_factory, checkpoints):
    return two_model_triton_factory({name: checkpoints[name] for name in NAMES})


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stubs(two_model_triton, checkpoints):
    """Per preprocessing mode, a gateway serving both models, and its stub."""
    models = ",".join(f"{name}={checkpoints[name]}" for name in NAMES)
    servers, channels, out = [], [], {}
    try:
        for mode in ("exact", "triton"):
            server = GatewayServer(gateway_settings(models, two_model_triton.grpc_url,
                                                    preprocess_mode=mode),
                                   two_model_triton.grpc_url)
            await server.start()
            servers.append(server)
            await server.wait_ready(60)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.bound.port}")
            channels.append(channel)
            out[mode] = (server, pb_grpc.SiglipServiceStub(channel))
        yield out
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            await server.shutdown(grace_s=1)


def _images() -> list[bytes]:
    return [imagegen.photo_jpeg(640, 480, seed=1), imagegen.png_rgba(), imagegen.exif_jpeg(6),
            imagegen.photo_jpeg(120, 300, seed=3)]


@pytest.mark.parametrize("name", NAMES)
async def test_each_model_matches_its_own_reference(stubs, checkpoints, name):
    _, stub = stubs["exact"]
    checkpoint = checkpoints[name]
    images, texts = _images(), families.TEXTS
    reply = await stub.Score(pb.ScoreRequest(model=name, images=[pb.Image(data=d) for d in images],
                                             texts=texts), timeout=120)
    assert reply.model == name
    logits, image_ref, text_ref = families.reference_scores(checkpoint, images, texts)
    got = np.array(reply.logits, dtype=np.float32).reshape(len(images), len(texts))
    np.testing.assert_allclose(got, logits, atol=1e-5, rtol=0, err_msg=name)
    # Raw pixels at another size are resized with this model's filter to its size.
    raw = np.asarray(Image.open(io.BytesIO(images[0])).convert("RGB"))
    embedded = await stub.Embed(pb.EmbedRequest(model=name, inputs=[
        pb.EmbedInput(image=pb.Image(raw=pb.RawImage(rgb=raw.tobytes(), width=raw.shape[1],
                                                     height=raw.shape[0]))),
        pb.EmbedInput(text=texts[1])]), timeout=120)
    vectors = [np.array(e.values) for e in embedded.embeddings]
    normed = lambda v: v / np.linalg.norm(v)  # noqa: E731
    assert float(vectors[0] @ normed(image_ref[0])) >= 0.99999
    assert float(vectors[1] @ normed(text_ref[1])) >= 0.99999
    info = await stub.GetModelInfo(pb.GetModelInfoRequest(model=name), timeout=10)
    meta = load_model_meta(str(checkpoint))
    assert (info.name, info.image_size, info.text_length, info.embedding_dim) == (
        name, meta.image_size, meta.text_length, meta.embedding_dim)
    assert [m.name for m in info.models] == list(NAMES)


async def test_the_two_models_really_differ(stubs, checkpoints):
    """Not one model answering for both: their image sizes differ, and so do their scores."""
    sizes = {name: load_model_meta(str(checkpoints[name])).image_size for name in NAMES}
    assert sizes["tiny"] != sizes["p14"], sizes
    _, stub = stubs["exact"]
    request = dict(images=[pb.Image(data=_images()[0])], texts=families.TEXTS[:2])
    a, b = [await stub.Score(pb.ScoreRequest(model=name, **request), timeout=60)
            for name in NAMES]
    assert not np.allclose(a.logits, b.logits, atol=1e-3)


@pytest.mark.parametrize("name", NAMES)
async def test_tritons_decoder_serves_each_model(stubs, name):
    """triton mode: plain JPEGs go to this model's own decoder and ensemble; the embeddings
    match the exact mode's (the decoders resize with the model's size and filter)."""
    jpegs = [imagegen.photo_jpeg(640, 480, seed=11), imagegen.photo_jpeg(90, 200, seed=12)]
    request = pb.EmbedRequest(model=name, inputs=[pb.EmbedInput(image=pb.Image(data=d))
                                                  for d in jpegs])
    server, triton_stub = stubs["triton"]
    _, exact_stub = stubs["exact"]
    by_triton = await triton_stub.Embed(request, timeout=120)
    exact = await exact_stub.Embed(request, timeout=120)
    for t, e in zip(by_triton.embeddings, exact.embeddings, strict=True):
        assert float(np.dot(t.values, e.values)) >= 0.999
    decoded = server.metrics.registry.get_sample_value(
        "siglip_gateway_image_decodes_total", {"where": "triton", "model": name})
    assert decoded == len(jpegs)
