"""Image preprocessing against the reference: load_image + SigLIP's Pillow image processor
(``SiglipImageProcessor`` in transformers 4.x, ``SiglipImageProcessorPil`` in 5.x, converting
no colours after load_image: see tests/support/hf_reference.py).

Compared as uint8 before rescale/normalize: the strictest check, since the float pipeline is a
per-pixel function of these bytes (test_float_pipeline_starts_from_our_bytes shows it).

The reference gets ``input_data_format="channels_last"``. Without it, transformers guesses the
channel axis and takes an image 1 or 3 pixels tall for channels-first, producing a wrongly
shaped result; for every other shape the guess is right and changes nothing (checked below).
"""

from __future__ import annotations

import io
import sys
import threading
import time
import types
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile, WebPImagePlugin

import gateway.core
from gateway.core.errors import InvalidInput
from gateway.core.images import (
    ImageLimits,
    PreprocessMode,
    ensure_mode_available,
    preprocess_encoded,
    preprocess_image,
    preprocess_raw,
)
from gateway.core.types import EncodedImage, RawPixels
from tests.support import imagegen as g
from tests.support.hf_reference import channels_last, image_processor

LIMITS = ImageLimits()
FIELD = "images[3]"


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    """The checkpoint's own Pillow image processor, rescale and normalize off."""
    proc = image_processor(str(tiny_checkpoint), do_rescale=False, do_normalize=False)
    assert proc.size == {"height": 256, "width": 256}
    assert proc.resample == Image.Resampling.BICUBIC
    return proc


def reference_encoded(proc, data: bytes, *, explicit_channels: bool = True) -> np.ndarray:
    from transformers.image_utils import load_image

    kwargs = {"input_data_format": "channels_last"} if explicit_channels else {}
    image = load_image(Image.open(io.BytesIO(data)))
    return channels_last(proc(image, return_tensors="np", **kwargs)["pixel_values"])[0]


@pytest.mark.parametrize("case", sorted(g.VALID_CASES))
def test_exact_matches_reference(reference, case):
    data = g.VALID_CASES[case]()
    ours = preprocess_encoded(data, field=FIELD, limits=LIMITS)
    assert ours.dtype == np.uint8 and ours.shape == (256, 256, 3)
    assert ours.flags.c_contiguous
    ref = reference_encoded(reference, data)
    assert ref.dtype == np.uint8
    np.testing.assert_array_equal(ours, ref)
    height = Image.open(io.BytesIO(data)).size[1]
    if height not in (1, 3):
        np.testing.assert_array_equal(ours, reference_encoded(reference, data,
                                                              explicit_channels=False))


def test_exif_orientation_is_applied():
    """Guards the reference comparison itself: orientations 5-8 swap width and height."""
    upright = preprocess_encoded(g.exif_jpeg(1, 120, 80), field=FIELD, limits=LIMITS)
    rotated = preprocess_encoded(g.exif_jpeg(6, 120, 80), field=FIELD, limits=LIMITS)
    assert not np.array_equal(upright, rotated)


def test_float_pipeline_starts_from_our_bytes(tiny_checkpoint):
    """The full processor on the original equals the full processor on our uint8 output."""
    from transformers.image_utils import load_image

    full = image_processor(str(tiny_checkpoint))
    for data in (g.photo_jpeg(), g.png_rgba(), g.exif_jpeg(6)):
        ours = preprocess_encoded(data, field=FIELD, limits=LIMITS)
        want = full(load_image(Image.open(io.BytesIO(data))), return_tensors="np")["pixel_values"]
        got = full(Image.fromarray(ours), return_tensors="np")["pixel_values"]
        assert want.dtype == np.float32
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("wh", [(640, 480), (256, 256), (1, 1), (1, 4000), (4000, 1), (2, 300),
                                (257, 255)])
def test_raw_matches_reference(reference, wh):
    width, height = wh
    pixels = g.photo_array(width, height, seed=30)
    ours = preprocess_raw(pixels.tobytes(), width, height, field=FIELD, limits=LIMITS)
    assert ours.dtype == np.uint8 and ours.shape == (256, 256, 3) and ours.flags.c_contiguous
    ref = channels_last(reference(pixels, return_tensors="np",
                                  input_data_format="channels_last")["pixel_values"])[0]
    np.testing.assert_array_equal(ours, ref)
    if wh == (256, 256):
        # The reference's resize leaves a 256x256 image alone, so skipping it is exact.
        np.testing.assert_array_equal(ref, pixels)


def test_raw_accepts_any_bytes_like():
    pixels = g.photo_array(30, 20, seed=31).tobytes()
    a = preprocess_raw(pixels, 30, 20, field=FIELD, limits=LIMITS)
    b = preprocess_raw(memoryview(bytearray(pixels)), 30, 20, field=FIELD, limits=LIMITS)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(("width", "height", "nbytes", "expect"), [
    (10, 10, 299, "must be 300 bytes"),
    (10, 10, 301, "must be 300 bytes"),
    (10, 10, 0, "must be 300 bytes"),
    (0, 10, 0, "at least 1"),
    (10, -1, 0, "at least 1"),
    (100_000, 100_000, 30, "more than the limit"),
])
def test_raw_bad(width, height, nbytes, expect):
    with pytest.raises(InvalidInput, match=expect) as err:
        preprocess_raw(bytes(nbytes), width, height, field=FIELD, limits=LIMITS)
    assert err.value.field == FIELD and str(err.value).startswith(f"{FIELD}: ")


