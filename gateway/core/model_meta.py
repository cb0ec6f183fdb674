"""What the gateway needs to know about the SigLIP checkpoint, read without torch.

Owns resolving a model reference (local directory or hub id) to a local directory and reading
the few facts the gateway uses: embedding size, the image and text preprocessing (read and
checked by gateway/core/families.py), and the two scalars of SigLIP's scoring head
(logit_scale, logit_bias), read straight from the safetensors file.
Called once at start-up; everything here is blocking file I/O.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.families import (
    ImageSpec,
    TextSpec,
    UnsupportedCheckpoint,
    check_family,
    read_image_spec,
    read_text_spec,
)

# Files the gateway and the Triton models read; weights only as safetensors (never pickles).
_HUB_PATTERNS = [
    "config.json",
    "*.safetensors",
    "model.safetensors.index.json",
    "preprocessor_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "spiece.model",
    "tokenizer.model",
    "tokenizer.json",
]
_SINGLE = "model.safetensors"
# transformers' SiglipTextConfig / SiglipVisionConfig defaults (not imported: transformers
# pulls in torch whenever it is installed, and the gateway must stay light).
_TEXT_HIDDEN_DEFAULT = 768
_VISION_HIDDEN_DEFAULT = 768
_INDEX = "model.safetensors.index.json"


class ModelLoadError(RuntimeError):
    """The checkpoint cannot be found or read; the message names the model."""


@dataclass(frozen=True)
class ModelMeta:
    model_id: str
    path: Path
    random_weights: bool
    embedding_dim: int
    image_size: int
    text_length: int
    logit_scale: float
    logit_bias: float
    image: ImageSpec
    text: TextSpec


def names_a_path(model: str) -> bool:
    """True when `model` can only be a local path, never a hub id (`org/name` or `name`)."""
    return model.startswith((".", "/", "~")) or model.count("/") > 1


def resolve_checkpoint(model: str) -> Path:
    """A local directory holding `model`: the directory itself, or a hub snapshot of that id."""
    local = Path(model).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists() or names_a_path(model):
        raise ModelLoadError(f"model {model!r}: not a checkpoint directory")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=model, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # offline, unknown repo, auth...: all mean "cannot get it"
        raise ModelLoadError(
            f"model {model!r}: not a local directory, and downloading it from the Hugging Face "
            f"hub failed ({type(exc).__name__}: {exc}). Pre-download it and set SIGLIP_MODEL "
            "to the directory, or make a random one with `siglip-gateway make-checkpoint`."
        ) from exc


def _weights_file(path: Path, tensor: str) -> Path:
    if (path / _SINGLE).is_file():
        return path / _SINGLE
    if (path / _INDEX).is_file():
        weight_map = json.loads((path / _INDEX).read_text())["weight_map"]
        if tensor not in weight_map:
            raise ModelLoadError(f"checkpoint {path}: {tensor!r} missing from {_INDEX}")
        return path / weight_map[tensor]
    raise ModelLoadError(
        f"checkpoint {path}: no {_SINGLE} or {_INDEX}; safetensors weights are required "
        "(pytorch_model.bin is not read)"
    )


def _read_scalars(path: Path, names: tuple[str, ...]) -> dict[str, float]:
    from safetensors import safe_open

    out: dict[str, float] = {}
    for name in names:
        with safe_open(str(_weights_file(path, name)), framework="numpy") as f:
            if name not in f.keys():
                raise ModelLoadError(f"checkpoint {path}: tensor {name!r} not found")
            value = f.get_tensor(name)
        if value.size != 1:
            raise ModelLoadError(f"checkpoint {path}: {name!r} has shape {value.shape}, want 1")
        out[name] = float(value.reshape(()))
    return out


def _sub_config(raw: dict[str, Any], key: str) -> dict[str, Any]:
    sub = raw.get(key)
    return sub if isinstance(sub, dict) else {}


def load_model_meta(model: str) -> ModelMeta:
    """Resolve `model` (directory or hub id) and read its `ModelMeta`."""
    path = resolve_checkpoint(model)
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelLoadError(f"model {model!r}: {config_path} not found")
    try:
        raw = json.loads(config_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model {model!r}: unreadable {config_path} ({exc})") from exc
    text, vision = _sub_config(raw, "text_config"), _sub_config(raw, "vision_config")
    try:
        check_family(raw)
        image_spec, text_spec = read_image_spec(path, vision), read_text_spec(path, text)
    except UnsupportedCheckpoint as exc:
        raise ModelLoadError(f"model {model!r}: {exc}") from exc
    # Hub config.json files omit fields left at their default, so the defaults of
    # transformers' SiglipTextConfig / SiglipVisionConfig apply (tests check they still match).
    text_dim = text.get("projection_size") or text.get("hidden_size", _TEXT_HIDDEN_DEFAULT)
    vision_dim = vision.get("hidden_size", _VISION_HIDDEN_DEFAULT)
    if text_dim != vision_dim:
        raise ModelLoadError(
            f"model {model!r}: text embedding size {text_dim} != image embedding size {vision_dim}"
        )
    scalars = _read_scalars(path, ("logit_scale", "logit_bias"))
    return ModelMeta(
        model_id=model,
        path=path,
        random_weights=bool(raw.get("random_weights", False)),
        embedding_dim=int(text_dim),
        image_size=image_spec.size,
        text_length=text_spec.length,
        logit_scale=scalars["logit_scale"],
        logit_bias=scalars["logit_bias"],
        image=image_spec,
        text=text_spec,
    )
