"""Offline maker of random-weight SigLIP checkpoints (tests, benchmarks, air-gapped smoke runs).

Owns `make_random_checkpoint` and its CLI (`siglip-gateway make-checkpoint --random ...`). The
directory it writes loads with SiglipModel / SiglipVisionModel / SiglipTextModel /
AutoProcessor `.from_pretrained`. It is marked as random in three places (config.json key
`random_weights`, README.md, the CLI's mandatory `--random`) so nobody mistakes it for real
weights: its scores are meaningless, only shapes, dtypes, latency and plumbing are real.

Families (`--family`), each with the tokenizer class and processor settings of the hub's
checkpoints of that family (transformers' convert_siglip_to_hf.py / convert_siglip2_to_hf.py;
files in checkpoint_files.py):
- `siglip`: SiglipTokenizer (SentencePiece; lower-cases, strips punctuation), bicubic, 256 px;
- `multilingual`: the same classes, the i18n checkpoint's 250k-row text embedding table, a
  tokenizer trained on several scripts;
- `siglip2`: SigLIP 2 fixed resolution (loads as SiglipModel): the Gemma tokenizer (no
  lower-casing, `<eos>` appended, `<pad>` = 0), a 256k-row table, bilinear, 224 px;
- `naflex`: SigLIP 2 NaFlex (Siglip2Model, Siglip2ImageProcessor), which the service refuses.
`--size so400m` is google/siglip-so400m-patch14-384's architecture (patch 14, 384 px).

torch and transformers are imported lazily: the gateway package itself must import without torch.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Literal

from siglip_tools import checkpoint_files as files

Size = Literal["tiny", "base", "so400m"]
Family = Literal["siglip", "multilingual", "siglip2", "naflex"]

# Realistic values instead of SiglipModel's own init (log(1), 0): the SigLIP paper initializes
# t' = log(10), b = -10, so random checkpoints give scores in the same range as real ones.
LOGIT_SCALE_INIT = math.log(10.0)
LOGIT_BIAS_INIT = -10.0
SPM_VOCAB_SIZE = files.SPM_VOCAB_SIZE
TEXT_LENGTH = 64  # every SigLIP and SigLIP 2 text tower but so400m-patch14-224's (16)

# Per family: default image side and patch, resample (PIL code), text embedding rows (None =
# the size's own), tokenizer kind.
FAMILIES: dict[str, dict[str, Any]] = {
    "siglip": {"image_size": 256, "patch_size": 16, "resample": 3, "vocab": None,
               "tokenizer": "siglip"},
    "multilingual": {"image_size": 256, "patch_size": 16, "resample": 3, "vocab": 250_000,
                     "tokenizer": "siglip"},
    "siglip2": {"image_size": 224, "patch_size": 16, "resample": 2, "vocab": 256_000,
                "tokenizer": "gemma"},
    "naflex": {"image_size": 256, "patch_size": 16, "resample": 2, "vocab": 256_000,
               "tokenizer": "gemma"},
}
_SIZE_SHAPES = {"so400m": {"image_size": 384, "patch_size": 14}}

_ARCH: dict[str, dict[str, dict[str, int]]] = {
    # Exactly google/siglip-base-patch16-256 (~203M parameters).
    "base": {
        "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "vocab_size": 32000},
        "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                   "num_attention_heads": 12},
    },
    # Exactly google/siglip-so400m-patch14-384's towers (~878M parameters).
    "so400m": {
        "text": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                 "num_attention_heads": 16, "vocab_size": 32000},
        "vision": {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                   "num_attention_heads": 16},
    },
    # Seconds to build, still the family's shapes at the API (image side, text length).
    "tiny": {
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                 "num_attention_heads": 2, "vocab_size": 1024},
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 2},
    },
}


def shape_of(size: Size, family: Family = "siglip", image_size: int | None = None,
             patch_size: int | None = None, text_length: int | None = None) -> dict[str, int]:
    """The image side, patch and text length a checkpoint of `family` and `size` gets."""
    fam = {**FAMILIES[family], **_SIZE_SHAPES.get(size, {})}
    return {"image_size": image_size or fam["image_size"],
            "patch_size": patch_size or fam["patch_size"],
            "text_length": text_length or TEXT_LENGTH}


def arch_config(size: Size, family: Family = "siglip", **shape: int | None) -> Any:
    """The SiglipConfig (Siglip2Config for naflex) of a size (no weights): to build and count."""
    from transformers import SiglipConfig

    arch, fam, dims = _ARCH[size], FAMILIES[family], shape_of(size, family, **shape)
    text = {**arch["text"], "max_position_embeddings": dims["text_length"],
            "projection_size": arch["text"]["hidden_size"]}
    if fam["vocab"] is not None:
        text["vocab_size"] = fam["vocab"]
    vision = {**arch["vision"], "patch_size": dims["patch_size"], "num_channels": 3}
    if family == "naflex":
        from transformers import Siglip2Config

        vision["num_patches"] = (dims["image_size"] // dims["patch_size"]) ** 2
        return Siglip2Config(text_config=text, vision_config=vision)
    vision["image_size"] = dims["image_size"]
    return SiglipConfig(text_config=text, vision_config=vision)


def _readme(size: Size, family: Family, seed: int, n_params: int, dims: dict[str, int]) -> str:
    arch = {"base": "google/siglip-base-patch16-256", "so400m": "SigLIP so400m"}.get(size, "tiny")
    return (
        "# RANDOM-WEIGHT SigLIP checkpoint — NOT a trained model\n\n"
        f"Made by `siglip_tools.checkpoint.make_random_checkpoint` (family={family}, "
        f"size={size}, seed={seed}).\n"
        f"Architecture: {arch} ({n_params:,} parameters; image {dims['image_size']} px, patch "
        f"{dims['patch_size']}, text {dims['text_length']} tokens), weights randomly "
        "initialized.\nEmbeddings and scores are meaningless; use it only to exercise shapes, "
        "plumbing and latency. config.json carries `\"random_weights\": true`.\n"
        f"The SentencePiece tokenizer was trained on a generated corpus (<= {SPM_VOCAB_SIZE} "
        "pieces), so it is not the family's real tokenizer either.\n"
    )


def make_random_checkpoint(out_dir: Path, size: Size, seed: int = 0, *,
                           family: Family = "siglip", image_size: int | None = None,
                           patch_size: int | None = None,
                           text_length: int | None = None) -> Path:
    """Write a random-weight checkpoint of `family` and `size` into `out_dir`; return it."""
    import torch
    from transformers import Siglip2Model, SiglipModel

    if size not in _ARCH:
        raise ValueError(f"size must be one of {sorted(_ARCH)}, got {size!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    dims = shape_of(size, family, image_size, patch_size, text_length)
    config = arch_config(size, family, image_size=image_size, patch_size=patch_size,
                         text_length=text_length)
    # The model's init draws from torch's global RNG: seed it inside a forked RNG state so the
    # result is reproducible and the caller's RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = (Siglip2Model if family == "naflex" else SiglipModel)(config)
    with torch.no_grad():
        model.logit_scale.fill_(LOGIT_SCALE_INIT)
        model.logit_bias.fill_(LOGIT_BIAS_INIT)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out_dir, safe_serialization=True)
    del model

    config_path = out_dir / "config.json"
    cfg = json.loads(config_path.read_text())
    cfg["random_weights"] = True
    config_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    fam = FAMILIES[family]
    spm = files.train_spm(seed, fam["tokenizer"], multilingual=family == "multilingual")
    if files.piece_count(spm) > config.text_config.vocab_size:
        raise RuntimeError("tokenizer vocabulary larger than the text embedding table")
    processor_class = "Siglip2Processor" if family == "naflex" else "SiglipProcessor"
    written = {**files.tokenizer_files(fam["tokenizer"], spm, dims["text_length"],
                                       processor_class),
               "preprocessor_config.json": files.preprocessor_config(
                   family, dims["image_size"], dims["patch_size"], fam["resample"])}
    for name, content in written.items():
        data = content if isinstance(content, bytes) else \
            (json.dumps(content, indent=2, sort_keys=True) + "\n").encode()
        (out_dir / name).write_bytes(data)

    (out_dir / "README.md").write_text(_readme(size, family, seed, n_params, dims))
    return out_dir


HELP = "write a random-weight checkpoint (tests, benchmarks, offline use)"
DESCRIPTION = "Write a RANDOM-weight SigLIP checkpoint (no real weights are ever made)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--random", action="store_true", required=True,
                        help="required: acknowledges the weights are random")
    parser.add_argument("--size", choices=sorted(_ARCH), required=True)
    parser.add_argument("--family", choices=sorted(FAMILIES), default="siglip",
                        help="tokenizer and processor of this family (default siglip)")
    parser.add_argument("--image-size", type=int,
                        help="image side (default: the family's, 384 for so400m)")
    parser.add_argument("--patch-size", type=int,
                        help="patch side (default: 16, 14 for so400m)")
    parser.add_argument("--text-length", type=int, help=f"text tokens (default {TEXT_LENGTH})")
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    out = make_random_checkpoint(args.out, args.size, args.seed, family=args.family,
                                 image_size=args.image_size, patch_size=args.patch_size,
                                 text_length=args.text_length)
    print(f"wrote random-weight {args.family} {args.size} checkpoint to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone: `--random --size S [--family F] --out DIR [--seed N]`; returns the status."""
    parser = argparse.ArgumentParser(prog="siglip-gateway make-checkpoint",
                                     description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
