"""Two models in one gateway (``SIGLIP_MODEL=base=CKPT,large=CKPT``) on the fake Triton, which
answers for each model's suffixed towers: a request's ``model``, over gRPC (the client, the
CLI) and HTTP (JSON, OpenAI), reaches that model's Triton models; none reaches the default's;
the request metrics carry the model. Needs the gateway's wiring of several models
(gateway/server.py, gateway/api/servicer.py).
"""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import openai
import pytest
import pytest_asyncio

from gateway.cli import main
from gateway.contract import TEXT_MODEL, VISION_MODEL, triton_names
from tests.support.fake_triton import FakeTriton
from tests.support.gateway_harness import embedding_dim, running_gateway, small_rgb

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(60)]

BASE, LARGE = "base", "large"
REQUESTS = "siglip_gateway_requests_total"


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fake(tiny_checkpoint):
    """This module's fake Triton serves both models' suffixed towers."""
    async with FakeTriton(embedding_dim(tiny_checkpoint), served=(BASE, LARGE)) as fake:
        yield fake


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(tiny_checkpoint, fake):
    models = f"{BASE}={tiny_checkpoint},{LARGE}={tiny_checkpoint}"
    async with running_gateway(tiny_checkpoint, fake.url, model=models, http_port=0) as gw:
        yield gw


def _towers(fake) -> set[str]:
    return {record.model for record in fake.received}


def _expected(name: str) -> set[str]:
    names = triton_names([BASE, LARGE])[name]
    return {names.vision, names.text}


async def test_each_protocol_reaches_the_model_it_names(gateway, fake):
    assert _expected(LARGE) == {f"{VISION_MODEL}__{LARGE}", f"{TEXT_MODEL}__{LARGE}"}
    image = small_rgb(seed=1)
    for model, reached in ((None, BASE), (LARGE, LARGE), (BASE, BASE)):
        fake.reset_counters()
        async with gateway.client() as client:
            reply = await client.embed_reply([image, f"grpc {model}"], model=model)
            info = await client.model_info(model=model)
        assert reply.model == info.name == reached
        assert [m.name for m in info.models] == [BASE, LARGE]
        async with httpx.AsyncClient(base_url=gateway.http_url, timeout=20) as http:
            raw = base64.b64encode(small_rgb(seed=2).tobytes()).decode()
            body = {"images": [{"raw": {"rgb": raw, "width": 16, "height": 16}}],
                    "labels": [f"http {model}"]}
            if model is not None:
                body["model"] = model
            r = await http.post("/v1/classify", json=body)
        assert r.status_code == 200 and r.json()["model"] == reached
        assert _towers(fake) == _expected(reached), model


async def test_openai_and_unknown_models(gateway, fake):
    client = openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key="unused", max_retries=0)
    listed = await asyncio.to_thread(client.models.list)
    assert [m.id for m in listed.data] == [BASE, LARGE]
    fake.reset_counters()
    got = await asyncio.to_thread(client.embeddings.create, model=LARGE, input="openai text")
    assert got.model == LARGE and len(got.data[0].embedding) == fake.dim
    assert _towers(fake) == {f"{TEXT_MODEL}__{LARGE}"}
    with pytest.raises(openai.BadRequestError) as unknown:
        await asyncio.to_thread(client.embeddings.create, model="nope", input="x")
    assert unknown.value.param == "model"
    registry = gateway.server.metrics.registry
    assert registry.get_sample_value(REQUESTS, {
        "method": "OpenAIEmbeddings", "code": "OK", "protocol": "http", "model": LARGE}) >= 1
    assert registry.get_sample_value(REQUESTS, {
        "method": "OpenAIEmbeddings", "code": "INVALID_ARGUMENT", "protocol": "http",
        "model": BASE}) >= 1
    assert registry.get_sample_value(REQUESTS, {
        "method": "Embed", "code": "OK", "protocol": "grpc", "model": LARGE}) >= 1


async def test_cli_model_flag_over_the_wire(gateway, fake, capsys):
    fake.reset_counters()
    code = await asyncio.to_thread(main, ["embed", "--text", "cli text", "--model", LARGE,
                                          "--json", "--server", gateway.target])
    assert code == 0 and len(next(iter(json.loads(capsys.readouterr().out).values()))) == fake.dim
    assert _towers(fake) == {f"{TEXT_MODEL}__{LARGE}"}
    code = await asyncio.to_thread(main, ["info", "--server", gateway.target])
    info = json.loads(capsys.readouterr().out)
    assert code == 0 and info["name"] == BASE
    assert [m["name"] for m in info["models"]] == [BASE, LARGE]
