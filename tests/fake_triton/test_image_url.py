"""Images by URL over the wire (gRPC, fake Triton): the allowed path gives what the same bytes
give, every refusal is its status with the field named, and refused addresses receive nothing.

The image servers are local and record what they receive. ``images.test`` stands for an
internal image store (listed by exact name, so its loopback address is allowed); names under
the ``*.test`` wildcard and the ``http://127.0.0.2:PORT/`` prefix may only reach public
addresses, and the injected resolver points them at the second server on 127.0.0.2, which
must never be contacted.
"""

from __future__ import annotations

import contextlib
import time

import grpc
import numpy as np
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.server import GatewayServer
from siglip.v1 import siglip_pb2 as pb
from siglip.v1 import siglip_pb2_grpc as pb_grpc
from tests.support import http_servers as hs
from tests.support import imagegen
from tests.support.fake_triton import VISION_MODEL
from tests.support.gateway_harness import (
    MiB,
    PeakRSS,
    gateway_settings,
    health_status,
    small_raw_image,
)
from tests.support.http_servers import FakeResolver, RecordingServer

pytestmark = pytest.mark.timeout(90)

PHOTO = imagegen.photo_jpeg(320, 240, seed=3)
BOMB = imagegen.png_bomb(10_000)  # 10000x10000 declared in a few KB
MAX_MESSAGE_BYTES = 4 * MiB


def _routes(private_url: str) -> dict[str, hs.Handler]:
    return {
        "/photo.jpg": hs.image(PHOTO, "image/jpeg"),
        "/bomb.png": hs.image(BOMB, "image/png"),
        "/page.html": hs.image(b"<html></html>", "text/html"),
        "/huge": hs.endless(b"\0" * 65536, limit=256 * MiB),
        "/drip": hs.endless(b"\xff", declared=100_000, interval_s=0.05),
        "/down": hs.status(503),
        "/to-private": hs.redirect(private_url + "/latest/meta-data/"),
        "/to-evil": hs.redirect(private_url.replace("127.0.0.2", "evil.test") + "/admin"),
        "/to-photo": hs.redirect("/photo.jpg", 308),
    }


def _router(routes: dict[str, hs.Handler]) -> hs.Handler:
    async def handle(request: hs.Received, reply: hs.Reply) -> None:
        await routes.get(request.path, hs.status(404))(request, reply)
    return handle


@contextlib.asynccontextmanager
async def _gateway(checkpoint, triton_url, resolver=None, **settings):
    server = GatewayServer(gateway_settings(checkpoint, triton_url, **settings), triton_url,
                           url_resolver=resolver)
    bound = await server.start()
    try:
        await server.wait_ready(15)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{bound.port}") as channel:
            yield server, channel
    finally:
        await server.shutdown(0.5)


@pytest_asyncio.fixture(scope="module")
async def env(tiny_checkpoint, fake):
    routes: dict[str, hs.Handler] = {}
    async with RecordingServer(_router(routes), host="127.0.0.2") as private, \
            RecordingServer(_router(routes)) as store:
        routes.update(_routes(private.url()))
        resolver = FakeResolver({"images.test": ["127.0.0.1"], "evil.test": ["127.0.0.2"]})
        allow = (f"images.test:{store.port}, *.test:{private.port}, "
                 f"http://127.0.0.2:{private.port}/")
        async with _gateway(tiny_checkpoint, fake.url, resolver, image_url_allow=allow,
                            image_url_timeout_s=1.0, image_url_max_bytes=MiB,
                            max_message_bytes=MAX_MESSAGE_BYTES) as (server, channel):
            yield {"store": store, "private": private, "server": server, "channel": channel,
                   "url": lambda path: f"http://images.test:{store.port}{path}"}


def _url_image(url: str) -> pb.Image:
    return pb.Image(url=url)


def _assert_status(exc: grpc.aio.AioRpcError, code: grpc.StatusCode, field: str) -> None:
    assert exc.code() == code, (exc.code(), exc.details())
    assert exc.details().startswith(f"{field}: "), exc.details()
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        status = rpc_status.from_call(exc)
        assert status is not None
        fields = []
        for detail in status.details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                fields.extend(v.field for v in bad.field_violations)
        assert fields == [field], status


