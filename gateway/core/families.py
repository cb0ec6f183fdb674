"""Which checkpoints of the SigLIP family the service serves, and what their files prescribe.

Owns the start-up checks of a checkpoint and the preprocessing facts read from it (never
assumed): the image side from preprocessor_config.json (size, resample, rescale, mean/std; the
towers normalize on the device with the same file's values) and the text side from
tokenizer_config.json and config.json (tokenizer class, text length, lowercasing). Keys a file
omits take the value transformers itself gives them (``SiglipImageProcessor``'s defaults).

Served: every checkpoint that loads as ``SiglipModel`` (config model_type "siglip"): SigLIP
base/large/so400m at any patch size and resolution, the multilingual SigLIP (its own
SentencePiece vocabulary, ``SiglipTokenizer``), and SigLIP 2's fixed-resolution checkpoints
(``GemmaTokenizer``). Refused with a message that says so: SigLIP 2 NaFlex (model_type
"siglip2", variable resolution), anything else. docs/models.md says why.

Lowercasing: ``SiglipTokenizer`` lower-cases itself (``do_lower_case``); the Gemma tokenizer
SigLIP 2 ships does not, while SigLIP 2 was trained on lower-cased text (transformers' SigLIP 2
model docs), so the gateway lower-cases texts itself (``str.lower``) for Gemma-tokenized
checkpoints and the reference is the HF processor applied to the lower-cased text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# PIL.Image.Resampling values, as preprocessor_config.json stores them.
NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING = 0, 1, 2, 3, 4, 5
RESAMPLE_NAMES = {NEAREST: "nearest", LANCZOS: "lanczos", BILINEAR: "bilinear",
                  BICUBIC: "bicubic", BOX: "box", HAMMING: "hamming"}
# The filters the approximate paths (fast mode, Triton's JPEG decoder) reproduce: both are
# antialiased bilinear/bicubic resizes (OpenCV area + linear, torch's antialiased interpolate).
APPROXIMABLE = frozenset({BILINEAR, BICUBIC})

PREPROCESSOR_CONFIG = "preprocessor_config.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# SiglipImageProcessor's defaults (transformers 4.57 and 5.x), for keys a file leaves out.
_IMAGE_DEFAULTS: dict[str, Any] = {
    "do_resize": True, "resample": BICUBIC, "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}
_IMAGE_PROCESSORS = ("SiglipImageProcessor", "SiglipImageProcessorFast", "SiglipImageProcessorPil")
# tokenizer_class -> lower-case before tokenizing (the tokenizer does not do it itself).
_TOKENIZERS = {"SiglipTokenizer": False, "GemmaTokenizer": True, "GemmaTokenizerFast": True,
               "Siglip2Tokenizer": True}
_TEXT_LENGTH_DEFAULT = 64  # SiglipTextConfig.max_position_embeddings

SUPPORTED = ("served: checkpoints that load as SiglipModel (config model_type 'siglip'): SigLIP "
             "base/large/so400m at any resolution, the multilingual SigLIP, and SigLIP 2's "
             "fixed-resolution checkpoints (e.g. google/siglip2-base-patch16-224)")


class UnsupportedCheckpoint(ValueError):
    """The checkpoint is not one this service can serve exactly; the message says what is."""


@dataclass(frozen=True)
class ImageSpec:
    """What SiglipImageProcessor does to an RGB image: resize to size x size, rescale, normalize."""

    size: int
    resample: int
    rescale_factor: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


@dataclass(frozen=True)
class TextSpec:
    """Texts -> input_ids: this tokenizer, padded and truncated to `length` (str.lower first
    when `lowercase`)."""

    tokenizer_class: str
    length: int
    lowercase: bool


def check_family(config: dict[str, Any]) -> None:
    """UnsupportedCheckpoint unless config.json is SigLIP's (SigLIP 2 fixed-resolution included)."""
    model_type = config.get("model_type")
    if model_type == "siglip2":
        raise UnsupportedCheckpoint(
            "SigLIP 2 NaFlex checkpoints (Siglip2Model, model_type 'siglip2') are not supported: "
            "they cut each image into a variable number of patches under a patch budget, with "
            "an attention mask and spatial shapes, which the fixed-shape towers here do not take; "
            f"{SUPPORTED}")
    if model_type != "siglip":
        raise UnsupportedCheckpoint(f"model_type {model_type!r} is not in the SigLIP family; "
                                    f"{SUPPORTED}")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UnsupportedCheckpoint(f"{path.name} not found in {path.parent}: the preprocessing "
                                    "is read from the checkpoint, never assumed")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UnsupportedCheckpoint(f"unreadable {path} ({exc})") from exc
    if not isinstance(raw, dict):
        raise UnsupportedCheckpoint(f"{path}: not a JSON object")
    return raw


