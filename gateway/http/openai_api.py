"""OpenAI-compatible ``POST /v1/embeddings`` (request parsing, the response body) and
``GET /v1/models`` (the served models, as OpenAI lists its models).

Texts as OpenAI defines ``input`` (a string or an array of strings; token-id arrays are
refused: this model's tokenizer is not OpenAI's). Images follow infinity's convention: the
request says ``"modality": "image"`` (an extra field; text is the default) and every input
is then an image as a data URI (``data:image/png;base64,...``), bare base64, or an
http(s) URL. ``encoding_format``: ``float`` or ``base64`` (little-endian float32 bytes, as
OpenAI sends). ``dimensions`` must be the embedding size (SigLIP's embeddings are not
Matryoshka-trained: truncating them would silently change what they mean).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.core.errors import InvalidInput
from gateway.core.model_meta import ModelMeta, names_a_path
from gateway.core.types import EmbedItem, EncodedImage
from gateway.http.convert import Json, image_from_url, obj, string

FIELDS = ("input", "model", "encoding_format", "dimensions", "user", "modality")
ENCODINGS = ("float", "base64")
MODALITIES = ("text", "image")


@dataclass(frozen=True)
class EmbeddingsRequest:
    items: list[EmbedItem]
    texts: list[str]  # the text inputs, for usage
    model: str
    encoding_format: str


def requested_model(body: Any) -> str:
    """``model``, which OpenAI's API requires: a served model's name, its checkpoint as
    configured, or that checkpoint's last path part (the hub id without its organisation);
    gateway/engines.py resolves it."""
    if not isinstance(body, dict):
        raise InvalidInput("must be a JSON object")
    return string(body.get("model"), "model")


def parse(body: Any, meta: ModelMeta) -> EmbeddingsRequest:
    """The request to the model ``meta`` describes (the one its ``model`` names)."""
    body = obj(body, "", FIELDS)
    model = requested_model(body)
    encoding = body.get("encoding_format") or "float"
    if encoding not in ENCODINGS:
        raise InvalidInput(f"must be one of {', '.join(ENCODINGS)}", field="encoding_format")
    dimensions = body.get("dimensions")
    if dimensions is not None and dimensions != meta.embedding_dim:
        raise InvalidInput(f"must be {meta.embedding_dim} (the model's embedding size) or "
                           "unset; truncated SigLIP embeddings are not supported",
                           field="dimensions")
    modality = body.get("modality") or "text"
    if modality not in MODALITIES:
        raise InvalidInput(f"must be one of {', '.join(MODALITIES)}", field="modality")
    raw = body.get("input")
    inputs = [raw] if isinstance(raw, str) else raw
    if not isinstance(inputs, list):
        raise InvalidInput("must be a string or an array of strings", field="input")
    for i, value in enumerate(inputs):
        if not isinstance(value, str):
            raise InvalidInput("must be a string (token-id arrays are not supported: send "
                               "text)", field=f"input[{i}]")
    if modality == "text":
        return EmbeddingsRequest(list(inputs), list(inputs), model, encoding)
    items: list[EmbedItem] = [_image(value, f"input[{i}]") for i, value in enumerate(inputs)]
    return EmbeddingsRequest(items, [], model, encoding)


def _image(value: str, field: str) -> EmbedItem:
    if value.startswith(("http://", "https://")):
        return image_from_url(value, field)
    data = value
    if value.startswith("data:"):
        header, sep, data = value.partition(",")
        if not sep or not header.endswith(";base64"):
            raise InvalidInput("a data URI must be data:<media type>;base64,<data>", field=field)
    try:
        return EncodedImage(base64.b64decode(data, validate=True))
    except binascii.Error:
        raise InvalidInput("not an http(s) URL, a base64 data URI or base64", field=field) \
            from None


def response(request: EmbeddingsRequest, embeds: np.ndarray, tokens: int) -> Json:
    rows = np.ascontiguousarray(embeds, dtype="<f4")
    if request.encoding_format == "base64":
        values: list[Any] = [base64.b64encode(row.tobytes()).decode("ascii") for row in rows]
    else:
        values = list(rows)  # float32 rows, printed shortest by app.dumps
    return {"object": "list", "model": request.model,
            "data": [{"object": "embedding", "index": i, "embedding": v}
                     for i, v in enumerate(values)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}


def owner(checkpoint: str) -> str:
    """``owned_by``: the organisation of a hub id (``google/siglip-...``); a local checkpoint
    is the deployment's own."""
    if names_a_path(checkpoint) or "/" not in checkpoint:
        return "siglip-gateway"
    return checkpoint.split("/", 1)[0]


def models_list(models: Sequence[tuple[str, str]], created: int) -> Json:
    """OpenAI's model list of (name, checkpoint) pairs, default first. Each ``id`` is the
    model's name, which ``/v1/embeddings`` takes as its ``model``; ``created`` is when this
    server started serving them (Unix seconds), as the checkpoints carry no date."""
    return {"object": "list", "data": [
        {"id": name, "object": "model", "created": created, "owned_by": owner(checkpoint)}
        for name, checkpoint in models]}
