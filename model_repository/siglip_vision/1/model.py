"""Triton python-backend model: one SigLIP tower, the one config parameter `tower` names.

The one file serves both towers: siglip_text/1/model.py is a link to this file, since Triton
loads each model directory on its own and a directory holds no code of another. Contract (see
model_repository/README.md and gateway/contract.py):
- `tower: "vision"`: input `pixels` uint8 [N, S, S, 3] (RGB, HWC, already resized to the
  checkpoint's S); output `image_embeds` fp32 [N, D], equal to SiglipModel.get_image_features
  (not normalized). The processor's rescale and normalization (the checkpoint's
  preprocessor_config.json) happen here, on the device, in the compute dtype.
- `tower: "text"`: input `input_ids` int64 [N, L] (the checkpoint's tokenizer,
  padding="max_length" to the text tower's L = max_position_embeddings);
  output `text_embeds` fp32 [N, D], equal to SiglipModel.get_text_features(input_ids=...)
  with no attention mask, as SigLIP was trained.

Checkpoint: config parameter `model`, else $SIGLIP_MODEL, else the hub's siglip-base-patch16-256.
GPU instances compute in fp16 ($SIGLIP_DTYPE may say float16|bfloat16|float32); CPU in fp32.
Compilation: config parameter `compile_mode` (or $SIGLIP_COMPILE_MODE, which wins): empty for
eager, else a torch.compile mode ("default", "reduce-overhead" = with CUDA graphs on GPU,
"max-autotune", ...), compiled at load for each size in parameter `batch_buckets`.
"""

import json
import locale
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils
from transformers import AutoImageProcessor, SiglipTextModel, SiglipVisionModel

DEFAULT_MODEL = "google/siglip-base-patch16-256"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _param(config, key):
    return config.get("parameters", {}).get(key, {}).get("string_value", "").strip()


def _buckets(text, max_rows):
    try:
        sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        sizes = []
    if not sizes or sizes[0] < 1 or sizes[-1] != max_rows:
        raise ValueError(f"batch_buckets {text!r}: want ascending sizes ending at {max_rows}")
    return sizes


def _utf8_locale():
    """Gives open() UTF-8 as its default encoding, as the python command does at start-up.

    Triton's stub embeds Python without the command's setlocale(LC_CTYPE, ""), so the C locale
    stays and open() decodes ASCII; torch.compile reads its UTF-8 code templates with open().
    """
    for name in ("", "C.UTF-8", "en_US.UTF-8"):
        try:
            locale.setlocale(locale.LC_CTYPE, name)
        except locale.Error:
            continue
        if locale.getpreferredencoding(False).replace("-", "").lower() == "utf8":
            return


def _cpu_threads():
    """Applies the torch thread counts given for CPU instances; returns (intra-op, inter-op).

    $SIGLIP_TRITON_CPU_THREADS sets the intra-op pool (one forward's parallel loops; OpenMP in
    the CPU wheel), $SIGLIP_TRITON_CPU_INTEROP_THREADS the inter-op pool (unused by eager
    towers; it only grows its threads on first use). Both are set by the embedded launcher or
    the deployment from the CPUs Triton may use; unset leaves torch's default (every physical
    core of the machine, whatever the container's quota). OpenMP's wait policy cannot be set
    here: libgomp reads it when it loads, so it comes with Triton's environment.
    """
    for name, setter in (("SIGLIP_TRITON_CPU_THREADS", torch.set_num_threads),
                         ("SIGLIP_TRITON_CPU_INTEROP_THREADS", torch.set_num_interop_threads)):
        raw = os.environ.get(name, "").strip()
        if raw:
            if not raw.isdigit() or int(raw) < 1:
                raise ValueError(f"{name}={raw!r}: want a whole number >= 1")
            try:
                setter(int(raw))
            except RuntimeError as exc:  # inter-op: only before its first use in this process
                _log(f"{name}={raw} not applied: {exc}")
    return torch.get_num_threads(), torch.get_num_interop_threads()


def _log(message):
    """Into Triton's log (the launcher forwards it), where the backend offers a logger."""
    logger = getattr(pb_utils, "Logger", None)
    if logger is not None:
        logger.log_info(message)
    else:
        print(message, flush=True)


def _error(message, code="INTERNAL"):
    # Bad input maps to INVALID_ARGUMENT at the client; TritonError codes exist since Triton 23.x.
    code = getattr(pb_utils.TritonError, code, None)
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


def _read(tensor):
    """A request's tensor as a NumPy array, read through DLPack where the backend offers it.

    Triton 2.51's python-backend stub is built with a pybind11 that predates NumPy 2's dtype
    layout: under NumPy 2 its as_numpy() repeats the first element everywhere and
    pb_utils.Tensor(name, array) sends no bytes. DLPack does not go through NumPy there.
    """
    if hasattr(tensor, "to_dlpack"):
        return torch.from_dlpack(tensor.to_dlpack()).numpy()
    return tensor.as_numpy()


