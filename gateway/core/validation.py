"""Request limits: counts and text sizes, checked before any work is done.

Every failure names the field (``labels[3]``) so the caller can fix the request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from gateway.core.errors import InvalidInput

# C0 controls and DEL, except tab, newline and carriage return, which real text has.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class RequestLimits:
    max_images: int = 64
    max_texts: int = 256
    max_text_chars: int = 2048


def check_count(field: str, n: int, limit: int, what: str, *, allow_empty: bool = False) -> None:
    if n == 0 and not allow_empty:
        raise InvalidInput(f"at least one {what} is required", field=field)
    if n > limit:
        raise InvalidInput(f"at most {limit} {what}s per request, got {n}", field=field)


def check_texts(field: str, texts: Sequence[str], limits: RequestLimits) -> None:
    for i, text in enumerate(texts):
        check_text(f"{field}[{i}]", text, limits)


def check_text(field: str, text: str, limits: RequestLimits) -> None:
    if len(text) > limits.max_text_chars:
        raise InvalidInput(
            f"text of {len(text)} characters is longer than the limit of "
            f"{limits.max_text_chars}", field=field)
    bad = _CONTROL.search(text)
    if bad:
        raise InvalidInput(
            f"control character U+{ord(bad.group()):04X} at position {bad.start()}", field=field)


def refuse_truncated(truncated: np.ndarray, truncate: bool, text_length: int,
                     field: Callable[[int], str], what: str = "text") -> None:
    """With ``truncate`` false, a text longer than the model's text length is the caller's
    error, named by ``field(index)`` of the first such text. The engine checks this once the
    embeddings are in: a text's length is known only once tokenized, and what was fetched is
    cached for the callers that do truncate."""
    if truncate or not truncated.any():
        return
    first = int(np.flatnonzero(truncated)[0])
    raise InvalidInput(f"{what} is longer than the model's text length of {text_length} tokens "
                       "(truncate is false)", field=field(first))
