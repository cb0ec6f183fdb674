"""Init-container step: make the SigLIP checkpoint(s) of $SIGLIP_MODEL available locally.

$SIGLIP_MODEL is the gateway's own setting: one directory, or comma-separated NAME=DIRECTORY
entries for several models. Each directory is filled from $SIGLIP_HF_REPO at
$SIGLIP_HF_REVISION:

- one model:     SIGLIP_MODEL=/checkpoint/x  SIGLIP_HF_REPO=org/x  SIGLIP_HF_REVISION=REV
- several:       SIGLIP_MODEL=a=/checkpoint/a,b=/checkpoint/b
                 SIGLIP_HF_REPO=a=org/x,b=org/y     (a repo per name, the same names)
                 SIGLIP_HF_REVISION=REV, or a=REV,b=REV (names left out: main)

Default mode downloads from the Hugging Face hub only what the gateway and the towers read
(JSON configs, the SentencePiece model and model.safetensors), one checkpoint after the
other, then writes a marker in each directory. A directory that already has the marker is
left alone, so restarts and a pre-filled volume cost nothing.

``--wait`` mode (checkpoints on a shared PVC, filled by a Job) downloads nothing and waits
for every marker, so pods never start on a half-written checkpoint.

Runs with the gateway image's Python, which has huggingface_hub and the gateway package:
SIGLIP_MODEL is split by the gateway's own parser (gateway/model_specs.py), so the names
and directories fetched here are exactly the ones the gateway will read.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.model_specs import ModelSpec, parse_model_list

MARKER = ".siglip-complete"
PATTERNS = ["*.json", "*.model", "*.safetensors"]
DEFAULT_REVISION = "main"


class PlanError(ValueError):
    """The environment does not say what to fetch where; the message says what is off."""


@dataclass(frozen=True)
class Fetch:
    name: str
    dest: Path
    repo: str
    revision: str


def plan(env: Mapping[str, str]) -> list[Fetch]:
    """What to fetch, in SIGLIP_MODEL's order, from the environment described above."""
    models = _entries(env.get("SIGLIP_MODEL", ""), "SIGLIP_MODEL")
    if not models:
        raise PlanError("SIGLIP_MODEL is empty: no checkpoint directory to fill")
    repo_text = env.get("SIGLIP_HF_REPO", "")
    revision_text = env.get("SIGLIP_HF_REVISION", "").strip() or DEFAULT_REVISION
    if len(models) == 1 and "=" not in repo_text and "," not in repo_text:
        # The one-model format: the repo (and revision) without a name.
        if "=" in revision_text:
            raise PlanError("SIGLIP_HF_REVISION has names but SIGLIP_HF_REPO has none")
        return [Fetch(models[0].name, Path(models[0].checkpoint), repo_text.strip(),
                      revision_text)]
    repos = _named(repo_text, "SIGLIP_HF_REPO")
    names = [m.name for m in models]
    if list(repos) != names:
        raise PlanError(f"SIGLIP_HF_REPO names {list(repos)}, SIGLIP_MODEL names {names}: "
                        "give a repo for each model, in the same order")
    if "=" in revision_text:
        revisions = _named(revision_text, "SIGLIP_HF_REVISION")
        unknown = sorted(set(revisions) - set(names))
        if unknown:
            raise PlanError(f"SIGLIP_HF_REVISION names {unknown}, not in SIGLIP_MODEL {names}")
    else:
        revisions = dict.fromkeys(names, revision_text)
    return [Fetch(m.name, Path(m.checkpoint), repos[m.name],
                  revisions.get(m.name, DEFAULT_REVISION)) for m in models]


def _entries(text: str, var: str) -> list[ModelSpec]:
    try:
        return parse_model_list(text)
    except ValueError as exc:
        raise PlanError(f"{var}: {exc}") from None


def _named(text: str, var: str) -> dict[str, str]:
    entries = [e.strip() for e in text.split(",") if e.strip()]
    specs = _entries(text, var)
    named: dict[str, str] = {}
    for entry, spec in zip(entries, specs, strict=True):
        if not entry.startswith(spec.name + "="):
            raise PlanError(f"{var}: {entry!r} has no NAME= in front (several models)")
        if spec.name in named:
            raise PlanError(f"{var}: {spec.name!r} given twice")
        named[spec.name] = spec.checkpoint
    return named


def _download(item: Fetch) -> None:
    from huggingface_hub import snapshot_download

    item.dest.mkdir(parents=True, exist_ok=True)
    snapshot_download(repo_id=item.repo, revision=item.revision, local_dir=item.dest,
                      allow_patterns=PATTERNS)
    (item.dest / MARKER).write_text(f"{item.repo}@{item.revision}\n")


def _wait(dests: list[Path], timeout_s: float) -> list[Path]:
    """The directories still without a marker when every one had it or time ran out."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [d for d in dests if not (d / MARKER).is_file()]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(5)


def main(argv: list[str]) -> int:
    try:
        items = plan(os.environ)
    except PlanError as exc:
        print(f"fetch_checkpoint: {exc}", file=sys.stderr)
        return 2
    todo = []
    for item in items:
        marker = item.dest / MARKER
        if marker.is_file():
            print(f"{item.name}: checkpoint ready at {item.dest}: {marker.read_text().strip()}")
        else:
            todo.append(item)
    if not todo:
        return 0
    if "--wait" in argv:
        timeout_s = float(os.environ.get("SIGLIP_CHECKPOINT_WAIT_S", "1800"))
        missing = _wait([item.dest for item in todo], timeout_s)
        if missing:
            print(f"no checkpoint at {', '.join(map(str, missing))} after {timeout_s:.0f}s",
                  file=sys.stderr)
            return 1
        for item in todo:
            print(f"{item.name}: checkpoint ready at {item.dest}")
        return 0
    for item in todo:
        if not item.repo:
            print(f"{item.name}: no SIGLIP_HF_REPO to download into {item.dest}",
                  file=sys.stderr)
            return 2
        print(f"{item.name}: downloading {item.repo}@{item.revision} to {item.dest}")
        _download(item)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
