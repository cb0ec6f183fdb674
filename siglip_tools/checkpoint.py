"""Offline maker of random-weight SigLIP checkpoints (tests, benchmarks, air-gapped smoke runs).

Owns `make_random_checkpoint` and its CLI (`siglip-gateway make-checkpoint --random ...`). The
directory it writes loads with SiglipModel / SiglipVisionModel / SiglipTextModel /
SiglipProcessor `.from_pretrained`. It is marked as random in three places (config.json key
`random_weights`, README.md, the CLI's mandatory `--random`) so nobody mistakes it for real
weights: its scores are meaningless, only shapes, dtypes, latency and plumbing are real.

torch and transformers are imported lazily: the gateway package itself must import without torch.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import random
from pathlib import Path
from typing import Any, Literal

from gateway.contract import IMAGE_SIZE, TEXT_LENGTH

Size = Literal["tiny", "base"]

PATCH_SIZE = 16
# Realistic values instead of SiglipModel's own init (log(1), 0): the SigLIP paper initializes
# t' = log(10), b = -10, so random checkpoints give scores in the same range as real ones.
LOGIT_SCALE_INIT = math.log(10.0)
LOGIT_BIAS_INIT = -10.0
# The SentencePiece model trained here has at most this many pieces; the text embedding table
# keeps the architecture's vocab_size (32000 for base), so ids >= the piece count are simply
# never produced by the tokenizer.
SPM_VOCAB_SIZE = 1000

_ARCH: dict[str, dict[str, dict[str, int]]] = {
    # Exactly google/siglip-base-patch16-256 (~203M parameters).
    "base": {
        "text": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                 "num_attention_heads": 12, "vocab_size": 32000},
        "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                   "num_attention_heads": 12},
    },
    # Seconds to build, still the same shapes at the API (256x256 images, 64 tokens).
    "tiny": {
        "text": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                 "num_attention_heads": 2, "vocab_size": 1024},
        "vision": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 2},
    },
}

_WORDS = (
    "a photo of the an this is my dog cat bird car truck plane boat house tree flower person "
    "man woman child people group street city road beach sea mountain river forest sky cloud sun "
    "night day red blue green yellow black white small large big little old young new happy sad "
    "running sitting standing walking playing eating drinking sleeping flying swimming driving "
    "on in at with near under over behind front next to of and or picture image drawing painting "
    "sketch close up view blurry bright dark cartoon rendering toy food pizza apple banana orange "
    "table chair bed sofa window door kitchen room garden park field snow rain grass water stone "
    "bicycle motorcycle bus train horse cow sheep elephant bear zebra giraffe computer phone book "
    "clock vase scissors teddy hair drier toothbrush cup bottle glass wine fork knife spoon bowl "
    "sandwich broccoli carrot hot donut cake one two three four five many several some"
).split()


def arch_config(size: Size) -> Any:
    """The SiglipConfig of a size (no weights): used to build and to count parameters."""
    from transformers import SiglipConfig

    arch = _ARCH[size]
    text = {**arch["text"], "max_position_embeddings": TEXT_LENGTH,
            "projection_size": arch["text"]["hidden_size"]}
    vision = {**arch["vision"], "image_size": IMAGE_SIZE, "patch_size": PATCH_SIZE,
              "num_channels": 3}
    return SiglipConfig(text_config=text, vision_config=vision)


def _corpus(seed: int, lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    # Every lowercase letter and digit appears, so any ASCII word tokenizes without <unk>.
    alphabet = [" ".join("abcdefghijklmnopqrstuvwxyz0123456789")] * 20
    return alphabet + [" ".join(rng.choices(_WORDS, k=rng.randint(3, 14))) for _ in range(lines)]


def _train_spm(seed: int) -> bytes:
    """A small unigram SentencePiece model with SigLIP's special pieces (pad 0, eos 1, unk 2)."""
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus(seed)),
        model_writer=buf,
        model_type="unigram",
        vocab_size=SPM_VOCAB_SIZE,
        hard_vocab_limit=False,  # the generated corpus may not support the full size
        character_coverage=1.0,
        pad_id=0, pad_piece="<pad>",
        eos_id=1, eos_piece="</s>",
        unk_id=2, unk_piece="<unk>",
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def _piece_count(model: bytes) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=model).get_piece_size()