async def test_url_image_embeds_as_its_bytes(env, fake):
    stub = pb_grpc.SiglipServiceStub(env["channel"])
    response = await stub.Embed(pb.EmbedRequest(inputs=[
        pb.EmbedInput(image=pb.Image(data=PHOTO)),
        pb.EmbedInput(image=_url_image(env["url"]("/photo.jpg"))),
        pb.EmbedInput(image=_url_image(env["url"]("/to-photo"))),  # through a redirect
    ]), timeout=10)
    by_bytes, by_url, redirected = (np.array(e.values) for e in response.embeddings)
    np.testing.assert_array_equal(by_url, by_bytes)
    np.testing.assert_array_equal(redirected, by_bytes)
    classify = await stub.Classify(pb.ClassifyRequest(
        images=[_url_image(env["url"]("/photo.jpg")), pb.Image(data=PHOTO)],
        labels=["cat", "dog"]), timeout=10)
    assert classify.results[0] == classify.results[1]
    registry = env["server"].metrics.registry
    assert registry.get_sample_value("siglip_gateway_image_url_fetches_total",
                                     {"outcome": "ok"}) == 3  # a redirect is one fetch
    assert registry.get_sample_value("siglip_gateway_stage_duration_seconds_count",
                                     {"stage": "fetch",
                                      "model": env["server"].specs[0].name}) >= 2
    assert env["private"].received_nothing


INVALID = {  # path or URL -> the words of the message (INVALID_ARGUMENT, images[1].url)
    "http://unlisted.example/x.jpg": "host not allowed: unlisted.example",
    "evil": "evil.test resolves to 127.0.0.2, which is a loopback address",
    "private literal": "127.0.0.2 is a loopback address",
    "http://2130706433/x.jpg": "non-standard form",
    "http://u:p@images.test/x.jpg": "user information",
    "/to-private": "redirect refused: 127.0.0.2 is a loopback address",
    "/to-evil": "redirect refused: evil.test resolves to 127.0.0.2",
    "/page.html": "Content-Type 'text/html'",
    "/huge": f"more than the limit of {MiB} bytes",
}
REMOTE = {  # FAILED_PRECONDITION: the remote did not deliver
    "/down": "the remote answered HTTP 503",
    "/missing.jpg": "the remote answered HTTP 404",
    "/drip": "no complete answer within 1 s",
}


def _case_url(env, case: str) -> str:
    private = env["private"]
    if case == "evil":
        return private.url("/x.jpg", "evil.test")
    if case == "private literal":
        return private.url("/x.jpg")
    return env["url"](case) if case.startswith("/") else case


@pytest.mark.parametrize("case", list(INVALID) + list(REMOTE))
async def test_refused_and_failed_urls_name_the_field(env, fake, case):
    stub = pb_grpc.SiglipServiceStub(env["channel"])
    vision_calls = fake.calls[VISION_MODEL]
    request = pb.ClassifyRequest(images=[small_raw_image(), _url_image(_case_url(env, case))],
                                 labels=["cat"])
    start = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Classify(request, timeout=10)
    elapsed = time.monotonic() - start
    code = (grpc.StatusCode.FAILED_PRECONDITION if case in REMOTE
            else grpc.StatusCode.INVALID_ARGUMENT)
    _assert_status(info.value, code, "images[1].url")
    assert (INVALID | REMOTE)[case] in info.value.details(), info.value.details()
    assert elapsed < 3.0, elapsed  # bounded by the 1 s fetch timeout at worst
    assert fake.calls[VISION_MODEL] == vision_calls  # nothing reached Triton
    assert env["private"].received_nothing
    assert await health_status(env["channel"]) == "SERVING"


async def test_bomb_behind_a_url_is_refused_from_its_header(env, fake):
    stub = pb_grpc.SiglipServiceStub(env["channel"])
    vision_calls = fake.calls[VISION_MODEL]
    with PeakRSS() as rss:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Embed(pb.EmbedRequest(inputs=[
                pb.EmbedInput(text="a cat"),
                pb.EmbedInput(image=_url_image(env["url"]("/bomb.png")))]), timeout=10)
    # The fetched bytes are an encoded image like any other: the pixel limit from the header.
    _assert_status(info.value, grpc.StatusCode.INVALID_ARGUMENT, "inputs[1].image")
    assert "10000x10000 = 100000000 pixels, more than the limit" in info.value.details()
    assert rss.growth < 100 * MiB, rss.growth / MiB  # 300 MB had it been decoded
    assert fake.calls[VISION_MODEL] == vision_calls


async def test_callers_deadline_bounds_the_fetch(env):
    stub = pb_grpc.SiglipServiceStub(env["channel"])
    start = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Classify(pb.ClassifyRequest(images=[_url_image(env["url"]("/drip"))],
                                               labels=["cat"]), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - start < 1.0


async def test_urls_are_off_by_default(tiny_checkpoint, fake):
    async with RecordingServer(hs.image(PHOTO, "image/jpeg")) as server, \
            _gateway(tiny_checkpoint, fake.url) as (gateway, channel):
        assert gateway.fetcher is None
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await pb_grpc.SiglipServiceStub(channel).Score(pb.ScoreRequest(
                images=[small_raw_image(), _url_image(server.url("/x.jpg"))], texts=["a"]),
                timeout=10)
    _assert_status(info.value, grpc.StatusCode.INVALID_ARGUMENT, "images[1].url")
    assert "fetching images by URL is off (SIGLIP_IMAGE_URL_ALLOW)" in info.value.details()
    assert server.received_nothing
