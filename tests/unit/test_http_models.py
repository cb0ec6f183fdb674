"""The HTTP API with two served models (tests/support/two_models.py): each request's ``model``
reaches that model's engine and backend, none means the default, an unknown one is a 400
naming ``model``; GetModelInfo lists both; OpenAI's ``GET /v1/models`` (through the openai
client) lists ids that ``POST /v1/embeddings`` takes; the request metrics carry the model.

Over a real socket (gateway/http/server.py), on in-process backends: no Triton needed.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import numpy as np
import openai
import pytest
import pytest_asyncio

from siglip.v1 import siglip_pb2 as pb
from tests.support.gateway_harness import small_rgb
from tests.support.two_models import (
    BASE,
    LARGE,
    LARGE_CHECKPOINT,
    TwoModels,
    http_serving,
    two_models,
)

pytestmark = pytest.mark.timeout(60)

REQUESTS = "siglip_gateway_requests_total"


@dataclass
class Running:
    url: str
    models: TwoModels

    def counted(self, method: str, code: str, model: str) -> float:
        value = self.models.metrics.registry.get_sample_value(
            REQUESTS, {"method": method, "code": code, "protocol": "http", "model": model})
        return value or 0.0

    def rows(self) -> dict[str, int]:
        return {name: b.image_rows + b.text_rows for name, b in self.models.backends.items()}


@pytest_asyncio.fixture(scope="module")
async def api(tiny_checkpoint) -> AsyncIterator[Running]:
    with two_models(tiny_checkpoint) as models:
        async with http_serving(models) as url:
            yield Running(url, models)


def _image(seed: int = 0) -> dict:
    return {"raw": {"rgb": base64.b64encode(small_rgb(seed=seed).tobytes()).decode(),
                    "width": 16, "height": 16}}


def _with_model(body: dict, model: str | None) -> dict:
    return body if model is None else {**body, "model": model}


# (what the request says, the model it must reach): absent and empty mean the default; a
# model is also known by its configured checkpoint and that checkpoint's last path part.
SELECTIONS = [(None, BASE), ("", BASE), (BASE, BASE), (LARGE, LARGE),
              (LARGE_CHECKPOINT, LARGE), (LARGE_CHECKPOINT.rsplit("/", 1)[1], LARGE)]


@pytest.mark.parametrize(("model", "reached"), SELECTIONS)
async def test_json_routes_reach_the_model_they_name(api, model, reached):
    other = LARGE if reached == BASE else BASE
    before = api.rows()
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as http:
        embed = await http.post("/v1/embed", json=_with_model(
            {"inputs": [{"image": _image(1)}, {"text": f"a text for {model}"}]}, model))
        classify = await http.post("/v1/classify", json=_with_model(
            {"images": [_image(2)], "labels": ["cat", "dog"]}, model))
        score = await http.post("/v1/score", json=_with_model(
            {"images": [_image(3)], "texts": ["a cat"]}, model))
    for r in (embed, classify, score):
        assert r.status_code == 200, r.text
        assert r.json()["model"] == reached
    rows = [e["values"] for e in embed.json()["embeddings"]]
    assert [len(v) for v in rows] == [api.models.dim(reached)] * 2
    after = api.rows()
    assert after[other] == before[other]  # nothing went to the other model's backend
    assert after[reached] > before[reached]
    # The backends tag their embeddings (base +2, large -5 before normalizing): the sign tells.
    assert np.sign(rows[0][0]) == np.sign(api.models.backends[reached].tag)


async def test_the_models_answer_differently(api):
    body = {"images": [_image(4)], "texts": ["a dog"]}
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as http:
        base = (await http.post("/v1/score", json={**body, "model": BASE})).json()
        large = (await http.post("/v1/score", json={**body, "model": LARGE})).json()
    assert base["logits"] != large["logits"]


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/embed", "/v1/score"])
@pytest.mark.parametrize(("model", "message"), [("nope", "unknown model 'nope'"),
                                                (7, "must be a string")])
async def test_an_unknown_model_is_a_400_naming_model(api, path, model, message):
    body = {"/v1/classify": {"images": [_image()], "labels": ["cat"]},
            "/v1/embed": {"inputs": [{"text": "x"}]},
            "/v1/score": {"images": [_image()], "texts": ["x"]}}[path]
    method = {"/v1/classify": "Classify", "/v1/embed": "Embed", "/v1/score": "Score"}[path]
    before, counted = api.rows(), api.counted(method, "INVALID_ARGUMENT", BASE)
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as http:
        r = await http.post(path, json={**body, "model": model})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "model" and error["code"] == "INVALID_ARGUMENT"
    assert message in error["message"]
    if isinstance(model, str):
        assert f"served: {BASE}, {LARGE}" in error["message"]
    assert api.rows() == before
    # Counted under the default model: the request named none that is served.
    assert api.counted(method, "INVALID_ARGUMENT", BASE) == counted + 1


async def test_model_info_lists_both_and_selects_the_top_one(api):
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as http:
        default = (await http.get("/v1/models/info")).json()
        large = (await http.get("/v1/models/info", params={"model": LARGE})).json()
        by_id = (await http.get("/v1/models/info", params={"model": LARGE_CHECKPOINT})).json()
        unknown = await http.get("/v1/models/info", params={"model": "nope"})
    assert default["name"] == BASE and default["model_id"] == str(api.models.checkpoint)
    assert [m["name"] for m in default["models"]] == [BASE, LARGE]
    assert [m["embedding_dim"] for m in default["models"]] == [api.models.dim(BASE),
                                                               api.models.dim(LARGE)]
    assert default["models"] == large["models"]
    assert large["name"] == LARGE and large["model_id"] == LARGE_CHECKPOINT
    assert large["embedding_dim"] == api.models.dim(LARGE)
    # The top-level fields are the selected model's entry, field for field.
    assert {k: v for k, v in large.items() if k != "models"} == large["models"][1]
    assert by_id == large
    assert set(default) == {f.name for f in pb.GetModelInfoResponse.DESCRIPTOR.fields}
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "model"


def _openai(api: Running) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.url}/v1", api_key="unused", max_retries=0)


async def test_openai_models_list_gives_ids_embeddings_takes(api):
    client = _openai(api)
    info_calls = api.counted("GetModelInfo", "OK", BASE)
    listed = await asyncio.to_thread(client.models.list)
    ids = [m.id for m in listed.data]
    assert api.counted("GetModelInfo", "OK", BASE) == info_calls + 1  # the list counts as info
    assert ids == [BASE, LARGE]
    assert all(m.object == "model" and isinstance(m.created, int) and m.created > 0
               for m in listed.data)
    owners = {m.id: m.owned_by for m in listed.data}
    assert owners == {BASE: "siglip-gateway", LARGE: "google"}  # a local dir; a hub id
    before = api.rows()
    for model_id in ids:
        got = await asyncio.to_thread(client.embeddings.create, model=model_id,
                                      input=["a photo", "a drawing"])
        assert got.model == model_id
        assert [len(d.embedding) for d in got.data] == [api.models.dim(model_id)] * 2
    after = api.rows()
    assert all(after[name] > before[name] for name in ids)


async def test_openai_embeddings_resolves_model_through_the_served_models(api):
    client = _openai(api)
    hub = await asyncio.to_thread(client.embeddings.create, model=LARGE_CHECKPOINT, input="x",
                                  dimensions=api.models.dim(LARGE))
    assert hub.model == LARGE_CHECKPOINT  # echoed as sent, as OpenAI does
    assert len(hub.data[0].embedding) == api.models.dim(LARGE)
    with pytest.raises(openai.BadRequestError) as unknown:
        await asyncio.to_thread(client.embeddings.create, model="nope", input="x")
    assert unknown.value.param == "model"
    assert f"served: {BASE}, {LARGE}" in unknown.value.message
    # ``dimensions`` is checked against the model the request names.
    with pytest.raises(openai.BadRequestError) as wrong_size:
        await asyncio.to_thread(client.embeddings.create, model=BASE, input="x",
                                dimensions=api.models.dim(LARGE))
    assert wrong_size.value.param == "dimensions"


async def test_request_metrics_carry_the_model(api):
    ok = {name: api.counted("Embed", "OK", name) for name in (BASE, LARGE)}
    bad_large = api.counted("Embed", "INVALID_ARGUMENT", LARGE)
    bad_base = api.counted("Embed", "INVALID_ARGUMENT", BASE)
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as http:
        for _ in range(2):
            assert (await http.post("/v1/embed", json={"inputs": [{"text": "m"}],
                                                       "model": LARGE})).status_code == 200
        assert (await http.post("/v1/embed", json={"inputs": [{"text": "m"}]})).status_code == 200
        # A bad field of a request to ``large``: counted under large, the model it named.
        r = await http.post("/v1/embed", json={"inputs": [{"text": "m"}], "model": LARGE,
                                               "dtype": "FLOAT64"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "dtype"
        # Not JSON: no model is known, so the default's.
        r = await http.post("/v1/embed", content=b"{not json", headers={
            "content-type": "application/json"})
        assert r.status_code == 400
    assert api.counted("Embed", "OK", LARGE) == ok[LARGE] + 2
    assert api.counted("Embed", "OK", BASE) == ok[BASE] + 1
    assert api.counted("Embed", "INVALID_ARGUMENT", LARGE) == bad_large + 1
    assert api.counted("Embed", "INVALID_ARGUMENT", BASE) == bad_base + 1
    latency = api.models.metrics.registry.get_sample_value(
        "siglip_gateway_request_duration_seconds_count",
        {"method": "Embed", "protocol": "http", "model": LARGE})
    assert latency is not None and latency >= 3


async def test_openapi_document_has_the_model_fields(api):
    async with httpx.AsyncClient(base_url=api.url, timeout=20) as http:
        spec = (await http.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    for name in ("ClassifyRequest", "EmbedRequest", "ScoreRequest", "ClassifyResponse",
                 "EmbedResponse", "ScoreResponse"):
        assert schemas[name]["properties"]["model"] == {"type": "string"}, name
    assert set(schemas["GetModelInfoResponse"]["properties"]) >= {"name", "models"}
    info = spec["paths"]["/v1/models/info"]["get"]
    assert [p["name"] for p in info["parameters"]] == ["model"]
    assert "requestBody" not in info
    listed = spec["paths"]["/v1/models"]["get"]["responses"]["200"]
    assert listed["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ModelsList"}
