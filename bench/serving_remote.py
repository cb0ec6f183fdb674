"""The over-the-wire modes of the serving benchmark: `direct`, `served` and `served_http`.

direct: Triton called with tritonclient.grpc.aio, no gateway. The client does the gateway's
    work itself, with the gateway's own code: JPEGs are decoded and resized by
    gateway.core.images.preprocess_encoded in a thread pool (as the gateway does), texts are
    tokenized by gateway.core.text.TextTokenizer inline (one short text is cheaper than a hop
    to a pool), both towers are called concurrently and the scores computed with
    gateway.core.scoring. It keeps no text cache, so Classify sends its ten prompts to the
    text tower on every call.
served: SiglipService over gRPC (over --connections TCP connections); requests are built once
    where they do not change (images, Classify's labels) and the response is parsed, as a real
    client's would be.
served_http: the same gateway's HTTP/JSON routes (gateway/http/) with aiohttp (its C parser,
    so the client's CPU, on the same machine, stays small beside the server's): one HTTP/1.1
    connection per call in flight, bodies built as served's requests are (once where they do
    not change), every response read and parsed with json.loads.

Each `call_for` returns a no-argument coroutine function: one request.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc.aio as triton_aio
from serving_workloads import CLASSIFY_LABELS, Payloads, UniqueTexts, Workload
from tritonclient.grpc import InferInput, InferRequestedOutput

from gateway.client import image_pb
from gateway.core.images import ImageLimits, preprocess_encoded
from gateway.core.model_meta import load_model_meta
from gateway.core.scoring import l2_normalize, score
from gateway.core.text import DEFAULT_PROMPT_TEMPLATE, TextTokenizer, fill_prompt
from siglip.v1 import siglip_pb2 as pb
from siglip.v1 import siglip_pb2_grpc as pb_grpc

MiB = 1024 * 1024
VISION = ("siglip_vision", "pixels", "UINT8", "image_embeds")
TEXT = ("siglip_text", "input_ids", "INT64", "text_embeds")
Call = Callable[[], Awaitable[object]]


class Direct:
    def __init__(self, triton_url: str, checkpoint: Path, pool: Executor) -> None:
        self.client = triton_aio.InferenceServerClient(triton_url, channel_args=[
            ("grpc.max_send_message_length", 32 * MiB),
            ("grpc.max_receive_message_length", 32 * MiB)])
        self.meta = load_model_meta(str(checkpoint))
        self.tokenizer = TextTokenizer.for_model(self.meta)
        self.pool = pool
        self.limits = ImageLimits(size=self.meta.image.size, resample=self.meta.image.resample)

    async def close(self) -> None:
        await self.client.close()

    async def _infer(self, model: tuple[str, str, str, str], array: np.ndarray) -> np.ndarray:
        name, input_name, datatype, output = model
        tensor = InferInput(input_name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        result = await self.client.infer(name, [tensor],
                                         outputs=[InferRequestedOutput(output)])
        return l2_normalize(result.as_numpy(output))

    async def _images(self, jpegs: tuple[bytes, ...]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        pixels = await asyncio.gather(*(
            loop.run_in_executor(self.pool, lambda b=b: preprocess_encoded(
                b, field="image", limits=self.limits)) for b in jpegs))
        return await self._infer(VISION, np.stack(pixels))

    async def _texts(self, texts: list[str]) -> np.ndarray:
        return await self._infer(TEXT, self.tokenizer.encode(texts))

    def call_for(self, workload: Workload, payloads: Payloads, texts: UniqueTexts) -> Call:
        name, meta = workload.name, self.meta
        raw = np.ascontiguousarray(payloads.raw[None])
        prompts = [fill_prompt(DEFAULT_PROMPT_TEMPLATE, label) for label in CLASSIFY_LABELS]
        jpegs = payloads.jpegs_for(workload)

        async def run() -> object:
            if name == "embed_raw":
                return await self._infer(VISION, raw)
            if name in ("embed_jpeg", "embed_jpeg8"):
                return await self._images(jpegs)
            if name == "embed_text":
                return await self._texts(texts.take(1))
            if name == "classify":
                img, txt = await asyncio.gather(self._images(jpegs), self._texts(prompts))
            else:
                batch = texts.take(workload.texts_per_request)
                img, txt = await asyncio.gather(self._images(jpegs), self._texts(batch))
            return score(img, txt, meta.logit_scale, meta.logit_bias)
        return run


class Served:
    """`connections` channels, each its own TCP connection, taken in turn: the kernel spreads
    connections (not calls) over a multi-process gateway's workers."""

    def __init__(self, target: str, timeout_s: float, connections: int = 1) -> None:
        self.channels = [grpc.aio.insecure_channel(target, options=[
            ("grpc.max_send_message_length", 32 * MiB),
            ("grpc.max_receive_message_length", 32 * MiB),
            ("grpc.use_local_subchannel_pool", 1)]) for _ in range(connections)]
        self.stubs = itertools.cycle([pb_grpc.SiglipServiceStub(c) for c in self.channels])
        self.timeout_s = timeout_s

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()

    def call_for(self, workload: Workload, payloads: Payloads, texts: UniqueTexts) -> Call:
        name, stubs, timeout = workload.name, self.stubs, self.timeout_s
        jpegs = [image_pb(b) for b in payloads.jpegs_for(workload)]
        fixed: Any = None
        if name == "embed_raw":
            fixed = pb.EmbedRequest(inputs=[pb.EmbedInput(image=image_pb(payloads.raw))])
        elif name in ("embed_jpeg", "embed_jpeg8"):
            fixed = pb.EmbedRequest(inputs=[pb.EmbedInput(image=j) for j in jpegs])
        elif name == "classify":
            fixed = pb.ClassifyRequest(images=jpegs, labels=list(CLASSIFY_LABELS))

        async def run() -> object:
            stub = next(stubs)
            if name in ("embed_raw", "embed_jpeg", "embed_jpeg8"):
                return await stub.Embed(fixed, timeout=timeout)
            if name == "classify":
                return await stub.Classify(fixed, timeout=timeout)
            if name == "embed_text":
                request = pb.EmbedRequest(inputs=[pb.EmbedInput(text=t) for t in texts.take(1)])
                return await stub.Embed(request, timeout=timeout)
            request = pb.ScoreRequest(images=jpegs, texts=texts.take(workload.texts_per_request))
            return await stub.Score(request, timeout=timeout)
        return run


