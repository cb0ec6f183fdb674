"""Image preprocessing: encoded bytes or raw RGB pixels -> uint8 array (size, size, 3).

Owns decoding (allow-listed formats only), the size limits checked before any pixel is
decoded, and the EXACT pipeline, which is pixel-identical to the reference:

    transformers.image_utils.load_image   -> ImageOps.exif_transpose, .convert("RGB")
    SiglipImageProcessor (slow, Pillow)   -> PIL resize to (size, size), the checkpoint's
                                             resample (BICUBIC for SigLIP), no crop

Scaling to [-1, 1] is not done here: the array is what the vision model's normalization gets.
FAST mode (decode with scaling, lossy) lives in ``gateway.core.image_fast``, imported lazily;
both modes take the same opened, header-checked, not yet decoded image. TRITON mode decodes
nothing here for the JPEGs ``triton_decodable`` accepts (Triton decodes them, nvJPEG on GPU);
the rest is decoded EXACT.

Every public function is thread-safe (no shared mutable state) and meant to run in a worker
thread: Pillow releases the GIL while it decodes and resizes. Every failure the caller can cause
is an ``InvalidInput`` naming the field; nothing else escapes for bad bytes.

Opening deliberately bypasses ``Image.open``: it warns (``DecompressionBombWarning``) or raises
by the process-global ``Image.MAX_IMAGE_PIXELS``, which we neither rely on nor mutate. We look up
the allow-listed plugins in Pillow's registry (``Image.OPEN``, filled by ``register_open``), parse
the header, and apply our own ``ImageLimits.max_pixels`` before a single pixel is read.
"""

from __future__ import annotations

import enum
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import (  # noqa: F401  (the plugin imports register the allow-listed formats)
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    ImageFile,
    ImageOps,
    JpegImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)

from gateway.core.errors import InvalidInput

# Pillow format ids, in the order their signatures are tried. Anything else (PDF, EPS, which
# runs Ghostscript, PSD, ICO, ...) is refused: each extra parser is attack surface.
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
_PRETTY = {"WEBP": "WebP", "MPO": "JPEG"}

# Exceptions Pillow raises for malformed data, during header parsing or decoding.
_PIL_DATA_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
                    KeyError, struct.error, zlib.error, Image.DecompressionBombError)

# Named only to give a better message; these are refused like any unknown bytes.
_KNOWN_SIGNATURES = (
    (b"%PDF", "PDF"), (b"%!PS", "PostScript/EPS"), (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"8BPS", "PSD"), (b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x02\x00", "CUR"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"<svg", "SVG"), (b"<?xml", "SVG/XML"), (b"\x76\x2f\x31\x01", "OpenEXR"),
)
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"avif": "AVIF"}


class PreprocessMode(str, enum.Enum):
    """EXACT: pixel-identical to the reference. FAST: approximate, for throughput.
    TRITON: plain JPEGs are decoded and resized by Triton (approximate); the rest as EXACT."""

    EXACT = "exact"
    FAST = "fast"
    TRITON = "triton"


@dataclass(frozen=True)
class ImageLimits:
    """Per-image limits, all checked before any pixel is decoded.

    max_pixels: width*height from the file header. 40 MP accepts photos from phones and most
        cameras (a 48 MP phone's full-resolution mode is refused); a decoded image at the limit
        is 120 MB of RGB, so (max in-flight decodes) x 120 MB bounds decode memory.
    max_bytes: encoded size; raw pixels are bounded by max_pixels (3 bytes each) instead.
    size, resample: output side and PIL resampling filter, the checkpoint's (ModelMeta.image);
        the defaults are siglip-base-patch16-256's, for tools that make no request.
    """

    max_pixels: int = 40_000_000
    max_bytes: int = 32 * 1024 * 1024
    size: int = 256
    resample: int = Image.Resampling.BICUBIC

    def __post_init__(self) -> None:
        if self.resample not in set(Image.Resampling):
            raise ValueError(f"ImageLimits.resample must be a PIL resampling filter, "
                             f"got {self.resample!r}")
        for name in ("max_pixels", "max_bytes", "size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ImageLimits.{name} must be a positive int, got {value!r}")


def preprocess_encoded(data: bytes, *, field: str, limits: ImageLimits,
                       mode: PreprocessMode = PreprocessMode.EXACT) -> np.ndarray:
    """Decode an encoded image and resize it: uint8 (size, size, 3), C-contiguous.

    Treat the result as read-only (in EXACT mode it is: a view of Pillow's output bytes).
    """
    _check_pillow_globals()
    _check_encoded_size(data, field, limits)
    mode = PreprocessMode(mode)
    im = _open_header(data, field, limits)
    try:
        _check_dimensions(im.size, field, limits)
        fmt = _PRETTY.get(im.format or "", im.format or "image")
        impl = _fast_impl() if mode is PreprocessMode.FAST else _decode_and_resize_exact
        try:
            out = impl(im, limits.size, limits.resample)
        except _PIL_DATA_ERRORS as exc:
            raise _decode_error(exc, fmt, field) from exc
    finally:
        im.close()
    return _checked_output(out, limits.size)


