"""The serving benchmark's workloads: what one request carries and what an "item" is.

Every mode (ceiling, direct, served, naive, pillow) draws its inputs from here, so all see the
same pixels, the same JPEG bytes and the same kind of texts. A request's JPEGs are the first
`images_per_request` of `Payloads.jpegs` (distinct images, the same bytes every call). Texts
that must miss the gateway's text cache (Embed text, Score) are made unique per call with a
global counter; Classify's ten labels repeat on purpose (that is what the cache is for).
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass

import numpy as np

JPEG_SIZE = (640, 480)  # width, height
CLASSIFY_LABELS = (
    "a cat", "a dog", "a bird", "a car", "a truck",
    "a plane", "a boat", "a house", "a tree", "a person",
)
SCORE_IMAGES = 2
SCORE_TEXTS = 5
EMBED_JPEG8_IMAGES = 8
_WORDS = ("photo picture drawing of a the small big red blue green dog cat bird car tree "
          "house river street city beach sky night sunny old new").split()


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    item: str  # what items/s counts
    items_per_request: int
    images_per_request: int  # rows the vision tower sees per request
    texts_per_request: int  # rows the text tower sees per request (0 when cached/none)


WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("embed_raw", "Embed, 1 RawImage SxS (the model size) per request", "images", 1, 1, 0),
    Workload("embed_jpeg", "Embed, 1 JPEG 640x480 per request", "images", 1, 1, 0),
    Workload("embed_jpeg8", f"Embed, {EMBED_JPEG8_IMAGES} JPEG 640x480 per request", "images",
             EMBED_JPEG8_IMAGES, EMBED_JPEG8_IMAGES, 0),
    Workload("embed_text", "Embed, 1 unique text per request (cache misses)", "texts", 1, 0, 1),
    Workload("classify", "Classify, 1 JPEG 640x480 x 10 repeated labels", "requests", 1, 1, 0),
    Workload("score", "Score, 2 JPEG 640x480 x 5 unique texts", "requests", 1,
             SCORE_IMAGES, SCORE_TEXTS),
)}
# Workloads whose images are JPEGs (Payloads.jpegs), and those the bare Pillow loop (mode
# `pillow`) is measured on: Embed only, where the service's work per image is the decode and
# the embedding and nothing else (no text, no scores), so served/pillow compares like with like.
JPEG_WORKLOADS = frozenset({"embed_jpeg", "embed_jpeg8", "classify", "score"})
PILLOW_WORKLOADS = frozenset({"embed_jpeg", "embed_jpeg8"})


def photo_array(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 RGB array (gradients, shapes, noise), so JPEG sizes are realistic."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / width * 6.0 + seed) * np.cos(y / height * 3.0)
    g = 255 * (x + y) / (width + height)
    b = 128 + 120 * np.cos(np.hypot(x - width / 3, y - height / 2) / 25.0)
    img = np.stack([r, g, b], axis=-1)
    for _ in range(6):
        x0, y0 = rng.integers(0, width - 1), rng.integers(0, height - 1)
        img[y0:y0 + rng.integers(1, height // 3), x0:x0 + rng.integers(1, width // 3)] = (
            rng.integers(0, 256, size=3))
    img += rng.normal(0.0, 6.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def jpeg_bytes(width: int, height: int, seed: int = 0) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(photo_array(width, height, seed), "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


@dataclass(frozen=True)
class Payloads:
    raw: np.ndarray  # (S, S, 3) uint8, S the checkpoint's image side
    jpegs: tuple[bytes, ...]  # 640x480, distinct; a request takes its first images_per_request

    @classmethod
    def make(cls, jpegs: bool = True, size: int = 256) -> Payloads:
        """`jpegs=False` (only raw-image and text workloads) needs no Pillow; `size`: the
        checkpoint's image side (the raw image needs no resize)."""
        return cls(raw=photo_array(size, size, seed=7),
                   jpegs=tuple(jpeg_bytes(*JPEG_SIZE, seed=s) for s in range(max(
                       w.images_per_request for w in WORKLOADS.values()))) if jpegs else ())

    def jpegs_for(self, workload: Workload) -> tuple[bytes, ...]:
        """The JPEGs one request of `workload` carries."""
        return self.jpegs[:workload.images_per_request]


class UniqueTexts:
    """Texts never seen before in this process (so never in the gateway's cache)."""

    def __init__(self, prefix: str = "") -> None:
        self._counter = itertools.count()
        self._prefix = prefix

    def take(self, n: int) -> list[str]:
        out = []
        for _ in range(n):
            i = next(self._counter)
            words = " ".join(_WORDS[(i * 7 + k * 13) % len(_WORDS)] for k in range(6))
            out.append(f"{self._prefix}{words} number {i}")
        return out
