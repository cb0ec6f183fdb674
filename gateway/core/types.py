"""Domain types that the API layer converts protobuf messages into (and results out of)."""

from __future__ import annotations

from dataclasses import dataclass


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
