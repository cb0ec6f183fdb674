"""Optional ONNX export of the SigLIP towers as a Triton model repository for the onnxruntime
backend (CPU, CUDA, or TensorRT through the backend's execution accelerator).

Owns `export_onnx_repository` and its CLI (`siglip-gateway export-onnx --model CKPT --out DIR`).
It writes OUT/siglip_vision/{config.pbtxt,1/model.onnx} and OUT/siglip_text/{...}; the configs
come from model_repository_onnx/ (see its README). The exported models keep the python-backend
tensor contract exactly (model_repository/README.md): same model names, tensor names, dtypes,
shapes and batch limits, so the gateway works unchanged against either repository. (Only the
configs' output dims differ in form: D itself where the python configs say -1; see _config_text.)

- `siglip_vision`: `pixels` uint8 [N, S, S, 3] (RGB, HWC) -> `image_embeds` fp32 [N, D]. The
  graph does what model.py does on the device: NHWC -> NCHW, the checkpoint's rescale and
  normalization, then the tower's pooler_output (= SiglipModel.get_image_features).
- `siglip_text`: `input_ids` int64 [N, L] -> `text_embeds` fp32 [N, D] (= SiglipTextModel
  pooler_output with input_ids only, no attention mask, as SigLIP was trained).

torch, transformers and onnx are imported inside functions: they are optional (the `onnx`
extra), and no gateway process imports torch.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from gateway.contract import TENSORS as CONTRACT
from gateway.contract import TEXT_MODEL, TOWER_MODELS, VISION_MODEL

# name -> (input, output), from the one contract.
TENSORS = {name: (CONTRACT[name][0], CONTRACT[name][2]) for name in TOWER_MODELS}
# torch's ONNX translations (torchlib) are written for opset 18: any other opset, torch's default
# (20) included, goes through the ONNX version converter afterwards; 18 needs none. Opset 18 has
# LayerNormalization (TensorRT's INormalizationLayer) and loads in ONNX Runtime >= 1.14 and
# TensorRT >= 8.6, i.e. any tritonserver container of the last years (24.10 included).
DEFAULT_OPSET = 18
BATCH_DIM = "batch"
# Placeholder value of trt_engine_cache_prefix in the config templates; replaced per export.
CACHE_PREFIX_KEY = 'key: "trt_engine_cache_prefix"'
# Row dims of the TensorRT profiles in the config templates; replaced per export.
ROW_PLACEHOLDERS = {VISION_MODEL: "SxSx3", TEXT_MODEL: "L"}
_DIMS = re.compile(r"dims: \[[^\]]*\]")
_TWO_GIB = 2**31


def default_templates() -> Path:
    """The repository's model_repository_onnx/ (config templates and README)."""
    return Path(__file__).resolve().parents[1] / "model_repository_onnx"


