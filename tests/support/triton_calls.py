"""Direct calls to a Triton's SigLIP models (no gateway), for the tests of the towers: the
tensor names and datatypes come from gateway/contract.py, whichever served model's Triton
names (plain or suffixed) are called."""

from __future__ import annotations

from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

from gateway.contract import TENSORS, base_model


def _request(model: str, array: np.ndarray) -> tuple[list[Any], list[Any], str]:
    input_name, datatype, output_name = TENSORS[base_model(model)]
    tensor = grpcclient.InferInput(input_name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return [tensor], [grpcclient.InferRequestedOutput(output_name)], output_name


def infer(client: Any, model: str, array: np.ndarray, timeout_s: float = 120) -> np.ndarray:
    """One call with tritonclient.grpc's blocking client; the model's one output."""
    inputs, outputs, output_name = _request(model, array)
    result = client.infer(model, inputs, outputs=outputs, client_timeout=timeout_s)
    return result.as_numpy(output_name)


async def infer_async(client: Any, model: str, array: np.ndarray,
                      timeout_s: float = 60) -> np.ndarray:
    """The same with tritonclient.grpc.aio's client."""
    inputs, outputs, output_name = _request(model, array)
    result = await client.infer(model, inputs, outputs=outputs, client_timeout=timeout_s)
    return result.as_numpy(output_name)


def assert_close(got: np.ndarray, want: np.ndarray, tolerance: float) -> None:
    """float32 embeddings of the expected shape, within ``tolerance`` of the reference."""
    assert got.dtype == np.float32 and got.shape == want.shape
    assert float(np.max(np.abs(got - want))) <= tolerance
