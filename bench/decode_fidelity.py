"""siglip_image_decode (Triton-side JPEG decode + resize) against the gateway's exact mode.

    python -m bench.decode_fidelity [--json OUT] [--embeddings] [--base DIR] [--device cuda]

Runs model_repository/siglip_image_decode/1/model.py's `Preprocessor` in-process (no Triton).
Pixels: PSNR and max |diff| vs gateway.core.images.preprocess_encoded (EXACT) on the JPEG
entries of tests.support.photos.fidelity_set(), for
  cpu        a CPU instance: libjpeg (the model's host decoder: torchvision if it imports here,
             else Pillow; same pixels) and torch's uint8 bicubic resize
  gpu_arith  a GPU instance's arithmetic, on the CPU: the same decode, float32 resize + round
             (what nvJPEG itself decodes differently is not in it: see --device)
  device     with --device cuda: a real GPU instance (batched nvJPEG, resize on the GPU)
Speed: images/s per core (thread CPU time, torch held to one thread) of exact vs cpu on
640x480 and 4000x3000 photo-like JPEGs; with --device, device images/s (wall clock, batches).
--embeddings: cosine of each variant's embeddings vs exact's through the vision tower of a
random tiny checkpoint, and of base if --base or /tmp/siglip-base-random exists.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from bench.preprocess_bench import measure, psnr
from gateway.core.images import ImageLimits, preprocess_encoded
from tests.support.photos import fidelity_set, photo_jpeg

MODEL_DIR = Path(__file__).resolve().parents[1] / "model_repository" / "siglip_image_decode" / "1"
SIZE = (256, 256)
BASE_DEFAULT = Path("/tmp/siglip-base-random")


def load_model_module() -> ModuleType:
    """model.py as a plain module (its Triton glue stays unused); jpeg_header beside it."""
    if str(MODEL_DIR) not in sys.path:
        sys.path.insert(0, str(MODEL_DIR))
    spec = importlib.util.spec_from_file_location("siglip_image_decode_model",
                                                  MODEL_DIR / "model.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def variants(module: ModuleType, device: str | None) -> tuple[str, dict[str, Any]]:
    decoder, cpu_decode = module._cpu_decoder("auto")
    cpu = torch.device("cpu")
    out = {"cpu": module.Preprocessor(cpu, SIZE, cpu_decode=cpu_decode),
           "gpu_arith": module.Preprocessor(cpu, SIZE, cpu_decode=cpu_decode, resize_float=True)}
    if device:
        dev = torch.device(device)
        out["device"] = module.Preprocessor(dev, SIZE, cpu_decode=cpu_decode,
                                            batch_decode=module._nvjpeg_decoder(dev))
    return decoder, out


def exact(data: bytes) -> np.ndarray:
    return preprocess_encoded(data, field="image", limits=ImageLimits())


def fidelity(pres: dict[str, Any], cases: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    outputs = {name: pre.run(list(cases.values())) for name, pre in pres.items()}
    for i, (case, data) in enumerate(cases.items()):
        want = exact(data)
        row: dict[str, Any] = {}
        for name, results in outputs.items():
            got = results[i]
            if isinstance(got, Exception):
                row[name] = {"error": str(got)}
                continue
            db = psnr(got, want)
            row[name] = {"psnr_db": None if db == float("inf") else round(db, 2),
                         "max_abs": int(np.abs(got.astype(np.int16) - want).max())}
        rows[case] = row
    return rows


def speed(pres: dict[str, Any], seconds: float, rounds: int) -> dict[str, Any]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # thread CPU time counts the calling thread only
    try:
        report: dict[str, Any] = {}
        for name, data in (("jpeg_640x480", photo_jpeg(640, 480, seed=100)),
                           ("jpeg_4000x3000", photo_jpeg(4000, 3000, seed=101))):
            fns: dict[str, Callable[[bytes], Any]] = {
                "exact": exact, "triton_cpu": lambda d: pres["cpu"].run([d])[0]}
            rates = measure(fns, data, seconds, rounds)
            report[name] = {k: round(v["per_core_ips"], 1) for k, v in rates.items()}
            if "device" in pres:
                report[name]["device_wall_ips"] = round(_device_rate(pres["device"], data), 1)
    finally:
        torch.set_num_threads(threads)
    return report


def _device_rate(pre: Any, data: bytes, batch: int = 32, repeats: int = 5) -> float:
    pre.run([data] * batch)  # warm-up
    if pre.device.type == "cuda":  # --device cpu: a dry run of the GPU step
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        pre.run([data] * batch)
    return batch * repeats / (time.perf_counter() - start)


def embeddings(pres: dict[str, Any], cases: dict[str, bytes], base: Path | None
               ) -> dict[str, Any]:
    from transformers import SiglipVisionModel

    from siglip_tools.checkpoint import make_random_checkpoint

    pixels = {"exact": np.stack([exact(d) for d in cases.values()])}
    for name, pre in pres.items():
        pixels[name] = np.stack(pre.run(list(cases.values())))
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="siglip-tiny-") as tmp:
        checkpoints = {"tiny": make_random_checkpoint(Path(tmp), size="tiny", seed=0)}
        if base is not None:
            checkpoints["base"] = base
        for size, path in checkpoints.items():
            model = SiglipVisionModel.from_pretrained(path).eval()
            embs = {k: _embed(model, v) for k, v in pixels.items()}
            cross = embs["exact"] @ embs["exact"].T
            result[size] = {"different_images_mean_cosine":
                            round(float(cross[~np.eye(len(cross), dtype=bool)].mean()), 4)}
            for name in pres:
                cos = (embs[name] * embs["exact"]).sum(-1)
                result[size][name] = {"min": round(float(cos.min()), 6),
                                      "mean": round(float(cos.mean()), 6)}
            del model
    return result


def _embed(model: Any, pixels: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
    with torch.inference_mode():
        e = model(pixel_values=x).pooler_output
    return torch.nn.functional.normalize(e, dim=-1).numpy()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--embeddings", action="store_true", help="also embedding cosines")
    ap.add_argument("--base", type=Path, help=f"base checkpoint dir (default {BASE_DEFAULT} "
                    "if it exists)")
    ap.add_argument("--device", help="also a real GPU instance, e.g. cuda (needs torchvision)")
    ap.add_argument("--seconds", type=float, default=2.0, help="CPU seconds per pipeline")
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args(argv)

    module = load_model_module()
    decoder, pres = variants(module, args.device)
    cases = {k: v for k, v in fidelity_set().items() if k.startswith("jpeg")}
    report: dict[str, Any] = {"host_decoder": decoder, "torch": torch.__version__,
                              "fidelity": fidelity(pres, cases),
                              "speed_per_core_ips": speed(pres, args.seconds, args.rounds)}
    _print(report, list(pres))
    if args.embeddings:
        base = args.base or (BASE_DEFAULT if (BASE_DEFAULT / "config.json").exists() else None)
        report["embedding_cosine"] = embeddings(pres, cases, base)
        _print_embeddings(report["embedding_cosine"], list(pres))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
        print(f"\nwrote {args.json}")
    return report


def _cell(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"error: {r['error'][:40]}"
    db = "identical" if r["psnr_db"] is None else f"{r['psnr_db']:.2f}"
    return f"{db} / {r['max_abs']}"


def _print(report: dict[str, Any], names: list[str]) -> None:
    print(f"\nhost decoder: {report['host_decoder']} (torch {report['torch']})\n")
    print("| JPEG | " + " | ".join(f"{n}: PSNR dB / max abs" for n in names) + " |")
    print("|---|" + "---|" * len(names))
    for case, row in report["fidelity"].items():
        print(f"| {case} | " + " | ".join(_cell(row[n]) for n in names) + " |")
    print("\n| input | exact img/s/core | triton_cpu img/s/core | ratio |"
          + (" device img/s (batch 32) |" if "device" in names else ""))
    print("|---|---|---|---|" + ("---|" if "device" in names else ""))
    for case, r in report["speed_per_core_ips"].items():
        extra = f" {r['device_wall_ips']} |" if "device_wall_ips" in r else ""
        print(f"| {case} | {r['exact']} | {r['triton_cpu']} | "
              f"{r['triton_cpu'] / r['exact']:.2f}x |{extra}")


def _print_embeddings(result: dict[str, Any], names: list[str]) -> None:
    print("\n| checkpoint (random) | " + " | ".join(f"{n}: min / mean cosine" for n in names)
          + " | different images: mean cosine |")
    print("|---|" + "---|" * (len(names) + 1))
    for size, r in result.items():
        cells = " | ".join(f"{r[n]['min']:.6f} / {r[n]['mean']:.6f}" for n in names)
        print(f"| {size} | {cells} | {r['different_images_mean_cosine']:.4f} |")


if __name__ == "__main__":
    main()
