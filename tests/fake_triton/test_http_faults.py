"""The HTTP API's failures against the fake Triton, where timing is exact: bearer token (401),
TLS and mutual TLS, body over the limit (413, before the rest is read), overload (429),
Triton unavailable (503), the caller's deadline (504), and the drain on shutdown. The statuses
come from the one error table; the openai client surfaces them as its exception classes.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time

import grpc
import httpx
import openai
import pytest

from tests.support.fake_triton import VISION_MODEL
from tests.support.gateway_harness import (
    make_tls_material,
    running_gateway,
    small_rgb,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret-token-for-tests"
REQUESTS = "siglip_gateway_requests_total"


def _raw_image(seed: int = 0) -> dict:
    return {"raw": {"rgb": base64.b64encode(small_rgb(seed=seed).tobytes()).decode(),
                    "width": 16, "height": 16}}


def _classify(seed: int = 0) -> dict:
    return {"images": [_raw_image(seed)], "labels": ["cat", "dog"]}


def _openai(gw, **kwargs) -> openai.OpenAI:
    kwargs.setdefault("api_key", "unused")
    return openai.OpenAI(base_url=f"{gw.http_url}/v1", max_retries=0, **kwargs)


@pytest.fixture(autouse=True)
def _reset_fake(fake):
    fake.delay_s, fake.error, fake.ready = 0.0, None, True
    yield
    fake.delay_s, fake.error, fake.ready = 0.0, None, True


async def test_bearer_token_on_the_api_not_on_the_page(tiny_checkpoint, fake):
    async with running_gateway(tiny_checkpoint, fake.url, http_port=0, auth_token=TOKEN) as gw, \
            httpx.AsyncClient(base_url=gw.http_url, timeout=10) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Bearer {TOKEN}x"}):
            for method, path in (("POST", "/v1/classify"), ("GET", "/v1/models/info"),
                                 ("POST", "/v1/embeddings")):
                r = await http.request(method, path, json=_classify(), headers=headers)
                assert r.status_code == 401, (headers, path)
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.json()["error"]["code"] == "UNAUTHENTICATED"
                assert TOKEN not in r.text
        ok = await http.post("/v1/classify", json=_classify(),
                             headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200 and len(ok.json()["results"][0]["scores"]) == 2
        assert (await http.get("/openapi.json")).status_code == 200  # public
        with pytest.raises(openai.AuthenticationError) as info:
            await asyncio.to_thread(_openai(gw, api_key="wrong").embeddings.create,
                                    model=gw.settings.model, input="x")
        assert info.value.status_code == 401
        good = await asyncio.to_thread(_openai(gw, api_key=TOKEN).embeddings.create,
                                       model=gw.settings.model, input="x")
        assert len(good.data[0].embedding) == fake.dim
        counted = gw.server.metrics.registry.get_sample_value(REQUESTS, {
            "method": "Classify", "code": "UNAUTHENTICATED", "protocol": "http",
            "model": gw.server.metrics.models[0]})  # before any model is known: the default
        assert counted == 4


async def test_tls_and_mutual_tls(tiny_checkpoint, fake, tmp_path):
    tls = make_tls_material(tmp_path)
    client_cert, client_key = tmp_path / "client.pem", tmp_path / "client.key"
    client_cert.write_bytes(tls.client_cert)
    client_key.write_bytes(tls.client_key)
    trusting = ssl.create_default_context(cafile=str(tls.ca_cert_path))
    async with running_gateway(tiny_checkpoint, fake.url, http_port=0,
                               tls_cert=str(tls.server_cert_path),
                               tls_key=str(tls.server_key_path)) as gw:
        assert gw.http_url.startswith("https://")
        async with httpx.AsyncClient(verify=trusting, timeout=10) as http:
            r = await http.post(f"{gw.http_url}/v1/classify", json=_classify())
        assert r.status_code == 200
        async with httpx.AsyncClient(timeout=10) as http:  # the system CAs do not know ours
            with pytest.raises(httpx.ConnectError):
                await http.get(f"{gw.http_url}/v1/models/info")
        async with httpx.AsyncClient(timeout=10) as http:
            with pytest.raises(httpx.RemoteProtocolError):  # plain HTTP to a TLS port
                await http.get(f"http://127.0.0.1:{gw.http_port}/v1/models/info")

    async with running_gateway(tiny_checkpoint, fake.url, http_port=0,
                               tls_cert=str(tls.server_cert_path),
                               tls_key=str(tls.server_key_path),
                               tls_client_ca=str(tls.ca_cert_path)) as gw:
        async with httpx.AsyncClient(verify=trusting, timeout=10) as http:
            with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)):
                await http.get(f"{gw.http_url}/v1/models/info")
        with_cert = ssl.create_default_context(cafile=str(tls.ca_cert_path))
        with_cert.load_cert_chain(str(client_cert), str(client_key))
        async with httpx.AsyncClient(verify=with_cert, timeout=10) as http:
            r = await http.get(f"{gw.http_url}/v1/models/info")
        assert r.status_code == 200 and r.json()["embedding_dim"] == fake.dim


async def test_a_body_over_the_limit_is_refused_before_it_is_read(tiny_checkpoint, fake):
    async with running_gateway(tiny_checkpoint, fake.url, http_port=0,
                               max_message_bytes=64 * 1024) as gw, \
            httpx.AsyncClient(base_url=gw.http_url, timeout=10) as http:
        from gateway.http.app import body_limit

        limit = body_limit(64 * 1024)
        fake.reset_counters()
        image = {"data": base64.b64encode(b"\xff" * (limit // 4 * 3)).decode()}
        big = {"images": [image], "labels": ["cat"]}
        r = await http.post("/v1/classify", json=big)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        assert str(limit) in r.json()["error"]["message"]

        async def chunks():  # no Content-Length: counted while it arrives
            yield b'{"images": [{"data": "'
            for _ in range(limit // 4096 + 2):
                yield b"A" * 4096

        r = await http.post("/v1/classify", content=chunks())
        assert r.status_code == 413
        # Under the limit, the image's own checks answer (400), not the size limit.
        r = await http.post("/v1/classify", json={"images": [{"data": "AAAA"}],
                                                  "labels": ["cat"]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "images[0]"
        assert fake.calls[VISION_MODEL] == 0  # none of them reached Triton


async def test_overload_unavailable_and_deadline(tiny_checkpoint, fake):
    async with running_gateway(tiny_checkpoint, fake.url, http_port=0, max_in_flight=2,
                               triton_max_calls_in_flight=0) as gw, \
            httpx.AsyncClient(base_url=gw.http_url, timeout=20) as http:
        await http.post("/v1/classify", json=_classify())  # the labels' embeddings cached
        fake.delay_s = 1.0
        slow = [asyncio.ensure_future(http.post("/v1/classify", json=_classify(seed=i + 1)))
                for i in range(2)]
        await wait_until(lambda: gw.in_flight == 2, 5, what="two calls in flight")
        r = await http.post("/v1/classify", json=_classify(seed=9))
        assert r.status_code == 429 and r.json()["error"]["code"] == "RESOURCE_EXHAUSTED"
        with pytest.raises(openai.RateLimitError):
            await asyncio.to_thread(_openai(gw).embeddings.create,
                                    model=gw.settings.model, input="x")
        assert [s.status_code for s in await asyncio.gather(*slow)] == [200, 200]

        # The caller's deadline (X-Request-Timeout, seconds): 504 when it passes.
        start = time.monotonic()
        r = await http.post("/v1/classify", json=_classify(seed=10),
                            headers={"X-Request-Timeout": "0.3"})
        took = time.monotonic() - start
        assert r.status_code == 504 and r.json()["error"]["code"] == "DEADLINE_EXCEEDED"
        assert 0.25 < took < 0.9, took
        r = await http.post("/v1/classify", json=_classify(), headers={"X-Request-Timeout": "-1"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "x-request-timeout"

        fake.delay_s = 0.0
        fake.error = grpc.StatusCode.UNAVAILABLE
        r = await http.post("/v1/classify", json=_classify(seed=11))
        assert r.status_code == 503 and r.json()["error"]["code"] == "UNAVAILABLE"
        with pytest.raises(openai.InternalServerError) as info:
            await asyncio.to_thread(_openai(gw).embeddings.create, model=gw.settings.model,
                                    input="a text never seen")
        assert info.value.status_code == 503
        registry = gw.server.metrics.registry
        for code in ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "UNAVAILABLE"):
            assert registry.get_sample_value(REQUESTS, {
                "method": "Classify", "code": code, "protocol": "http",
                "model": gw.server.metrics.models[0]}) >= 1, code


async def test_shutdown_finishes_http_calls_in_flight_and_refuses_new_ones(tiny_checkpoint,
                                                                           fake):
    async with running_gateway(tiny_checkpoint, fake.url, http_port=0,
                               triton_max_calls_in_flight=0) as gw:
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=20) as http:
            await http.post("/v1/classify", json=_classify())
            fake.delay_s = 1.0
            in_flight = asyncio.ensure_future(http.post("/v1/classify", json=_classify(seed=5)))
            await wait_until(lambda: gw.in_flight == 1, 5, what="a call in flight")
            shutdown = asyncio.ensure_future(gw.server.shutdown(5.0))
            await asyncio.sleep(0.1)
            async with httpx.AsyncClient(base_url=gw.http_url, timeout=5) as fresh:
                with pytest.raises(httpx.ConnectError):  # no longer accepting
                    await fresh.get("/v1/models/info")
            r = await in_flight
            assert r.status_code == 200 and len(r.json()["results"][0]["scores"]) == 2
            start = time.monotonic()
            await shutdown
            assert time.monotonic() - start < 2.0  # drained, not cut at the grace period


async def test_keep_alive_calls_are_not_held_back_by_nagle(tiny_checkpoint, fake):
    """With Nagle's algorithm on the server's sockets, a response's body waits for the ACK of
    its headers, which the client delays (40 ms on Linux): every call on a kept-alive
    connection would take 40 ms more. The gRPC call is the yardstick, measured alongside."""
    async with running_gateway(tiny_checkpoint, fake.url, http_port=0) as gw, \
            httpx.AsyncClient(base_url=gw.http_url, timeout=10) as http, \
            gw.client() as grpc_client:
        body = {"inputs": [{"text": "the same text, cached after the first call"}]}
        await http.post("/v1/embed", json=body)
        http_s, grpc_s = [], []
        for _ in range(15):
            start = time.perf_counter()
            assert (await http.post("/v1/embed", json=body)).status_code == 200
            http_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            await grpc_client.embed([body["inputs"][0]["text"]], timeout=10)
            grpc_s.append(time.perf_counter() - start)
        http_median, grpc_median = sorted(http_s)[7], sorted(grpc_s)[7]
        assert http_median < grpc_median + 0.02, (http_median, grpc_median)
