"""Triton's configs state the contract of gateway/contract.py: names, datatypes, dims, rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.contract import (
    DECODE_MODEL,
    ENCODED_MODEL,
    INPUT_DIMS,
    MAX_ROWS,
    TENSORS,
    TOWER_MODELS,
    VISION_MODEL,
)

ROOT = Path(__file__).resolve().parents[2]
REPOSITORIES = {"python": ROOT / "model_repository", "onnx": ROOT / "model_repository_onnx"}
# Triton's name for each datatype of the KServe protocol the client speaks.
CONFIG_TYPES = {"UINT8": "TYPE_UINT8", "INT64": "TYPE_INT64", "BYTES": "TYPE_STRING",
                "FP32": "TYPE_FP32"}


def _config(repository: Path, model: str) -> model_config_pb2.ModelConfig:
    path = repository / model / "config.pbtxt"
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize(("repository", "model"), [
    *(("python", m) for m in (*TOWER_MODELS, ENCODED_MODEL)),
    *(("onnx", m) for m in TOWER_MODELS),
])
def test_config_states_the_contract(repository: str, model: str) -> None:
    config = _config(REPOSITORIES[repository], model)
    input_name, datatype, output_name = TENSORS[model]
    assert config.name == model
    assert config.max_batch_size == MAX_ROWS[model]
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims))
            for i in config.input] == [
        (input_name, CONFIG_TYPES[datatype], list(INPUT_DIMS[model]))]
    assert [(o.name, model_config_pb2.DataType.Name(o.data_type)) for o in config.output] == [
        (output_name, "TYPE_FP32")]


def test_the_encoded_ensemble_decodes_then_runs_the_vision_tower() -> None:
    config = _config(REPOSITORIES["python"], ENCODED_MODEL)
    steps = config.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [DECODE_MODEL, VISION_MODEL]
    pixels = TENSORS[VISION_MODEL][0]
    assert steps[0].input_map == {"images": TENSORS[ENCODED_MODEL][0]}
    assert steps[1].input_map[pixels] == steps[0].output_map[pixels]
    decode = _config(REPOSITORIES["python"], DECODE_MODEL)
    assert decode.max_batch_size == MAX_ROWS[ENCODED_MODEL]
    assert [(o.name, list(o.dims)) for o in decode.output] == [
        (pixels, list(INPUT_DIMS[VISION_MODEL]))]
