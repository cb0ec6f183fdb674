"""Two models in one gateway, over the wire against a fake Triton serving both models' suffixed
towers: each request reaches its model's Triton models, the default when it names none,
INVALID_ARGUMENT naming `model` for an unknown one; per-model limits and caches; readiness
needs every model; the `model` metric label takes only the configured names."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from gateway.contract import TritonNames
from siglip.v1 import siglip_pb2 as pb
from siglip.v1 import siglip_pb2_grpc as pb_grpc
from tests.support.fake_triton import FakeTriton
from tests.support.gateway_harness import (
    embedding_dim,
    health_status,
    running_gateway,
    small_raw_image,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

A, B = TritonNames.suffixed("a"), TritonNames.suffixed("b")


@pytest.fixture
async def two(tiny_checkpoint):
    async with FakeTriton(embedding_dim(tiny_checkpoint), served=("a", "b")) as fake:
        yield fake


def _models(checkpoint) -> str:
    return f"a={checkpoint},b={checkpoint}"


def _requests(gw, model: str, method: str) -> float:
    value = gw.server.metrics.registry.get_sample_value(
        "siglip_gateway_requests_total",
        {"method": method, "code": "OK", "protocol": "grpc", "model": model})
    return value or 0.0


async def test_each_request_reaches_its_models_towers(tiny_checkpoint, two):
    async with running_gateway(_models(tiny_checkpoint), two.url, text_cache_size=0,
                               triton_max_calls_in_flight=0) as gw, \
            grpc.aio.insecure_channel(gw.target) as channel:
        stub = pb_grpc.SiglipServiceStub(channel)
        reply = await stub.Embed(pb.EmbedRequest(
            model="b", inputs=[pb.EmbedInput(text="a cat"),
                               pb.EmbedInput(image=small_raw_image())]), timeout=10)
        assert reply.model == "b"
        assert two.calls == {B.text: 1, B.vision: 1}
        two.reset_counters()
        # No model: the first configured one.
        reply = await stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text="a cat")]),
                                 timeout=10)
        assert reply.model == "a" and two.calls == {A.text: 1}
        two.reset_counters()
        classified = await stub.Classify(pb.ClassifyRequest(
            model="a", images=[small_raw_image()], labels=["x"]), timeout=10)
        assert classified.model == "a"
        scored = await stub.Score(pb.ScoreRequest(model="b", images=[small_raw_image()],
                                                  texts=["x"]), timeout=10)
        assert scored.model == "b" and two.calls[B.vision] == 1 and two.calls[B.text] == 1
        assert _requests(gw, "b", "Score") == 1 and _requests(gw, "a", "Classify") == 1


async def test_an_unknown_model_is_invalid_argument_naming_the_field(tiny_checkpoint, two):
    async with running_gateway(_models(tiny_checkpoint), two.url) as gw, \
            grpc.aio.insecure_channel(gw.target) as channel:
        stub = pb_grpc.SiglipServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Embed(pb.EmbedRequest(model="c", inputs=[pb.EmbedInput(text="x")]),
                             timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == "model: unknown model 'c'; served: a, b"
        assert not two.calls
        # Counted under the default model: label values stay the configured names.
        assert gw.server.metrics.registry.get_sample_value(
            "siglip_gateway_requests_total", {"method": "Embed", "code": "INVALID_ARGUMENT",
                                              "protocol": "grpc", "model": "a"}) == 1
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetModelInfo(pb.GetModelInfoRequest(model="nope"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # Both serve the same checkpoint here: asking by it is ambiguous.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Embed(pb.EmbedRequest(model=str(tiny_checkpoint),
                                              inputs=[pb.EmbedInput(text="x")]), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "served under several names (a, b): give the name" in caught.value.details()


async def test_model_info_lists_every_model_and_describes_the_one_asked(tiny_checkpoint, two):
    async with running_gateway(_models(tiny_checkpoint), two.url) as gw, \
            grpc.aio.insecure_channel(gw.target) as channel:
        stub = pb_grpc.SiglipServiceStub(channel)
        info = await stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10)
        assert info.name == "a" and [m.name for m in info.models] == ["a", "b"]
        assert all(m.model_id == str(tiny_checkpoint) and m.random_weights for m in info.models)
        assert info.embedding_dim == info.models[0].embedding_dim == embedding_dim(
            tiny_checkpoint)
        info_b = await stub.GetModelInfo(pb.GetModelInfoRequest(model="b"), timeout=10)
        assert info_b.name == "b" and list(info_b.models) == list(info.models)


async def test_stream_messages_pick_their_own_model(tiny_checkpoint, two):
    async with running_gateway(_models(tiny_checkpoint), two.url, text_cache_size=0,
                               triton_max_calls_in_flight=0) as gw, \
            grpc.aio.insecure_channel(gw.target) as channel:
        stub = pb_grpc.SiglipServiceStub(channel)
        messages = [pb.EmbedStreamRequest(model=m, inputs=[pb.EmbedInput(text=f"t{i}")])
                    for i, m in enumerate(["b", "", "b", "a"])]
        replies = [r async for r in stub.EmbedStream(iter(messages), timeout=10)]
        assert [r.model for r in replies] == ["b", "a", "b", "a"]
        assert two.calls == {B.text: 2, A.text: 2}


async def test_each_model_has_its_own_limits_and_text_cache(tiny_checkpoint, two, tmp_path):
    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps({"models": [
        {"name": "a", "checkpoint": str(tiny_checkpoint)},
        {"name": "b", "checkpoint": str(tiny_checkpoint), "max_images": 1}]}))
    async with running_gateway("", two.url, models_file=str(models_file), max_images=4,
                               triton_max_calls_in_flight=0) as gw, \
            grpc.aio.insecure_channel(gw.target) as channel:
        stub = pb_grpc.SiglipServiceStub(channel)
        two_images = [small_raw_image(seed=1), small_raw_image(seed=2)]
        await stub.Score(pb.ScoreRequest(model="a", images=two_images, texts=["x"]), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Score(pb.ScoreRequest(model="b", images=two_images, texts=["x"]),
                             timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "at most 1" in caught.value.details()
        # "x" is cached for model a only: model b asks its own text tower.
        two.reset_counters()
        await stub.Score(pb.ScoreRequest(model="a", images=two_images[:1], texts=["x"]),
                         timeout=10)
        await stub.Score(pb.ScoreRequest(model="b", images=two_images[:1], texts=["x"]),
                         timeout=10)
        assert A.text not in two.calls and two.calls[B.text] == 1
        metrics = gw.server.metrics.registry
        assert metrics.get_sample_value("siglip_gateway_text_cache_hits_total",
                                        {"model": "a"}) == 1
        assert metrics.get_sample_value("siglip_gateway_text_cache_misses_total",
                                        {"model": "b"}) == 1


async def test_ready_only_while_every_models_towers_are(tiny_checkpoint, two):
    async with running_gateway(_models(tiny_checkpoint), two.url) as gw, \
            grpc.aio.insecure_channel(gw.target) as channel:
        assert await health_status(channel) == "SERVING"
        served = two.models.pop(B.text)  # one tower of the second model goes away
        await wait_until(lambda: gw.server.metrics.triton_ready._value.get() == 0, 5)
        assert await health_status(channel) == "NOT_SERVING"
        two.models[B.text] = served
        await wait_until(lambda: gw.server.metrics.triton_ready._value.get() == 1, 5)
        assert await health_status(channel) == "SERVING"


def test_model_lists_that_cannot_be_served_fail_the_start_naming_the_entry(tiny_checkpoint):
    from gateway.config import Settings

    with pytest.raises(ValueError, match="two models are named 'a'"):
        Settings.from_env({"SIGLIP_MODEL": f"a={tiny_checkpoint},a=/other"})
    with pytest.raises(ValueError, match="model name 'Big_One'"):
        Settings.from_env({"SIGLIP_MODEL": "Big_One=google/siglip-base-patch16-256"})
    with pytest.raises(ValueError, match="not both"):
        Settings.from_env({"SIGLIP_MODEL": "x", "SIGLIP_MODELS_FILE": "/m.toml"})


async def test_a_models_own_in_flight_bound_leaves_the_others_slots(tiny_checkpoint, two,
                                                                    tmp_path):
    """b allows one call in flight: a second is RESOURCE_EXHAUSTED naming b (429 over HTTP),
    while a, within the same process bound, still answers."""
    import httpx

    models_file = tmp_path / "models.json"
    models_file.write_text(json.dumps({"models": [
        {"name": "a", "checkpoint": str(tiny_checkpoint)},
        {"name": "b", "checkpoint": str(tiny_checkpoint), "max_in_flight": 1}]}))
    async with running_gateway("", two.url, models_file=str(models_file), max_in_flight=8,
                               text_cache_size=0, http_port=0) as gw, \
            grpc.aio.insecure_channel(gw.target) as channel:
        stub = pb_grpc.SiglipServiceStub(channel)

        def embed(model: str, text: str):
            return stub.Embed(pb.EmbedRequest(model=model, inputs=[pb.EmbedInput(text=text)]),
                              timeout=10)

        two.delay_s = 0.5
        held = asyncio.ensure_future(embed("b", "first"))
        await wait_until(lambda: gw.server.engines.get("b").admission.in_flight == 1, 5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await embed("b", "second")
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details() == ("model b is at its limit of 1 calls in flight; "
                                          "retry later")
        async with httpx.AsyncClient(base_url=gw.http_url, timeout=10) as http:
            refused = await http.post("/v1/embed", json={"model": "b",
                                                          "inputs": [{"text": "third"}]})
        assert refused.status_code == 429
        assert (await embed("a", "other model")).model == "a"
        assert (await held).model == "b"
        two.delay_s = 0.0
        assert (await embed("b", "after")).model == "b"