def _special(content: str) -> dict[str, Any]:
    # As SiglipTokenizer (4.x) declares its special tokens: spaces around them are stripped.
    return {"content": content, "lstrip": True, "normalized": False, "rstrip": True,
            "single_word": False}


def _processor_files() -> dict[str, dict[str, Any]]:
    """The tokenizer's and image processor's files, in the hub checkpoints' layout.

    Written here rather than by SiglipProcessor.save_pretrained, whose output depends on the
    installed transformers: 5.x writes a tokenizer_config.json that 4.57 cannot load
    ("extra_special_tokens" as a list) and a processor_config.json in place of
    preprocessor_config.json. Both majors load this layout (google/siglip-* use it) and
    tokenize with it alike. No attention_mask (model_input_names): like the hub's, since
    SigLIP attends to its padding, so pipelines built on this checkpoint match the reference.
    """
    tokenizer_config = {
        "added_tokens_decoder": {"1": {**_special("</s>"), "special": True},
                                 "2": {**_special("<unk>"), "special": True}},
        "additional_special_tokens": [],
        "clean_up_tokenization_spaces": False,
        "do_lower_case": True,
        "eos_token": "</s>",
        "model_input_names": ["input_ids"],
        "model_max_length": TEXT_LENGTH,
        "pad_token": "</s>",
        "processor_class": "SiglipProcessor",
        "sp_model_kwargs": {},
        "tokenizer_class": "SiglipTokenizer",
        "unk_token": "<unk>",
    }
    special_tokens_map = {"eos_token": _special("</s>"), "pad_token": _special("</s>"),
                          "unk_token": _special("<unk>")}
    preprocessor_config = {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "SiglipProcessor",
        "resample": 3,  # PIL bicubic
        "rescale_factor": 1 / 255,
        "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
    }
    return {"tokenizer_config.json": tokenizer_config,
            "special_tokens_map.json": special_tokens_map,
            "preprocessor_config.json": preprocessor_config}


def _readme(size: Size, seed: int, n_params: int) -> str:
    return (
        "# RANDOM-WEIGHT SigLIP checkpoint — NOT a trained model\n\n"
        f"Made by `siglip_tools.checkpoint.make_random_checkpoint` (size={size}, seed={seed}).\n"
        f"Architecture: {'google/siglip-base-patch16-256' if size == 'base' else 'tiny'} "
        f"({n_params:,} parameters), weights randomly initialized.\n"
        "Embeddings and scores are meaningless; use it only to exercise shapes, plumbing and "
        "latency. config.json carries `\"random_weights\": true`.\n"
        f"The SentencePiece tokenizer was trained on a generated corpus (<= {SPM_VOCAB_SIZE} "
        "pieces), so it is not SigLIP's real tokenizer either.\n"
    )


def make_random_checkpoint(out_dir: Path, size: Size, seed: int = 0) -> Path:
    """Write a random-weight SigLIP checkpoint of `size` into `out_dir`; return `out_dir`."""
    import torch
    from transformers import SiglipModel

    if size not in _ARCH:
        raise ValueError(f"size must be one of {sorted(_ARCH)}, got {size!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    config = arch_config(size)
    # SiglipModel's init draws from torch's global RNG: seed it inside a forked RNG state so the
    # result is reproducible and the caller's RNG is left untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SiglipModel(config)
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

    spm = _train_spm(seed)
    if _piece_count(spm) > config.text_config.vocab_size:
        raise RuntimeError("tokenizer vocabulary larger than the text embedding table")
    (out_dir / "spiece.model").write_bytes(spm)
    for name, content in _processor_files().items():
        (out_dir / name).write_text(json.dumps(content, indent=2, sort_keys=True) + "\n")

    (out_dir / "README.md").write_text(_readme(size, seed, n_params))
    return out_dir


HELP = "write a random-weight checkpoint (tests, benchmarks, offline use)"
DESCRIPTION = "Write a RANDOM-weight SigLIP checkpoint (no real weights are ever made)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--random", action="store_true", required=True,
                        help="required: acknowledges the weights are random")
    parser.add_argument("--size", choices=sorted(_ARCH), required=True)
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    out = make_random_checkpoint(args.out, args.size, args.seed)
    print(f"wrote random-weight {args.size} checkpoint to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone: `--random --size {tiny,base} --out DIR [--seed N]`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="siglip-gateway make-checkpoint",
                                     description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
