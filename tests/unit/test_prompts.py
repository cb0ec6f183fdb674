"""Prompt ensembles: template choice and validation, prompt order, the CLIP recipe, limits."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.core.errors import InvalidInput
from gateway.core.prompts import (
    check_prompt_count,
    ensemble_key,
    label_prompts,
    prompt_ensemble,
    resolve_templates,
)
from gateway.core.text import DEFAULT_PROMPT_TEMPLATE


def test_resolve_templates():
    assert resolve_templates(None, None) == [DEFAULT_PROMPT_TEMPLATE]
    assert resolve_templates(None, []) == [DEFAULT_PROMPT_TEMPLATE]
    assert resolve_templates("{}", []) == ["{}"]
    assert resolve_templates(None, ["a {}", "b {}."]) == ["a {}", "b {}."]


@pytest.mark.parametrize(("template", "templates", "field"), [
    ("a {}", ["b {}"], "prompt_templates"),
    (None, ["a {}", "no placeholder"], "prompt_templates[1]"),
    (None, ["{} {}"], "prompt_templates[0]"),
    ("{0}", None, "prompt_template"),
])
def test_bad_template_choices_name_the_field(template, templates, field):
    with pytest.raises(InvalidInput) as err:
        resolve_templates(template, templates)
    assert err.value.field == field


def test_prompts_are_label_major_and_keep_braces():
    assert label_prompts(["cat", "{}"], ["a {}.", "{}!"]) == ["a cat.", "cat!", "a {}.", "{}!"]


def test_prompt_count_limit():
    check_prompt_count(64, 4, 256)
    with pytest.raises(InvalidInput) as err:
        check_prompt_count(65, 4, 256)
    assert err.value.field == "prompt_templates" and "65 x 4 = 260" in err.value.message
    with pytest.raises(InvalidInput) as err:
        check_prompt_count(257, 1, 256)
    assert err.value.field == "labels"


def test_ensemble_is_the_normalized_mean_of_normalized_prompts():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(6, 5)) * rng.uniform(0.1, 10, size=(6, 1))  # 2 labels x 3 templates
    got = prompt_ensemble(raw.astype(np.float32), 3)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    mean = unit.reshape(2, 3, 5).mean(axis=1)
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean, axis=1, keepdims=True),
                               atol=1e-6)
    # Scale of a prompt's raw embedding does not weigh it: normalized before the mean.
    scaled = raw.copy()
    scaled[0] *= 1000
    np.testing.assert_allclose(prompt_ensemble(scaled, 3), got, atol=1e-6)
    # One template: the prompt's own direction.
    np.testing.assert_allclose(prompt_ensemble(raw, 1), unit, atol=1e-6)
    with pytest.raises(ValueError):
        prompt_ensemble(raw, 4)


def test_ensemble_key_is_unambiguous():
    assert ensemble_key(["a {}", "b {}"]) != ensemble_key(["a {}\", \"b {}"])
    assert ensemble_key(["a {}", "b {}"]) != ensemble_key(["b {}", "a {}"])
    assert ensemble_key(["a {}"]) == ensemble_key(("a {}",))
