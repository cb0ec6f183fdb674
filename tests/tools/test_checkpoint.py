"""Tests of the random checkpoint maker and of the torch-free model metadata reader."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file
from transformers import (
    SiglipConfig,
    SiglipModel,
    SiglipProcessor,
    SiglipTextModel,
    SiglipVisionModel,
)

from gateway.core.model_meta import ModelLoadError, load_model_meta, resolve_checkpoint
from siglip_tools import checkpoint
from tests.support.hf_reference import features


def test_tiny_loads_with_all_four_from_pretrained(tiny_checkpoint: Path) -> None:
    model = SiglipModel.from_pretrained(tiny_checkpoint)
    vision = SiglipVisionModel.from_pretrained(tiny_checkpoint)
    text = SiglipTextModel.from_pretrained(tiny_checkpoint)
    processor = SiglipProcessor.from_pretrained(tiny_checkpoint)
    assert type(processor.tokenizer).__name__ == "SiglipTokenizer"
    # The towers load the very same weights as the full model (no fresh random init). Their
    # names carry a "vision_model."/"text_model." prefix in 4.x, none in 5.x.
    for tower, prefix, full in ((vision, "vision_model.", model.vision_model),
                                (text, "text_model.", model.text_model)):
        want = full.state_dict()
        got = {name.removeprefix(prefix): t for name, t in tower.state_dict().items()}
        assert got.keys() == want.keys()
        for name, tensor in got.items():
            assert torch.equal(tensor, want[name]), name
    vc = model.config.vision_config
    assert (vc.image_size, vc.patch_size) == (256, 16)
    assert model.config.text_config.max_position_embeddings == 64


def test_processor_tokenizes_like_siglip(tiny_checkpoint: Path) -> None:
    processor = SiglipProcessor.from_pretrained(tiny_checkpoint)
    tok = processor.tokenizer
    assert (tok.eos_token, tok.pad_token, tok.unk_token) == ("</s>", "</s>", "<unk>")
    enc = processor(text=["a photo of a dog", "A Photo, of a DOG!"], padding="max_length",
                    max_length=64, truncation=True, return_tensors="np")
    ids = enc["input_ids"]
    assert ids.shape == (2, 64)
    # Lower-cased, punctuation stripped: both texts give the same ids.
    assert (ids[0] == ids[1]).all()
    n = int((ids[0] != tok.pad_token_id).sum())
    assert 0 < n < 64 and (ids[0, n:] == tok.eos_token_id).all()  # text, then </s> pads
    assert tok.unk_token_id not in ids[0, :n]
    assert ids.max() < SiglipConfig.from_pretrained(tiny_checkpoint).text_config.vocab_size
    long = processor(text=["dog " * 200], padding="max_length", max_length=64, truncation=True)
    assert len(long["input_ids"][0]) == 64


def test_image_processor_config(tiny_checkpoint: Path) -> None:
    ip = SiglipProcessor.from_pretrained(tiny_checkpoint).image_processor
    assert ip.size == {"height": 256, "width": 256} and ip.resample == 3
    assert ip.rescale_factor == pytest.approx(1 / 255)
    assert list(ip.image_mean) == [0.5] * 3 and list(ip.image_std) == [0.5] * 3


def test_checkpoint_says_it_is_random(tiny_checkpoint: Path) -> None:
    assert json.loads((tiny_checkpoint / "config.json").read_text())["random_weights"] is True
    assert "RANDOM" in (tiny_checkpoint / "README.md").read_text()


def test_model_meta_matches_torch_model(tiny_checkpoint: Path) -> None:
    meta = load_model_meta(str(tiny_checkpoint))
    model = SiglipModel.from_pretrained(tiny_checkpoint)
    assert meta.path == tiny_checkpoint.resolve() and meta.random_weights is True
    assert meta.logit_scale == pytest.approx(model.logit_scale.item(), abs=0)
    assert meta.logit_bias == pytest.approx(model.logit_bias.item(), abs=0)
    with torch.no_grad():
        image = features(model.get_image_features(pixel_values=torch.zeros(1, 3, 256, 256)))
        text = features(model.get_text_features(input_ids=torch.ones(1, 64, dtype=torch.long)))
    assert meta.embedding_dim == image.shape[-1] == text.shape[-1]
    assert meta.image_size == model.config.vision_config.image_size == 256
    assert meta.text_length == model.config.text_config.max_position_embeddings == 64


def _copy_tokenizer(tiny_checkpoint: Path, to: Path) -> None:
    for name in ("tokenizer_config.json", "special_tokens_map.json", "spiece.model",
                 "preprocessor_config.json"):
        shutil.copy(tiny_checkpoint / name, to)


def test_model_meta_defaults_match_transformers(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Hub config.json and preprocessor_config.json files omit default fields; our defaults
    must be transformers' ones."""
    from transformers import SiglipImageProcessor

    minimal = {"model_type": "siglip", "text_config": {}, "vision_config": {}}
    (tmp_path / "config.json").write_text(json.dumps(minimal))
    shutil.copy(tiny_checkpoint / "model.safetensors", tmp_path)
    _copy_tokenizer(tiny_checkpoint, tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 224, "width": 224}}))
    meta = load_model_meta(str(tmp_path))
    ref = SiglipConfig.from_pretrained(tmp_path)
    assert meta.embedding_dim == ref.text_config.projection_size == ref.vision_config.hidden_size
    assert meta.image_size == ref.vision_config.image_size
    assert meta.text_length == ref.text_config.max_position_embeddings
    assert meta.random_weights is False
    processor = SiglipImageProcessor.from_pretrained(tmp_path)
    assert (meta.image.resample, meta.image.rescale_factor) == (processor.resample,
                                                               processor.rescale_factor)
    assert (list(meta.image.mean), list(meta.image.std)) == (list(processor.image_mean),
                                                             list(processor.image_std))


