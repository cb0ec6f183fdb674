"""Triton python-backend model: encoded JPEGs -> the vision tower's input pixels.

Contract (see model_repository/README.md): input `images` BYTES [N, 1], one encoded JPEG per
row; output `pixels` uint8 [N, S, S, 3] (RGB, HWC), the input of `siglip_vision`. Pixels
follow the gateway's exact preprocessing (gateway/core/images.py: EXIF orientation, RGB, PIL
resize straight to S x S with the checkpoint's filter, no crop) to within rounding (README:
fidelity). S and the filter (bicubic or bilinear; others fail the load) come from the
checkpoint's image processor: parameter `model`, else $SIGLIP_MODEL, else the hub's base model.

Decoding: GPU instances decode with nvJPEG (torchvision.io.decode_jpeg(device="cuda"), one
batched call) and resize on the GPU; rows nvJPEG does not colour-convert like libjpeg (CMYK,
YCCK, RGB-coded) or fails on go to libjpeg on the host. CPU instances use libjpeg: torchvision's
if torchvision imports, else Pillow's (same library; the pixels are identical).
Limits (pixel count, bytes) are checked from the JPEG header before a pixel is decoded.

Self-contained on purpose: Triton loads each model directory on its own (it puts this
version directory on sys.path, so `jpeg_header` beside this file imports). Outside Triton
(bench/decode_fidelity.py, with this directory on sys.path) `Preprocessor` works alone.
"""

import io
import json
import os
import re
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from jpeg_header import JpegError, JpegHeader, parse_header

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: TritonPythonModel is unusable, the rest works
    pb_utils = None

INPUT, OUTPUT = "images", "pixels"
DEFAULTS = {"max_pixels": 40_000_000, "max_bytes": 32 * 1024 * 1024,
            "max_batch_pixels": 128_000_000}
CPU_DECODERS = ("auto", "torchvision", "pillow")
DEFAULT_MODEL = "google/siglip-base-patch16-256"
# PIL resampling codes (preprocessor_config.json) -> torch's antialiased interpolation modes.
MODES = {2: "bilinear", 3: "bicubic"}


def _as_tensor(data: bytes) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())


def _decode_pillow(data: bytes) -> torch.Tensor:
    from PIL import JpegImagePlugin

    with JpegImagePlugin.JpegImageFile(io.BytesIO(data)) as im:
        im.load()
        rgb = im if im.mode == "RGB" else im.convert("RGB")  # gray, CMYK: as the gateway does
        return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)


def _torchvision_io():
    # A CUDA build of torchvision beside a CPU torch raises RuntimeError, not ImportError.
    from torchvision.io import ImageReadMode, decode_jpeg

    return decode_jpeg, ImageReadMode.RGB


def _cpu_decoder(choice: str) -> tuple[str, Callable[[bytes], torch.Tensor]]:
    if choice not in CPU_DECODERS:
        raise ValueError(f"cpu_decoder={choice!r}: want one of {CPU_DECODERS}")
    if choice != "pillow":
        try:
            decode_jpeg, rgb = _torchvision_io()
        except Exception:
            if choice == "torchvision":
                raise
        else:
            return "torchvision", lambda data: decode_jpeg(_as_tensor(data), mode=rgb)
    return "pillow", _decode_pillow


def _nvjpeg_decoder(device: torch.device) -> Callable[[list[bytes]], list[torch.Tensor]]:
    decode_jpeg, rgb = _torchvision_io()
    return lambda rows: decode_jpeg([_as_tensor(d) for d in rows], mode=rgb, device=device)


# Pillow's transposes (ImageOps.exif_transpose) on [..., H, W].
_ORIENT = {
    2: lambda x: x.flip(-1), 3: lambda x: x.flip(-2, -1), 4: lambda x: x.flip(-2),
    5: lambda x: x.transpose(-2, -1), 6: lambda x: x.rot90(-1, (-2, -1)),
    7: lambda x: x.transpose(-2, -1).flip(-2, -1), 8: lambda x: x.rot90(1, (-2, -1)),
}