BAD_INPUTS = {
    "empty": (b"", "empty image data"),
    "random": (g.random_bytes(), "not a recognized image"),
    "zeros": (bytes(1000), "not a recognized image"),
    "text": (b"hello, this is not an image at all", "not a recognized image"),
    "truncated_jpeg": (g.photo_jpeg()[:20_000], "truncated JPEG"),
    "jpeg_header_only": (g.photo_jpeg()[:600], "JPEG header"),
    "png_header_only": (g.png_header_only(), "truncated or corrupt PNG header"),
    "png_signature_only": (g.PNG_SIGNATURE, "PNG header"),
    "truncated_png": (g.png_rgba()[:30_000], "truncated PNG"),
    "truncated_gif": (g.gif()[:2_000], "truncated GIF"),
    "truncated_bmp": (g.bmp()[:9_000], "truncated BMP"),
    "truncated_tiff": (g.tiff()[:12_000], "truncated TIFF"),
    "truncated_webp": (g.webp()[:1_500], "WebP"),
    "pdf": (g.pdf_bytes(), "unsupported image format PDF"),
    "eps": (g.eps_bytes(), "unsupported image format PostScript/EPS"),
    "psd": (g.psd_like_bytes(), "unsupported image format PSD"),
    "ico": (g.ico_bytes(), "unsupported image format ICO"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_encoded_input(case):
    data, expect = BAD_INPUTS[case]
    with pytest.raises(InvalidInput, match=expect) as err:
        preprocess_encoded(data, field=FIELD, limits=LIMITS)
    assert err.value.field == FIELD
    assert str(err.value) == f"{FIELD}: {err.value.message}"


@pytest.fixture(scope="module")
def bombs() -> dict[str, bytes]:
    return {"png_10000": g.png_bomb(10_000), "png_14000": g.png_bomb(14_000),
            "webp_canvas_8000": g.webp_canvas_bomb(8_000), "gif_frame_10000": g.gif_frame_bomb()}


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("case", ["png_10000", "png_14000", "webp_canvas_8000", "gif_frame_10000"])
def test_bomb_refused_from_header(bombs, case, monkeypatch):
    data = bombs[case]
    assert len(data) < 30_000

    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels decoded (or a canvas allocated) for an oversized image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", no_decoding)
    max_image_pixels = Image.MAX_IMAGE_PIXELS
    start = time.perf_counter()
    with pytest.raises(InvalidInput, match="more than the limit of 40000000") as err:
        preprocess_encoded(data, field=FIELD, limits=LIMITS)
    assert time.perf_counter() - start < 0.2
    assert err.value.field == FIELD
    assert Image.MAX_IMAGE_PIXELS == max_image_pixels


def test_png_bomb_is_a_real_image():
    """The bomb test means something only if the bomb decodes when the limit allows it."""
    im = Image.open(io.BytesIO(g.png_bomb(3_000)))
    assert im.size == (3_000, 3_000)
    im.load()
    assert im.getextrema() == (0, 0)


def test_pixel_limit_boundary():
    data = g.tiny_png(100, 60)
    preprocess_encoded(data, field=FIELD, limits=ImageLimits(max_pixels=6_000))
    with pytest.raises(InvalidInput, match="100x60 = 6000 pixels, more than the limit of 5999"):
        preprocess_encoded(data, field=FIELD, limits=ImageLimits(max_pixels=5_999))
    raw = bytes(6_000 * 3)
    preprocess_raw(raw, 100, 60, field=FIELD, limits=ImageLimits(max_pixels=6_000))
    with pytest.raises(InvalidInput, match="more than the limit"):
        preprocess_raw(raw, 100, 60, field=FIELD, limits=ImageLimits(max_pixels=5_999))


def test_byte_limit():
    data = g.photo_jpeg()
    preprocess_encoded(data, field=FIELD, limits=ImageLimits(max_bytes=len(data)))
    with pytest.raises(InvalidInput, match=f"image is {len(data)} bytes"):
        preprocess_encoded(data, field=FIELD, limits=ImageLimits(max_bytes=len(data) - 1))


def test_limits_validated():
    with pytest.raises(ValueError, match="max_pixels"):
        ImageLimits(max_pixels=0)
    with pytest.raises(ValueError, match="size"):
        ImageLimits(size=-256)


def test_truncated_images_never_padded(monkeypatch):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        preprocess_encoded(g.photo_jpeg()[:20_000], field=FIELD, limits=LIMITS)


def _mutations(data: bytes, rng: np.random.Generator, n: int):
    for i in range(n):
        buf = bytearray(data)
        if i % 3 == 0:
            yield bytes(buf[: int(rng.integers(1, len(buf)))])
        else:
            # Flip bytes, half of the time in the header where parsers branch the most.
            span = len(buf) if i % 3 == 1 else min(len(buf), 200)
            for _ in range(int(rng.integers(1, 6))):
                buf[int(rng.integers(0, span))] = int(rng.integers(0, 256))
            yield bytes(buf)


@pytest.mark.filterwarnings("ignore")
def test_fuzzed_inputs_give_invalid_input_or_an_image():
    rng = np.random.default_rng(1234)
    cases = ["jpeg_progressive", "jpeg_cmyk", "png_rgba", "png_palette_transparent",
             "png_gray16", "webp_lossy", "webp_lossless", "gif_animated", "bmp", "tiff_lzw",
             "jpeg_exif_orientation_6"]
    outcomes = {"ok": 0, "invalid": 0}
    for case in cases:
        for data in _mutations(g.VALID_CASES[case](), rng, 45):
            try:
                out = preprocess_encoded(data, field=FIELD, limits=LIMITS)
            except InvalidInput as exc:
                assert exc.field == FIELD
                outcomes["invalid"] += 1
            else:
                assert out.shape == (256, 256, 3) and out.dtype == np.uint8
                outcomes["ok"] += 1
    assert outcomes["invalid"] > 100 and outcomes["ok"] > 10


def test_threads_give_the_same_results():
    datas = [g.VALID_CASES[c]() for c in ("jpeg_photo_640x480", "png_rgba", "webp_lossy", "gif",
                                           "tiff", "jpeg_exif_orientation_6")] * 3
    serial = [preprocess_encoded(d, field=FIELD, limits=LIMITS) for d in datas]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda d: preprocess_encoded(d, field=FIELD, limits=LIMITS),
                                 datas))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_preprocess_image_dispatch():
    pixels = g.photo_array(40, 30, seed=32)
    data = g.photo_jpeg(40, 30)
    np.testing.assert_array_equal(
        preprocess_image(EncodedImage(data), field=FIELD, limits=LIMITS),
        preprocess_encoded(data, field=FIELD, limits=LIMITS))
    np.testing.assert_array_equal(
        preprocess_image(RawPixels(pixels.tobytes(), 40, 30), field=FIELD, limits=LIMITS,
                         mode=PreprocessMode.FAST),
        preprocess_raw(pixels.tobytes(), 40, 30, field=FIELD, limits=LIMITS))
    with pytest.raises(TypeError):
        preprocess_image("not an image", field=FIELD, limits=LIMITS)


