"""Scores from embeddings: cosine similarity -> SigLIP logits -> independent sigmoid probabilities.

Mirrors ``SiglipModel.forward``: both sides L2-normalized, ``logits_per_text = text @ image.T *
exp(logit_scale) + logit_bias``, ``logits_per_image`` its transpose, probabilities
``sigmoid(logits)``, each label on its own (no softmax: probabilities need not sum to 1).
Arithmetic is float64 and results are float32, so they are the correctly rounded values that
torch's float32 computation approximates to within a few ulps.
"""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm, float32. An all-zero row stays zero (torch: NaN)."""
    x64 = np.asarray(x, dtype=np.float64)
    if x64.ndim != 2:
        raise ValueError(f"expected a 2-D array of row vectors, got shape {x64.shape}")
    norms = np.linalg.norm(x64, axis=1, keepdims=True)
    # A zero embedding cannot come from the model; a NaN in a response would be worse than a 0.
    norms[norms == 0.0] = 1.0
    return (x64 / norms).astype(np.float32)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function, float32 (no overflow warnings for any input)."""
    x64 = np.asarray(x, dtype=np.float64)
    # exp of a non-positive number only: never overflows.
    e = np.exp(-np.abs(x64))
    out = np.where(x64 >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out.astype(np.float32)


def score(image_embeds: np.ndarray, text_embeds: np.ndarray, logit_scale: float,
          logit_bias: float) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(logits, probs)``, both float32 of shape (N_img, N_txt).

    ``logit_scale`` is the model's raw parameter (a log): exp is applied here, as SiglipModel
    does. Embeddings may be raw pooler outputs or already normalized.
    """
    img = l2_normalize(image_embeds).astype(np.float64)
    txt = l2_normalize(text_embeds).astype(np.float64)
    if img.shape[1] != txt.shape[1]:
        raise ValueError(f"embedding sizes differ: image {img.shape[1]}, text {txt.shape[1]}")
    logits64 = (img @ txt.T) * np.exp(float(logit_scale)) + float(logit_bias)
    return logits64.astype(np.float32), sigmoid(logits64)


def top_k(probs_row: np.ndarray, k: int | None) -> np.ndarray:
    """Indices of the ``k`` highest probabilities, highest first; equal ones keep request order.

    ``k`` None or larger than the row means all of them; negative ``k`` is a caller bug.
    """
    row = np.asarray(probs_row)
    if row.ndim != 1:
        raise ValueError(f"expected a 1-D row, got shape {row.shape}")
    if k is not None and k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    # Stable sort on the negation: descending by value, ascending index among equal values.
    order = np.argsort(-row, kind="stable")
    return order if k is None else order[:k]