def read_image_spec(path: Path, vision_config: dict[str, Any]) -> ImageSpec:
    """The image side from preprocessor_config.json, checked against the vision tower's size."""
    raw = _read_json(path / PREPROCESSOR_CONFIG)
    cfg = {**_IMAGE_DEFAULTS, **{k: v for k, v in raw.items() if v is not None}}
    kind = cfg.get("image_processor_type", "SiglipImageProcessor")
    if kind not in _IMAGE_PROCESSORS:
        raise UnsupportedCheckpoint(f"image processor {kind!r}: want one of {_IMAGE_PROCESSORS}"
                                    f" (the square resize of SigLIP); {SUPPORTED}")
    for key in ("do_resize", "do_rescale", "do_normalize"):
        if cfg[key] is not True:
            raise UnsupportedCheckpoint(f"{PREPROCESSOR_CONFIG}: {key}={cfg[key]!r}; only the "
                                        "SigLIP recipe (resize, rescale, normalize) is served")
    size = cfg.get("size") or {}
    height, width = size.get("height"), size.get("width")
    tower = int(vision_config.get("image_size", 224))  # SiglipVisionConfig's default
    if height != width or height != tower:
        raise UnsupportedCheckpoint(f"{PREPROCESSOR_CONFIG}: size {size} does not match the "
                                    f"vision tower's {tower}x{tower} input")
    resample = int(cfg["resample"])
    if resample not in RESAMPLE_NAMES:
        raise UnsupportedCheckpoint(f"{PREPROCESSOR_CONFIG}: unknown resample {resample}")
    mean, std = _triple(cfg["image_mean"], "image_mean"), _triple(cfg["image_std"], "image_std")
    if min(std) <= 0:
        raise UnsupportedCheckpoint(f"{PREPROCESSOR_CONFIG}: image_std {std} must be positive")
    return ImageSpec(size=tower, resample=resample, rescale_factor=float(cfg["rescale_factor"]),
                     mean=mean, std=std)


def _triple(value: Any, name: str) -> tuple[float, float, float]:
    values = [value] * 3 if isinstance(value, (int, float)) else list(value)
    if len(values) != 3:
        raise UnsupportedCheckpoint(f"{PREPROCESSOR_CONFIG}: {name} {value!r}: want 3 values")
    return (float(values[0]), float(values[1]), float(values[2]))


def read_text_spec(path: Path, text_config: dict[str, Any]) -> TextSpec:
    """The text side: tokenizer class (tokenizer_config.json), length (the tower's positions)."""
    raw = _read_json(path / TOKENIZER_CONFIG)
    kind = raw.get("tokenizer_class")
    if kind not in _TOKENIZERS:
        raise UnsupportedCheckpoint(f"{TOKENIZER_CONFIG}: tokenizer_class {kind!r}: want one of "
                                    f"{sorted(_TOKENIZERS)}; {SUPPORTED}")
    # The text tower's position table is the window the model was trained on (64 for every
    # SigLIP but so400m-patch14-224's 16); tokenizers often leave model_max_length unset.
    length = int(text_config.get("max_position_embeddings", _TEXT_LENGTH_DEFAULT))
    return TextSpec(tokenizer_class=kind, length=length, lowercase=_TOKENIZERS[kind])


def check_approximable(resample: int, mode: str) -> None:
    """Fast mode and Triton's decoder reproduce bilinear/bicubic only: refuse others at start."""
    if resample not in APPROXIMABLE:
        raise UnsupportedCheckpoint(
            f"preprocess mode {mode!r} cannot follow this checkpoint's resample "
            f"({RESAMPLE_NAMES.get(resample, resample)}): it approximates bilinear and bicubic "
            "only; use preprocess mode 'exact'")
