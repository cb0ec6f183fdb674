"""Text side: prompt templates and tokenization to the text tower's fixed-length input_ids.

Tokenization is the checkpoint's own tokenizer (``AutoTokenizer``: ``SiglipTokenizer``, the slow
SentencePiece one, for SigLIP; the Gemma tokenizer for SigLIP 2), called with the reference's
arguments, so ``encode`` equals ``processor(text=..., padding="max_length",
max_length=text_length, truncation=True)["input_ids"]``. SiglipTokenizer lower-cases and strips
punctuation itself; for SigLIP 2, whose tokenizer does not lower-case although the model was
trained on lower-cased text, ``lowercase`` applies ``str.lower`` first (gateway/core/families.py).

Thread safety: ``encode`` may be called from several threads at once. SiglipTokenizer keeps no
per-call state (transformers 4.57: the only shared write is a "warn once" dict) and
SentencePiece's Encode is const; ``tests/unit/test_text.py`` checks concurrent calls against serial
ones, under 4.57 and 5.x. It is pure Python around a small C call and holds the GIL, so threads
add no throughput.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.core.errors import InvalidInput

DEFAULT_PROMPT_TEMPLATE = "This is a photo of {}."
PLACEHOLDER = "{}"


class TextTokenizer:
    """Texts -> int64 input_ids (N, text_length), padded and truncated as the reference does."""

    def __init__(self, tokenizer: Any, *, text_length: int, lowercase: bool = False) -> None:
        self._tokenizer = tokenizer
        self._text_length = text_length
        self._lowercase = lowercase
        # A fast (Rust) tokenizer sets padding and truncation on its one shared backend at
        # every call; two threads doing so at once fail ("Already borrowed"): one at a time.
        self._lock = threading.Lock() if getattr(tokenizer, "is_fast", False) else None

    @classmethod
    def from_pretrained(cls, path: Path, *, text_length: int,
                        lowercase: bool = False) -> TextTokenizer:
        """Load the checkpoint directory's tokenizer (the class its tokenizer_config.json names)."""
        # Lazy: transformers is heavy to import, and only this constructor needs it.
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(str(path)), text_length=text_length,
                   lowercase=lowercase)

    @classmethod
    def for_model(cls, meta: Any) -> TextTokenizer:
        """The tokenizer of a ``ModelMeta``, with its text length and lowercasing."""
        return cls.from_pretrained(meta.path, text_length=meta.text.length,
                                   lowercase=meta.text.lowercase)

    @property
    def text_length(self) -> int:
        return self._text_length

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self._text_length), dtype=np.int64)
        texts = [t.lower() for t in texts] if self._lowercase else list(texts)
        with self._lock or contextlib.nullcontext():
            ids = self._tokenizer(texts, padding="max_length", max_length=self._text_length,
                                  truncation=True, return_attention_mask=False)["input_ids"]
        out = np.asarray(ids, dtype=np.int64)
        if out.shape != (len(texts), self._text_length):
            raise RuntimeError(f"tokenizer returned shape {out.shape}, expected "
                               f"({len(texts)}, {self._text_length})")
        return out


def validate_template(template: str, *, field: str = "prompt_template") -> str:
    """Return ``template`` if it has exactly one ``{}`` and no other brace, else InvalidInput.

    Other braces are refused rather than kept: ``{0}`` or ``{label}`` is a mistake for ``{}``,
    and the tokenizer would strip a literal brace anyway.
    """
    if template.count(PLACEHOLDER) != 1:
        raise InvalidInput(f"must contain exactly one {PLACEHOLDER} placeholder for the label, "
                           f"found {template.count(PLACEHOLDER)}", field=field)
    rest = template.replace(PLACEHOLDER, "", 1)
    if "{" in rest or "}" in rest:
        raise InvalidInput(f"only the {PLACEHOLDER} placeholder may use braces", field=field)
    return template


def fill_prompt(template: str, label: str) -> str:
    """Put ``label`` into ``template`` (validated here too: it costs nanoseconds).

    No str.format: braces, ``{}`` or ``{0}`` in a label stay literal text.
    """
    validate_template(template)
    head, tail = template.split(PLACEHOLDER, 1)
    return f"{head}{label}{tail}"
