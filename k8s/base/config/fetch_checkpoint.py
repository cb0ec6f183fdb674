"""Init-container step: make the SigLIP checkpoint available at $SIGLIP_MODEL.

Default mode downloads $SIGLIP_HF_REPO at $SIGLIP_HF_REVISION from the Hugging Face hub
(only what the gateway and the towers read: JSON configs, the SentencePiece model and
model.safetensors), then writes a marker. A directory that already has the marker is left
alone, so restarts and a pre-filled volume cost nothing.

``--wait`` mode (checkpoint on a shared PVC, filled by a Job) downloads nothing and waits
for the marker, so pods never start on a half-written checkpoint.

Runs with the gateway image's Python, which has huggingface_hub.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

MARKER = ".siglip-complete"
PATTERNS = ["*.json", "*.model", "*.safetensors"]


def _download(dest: Path, repo: str, revision: str) -> None:
    from huggingface_hub import snapshot_download

    dest.mkdir(parents=True, exist_ok=True)
    snapshot_download(repo_id=repo, revision=revision, local_dir=dest, allow_patterns=PATTERNS)
    (dest / MARKER).write_text(f"{repo}@{revision}\n")


def _wait(dest: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not (dest / MARKER).is_file():
        if time.monotonic() > deadline:
            return False
        time.sleep(5)
    return True


def main(argv: list[str]) -> int:
    dest = Path(os.environ["SIGLIP_MODEL"])
    if (dest / MARKER).is_file():
        print(f"checkpoint ready at {dest}: {(dest / MARKER).read_text().strip()}")
        return 0
    if "--wait" in argv:
        timeout_s = float(os.environ.get("SIGLIP_CHECKPOINT_WAIT_S", "1800"))
        if not _wait(dest, timeout_s):
            print(f"no checkpoint at {dest} after {timeout_s:.0f}s", file=sys.stderr)
            return 1
        print(f"checkpoint ready at {dest}")
        return 0
    repo = os.environ["SIGLIP_HF_REPO"]
    revision = os.environ.get("SIGLIP_HF_REVISION", "main")
    print(f"downloading {repo}@{revision} to {dest}")
    _download(dest, repo, revision)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
