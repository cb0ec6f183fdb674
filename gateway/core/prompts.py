"""Prompt ensembles for zero-shot classification: which templates a request uses, and how the
embeddings of one label's prompts become that label's embedding.

The recipe is CLIP's and open_clip's zero-shot evaluation: every prompt embedding is
L2-normalized, the label's are averaged, and the mean is L2-normalized again. With one template
that is the prompt's own (normalized) embedding, so a single template scores exactly as before.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from gateway.core.errors import InvalidInput
from gateway.core.scoring import l2_normalize
from gateway.core.text import DEFAULT_PROMPT_TEMPLATE, fill_prompt, validate_template

SINGLE_FIELD = "prompt_template"
MANY_FIELD = "prompt_templates"


def resolve_templates(template: str | None, templates: Sequence[str] | None) -> list[str]:
    """The request's templates, validated: ``prompt_template`` or ``prompt_templates``, not both;
    neither means the default template."""
    if template is not None and templates:
        raise InvalidInput(f"set {SINGLE_FIELD} or {MANY_FIELD}, not both", field=MANY_FIELD)
    if templates:
        return [validate_template(t, field=f"{MANY_FIELD}[{i}]") for i, t in enumerate(templates)]
    if template is not None:
        return [validate_template(template, field=SINGLE_FIELD)]
    return [DEFAULT_PROMPT_TEMPLATE]


def check_prompt_count(n_labels: int, n_templates: int, limit: int) -> None:
    """Every label is tokenized and embedded once per template: the prompts count as texts."""
    n = n_labels * n_templates
    if n > limit:
        field = MANY_FIELD if n_templates > 1 else "labels"
        raise InvalidInput(f"at most {limit} prompts (labels x templates) per request, got "
                           f"{n_labels} x {n_templates} = {n}", field=field)


def label_prompts(labels: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Label-major: the prompts of ``labels[0]`` under every template, then ``labels[1]``'s..."""
    return [fill_prompt(t, label) for label in labels for t in templates]


def ensemble_key(templates: Sequence[str]) -> str:
    """One string per template list, unambiguous whatever the templates contain."""
    return json.dumps(list(templates), ensure_ascii=False)


def prompt_ensemble(prompt_embeds: np.ndarray, n_templates: int) -> np.ndarray:
    """(L * T, D) prompt embeddings, label-major -> (L, D) unit label embeddings.

    Raw or normalized prompt embeddings give the same result: each is normalized first.
    """
    if n_templates < 1 or len(prompt_embeds) % n_templates:
        raise ValueError(f"{len(prompt_embeds)} prompt embeddings for {n_templates} templates")
    unit = l2_normalize(prompt_embeds).astype(np.float64)
    mean = unit.reshape(-1, n_templates, unit.shape[1]).mean(axis=1)
    return l2_normalize(mean)