def _tensor(name, array):
    """An output tensor holding `array` (C-contiguous), through DLPack as in _read."""
    if hasattr(pb_utils.Tensor, "from_dlpack"):
        capsule = torch.utils.dlpack.to_dlpack(torch.from_numpy(array))
        return pb_utils.Tensor.from_dlpack(name, capsule)
    return pb_utils.Tensor(name, array)


class BatchRunner:
    """Runs a tower on row batches: one staging buffer, optional compiled shapes.

    The staging buffer holds max_batch_size rows. On GPU it is pinned, so the host-to-device
    copy is a single DMA of the batch. With a compile mode each batch runs padded (on the
    device, with whatever rows the previous batch left there) up to the next bucket size: the
    compiled code, and with "reduce-overhead" its CUDA graphs, exist for those shapes only,
    all built at load time. SigLIP's towers have no cross-row operation (LayerNorm is per
    token), so the padding rows cannot change the real ones; tests check it against eager.
    """

    def __init__(self, fn, *, device, rows, row_shape, np_dtype, compile_mode, buckets):
        cuda = device.type == "cuda"
        host = torch.from_numpy(np.zeros((rows, *row_shape), dtype=np_dtype))
        self._host = host.pin_memory() if cuda else host
        self._host_np = self._host.numpy()
        self._device_in = torch.empty_like(self._host, device=device) if cuda else self._host
        self._mark_step = cuda and compile_mode == "reduce-overhead"
        self.buckets = tuple(buckets) if compile_mode else ()
        if compile_mode:
            _utf8_locale()
            # One compiled entry per bucket: more than dynamo's default recompile limit (8).
            limit = len(self.buckets) + 4
            config = torch._dynamo.config
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(config, name):
                    setattr(config, name, max(getattr(config, name), limit))
            fn = torch.compile(fn, mode=compile_mode, dynamic=False)
        self._fn = fn

    def gather(self, arrays):
        """The requests' rows concatenated into the staging buffer (a view of it)."""
        rows = sum(len(a) for a in arrays)
        if rows > len(self._host_np):
            return np.concatenate(arrays)  # never from Triton (max_batch_size); __call__ refuses
        return np.concatenate(arrays, out=self._host_np[:rows])

    def warm_up(self):
        """Builds every bucket's code (and CUDA graphs: recorded on the third call) up front."""
        calls = 3 if self._mark_step else 1
        for rows in self.buckets or (1, 2):
            for _ in range(calls):
                self(self._host_np[:rows])

    def __call__(self, batch):
        rows = len(batch)
        if rows > len(self._host_np):
            raise ValueError(f"{rows} rows exceed max_batch_size {len(self._host_np)}")
        if batch.ctypes.data != self._host_np.ctypes.data:
            self._host_np[:rows] = batch
        padded = next((b for b in self.buckets if b >= rows), rows)
        with torch.inference_mode():
            if self._device_in is not self._host:
                self._device_in[:rows].copy_(self._host[:rows], non_blocking=True)
            if self._mark_step:
                torch.compiler.cudagraph_mark_step_begin()
            out = self._fn(self._device_in[:padded])[:rows]
            # .cpu() waits for the device: the staging buffer is free again when this returns.
            return out.float().cpu().numpy()


def _row_shape(config_dims, checkpoint_shape, name):
    """The checkpoint's row shape, if the config's dims allow it (-1 = any)."""
    if len(config_dims) != len(checkpoint_shape) or any(
            c not in (-1, s) for c, s in zip(config_dims, checkpoint_shape, strict=True)):
        raise ValueError(f"{name} dims {list(config_dims)} cannot take the checkpoint's "
                         f"{list(checkpoint_shape)}")
    return tuple(checkpoint_shape)


class VisionTower:
    """Pixels in, image features out; the processor's scaling runs on the device."""

    name, input, output, np_dtype = "vision", "pixels", "image_embeds", np.uint8

    @staticmethod
    def load(checkpoint, config_dims):
        model = SiglipVisionModel.from_pretrained(checkpoint)
        size = model.config.image_size
        processor = AutoImageProcessor.from_pretrained(checkpoint)
        # The gateway refuses checkpoints whose processor is not this square resize (families.py).
        model.siglip_scaling = (float(processor.rescale_factor), list(processor.image_mean),
                                list(processor.image_std))
        return model, _row_shape(config_dims, (size, size, 3), "pixels")

    @staticmethod
    def function(model, dtype):
        rescale, mean, std = model.siglip_scaling
        device = next(model.parameters()).device
        mean = torch.tensor(mean, dtype=dtype, device=device).view(1, 3, 1, 1)
        std = torch.tensor(std, dtype=dtype, device=device).view(1, 3, 1, 1)

        def tower(pixels):
            # The processor's rescale, then normalize ((x - mean) / std), in that order.
            x = pixels.permute(0, 3, 1, 2).to(dtype).mul_(rescale).sub_(mean).div_(std)
            return model(pixel_values=x).pooler_output

        return tower

    @staticmethod
    def check_values(array, model):
        return None


