"""Deterministic, photo-like images (encoded bytes) for the benchmarks and the tests.

"Photo-like" matters for JPEG timings: decode cost follows the entropy-coded size, which
follows the content. These have smooth gradients, hard edges, a patch of fine texture and
sensor noise, and encode at quality 90 to about 0.3 bytes/pixel (98 kB at 640x480,
3.5 MB at 4000x3000), in the range of camera photos.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def photo_array(width: int, height: int, seed: int = 0) -> np.ndarray:
    """uint8 (height, width, 3): gradients + sinusoids, rectangles, fine stripes, noise."""
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    img = np.empty((height, width, 3), np.float32)
    for c in range(3):
        a, b, f1, f2, ph = rng.uniform(0.2, 1.0, 5)
        img[..., c] = 60 + 90 * a * x + 70 * b * y + 40 * np.sin(
            2 * np.pi * (3 * f1 * x + 2 * f2 * y) + 6 * ph)
    for _ in range(12):  # hard edges
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        rw = int(rng.integers(max(width // 20, 1), max(width // 4, 2)))
        rh = int(rng.integers(max(height // 20, 1), max(height // 4, 2)))
        color = rng.uniform(0, 255, 3).astype(np.float32)
        patch = img[y0:y0 + rh, x0:x0 + rw]
        patch *= 0.3
        patch += 0.7 * color
    # Fine texture near the resize filters' cut-off (periods of ~3-7 source pixels).
    th, tw = height // 3, width // 3
    yy, xx = np.mgrid[0:th, 0:tw].astype(np.float32)
    img[:th, :tw] += (30 * np.sin(0.9 * xx + 0.3 * yy))[..., None]
    img += rng.normal(0, 6, (height, width, 1)).astype(np.float32)  # luma noise
    img += rng.normal(0, 3, (height, width, 3)).astype(np.float32)  # chroma noise
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def photo_jpeg(width: int, height: int, seed: int = 0, quality: int = 90,
               orientation: int | None = None) -> bytes:
    im = Image.fromarray(photo_array(width, height, seed), "RGB")
    params: dict[str, object] = {"quality": quality}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        params["exif"] = exif
    return encode(im, "JPEG", **params)


def photo_png(width: int, height: int, seed: int = 0, mode: str = "RGB") -> bytes:
    im = Image.fromarray(photo_array(width, height, seed), "RGB")
    if mode == "RGBA":
        alpha = np.linspace(0, 255, width * height).reshape(height, width).astype(np.uint8)
        im = Image.fromarray(np.dstack([np.asarray(im), alpha]), "RGBA")
    elif mode == "P":
        im = im.quantize(colors=64)
    elif mode == "I;16":
        # Values kept in 0..255: Pillow's I;16 -> RGB (the reference's convert) clips, so
        # a full-range image would be all white and say nothing about the resize.
        im = Image.fromarray(np.asarray(im.convert("L")).astype(np.uint16))
    elif mode != "RGB":
        im = im.convert(mode)
    return encode(im, "PNG", compress_level=6)


def fidelity_set() -> dict[str, bytes]:
    """The fixed image set on which fast is compared with exact: sizes, modes, formats."""
    return {
        "jpeg_320x240": photo_jpeg(320, 240, seed=1),
        "jpeg_640x480": photo_jpeg(640, 480, seed=2),
        "jpeg_800x600": photo_jpeg(800, 600, seed=3),
        "jpeg_1024x768": photo_jpeg(1024, 768, seed=4),
        "jpeg_1920x1080": photo_jpeg(1920, 1080, seed=5),
        "jpeg_4000x3000": photo_jpeg(4000, 3000, seed=6),
        "jpeg_4000x3000_exif6": photo_jpeg(4000, 3000, seed=7, orientation=6),
        "jpeg_3000x1000_exif8": photo_jpeg(3000, 1000, seed=8, orientation=8),
        "jpeg_gray_1600x1200": encode(Image.fromarray(photo_array(1600, 1200, 9)).convert("L"),
                                      "JPEG", quality=90),
        "jpeg_cmyk_1200x900": encode(Image.fromarray(photo_array(1200, 900, 10)).convert("CMYK"),
                                     "JPEG", quality=90),
        "jpeg_200x150": photo_jpeg(200, 150, seed=11),
        "png_rgb_640x480": photo_png(640, 480, seed=12),
        "png_rgba_1000x800": photo_png(1000, 800, seed=13, mode="RGBA"),
        "png_p_800x600": photo_png(800, 600, seed=14, mode="P"),
        "png_i16_900x700": photo_png(900, 700, seed=15, mode="I;16"),
        "webp_1200x800": encode(Image.fromarray(photo_array(1200, 800, 16)), "WEBP", quality=90),
    }
