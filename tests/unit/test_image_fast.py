"""FAST preprocessing (gateway.core.image_fast): output contract, EXIF orientation, fidelity.

The reference everywhere is the exact recipe computed inline with Pillow (load_image's
exif_transpose + convert("RGB"), then BICUBIC to 256x256, which is what
SiglipImageProcessor does). Thresholds, and why they can fail:

* 38 dB PSNR for photo content at ordinary sizes. Measured 41-50 dB (the worst is
  640x480, which decodes at 320x240). A mirrored, rotated or channel-swapped output
  scores 10-20 dB on these images (asserted below, so the threshold is shown to bite);
  a resize that skips antialiasing scores ~30-38 dB.
* 45 dB on the 4000x3000 photo (measured ~50): decoding at 1/8 then area-averaging
  loses almost nothing there; plain bilinear from the decoded image measures ~30 dB and
  a wrong DCT scale (decoding below the target) ~35 dB.
* 28 dB for dithered 1-bit images: white noise, where any two resize filters differ
  most (measured 34 dB).
Images that fit inside the target must be pixel-identical: that path is the exact recipe.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from PIL import Image, ImageOps

from gateway.core import image_fast
from gateway.core.image_fast import decode_and_resize_fast
from tests.support import imagegen

SIZE = 256
PHOTO_DB = 38.0
BIG_PHOTO_DB = 45.0
NOISE_DB = 28.0


@pytest.fixture(params=["opencv", "pillow"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs with OpenCV's resize and with the Pillow-only fallback."""
    if request.param == "opencv" and image_fast._cv2 is None:
        pytest.skip("opencv-python-headless is not installed")
    previous = image_fast._set_opencv(request.param == "opencv")
    try:
        yield request.param
    finally:
        image_fast._set_opencv(previous)


def exact(data: bytes, size: int = SIZE) -> np.ndarray:
    im = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    return np.asarray(im.resize((size, size), Image.Resampling.BICUBIC))


