"""ONNX export of the SigLIP towers (siglip_tools/onnx_export.py), with the tiny checkpoint, on CPU.

One export per module. Checked: the written config.pbtxt files parse strictly and keep the
python-backend models' contract (model_repository/*/config.pbtxt); the graphs' names, element
types and shapes are the contract's and pass the dims check of Triton's onnxruntime backend;
ONNX Runtime's output equals the PyTorch reference (SiglipModel.get_image_features on
processor-normalized pixels, get_text_features(input_ids=...)) at batch 1 and 5; a non-empty
output directory is refused without overwrite. Triton's onnxruntime backend itself and TensorRT
are not run here (not in the nvidia-pytriton wheel; TensorRT needs a GPU).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")  # guard only: the `onnx` extra installs it
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")

from google.protobuf import text_format  # noqa: E402
from tritonclient.grpc import model_config_pb2  # noqa: E402

from gateway.contract import TOWER_MODELS  # noqa: E402
from siglip_tools.onnx_export import export_onnx_repository, main  # noqa: E402
from tests.support.hf_reference import features, image_processor  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODELS = TOWER_MODELS
CONTRACT = {  # name -> (input, onnx element type, row shape), (output, onnx element type)
    "siglip_vision": (("pixels", onnx.TensorProto.UINT8, [256, 256, 3]),
                      ("image_embeds", onnx.TensorProto.FLOAT)),
    "siglip_text": (("input_ids", onnx.TensorProto.INT64, [64]),
                    ("text_embeds", onnx.TensorProto.FLOAT)),
}
TOLERANCE = 1e-4
TEXTS = ["a photo of a dog", "two cats on a red sofa", "", "A BLURRY picture, of the sea!",
         "a very long caption " * 30]


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The exported repository. Exported once, with overwrite=True into a directory holding an
    unrelated file and a stale model directory: the overwrite path costs no second export."""
    out = tmp_path_factory.mktemp("onnx-repo")
    (out / "unrelated.txt").write_text("kept")
    (out / "siglip_vision").mkdir()
    (out / "siglip_vision" / "stale.txt").write_text("replaced")
    paths = export_onnx_repository(tiny_checkpoint, out, overwrite=True)
    assert paths == {name: out / name / "1" / "model.onnx" for name in MODELS}
    return out


