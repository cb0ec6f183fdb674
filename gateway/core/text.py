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
        return self._ids(self._tokenize(texts, padding="max_length", truncation=True,
                                        return_attention_mask=False), len(texts))

    def encode_checked(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``encode``'s input_ids, and per text whether it did not fit (was truncated).

        The ids are the reference's, from the same call as ``encode``; its attention mask tells
        padding from the rest (SigLIP pads with ``</s>`` itself). Only a row with no padding can
        hold a truncated text, and only those texts are tokenized again, untruncated, to tell an
        exact fit from an overflow.
        """
        if len(texts) == 0:
            return self.encode(texts), np.zeros(0, dtype=bool)
        out = self._tokenize(texts, padding="max_length", truncation=True,
                             return_attention_mask=True)
        ids = self._ids(out, len(texts))
        full = np.flatnonzero(np.asarray(out["attention_mask"]).sum(axis=1) >= self._text_length)
        truncated = np.zeros(len(texts), dtype=bool)
        if full.size:
            whole = self._tokenize([texts[i] for i in full], truncation=False,
                                   return_attention_mask=False)["input_ids"]
            truncated[full] = [len(row) > self._text_length for row in whole]
        return ids, truncated

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text becomes (end-of-sequence included, truncated as ``encode`` does,
        without its padding): what the OpenAI API calls a text's prompt tokens."""
        if len(texts) == 0:
            return []
        ids = self._tokenize(texts, truncation=True, return_attention_mask=False)["input_ids"]
        return [len(row) for row in ids]

    def _tokenize(self, texts: Sequence[str], **kwargs: Any) -> Any:
        """Every call to the tokenizer: the family's lower-casing, the fast tokenizer's lock."""
        texts = [t.lower() for t in texts] if self._lowercase else list(texts)
        if kwargs.get("truncation"):
            kwargs["max_length"] = self._text_length
        with self._lock or contextlib.nullcontext():
            return self._tokenizer(texts, **kwargs)

    def _ids(self, out: Any, rows: int) -> np.ndarray:
        ids = np.asarray(out["input_ids"], dtype=np.int64)
        if ids.shape != (rows, self._text_length):
            raise RuntimeError(f"tokenizer returned shape {ids.shape}, expected "
                               f"({rows}, {self._text_length})")
        return ids


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
