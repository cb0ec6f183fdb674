"""Each checkpoint family against its own HF processor: what the gateway reads from the
checkpoint, its token ids, its pixels; and the checkpoints and modes refused at start-up."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gateway.config import Settings
from gateway.core.families import UnsupportedCheckpoint
from gateway.core.images import ImageLimits, preprocess_encoded, preprocess_raw
from gateway.core.model_meta import ModelLoadError, load_model_meta
from gateway.core.text import TextTokenizer
from tests.support import families, imagegen
from tests.support.hf_reference import channels_last

# (image side, resample, text length, lowercase, embedding rows) each family's files state.
EXPECTED = {
    "siglip_p14": (224, Image.Resampling.BICUBIC, 16, False, 1024),
    "multilingual": (256, Image.Resampling.BICUBIC, 64, False, 250_000),
    "siglip2": (224, Image.Resampling.BILINEAR, 64, True, 256_000),
}


@pytest.fixture(params=families.SERVED)
def family(request, family_checkpoint) -> tuple[str, Path]:
    return request.param, family_checkpoint(request.param)


def test_meta_reads_the_checkpoint(family) -> None:
    from transformers import SiglipConfig

    name, path = family
    meta = load_model_meta(str(path))
    size, resample, length, lowercase, vocab = EXPECTED[name]
    config = SiglipConfig.from_pretrained(path)
    assert (meta.image_size, meta.image.resample, meta.text_length) == (size, resample, length)
    assert meta.text.lowercase is lowercase
    assert config.text_config.vocab_size == vocab
    assert meta.embedding_dim == config.vision_config.hidden_size


def test_tokens_match_the_family_processor(family) -> None:
    _, path = family
    meta = load_model_meta(str(path))
    tokenizer = TextTokenizer.for_model(meta)
    got = tokenizer.encode(families.TEXTS)
    want = families.reference_ids(path, families.TEXTS, meta.text_length)
    assert got.shape == (len(families.TEXTS), meta.text_length)
    np.testing.assert_array_equal(got, want)


def test_truncation_report_and_token_counts_follow_the_family(family) -> None:
    """encode_checked (the engine's path) and count (OpenAI usage) tokenize as encode does:
    the family's lower-casing and text length included."""
    _, path = family
    meta = load_model_meta(str(path))
    tokenizer = TextTokenizer.for_model(meta)
    texts = [*families.TEXTS, "A PHOTO OF A DOG", "dog " * (meta.text_length + 5)]
    ids, truncated = tokenizer.encode_checked(texts)
    np.testing.assert_array_equal(ids, tokenizer.encode(texts))
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(path)
    cased = [t.lower() for t in texts] if meta.text.lowercase else texts
    lengths = [len(row) for row in raw(cased, truncation=False)["input_ids"]]
    assert truncated.tolist() == [n > meta.text_length for n in lengths]
    assert truncated[-1]
    assert tokenizer.count(texts) == [min(n, meta.text_length) for n in lengths]


def test_siglip2_lowercases_as_trained(family_checkpoint) -> None:
    """The trap: SigLIP 2's Gemma tokenizer keeps case, so the raw processor gives other ids
    for upper-case text than for the lower-cased text the model was trained on."""
    from transformers import AutoTokenizer

    path = family_checkpoint("siglip2")
    meta = load_model_meta(str(path))
    tokenizer = TextTokenizer.for_model(meta)
    upper, lower = tokenizer.encode(["A PHOTO OF A DOG", "a photo of a dog"])
    np.testing.assert_array_equal(upper, lower)
    raw = AutoTokenizer.from_pretrained(path)(["A PHOTO OF A DOG"], padding="max_length",
                                              max_length=64, truncation=True)["input_ids"][0]
    assert list(raw) != list(lower)
    # Gemma's layout: no <bos>, <eos> (1) after the text, <pad> (0) after that; a text too
    # long keeps its <eos> last.
    n = int((lower != 0).sum())
    assert lower[n - 1] == 1 and (lower[n:] == 0).all() and 2 not in lower
    assert tokenizer.encode(["dog " * 100])[0, -1] == 1


def test_pixels_match_the_family_processor(family) -> None:
    _, path = family
    meta = load_model_meta(str(path))
    limits = ImageLimits(size=meta.image.size, resample=meta.image.resample)
    images = [imagegen.photo_jpeg(640, 480, seed=1), imagegen.png_rgba(), imagegen.exif_jpeg(6),
              imagegen.photo_jpeg(100, 90, seed=2)]
    want = channels_last(families.reference_pixels(path, images, do_rescale=False,
                                                   do_normalize=False))
    for i, data in enumerate(images):
        got = preprocess_encoded(data, field="images[0]", limits=limits)
        assert got.shape == (meta.image_size, meta.image_size, 3)
        np.testing.assert_array_equal(got, want[i].astype(np.uint8), err_msg=str(i))
    raw = np.asarray(Image.open(io.BytesIO(images[0])).convert("RGB"))
    got = preprocess_raw(raw.tobytes(), raw.shape[1], raw.shape[0], field="x", limits=limits)
    np.testing.assert_array_equal(got, want[0].astype(np.uint8))


def test_naflex_is_refused_saying_what_is_served(family_checkpoint) -> None:
    with pytest.raises(ModelLoadError, match=r"NaFlex.*not supported.*served: .*SigLIP 2's "
                                             r"fixed-resolution"):
        load_model_meta(str(family_checkpoint("naflex")))


def test_serve_refuses_before_starting_triton(family_checkpoint, tmp_path) -> None:
    """The refusals come from serve() before any Triton start (no Triton exists here)."""
    from gateway.app import serve

    naflex = Settings.from_env({}, model=str(family_checkpoint("naflex")))
    with pytest.raises(ModelLoadError, match="NaFlex"):
        asyncio.run(serve(naflex))
    # A filter fast mode and Triton's decoder cannot follow: refused for them, not for exact.
    nearest = tmp_path / "nearest"
    shutil.copytree(family_checkpoint("siglip2"), nearest)
    config_path = nearest / "preprocessor_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "resample": 0}))
    assert load_model_meta(str(nearest)).image.resample == Image.Resampling.NEAREST
    for mode in ("fast", "triton"):
        settings = Settings.from_env({}, model=str(nearest), preprocess_mode=mode)
        with pytest.raises(UnsupportedCheckpoint, match=f"'{mode}'.*nearest.*'exact'"):
            asyncio.run(serve(settings))


@pytest.mark.parametrize(("change", "message"), [
    ({"size": {"height": 256, "width": 224}}, "does not match"),
    ({"do_normalize": False}, "do_normalize"),
    ({"image_processor_type": "CLIPImageProcessor"}, "image processor"),
])
def test_processors_that_are_not_siglips_are_refused(family_checkpoint, tmp_path, change,
                                                     message) -> None:
    path = tmp_path / "ckpt"
    shutil.copytree(family_checkpoint("siglip2"), path)
    config_path = path / "preprocessor_config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **change}))
    with pytest.raises(ModelLoadError, match=message):
        load_model_meta(str(path))