def triton_decodable(data: bytes, *, field: str, limits: ImageLimits) -> bool:
    """Whether Triton's JPEG decoder (model siglip_image_decode) may take ``data`` untouched.

    Checks what preprocess_encoded checks before decoding (size, format, header, pixel count)
    and raises the same InvalidInput, so an image is refused alike wherever it would decode.
    True for JPEGs (and MPO, whose first frame both sides decode) in YCbCr or grayscale, any
    EXIF orientation (the model applies it, as exif_transpose does); False for CMYK JPEGs,
    which nvJPEG does not convert like libjpeg, and for other formats. What Triton still
    refuses (arithmetic-coded or lossless JPEGs) the engine decodes here instead.
    """
    _check_encoded_size(data, field, limits)
    im = _open_header(data, field, limits)
    try:
        _check_dimensions(im.size, field, limits)
        return im.format in ("JPEG", "MPO") and im.mode in ("RGB", "L")
    finally:
        im.close()


def preprocess_raw(rgb: bytes, width: int, height: int, *, field: str,
                   limits: ImageLimits) -> np.ndarray:
    """Resize raw 8-bit RGB pixels (row-major HWC) exactly as the reference resizes an RGB image."""
    if width < 1 or height < 1:
        raise InvalidInput(f"width and height must be at least 1, got {width}x{height}",
                           field=field)
    _check_dimensions((width, height), field, limits)
    expected = width * height * 3
    if len(rgb) != expected:
        raise InvalidInput(f"raw RGB for {width}x{height} must be {expected} bytes "
                           f"(width*height*3), got {len(rgb)}", field=field)
    size = limits.size
    if (width, height) == (size, size):
        # PIL's resize to the same size is a copy, so the reference returns these very pixels.
        out = np.frombuffer(rgb, dtype=np.uint8).reshape(size, size, 3)
        out.flags.writeable = False  # a view of the caller's buffer: no copy, and no writes
        return out
    im = Image.frombuffer("RGB", (width, height), rgb, "raw", "RGB", 0, 1)
    return _resize_to_array(im, size, limits.resample)


def preprocess_image(item: object, *, field: str, limits: ImageLimits,
                     mode: PreprocessMode = PreprocessMode.EXACT) -> np.ndarray:
    """Dispatch a ``gateway.core.types`` image (EncodedImage or RawPixels)."""
    from gateway.core.types import EncodedImage, RawPixels

    if isinstance(item, EncodedImage):
        return preprocess_encoded(item.data, field=field, limits=limits, mode=mode)
    if isinstance(item, RawPixels):
        # Raw pixels need no decoding, so FAST has nothing to gain: both modes are exact.
        return preprocess_raw(item.rgb, item.width, item.height, field=field, limits=limits)
    raise TypeError(f"not an image input: {type(item).__name__}")


def ensure_mode_available(mode: PreprocessMode) -> None:
    """Call at start-up: raises RuntimeError if ``mode`` cannot run in this build."""
    if mode is PreprocessMode.FAST:
        _fast_impl()


def _decode_and_resize_exact(im: Image.Image, size: int, resample: int) -> np.ndarray:
    """The reference pipeline minus its copies; every step below is the reference's own call.

    Skipped, because they cannot change a pixel: exif_transpose's copy when there is nothing to
    rotate (in_place=True), convert("RGB") on an RGB image (a copy), the ndarray -> PIL -> ndarray
    round trip around the resize, and the resize itself at the target size (PIL returns a copy).
    Not used: JPEG ``draft``, which only saves work when it scales in the DCT, and that changes
    pixels; for mode alone it is a no-op, libjpeg already outputs RGB.
    """
    im.load()
    ImageOps.exif_transpose(im, in_place=True)
    if im.mode != "RGB":
        # Per-pixel conversion (no dithering to RGB), so it commutes with the transpose above.
        im = im.convert("RGB")
    return _resize_to_array(im, size, resample)


def _resize_to_array(im: Image.Image, size: int, resample: int) -> np.ndarray:
    if im.size != (size, size):
        # reducing_gap=None as transformers.image_transforms.resize passes it.
        im = im.resize((size, size), Image.Resampling(resample))
    # One copy (tobytes); the result is read-only, which is fine for a value we hand on.
    return np.asarray(im)


