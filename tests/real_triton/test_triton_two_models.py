"""ONE embedded Triton serving two checkpoints of different shapes from a generated repository
(gateway/embedded_triton/repository.py): each model's Triton models answer with ITS checkpoint.

The session's tiny checkpoint (256 px, 64 tokens) as ``tiny`` and the p14 family's (224 px,
patch 14, 16 tokens; tests/support/families.py) as ``p14``, with their decoders and ensembles.
Embeddings are compared with each checkpoint's HF reference: `get_image_features` and
`get_text_features(input_ids)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from gateway.contract import TritonNames
from gateway.core.images import ImageLimits, preprocess_encoded
from gateway.embedded_triton.repository import default_model_repository
from tests.support.hf_reference import features
from tests.support.photos import photo_jpeg
from tests.support.triton_calls import assert_close, infer

pytestmark = pytest.mark.triton

TOLERANCE = 1e-5
NAMES = ("tiny", "p14")


class _Reference:
    """One checkpoint's HF SiglipModel and tokenizer, and its shapes."""

    def __init__(self, checkpoint: Path) -> None:
        from transformers import AutoTokenizer, SiglipModel

        self.model = SiglipModel.from_pretrained(checkpoint).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(checkpoint)
        self.size = self.model.config.vision_config.image_size
        self.length = self.model.config.text_config.max_position_embeddings

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        import torch

        x = (pixels.astype(np.float32) / 255.0 - 0.5) / 0.5
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        with torch.inference_mode():
            return features(self.model.get_image_features(pixel_values=x)).numpy()

    def text_features(self, ids: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return features(self.model.get_text_features(input_ids=torch.from_numpy(ids))).numpy()

    def ids(self, texts: list[str]) -> np.ndarray:
        return self.tokenizer(texts, padding="max_length", max_length=self.length,
                              truncation=True, return_tensors="np")["input_ids"].astype(np.int64)


@pytest.fixture(scope="module")
def checkpoints(tiny_checkpoint: Path, family_checkpoint: Any) -> dict[str, Path]:
    return {"tiny": tiny_checkpoint, "p14": family_checkpoint("siglip_p14")}


@pytest.fixture(scope="module")
def references(checkpoints: dict[str, Path]) -> dict[str, _Reference]:
    refs = {name: _Reference(path) for name, path in checkpoints.items()}
    assert refs["tiny"].size != refs["p14"].size and refs["tiny"].length != refs["p14"].length
    return refs


@pytest.fixture(scope="module")
def two_model_triton(two_model_triton_factory: Any, checkpoints: dict[str, Path]):
    """The session's Triton for these two models (tests/conftest.py), which
    tests/real_triton/test_two_models_e2e.py shares: one start for both modules."""
    return two_model_triton_factory({name: checkpoints[name] for name in NAMES})


@pytest.fixture(scope="module")
def client(two_model_triton):
    c = grpcclient.InferenceServerClient(two_model_triton.grpc_url)
    try:
        yield c
    finally:
        c.close()


def test_every_models_triton_models_and_nothing_else_are_loaded(two_model_triton, client):
    names = [TritonNames.suffixed(n) for n in NAMES]
    expected = {m for t in names for m in (t.vision, t.text, t.decode, t.encoded)}
    assert set(two_model_triton.models) == expected
    generated = two_model_triton.model_repository
    assert generated != default_model_repository()
    assert {p.name for p in generated.iterdir()} == expected
    index = client.get_model_repository_index(as_json=True)["models"]
    assert {m["name"]: m.get("state") for m in index} == dict.fromkeys(expected, "READY")


@pytest.mark.parametrize("name", NAMES)
def test_towers_answer_with_their_own_checkpoint(client, references, name):
    ref, triton = references[name], TritonNames.suffixed(name)
    pixels = np.random.default_rng(1).integers(0, 256, (3, ref.size, ref.size, 3), np.uint8)
    assert_close(infer(client, triton.vision, pixels), ref.image_features(pixels), TOLERANCE)
    ids = ref.ids(["a photo of a cat", "", "mountain " * 40])
    assert ids.shape == (3, ref.length)
    assert_close(infer(client, triton.text, ids), ref.text_features(ids), TOLERANCE)


def test_the_other_models_shapes_are_refused(client, references):
    for name, other in (("tiny", "p14"), ("p14", "tiny")):
        shape = references[other]
        triton = TritonNames.suffixed(name)
        pixels = np.zeros((1, shape.size, shape.size, 3), np.uint8)
        ids = np.zeros((1, shape.length), np.int64)
        for model, array in ((triton.vision, pixels), (triton.text, ids)):
            with pytest.raises(InferenceServerException) as info:
                infer(client, model, array)
            assert info.value.status() == "StatusCode.INVALID_ARGUMENT", (model, info.value)


@pytest.mark.parametrize("name", NAMES)
def test_ensembles_decode_to_their_own_checkpoints_size(client, references, checkpoints, name):
    from gateway.core.model_meta import load_model_meta

    ref, triton = references[name], TritonNames.suffixed(name)
    image = load_model_meta(str(checkpoints[name])).image
    jpegs = [photo_jpeg(640, 480, seed=60), photo_jpeg(300, 500, seed=61, orientation=6)]
    got = infer(client, triton.encoded, np.array([[j] for j in jpegs], dtype=object))
    exact = np.stack([preprocess_encoded(j, field="image", limits=ImageLimits(
        size=image.size, resample=image.resample)) for j in jpegs])
    assert exact.shape[1] == ref.size
    want = ref.image_features(exact)
    assert got.shape == want.shape and got.dtype == np.float32
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert cosine.min() >= 0.999, f"{name}: cosine vs exact pixels {cosine.tolist()}"
