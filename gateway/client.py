"""A small typed async client for SiglipService, shared by the CLI, the tests and the load tools.

Images may be given as encoded bytes, a file path, or an HxWx3 uint8 array (sent raw). Every
call takes ``model``: the served model to ask (its name, its checkpoint or the checkpoint's last
path part; None: the server's default); replies say which model answered.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.core.types import LabelScore
from siglip.v1 import siglip_pb2 as pb
from siglip.v1 import siglip_pb2_grpc as pb_grpc

ImageLike = bytes | str | os.PathLike | np.ndarray
MiB = 1024 * 1024


@dataclass(frozen=True)
class ScoreResult:
    logits: np.ndarray
    probabilities: np.ndarray
    # Indices of the texts the server truncated to the model's text length.
    truncated_texts: tuple[int, ...] = ()
    # The name of the model that answered.
    model: str = ""


@dataclass(frozen=True)
class ClassifyReply:
    results: list[list[LabelScore]]
    # Indices of the labels whose prompt the server truncated to the model's text length.
    truncated_labels: tuple[int, ...]
    # The name of the model that answered.
    model: str = ""


@dataclass(frozen=True)
class EmbedReply:
    # (N, D): float32, or float16 when asked for.
    embeddings: np.ndarray
    # Indices of the inputs whose text the server truncated to the model's text length.
    truncated_inputs: tuple[int, ...]
    # The name of the model that answered.
    model: str = ""


DTYPES = {"float32": pb.EMBEDDING_DTYPE_FLOAT32, "float16": pb.EMBEDDING_DTYPE_FLOAT16}


@dataclass(frozen=True)
class ClientTLS:
    root_certificates: bytes | None = None
    private_key: bytes | None = None
    certificate_chain: bytes | None = None


def image_pb(image: ImageLike) -> pb.Image:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError("raw images must be HxWx3 uint8 arrays")
        height, width, _ = image.shape
        return pb.Image(raw=pb.RawImage(rgb=np.ascontiguousarray(image).tobytes(),
                                        width=width, height=height))
    if isinstance(image, bytes):
        return pb.Image(data=image)
    return pb.Image(data=Path(image).read_bytes())


def embeddings_from_pb(embeddings: Sequence[pb.Embedding], dtype: str) -> np.ndarray:
    """(N, D) from Embedding messages: ``values`` for float32, ``float16_values`` for float16."""
    if dtype == "float16":
        rows = [np.frombuffer(e.float16_values, dtype="<f2") for e in embeddings]
        return np.stack(rows).astype(np.float16) if rows else np.zeros((0, 0), np.float16)
    return np.array([e.values for e in embeddings], dtype=np.float32)


class SiglipClient:
    def __init__(self, target: str, *, token: str | None = None, tls: ClientTLS | None = None,
                 max_message_bytes: int = 32 * MiB, round_robin: bool = False) -> None:
        options: list[tuple[str, object]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        if round_robin:
            options.append(("grpc.lb_policy_name", "round_robin"))
        if tls is not None:
            creds = grpc.ssl_channel_credentials(
                tls.root_certificates, tls.private_key, tls.certificate_chain)
            self.channel = grpc.aio.secure_channel(target, creds, options=options)
        else:
            self.channel = grpc.aio.insecure_channel(target, options=options)
        self.stub = pb_grpc.SiglipServiceStub(self.channel)
        self._health = health_pb2_grpc.HealthStub(self.channel)
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None

    async def __aenter__(self) -> SiglipClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def classify(self, images: Sequence[ImageLike], labels: Sequence[str], *,
                       prompt_template: str | None = None, top_k: int = 0,
                       prompt_templates: Sequence[str] = (), truncate: bool | None = None,
                       model: str | None = None, timeout: float | None = None,
                       ) -> list[list[LabelScore]]:
        return (await self.classify_reply(
            images, labels, prompt_template=prompt_template, top_k=top_k,
            prompt_templates=prompt_templates, truncate=truncate, model=model,
            timeout=timeout)).results

    async def classify_reply(self, images: Sequence[ImageLike], labels: Sequence[str], *,
                             prompt_template: str | None = None, top_k: int = 0,
                             prompt_templates: Sequence[str] = (), truncate: bool | None = None,
                             model: str | None = None, timeout: float | None = None,
                             ) -> ClassifyReply:
        """``classify`` with the server's truncation report; ``truncate`` None leaves it unset
        (the server truncates)."""
        request = pb.ClassifyRequest(images=[image_pb(i) for i in images], labels=labels,
                                     top_k=top_k, prompt_templates=prompt_templates,
                                     model=model or "")
        if prompt_template is not None:
            request.prompt_template = prompt_template
        if truncate is not None:
            request.truncate = truncate
        response = await self.stub.Classify(request, timeout=timeout, metadata=self._metadata)
        return ClassifyReply([[LabelScore(s.label, s.probability, s.logit) for s in r.scores]
                              for r in response.results], tuple(response.truncated_labels),
                             response.model)

    async def embed(self, inputs: Sequence[ImageLike | str], *, normalize: bool | None = None,
                    dtype: str = "float32", truncate: bool | None = None,
                    model: str | None = None, timeout: float | None = None) -> np.ndarray:
        """``str`` items are texts; bytes, paths and arrays are images. Returns (N, D) float32
        (float16 with ``dtype="float16"``); ``normalize=False``: the towers' raw output."""
        return (await self.embed_reply(inputs, normalize=normalize, dtype=dtype,
                                       truncate=truncate, model=model,
                                       timeout=timeout)).embeddings

    async def embed_reply(self, inputs: Sequence[ImageLike | str], *,
                          normalize: bool | None = None, dtype: str = "float32",
                          truncate: bool | None = None, model: str | None = None,
                          timeout: float | None = None) -> EmbedReply:
        """``embed`` with the server's truncation report."""
        request = pb.EmbedRequest(inputs=[
            pb.EmbedInput(text=x) if isinstance(x, str) else pb.EmbedInput(image=image_pb(x))
            for x in inputs], dtype=DTYPES[dtype], model=model or "")
        if normalize is not None:
            request.normalize = normalize
        if truncate is not None:
            request.truncate = truncate
        response = await self.stub.Embed(request, timeout=timeout, metadata=self._metadata)
        return EmbedReply(embeddings_from_pb(response.embeddings, dtype),
                          tuple(response.truncated_inputs), response.model)

    async def embed_texts(self, texts: Sequence[str], *, model: str | None = None,
                          timeout: float | None = None) -> np.ndarray:
        request = pb.EmbedRequest(inputs=[pb.EmbedInput(text=t) for t in texts],
                                  model=model or "")
        response = await self.stub.Embed(request, timeout=timeout, metadata=self._metadata)
        return np.array([e.values for e in response.embeddings], dtype=np.float32)

    async def score(self, images: Sequence[ImageLike], texts: Sequence[str], *,
                    truncate: bool | None = None, model: str | None = None,
                    timeout: float | None = None) -> ScoreResult:
        request = pb.ScoreRequest(images=[image_pb(i) for i in images], texts=texts,
                                  model=model or "")
        if truncate is not None:
            request.truncate = truncate
        r = await self.stub.Score(request, timeout=timeout, metadata=self._metadata)
        shape = (r.num_images, r.num_texts)
        return ScoreResult(np.array(r.logits, np.float32).reshape(shape),
                           np.array(r.probabilities, np.float32).reshape(shape),
                           tuple(r.truncated_texts), r.model)

    async def model_info(self, *, model: str | None = None, timeout: float | None = None,
                         ) -> pb.GetModelInfoResponse:
        """The ``model``'s fields (None: the default model's) at the top, and every served
        model in ``models``, default first."""
        return await self.stub.GetModelInfo(pb.GetModelInfoRequest(model=model or ""),
                                            timeout=timeout, metadata=self._metadata)

    async def health(self, service: str = "", *, timeout: float | None = 5.0) -> str:
        response = await self._health.Check(health_pb2.HealthCheckRequest(service=service),
                                            timeout=timeout)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)

