"""Writes the load-test payloads: ghz/loadgen data files in protobuf-JSON form.

The images are drawn here (seeded numpy + Pillow) so that no binary file lives in
git; the same seed gives the same files on the same Pillow/libjpeg. Each file is
one request message as a JSON object, except ``embed_stream.json``, which is the
JSON array of messages that ghz (and ``siglip-gateway load``) sends on one stream.
Every file but the raw-pixel one stays under 1 MiB, so it fits in a ConfigMap.

    python loadtest/make_payloads.py                # -> loadtest/ghz/data/
    python loadtest/make_payloads.py --out /tmp/payloads --seed 1
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEFAULT_OUT = Path(__file__).resolve().parent / "ghz" / "data"

LABELS = [
    "cat", "dog", "car", "bird", "airplane",
    "flower", "house", "mountain", "boat", "person",
]  # fmt: skip

TEXTS = [
    "a photo of a cat",
    "a photo of a dog sleeping on a sofa",
    "A red sports car parked in front of a house.",
    "two birds on a wire",
    "an airplane taking off at sunset",
    "a bouquet of yellow flowers",
    "a snowy mountain under a clear blue sky",
    "a small fishing boat in the harbour",
    "a person riding a bicycle in the city",
    "a bowl of fruit on a wooden table",
    "abstract colourful shapes",
    "a diagram",
    "STREET SIGN: NO PARKING!!!",
    "a close-up photo of a cup of coffee with latte art",
    # Longer than the 64-token text window, so the server's truncation runs too.
    " ".join(["a very long caption that keeps going"] * 16),
    "x",
]

SCORE_TEXTS = [
    "a photo of a cat",
    "a photo of a dog",
    "a landscape with mountains",
    "colourful abstract art",
    "a city street at night",
]

# Synthetic photos are smooth with some texture, so JPEG sizes are realistic
# (tens of kB at 640x480) rather than those of pure noise (hundreds of kB).
_JPEG_QUALITY = 90


def synthetic_rgb(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like RGB image: a colour gradient, some shapes, a little blur and noise."""
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    c0, c1, c2 = (rng.uniform(0, 255, 3) for _ in range(3))
    base = (
        c0[None, None, :] * (1 - xs)[..., None] * (1 - ys)[..., None]
        + c1[None, None, :] * xs[..., None]
        + c2[None, None, :] * ys[..., None] * (1 - xs)[..., None]
    )
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(6, 14))):
        x0, x1 = sorted(rng.integers(0, width, 2).tolist())
        y0, y1 = sorted(rng.integers(0, height, 2).tolist())
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
        shape((x0, y0, x1 + 1, y1 + 1), fill=fill)
    img = img.filter(ImageFilter.GaussianBlur(radius=1.5))
    noise = rng.normal(0.0, 6.0, (height, width, 3))
    pixels = np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def jpeg_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=_JPEG_QUALITY)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    # protobuf-JSON (proto3 JSON mapping) carries bytes as standard base64.
    return base64.b64encode(data).decode("ascii")


def _image(data: bytes) -> dict[str, Any]:
    return {"data": _b64(data)}


def build_payloads(seed: int = 0) -> dict[str, Any]:
    """File name -> JSON value (request message as a dict, or a list of them)."""
    rng = np.random.default_rng(seed)
    jpegs = [jpeg_bytes(synthetic_rgb(rng, 640, 480)) for _ in range(6)]
    raw = np.asarray(synthetic_rgb(rng, 640, 480), dtype=np.uint8)

    # Smaller images in the stream keep its file under 1 MiB (a ConfigMap's limit).
    small = [jpeg_bytes(synthetic_rgb(rng, 320, 240)) for _ in range(16)]
    stream = []
    for i in range(8):
        stream.append({"inputs": [
            {"image": _image(small[2 * i])},
            {"image": _image(small[2 * i + 1])},
            {"text": TEXTS[(2 * i) % len(TEXTS)]},
            {"text": TEXTS[(2 * i + 1) % len(TEXTS)]},
        ]})  # fmt: skip

    return {
        "classify_1img_10labels.json": {"images": [_image(jpegs[0])], "labels": LABELS},
        "classify_raw_1img_10labels.json": {
            "images": [{"raw": {"rgb": _b64(raw.tobytes()), "width": 640, "height": 480}}],
            "labels": LABELS,
        },
        "embed_images.json": {"inputs": [{"image": _image(j)} for j in jpegs[:4]]},
        "embed_texts.json": {"inputs": [{"text": t} for t in TEXTS]},
        "score.json": {"images": [_image(j) for j in jpegs[4:6]], "texts": SCORE_TEXTS},
        "embed_stream.json": stream,
    }


def write_payloads(out_dir: Path, seed: int = 0) -> list[Path]:
    """Writes every payload file into ``out_dir`` (created if missing); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, value in build_payloads(seed).items():
        path = out_dir / name
        path.write_text(json.dumps(value, separators=(",", ":")) + "\n", encoding="ascii")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed (default 0)")
    args = parser.parse_args(argv)
    for path in write_payloads(args.out, args.seed):
        print(f"{path}  {path.stat().st_size / 1024:.1f} KiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