def test_model_meta_reads_sharded_safetensors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_checkpoint / "config.json", tmp_path)
    _copy_tokenizer(tiny_checkpoint, tmp_path)
    with safe_open(str(tiny_checkpoint / "model.safetensors"), framework="numpy") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    scalars = {k: tensors.pop(k) for k in ("logit_scale", "logit_bias")}
    save_file(tensors, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file(scalars, str(tmp_path / "model-00002-of-00002.safetensors"))
    weight_map = {k: "model-00001-of-00002.safetensors" for k in tensors}
    weight_map |= {k: "model-00002-of-00002.safetensors" for k in scalars}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    meta = load_model_meta(str(tmp_path))
    assert meta.logit_scale == float(scalars["logit_scale"][0])
    assert meta.logit_bias == float(scalars["logit_bias"][0])


def test_model_meta_requires_safetensors(tiny_checkpoint: Path, tmp_path: Path) -> None:
    shutil.copy(tiny_checkpoint / "config.json", tmp_path)
    _copy_tokenizer(tiny_checkpoint, tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not read")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_model_meta(str(tmp_path))


def test_hub_id_failure_names_the_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def unreachable(**kwargs: Any) -> str:
        raise OSError("hub unreachable")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(ModelLoadError, match=r"google/siglip-base-patch16-256.*hub unreachable"):
        load_model_meta("google/siglip-base-patch16-256")


def test_hub_id_downloads_only_what_is_needed(
    tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    calls: list[dict[str, Any]] = []

    def fake_download(**kwargs: Any) -> str:
        calls.append(kwargs)
        return str(tiny_checkpoint)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    meta = load_model_meta("org/siglip-test")
    assert meta.model_id == "org/siglip-test" and meta.path == tiny_checkpoint
    (call,) = calls
    patterns = call["allow_patterns"]
    assert call["repo_id"] == "org/siglip-test"
    assert {"config.json", "*.safetensors", "spiece.model"} <= set(patterns)
    assert not any(p.endswith(".bin") for p in patterns)


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not a checkpoint directory"):
        resolve_checkpoint(str(tmp_path / "nope"))


def test_model_meta_imports_no_torch(tiny_checkpoint: Path) -> None:
    """The gateway has no torch: reading the metadata must not import it (or transformers)."""
    code = (
        "import sys; from gateway.core.model_meta import load_model_meta; "
        f"load_model_meta({str(tiny_checkpoint)!r}); "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_requires_random_and_is_reproducible(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):
        checkpoint.main(["--size", "tiny", "--out", str(tmp_path / "x")])
    out = tmp_path / "again"
    assert checkpoint.main(["--random", "--size", "tiny", "--out", str(out), "--seed", "0"]) == 0
    assert (out / "spiece.model").read_bytes() == (tiny_checkpoint / "spiece.model").read_bytes()
    with safe_open(str(out / "model.safetensors"), framework="numpy") as a, \
            safe_open(str(tiny_checkpoint / "model.safetensors"), framework="numpy") as b:
        assert set(a.keys()) == set(b.keys())
        for key in a.keys():
            assert np.array_equal(a.get_tensor(key), b.get_tensor(key)), key


def test_base_architecture_has_203m_parameters() -> None:
    """google/siglip-base-patch16-256 has ~203.2M parameters; counted on the meta device."""
    with torch.device("meta"):
        model = SiglipModel(checkpoint.arch_config("base"))
    n = sum(p.numel() for p in model.parameters())
    assert 203.0e6 < n < 203.4e6, n
    text, vision = model.config.text_config, model.config.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.vocab_size) == (768, 12, 32000)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.intermediate_size) == (
        768, 12, 3072)


def test_so400m_architecture_is_so400m_patch14_384() -> None:
    """google/siglip-so400m-patch14-384: ~878M parameters, patch 14 at 384 px, 64 tokens."""
    with torch.device("meta"):
        model = SiglipModel(checkpoint.arch_config("so400m"))
    n = sum(p.numel() for p in model.parameters())
    assert 877.5e6 < n < 878.5e6, n
    text, vision = model.config.text_config, model.config.vision_config
    assert (vision.image_size, vision.patch_size, text.max_position_embeddings) == (384, 14, 64)
    assert (vision.hidden_size, vision.num_hidden_layers, vision.intermediate_size) == (
        1152, 27, 4304)


_OTHER_MAJOR = """
import json, sys
import torch, transformers
from transformers import SiglipModel, SiglipProcessor
path, texts = sys.argv[1], json.loads(sys.argv[2])
processor = SiglipProcessor.from_pretrained(path)
model = SiglipModel.from_pretrained(path).eval()
ids = processor(text=texts, padding="max_length", max_length=64, truncation=True,
                return_tensors="pt")["input_ids"]
with torch.no_grad():
    logits = model(input_ids=ids, pixel_values=torch.zeros(1, 3, 256, 256)).logits_per_image
print(json.dumps({"version": transformers.__version__, "ids": ids.tolist(),
                  "logits": logits.tolist()}))
"""


def test_checkpoint_loads_under_the_other_transformers_major(tiny_checkpoint: Path) -> None:
    """A checkpoint made under one major loads under the other and gives the same ids and
    logits: SiglipProcessor.save_pretrained of 5.x wrote a tokenizer that 4.57 cannot load,
    so make-checkpoint writes those files itself. The other major's interpreter comes from
    $SIGLIP_TEST_OTHER_PYTHON (scripts/test_transformers5.sh sets it to .venv's)."""
    other = os.environ.get("SIGLIP_TEST_OTHER_PYTHON")
    if not other:
        pytest.skip("SIGLIP_TEST_OTHER_PYTHON is not set")
    texts = ["a photo of a dog", "A Photo, of a DOG!", "label with </s> inside", ""]
    out = subprocess.run([other, "-c", _OTHER_MAJOR, str(tiny_checkpoint), json.dumps(texts)],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    import transformers

    assert theirs["version"].split(".")[0] != transformers.__version__.split(".")[0]
    processor = SiglipProcessor.from_pretrained(tiny_checkpoint)
    model = SiglipModel.from_pretrained(tiny_checkpoint).eval()
    ids = processor(text=texts, padding="max_length", max_length=64, truncation=True,
                    return_tensors="pt")["input_ids"]
    assert ids.tolist() == theirs["ids"]
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=torch.zeros(1, 3, 256, 256)).logits_per_image
    np.testing.assert_allclose(logits.numpy(), np.array(theirs["logits"]), rtol=0, atol=1e-5)
