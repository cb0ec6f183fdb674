"""Scores against SiglipModel.forward on the tiny random checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gateway.core.images import ImageLimits, preprocess_encoded
from gateway.core.scoring import l2_normalize, score, sigmoid, top_k
from gateway.core.text import DEFAULT_PROMPT_TEMPLATE, TextTokenizer, fill_prompt
from tests.support.hf_reference import features


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    from transformers import SiglipModel

    m = SiglipModel.from_pretrained(str(tiny_checkpoint)).eval()
    return m


def _pixel_values(arrays: list[np.ndarray]) -> torch.Tensor:
    x = np.stack(arrays).astype(np.float32) / 255.0
    return torch.from_numpy(((x - 0.5) / 0.5).transpose(0, 3, 1, 2).copy())


def test_score_matches_siglip_model(model, tiny_checkpoint):
    from tests.support import imagegen as g

    limits = ImageLimits()
    arrays = [preprocess_encoded(g.VALID_CASES[c](), field=f"images[{i}]", limits=limits)
              for i, c in enumerate(["jpeg_photo_640x480", "png_rgba", "gif", "webp_lossy"])]
    labels = ["dog", "cat", "a red car", "Golden Retriever", "", "pizza!"]
    tok = TextTokenizer.from_pretrained(tiny_checkpoint, text_length=64)
    input_ids = torch.from_numpy(tok.encode([fill_prompt(DEFAULT_PROMPT_TEMPLATE, x)
                                             for x in labels]))
    pixel_values = _pixel_values(arrays)
    with torch.no_grad():
        out = model(input_ids=input_ids, pixel_values=pixel_values)
        image_raw = features(model.get_image_features(pixel_values=pixel_values)).numpy()
        text_raw = features(model.get_text_features(input_ids=input_ids)).numpy()
    scale, bias = model.logit_scale.item(), model.logit_bias.item()
    # The checkpoint's scale is not the identity, so a missing exp() would show.
    assert abs(np.exp(scale) - 1.0) > 0.5

    logits, probs = score(image_raw, text_raw, scale, bias)
    want = out.logits_per_image.numpy()
    assert logits.shape == (4, 6) and logits.dtype == np.float32 and probs.dtype == np.float32
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(probs, torch.sigmoid(out.logits_per_image).numpy(), rtol=0,
                               atol=1e-6)
    # Same numbers from already-normalized embeddings (what SiglipOutput carries).
    logits2, _ = score(out.image_embeds.numpy(), out.text_embeds.numpy(), scale, bias)
    np.testing.assert_allclose(logits2, want, rtol=0, atol=1e-5)


def test_score_against_torch_with_a_realistic_scale():
    """The real model's exp(scale) is ~117: logits span about -20..+5, where errors grow."""
    rng = np.random.default_rng(0)
    img, txt = rng.normal(size=(5, 768)), rng.normal(size=(9, 768))
    txt[:3] = img[:3] + 0.05 * rng.normal(size=(3, 768))  # some near matches, probabilities ~1
    img32, txt32 = img.astype(np.float32), txt.astype(np.float32)
    scale, bias = 4.7658, -12.9325
    ti = torch.from_numpy(img32)
    tt = torch.from_numpy(txt32)
    ti = ti / ti.norm(p=2, dim=-1, keepdim=True)
    tt = tt / tt.norm(p=2, dim=-1, keepdim=True)
    want = (tt @ ti.t() * torch.tensor([scale]).exp() + torch.tensor([bias])).t()
    logits, probs = score(img32, txt32, scale, bias)
    np.testing.assert_allclose(logits, want.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(probs, torch.sigmoid(want).numpy(), rtol=0, atol=1e-6)
    assert probs.max() > 0.9 and probs.min() < 1e-4


def test_sigmoid_is_stable_and_exact():
    x = np.array([-1e6, -800.0, -100.0, -20.0, -1e-8, 0.0, 1e-8, 20.0, 100.0, 800.0, 1e6],
                 dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        got = sigmoid(x)
    assert got.dtype == np.float32 and np.all(np.isfinite(got))
    np.testing.assert_allclose(got, torch.sigmoid(torch.from_numpy(x)).numpy(), rtol=1e-6,
                               atol=1e-12)
    assert got[0] == 0.0 and got[-1] == 1.0 and got[5] == 0.5


def test_l2_normalize():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0], [-2.0, 0.0]], dtype=np.float32)
    got = l2_normalize(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], rtol=1e-7)
    with pytest.raises(ValueError):
        l2_normalize(np.ones(3))


def test_score_shapes_and_errors():
    logits, probs = score(np.ones((2, 4)), np.ones((3, 4)), 0.0, 0.0)
    assert logits.shape == probs.shape == (2, 3)
    np.testing.assert_allclose(logits, 1.0, rtol=1e-7)
    empty_logits, _ = score(np.ones((2, 4)), np.ones((0, 4)), 0.0, 0.0)
    assert empty_logits.shape == (2, 0)
    with pytest.raises(ValueError, match="embedding sizes differ"):
        score(np.ones((1, 4)), np.ones((1, 5)), 0.0, 0.0)


def test_top_k_orders_by_probability_then_request_order():
    probs = np.array([0.2, 0.9, 0.2, 0.5, 0.9, 0.0], dtype=np.float32)
    assert top_k(probs, None).tolist() == [1, 4, 3, 0, 2, 5]
    assert top_k(probs, 3).tolist() == [1, 4, 3]
    assert top_k(probs, 0).tolist() == []
    assert top_k(probs, 100).tolist() == [1, 4, 3, 0, 2, 5]
    assert top_k(np.zeros(5, np.float32), 5).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        top_k(probs, -1)
