"""siglip_image_decode (JPEG bytes -> pixels inside Triton) and the siglip_vision_encoded ensemble.

Unit tests run model_repository/siglip_image_decode/1/model.py with the stub of
triton_python_backend_utils (tests/support/python_backend.py) as a CPU instance, against the
gateway's exact preprocessing (gateway.core.images.preprocess_encoded), for each host decoder this
venv has (Pillow always, torchvision where it imports). The GPU orchestration (batched device
decode, per-row isolation, host fallback, float32 resize) runs on CPU with a stand-in batch decoder.
The integration tests (marker `triton`) run the ensemble in the session's embedded Triton.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch
from google.protobuf import json_format, text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2

from gateway.core.errors import InvalidInput
from gateway.core.images import ImageLimits, preprocess_encoded
from tests.support.photos import encode, photo_array, photo_jpeg
from tests.support.python_backend import _InferenceRequest, _make_stub, _output, _request
from tests.support.triton_calls import infer

REPO = Path(__file__).resolve().parents[2] / "model_repository"
DECODE_DIR = REPO / "siglip_image_decode"
CONTRACT_PSNR_DB = 38.0  # every path, GPU included (README: fidelity)
CPU_PSNR_DB = 50.0  # libjpeg + torch's uint8 resize, which follows Pillow's fixed-point scheme


def _torchvision_works() -> bool:
    try:  # a CUDA torchvision beside a CPU torch raises RuntimeError on import
        import torchvision.io  # noqa: F401
    except Exception:
        return False
    return True


HAVE_TORCHVISION = _torchvision_works()


def _load_module() -> ModuleType:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "triton_python_backend_utils", _make_stub())
        mp.syspath_prepend(str(DECODE_DIR / "1"))  # Triton does the same (jpeg_header.py)
        spec = importlib.util.spec_from_file_location(
            "siglip_image_decode_model_py", DECODE_DIR / "1" / "model.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def _init(module: ModuleType, checkpoint: Path, out_dims: list[int] | None = None,
          **parameters: str) -> Any:
    """Initialize as Triton would on CPU, with the repository's config.pbtxt (+ overrides),
    following `checkpoint`'s image size and filter."""
    proto = text_format.Parse((DECODE_DIR / "config.pbtxt").read_text(),
                              model_config_pb2.ModelConfig())
    config = json_format.MessageToDict(proto, preserving_proto_field_name=True)
    for key, value in {"model": str(checkpoint), **parameters}.items():
        config["parameters"][key] = {"string_value": value}
    if out_dims:
        config["output"][0]["dims"] = [str(d) for d in out_dims]
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_instance_kind": "CPU",
                      "model_instance_device_id": "0"})
    return model


@pytest.fixture(scope="module")
def module() -> ModuleType:
    return _load_module()


@pytest.fixture(scope="module", params=[
    "pillow",
    pytest.param("torchvision", marks=pytest.mark.skipif(
        not HAVE_TORCHVISION, reason="torchvision does not import here (CPU torch)")),
])
def decode(request: pytest.FixtureRequest, module: ModuleType, tiny_checkpoint: Path) -> Any:
    model = _init(module, tiny_checkpoint, cpu_decoder=request.param)
    assert model.cpu_decoder == request.param
    return model


# --- images -----------------------------------------------------------------------------------

def _exact(data: bytes) -> np.ndarray:
    return preprocess_encoded(data, field="image", limits=ImageLimits())


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def _jpeg(width: int, height: int, seed: int, mode: str = "RGB", **params: Any) -> bytes:
    im = Image.fromarray(photo_array(width, height, seed))
    return encode(im if mode == "RGB" else im.convert(mode), "JPEG", quality=90, **params)


def _with_app1(data: bytes, payload: bytes) -> bytes:
    """`data` with an APP1 segment (EXIF or XMP) right after SOI."""
    return data[:2] + b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload + data[2:]


def _big_endian_exif(orientation: int) -> bytes:
    ifd = (1).to_bytes(2, "big") + (0x0112).to_bytes(2, "big") + (3).to_bytes(2, "big")
    ifd += (1).to_bytes(4, "big") + orientation.to_bytes(2, "big") + b"\x00\x00" + bytes(4)
    return b"Exif\x00\x00MM\x00*" + (8).to_bytes(4, "big") + ifd


