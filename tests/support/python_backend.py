"""A stub of Triton's `triton_python_backend_utils`, and model.py files of the repository loaded
under it as Triton would on CPU: unit tests of the python-backend models without Triton."""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2

REPO = Path(__file__).resolve().parents[2] / "model_repository"


# --- stub of triton_python_backend_utils ---------------------------------------------------

class _Tensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        # The real backend hands tensors over as contiguous buffers.
        assert isinstance(array, np.ndarray) and array.flags.c_contiguous, name
        self._name, self._array = name, array

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        return self._array


class _TritonError:
    INTERNAL, INVALID_ARG = "INTERNAL", "INVALID_ARG"

    def __init__(self, message: str, code: str = "INTERNAL") -> None:
        self._message, self._code = message, code

    def message(self) -> str:
        return self._message

    def code(self) -> str:
        return self._code


class _InferenceResponse:
    def __init__(self, output_tensors: list[_Tensor], error: _TritonError | None = None) -> None:
        self._outputs, self._error = output_tensors, error

    def output_tensors(self) -> list[_Tensor]:
        return self._outputs

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> _TritonError | None:
        return self._error


class _InferenceRequest:
    def __init__(self, inputs: list[_Tensor]) -> None:
        self._inputs = inputs

    def inputs(self) -> list[_Tensor]:
        return self._inputs


def _by_name(items: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(item for item in items if item["name"] == name)


def _make_stub() -> types.ModuleType:
    stub = types.ModuleType("triton_python_backend_utils")
    stub.Tensor = _Tensor
    stub.TritonError = _TritonError
    stub.InferenceResponse = _InferenceResponse
    stub.InferenceRequest = _InferenceRequest
    stub.get_input_tensor_by_name = lambda request, name: next(
        (t for t in request.inputs() if t.name() == name), None
    )
    stub.get_input_config_by_name = lambda config, name: _by_name(config["input"], name)
    stub.get_output_config_by_name = lambda config, name: _by_name(config["output"], name)
    types_map = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_UINT8": np.uint8,
                 "TYPE_INT64": np.int64}
    stub.triton_string_to_numpy = types_map.__getitem__
    return stub


def _module(model_name: str) -> types.ModuleType:
    """model_repository/<model_name>/1/model.py, imported under the stub backend module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "triton_python_backend_utils", _make_stub())
        spec = importlib.util.spec_from_file_location(
            f"{model_name}_model_py", REPO / model_name / "1" / "model.py"
        )
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


def _load(model_name: str, siglip_model: str, parameters: dict[str, str] | None = None,
          max_batch_size: int | None = None, compile_env: str | None = None) -> Any:
    """Import model_repository/<model_name>/1/model.py and initialize it as Triton would on CPU."""
    module = _module(model_name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIGLIP_MODEL", siglip_model)
        if compile_env is None:
            mp.delenv("SIGLIP_COMPILE_MODE", raising=False)
        else:
            mp.setenv("SIGLIP_COMPILE_MODE", compile_env)
        pbtxt = (REPO / model_name / "config.pbtxt").read_text()
        proto = text_format.Parse(pbtxt, model_config_pb2.ModelConfig())
        config = json_format.MessageToDict(proto, preserving_proto_field_name=True)
        for key, value in (parameters or {}).items():
            config["parameters"][key] = {"string_value": value}
        if max_batch_size is not None:
            config["max_batch_size"] = max_batch_size
        model = module.TritonPythonModel()
        model.initialize({
            "model_config": json.dumps(config),
            "model_instance_kind": "CPU",
            "model_instance_device_id": "0",
        })
        return model


def _request(name: str, array: np.ndarray) -> _InferenceRequest:
    return _InferenceRequest([_Tensor(name, np.ascontiguousarray(array))])


def _output(response: _InferenceResponse, name: str) -> np.ndarray:
    assert not response.has_error(), response.error().message()
    (tensor,) = response.output_tensors()
    assert tensor.name() == name
    return tensor.as_numpy()
