"""Text side: prompt templates and tokenization to the text tower's fixed-length input_ids.

Tokenization is SigLIP's own SentencePiece tokenizer (``SiglipTokenizer``, the slow Python one:
there is no fast variant), called with the reference's arguments, so ``encode`` equals
``SiglipProcessor(text=..., padding="max_length", max_length=64, truncation=True)["input_ids"]``.
The tokenizer lower-cases and strips punctuation itself; nothing is normalized here.

Thread safety: ``encode`` may be called from several threads at once. SiglipTokenizer keeps no
per-call state (transformers 4.57: the only shared write is a "warn once" dict) and
SentencePiece's Encode is const; ``tests/unit/test_text.py`` checks concurrent calls against serial
ones, under 4.57 and 5.x. It is pure Python around a small C call and holds the GIL, so threads
add no throughput.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gateway.contract import TEXT_LENGTH
from gateway.core.errors import InvalidInput

DEFAULT_PROMPT_TEMPLATE = "This is a photo of {}."
PLACEHOLDER = "{}"


class TextTokenizer:
    """Texts -> int64 input_ids (N, text_length), padded and truncated as the reference does."""

    def __init__(self, tokenizer: Any, *, text_length: int = TEXT_LENGTH) -> None:
        self._tokenizer = tokenizer
        self._text_length = text_length

    @classmethod
    def from_pretrained(cls, path: Path, *, text_length: int = TEXT_LENGTH) -> TextTokenizer:
        """Load the tokenizer from a checkpoint directory (spiece.model + tokenizer_config.json)."""
        # Lazy: transformers is heavy to import, and only this constructor needs it.
        from transformers import SiglipTokenizer

        return cls(SiglipTokenizer.from_pretrained(str(path)), text_length=text_length)

    @property
    def text_length(self) -> int:
        return self._text_length

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 0:
            return np.zeros((0, self._text_length), dtype=np.int64)
        ids = self._tokenizer(list(texts), padding="max_length", max_length=self._text_length,
                              truncation=True, return_attention_mask=False)["input_ids"]
        out = np.asarray(ids, dtype=np.int64)
        if out.shape != (len(texts), self._text_length):
            raise RuntimeError(f"tokenizer returned shape {out.shape}, expected "
                               f"({len(texts)}, {self._text_length})")
        return out

    def count(self, texts: Sequence[str]) -> list[int]:
        """Tokens each text becomes (end-of-sequence included, truncated as ``encode`` does,
        without its padding): what the OpenAI API calls a text's prompt tokens."""
        if len(texts) == 0:
            return []
        ids = self._tokenizer(list(texts), max_length=self._text_length, truncation=True,
                              return_attention_mask=False)["input_ids"]
        return [len(row) for row in ids]


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