# --- the seam with gateway/core/image_fast.py -------------------------------------------------

def _fake_fast(monkeypatch, impl) -> None:
    module = types.ModuleType("gateway.core.image_fast")
    module.decode_and_resize_fast = impl
    monkeypatch.setitem(sys.modules, "gateway.core.image_fast", module)
    monkeypatch.setattr(gateway.core, "image_fast", module, raising=False)


def test_fast_mode_dispatches_with_an_unloaded_header_checked_image(monkeypatch):
    calls = []

    def fake(im, size, resample):
        calls.append((im.format, im.size, size, threading.get_ident()))
        assert im.tile, "image_fast must get the image before it is decoded"
        return np.zeros((size, size, 3), np.uint8)

    _fake_fast(monkeypatch, fake)
    out = preprocess_encoded(g.photo_jpeg(), field=FIELD, limits=LIMITS, mode="fast")
    assert calls == [("JPEG", (640, 480), 256, threading.get_ident())]
    assert out.shape == (256, 256, 3)
    with pytest.raises(InvalidInput, match="more than the limit"):
        preprocess_encoded(g.png_bomb(7_000), field=FIELD, limits=LIMITS,
                           mode=PreprocessMode.FAST)
    assert len(calls) == 1


def test_fast_mode_errors_are_mapped(monkeypatch):
    def truncated(im, size, resample):
        raise OSError("image file is truncated (7 bytes not processed)")

    _fake_fast(monkeypatch, truncated)
    with pytest.raises(InvalidInput, match=f"^{FIELD.replace('[', '.').replace(']', '.')}: "
                                           "truncated JPEG$"):
        preprocess_encoded(g.photo_jpeg(), field=FIELD, limits=LIMITS, mode=PreprocessMode.FAST)

    _fake_fast(monkeypatch, lambda im, size, resample: np.zeros((size, size), np.uint8))
    with pytest.raises(RuntimeError, match="expected uint8"):
        preprocess_encoded(g.photo_jpeg(), field=FIELD, limits=LIMITS, mode=PreprocessMode.FAST)


def test_fast_mode_missing_is_a_startup_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gateway.core.image_fast", None)
    monkeypatch.delattr(gateway.core, "image_fast", raising=False)
    ensure_mode_available(PreprocessMode.EXACT)
    with pytest.raises(RuntimeError, match="fast"):
        ensure_mode_available(PreprocessMode.FAST)
    with pytest.raises(RuntimeError, match="fast"):
        preprocess_encoded(g.photo_jpeg(), field=FIELD, limits=LIMITS, mode=PreprocessMode.FAST)

