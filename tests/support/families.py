"""The checkpoint families the tests build (one tiny random checkpoint each), and the HF
reference for any of them: ``SiglipModel`` on ``input_ids`` only, the checkpoint's own tokenizer
(``AutoTokenizer``) and Pillow image processor.

The reference for SigLIP 2 (Gemma tokenizer): the processor applied to the lower-cased text, as
SigLIP 2 was trained (docs/models.md); the other families' tokenizer lower-cases itself.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

# name -> make_random_checkpoint keywords (size "tiny"). Each exercises what base does not:
# siglip_p14: patch 14 at 224 px and a 16-token text window (google/siglip-so400m-patch14-224's
# shapes); multilingual: the i18n vocabulary; siglip2: Gemma tokenizer, bilinear, 224 px.
FAMILY_CHECKPOINTS: dict[str, dict[str, Any]] = {
    "siglip_p14": {"family": "siglip", "image_size": 224, "patch_size": 14, "text_length": 16},
    "multilingual": {"family": "multilingual"},
    "siglip2": {"family": "siglip2"},
    "naflex": {"family": "naflex"},
}
SERVED = ("siglip_p14", "multilingual", "siglip2")

TEXTS = [
    "a photo of a cat", "A DOG!!", "naïve café, déjà vu", "Die Straße ÜBER alles",
    "кошка и собака", "日本語のテキスト 東京", "", "mountain " * 40, "Ünïcödé ÉCOLE École",
    "emoji 🐱 label", "tabs\tand\nnewlines",
]


def make(tmp: Path, name: str) -> Path:
    from siglip_tools.checkpoint import make_random_checkpoint

    return make_random_checkpoint(tmp, "tiny", 0, **FAMILY_CHECKPOINTS[name])


def lowercases(checkpoint: Path) -> bool:
    """Whether the reference lower-cases texts before the tokenizer (SigLIP 2's Gemma one)."""
    from transformers import AutoTokenizer

    return type(AutoTokenizer.from_pretrained(checkpoint)).__name__.startswith("Gemma")


def reference_ids(checkpoint: Path, texts: list[str], length: int) -> np.ndarray:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    if lowercases(checkpoint):
        texts = [t.lower() for t in texts]
    return tokenizer(texts, padding="max_length", max_length=length, truncation=True,
                     return_tensors="np")["input_ids"].astype(np.int64)


def reference_pixels(checkpoint: Path, images: list[bytes], **kwargs: Any) -> np.ndarray:
    """The family's image processor on load_image's RGB images: NCHW pixel_values."""
    from PIL import Image
    from transformers.image_utils import load_image

    from tests.support.hf_reference import image_processor

    proc = image_processor(str(checkpoint), **kwargs)
    pil = [load_image(Image.open(io.BytesIO(b))) for b in images]
    return proc(pil, return_tensors="np")["pixel_values"]


def reference_scores(checkpoint: Path, images: list[bytes],
                     texts: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits_per_image, image_embeds, text_embeds) of SiglipModel, input_ids only."""
    import torch
    from transformers import SiglipModel

    model = SiglipModel.from_pretrained(checkpoint).eval()
    length = model.config.text_config.max_position_embeddings
    ids = torch.from_numpy(reference_ids(checkpoint, texts, length))
    pixels = torch.from_numpy(reference_pixels(checkpoint, images))
    with torch.inference_mode():
        out = model(input_ids=ids, pixel_values=pixels)
    return out.logits_per_image.numpy(), out.image_embeds.numpy(), out.text_embeds.numpy()