class TextTower:
    """Token ids in (no attention mask: SigLIP attends to its padding), text features out."""

    name, input, output, np_dtype = "text", "input_ids", "text_embeds", np.int64

    @staticmethod
    def load(checkpoint, config_dims):
        model = SiglipTextModel.from_pretrained(checkpoint)
        positions = model.config.max_position_embeddings
        return model, _row_shape(config_dims, (positions,), "input_ids")

    @staticmethod
    def function(model, dtype):
        def tower(input_ids):
            return model(input_ids=input_ids).pooler_output

        return tower

    @staticmethod
    def check_values(array, model):
        # An out-of-range id would crash the embedding lookup of a whole batch: checked per request.
        vocab = model.config.vocab_size
        low, high = int(array.min()), int(array.max())
        if low < 0 or high >= vocab:
            return f"input_ids ids must lie in [0, {vocab}), got [{low}, {high}]"
        return None


TOWERS = {tower.name: tower for tower in (VisionTower, TextTower)}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        name = _param(config, "tower")
        if name not in TOWERS:
            raise ValueError(f"parameter tower={name!r}: want one of {sorted(TOWERS)}")
        self.tower = TOWERS[name]
        out_type = pb_utils.get_output_config_by_name(config, self.tower.output)["data_type"]
        self.out_dtype = pb_utils.triton_string_to_numpy(out_type)
        in_dims = pb_utils.get_input_config_by_name(config, self.tower.input)["dims"]
        config_dims = tuple(int(d) for d in in_dims)

        gpu = args.get("model_instance_kind") == "GPU"
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if gpu else "cpu")
        if not gpu:  # GPU instances keep torch's defaults: their CPU side only stages batches
            intra, inter = _cpu_threads()
            name = args.get("model_instance_name", config["name"])
            _log(f"{name}: CPU instance, torch threads {intra} intra-op, {inter} inter-op")
        # fp16 on CPU is slow or unsupported for several ops: CPU always runs fp32.
        dtype_name = (os.environ.get("SIGLIP_DTYPE") or "float16") if gpu else "float32"
        if dtype_name not in DTYPES:
            raise ValueError(f"SIGLIP_DTYPE={dtype_name!r}: want one of {sorted(DTYPES)}")
        self.dtype = DTYPES[dtype_name]

        checkpoint = _param(config, "model") or os.environ.get("SIGLIP_MODEL") or DEFAULT_MODEL
        # The row shape is the checkpoint's; requests of another shape fail alone (_check).
        model, self.row_shape = self.tower.load(checkpoint, config_dims)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        tower = self.tower.function(self.model, self.dtype)

        compile_mode = os.environ.get("SIGLIP_COMPILE_MODE", _param(config, "compile_mode"))
        if compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode={compile_mode!r}: want one of {list(COMPILE_MODES)}")
        rows = int(config["max_batch_size"])
        buckets = _buckets(_param(config, "batch_buckets") or str(rows), rows)
        self.runner = BatchRunner(tower, device=self.device, rows=rows, row_shape=self.row_shape,
                                  np_dtype=self.tower.np_dtype, compile_mode=compile_mode,
                                  buckets=buckets)
        # Fail at load, not on the first request, if the checkpoint or device is unusable; and
        # pay for compilation (every bucket) now rather than in the first requests.
        self.runner.warm_up()

    def _forward(self, batch):
        return self.runner(batch).astype(self.out_dtype, copy=False)

    def _check(self, request):
        """The request's array, or an error message that fails this request alone."""
        name, dtype = self.tower.input, np.dtype(self.tower.np_dtype)
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return None, f"missing input {name!r}"
        array = _read(tensor)
        if (array.dtype != dtype or array.ndim != 1 + len(self.row_shape)
                or array.shape[1:] != self.row_shape):
            return None, (
                f"{name} must be {dtype} [N, {', '.join(map(str, self.row_shape))}], "
                f"got {array.dtype} {list(array.shape)}"
            )
        if array.shape[0] == 0:
            return None, f"{name} has no rows"
        message = self.tower.check_values(array, self.model)
        return (None, message) if message else (array, None)

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
            embeds = self._forward(self.runner.gather(arrays))
        except Exception as exc:  # e.g. CUDA OOM: fail this batch's requests, keep serving
            for i in owners:
                responses[i] = _error(
                    f"{self.tower.name} forward failed: {type(exc).__name__}: {exc}")
            return responses
        offsets = np.cumsum([len(a) for a in arrays])[:-1]
        for i, part in zip(owners, np.split(embeds, offsets), strict=True):
            output = _tensor(self.tower.output, part)
            responses[i] = pb_utils.InferenceResponse(output_tensors=[output])
        return responses
