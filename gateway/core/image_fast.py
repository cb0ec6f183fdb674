"""FAST image preprocessing: decode + resize to the model's square RGB input, approximately.

Owns ``decode_and_resize_fast``, the opt-in (per server) alternative to the exact
reference recipe (``load_image`` semantics: ``ImageOps.exif_transpose`` +
``convert("RGB")``, then PIL resize to ``size`` x ``size`` with the checkpoint's filter,
bicubic for SigLIP, bilinear for SigLIP 2). The result is close to the exact one, not
pixel-identical (measured for bicubic): 41-50 dB PSNR on photo-like images (the worst at
640x480), ~34 dB on noise-like ones such as dithered bitmaps; ``python -m
bench.preprocess_bench`` measures it. Images that fit inside the target (both sides
<= ``size``) take the exact recipe and come out pixel-identical: it is cheap there.

Where the time goes and what is done about it:

* JPEG decoding dominates. libjpeg-turbo can decode at 1/2, 1/4 or 1/8 scale (DCT
  scaling) for a fraction of the cost; we take the smallest scale whose short side is
  still at least ``_MIN_DECODE_RATIO`` x ``size``. The bound is below 1 on purpose: it
  lets a 640x480 photo decode at 320x240 (the common case; 240 -> 256 rows, about
  41 dB) instead of at full size, which alone costs more than the 3x budget.
* PIL's antialiased bicubic resize costs as much as the decode. OpenCV's SIMD resize
  (``INTER_AREA`` on the axes that shrink, ``INTER_LINEAR`` on those that grow or
  barely shrink) is 2-10x cheaper. OpenCV is optional: without it the same steps run
  on Pillow (bicubic): closer to exact, but only ~2x the baseline on 640x480.
* EXIF orientation is applied to the final square array (an axis swap or flip of a
  256x256 array) instead of to the full-size image; for a square target resizing
  commutes with the transposition, up to rounding.
* Decoding stays with Pillow (OpenCV's decoder saved only ~5% more on 640x480 and
  accepts truncated JPEGs that Pillow rejects), so which inputs are valid does not
  depend on the mode.

Pure: numpy, Pillow and (optionally) OpenCV; no grpc, no torch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import ExifTags, Image, ImageOps

try:  # optional: opencv-python-headless (pinned <4.12 while numpy is <2)
    import cv2 as _cv2
except ImportError:  # pragma: no cover - depends on the install
    _cv2 = None

# A decoded short side down to 0.9 x target keeps ~41 dB vs exact on photos and lets
# 640x480 decode at 1/2 scale; at 0.5 (one more halving) PSNR falls to ~33 dB.
_MIN_DECODE_RATIO = 0.9
# Below this shrink factor on every axis, bilinear sampling aliases too little to
# matter (>= 44 dB) and is 5x cheaper than area averaging.
_LINEAR_MAX_RATIO = 1.3
_DCT_SCALES = (8, 4, 2)
_JPEG_FORMATS = ("JPEG", "MPO")
# Modes whose conversion to RGB is per-pixel and per-channel (replicate L, keep RGB), so
# box-reducing before converting gives the same result as after, on 3x less data.
_REDUCE_BEFORE_CONVERT = ("RGB", "L")

# Same table as ImageOps.exif_transpose, as numpy views of an (H, W, C) array.
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda a: a[::-1, ::-1],  # ROTATE_180
    4: lambda a: a[::-1],  # FLIP_TOP_BOTTOM
    5: lambda a: a.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda a: np.rot90(a, -1),  # ROTATE_270 (clockwise quarter turn)
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),  # TRANSVERSE
    8: lambda a: np.rot90(a, 1),  # ROTATE_90 (counter-clockwise quarter turn)
}

_cv2_ready = False
_use_opencv = _cv2 is not None


def opencv_available() -> bool:
    """Whether the OpenCV fast paths are in use (``opencv-python-headless`` installed)."""
    return _use_opencv


def decode_and_resize_fast(im: Image.Image, size: int,
                           resample: int = Image.Resampling.BICUBIC) -> np.ndarray:
    """Decode ``im`` and resize it to a (size, size, 3) uint8 C-contiguous RGB array.

    ``resample``: the checkpoint's filter (bilinear or bicubic; gateway/core/families.py refuses
    fast mode for others at start-up), used wherever Pillow resizes; OpenCV's area + linear
    resize approximates either.
    ``im`` comes from ``PIL.Image.open`` with its header parsed (and size-checked by
    the caller) but pixels not loaded, so JPEG DCT scaling can still be chosen.
    EXIF orientation is applied. Decoding is Pillow's, so errors (truncated or
    corrupt data) propagate exactly as in the exact path (``OSError``, ...).
    """
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    w, h = im.size
    if w <= size and h <= size:
        return _exact_small(im, size, resample)
    if im.format in _JPEG_FORMATS:
        scale = _dct_scale(w, h, size)
        if scale > 1:
            # draft() picks the largest power of two <= min(W // w', H // h'): exactly
            # `scale` here. A no-op if the pixels were already loaded.
            im.draft(im.mode, (w // scale, h // scale))
    out = _resize(_pil_decode(im, size), size, resample)
    orientation = _orientation(im)
    if orientation is not None:
        out = orientation(out)
    return np.ascontiguousarray(out)


def _exact_small(im: Image.Image, size: int, resample: int) -> np.ndarray:
    """The exact recipe, step for step; only used where it is already cheap."""
    rgb = ImageOps.exif_transpose(im).convert("RGB")
    return np.ascontiguousarray(np.asarray(rgb.resize((size, size), Image.Resampling(resample))))


def _dct_scale(w: int, h: int, size: int) -> int:
    for s in _DCT_SCALES:
        if min(w, h) / s >= _MIN_DECODE_RATIO * size:
            return s
    return 1


def _orientation(im: Image.Image) -> Callable[[np.ndarray], np.ndarray] | None:
    # Same lookup as ImageOps.exif_transpose, and like it after load() (a PNG's eXIf
    # chunk may follow the pixel data).
    return _ORIENT.get(im.getexif().get(ExifTags.Base.Orientation, 1))


def _pil_decode(im: Image.Image, size: int) -> np.ndarray:
    """Load with Pillow, box-reduce large images by an integer factor, convert to RGB."""
    im.load()
    w, h = im.size
    # Keep >= 2x the target per axis after the box filter: the final resize then
    # does the fine, antialiased part (the same split as Pillow's reducing_gap=2).
    kx, ky = max(1, w // (2 * size)), max(1, h // (2 * size))
    if kx > 1 or ky > 1:
        src = im if im.mode in _REDUCE_BEFORE_CONVERT else im.convert("RGB")
        im = src.reduce((kx, ky))
    return np.asarray(im if im.mode == "RGB" else im.convert("RGB"))


def _resize(a: np.ndarray, size: int, resample: int) -> np.ndarray:
    h, w = a.shape[:2]
    if (h, w) == (size, size):
        return a
    if not _use_opencv:
        return np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling(resample)))
    _init_cv2()
    if max(w, h) / size >= _LINEAR_MAX_RATIO:
        # Area-average only the axes that shrink; INTER_AREA would fall back to
        # (aliasing) bilinear for all axes as soon as one of them grows.
        shrunk = (min(w, size), min(h, size))
        if shrunk != (w, h):
            a = _cv2.resize(a, shrunk, interpolation=_cv2.INTER_AREA)
            h, w = a.shape[:2]
    if (h, w) != (size, size):
        a = _cv2.resize(a, (size, size), interpolation=_cv2.INTER_LINEAR)
    return a


def _init_cv2() -> None:
    global _cv2_ready
    if not _cv2_ready:
        # The gateway parallelises across requests; OpenCV's own thread pool would
        # only oversubscribe the cores (and it is process-wide, hence done once here).
        _cv2.setNumThreads(1)
        _cv2_ready = True


def _set_opencv(enabled: bool) -> bool:
    """Test hook: force the Pillow-only path (False) or OpenCV (True, if installed)."""
    global _use_opencv
    previous = _use_opencv
    _use_opencv = enabled and _cv2 is not None
    return previous
