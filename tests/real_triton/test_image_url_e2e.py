"""Images by URL against the real embedded Triton: a fetched image scores as its bytes do.

The image store is a local recording server under a name listed exactly in
SIGLIP_IMAGE_URL_ALLOW (so its loopback address is allowed) and an injected resolver.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytest_asyncio

from gateway.client import SiglipClient
from gateway.config import Settings
from gateway.server import GatewayServer
from siglip.v1 import siglip_pb2 as pb
from tests.support import http_servers as hs
from tests.support import imagegen
from tests.support.http_servers import FakeResolver, RecordingServer

pytestmark = [pytest.mark.triton, pytest.mark.asyncio(loop_scope="session")]

PHOTO = imagegen.photo_jpeg(640, 480, seed=1)
EXIF = imagegen.exif_jpeg(6)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def env(embedded_triton, tiny_checkpoint):
    async def route(request: hs.Received, reply: hs.Reply) -> None:
        data = {"/photo.jpg": PHOTO, "/exif6.jpg": EXIF}[request.path]
        await hs.image(data, "image/jpeg")(request, reply)

    async with RecordingServer(route) as store:
        settings = Settings.from_env({}, model=str(tiny_checkpoint), host="127.0.0.1", port=0,
                                     metrics_port=-1, image_url_allow=f"images.test:{store.port}")
        server = GatewayServer(settings, embedded_triton.grpc_url,
                               url_resolver=FakeResolver({"images.test": ["127.0.0.1"]}))
        await server.start()
        try:
            await server.wait_ready(60)
            async with SiglipClient(f"127.0.0.1:{server.bound.port}") as client:
                yield client, store
        finally:
            await server.shutdown(grace_s=1)


async def test_url_images_embed_and_classify_as_their_bytes(env):
    client, store = env
    urls = [pb.EmbedInput(image=pb.Image(url=f"http://images.test:{store.port}{path}"))
            for path in ("/photo.jpg", "/exif6.jpg")]
    by_bytes = [pb.EmbedInput(image=pb.Image(data=data)) for data in (PHOTO, EXIF)]
    response = await client.stub.Embed(pb.EmbedRequest(inputs=[*urls, *by_bytes]), timeout=60)
    embeds = np.array([e.values for e in response.embeddings], dtype=np.float32)
    for i in range(2):
        assert float(embeds[i] @ embeds[i + 2]) >= 0.99999, i
    labels = ["a cat", "a dog", "a car"]
    by_url = await client.stub.Classify(pb.ClassifyRequest(images=[urls[0].image],
                                                           labels=labels), timeout=60)
    direct = await client.classify([PHOTO], labels, timeout=60)
    for got, want in zip(by_url.results[0].scores, direct[0], strict=True):
        assert got.label == want.label
        assert abs(got.logit - want.logit) <= 1e-5
    assert [r.path for r in store.requests] == ["/photo.jpg", "/exif6.jpg", "/photo.jpg"]
