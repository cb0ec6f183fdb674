"""Protobuf ⇄ domain conversion. The only module besides the servicer that sees ``*_pb2``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from gateway.core.errors import InvalidInput
from gateway.core.model_meta import ModelMeta
from gateway.core.types import (
    Classified,
    Embedded,
    EmbedItem,
    EncodedImage,
    ImageInput,
    ImageUrl,
    LabelScore,
    RawPixels,
    Scored,
)
from siglip.v1 import siglip_pb2 as pb


def images_from_pb(images: Iterable[pb.Image], field: str = "images") -> list[ImageInput]:
    return [image_from_pb(image, f"{field}[{i}]") for i, image in enumerate(images)]


def image_from_pb(image: pb.Image, field: str) -> ImageInput:
    source = image.WhichOneof("source")
    if source == "data":
        return EncodedImage(image.data)
    if source == "raw":
        return RawPixels(image.raw.rgb, image.raw.width, image.raw.height)
    if source == "url":
        return ImageUrl(image.url)
    raise InvalidInput("image has neither data, raw nor url set", field=field)


def embed_items_from_pb(inputs: Iterable[pb.EmbedInput], field: str = "inputs") -> list[EmbedItem]:
    items: list[EmbedItem] = []
    for i, item in enumerate(inputs):
        kind = item.WhichOneof("input")
        if kind == "text":
            items.append(item.text)
        elif kind == "image":
            items.append(image_from_pb(item.image, f"{field}[{i}].image"))
        else:
            raise InvalidInput("input has neither image nor text set", field=f"{field}[{i}]")
    return items


def classify_response(results: Sequence[Sequence[LabelScore]]) -> pb.ClassifyResponse:
    return pb.ClassifyResponse(results=[
        pb.Classification(scores=[
            pb.LabelScore(label=s.label, probability=s.probability, logit=s.logit) for s in row])
        for row in results])


def embeddings_pb(embeds: np.ndarray, dtype: int = pb.EMBEDDING_DTYPE_FLOAT32,
                  ) -> list[pb.Embedding]:
    if dtype == pb.EMBEDDING_DTYPE_FLOAT16:
        half = np.asarray(embeds, dtype="<f2")
        return [pb.Embedding(float16_values=row.tobytes()) for row in half]
    return [pb.Embedding(values=row) for row in embeds.tolist()]


def embed_dtype(request: pb.EmbedRequest | pb.EmbedStreamRequest) -> int:
    """The requested EmbeddingDtype; unset is FLOAT32, a number this server does not know is
    the caller's error."""
    if request.dtype not in pb.EmbeddingDtype.values():
        raise InvalidInput(f"unknown EmbeddingDtype {request.dtype}", field="dtype")
    return request.dtype or pb.EMBEDDING_DTYPE_FLOAT32


def flag(request: Any, name: str, default: bool = True) -> bool:
    """An ``optional bool`` field: its value when set, else ``default``."""
    return bool(getattr(request, name)) if request.HasField(name) else default


def classified_response(result: Classified, model: str = "") -> pb.ClassifyResponse:
    """``model``: the name of the model that answered (every response carries it)."""
    response = classify_response(result.scores)
    response.truncated_labels.extend(result.truncated_labels)
    response.model = model
    return response


def embed_response(result: Embedded, dtype: int, model: str = "") -> pb.EmbedResponse:
    return pb.EmbedResponse(embeddings=embeddings_pb(result.embeddings, dtype),
                            truncated_inputs=result.truncated_inputs, model=model)


def embed_stream_response(result: Embedded, dtype: int,
                          model: str = "") -> pb.EmbedStreamResponse:
    return pb.EmbedStreamResponse(embeddings=embeddings_pb(result.embeddings, dtype),
                                  truncated_inputs=result.truncated_inputs, model=model)


def scored_response(result: Scored, model: str = "") -> pb.ScoreResponse:
    response = score_response(result.logits, result.probabilities)
    response.truncated_texts.extend(result.truncated_texts)
    response.model = model
    return response


def score_response(logits: np.ndarray, probs: np.ndarray) -> pb.ScoreResponse:
    return pb.ScoreResponse(
        num_images=logits.shape[0], num_texts=logits.shape[1],
        probabilities=probs.ravel().tolist(), logits=logits.ravel().tolist())


def model_info(name: str, meta: ModelMeta, preprocess_mode: str,
               default_template: str) -> pb.ModelInfo:
    return pb.ModelInfo(
        name=name, model_id=meta.model_id, random_weights=meta.random_weights,
        embedding_dim=meta.embedding_dim, image_size=meta.image_size,
        text_length=meta.text_length, logit_scale=meta.logit_scale,
        logit_bias=meta.logit_bias, preprocess_mode=preprocess_mode,
        default_prompt_template=default_template)


def model_info_response(selected: pb.ModelInfo,
                        models: Sequence[pb.ModelInfo]) -> pb.GetModelInfoResponse:
    """The ``selected`` model's fields at the top (as before several models could be served),
    and every served model in ``models``."""
    response = pb.GetModelInfoResponse(models=models)
    for field in pb.ModelInfo.DESCRIPTOR.fields:
        setattr(response, field.name, getattr(selected, field.name))
    return response
