"""The tokenizer and processor files of the random checkpoints, per family, in the hub's layout.

Owns training the small SentencePiece models and writing tokenizer_config.json,
special_tokens_map.json, tokenizer.json (Gemma) and preprocessor_config.json. Written here
rather than by a processor's save_pretrained, whose output depends on the installed
transformers: 5.x writes a tokenizer_config.json that 4.57 cannot load ("extra_special_tokens"
as a list) and a processor_config.json in place of preprocessor_config.json. Both majors load
this layout (the google/siglip-* and siglip2-* checkpoints use it) and tokenize with it alike.
No attention_mask (model_input_names) in any family: like the hub's, since SigLIP attends to
its padding, so pipelines built on these checkpoints match the reference.
"""

from __future__ import annotations

import io
import random
from typing import Any

# The SentencePiece models trained here have at most this many pieces; the text embedding table
# keeps the architecture's vocab_size, so ids >= the piece count are never produced.
SPM_VOCAB_SIZE = 1000

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
# The multilingual family's extra words: several scripts, accents, and case pairs.
_WORDS_I18N = (
    "chat chien voiture maison café naïve déjà vu hund katze straße über fahrrad gato perro "
    "coche casa niño кошка собака машина дом Москва γάτα σκύλος 猫 犬 車 家 東京 日本語 テキスト "
    "고양이 개 자동차 قطة كلب سيارة बिल्ली कुत्ता Ünïcödé ÉCOLE École"
).split()


def _corpus(seed: int, multilingual: bool, lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    words = _WORDS + (_WORDS_I18N * 3 if multilingual else [])
    # Every lowercase letter and digit appears, so any ASCII word tokenizes without <unk>.
    alphabet = [" ".join("abcdefghijklmnopqrstuvwxyz0123456789")] * 20
    return alphabet + [" ".join(rng.choices(words, k=rng.randint(3, 14))) for _ in range(lines)]


def train_spm(seed: int, kind: str, multilingual: bool = False) -> bytes:
    """A small SentencePiece model with the family's special pieces.

    siglip: unigram, pad 0 ``<pad>``, eos 1 ``</s>``, unk 2 (SigLIP's c4/mc4 models).
    gemma: BPE with byte fallback, pad 0 ``<pad>``, eos 1 ``<eos>``, bos 2 ``<bos>``, unk 3,
    no dummy prefix, digits split (Gemma's layout).
    """
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    common: dict[str, Any] = {
        "sentence_iterator": iter(_corpus(seed, multilingual or kind == "gemma")),
        "model_writer": buf, "vocab_size": SPM_VOCAB_SIZE,
        "hard_vocab_limit": False,  # the generated corpus may not support the full size
        "character_coverage": 1.0, "num_threads": 1, "minloglevel": 2,
    }
    if kind == "siglip":
        spm.SentencePieceTrainer.train(
            model_type="unigram", pad_id=0, pad_piece="<pad>", eos_id=1, eos_piece="</s>",
            unk_id=2, unk_piece="<unk>", bos_id=-1, **common)
    elif kind == "gemma":
        spm.SentencePieceTrainer.train(
            model_type="bpe", byte_fallback=True, split_digits=True, add_dummy_prefix=False,
            remove_extra_whitespaces=False, normalization_rule_name="identity",
            pad_id=0, pad_piece="<pad>", eos_id=1, eos_piece="<eos>", bos_id=2,
            bos_piece="<bos>", unk_id=3, unk_piece="<unk>", **common)
    else:
        raise ValueError(f"tokenizer kind {kind!r}")
    return buf.getvalue()


def piece_count(model: bytes) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=model).get_piece_size()


def _special(content: str, strip: bool) -> dict[str, Any]:
    # SiglipTokenizer (4.x) strips spaces around its special tokens; Gemma's do not.
    return {"content": content, "lstrip": strip, "normalized": False, "rstrip": strip,
            "single_word": False}