def _with_size(data: bytes, width: int, height: int) -> bytes:
    """`data` with its SOF's size replaced: a header that lies (a decompression bomb's)."""
    sof = data.index(b"\xff\xc0")
    return data[:sof + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[sof + 9:]


def _with_junk(data: bytes) -> bytes:
    """`data` with junk bytes after APP0: Pillow and libjpeg skip them (libjpeg warns)."""
    end = 4 + int.from_bytes(data[4:6], "big")
    return data[:end] + b"\x00junk\x00" + data[end:]


def _corrupt(data: bytes) -> bytes:
    """Header intact, entropy-coded data destroyed (decoders fail on the stray markers)."""
    start = data.index(b"\xff\xda") + 20
    return data[:start] + b"\xff\x1e" * 512 + data[start + 1024:]


CASES = {
    "640x480": lambda: photo_jpeg(640, 480, seed=2),
    "4000x3000": lambda: photo_jpeg(4000, 3000, seed=6),
    "gray_1600x1200": lambda: _jpeg(1600, 1200, 9, "L"),
    "exif6_4000x3000": lambda: photo_jpeg(4000, 3000, seed=7, orientation=6),
    "exif8_3000x1000": lambda: photo_jpeg(3000, 1000, seed=8, orientation=8),
    "cmyk_1200x900": lambda: _jpeg(1200, 900, 10, "CMYK"),
    "progressive_1024x768": lambda: _jpeg(1024, 768, 4, progressive=True),
    "444_800x600": lambda: _jpeg(800, 600, 3, subsampling=0),
    "422_800x600": lambda: _jpeg(800, 600, 3, subsampling=1),
    "upscale_200x150": lambda: photo_jpeg(200, 150, seed=11),
    "tiny_3x2": lambda: _jpeg(3, 2, 12),
    "junk_between_segments": lambda: _with_junk(photo_jpeg(640, 480, seed=13)),
}


def _run(model: Any, *rows_per_request: list[bytes]) -> list[Any]:
    return model.execute([_request("images", np.array([[r] for r in rows], dtype=object))
                          for rows in rows_per_request])


def _assert_close(got: np.ndarray, want: np.ndarray, min_db: float, label: str) -> None:
    assert got.shape == want.shape == (256, 256, 3) and got.dtype == np.uint8, label
    db, worst = _psnr(got, want), int(np.abs(got.astype(np.int16) - want).max())
    assert db >= min_db, f"{label}: PSNR {db:.2f} dB < {min_db} (max |diff| {worst})"


# --- unit: pixels -----------------------------------------------------------------------------

@pytest.mark.parametrize("case", sorted(CASES))
def test_pixels_match_exact(decode: Any, case: str) -> None:
    data = CASES[case]()
    (response,) = _run(decode, [data])
    got = _output(response, "pixels")
    assert got.shape == (1, 256, 256, 3) and got.dtype == np.uint8
    _assert_close(got[0], _exact(data), max(CPU_PSNR_DB, CONTRACT_PSNR_DB), case)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_exact(decode: Any, orientation: int) -> None:
    little = photo_jpeg(300, 200, seed=20, orientation=orientation)  # Pillow writes "II"
    big = _with_app1(_jpeg(300, 200, 20), _big_endian_exif(orientation))
    for label, data in (("II", little), ("MM", big)):
        _assert_close(_output(_run(decode, [data])[0], "pixels")[0], _exact(data), CPU_PSNR_DB,
                      f"orientation {orientation} {label}")


def test_xmp_orientation_when_exif_has_none(decode: Any) -> None:
    xmp = b'http://ns.adobe.com/xap/1.0/\x00<x:xmpmeta><rdf:Description tiff:Orientation="6"/>'
    data = _with_app1(_jpeg(300, 200, 21), xmp + b"</x:xmpmeta>")
    want = _exact(data)
    assert _psnr(want, _exact(_jpeg(300, 200, 21))) < 30, "the reference must rotate it"
    _assert_close(_output(_run(decode, [data])[0], "pixels")[0], want, CPU_PSNR_DB, "xmp")


def test_output_follows_the_checkpoint(module: ModuleType, family_checkpoint) -> None:
    """SigLIP 2's 224 px and bilinear filter; a config whose fixed dims disagree fails the load."""
    checkpoint = family_checkpoint("siglip2")
    model = _init(module, checkpoint)
    data = photo_jpeg(640, 480, seed=2)
    got = _output(_run(model, [data])[0], "pixels")[0]
    assert got.shape == (224, 224, 3)
    limits = {f: ImageLimits(size=224, resample=f) for f in (Image.Resampling.BILINEAR,
                                                             Image.Resampling.BICUBIC)}
    bilinear, bicubic = (_psnr(got, preprocess_encoded(data, field="-", limits=limits[f]))
                         for f in (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC))
    assert bilinear >= CPU_PSNR_DB and bilinear > bicubic, (bilinear, bicubic)
    with pytest.raises(ValueError, match="cannot take the checkpoint"):
        _init(module, checkpoint, out_dims=[128, 160, 3])


def test_auto_decoder_is_torchvision_where_it_imports(module: ModuleType,
                                                     tiny_checkpoint: Path) -> None:
    want = "torchvision" if HAVE_TORCHVISION else "pillow"
    assert _init(module, tiny_checkpoint).cpu_decoder == want


# --- unit: errors and limits ------------------------------------------------------------------

def test_bad_row_fails_only_its_request(decode: Any) -> None:
    good = [photo_jpeg(640, 480, seed=s) for s in (30, 31, 32)]
    png = encode(Image.fromarray(photo_array(64, 48, 33)), "PNG")
    responses = _run(decode, good[:2], [good[0], png], [good[1], _corrupt(good[2]), good[2]],
                     [good[2]])
    assert [r.has_error() for r in responses] == [False, True, True, False]
    for response in responses[1:3]:
        assert response.error().code() == "INVALID_ARG"
    assert responses[1].error().message().startswith("images[1]: not a JPEG")
    assert responses[2].error().message().startswith("images[1]: corrupt or truncated JPEG")
    assert ".cpp" not in responses[2].error().message()
    for response, rows in ((responses[0], good[:2]), (responses[3], good[2:])):
        got = _output(response, "pixels")
        assert got.shape == (len(rows), 256, 256, 3)
        for pixels, data in zip(got, rows, strict=True):
            _assert_close(pixels, _exact(data), CPU_PSNR_DB, "good row")


@pytest.mark.parametrize("cut", ["half", "no_eoi", "header_only"])
def test_truncated_jpeg_is_refused_like_exact(decode: Any, cut: str) -> None:
    data = photo_jpeg(640, 480, seed=34)
    data = {"half": data[:len(data) // 2], "no_eoi": data[:-2],
            "header_only": data[:data.index(b"\xff\xda") + 14]}[cut]
    with pytest.raises(InvalidInput, match="truncated"):
        _exact(data)
    (response,) = _run(decode, [data])
    assert response.error().code() == "INVALID_ARG"
    assert response.error().message().startswith("images[0]: ")


def test_pixel_cap_is_checked_before_decoding(module: ModuleType, tiny_checkpoint: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    model = _init(module, tiny_checkpoint, max_pixels="300000")
    decoded: list[int] = []
    decoder = model.pre.cpu_decode
    monkeypatch.setattr(model.pre, "cpu_decode", lambda d: decoded.append(len(d)) or decoder(d))
    small = photo_jpeg(64, 48, seed=35)
    bomb = _with_size(small, 10_000, 5_000)  # 50 MP claimed by a 2 kB file
    over, at_cap = photo_jpeg(640, 480, seed=36), photo_jpeg(600, 500, seed=37)
    responses = _run(model, [small, bomb], [over], [at_cap])
    assert responses[0].error().message() == (
        "images[1]: JPEG is 10000x5000 = 50000000 pixels, more than the limit of 300000")
    assert "640x480 = 307200 pixels" in responses[1].error().message()
    assert {r.error().code() for r in responses[:2]} == {"INVALID_ARG"}
    assert decoded == [len(at_cap)], "only the request within the limits is decoded"
    _assert_close(_output(responses[2], "pixels")[0], _exact(at_cap), CPU_PSNR_DB, "at cap")


def test_default_cap_is_the_gateways(module: ModuleType, tiny_checkpoint: Path) -> None:
    model = _init(module, tiny_checkpoint)
    assert model.pre.max_pixels == ImageLimits().max_pixels
    assert model.pre.max_bytes == ImageLimits().max_bytes
    (response,) = _run(model, [_with_size(photo_jpeg(64, 48, seed=38), 8000, 5001)])
    assert "more than the limit of 40000000" in response.error().message()


def test_malformed_requests_fail_alone(decode: Any) -> None:
    good = photo_jpeg(320, 240, seed=39)
    tensor = type(_request("images", np.zeros(1)).inputs()[0])
    requests = [
        _InferenceRequest([]),
        _request("images", np.zeros((1, 1), np.uint8)),
        _request("images", np.array([[good, good]], dtype=object)),
        _request("images", np.empty((0, 1), dtype=object)),
        _InferenceRequest([tensor("images", np.array([["text"]], dtype=object))]),
        _request("images", np.array([[good]], dtype=object)),
    ]
    responses = decode.execute(requests)
    assert [r.has_error() for r in responses] == [True] * 5 + [False]
    assert {r.error().code() for r in responses[:5]} == {"INVALID_ARG"}
    assert "missing input" in responses[0].error().message()
    assert "BYTES [N, 1]" in responses[2].error().message()
    assert "no rows" in responses[3].error().message()
    assert "images[0]: expected bytes" in responses[4].error().message()


def test_unsupported_codings_are_refused(module: ModuleType) -> None:
    parse_header, JpegError = module.parse_header, module.JpegError
    base = photo_jpeg(64, 48, seed=40)
    sof = base.index(b"\xff\xc0")
    for marker, words in ((b"\xff\xc3", "lossless"), (b"\xff\xc9", "arithmetic")):
        with pytest.raises(JpegError, match=words):
            parse_header(base[:sof] + marker + base[sof + 2:], 10**9, 10**9)
    twelve_bit = base[:sof + 4] + b"\x0c" + base[sof + 5:]
    with pytest.raises(JpegError, match="12-bit"):
        parse_header(twelve_bit, 10**9, 10**9)
    with pytest.raises(JpegError, match="bytes, more than the limit of 100"):
        parse_header(base, 10**9, 100)
    assert parse_header(base, 64 * 48, len(base)).width == 64


# --- unit: the GPU path's orchestration, with a stand-in batch decoder -------------------------

def test_device_path_batches_isolates_and_falls_back(module: ModuleType) -> None:
    """What GPU instances do around nvJPEG: CMYK to the host, one batched call per chunk, a
    failing batch retried row by row, a row the device can't decode retried on the host,
    float32 resize. The stand-in fails a whole list for one bad row, as nvJPEG does."""
    calls: list[int] = []
    host_rows: list[int] = []

    def batch_decode(rows: list[bytes]) -> list[torch.Tensor]:
        calls.append(len(rows))
        return [module._decode_pillow(r) for r in rows]

    def host_decode(data: bytes) -> torch.Tensor:
        host_rows.append(len(data))
        return module._decode_pillow(data)

    rows = [photo_jpeg(640, 480, seed=41), _jpeg(400, 300, 42, "CMYK"),
            _corrupt(photo_jpeg(640, 480, seed=43)), _jpeg(500, 400, 44, "L", progressive=True),
            photo_jpeg(1200, 900, seed=45, orientation=6), photo_jpeg(640, 480, seed=46)]
    pre = module.Preprocessor(torch.device("cpu"), (256, 256), cpu_decode=host_decode,
                              batch_decode=batch_decode, resize_float=True,
                              max_batch_pixels=1_500_000)
    results = pre.run(rows)
    # 1.5 MP chunks: rows 0, 2, 3 (0.81 MP; fails on row 2: retried one by one), rows 4, 5
    assert calls == [3, 1, 1, 1, 2]
    assert host_rows == [len(rows[1]), len(rows[2])]  # CMYK; the row the device refused
    assert isinstance(results[2], module.JpegError)
    for i in (0, 1, 3, 4, 5):
        _assert_close(results[i], _exact(rows[i]), CONTRACT_PSNR_DB, f"row {i}")


# --- integration: the ensemble in the embedded Triton -----------------------------------------

@pytest.fixture(scope="module")
def triton_client(embedded_triton):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(embedded_triton.grpc_url)
    try:
        yield client
    finally:
        client.close()


@pytest.mark.triton
def test_encoded_ensemble_matches_vision_on_exact_pixels(triton_client: Any) -> None:
    for model in ("siglip_image_decode", "siglip_vision_encoded"):
        assert triton_client.is_model_ready(model)
    jpegs = [photo_jpeg(640, 480, seed=50), photo_jpeg(1200, 900, seed=51, orientation=6),
             _jpeg(800, 600, 52, "L")]
    got = infer(triton_client, "siglip_vision_encoded", np.array([[j] for j in jpegs], object))
    want = infer(triton_client, "siglip_vision", np.stack([_exact(j) for j in jpegs]))
    assert got.shape == want.shape and got.dtype == np.float32
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() >= 0.999, f"cosine vs exact: {cosine.tolist()}"


@pytest.mark.triton
def test_encoded_ensemble_bad_row_is_invalid_argument(triton_client: Any) -> None:
    from tritonclient.utils import InferenceServerException

    rows = np.array([[photo_jpeg(320, 240, seed=53)], [b"not a jpeg"]], dtype=object)
    with pytest.raises(InferenceServerException) as info:
        infer(triton_client, "siglip_vision_encoded", rows)
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "images[1]: not a JPEG" in info.value.message()
