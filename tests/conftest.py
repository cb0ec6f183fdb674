"""Session-wide fixtures: a tiny random checkpoint made once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SigLIP checkpoint (config, safetensors, SentencePiece tokenizer, processor)."""
    from gateway.checkpoint import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("tiny-ckpt"), size="tiny", seed=0)
