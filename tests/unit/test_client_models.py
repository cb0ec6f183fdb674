"""The Python client, the CLI's client commands and bench/zeroshot_eval.py name the model they
ask for: against a recording SiglipService that serves two models (``base``, the default, and
``large``) and answers each in its own way (embedding sizes, scores), so a reply shows which
model a call reached. The servicer here stands in for the gateway's, to test what the callers
send and how they read the answers.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio

from bench import zeroshot_eval
from gateway.api.convert import model_info_response
from gateway.cli import EXIT_FAILED, main
from gateway.client import SiglipClient
from siglip.v1 import siglip_pb2 as pb
from siglip.v1 import siglip_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(60)

BASE, LARGE = "base", "large"
DIMS = {BASE: 4, LARGE: 6}
BIAS = {BASE: 0.0, LARGE: -2.0}


class TwoModelService(pb_grpc.SiglipServiceServicer):
    """Records (method, requested model) per call; unknown models are INVALID_ARGUMENT."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def _model(self, method: str, request, context) -> str:
        self.calls.append((method, request.model))
        name = request.model or BASE
        if name not in DIMS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"model: unknown model {request.model!r}; served: base, large")
        return name

    @staticmethod
    def _vector(name: str, seed: int) -> list[float]:
        values = np.full(DIMS[name], 1.0 if name == BASE else -1.0)
        values[-1] = seed + 1
        return values.tolist()

    async def Embed(self, request, context):
        name = await self._model("Embed", request, context)
        return pb.EmbedResponse(model=name, embeddings=[
            pb.Embedding(values=self._vector(name, i)) for i in range(len(request.inputs))])

    async def Classify(self, request, context):
        name = await self._model("Classify", request, context)
        results = []
        for _ in request.images:
            scores = [pb.LabelScore(label=label, logit=BIAS[name] - j,
                                    probability=1 / (1 + np.exp(j - BIAS[name])))
                      for j, label in enumerate(request.labels)]
            results.append(pb.Classification(scores=scores))
        return pb.ClassifyResponse(results=results, model=name)

    async def Score(self, request, context):
        name = await self._model("Score", request, context)
        n = len(request.images) * len(request.texts)
        logits = [BIAS[name] + k for k in range(n)]
        return pb.ScoreResponse(num_images=len(request.images), num_texts=len(request.texts),
                                logits=logits, probabilities=[0.5] * n, model=name)

    async def GetModelInfo(self, request, context):
        name = await self._model("GetModelInfo", request, context)
        infos = [pb.ModelInfo(name=n, model_id=f"org/siglip-{n}", embedding_dim=DIMS[n],
                              image_size=32, text_length=16, logit_scale=0.0, logit_bias=BIAS[n],
                              preprocess_mode="exact", random_weights=True,
                              default_prompt_template="a photo of {}.") for n in DIMS]
        return model_info_response(infos[list(DIMS).index(name)], infos)


@pytest_asyncio.fixture
async def service() -> AsyncIterator[tuple[str, TwoModelService]]:
    servicer = TwoModelService()
    server = grpc.aio.server()
    pb_grpc.add_SiglipServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await server.stop(None)


async def test_client_names_the_model_on_every_call(service):
    target, servicer = service
    async with SiglipClient(target) as client:
        for model, reached in ((None, BASE), (LARGE, LARGE), (BASE, BASE)):
            servicer.calls.clear()
            embed = await client.embed_reply(["a", b"img"], model=model)
            texts = await client.embed_texts(["a"], model=model)
            plain = await client.embed(["a"], model=model)
            classify = await client.classify_reply([b"img"], ["cat", "dog"], model=model)
            listed = await client.classify([b"img"], ["cat"], model=model)
            score = await client.score([b"img"], ["a", "b"], model=model)
            info = await client.model_info(model=model)
            assert servicer.calls == [(m, model or "") for m in (
                "Embed", "Embed", "Embed", "Classify", "Classify", "Score", "GetModelInfo")]
            assert embed.model == classify.model == score.model == info.name == reached
            assert embed.embeddings.shape == (2, DIMS[reached])
            assert texts.shape == plain.shape == (1, DIMS[reached])
            assert classify.results[0][0].logit == pytest.approx(BIAS[reached])
            assert listed[0][0].label == "cat"
            assert score.logits[0, 0] == pytest.approx(BIAS[reached])
            assert [m.name for m in info.models] == [BASE, LARGE]
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await client.embed(["a"], model="nope")
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _cli(capsys: pytest.CaptureFixture[str], target: str, *argv: str,
               ) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, [*argv, "--server", target])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err


async def test_cli_model_flag(capsys, service, tmp_path):
    target, servicer = service
    image = tmp_path / "cat.jpg"
    image.write_bytes(b"not decoded by this servicer")
    for flag, reached in (([], BASE), (["--model", LARGE], LARGE)):
        sent = flag[1] if flag else ""
        servicer.calls.clear()
        code, out, _ = await _cli(capsys, target, "embed", "--text", "a cat", "--json", *flag)
        assert code == 0 and [len(v) for v in json.loads(out).values()] == [DIMS[reached]]
        code, out, _ = await _cli(capsys, target, "classify", str(image), "--labels", "cat,dog",
                                  "--json", *flag)
        assert code == 0
        assert json.loads(out)[0][0]["logit"] == pytest.approx(BIAS[reached])
        code, out, _ = await _cli(capsys, target, "score", str(image), "--texts", "a|b",
                                  "--json", *flag)
        assert code == 0 and json.loads(out)["logits"][0][0] == pytest.approx(BIAS[reached])
        code, out, _ = await _cli(capsys, target, "info", *flag)
        info = json.loads(out)
        assert code == 0 and info["name"] == reached
        assert [(m["name"], m["embeddingDim"]) for m in info["models"]] == [  # protobuf JSON
            (BASE, DIMS[BASE]), (LARGE, DIMS[LARGE])]
        assert servicer.calls == [("Embed", sent), ("Classify", sent), ("Score", sent),
                                  ("GetModelInfo", sent)]
    code, _, err = await _cli(capsys, target, "info", "--model", "nope")
    assert code == EXIT_FAILED
    assert err.strip() == ("siglip-gateway info: INVALID_ARGUMENT: model: unknown model "
                           "'nope'; served: base, large")


def _folder(root: Path) -> Path:
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(2):
            (root / name / f"{i}.jpg").write_bytes(b"image %d" % i)
    return root


@pytest.mark.parametrize("via", ["embed", "classify"])
async def test_zeroshot_eval_evaluates_the_model_it_is_given(service, tmp_path, via):
    target, servicer = service
    root = _folder(tmp_path / "images")
    for flag, reached in (([], BASE), (["--model", LARGE], LARGE)):
        servicer.calls.clear()
        out = tmp_path / f"{via}-{reached}.json"
        argv = ["--server", target, "--images", str(root), "--via", via, "--json", str(out),
                "--batch-size", "2", *flag]
        assert await asyncio.to_thread(zeroshot_eval.main, argv) == 0
        result = json.loads(out.read_text())
        assert result["model"] == reached and result["model_id"] == f"org/siglip-{reached}"
        # The first call asks for what was given; every later one names the model it answered.
        assert servicer.calls[0] == ("GetModelInfo", flag[1] if flag else "")
        assert len(servicer.calls) > 2
        assert all(model == reached for _, model in servicer.calls[1:]), servicer.calls
