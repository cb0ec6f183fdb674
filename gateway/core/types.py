"""Domain types that the API layer converts protobuf messages into (and results out of)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EncodedImage:
    """An encoded image file (JPEG, PNG, ...)."""

    data: bytes


@dataclass(frozen=True)
class RawPixels:
    """8-bit RGB pixels, row-major HWC."""

    rgb: bytes
    width: int
    height: int


@dataclass(frozen=True)
class ImageUrl:
    """An image to fetch (gateway.fetch); off unless SIGLIP_IMAGE_URL_ALLOW is set."""

    url: str


ImageInput = EncodedImage | RawPixels | ImageUrl
# An Embed input: an image or a text.
EmbedItem = EncodedImage | RawPixels | ImageUrl | str


@dataclass(frozen=True)
class LabelScore:
    label: str
    probability: float
    logit: float


@dataclass(frozen=True)
class Classified:
    """Classify's result: per image, the labels sorted; and which labels' prompts did not fit."""

    scores: list[list[LabelScore]]
    # Indices into the request's labels whose prompt (under any template) was truncated.
    truncated_labels: list[int]


@dataclass(frozen=True)
class Scored:
    """Score's result: (N_img, N_txt) float32 logits and probabilities."""

    logits: np.ndarray
    probabilities: np.ndarray
    # Indices into the request's texts that were truncated.
    truncated_texts: list[int]


@dataclass(frozen=True)
class Embedded:
    """Embed's result: (N, D) float32 embeddings in input order."""

    embeddings: np.ndarray
    # Indices into the request's inputs whose text was truncated.
    truncated_inputs: list[int]
