"""Unit tests of the Triton python-backend models, without Triton.

A stub `triton_python_backend_utils` stands in for the backend's module; each model.py is
loaded from its path with the repository's real config.pbtxt (parsed with Triton's own
ModelConfig proto), on the tiny random checkpoint, and compared with HF SiglipModel.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from transformers import SiglipModel, SiglipTokenizer

from tests.support.hf_reference import features, image_processor
from tests.support.python_backend import (
    _InferenceRequest,
    _load,
    _output,
    _request,
)

REPO = Path(__file__).resolve().parents[2] / "model_repository"
TOL = 1e-5


def _count_forwards(monkeypatch: pytest.MonkeyPatch, model: Any) -> list[int]:
    rows: list[int] = []
    forward = model._forward

    def spy(batch: np.ndarray) -> np.ndarray:
        rows.append(len(batch))
        return forward(batch)

    monkeypatch.setattr(model, "_forward", spy)
    return rows


# --- fixtures ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path) -> SiglipModel:
    return SiglipModel.from_pretrained(tiny_checkpoint).eval()


@pytest.fixture(scope="module")
def vision(tiny_checkpoint: Path) -> Any:
    return _load("siglip_vision", str(tiny_checkpoint))


@pytest.fixture(scope="module")
def text(tiny_checkpoint: Path) -> Any:
    return _load("siglip_text", str(tiny_checkpoint))


def _pixels(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (rows, 256, 256, 3), dtype=np.uint8)


def _image_reference(checkpoint: Path, model: SiglipModel, pixels: np.ndarray) -> np.ndarray:
    # The checkpoint's own image processor does rescale + normalize (no resize: already 256).
    processor = image_processor(checkpoint)
    batch = processor(images=list(pixels), do_resize=False, return_tensors="pt")
    with torch.no_grad():
        return features(model.get_image_features(pixel_values=batch["pixel_values"])).numpy()


def _text_reference(model: SiglipModel, ids: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return features(model.get_text_features(input_ids=torch.from_numpy(ids))).numpy()


def _token_ids(checkpoint: Path, texts: list[str]) -> np.ndarray:
    tokenizer = SiglipTokenizer.from_pretrained(checkpoint)
    enc = tokenizer(texts, padding="max_length", max_length=64, truncation=True,
                    return_tensors="np")
    return enc["input_ids"].astype(np.int64)


# --- vision -----------------------------------------------------------------------------------

def test_vision_batch_split_matches_reference(
    vision: Any, reference: SiglipModel, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parts = [_pixels(n, seed=n) for n in (1, 2, 3)]
    forwards = _count_forwards(monkeypatch, vision)
    responses = vision.execute([_request("pixels", p) for p in parts])
    assert forwards == [6], "all requests must share one forward"
    dim = reference.config.vision_config.hidden_size
    for part, response in zip(parts, responses, strict=True):
        got = _output(response, "image_embeds")
        assert got.dtype == np.float32 and got.shape == (len(part), dim)
        want = _image_reference(tiny_checkpoint, reference, part)
        assert np.abs(got - want).max() <= TOL


def test_vision_malformed_request_fails_alone(
    vision: Any, reference: SiglipModel, tiny_checkpoint: Path
) -> None:
    good_a, good_b = _pixels(2, seed=10), _pixels(1, seed=11)
    requests = [
        _request("pixels", good_a),
        _request("pixels", np.zeros((1, 256, 256, 4), np.uint8)),  # wrong trailing dim
        _request("pixels", np.zeros((1, 224, 224, 3), np.uint8)),  # wrong size
        _request("pixels", good_b),
        _request("pixels", np.zeros((1, 256, 256, 3), np.float32)),  # wrong dtype
        _InferenceRequest([]),  # missing input
        _request("pixels", np.zeros((0, 256, 256, 3), np.uint8)),  # no rows
    ]
    responses = vision.execute(requests)
    assert len(responses) == len(requests)
    assert [r.has_error() for r in responses] == [False, True, True, False, True, True, True]
    assert "[1, 256, 256, 4]" in responses[1].error().message()
    assert {r.error().code() for r in responses if r.has_error()} == {"INVALID_ARG"}
    for pixels, response in ((good_a, responses[0]), (good_b, responses[3])):
        want = _image_reference(tiny_checkpoint, reference, pixels)
        assert np.abs(_output(response, "image_embeds") - want).max() <= TOL


def test_vision_forward_failure_fails_only_that_batch(
    vision: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(batch: np.ndarray) -> np.ndarray:
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(vision, "_forward", boom)
    responses = vision.execute([_request("pixels", _pixels(1, seed=1)), _InferenceRequest([])])
    assert "out of memory" in responses[0].error().message()
    assert responses[0].error().code() == "INTERNAL"
    assert "missing input" in responses[1].error().message()


def test_model_parameter_overrides_environment(tiny_checkpoint: Path) -> None:
    model = _load("siglip_vision", "/nonexistent/checkpoint", {"model": str(tiny_checkpoint)})
    assert model.out_dtype == np.float32


# --- text -------------------------------------------------------------------------------------

def test_text_batch_split_matches_reference(
    text: Any, reference: SiglipModel, tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = _token_ids(tiny_checkpoint, [
        "a photo of a dog", "A photo of a CAT!", "a red car on the street",
        "two people walking near the sea", "blurry picture", "zebra",
    ])
    parts = [ids[:1], ids[1:3], ids[3:6]]
    forwards = _count_forwards(monkeypatch, text)
    responses = text.execute([_request("input_ids", p) for p in parts])
    assert forwards == [6], "all requests must share one forward"
    dim = reference.config.text_config.projection_size
    for part, response in zip(parts, responses, strict=True):
        got = _output(response, "text_embeds")
        assert got.dtype == np.float32 and got.shape == (len(part), dim)
        assert np.abs(got - _text_reference(reference, part)).max() <= TOL


def test_text_malformed_request_fails_alone(
    text: Any, reference: SiglipModel, tiny_checkpoint: Path
) -> None:
    good = _token_ids(tiny_checkpoint, ["a photo of a dog", "a cat"])
    vocab = reference.config.text_config.vocab_size
    too_big, negative = good[:1].copy(), good[:1].copy()
    too_big[0, 3] = vocab
    negative[0, 0] = -1
    requests = [
        _request("input_ids", too_big),
        _request("input_ids", good),
        _request("input_ids", negative),
        _request("input_ids", good[:, :63]),  # wrong length
        _request("input_ids", good.astype(np.int32)),  # wrong dtype
        _request("input_ids", good[:1]),
    ]
    responses = text.execute(requests)
    assert [r.has_error() for r in responses] == [True, False, True, True, True, False]
    assert f"[0, {vocab})" in responses[0].error().message()
    assert {r.error().code() for r in responses if r.has_error()} == {"INVALID_ARG"}
    for ids, response in ((good, responses[1]), (good[:1], responses[5])):
        want = _text_reference(reference, ids)
        assert np.abs(_output(response, "text_embeds") - want).max() <= TOL


def test_text_all_requests_bad_runs_no_forward(
    text: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    forwards = _count_forwards(monkeypatch, text)
    responses = text.execute([_request("input_ids", np.full((1, 64), -5, np.int64))])
    assert responses[0].has_error() and forwards == []


# --- compiled batch buckets (the GPU fast path's logic, run on CPU) ---------------------------

def _record_shapes(model: Any) -> list[int]:
    shapes: list[int] = []
    compiled = model.runner._fn

    def spy(batch: torch.Tensor) -> torch.Tensor:
        shapes.append(batch.shape[0])
        return compiled(batch)

    model.runner._fn = spy
    return shapes


def test_vision_compiled_buckets_pad_and_match_reference(
    reference: SiglipModel, tiny_checkpoint: Path
) -> None:
    model = _load("siglip_vision", str(tiny_checkpoint), max_batch_size=4,
                  parameters={"compile_mode": "default", "batch_buckets": "1,4"})
    shapes = _record_shapes(model)
    full, parts = _pixels(4, seed=40), [_pixels(1, seed=41), _pixels(2, seed=42)]
    with torch._dynamo.config.patch(error_on_recompile=True):  # every shape was built at load
        model.execute([_request("pixels", full)])
        # 3 rows run as 4: the 4th is whatever the previous batch left in the buffers.
        responses = model.execute([_request("pixels", p) for p in parts])
        single = model.execute([_request("pixels", parts[0])])
    assert shapes == [4, 4, 1]
    for part, response in [*zip(parts, responses, strict=True), (parts[0], single[0])]:
        want = _image_reference(tiny_checkpoint, reference, part)
        assert np.abs(_output(response, "image_embeds") - want).max() <= TOL


def test_text_compiled_from_environment_matches_reference(
    reference: SiglipModel, tiny_checkpoint: Path
) -> None:
    # $SIGLIP_COMPILE_MODE wins over the (empty) config parameter; on CPU "reduce-overhead"
    # compiles without CUDA graphs.
    model = _load("siglip_text", str(tiny_checkpoint), max_batch_size=8,
                  parameters={"batch_buckets": "2,8"}, compile_env="reduce-overhead")
    shapes = _record_shapes(model)
    ids = _token_ids(tiny_checkpoint, ["a dog", "A CAT!", "a red car", "the sea", "zebra"])
    with torch._dynamo.config.patch(error_on_recompile=True):
        responses = model.execute([_request("input_ids", ids[:1]), _request("input_ids", ids[1:])])
    assert shapes == [8]
    for part, response in zip((ids[:1], ids[1:]), responses, strict=True):
        assert np.abs(_output(response, "text_embeds") - _text_reference(reference, part)).max() \
            <= TOL


@pytest.mark.parametrize(("parameters", "env", "message"), [
    ({"compile_mode": "fastest"}, None, "compile_mode='fastest'"),
    ({}, "bogus", "compile_mode='bogus'"),
    ({"batch_buckets": "1,2,32"}, None, "ending at 64"),
    ({"batch_buckets": "0,64"}, None, "ending at 64"),
    ({"batch_buckets": "one,64"}, None, "ending at 64"),
])
def test_bad_compile_settings_fail_the_load(
    tiny_checkpoint: Path, parameters: dict[str, str], env: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _load("siglip_vision", str(tiny_checkpoint), parameters, compile_env=env)


def test_both_towers_are_one_file() -> None:
    """siglip_text's model.py is a link to siglip_vision's: one file, the config names the tower."""
    text = REPO / "siglip_text" / "1" / "model.py"
    assert text.is_symlink()
    assert text.resolve() == (REPO / "siglip_vision" / "1" / "model.py").resolve()


def test_an_unknown_tower_fails_the_load(tiny_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="tower='audio'"):
        _load("siglip_vision", str(tiny_checkpoint), {"tower": "audio"})
