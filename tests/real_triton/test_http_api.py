"""The HTTP/JSON and OpenAI-compatible API over the wire, against the real embedded Triton.

Every answer is compared with what gRPC answers for the same inputs from the same server:
the official openai client (texts and an image, float and base64, usage, errors surfaced as
its exception classes), curl posting a Classify, the OpenAPI document and GetModelInfo.
"""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import openai
import pytest
import pytest_asyncio

from gateway.client import SiglipClient
from gateway.core.model_meta import load_model_meta
from gateway.core.text import TextTokenizer
from siglip.v1 import siglip_pb2 as pb
from tests.support import imagegen
from tests.support.binaries import require_binary
from tests.support.gateway_harness import running_gateway

pytestmark = [pytest.mark.triton, pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.timeout(120)]

TEXTS = ["a photo of a cat", "naïve café, déjà vu", "mountain " * 80, ""]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(embedded_triton, tiny_checkpoint):
    async with running_gateway(tiny_checkpoint, embedded_triton.grpc_url, http_port=0,
                               ready_timeout_s=60) as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="session")
async def grpc_client(gateway):
    async with SiglipClient(gateway.target) as client:
        yield client


def _openai(gateway, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.http_url}/v1", api_key="unused", max_retries=0,
                         **kwargs)


async def test_openai_client_embeds_texts_and_an_image_as_grpc_does(gateway, grpc_client,
                                                                     tiny_checkpoint):
    png = imagegen.png_rgba()
    client = _openai(gateway)
    model = gateway.settings.model
    texts = await asyncio.to_thread(client.embeddings.create, model=model, input=TEXTS,
                                    encoding_format="float")
    image = await asyncio.to_thread(
        client.embeddings.create, model=model, encoding_format="float",
        input=["data:image/png;base64," + base64.b64encode(png).decode()],
        extra_body={"modality": "image"})
    expected = await grpc_client.embed([*TEXTS, png])

    got = np.array([d.embedding for d in texts.data + image.data], dtype=np.float32)
    assert [d.index for d in texts.data] == list(range(len(TEXTS)))
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert texts.model == model and texts.object == "list"
    # One model served: GET /v1/models lists it under the name embeddings takes too.
    listed = await asyncio.to_thread(client.models.list)
    assert [m.id for m in listed.data] == [gateway.server.metrics.models[0]]
    by_name = await asyncio.to_thread(client.embeddings.create, model=listed.data[0].id,
                                      input=TEXTS[0], encoding_format="float")
    np.testing.assert_array_equal(np.float32(by_name.data[0].embedding), got[0])

    # usage: the texts' real token counts (truncated at 64, no padding); an image counts 0.
    counts = TextTokenizer.for_model(load_model_meta(str(tiny_checkpoint))).count(TEXTS)
    assert counts[2:] == [64, 1]  # the long text truncated; the empty one is its end token
    assert texts.usage.prompt_tokens == texts.usage.total_tokens == sum(counts)
    assert image.usage.prompt_tokens == 0