class HttpServed:
    """The gateway's HTTP/JSON routes, over up to `connections` keep-alive connections."""

    def __init__(self, base_url: str, timeout_s: float, connections: int) -> None:
        import aiohttp

        self.base_url = base_url
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=connections),
            timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def close(self) -> None:
        await self.session.close()

    async def _post(self, path: str, body: bytes) -> object:
        async with self.session.post(self.base_url + path, data=body,
                                     headers={"Content-Type": "application/json"}) as response:
            payload = await response.read()
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status}: {payload[:300]!r}")
        return json.loads(payload)

    def call_for(self, workload: Workload, payloads: Payloads, texts: UniqueTexts) -> Call:
        name = workload.name
        jpegs = [{"data": base64.b64encode(b).decode()} for b in payloads.jpegs_for(workload)]
        raw = payloads.raw
        fixed: bytes = b""
        if name == "embed_raw":
            fixed = json.dumps({"inputs": [{"image": {"raw": {
                "rgb": base64.b64encode(raw.tobytes()).decode(),
                "width": raw.shape[1], "height": raw.shape[0]}}}]}).encode()
        elif name in ("embed_jpeg", "embed_jpeg8"):
            fixed = json.dumps({"inputs": [{"image": j} for j in jpegs]}).encode()
        elif name == "classify":
            fixed = json.dumps({"images": jpegs, "labels": list(CLASSIFY_LABELS)}).encode()

        async def run() -> object:
            if fixed:
                return await self._post("/v1/classify" if name == "classify" else "/v1/embed",
                                        fixed)
            if name == "embed_text":
                body = {"inputs": [{"text": t} for t in texts.take(1)]}
                return await self._post("/v1/embed", json.dumps(body).encode())
            body = {"images": jpegs, "texts": texts.take(workload.texts_per_request)}
            return await self._post("/v1/score", json.dumps(body).encode())
        return run


class TritonStats:
    """Rows and executions per model, to read the batch size Triton formed over a cell."""

    def __init__(self, triton_url: str) -> None:
        self.client = triton_aio.InferenceServerClient(triton_url)

    async def counts(self) -> dict[str, tuple[int, int, int]]:
        """Per model: (rows, executions, requests) since Triton started."""
        out = {}
        for model in (VISION[0], TEXT[0]):
            stats = await self.client.get_inference_statistics(model, as_json=True)
            s = stats["model_stats"][0]
            requests = s.get("inference_stats", {}).get("success", {}).get("count", 0)
            out[model] = (int(s.get("inference_count", 0)), int(s.get("execution_count", 0)),
                          int(requests))
        return out

    async def close(self) -> None:
        await self.client.close()


def batch_delta(before: dict[str, tuple[int, int, int]],
                after: dict[str, tuple[int, int, int]]) -> dict[str, dict[str, float]]:
    """Per model between two snapshots: rows, executions, requests, mean rows per execution
    (the batch Triton formed) and per request (what each incoming request carried)."""
    out = {}
    for model, (rows1, execs1, reqs1) in after.items():
        rows0, execs0, reqs0 = before.get(model, (0, 0, 0))
        rows, execs, reqs = rows1 - rows0, execs1 - execs0, reqs1 - reqs0
        if execs:
            out[model] = {"rows": rows, "executions": execs, "requests": reqs,
                          "mean_batch": rows / execs,
                          "rows_per_request": rows / reqs if reqs else None}
    return out
