"""JSON ⇄ domain conversion for the routes that mirror the RPCs (README, "HTTP and OpenAI").

Bodies mirror the protobuf messages (field names as in siglip.proto, ``bytes`` as standard
base64). Missing fields take proto3's defaults, so the engine's checks answer as for gRPC;
unknown fields and wrong types are the caller's INVALID_ARGUMENT, naming the field.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import json_format

from gateway.api import convert as api_convert
from gateway.core.errors import InvalidInput
from gateway.core.types import (
    Classified,
    Embedded,
    EmbedItem,
    EncodedImage,
    ImageInput,
    ImageUrl,
    RawPixels,
    Scored,
)
from siglip.v1 import siglip_pb2 as pb

Json = dict[str, Any]


def obj(value: Any, field: str, allowed: Sequence[str]) -> Json:
    if not isinstance(value, dict):
        raise InvalidInput("must be a JSON object", field=field or None)
    unknown = [k for k in value if k not in allowed]
    if unknown:
        where = f"{field}.{unknown[0]}" if field else unknown[0]
        raise InvalidInput(f"unknown field (expected one of {', '.join(allowed)})", field=where)
    return value


def array(value: Any, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput("must be a JSON array", field=field)
    return value


def string(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput("must be a string", field=field)
    return value


def strings(value: Any, field: str) -> list[str]:
    return [string(v, f"{field}[{i}]") for i, v in enumerate(array(value, field))]


def uint(value: Any, field: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise InvalidInput("must be a whole number from 0 to 2^32-1", field=field)
    return value


def b64(value: Any, field: str) -> bytes:
    try:
        return base64.b64decode(string(value, field), validate=True)
    except binascii.Error:
        raise InvalidInput("not valid standard base64", field=field) from None


def image(value: Any, field: str) -> ImageInput:
    body = obj(value, field, ("data", "raw", "url"))
    if len(body) != 1:
        raise InvalidInput("set exactly one of data, raw, url", field=field)
    if "data" in body:
        return EncodedImage(b64(body["data"], f"{field}.data"))
    if "raw" in body:
        raw = obj(body["raw"], f"{field}.raw", ("rgb", "width", "height"))
        return RawPixels(b64(raw.get("rgb", ""), f"{field}.raw.rgb"),
                         uint(raw.get("width"), f"{field}.raw.width"),
                         uint(raw.get("height"), f"{field}.raw.height"))
    return image_from_url(string(body["url"], f"{field}.url"), f"{field}.url")


def image_from_url(url: str, field: str) -> ImageInput:
    """An image the engine fetches (gateway/fetch/), if SIGLIP_IMAGE_URL_ALLOW lets it."""
    return ImageUrl(url)


def images(value: Any, field: str = "images") -> list[ImageInput]:
    return [image(v, f"{field}[{i}]") for i, v in enumerate(array(value, field))]


def embed_items(value: Any, field: str = "inputs") -> list[EmbedItem]:
    items: list[EmbedItem] = []
    for i, entry in enumerate(array(value, field)):
        where = f"{field}[{i}]"
        body = obj(entry, where, ("text", "image"))
        if len(body) != 1:
            raise InvalidInput("set exactly one of image, text", field=where)
        if "text" in body:
            items.append(string(body["text"], f"{where}.text"))
        else:
            items.append(image(body["image"], f"{where}.image"))
    return items


@dataclass(frozen=True)
class ClassifyArgs:
    images: list[ImageInput]
    labels: list[str]
    template: str | None
    templates: list[str]
    top_k: int
    truncate: bool


@dataclass(frozen=True)
class EmbedArgs:
    items: list[EmbedItem]
    normalize: bool
    float16: bool
    truncate: bool


def classify_request(body: Any) -> ClassifyArgs:
    body = obj(body, "", ("images", "labels", "prompt_template", "prompt_templates", "top_k",
                          "truncate", "model"))
    template = body.get("prompt_template")
    return ClassifyArgs(images(body.get("images")), strings(body.get("labels"), "labels"),
                        None if template is None else string(template, "prompt_template"),
                        strings(body.get("prompt_templates"), "prompt_templates"),
                        uint(body.get("top_k"), "top_k"), flag(body, "truncate"))


def embed_request(body: Any) -> EmbedArgs:
    body = obj(body, "", ("inputs", "normalize", "dtype", "truncate", "model"))
    return EmbedArgs(embed_items(body.get("inputs")), flag(body, "normalize"),
                     dtype(body.get("dtype")) == pb.EMBEDDING_DTYPE_FLOAT16,
                     flag(body, "truncate"))


def score_request(body: Any) -> tuple[list[ImageInput], list[str], bool]:
    body = obj(body, "", ("images", "texts", "truncate", "model"))
    return (images(body.get("images")), strings(body.get("texts"), "texts"),
            flag(body, "truncate"))


def requested_model(body: Any) -> str:
    """The body's ``model`` (the name, the configured checkpoint or its last path part;
    absent or empty: the default model), read before the rest so that the body's other
    fields are checked against the model it names (gateway/engines.py resolves it)."""
    if not isinstance(body, dict) or body.get("model") is None:
        return ""
    return string(body["model"], "model")


def flag(body: Json, name: str) -> bool:
    """An ``optional bool`` of the proto: true unless sent as false."""
    value = body.get(name)
    if value is None:
        return True
    if not isinstance(value, bool):
        raise InvalidInput("must be true or false", field=name)
    return value


def dtype(value: Any) -> int:
    """EmbeddingDtype as protobuf's JSON mapping writes enums: its name (or its number)."""
    if value is None:
        return pb.EMBEDDING_DTYPE_FLOAT32
    names = pb.EmbeddingDtype.keys()
    if isinstance(value, str) and value in names:
        number = pb.EmbeddingDtype.Value(value)
    elif isinstance(value, int) and not isinstance(value, bool) and \
            value in pb.EmbeddingDtype.values():
        number = value
    else:
        raise InvalidInput(f"must be one of {', '.join(names)}", field="dtype")
    return number or pb.EMBEDDING_DTYPE_FLOAT32


# Floats go out as numpy float32 (app.dumps prints them shortest): the float32 values gRPC
# sends, so both protocols answer the same numbers.
def floats(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32).ravel()


def classify_response(result: Classified, model: str) -> Json:
    return {"results": [{"scores": [
        {"label": s.label, "probability": np.float32(s.probability),
         "logit": np.float32(s.logit)} for s in row]} for row in result.scores],
        "truncated_labels": result.truncated_labels, "model": model}


def embed_response(result: Embedded, model: str, float16: bool = False) -> Json:
    if float16:
        half = np.asarray(result.embeddings, dtype="<f2")
        rows: list[Json] = [{"float16_values": base64.b64encode(row.tobytes()).decode()}
                            for row in half]
    else:
        rows = [{"values": row} for row in
                np.ascontiguousarray(result.embeddings, dtype=np.float32)]
    return {"embeddings": rows, "truncated_inputs": result.truncated_inputs, "model": model}


def score_response(result: Scored, model: str) -> Json:
    return {"num_images": int(result.logits.shape[0]), "num_texts": int(result.logits.shape[1]),
            "probabilities": floats(result.probabilities), "logits": floats(result.logits),
            "truncated_texts": result.truncated_texts, "model": model}


def model_info(selected: pb.ModelInfo, models: Sequence[pb.ModelInfo]) -> Json:
    """GetModelInfoResponse as protobuf's JSON mapping prints it, every field included:
    ``selected`` at the top, every served model in ``models``."""
    return json_format.MessageToDict(
        api_convert.model_info_response(selected, models),
        preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