def fast(data: bytes, size: int = SIZE) -> np.ndarray:
    return decode_and_resize_fast(Image.open(io.BytesIO(data)), size)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def photo(width: int, height: int, seed: int) -> np.ndarray:
    """Photo-like uint8 RGB: gradients, sinusoids, hard-edged patches, fine stripes, noise.

    Asymmetric on purpose (a bright corner, a tilted ramp), so every flip or rotation of
    it is far from it.
    """
    rng = np.random.default_rng(seed)
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    img = np.empty((height, width, 3), np.float32)
    for c in range(3):
        a, b, f1, f2, ph = rng.uniform(0.2, 1.0, 5)
        img[..., c] = 50 + 110 * a * x + 60 * b * y * y + 35 * np.sin(
            2 * np.pi * (3 * f1 * x + 2 * f2 * y) + 6 * ph)
    for _ in range(10):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        rw, rh = int(rng.integers(2, width // 4 + 3)), int(rng.integers(2, height // 4 + 3))
        img[y0:y0 + rh, x0:x0 + rw] = 0.3 * img[y0:y0 + rh, x0:x0 + rw] + 0.7 * rng.uniform(
            0, 255, 3).astype(np.float32)
    img[: height // 5, : width // 5] = 245.0  # the bright corner
    yy, xx = np.mgrid[0 : height // 3, width // 2 : width // 2 + width // 3].astype(np.float32)
    img[: height // 3, width // 2 : width // 2 + width // 3] += (25 * np.sin(0.9 * xx + 0.3 * yy))[
        ..., None]
    img += rng.standard_normal((height, width, 1), dtype=np.float32) * 6
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


@functools.cache
def _rgb(w: int, h: int, seed: int) -> Image.Image:
    return Image.fromarray(photo(w, h, seed), "RGB")


def _rgba(w: int, h: int, seed: int) -> Image.Image:
    alpha = np.linspace(0, 255, w * h).reshape(h, w).astype(np.uint8)
    return Image.fromarray(np.dstack([photo(w, h, seed), alpha]), "RGBA")


def _gray16(w: int, h: int, seed: int) -> Image.Image:
    # Values inside 0..255: Pillow's I;16 -> RGB clips, so a wider range would be all white.
    return Image.fromarray(np.asarray(_rgb(w, h, seed).convert("L")).astype(np.uint16))


# Every mode and format the exact path decodes, each larger than the target so that the
# fast path (DCT scaling, box reduce, OpenCV/Pillow resize) is what runs.
LARGE_CASES: dict[str, tuple[Callable[[], bytes], float]] = {
    "jpeg_rgb": (lambda: encode(_rgb(700, 500, 1), "JPEG", quality=90), PHOTO_DB),
    "jpeg_progressive": (lambda: encode(_rgb(900, 600, 2), "JPEG", quality=90,
                                        progressive=True), PHOTO_DB),
    "jpeg_gray": (lambda: encode(_rgb(1300, 1000, 3).convert("L"), "JPEG", quality=90), PHOTO_DB),
    "jpeg_cmyk": (lambda: encode(_rgb(1100, 800, 4).convert("CMYK"), "JPEG", quality=90), PHOTO_DB),
    "jpeg_444": (lambda: encode(_rgb(600, 700, 5), "JPEG", quality=90, subsampling=0), PHOTO_DB),
    "png_rgb": (lambda: encode(_rgb(640, 480, 6), "PNG"), PHOTO_DB),
    "png_rgba": (lambda: encode(_rgba(1200, 700, 7), "PNG"), PHOTO_DB),
    "png_la": (lambda: encode(_rgba(500, 400, 8).convert("LA"), "PNG"), PHOTO_DB),
    "png_palette": (lambda: encode(_rgb(800, 600, 9).quantize(64), "PNG", transparency=3),
                    PHOTO_DB),
    "png_gray": (lambda: encode(_rgb(333, 1400, 10).convert("L"), "PNG"), PHOTO_DB),
    "png_gray16": (lambda: encode(_gray16(900, 700, 11), "PNG"), PHOTO_DB),
    "png_bilevel": (lambda: encode(_rgb(780, 540, 12).convert("1"), "PNG"), NOISE_DB),
    "webp_lossy": (lambda: encode(_rgb(1000, 640, 13), "WEBP", quality=90), PHOTO_DB),
    "webp_alpha": (lambda: encode(_rgba(600, 400, 14), "WEBP", lossless=True), PHOTO_DB),
    "gif": (lambda: encode(_rgb(720, 540, 15).quantize(64), "GIF"), PHOTO_DB),
    "bmp": (lambda: encode(_rgb(582, 366, 16), "BMP"), PHOTO_DB),
    "tiff_cmyk": (lambda: encode(_rgb(640, 520, 17).convert("CMYK"), "TIFF"), PHOTO_DB),
    "panorama_jpeg": (lambda: encode(_rgb(3000, 400, 18), "JPEG", quality=90), PHOTO_DB),
    "tall_png": (lambda: encode(_rgb(120, 2000, 19), "PNG"), PHOTO_DB),
}


def check_contract(out: np.ndarray, size: int = SIZE) -> None:
    assert isinstance(out, np.ndarray)
    assert out.shape == (size, size, 3)
    assert out.dtype == np.uint8
    assert out.flags.c_contiguous


@functools.cache
def _large_case(name: str) -> bytes:
    return LARGE_CASES[name][0]()


@pytest.mark.parametrize("name", sorted(LARGE_CASES))
def test_large_images_every_mode_close_to_exact(name: str, backend: str) -> None:
    data = _large_case(name)
    floor = LARGE_CASES[name][1]
    out = fast(data)
    check_contract(out)
    assert psnr(out, exact(data)) >= floor


@pytest.mark.parametrize("name", sorted(imagegen.VALID_CASES))
def test_small_images_identical_to_exact(name: str, backend: str) -> None:
    """Inputs that fit inside the target take the exact recipe; larger ones stay close."""
    data = imagegen.VALID_CASES[name]()
    out = fast(data)
    check_contract(out)
    ref = exact(data)
    w, h = Image.open(io.BytesIO(data)).size
    if w <= SIZE and h <= SIZE:
        np.testing.assert_array_equal(out, ref)
    else:  # 640x480 photo, 320x200, 300x200, and 1-pixel-wide strips (no real content)
        assert psnr(out, ref) >= (PHOTO_DB if min(w, h) > 8 else NOISE_DB)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation(orientation: int, fmt: str, backend: str) -> None:
    """A non-square rotated image comes out as exif_transpose would turn it, and only so."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(_rgb(1200, 700, 30), fmt, exif=exif, **({"quality": 90} if fmt == "JPEG" else {}))
    out = fast(data)
    check_contract(out)
    ref = exact(data)
    assert psnr(out, ref) >= PHOTO_DB
    # The threshold tells orientations apart: every other transform of the correct
    # output is far below it (so a wrong table entry fails above).
    for other in range(2, 9):
        wrong = image_fast._ORIENT[other](ref)
        assert psnr(wrong, ref) < PHOTO_DB - 15


def test_orientation_table_matches_pillow() -> None:
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    methods = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
               4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}
    assert set(methods) == set(image_fast._ORIENT)
    for orientation, method in methods.items():
        expected = np.asarray(Image.fromarray(arr).transpose(method))
        np.testing.assert_array_equal(image_fast._ORIENT[orientation](arr), expected)


@pytest.fixture(scope="module")
def big_photo_jpeg() -> bytes:
    return encode(Image.fromarray(photo(4000, 3000, 40), "RGB"), "JPEG", quality=90)


def test_fidelity_floor_4000x3000(big_photo_jpeg: bytes, backend: str) -> None:
    im = Image.open(io.BytesIO(big_photo_jpeg))
    out = decode_and_resize_fast(im, SIZE)
    check_contract(out)
    ref = exact(big_photo_jpeg)
    assert psnr(out, ref) >= BIG_PHOTO_DB
    assert int(np.abs(out.astype(np.int16) - ref).max()) <= 32
    # It decoded at 1/8 scale in the DCT: where the speed comes from.
    assert im.size == (500, 375)


@pytest.mark.parametrize(("wh", "decoded"), [
    ((640, 480), (320, 240)),  # 240 >= 0.9 * 256: half scale
    ((1920, 1080), (480, 270)),
    ((3000, 4000), (375, 500)),
    ((460, 300), (460, 300)),  # 150 < 0.9 * 256: full size
])
def test_dct_scale_choice(wh: tuple[int, int], decoded: tuple[int, int]) -> None:
    data = encode(Image.new("RGB", wh, (90, 120, 150)), "JPEG", quality=90)
    im = Image.open(io.BytesIO(data))
    check_contract(decode_and_resize_fast(im, SIZE))
    assert im.size == decoded
    assert min(decoded) >= 0.9 * SIZE or decoded == wh


@pytest.mark.parametrize("size", [1, 64, 224, 384])
def test_other_target_sizes(size: int, backend: str) -> None:
    data = encode(_rgb(1024, 768, 50), "JPEG", quality=90)
    out = fast(data, size)
    check_contract(out, size)
    if size >= 64:
        assert psnr(out, exact(data, size)) >= PHOTO_DB


def test_bad_size_rejected() -> None:
    with pytest.raises(ValueError):
        fast(encode(_rgb(300, 300, 51), "PNG"), 0)


def test_truncated_jpeg_fails_as_in_exact(big_photo_jpeg: bytes, backend: str) -> None:
    cut = big_photo_jpeg[: len(big_photo_jpeg) // 2]
    with pytest.raises(OSError, match="truncated"):
        exact(cut)
    with pytest.raises(OSError, match="truncated"):
        fast(cut)


def test_through_preprocess_encoded(big_photo_jpeg: bytes) -> None:
    """The gateway's call site (mode FAST) gets this module's output."""
    from gateway.core.errors import InvalidInput
    from gateway.core.images import ImageLimits, PreprocessMode, preprocess_encoded

    limits = ImageLimits(size=SIZE)
    got = preprocess_encoded(big_photo_jpeg, field="images[0]", limits=limits,
                             mode=PreprocessMode.FAST)
    np.testing.assert_array_equal(got, fast(big_photo_jpeg))
    with pytest.raises(InvalidInput, match="truncated"):
        preprocess_encoded(big_photo_jpeg[:50_000], field="images[0]", limits=limits,
                           mode=PreprocessMode.FAST)