async def test_openai_client_base64_and_short_model_name(gateway, grpc_client, tiny_checkpoint):
    client = _openai(gateway)
    # No encoding_format: the openai client asks for base64 and decodes it itself.
    implicit = await asyncio.to_thread(client.embeddings.create, model=tiny_checkpoint.name,
                                       input="a photo of a dog")
    expected = await grpc_client.embed(["a photo of a dog"])
    np.testing.assert_allclose(np.asarray(implicit.data[0].embedding, dtype=np.float32),
                               expected[0], rtol=0, atol=1e-6)
    assert implicit.model == tiny_checkpoint.name

    raw = await asyncio.to_thread(
        client.embeddings.with_raw_response.create, model=tiny_checkpoint.name,
        input=["a photo of a dog"], encoding_format="base64")
    encoded = json.loads(raw.text)["data"][0]["embedding"]
    decoded = np.frombuffer(base64.b64decode(encoded), dtype="<f4")
    np.testing.assert_array_equal(decoded, expected[0])  # exactly the float32 gRPC sends


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"model": "not-this-model", "input": "x"}, "model"),
    ({"input": [], "extra": {}}, "input"),
    ({"input": "x", "dimensions": 3}, "dimensions"),
    ({"input": [[1, 2, 3]]}, "input[0]"),
    ({"input": ["not base64!"], "extra": {"modality": "image"}}, "input[0]"),
    ({"input": ["data:image/png;base64," + base64.b64encode(b"not a png").decode()],
      "extra": {"modality": "image"}}, "input[0].image"),
])
async def test_openai_client_surfaces_errors_with_the_field(gateway, kwargs, param):
    client = _openai(gateway)
    kwargs = dict(kwargs)
    extra = kwargs.pop("extra", None)
    kwargs.setdefault("model", gateway.settings.model)
    with pytest.raises(openai.BadRequestError) as info:
        await asyncio.to_thread(client.embeddings.create, encoding_format="float",
                                extra_body=extra, **kwargs)
    assert info.value.status_code == 400
    assert info.value.param == param
    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.type == "invalid_request_error"
    assert param.split("[")[0] in info.value.message


async def test_curl_classify_matches_grpc(gateway, grpc_client):
    curl = require_binary("curl")
    jpeg = imagegen.photo_jpeg(320, 240, seed=3)
    body = {"images": [{"data": base64.b64encode(jpeg).decode()}],
            "labels": ["a cat", "a dog", "a car"], "top_k": 2}
    proc = await asyncio.create_subprocess_exec(
        curl, "-sS", "--fail-with-body", "-H", "Content-Type: application/json",
        "--data-binary", "@-", f"{gateway.http_url}/v1/classify",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(body).encode()), 60)
    assert proc.returncode == 0, err.decode()
    got = json.loads(out)["results"]
    expected = await grpc_client.classify([jpeg], body["labels"], top_k=2)
    assert [[s["label"] for s in row["scores"]] for row in got] == [
        [s.label for s in row] for row in expected]
    for row, exp in zip(got, expected, strict=True):
        for s, e in zip(row["scores"], exp, strict=True):
            # The float32 values gRPC sends, printed in their shortest form.
            assert np.float32(s["probability"]) == np.float32(e.probability)
            assert np.float32(s["logit"]) == np.float32(e.logit)


async def test_json_routes_mirror_the_rpcs(gateway, grpc_client):
    import httpx

    jpeg = imagegen.photo_jpeg(64, 48, seed=4)
    image = {"data": base64.b64encode(jpeg).decode()}
    async with httpx.AsyncClient(base_url=gateway.http_url, timeout=60) as http:
        score = (await http.post("/v1/score", json={"images": [image], "texts": TEXTS[:2]}))
        embed = await http.post("/v1/embed", json={"inputs": [{"image": image},
                                                             {"text": TEXTS[0]}]})
        info = await http.get("/v1/models/info")
        document = await http.get("/openapi.json")
    assert score.status_code == embed.status_code == info.status_code == 200
    model = gateway.server.metrics.models[0]  # the one (default) model's name
    assert score.json()["model"] == embed.json()["model"] == info.json()["name"] == model
    assert [m["name"] for m in info.json()["models"]] == [model]
    expected_score = await grpc_client.score([jpeg], TEXTS[:2])
    assert score.json()["num_images"] == 1 and score.json()["num_texts"] == 2
    # JSON prints each float32 in its shortest form: read back, the very float32 gRPC sends.
    for name in ("probabilities", "logits"):
        np.testing.assert_array_equal(np.asarray(score.json()[name], dtype=np.float32),
                                      getattr(expected_score, name).ravel())
    expected_embed = await grpc_client.embed([jpeg, TEXTS[0]])
    np.testing.assert_array_equal(
        np.asarray([e["values"] for e in embed.json()["embeddings"]], dtype=np.float32),
        expected_embed)
    grpc_info = await grpc_client.model_info()
    assert info.json()["model_id"] == grpc_info.model_id
    assert info.json()["embedding_dim"] == grpc_info.embedding_dim
    # protobuf's JSON mapping prints float32 fields in their shortest form: the same float32.
    assert np.float32(info.json()["logit_scale"]) == np.float32(grpc_info.logit_scale)
    assert set(info.json()) == {f.name for f in grpc_info.DESCRIPTOR.fields}

    spec = document.json()
    assert document.headers["content-type"] == "application/json"
    assert spec["openapi"].startswith("3.")
    assert {"/v1/classify", "/v1/embed", "/v1/score", "/v1/models/info",
            "/v1/embeddings"} <= set(spec["paths"])
    schemas = spec["components"]["schemas"]
    for name in ("ClassifyRequest", "EmbedRequest", "ScoreRequest"):
        fields = getattr(pb, name).DESCRIPTOR.fields
        assert set(schemas[name]["properties"]) == {f.name for f in fields}
    for path in spec["paths"].values():
        for op in path.values():
            for ref in json.dumps(op).split('"$ref": "')[1:]:
                assert ref.split('"')[0].removeprefix("#/components/schemas/") in schemas

    # Counted with the gRPC calls' metric series, protocol http.
    registry = gateway.server.metrics.registry
    assert registry.get_sample_value("siglip_gateway_requests_total", {
        "method": "Score", "code": "OK", "protocol": "http", "model": model}) >= 1
    assert registry.get_sample_value("siglip_gateway_requests_total", {
        "method": "Score", "code": "OK", "protocol": "grpc", "model": model}) >= 1


