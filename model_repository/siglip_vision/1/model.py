"""Triton python-backend model: the SigLIP vision tower.

Contract (see model_repository/README.md): input `pixels` uint8 [N, 256, 256, 3] (RGB, HWC,
already resized); output `image_embeds` fp32 [N, D], equal to SiglipModel.get_image_features
(not normalized). Scaling to [-1, 1] happens here, on the device, in the compute dtype.

Self-contained on purpose: Triton loads each model directory on its own.
Checkpoint: config parameter `model`, else $SIGLIP_MODEL, else the hub's siglip-base-patch16-256.
GPU instances compute in fp16 ($SIGLIP_DTYPE may say float16|bfloat16|float32); CPU in fp32.
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from transformers import SiglipVisionModel

DEFAULT_MODEL = "google/siglip-base-patch16-256"
INPUT, OUTPUT = "pixels", "image_embeds"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _param(config, key):
    return config.get("parameters", {}).get(key, {}).get("string_value", "").strip()


def _error(message, code="INTERNAL"):
    # Bad input maps to INVALID_ARGUMENT at the client; TritonError codes exist since Triton 23.x.
    code = getattr(pb_utils.TritonError, code, None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        out_type = pb_utils.get_output_config_by_name(config, OUTPUT)["data_type"]
        self.out_dtype = pb_utils.triton_string_to_numpy(out_type)
        in_dims = pb_utils.get_input_config_by_name(config, INPUT)["dims"]
        self.row_shape = tuple(int(d) for d in in_dims)

        gpu = args.get("model_instance_kind") == "GPU"
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if gpu else "cpu")
        # fp16 on CPU is slow or unsupported for several ops: CPU always runs fp32.
        dtype_name = (os.environ.get("SIGLIP_DTYPE") or "float16") if gpu else "float32"
        if dtype_name not in DTYPES:
            raise ValueError(f"SIGLIP_DTYPE={dtype_name!r}: want one of {sorted(DTYPES)}")
        self.dtype = DTYPES[dtype_name]

        checkpoint = _param(config, "model") or os.environ.get("SIGLIP_MODEL") or DEFAULT_MODEL
        model = SiglipVisionModel.from_pretrained(checkpoint)
        size = model.config.image_size
        if self.row_shape != (size, size, 3):
            raise ValueError(f"{INPUT} dims {list(self.row_shape)}, checkpoint wants {size}x{size}")
        self.model = model.to(device=self.device, dtype=self.dtype).eval()

        # GPU fast path, off by default and untested here (no GPU in CI): dynamic shapes keep a
        # single compiled graph for all batch sizes; warm-up below pays the compile at load time.
        if gpu and _param(config, "torch_compile").lower() == "true":
            self.model = torch.compile(self.model, dynamic=True)
        # Fail at load, not on the first request, if the checkpoint or device is unusable.
        for rows in (1, 2):
            self._forward(np.zeros((rows, *self.row_shape), dtype=np.uint8))

    def _forward(self, pixels):
        with torch.inference_mode():
            x = torch.from_numpy(pixels).to(self.device, non_blocking=True)
            # The processor's rescale (1/255) and normalize (mean = std = 0.5), in that order.
            x = x.permute(0, 3, 1, 2).to(self.dtype).div_(255.0).sub_(0.5).div_(0.5)
            embeds = self.model(pixel_values=x).pooler_output
            return embeds.float().cpu().numpy().astype(self.out_dtype, copy=False)

    def _check(self, request):
        """The request's array, or an error message that fails this request alone."""
        tensor = pb_utils.get_input_tensor_by_name(request, INPUT)
        if tensor is None:
            return None, f"missing input {INPUT!r}"
        array = tensor.as_numpy()
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:] != self.row_shape:
            return None, (
                f"{INPUT} must be uint8 [N, {', '.join(map(str, self.row_shape))}], "
                f"got {array.dtype} {list(array.shape)}"
            )
        if array.shape[0] == 0:
            return None, f"{INPUT} has no rows"
        return array, None

    def execute(self, requests):
        responses = [None] * len(requests)
        arrays, owners = [], []
        for i, request in enumerate(requests):
            array, message = self._check(request)
            if message:
                responses[i] = _error(message, "INVALID_ARG")
            else:
                arrays.append(array)
                owners.append(i)
        if not arrays:
            return responses
        try:
            embeds = self._forward(np.concatenate(arrays))
        except Exception as exc:  # e.g. CUDA OOM: fail this batch's requests, keep serving
            for i in owners:
                responses[i] = _error(f"vision forward failed: {type(exc).__name__}: {exc}")
            return responses
        offsets = np.cumsum([len(a) for a in arrays])[:-1]
        for i, part in zip(owners, np.split(embeds, offsets), strict=True):
            output = pb_utils.Tensor(OUTPUT, part)
            responses[i] = pb_utils.InferenceResponse(output_tensors=[output])
        return responses