def _fast_impl() -> Callable[[Image.Image, int, int], np.ndarray]:
    try:
        from gateway.core import image_fast
    except ModuleNotFoundError as exc:
        if exc.name != "gateway.core.image_fast":
            raise
        raise RuntimeError("preprocess mode 'fast' is not available in this build "
                           "(gateway.core.image_fast is missing); use 'exact'") from exc
    return image_fast.decode_and_resize_fast


def _check_pillow_globals() -> None:
    # Pillow pads truncated files with grey when this is set; a process-wide switch that any
    # imported library could flip, and that would silently turn bad input into wrong answers.
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True; refusing to decode")


def _check_encoded_size(data: bytes, field: str, limits: ImageLimits) -> None:
    if not data:
        raise InvalidInput("empty image data", field=field)
    if len(data) > limits.max_bytes:
        raise InvalidInput(f"image is {len(data)} bytes, more than the limit of "
                           f"{limits.max_bytes}", field=field)


def _check_dimensions(wh: tuple[int, int], field: str, limits: ImageLimits) -> None:
    width, height = wh
    if width < 1 or height < 1:
        raise InvalidInput(f"image has no pixels ({width}x{height})", field=field)
    if width * height > limits.max_pixels:
        raise InvalidInput(f"image is {width}x{height} = {width * height} pixels, more than the "
                           f"limit of {limits.max_pixels}", field=field)


def _open_header(data: bytes, field: str, limits: ImageLimits) -> ImageFile.ImageFile:
    """Identify the format by signature and parse the header only (what Image.open does).

    Header parsing allocates no pixels, except in libwebp (the canvas, at creation: checked
    first, below) and for a GIF whose first frame asks for background disposal (a frame-sized
    fill, bounded only by Pillow's own global limit, 2 x Image.MAX_IMAGE_PIXELS bytes).
    """
    prefix = bytes(data[:30])
    for fmt in ALLOWED_FORMATS:
        factory, accept = Image.OPEN[fmt]
        matched = accept(prefix[:16]) if accept is not None else True
        if not matched or isinstance(matched, str):  # a str: plugin present, codec missing
            continue
        name = _PRETTY.get(fmt, fmt)
        if fmt == "WEBP" and (canvas := _webp_canvas_size(prefix)) is not None:
            _check_dimensions(canvas, field, limits)
        try:
            return factory(io.BytesIO(data), "")
        except Image.DecompressionBombError as exc:  # only from frames larger than the canvas
            raise InvalidInput(f"{name} frame is too large", field=field) from exc
        except _PIL_DATA_ERRORS as exc:
            raise InvalidInput(f"truncated or corrupt {name} header", field=field) from exc
    raise InvalidInput(_unsupported_message(prefix), field=field)


def _webp_canvas_size(head: bytes) -> tuple[int, int] | None:
    """Canvas size from the first chunk of a WebP file (RFC 9649), None if not in 30 bytes."""
    if len(head) < 30:
        return None
    chunk = head[12:16]
    if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", head, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L" and head[20] == 0x2F:
        bits = struct.unpack_from("<I", head, 21)[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        return (int.from_bytes(head[24:27], "little") + 1,
                int.from_bytes(head[27:30], "little") + 1)
    return None


def _unsupported_message(prefix: bytes) -> str:
    allowed = "JPEG, PNG, WebP, GIF, BMP or TIFF"
    name = next((n for sig, n in _KNOWN_SIGNATURES if prefix.startswith(sig)), None)
    if name is None and prefix[4:8] == b"ftyp":
        name = _FTYP_BRANDS.get(prefix[8:12])
    if name:
        return f"unsupported image format {name}; send {allowed}"
    return f"not a recognized image; send {allowed}"


def _decode_error(exc: BaseException, fmt: str, field: str) -> InvalidInput:
    text = str(exc).lower()
    if isinstance(exc, EOFError) or "truncated" in text:
        return InvalidInput(f"truncated {fmt}", field=field)
    if isinstance(exc, Image.DecompressionBombError):
        return InvalidInput(f"{fmt} frame is too large", field=field)
    return InvalidInput(f"corrupt {fmt} data", field=field)


def _checked_output(out: np.ndarray, size: int) -> np.ndarray:
    # Guards the seam with image_fast: whatever the mode, callers get exactly this.
    if out.shape != (size, size, 3) or out.dtype != np.uint8:
        raise RuntimeError(f"preprocessing returned {out.dtype}{out.shape}, "
                           f"expected uint8({size}, {size}, 3)")
    return np.ascontiguousarray(out)
