"""Tokenization against SiglipProcessor, prompt templates, and the core's torch-free imports."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from gateway.core.errors import InvalidInput
from gateway.core.text import (
    DEFAULT_PROMPT_TEMPLATE,
    TextTokenizer,
    fill_prompt,
    validate_template,
)

LONG = " ".join(f"word{i} and, another-one!" for i in range(60))
TEXTS = [
    "This is a photo of a Golden Retriever.",
    "UPPER CASE LABEL",
    "punctuation: !!! ??? ... ,,, ;; -- (brackets) [more] {braces} 'quotes' \"dq\"",
    "unicode: café, naïve, Straße, 東京, Москва, 🐈‍⬛ and 👍🏽",
    "",
    "   ",
    "tabs\tand\nnewlines\r\n",
    "a",
    LONG,
    "x" * 3000,
    "</s>",
    "label with </s> inside and <unk> too",
    "sentencepiece ▁ meta ▁▁ symbol",
    "{} {0} {label}",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_checkpoint) -> TextTokenizer:
    return TextTokenizer.from_pretrained(tiny_checkpoint, text_length=64)


@pytest.fixture(scope="module")
def processor(tiny_checkpoint):
    from transformers import SiglipProcessor

    return SiglipProcessor.from_pretrained(str(tiny_checkpoint))


def reference_ids(processor, texts: list[str]) -> np.ndarray:
    out = processor(text=texts, padding="max_length", max_length=64, truncation=True,
                    return_tensors="np")
    return out["input_ids"]


@pytest.mark.filterwarnings("ignore:This sequence already has")
def test_encode_matches_processor(tokenizer, processor):
    ours = tokenizer.encode(TEXTS)
    assert ours.dtype == np.int64 and ours.shape == (len(TEXTS), 64)
    np.testing.assert_array_equal(ours, reference_ids(processor, TEXTS))
    # One at a time too: batching must not change a row.
    for i, text in enumerate(TEXTS):
        np.testing.assert_array_equal(tokenizer.encode([text])[0], ours[i])


def test_long_text_is_truncated_not_refused(tokenizer, processor):
    untruncated = processor.tokenizer(LONG)["input_ids"]
    assert len(untruncated) > 64
    ours = tokenizer.encode([LONG])[0]
    assert ours[-1] == processor.tokenizer.eos_token_id
    np.testing.assert_array_equal(ours[:63], untruncated[:63])


def test_short_text_is_padded(tokenizer, processor):
    ours = tokenizer.encode(["a"])[0]
    pad = processor.tokenizer.pad_token_id
    assert (ours[ours != pad]).size >= 1
    assert ours[-1] == pad


def test_prompts_match_format(tokenizer, processor):
    labels = ["dog", "Golden Retriever", "café au lait", ""]
    prompts = [fill_prompt(DEFAULT_PROMPT_TEMPLATE, label) for label in labels]
    assert prompts == [DEFAULT_PROMPT_TEMPLATE.format(label) for label in labels]
    np.testing.assert_array_equal(tokenizer.encode(prompts), reference_ids(processor, prompts))


def test_text_length_and_empty_batch(tokenizer):
    assert tokenizer.text_length == 64
    empty = tokenizer.encode([])
    assert empty.shape == (0, 64) and empty.dtype == np.int64


def test_encode_from_threads_matches_serial(tokenizer):
    batches = [[f"{w} number {i}, Photo!" for w in TEXTS[:8]] for i in range(24)]
    serial = [tokenizer.encode(b) for b in batches]
    with ThreadPoolExecutor(8) as pool:
        parallel = list(pool.map(tokenizer.encode, batches))
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a, b)


def test_fill_prompt_keeps_braces_in_labels():
    assert fill_prompt("a photo of {}.", "{0} {} {x}") == "a photo of {0} {} {x}."
    assert fill_prompt("{}", "}{") == "}{"
    assert fill_prompt("{} is here", "") == " is here"


@pytest.mark.parametrize("template", ["no placeholder", "", "{} and {}", "{0}", "{label}",
                                      "a {} photo {", "a } photo {}", "{{}}"])
def test_bad_templates(template):
    with pytest.raises(InvalidInput) as err:
        validate_template(template)
    assert err.value.field == "prompt_template"
    assert str(err.value).startswith("prompt_template: ")
    with pytest.raises(InvalidInput):
        fill_prompt(template, "dog")


def test_good_templates():
    for template in (DEFAULT_PROMPT_TEMPLATE, "{}", "a photo of a {}, a type of pet.", "{} "):
        assert validate_template(template) == template


def test_core_runs_without_torch_grpc_or_tritonclient(tiny_checkpoint: Path):
    """The gateway image ships no torch: the core must import and tokenize without it."""
    script = textwrap.dedent(f"""
        import sys
        for name in ("torch", "torchvision", "grpc", "tritonclient"):
            sys.modules[name] = None  # makes any import of it fail, and find_spec say absent
        import gateway.core.cache, gateway.core.images, gateway.core.scoring
        from gateway.core.text import TextTokenizer
        tok = TextTokenizer.from_pretrained({str(tiny_checkpoint)!r}, text_length=64)
        assert tok.encode(["a photo of a dog"]).shape == (1, 64)
        print("ok")
    """)
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.filterwarnings("ignore:This sequence already has")
def test_encode_checked_ids_and_truncation_match_the_reference(tokenizer, processor):
    """The ids are encode's (the reference's); truncated means the untruncated ids (with
    </s>) are longer than 64, including around the boundary where the row is exactly full."""
    lengths = {n: len(processor.tokenizer("mountain " * n)["input_ids"]) for n in range(1, 200)}
    boundary = [n for n, length in lengths.items() if 62 <= length <= 66]
    texts = TEXTS + ["mountain " * n for n in boundary]
    ids, truncated = tokenizer.encode_checked(texts)
    np.testing.assert_array_equal(ids, reference_ids(processor, texts))
    expected = [len(processor.tokenizer(t)["input_ids"]) > 64 for t in texts]
    assert truncated.tolist() == expected
    assert any(expected) and not all(expected)
    assert {lengths[n] for n in boundary} >= {63, 64, 65}
    empty_ids, empty_flags = tokenizer.encode_checked([])
    assert empty_ids.shape == (0, 64) and empty_flags.shape == (0,)