@pytest.fixture(scope="module")
def reference(tiny_checkpoint: Path):
    """name -> function(contract input array) -> PyTorch reference embeddings."""
    import torch
    from transformers import SiglipModel

    model = SiglipModel.from_pretrained(tiny_checkpoint).eval()
    processor = image_processor(tiny_checkpoint)

    def image(pixels: np.ndarray) -> np.ndarray:
        # The processor's rescale and normalize; the contract's pixels are already resized.
        x = processor(images=list(pixels), do_resize=False, return_tensors="pt").pixel_values
        with torch.inference_mode():
            return features(model.get_image_features(pixel_values=x)).numpy()

    def text(ids: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return features(model.get_text_features(input_ids=torch.from_numpy(ids))).numpy()

    return {"siglip_vision": image, "siglip_text": text}


@pytest.fixture(scope="module")
def inputs(tiny_checkpoint: Path):
    """name -> function(rows) -> a contract input of that many rows."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoint)
    rng = np.random.default_rng(0)

    def pixels(rows: int) -> np.ndarray:
        return rng.integers(0, 256, (rows, 256, 256, 3), dtype=np.uint8)

    def input_ids(rows: int) -> np.ndarray:
        return tokenizer(TEXTS[:rows], padding="max_length", max_length=64, truncation=True,
                         return_tensors="np")["input_ids"].astype(np.int64)

    return {"siglip_vision": pixels, "siglip_text": input_ids}


def _config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _io(tensors) -> list[tuple[str, int, list[int]]]:
    return [(t.name, t.data_type, list(t.dims)) for t in tensors]


def _session(exported: Path, name: str):
    return ort.InferenceSession(str(exported / name / "1" / "model.onnx"),
                                providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name", MODELS)
def test_config_keeps_the_python_models_contract(exported: Path, name: str) -> None:
    python = _config(REPO / "model_repository" / name / "config.pbtxt")
    template = _config(REPO / "model_repository_onnx" / name / "config.pbtxt")
    config = _config(exported / name / "config.pbtxt")
    embed_dim = _session(exported, name).get_outputs()[0].shape[1]

    for candidate in (template, config):
        assert (candidate.name, candidate.backend) == (name, "onnxruntime")
        assert candidate.max_batch_size == python.max_batch_size
        assert candidate.dynamic_batching == python.dynamic_batching
        assert [(t.name, t.data_type) for t in candidate.input] == [
            (t.name, t.data_type) for t in python.input]
        assert [(o.name, o.data_type) for o in candidate.output] == [
            (o.name, o.data_type) for o in python.output]
        assert [g.kind for g in candidate.instance_group] == [
            model_config_pb2.ModelInstanceGroup.KIND_AUTO]
    # The checkpoint's row dims are written at export where the python config and the template
    # say -1 (the graph's are fixed): in the input and the warm-up request.
    (in_name, _, row) = CONTRACT[name][0]
    assert _io(template.input) == _io(python.input)
    assert [list(t.dims) for t in config.input] == [row]
    assert [list(i.dims) for w in config.model_warmup for i in w.inputs.values()] == [row]
    # D is written at export where the python config (and the template) say -1.
    assert [list(o.dims) for o in python.output] == [[-1]]
    assert [list(o.dims) for o in template.output] == [[-1]]
    assert [list(o.dims) for o in config.output] == [[embed_dim]]

    (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
    params = dict(accelerator.parameters)
    assert accelerator.name == "tensorrt" and params["precision_mode"] == "FP16"
    assert int(params["max_workspace_size_bytes"]) > 0 and params["trt_engine_cache_path"]
    # The one TensorRT profile spans exactly the batch sizes Triton can form.
    rows = "x".join(map(str, row))
    assert params["trt_profile_min_shapes"] == f"{in_name}:1x{rows}"
    assert params["trt_profile_max_shapes"] == f"{in_name}:{config.max_batch_size}x{rows}"
    # The engine cache is keyed on this export's bytes, not only the graph's structure.
    digest = hashlib.sha256((exported / name / "1" / "model.onnx").read_bytes()).hexdigest()
    assert params["trt_engine_cache_prefix"] == f"{name}_{digest[:12]}"
    assert dict(template.optimization.execution_accelerators.gpu_execution_accelerator[0]
                .parameters)["trt_engine_cache_prefix"] == name


@pytest.mark.parametrize("name", MODELS)
def test_graph_has_the_contracts_tensors(exported: Path, name: str) -> None:
    path = exported / name / "1" / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    # One self-contained file: no external weight files next to it.
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)

    (in_name, in_type, row), (out_name, out_type) = CONTRACT[name]
    (graph_in,), (graph_out,) = model.graph.input, model.graph.output
    in_dims = graph_in.type.tensor_type.shape.dim
    out_dims = graph_out.type.tensor_type.shape.dim
    assert (graph_in.name, graph_in.type.tensor_type.elem_type) == (in_name, in_type)
    assert (graph_out.name, graph_out.type.tensor_type.elem_type) == (out_name, out_type)
    assert in_dims[0].dim_param and in_dims[0].dim_param == out_dims[0].dim_param  # batch
    assert [d.dim_value for d in in_dims[1:]] == row
    assert len(out_dims) == 2 and out_dims[1].dim_value > 0


@pytest.mark.parametrize("name", MODELS)
def test_dims_pass_tritons_onnxruntime_backend_check(exported: Path, name: str) -> None:
    """What the backend compares at load (CompareDimsSupported): ONNX Runtime's view of the model
    (symbolic dims as -1) against [-1] + config dims; exactly for outputs."""
    config = _config(exported / name / "config.pbtxt")
    session = _session(exported, name)

    def dims(shape) -> list[int]:
        return [d if isinstance(d, int) else -1 for d in shape]

    (model_in,), (model_out,) = session.get_inputs(), session.get_outputs()
    (config_in,), (config_out,) = config.input, config.output
    assert model_in.name == config_in.name and dims(model_in.shape) == [-1, *config_in.dims]
    assert model_out.name == config_out.name and dims(model_out.shape) == [-1, *config_out.dims]
    assert (model_in.type, model_out.type) == (
        {"siglip_vision": "tensor(uint8)", "siglip_text": "tensor(int64)"}[name], "tensor(float)")


@pytest.mark.parametrize("rows", [1, 5])
@pytest.mark.parametrize("name", MODELS)
def test_onnxruntime_matches_pytorch(exported: Path, reference, inputs, name: str, rows: int,
                                     record_property) -> None:
    array = inputs[name](rows)
    (in_name, _, _), (out_name, _) = CONTRACT[name]
    (got,) = _session(exported, name).run([out_name], {in_name: array})
    want = reference[name](array)
    assert got.dtype == np.float32 and got.shape == want.shape == (rows, want.shape[1])
    diff = float(np.abs(got - want).max())
    record_property(f"max_abs_diff_{name}_batch{rows}", diff)
    assert diff <= TOLERANCE, f"{name} batch {rows}: max |onnxruntime - torch| = {diff:.3g}"


def test_overwrite_replaced_only_the_model_directories(exported: Path) -> None:
    assert (exported / "unrelated.txt").read_text() == "kept"
    assert not (exported / "siglip_vision" / "stale.txt").exists()
    assert sorted(p.name for p in exported.iterdir()) == sorted([*MODELS, "unrelated.txt"])


def test_refuses_a_non_empty_directory(exported: Path, tiny_checkpoint: Path) -> None:
    model = exported / "siglip_text" / "1" / "model.onnx"
    before = model.read_bytes()
    with pytest.raises(FileExistsError, match="not empty"):
        export_onnx_repository(tiny_checkpoint, exported)
    assert main(["--model", str(tiny_checkpoint), "--out", str(exported)]) == 2
    assert model.read_bytes() == before


def test_module_imports_without_torch_or_onnx() -> None:
    code = ("import sys, siglip_tools.onnx_export; "
            "bad = {'torch', 'onnx', 'onnxruntime', 'transformers'} & set(sys.modules); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, timeout=60)