def _import_deps() -> tuple[Any, Any]:
    """(torch, onnx), or an ImportError that says what to install."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's dynamo exporter needs it; fail here, clearly)
        import torch
    except ImportError as exc:
        raise ImportError(
            f"ONNX export needs torch, onnx and onnxscript ({exc.name} is missing): install the "
            "project's `onnx` extra: pip install 'siglip-gateway[onnx]'"
        ) from exc
    return torch, onnx


def _towers(checkpoint: str) -> dict[str, tuple[Any, Any]]:
    """name -> (module taking the contract's input, example input with batch 2)."""
    import torch
    from transformers import AutoImageProcessor, SiglipTextModel, SiglipVisionModel

    class Vision(torch.nn.Module):
        def __init__(self, tower: torch.nn.Module, processor: Any) -> None:
            super().__init__()
            self.tower = tower
            self.rescale = float(processor.rescale_factor)
            self.register_buffer("mean", torch.tensor(processor.image_mean).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(processor.image_std).view(1, 3, 1, 1))

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            # The arithmetic of model_repository/siglip_vision/1/model.py (fp32), in its order:
            # the processor's rescale, then normalize with its mean and std. The cast comes
            # first so that the graph starts with Cast(uint8), the form TensorRT takes uint8
            # inputs in; moving values before or after it gives the same numbers.
            x = pixels.to(torch.float32).permute(0, 3, 1, 2)
            x = x.mul(self.rescale).sub(self.mean).div(self.std)
            return self.tower(pixel_values=x).pooler_output

    class Text(torch.nn.Module):
        def __init__(self, tower: torch.nn.Module) -> None:
            super().__init__()
            self.tower = tower

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return self.tower(input_ids=input_ids).pooler_output

    # fp32 weights whatever the checkpoint stores: TensorRT picks FP16 itself (precision_mode),
    # and the CPU/CUDA providers then compute what the python backend computes on CPU.
    vision = SiglipVisionModel.from_pretrained(checkpoint).float()
    text = SiglipTextModel.from_pretrained(checkpoint).float()
    size = vision.config.image_size
    length = text.config.max_position_embeddings
    return {
        # Batch 2, not 1: torch.export specializes dimensions of size 0 and 1.
        VISION_MODEL: (Vision(vision, AutoImageProcessor.from_pretrained(checkpoint)).eval(),
                       torch.zeros(2, size, size, 3, dtype=torch.uint8)),
        TEXT_MODEL: (Text(text).eval(), torch.zeros(2, length, dtype=torch.int64)),
    }


def _export(module: Any, example: Any, name: str, opset: int) -> Any:
    """The module as a checked, self-contained onnx.ModelProto with the contract's names."""
    torch, onnx = _import_deps()
    in_name, out_name = TENSORS[name]
    # The torch.export-based exporter (dynamo=True): the default since torch 2.9, while the
    # TorchScript one (dynamo=False) is deprecated and warns on every call in torch 2.13.
    with torch.no_grad():
        program = torch.onnx.export(
            module, (example,), input_names=[in_name], output_names=[out_name],
            dynamic_shapes={in_name: {0: torch.export.Dim(BATCH_DIM)}},
            opset_version=opset, dynamo=True, external_data=False, verbose=False,
        )
    model = program.model_proto
    (graph_in,), (graph_out,) = model.graph.input, model.graph.output
    if (graph_in.name, graph_out.name) != (in_name, out_name):
        raise RuntimeError(f"{name}: exported {graph_in.name}->{graph_out.name}, "
                           f"want {in_name}->{out_name}")
    for value in (graph_in, graph_out):
        if not value.type.tensor_type.shape.dim[0].dim_param:
            raise RuntimeError(f"{name}: the exporter fixed the batch axis of {value.name}")
    if graph_out.type.tensor_type.shape.dim[1].dim_value <= 0:
        raise RuntimeError(f"{name}: the exporter left the embedding size of {out_name} unknown")
    # Exporter debug annotations (IR-10 fields, names of torch nodes): not needed to serve.
    for proto in (*model.graph.input, *model.graph.output, *model.graph.value_info,
                  *model.graph.node):
        del proto.metadata_props[:]
    # The oldest IR version that carries the opset: older runtimes refuse a newer IR version
    # even when they know every operator of the graph.
    model.ir_version = min(model.ir_version, onnx.helper.find_min_ir_version_for(
        list(model.opset_import), ignore_unknown=True))
    model.producer_name = "siglip-gateway.onnx_export"
    if model.ByteSize() >= _TWO_GIB:  # protobuf's limit for one file; the base tower is ~0.4 GB
        raise RuntimeError(f"{name}: {model.ByteSize()} bytes do not fit one model.onnx")
    onnx.checker.check_model(model, full_check=True)
    return model


def _set_dims(text: str, anchor: str, dims: tuple[int, ...], name: str) -> str:
    """`text` with the first `dims: [...]` after `anchor` set to `dims`."""
    start = text.find(anchor)
    match = _DIMS.search(text, start) if start >= 0 else None
    if match is None:
        raise ValueError(f"{name} config template: no dims after `{anchor}`")
    return f"{text[:match.start()]}dims: [ {', '.join(map(str, dims))} ]{text[match.end():]}"


def _config_text(template: str, name: str, embed_dim: int, digest: str,
                 row: tuple[int, ...]) -> str:
    """The template with this export's values where it says -1 (or a row placeholder):
    - the output's dims: D. Triton's onnxruntime backend compares output dims exactly with the
      model's, and ONNX Runtime reports the graph's D (shape inference fills it in from the
      weights even if the graph declares it symbolic), so -1 would not load.
    - the input's row dims `row` (the checkpoint's S x S x 3 or L: the graph's are fixed), in the
      input, the warm-up request and the TensorRT profiles.
    - the TensorRT engine-cache prefix gets a digest of model.onnx: ONNX Runtime keys cached
      engines on the graph's structure, not its weights, so an engine built from an earlier export
      of the same architecture would otherwise be reused with the old weights.
    """
    in_name, out_name = TENSORS[name]
    template = _set_dims(template, f'name: "{out_name}"', (embed_dim,), name)
    template = _set_dims(template, f'name: "{in_name}"', row, name)
    template = _set_dims(template, f'key: "{in_name}"', row, name)
    placeholder = f"x{ROW_PLACEHOLDERS[name]}\""
    if template.count(placeholder) != 3:
        raise ValueError(f"{name} config template: want 3 TensorRT profiles ending {placeholder}")
    template = template.replace(placeholder, "x" + "x".join(map(str, row)) + '"')
    old, new = (f'{CACHE_PREFIX_KEY} value: "{name}"',
                f'{CACHE_PREFIX_KEY} value: "{name}_{digest}"')
    if template.count(old) != 1:
        raise ValueError(f"{name} config template: want exactly one `{old}`")
    return template.replace(old, new)


def export_onnx_repository(
    checkpoint: str | Path, out: Path, *, opset: int | None = None, overwrite: bool = False,
    templates: Path | None = None,
) -> dict[str, Path]:
    """Export both towers of `checkpoint` (local dir or hub id) into the Triton model repository
    `out`; return {model name: path of its model.onnx}.

    A non-empty `out` is refused (FileExistsError) unless `overwrite`, which replaces only the two
    model directories. `opset` defaults to DEFAULT_OPSET; `templates` to model_repository_onnx/.
    Each model.onnx is one self-contained file (weights inside), checked with onnx.checker.
    """
    _, onnx = _import_deps()
    out = Path(out)
    templates = default_templates() if templates is None else Path(templates)
    configs = {name: (templates / name / "config.pbtxt").read_text() for name in TENSORS}
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty (pass overwrite=True / --overwrite)")
    out.mkdir(parents=True, exist_ok=True)

    paths: dict[str, Path] = {}
    # Both models are written to a hidden staging directory first and moved into place only
    # when both exported: a failed export leaves no half-written repository.
    with tempfile.TemporaryDirectory(prefix=".onnx-export-", dir=out) as staging:
        for name, (module, example) in _towers(str(checkpoint)).items():
            row = tuple(int(d) for d in example.shape[1:])
            model = _export(module, example, name, DEFAULT_OPSET if opset is None else opset)
            embed_dim = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
            data = model.SerializeToString()
            del model
            model_dir = Path(staging, name)
            (model_dir / "1").mkdir(parents=True)
            (model_dir / "1" / "model.onnx").write_bytes(data)
            digest = hashlib.sha256(data).hexdigest()[:12]
            (model_dir / "config.pbtxt").write_text(
                _config_text(configs[name], name, embed_dim, digest, row))
        for name in TENSORS:
            target = out / name
            if target.exists():
                shutil.rmtree(target)
            Path(staging, name).rename(target)
            paths[name] = target / "1" / "model.onnx"
            onnx.checker.check_model(str(paths[name]))  # the file as Triton will read it
    return paths


HELP = "export the towers as an ONNX Runtime/TensorRT Triton model repository"
DESCRIPTION = ("Export the SigLIP towers to ONNX as a Triton model repository (onnxruntime "
               "backend, optional TensorRT); see model_repository_onnx/README.md.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="checkpoint: local directory or hub id")
    parser.add_argument("--out", type=Path, required=True, help="model repository to write")
    parser.add_argument("--opset", type=int, default=None, help=f"default {DEFAULT_OPSET}")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace siglip_vision/ and siglip_text/ in a non-empty --out")


def run(args: argparse.Namespace) -> int:
    try:
        paths = export_onnx_repository(args.model, args.out, opset=args.opset,
                                       overwrite=args.overwrite)
    except (ImportError, FileExistsError) as exc:
        print(f"siglip-gateway export-onnx: {exc}", file=sys.stderr)
        return 2
    for name, path in paths.items():
        print(f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone: `--model CKPT --out DIR [--opset N] [--overwrite]`; returns the exit status."""
    parser = argparse.ArgumentParser(prog="siglip-gateway export-onnx", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
