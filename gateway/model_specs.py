"""The models one deployment serves: their names, checkpoints and per-model limits.

Given as ``SIGLIP_MODEL`` / ``--model`` (comma-separated ``[NAME=]CHECKPOINT``, repeatable on
the command line) or as ``SIGLIP_MODELS_FILE`` (TOML or JSON, ``[[models]]`` tables, which may
also set per-model limits). The first model is the default: requests that name none get it.

A model's name is what requests put in their ``model`` field, the value of the ``model``
metric label and the suffix of its Triton models (gateway/contract.py), so it is restricted
to lowercase letters, digits and hyphens. Unnamed models take the last part of their
checkpoint's path, lowercased, with other characters turned into hyphens.

Pure: no I/O except reading the models file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

DEFAULT_CHECKPOINT = "google/siglip-base-patch16-256"
NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")
# Per-model settings a models file may give; unset ones take the deployment's (Settings).
PER_MODEL_KEYS = ("text_cache_size", "max_images", "max_texts", "max_text_chars",
                  "max_image_pixels", "max_in_flight")


class ModelSpecError(ValueError):
    """A model list or models file that cannot be served; the message names the entry."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    # Hub id or local directory, as configured: reported as the model's id.
    checkpoint: str
    text_cache_size: int | None = None
    max_images: int | None = None
    max_texts: int | None = None
    max_text_chars: int | None = None
    max_image_pixels: int | None = None
    # Calls in flight for this model per process, within the process's SIGLIP_MAX_IN_FLIGHT:
    # a slow model's flood then cannot take every slot from the others. None: no own bound.
    max_in_flight: int | None = None

    def setting(self, key: str, default: int) -> int:
        """This model's value of a PER_MODEL_KEYS setting, else the deployment's ``default``."""
        value = getattr(self, key)
        return default if value is None else value


def default_name(checkpoint: str) -> str:
    """``google/siglip-so400m-patch14-384`` → ``siglip-so400m-patch14-384``."""
    last = checkpoint.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    name = re.sub(r"[^a-z0-9]+", "-", last.lower()).strip("-")[:40].strip("-")
    return name or "model"


def parse_model_list(text: str) -> list[ModelSpec]:
    """``SIGLIP_MODEL``: ``[NAME=]CHECKPOINT`` entries separated by commas."""
    entries = [part.strip() for part in text.split(",") if part.strip()]
    specs = []
    for entry in entries:
        name, sep, rest = entry.partition("=")
        if sep and not rest.strip():
            raise ModelSpecError(f"model entry {entry!r} names no checkpoint after '='")
        if sep and rest and NAME_PATTERN.fullmatch(name.strip()):
            specs.append(ModelSpec(name.strip(), rest.strip()))
        elif sep and rest and "/" not in name and "\\" not in name:
            raise ModelSpecError(f"model name {name.strip()!r} in {entry!r}: {_NAME_RULE}")
        else:  # "=" inside a path: the whole entry is the checkpoint
            specs.append(ModelSpec(default_name(entry), entry))
    return specs


def load_models_file(path: str | Path) -> list[ModelSpec]:
    """``[[models]]`` tables (TOML) or ``{"models": [...]}`` (JSON): ``checkpoint``, optional
    ``name`` and PER_MODEL_KEYS."""
    path = Path(path)
    data = _read(path)
    if not isinstance(data, dict) or set(data) != {"models"} or not isinstance(
            data["models"], list):
        raise ModelSpecError(f"{path}: want one list named 'models' and nothing else")
    specs = []
    for i, entry in enumerate(data["models"]):
        where = f"{path}: models[{i}]"
        if not isinstance(entry, dict):
            raise ModelSpecError(f"{where}: want a table")
        specs.append(_spec_from_table(entry, where))
    return specs


def resolve_models(model: str, models_file: str) -> list[ModelSpec]:
    """The deployment's models from the two settings (at most one of them set; neither: the
    default checkpoint), checked: at least one, names unique."""
    if model.strip() and models_file:
        raise ModelSpecError("give the models in SIGLIP_MODEL (--model) or in "
                             "SIGLIP_MODELS_FILE (--models-file), not both")
    if models_file:
        specs = load_models_file(models_file)
    else:
        specs = parse_model_list(model or DEFAULT_CHECKPOINT)
    if not specs:
        raise ModelSpecError("no model to serve")
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.name in seen:
            raise ModelSpecError(
                f"two models are named {spec.name!r} ({seen[spec.name]} and {spec.checkpoint}): "
                "name them, e.g. --model base=CHECKPOINT")
        seen[spec.name] = spec.checkpoint
    return specs


_NAME_RULE = ("lowercase letters, digits and inner hyphens, at most 40 characters (it names "
              "Triton models and a metric label value)")


def _read(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelSpecError(f"{path}: invalid JSON: {exc}") from None
    if path.suffix != ".toml":
        raise ModelSpecError(f"{path}: a models file ends in .toml or .json")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise ModelSpecError(f"{path}: reading TOML needs Python 3.11; use JSON") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ModelSpecError(f"{path}: invalid TOML: {exc}") from None


def _spec_from_table(entry: Mapping[str, Any], where: str) -> ModelSpec:
    allowed = {f.name for f in fields(ModelSpec)}
    unknown = sorted(set(entry) - allowed)
    if unknown:
        raise ModelSpecError(f"{where}: unknown key {unknown[0]!r} (known: "
                             f"{', '.join(sorted(allowed))})")
    checkpoint = entry.get("checkpoint")
    if not isinstance(checkpoint, str) or not checkpoint.strip():
        raise ModelSpecError(f"{where}: 'checkpoint' (a hub id or directory) is required")
    name = entry.get("name", default_name(checkpoint))
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ModelSpecError(f"{where}: name {name!r}: {_NAME_RULE}")
    limits: dict[str, int] = {}
    for key in PER_MODEL_KEYS:
        if key in entry:
            value = entry[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < (
                    0 if key == "text_cache_size" else 1):
                raise ModelSpecError(f"{where}: {key} must be a whole number of at least "
                                     f"{0 if key == 'text_cache_size' else 1}")
            limits[key] = value
    return ModelSpec(name=name, checkpoint=checkpoint.strip(), **limits)


def find_models(specs: Sequence[ModelSpec], requested: str) -> list[ModelSpec]:
    """The models a request's ``model`` field may mean: empty → the first; else by its name,
    else its checkpoint as configured, else the last part of that checkpoint's path (OpenAI
    clients send hub ids). Several when a checkpoint or path part is served under several
    names; none when nothing matches."""
    if not requested:
        return [specs[0]]
    for match in (lambda s: s.name == requested, lambda s: s.checkpoint == requested,
                  lambda s: s.checkpoint.rstrip("/").rsplit("/", 1)[-1] == requested):
        found = [s for s in specs if match(s)]
        if found:
            return found
    return []