async def test_json_takes_the_zero_shot_options_as_grpc_does(gateway, grpc_client):
    """prompt_templates, truncate, normalize and dtype: the same answers as over gRPC."""
    import httpx

    jpeg = imagegen.photo_jpeg(48, 64, seed=5)
    image = {"data": base64.b64encode(jpeg).decode()}
    labels = ["cat", "dog " * 80]  # the second label's prompts do not fit
    templates = ["a photo of a {}.", "a drawing of a {}.", "{}"]
    async with httpx.AsyncClient(base_url=gateway.http_url, timeout=60) as http:
        classify = await http.post("/v1/classify", json={
            "images": [image], "labels": labels, "prompt_templates": templates})
        refused = await http.post("/v1/classify", json={
            "images": [image], "labels": labels, "prompt_template": "{}", "truncate": False})
        embed = await http.post("/v1/embed", json={
            "inputs": [{"image": image}, {"text": TEXTS[2]}], "normalize": False,
            "dtype": "EMBEDDING_DTYPE_FLOAT16"})
        score = await http.post("/v1/score", json={"images": [image], "texts": TEXTS[:3],
                                                  "truncate": True})
        bad_dtype = await http.post("/v1/embed", json={"inputs": [{"text": "a"}],
                                                      "dtype": "FLOAT64"})
    assert classify.status_code == embed.status_code == score.status_code == 200
    expected = await grpc_client.classify_reply([jpeg], labels, prompt_templates=templates)
    assert classify.json()["truncated_labels"] == list(expected.truncated_labels) == [1]
    got = classify.json()["results"][0]["scores"]
    assert [s["label"] for s in got] == [s.label for s in expected.results[0]]
    np.testing.assert_array_equal(np.float32([s["probability"] for s in got]),
                                  np.float32([s.probability for s in expected.results[0]]))

    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "labels[1]"

    raw = await grpc_client.embed_reply([jpeg, TEXTS[2]], normalize=False, dtype="float16")
    rows = [np.frombuffer(base64.b64decode(e["float16_values"]), dtype="<f2")
            for e in embed.json()["embeddings"]]
    np.testing.assert_array_equal(np.stack(rows), raw.embeddings)
    assert embed.json()["truncated_inputs"] == list(raw.truncated_inputs) == [1]
    assert score.json()["truncated_texts"] == [2]
    assert bad_dtype.status_code == 400 and bad_dtype.json()["error"]["param"] == "dtype"
