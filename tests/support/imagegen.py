"""In-memory test images: every format, mode and shape the preprocessing tests need.

All generators are deterministic (seeded) and return encoded bytes, so a test can feed the
same bytes to the gateway and to the reference. ``png_chunks`` writes PNG files by hand for the
cases Pillow will not save (16-bit RGB, headers that lie about their size, decompression bombs).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _save(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def photo_array(width: int = 640, height: int = 480, seed: int = 0) -> np.ndarray:
    """A photo-like uint8 RGB array: smooth gradients, hard-edged shapes and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / max(width, 1) * 6.0 + 1.0) * np.cos(y / max(height, 1) * 3.0)
    g = 255 * (x + y) / max(width + height, 1)
    b = 128 + 120 * np.cos(np.hypot(x - width / 3, y - height / 2) / 25.0)
    img = np.stack([r, g, b], axis=-1)
    # A few solid rectangles give sharp edges, where bicubic overshoot and clipping matter.
    for _ in range(6):
        x0, y0 = rng.integers(0, max(width, 2) - 1), rng.integers(0, max(height, 2) - 1)
        x1, y1 = x0 + rng.integers(1, max(width // 3, 2)), y0 + rng.integers(1, max(height // 3, 2))
        img[y0:y1, x0:x1] = rng.integers(0, 256, size=3)
    img += rng.normal(0.0, 6.0, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def rgb_image(width: int = 640, height: int = 480, seed: int = 0) -> Image.Image:
    return Image.fromarray(photo_array(width, height, seed), "RGB")


def photo_jpeg(width: int = 640, height: int = 480, seed: int = 0, **params: object) -> bytes:
    return _save(rgb_image(width, height, seed), "JPEG", quality=90, **params)


def progressive_jpeg() -> bytes:
    return photo_jpeg(320, 200, seed=1, progressive=True)


def gray_jpeg() -> bytes:
    return _save(rgb_image(300, 200, seed=2).convert("L"), "JPEG", quality=85)


def cmyk_jpeg() -> bytes:
    return _save(rgb_image(200, 150, seed=3).convert("CMYK"), "JPEG", quality=90)


def exif_jpeg(orientation: int, width: int = 120, height: int = 80) -> bytes:
    """A JPEG whose EXIF Orientation tag says how to rotate it (1..8)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(rgb_image(width, height, seed=10 + orientation), "JPEG", quality=92, exif=exif)


def exif_png(orientation: int) -> bytes:
    """A PNG with an eXIf chunk: exif_transpose applies to every format, not just JPEG."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _save(rgb_image(90, 60, seed=20), "PNG", exif=exif)


def png_rgba() -> bytes:
    arr = photo_array(200, 120, seed=4)
    alpha = np.linspace(0, 255, 200 * 120, dtype=np.float32).reshape(120, 200).astype(np.uint8)
    return _save(Image.fromarray(np.dstack([arr, alpha]), "RGBA"), "PNG")


def png_la() -> bytes:
    return _save(Image.open(io.BytesIO(png_rgba())).convert("LA"), "PNG")


def png_palette(transparency: bool = True) -> bytes:
    im = rgb_image(160, 100, seed=5).quantize(colors=32)
    params: dict[str, object] = {"transparency": 3} if transparency else {}
    return _save(im, "PNG", **params)


def png_gray() -> bytes:
    return _save(rgb_image(150, 170, seed=6).convert("L"), "PNG")


def png_bilevel() -> bytes:
    return _save(rgb_image(130, 90, seed=7).convert("1"), "PNG")


def png_gray16() -> bytes:
    """16-bit grayscale PNG (Pillow opens it as I;16), with values over the whole 0..65535 range."""
    rng = np.random.default_rng(8)
    arr = (np.linspace(0, 65535, 140 * 90).reshape(90, 140) + rng.normal(0, 300, (90, 140)))
    return _save(Image.fromarray(np.clip(arr, 0, 65535).astype(np.uint16)), "PNG")


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))


def png_ihdr(width: int, height: int, bit_depth: int, color_type: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return png_chunk(b"IHDR", header)


def png_chunks(width: int, height: int, bit_depth: int, color_type: int,
               rows: Iterable[bytes]) -> bytes:
    """A PNG written by hand; ``rows`` are raw scanlines without the filter byte."""
    comp = zlib.compressobj(9)
    parts = []
    for row in rows:
        parts.append(comp.compress(b"\x00" + row))
    parts.append(comp.flush())
    return (PNG_SIGNATURE + png_ihdr(width, height, bit_depth, color_type)
            + png_chunk(b"IDAT", b"".join(parts)) + png_chunk(b"IEND", b""))


def png_rgb16() -> bytes:
    """16-bit-per-channel RGB PNG, which Pillow cannot save but opens (reduced to 8 bits)."""
    w, h = 100, 70
    rng = np.random.default_rng(9)
    arr = rng.integers(0, 65536, size=(h, w, 3), dtype=np.uint16).astype(">u2")
    return png_chunks(w, h, 16, 2, (arr[y].tobytes() for y in range(h)))


def png_bomb(side: int = 10_000) -> bytes:
    """A valid 1-bit PNG of side x side black pixels: a few KB that decode to side² pixels.

    Compressed row by row, so making it never holds the pixels either.
    """
    row = bytes((side + 7) // 8)
    return png_chunks(side, side, 1, 0, (row for _ in range(side)))


def png_header_only(width: int = 64, height: int = 64) -> bytes:
    """Signature and IHDR, nothing else."""
    return PNG_SIGNATURE + png_ihdr(width, height, 8, 2)


def webp_canvas_bomb(side: int = 16_000) -> bytes:
    """A real small extended (VP8X) WebP whose header claims a side x side canvas."""
    exif = Image.Exif()
    exif[0x0112] = 1
    data = bytearray(_save(rgb_image(16, 16, seed=18), "WEBP", lossless=True, exif=exif))
    assert data[12:16] == b"VP8X"
    data[24:30] = (side - 1).to_bytes(3, "little") * 2
    return bytes(data)


def gif_frame_bomb(side: int = 10_000) -> bytes:
    """A 1x1 GIF screen whose first frame claims side x side; Pillow grows the image to fit it."""
    head = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, side, side, 0)
    return head + frame + b"\x02\x02\x4c\x01\x00;"


def webp(lossless: bool = False, alpha: bool = False) -> bytes:
    im = rgb_image(180, 110, seed=11)
    if alpha:
        im = Image.open(io.BytesIO(png_rgba())).resize((180, 110))
    return _save(im, "WEBP", lossless=lossless, quality=80)


def gif(animated: bool = False) -> bytes:
    frames = [rgb_image(120, 90, seed=12 + i).quantize(colors=64) for i in range(3)]
    if not animated:
        return _save(frames[0], "GIF", transparency=0)
    return _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)


def bmp() -> bytes:
    return _save(rgb_image(97, 61, seed=13), "BMP")


def tiff(compression: str | None = None, mode: str = "RGB") -> bytes:
    im = rgb_image(110, 75, seed=14)
    if mode != "RGB":
        im = im.convert(mode)
    return _save(im, "TIFF", **({"compression": compression} if compression else {}))


def tiny_png(width: int = 1, height: int = 1) -> bytes:
    return _save(rgb_image(width, height, seed=15), "PNG")


def random_bytes(n: int = 4096, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).bytes(n)


def pdf_bytes() -> bytes:
    return (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
            b"2 0 obj << /Type /Pages /Kids [] /Count 0 >> endobj\n"
            b"trailer << /Root 1 0 R >>\n%%EOF\n")


def eps_bytes() -> bytes:
    return (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
            b"newpath 0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n")


def ico_bytes() -> bytes:
    return _save(rgb_image(32, 32, seed=16), "ICO")


def psd_like_bytes() -> bytes:
    """A Photoshop header (8BPS, 1 channel 8-bit grayscale, 16x16) with raw pixel data."""
    header = b"8BPS" + struct.pack(">H6xHIIHH", 1, 1, 16, 16, 8, 1)
    return header + struct.pack(">I", 0) * 3 + struct.pack(">H", 0) + bytes(256)


# Every decodable case the exactness tests compare against the reference, by name.
VALID_CASES = {
    "jpeg_photo_640x480": lambda: photo_jpeg(),
    "jpeg_progressive": progressive_jpeg,
    "jpeg_gray": gray_jpeg,
    "jpeg_cmyk": cmyk_jpeg,
    "jpeg_444": lambda: photo_jpeg(64, 48, seed=17, subsampling=0),
    "png_rgba": png_rgba,
    "png_la": png_la,
    "png_palette_transparent": png_palette,
    "png_palette": lambda: png_palette(transparency=False),
    "png_gray": png_gray,
    "png_bilevel": png_bilevel,
    "png_gray16": png_gray16,
    "png_rgb16": png_rgb16,
    "png_1x1": lambda: tiny_png(1, 1),
    "png_1x4000": lambda: tiny_png(1, 4000),
    "png_4000x1": lambda: tiny_png(4000, 1),
    "png_3x3": lambda: tiny_png(3, 3),
    "png_256x256": lambda: tiny_png(256, 256),
    "png_2x300": lambda: tiny_png(2, 300),
    "webp_lossy": webp,
    "webp_lossless": lambda: webp(lossless=True),
    "webp_alpha": lambda: webp(lossless=True, alpha=True),
    "gif": gif,
    "gif_animated": lambda: gif(animated=True),
    "bmp": bmp,
    "tiff": tiff,
    "tiff_lzw": lambda: tiff("tiff_lzw"),
    "tiff_cmyk": lambda: tiff(mode="CMYK"),
    **{f"jpeg_exif_orientation_{o}": (lambda o=o: exif_jpeg(o)) for o in range(1, 9)},
    "png_exif_orientation_6": lambda: exif_png(6),
}
