"""The compiled tower inside a real Triton python-backend stub, not only in-process.

The stub embeds Python differently from the python command (no locale set-up, its own
sys.path, another process): torch.compile once failed to load there only (its code templates
were read as ASCII). A copy of siglip_vision compiled for one bucket keeps that path honest.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from gateway.embedded_triton.launcher import EmbeddedTriton, default_model_repository

pytestmark = pytest.mark.triton

ROWS = 4


def _set(config: str, key: str, value: str) -> str:
    config, n = re.subn(rf'(key: "{key}"\s*value: \{{ string_value: )"[^"]*"', rf'\1"{value}"',
                        config)
    assert n == 1, key
    return config


@pytest.fixture(scope="module")
def compiled_vision(tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path):
    repo = tmp_path_factory.mktemp("compiled-repo")
    shutil.copytree(default_model_repository() / "siglip_vision", repo / "siglip_vision",
                    ignore=shutil.ignore_patterns("__pycache__"))
    path = repo / "siglip_vision" / "config.pbtxt"
    config = re.sub(r"max_batch_size: \d+", f"max_batch_size: {ROWS}", path.read_text())
    config = _set(_set(config, "compile_mode", "default"), "batch_buckets", str(ROWS))
    path.write_text(config)
    triton = EmbeddedTriton(model=str(tiny_checkpoint), model_repository=repo,
                            models=("siglip_vision",), startup_timeout_s=240)
    triton.start()
    try:
        yield triton
    finally:
        triton.stop(grace_s=5)


def test_compiled_vision_serves_the_eager_numbers(compiled_vision, tiny_checkpoint):
    import torch
    from transformers import SiglipVisionModel

    pixels = np.random.default_rng(7).integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
    client = grpcclient.InferenceServerClient(compiled_vision.grpc_url)
    try:
        tensor = grpcclient.InferInput("pixels", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        got = client.infer("siglip_vision", [tensor]).as_numpy("image_embeds")
    finally:
        client.close()
    model = SiglipVisionModel.from_pretrained(tiny_checkpoint).eval()
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
    with torch.inference_mode():
        want = model(pixel_values=x).pooler_output.numpy()
    assert np.abs(got - want).max() <= 1e-5  # 3 rows, run padded to the 4-row bucket