class Preprocessor:
    """Decode + resize (+ orient) rows of JPEG bytes on one device. Not thread-safe.

    resize_float: resize in float32 then round (what the GPU does: its bicubic kernels take no
    uint8) instead of torch's uint8 CPU path, which follows Pillow's fixed-point arithmetic.
    batch_decode: decodes a list of rows on the device at once (nvJPEG); None: host only.
    """

    def __init__(self, device: torch.device, size: tuple[int, int], *, mode: str = "bicubic",
                 cpu_decode: Callable[[bytes], torch.Tensor] = _decode_pillow,
                 batch_decode: Callable[[list[bytes]], list[torch.Tensor]] | None = None,
                 resize_float: bool | None = None, max_pixels: int = DEFAULTS["max_pixels"],
                 max_bytes: int = DEFAULTS["max_bytes"],
                 max_batch_pixels: int = DEFAULTS["max_batch_pixels"]) -> None:
        self.device, self.size, self.mode = device, size, mode
        self.cpu_decode, self.batch_decode = cpu_decode, batch_decode
        self.resize_float = device.type != "cpu" if resize_float is None else resize_float
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        self.max_batch_pixels = max_batch_pixels

    def parse(self, data: bytes) -> JpegHeader:
        return parse_header(data, self.max_pixels, self.max_bytes)

    def run(self, rows: Sequence[bytes]) -> list:
        """Each row's uint8 (H, W, 3) array, or its JpegError."""
        out, todo = [], []
        for i, data in enumerate(rows):
            try:
                todo.append((i, data, self.parse(data)))
                out.append(None)
            except JpegError as exc:
                out.append(exc)
        for (i, _, _), result in zip(todo, self.decode([(d, h) for _, d, h in todo]), strict=True):
            out[i] = result
        return out

    def decode(self, rows: Sequence[tuple[bytes, JpegHeader]]) -> list:
        """Rows whose headers `parse` accepted -> uint8 (H, W, 3) arrays or JpegErrors."""
        out: list = [None] * len(rows)
        on_device = [self.batch_decode is not None and h.ycc for _, h in rows]
        chunk: list[int] = []
        budget = 0
        for i, (data, header) in enumerate(rows):
            if not on_device[i]:
                out[i] = self._host(data, header)
                continue
            pixels = header.width * header.height
            if chunk and budget + pixels > self.max_batch_pixels:
                self._device_chunk(rows, chunk, out)  # bounds the decoded pixels on the device
                chunk, budget = [], 0
            chunk.append(i)
            budget += pixels
        if chunk:
            self._device_chunk(rows, chunk, out)
        return out

    def _host(self, data: bytes, header: JpegHeader) -> np.ndarray | JpegError:
        try:
            image = self.cpu_decode(data)
        except Exception as exc:  # the decoder's own words, without torchvision's file paths
            return JpegError(f"corrupt or truncated JPEG data ({_short(exc)})")
        return self._resize(image[None], header.orientation)[0].numpy()

    def _device_chunk(self, rows, chunk: list[int], out: list) -> None:
        try:
            decoded = dict(zip(chunk, self.batch_decode([rows[i][0] for i in chunk]), strict=True))
        except torch.OutOfMemoryError:
            raise  # fails the batch (INTERNAL); never one row's fault: each row is bounded
        except Exception:  # nvJPEG fails the whole list for one bad row: find it
            decoded = {}
            for i in chunk:
                try:
                    decoded[i] = self.batch_decode([rows[i][0]])[0]
                except torch.OutOfMemoryError:
                    raise
                except Exception:  # nvJPEG cannot (odd sampling, corrupt data): libjpeg decides
                    out[i] = self._host(*rows[i])
        groups: dict[tuple, list[int]] = {}  # same size and orientation: one resize call
        for i, image in decoded.items():
            groups.setdefault((*image.shape, rows[i][1].orientation), []).append(i)
        order, parts = [], []
        for key, members in groups.items():
            parts.append(self._resize(torch.stack([decoded[i] for i in members]), key[-1]))
            order.extend(members)
        if parts:
            host = torch.cat(parts).cpu().numpy()  # one device-to-host copy per chunk
            for row, i in enumerate(order):
                out[i] = host[row]

    def _resize(self, x: torch.Tensor, orientation: int) -> torch.Tensor:
        """uint8 [B, C, H, W] -> uint8 [B, h, w, C] at the output size, oriented."""
        target = self.size[::-1] if orientation in (5, 6, 7, 8) else self.size
        if tuple(x.shape[-2:]) != tuple(target):
            if self.resize_float:
                x = F.interpolate(x.float(), size=target, mode=self.mode, antialias=True,
                                  align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
            else:  # uint8 in and out: torch follows Pillow's fixed-point arithmetic here
                x = F.interpolate(x, size=target, mode=self.mode, antialias=True,
                                  align_corners=False)
        if orientation in _ORIENT:
            x = _ORIENT[orientation](x)
        return x.permute(0, 2, 3, 1).contiguous()


def _short(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()] or [""]
    # torchvision prefixes "decode_jpeg, <its build path>/decode_jpeg.cpp:167, ": not for users
    return f"{type(exc).__name__}: {re.sub(r'^.*?[.]cpp:[0-9]+, *', '', lines[-1])[:200]}"


def _warmup_jpegs() -> list[bytes]:
    """Small JPEGs that take every path: YCbCr 4:2:0, gray progressive rotated, CMYK, 4:4:4."""
    from PIL import Image

    y, x = np.mgrid[0:48, 0:64]
    rgb = Image.fromarray(np.stack([x * 4, y * 5, (x + y) * 2], -1).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = []
    for im, params in ((rgb, {}), (rgb.convert("L"), {"progressive": True, "exif": exif}),
                       (rgb.convert("CMYK"), {}), (rgb, {"subsampling": 0})):
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90, **params)
        out.append(buf.getvalue())
    return out


def _checkpoint_resize(checkpoint: str) -> tuple[int, str]:
    """(S, torch interpolation mode) of the checkpoint's image processor (a square resize)."""
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(checkpoint)
    size, resample = processor.size, int(processor.resample)
    if size.get("height") != size.get("width") or resample not in MODES:
        raise ValueError(f"{checkpoint}: size {size}, resample {resample}: this decoder makes "
                         f"square images with {sorted(MODES.values())} resizes only")
    return int(size["height"]), MODES[resample]


def _param(config, key, default=""):
    value = config.get("parameters", {}).get(key, {}).get("string_value", "").strip()
    return value or str(default)


def _error(message, code="INTERNAL"):
    code = getattr(pb_utils.TritonError, code, None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        out_config = pb_utils.get_output_config_by_name(config, OUTPUT)
        self.out_dtype = pb_utils.triton_string_to_numpy(out_config["data_type"])
        config_dims = tuple(int(d) for d in out_config["dims"])
        if self.out_dtype != np.uint8 or len(config_dims) != 3 or config_dims[2] != 3:
            raise ValueError(f"{OUTPUT} must be TYPE_UINT8 [H, W, 3], got "
                             f"{out_config['data_type']} {list(config_dims)}")
        checkpoint = _param(config, "model") or os.environ.get("SIGLIP_MODEL") or DEFAULT_MODEL
        size, mode = _checkpoint_resize(checkpoint)
        dims = (size, size, 3)
        if any(c not in (-1, d) for c, d in zip(config_dims, dims, strict=True)):
            raise ValueError(f"{OUTPUT} dims {list(config_dims)} cannot take the checkpoint's "
                             f"{list(dims)}")
        in_config = pb_utils.get_input_config_by_name(config, INPUT)
        if in_config["data_type"] != "TYPE_STRING" or [int(d) for d in in_config["dims"]] != [1]:
            raise ValueError(f"{INPUT} must be TYPE_STRING [1] (one encoded JPEG per row)")
        limits = {k: int(_param(config, k, v)) for k, v in DEFAULTS.items()}
        if min(limits.values()) < 1:
            raise ValueError(f"limits must be positive: {limits}")

        gpu = args.get("model_instance_kind") == "GPU"
        device = torch.device(f"cuda:{args['model_instance_device_id']}" if gpu else "cpu")
        self.cpu_decoder, cpu_decode = _cpu_decoder(_param(config, "cpu_decoder", "auto"))
        # GPU instances exist to decode on the GPU: no torchvision with nvJPEG = fail the load.
        batch_decode = _nvjpeg_decoder(device) if gpu else None
        self.pre = Preprocessor(device, dims[:2], mode=mode, cpu_decode=cpu_decode,
                                batch_decode=batch_decode, **limits)
        # Fail at load, not on the first request: every path once (nvJPEG without fallback).
        warmup = _warmup_jpegs()
        if batch_decode is not None:
            batch_decode([warmup[0], warmup[1], warmup[3]])
        for i, result in enumerate(self.pre.run(warmup)):
            if isinstance(result, Exception) or result.shape != dims:
                raise RuntimeError(f"warm-up image {i} failed: {result!r}")

    def _check(self, request):
        """The request's rows (bytes), or an error message that fails this request alone."""
        tensor = pb_utils.get_input_tensor_by_name(request, INPUT)
        if tensor is None:
            return None, f"missing input {INPUT!r}"
        array = tensor.as_numpy()
        if array.dtype != np.object_ or array.ndim != 2 or array.shape[1] != 1:
            return None, (f"{INPUT} must be BYTES [N, 1] (one encoded JPEG per row), got "
                          f"{array.dtype} {list(array.shape)}")
        if array.shape[0] == 0:
            return None, f"{INPUT} has no rows"
        rows = [bytes(row) if isinstance(row, (bytearray, memoryview)) else row
                for row in array[:, 0]]
        for j, row in enumerate(rows):
            if not isinstance(row, bytes):
                return None, f"{INPUT}[{j}]: expected bytes, got {type(row).__name__}"
        return rows, None

    def execute(self, requests):
        responses = [None] * len(requests)
        rows, owners = [], []
        for i, request in enumerate(requests):
            datas, message = self._check(request)
            headers = []
            for j, data in enumerate(datas or ()):
                try:
                    headers.append(self.pre.parse(data))
                except JpegError as exc:  # refuse the request before decoding any of its rows
                    message = f"{INPUT}[{j}]: {exc}"
                    break
            if message:
                responses[i] = _error(message, "INVALID_ARG")
                continue
            rows.extend(zip(datas, headers, strict=True))
            owners.extend((i, j) for j in range(len(datas)))
        if not rows:
            return responses
        try:
            results = self.pre.decode(rows)
        except Exception as exc:  # e.g. CUDA OOM: fail this batch's requests, keep serving
            for i in sorted({i for i, _ in owners}):
                responses[i] = _error(f"image decode failed: {type(exc).__name__}: {exc}")
            return responses
        parts: dict[int, list] = {}
        for (i, _), result in zip(owners, results, strict=True):
            parts.setdefault(i, []).append(result)
        for i, results_i in parts.items():
            bad = next((j for j, r in enumerate(results_i) if isinstance(r, JpegError)), None)
            if bad is not None:
                responses[i] = _error(f"{INPUT}[{bad}]: {results_i[bad]}", "INVALID_ARG")
            else:
                pixels = np.stack(results_i).astype(self.out_dtype, copy=False)
                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(OUTPUT, pixels)])
        return responses