def tokenizer_files(kind: str, spm_model: bytes, text_length: int,
                    processor_class: str) -> dict[str, Any]:
    """File name -> JSON object (or bytes) of the tokenizer of `kind` ('siglip' or 'gemma')."""
    if kind == "siglip":
        config = {
            "added_tokens_decoder": {"1": {**_special("</s>", True), "special": True},
                                     "2": {**_special("<unk>", True), "special": True}},
            "additional_special_tokens": [], "clean_up_tokenization_spaces": False,
            "do_lower_case": True, "eos_token": "</s>", "model_input_names": ["input_ids"],
            "model_max_length": text_length, "pad_token": "</s>",
            "processor_class": processor_class, "sp_model_kwargs": {},
            "tokenizer_class": "SiglipTokenizer", "unk_token": "<unk>",
        }
        special = {"eos_token": _special("</s>", True), "pad_token": _special("</s>", True),
                   "unk_token": _special("<unk>", True)}
        return {"spiece.model": spm_model, "tokenizer_config.json": config,
                "special_tokens_map.json": special}
    # Gemma, as convert_siglip2_to_hf.py sets it up: no <bos>, <eos> appended, right padding.
    names = {0: "<pad>", 1: "<eos>", 2: "<bos>", 3: "<unk>"}
    config = {
        "added_tokens_decoder": {str(i): {**_special(n, False), "special": True}
                                 for i, n in names.items()},
        "add_bos_token": False, "add_eos_token": True, "bos_token": "<bos>",
        "clean_up_tokenization_spaces": False, "eos_token": "<eos>",
        "model_input_names": ["input_ids"], "model_max_length": text_length,
        "pad_token": "<pad>", "padding_side": "right", "processor_class": processor_class,
        "sp_model_kwargs": {}, "spaces_between_special_tokens": False,
        "tokenizer_class": "GemmaTokenizer", "unk_token": "<unk>",
        "use_default_system_prompt": False,
    }
    special = {"bos_token": _special("<bos>", False), "eos_token": _special("<eos>", False),
               "pad_token": _special("<pad>", False), "unk_token": _special("<unk>", False)}
    return {"tokenizer.model": spm_model, "tokenizer.json": _gemma_json(spm_model),
            "tokenizer_config.json": config, "special_tokens_map.json": special}


def _gemma_json(spm_model: bytes) -> bytes:
    """tokenizer.json of the fast Gemma tokenizer built from `spm_model` (transformers' own
    conversion), as the hub ships one: 5.x loads only that file, 4.57 prefers it."""
    import tempfile
    from pathlib import Path

    from transformers import GemmaTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        vocab = Path(tmp, "tokenizer.model")
        vocab.write_bytes(spm_model)
        fast = GemmaTokenizerFast(vocab_file=str(vocab), add_bos_token=False,
                                  add_eos_token=True)
        # transformers 5.x builds this tokenizer from a SentencePiece file without its pieces
        # (every word becomes <unk>); 4.57's conversion is right, and 5.x loads its output.
        ids = fast("a photo of a dog")["input_ids"]
        if fast.unk_token_id in ids or len(ids) < 3:
            raise GemmaConversionError(
                "this transformers cannot build a Gemma tokenizer.json from a SentencePiece "
                f"model (it gave {ids} for 'a photo of a dog'): make SigLIP 2 checkpoints "
                "under transformers 4.x (5.x loads what 4.x writes)")
        return fast.backend_tokenizer.to_str().encode()


class GemmaConversionError(RuntimeError):
    """The installed transformers cannot write the Gemma tokenizer of a random checkpoint."""


def preprocessor_config(family: str, image_size: int, patch_size: int,
                        resample: int) -> dict[str, Any]:
    """preprocessor_config.json: SiglipImageProcessor (square resize), or Siglip2's (NaFlex)."""
    common = {"do_normalize": True, "do_rescale": True, "do_resize": True,
              "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
              "resample": resample, "rescale_factor": 1 / 255}
    if family == "naflex":
        return {**common, "image_processor_type": "Siglip2ImageProcessor",
                "max_num_patches": (image_size // patch_size) ** 2, "patch_size": patch_size,
                "processor_class": "Siglip2Processor"}
    return {**common, "image_processor_type": "SiglipImageProcessor",
            "processor_class": "SiglipProcessor",
            "size": {"height": image_size, "width": image_size}}
