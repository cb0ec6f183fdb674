"""Bearer-token auth, TLS and mutual TLS, with certificates made at test time."""

from __future__ import annotations

import grpc
import pytest

from gateway.client import SiglipClient
from siglip.v1 import siglip_pb2 as pb
from tests.support.gateway_harness import (
    health_status,
    make_tls_material,
    running_gateway,
    small_rgb,
)

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_tls_material(tmp_path_factory.mktemp("tls"))


async def _classify(client: SiglipClient) -> int:
    results = await client.classify([small_rgb()], ["cat", "dog"], timeout=5)
    return len(results[0])


async def test_bearer_token(tiny_checkpoint, fake):
    async with running_gateway(tiny_checkpoint, fake.url, auth_token=TOKEN) as gw:
        for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
            async with gw.client(token=token) as client:
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await _classify(client)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED, token
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await client.model_info(timeout=5)
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                # Streaming RPCs are guarded too.
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    call = client.stub.EmbedStream(
                        iter([pb.EmbedStreamRequest(inputs=[pb.EmbedInput(text="a")])]),
                        metadata=(("authorization", f"Bearer {token}"),) if token else None,
                        timeout=5)
                    async for _ in call:
                        pass
                assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
                # Probes carry no token: health answers regardless.
                assert await client.health("") == "SERVING"
                assert await client.health("liveness") == "SERVING"
        async with gw.client(token=TOKEN) as client:
            assert await _classify(client) == 2
            assert (await client.model_info(timeout=5)).embedding_dim == fake.dim
        # The token is never echoed back in a rejection.
        async with gw.client(token="wrong") as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _classify(client)
            assert TOKEN not in (info.value.details() or "")


async def test_tls_server_only(tiny_checkpoint, fake, tls):
    async with running_gateway(tiny_checkpoint, fake.url, tls_cert=str(tls.server_cert_path),
                               tls_key=str(tls.server_key_path)) as gw:
        async with gw.client(tls=tls.client_tls(with_certificate=False)) as client:
            assert await _classify(client) == 2
        # A plaintext client cannot talk to a TLS port.
        async with grpc.aio.insecure_channel(gw.target) as channel:
            assert await health_status(channel, "", timeout_s=2) == "UNAVAILABLE"


async def test_mutual_tls(tiny_checkpoint, fake, tls):
    async with running_gateway(tiny_checkpoint, fake.url, tls_cert=str(tls.server_cert_path),
                               tls_key=str(tls.server_key_path),
                               tls_client_ca=str(tls.ca_cert_path)) as gw:
        async with gw.client(tls=tls.client_tls(with_certificate=True)) as client:
            assert await _classify(client) == 2
            assert await client.health("") == "SERVING"
        # Without a client certificate the handshake fails: no call, not even health.
        async with gw.client(tls=tls.client_tls(with_certificate=False)) as client:
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _classify(client)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.health("", timeout=2)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        async with grpc.aio.insecure_channel(gw.target) as channel:
            assert await health_status(channel, "", timeout_s=2) == "UNAVAILABLE"
