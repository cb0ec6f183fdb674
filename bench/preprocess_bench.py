"""Image preprocessing benchmark: reference (baseline) vs exact vs fast, and fast's fidelity.

    python -m bench.preprocess_bench [--json OUT] [--seconds S] [--workers N] [--fidelity]

Speed, per input (640x480 and 4000x3000 photo-like JPEGs at quality 90, a 640x480 PNG):
  baseline      the reference: PIL open, transformers' load_image (exif_transpose,
                convert RGB), SiglipImageProcessor(do_rescale=False, do_normalize=False)
  baseline_pil  the same steps as a plain Pillow pipeline (open, exif_transpose, convert,
                resize BICUBIC, np.asarray); the run checks it is pixel-identical to baseline
  exact         gateway.core.images.preprocess_encoded(mode=EXACT)
  fast          preprocess_encoded(mode=FAST) -> gateway.core.image_fast
  fast_pillow   the same without OpenCV (what fast does where OpenCV is not installed)
Each is measured in one thread, interleaved in rounds (so drifting machine load hits all
alike), as images/s per core = images / thread CPU seconds (median over rounds); also
images/s by wall clock, and with --workers N threads (default: CPU count) by wall clock.

Fidelity: PSNR and max |diff| of fast vs exact on a fixed generated set (sizes, modes,
formats). With --fidelity also the cosine of fast vs exact embeddings through the vision
tower of random tiny and base checkpoints (base writes ~800 MB to a temp dir).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from gateway.core import image_fast
from tests.support.photos import fidelity_set, photo_jpeg, photo_png

SIZE = 256
Pipeline = Callable[[bytes], np.ndarray]


def _gateway_images() -> Any | None:
    try:
        from gateway.core import images
    except ImportError:
        return None
    return images if hasattr(images, "preprocess_encoded") else None


def pipelines() -> dict[str, Pipeline]:
    import transformers
    from transformers.image_utils import load_image

    # The Pillow processor under either major (5.x's SiglipImageProcessor may be torchvision's),
    # converting no colours after load_image, as 4.x's: see tests/support/hf_reference.py.
    cls = getattr(transformers, "SiglipImageProcessorPil", None) or \
        transformers.SiglipImageProcessor
    proc = cls(size={"height": SIZE, "width": SIZE}, do_rescale=False, do_normalize=False,
               do_convert_rgb=False)

    def baseline(data: bytes) -> np.ndarray:
        im = load_image(Image.open(io.BytesIO(data)))
        # Channels-first, the default of both majors (5.x ignores data_format).
        return np.ascontiguousarray(proc(im, return_tensors="np")["pixel_values"][0]
                                    .transpose(1, 2, 0))

    def baseline_pil(data: bytes) -> np.ndarray:
        im = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
        return np.asarray(im.resize((SIZE, SIZE), Image.Resampling.BICUBIC))

    out: dict[str, Pipeline] = {"baseline": baseline, "baseline_pil": baseline_pil}
    images = _gateway_images()
    if images is None:
        print("exact: gateway.core.images.preprocess_encoded not found; skipped, and fast "
              "is timed as Image.open + decode_and_resize_fast", file=sys.stderr)

        def fast_direct(data: bytes) -> np.ndarray:
            return image_fast.decode_and_resize_fast(Image.open(io.BytesIO(data)), SIZE)

        out["fast"] = out["fast_pillow"] = fast_direct
        return out
    limits = images.ImageLimits(size=SIZE)
    for name, mode in (("exact", images.PreprocessMode.EXACT),
                       ("fast", images.PreprocessMode.FAST)):
        out[name] = (lambda m: lambda data: images.preprocess_encoded(
            data, field="image", limits=limits, mode=m))(mode)
    out["fast_pillow"] = out["fast"]
    return out


@contextlib.contextmanager
def _context(name: str) -> Iterator[None]:
    """fast_pillow is fast with OpenCV switched off, for the length of its measurement."""
    if name != "fast_pillow":
        yield
        return
    previous = image_fast._set_opencv(False)
    try:
        yield
    finally:
        image_fast._set_opencv(previous)


def measure(fns: dict[str, Pipeline], data: bytes, seconds: float,
            rounds: int) -> dict[str, dict[str, float]]:
    """Interleaved single-thread timing; each pipeline gets seconds/rounds per round."""
    per_round = seconds / rounds
    cpu_rates: dict[str, list[float]] = {k: [] for k in fns}
    totals = {k: [0, 0.0] for k in fns}
    for name, fn in fns.items():
        with _context(name):
            fn(data)  # warm-up: imports, lazy init, caches
    for _ in range(rounds):
        for name, fn in fns.items():
            with _context(name):
                n, c0, w0 = 0, time.thread_time(), time.perf_counter()
                while True:
                    fn(data)
                    n += 1
                    cpu = time.thread_time() - c0
                    if cpu >= per_round:
                        break
                wall = time.perf_counter() - w0
            cpu_rates[name].append(n / cpu)
            totals[name][0] += n
            totals[name][1] += wall
    return {k: {"per_core_ips": statistics.median(cpu_rates[k]),
                "wall_ips": totals[k][0] / totals[k][1]} for k in fns}


def measure_pool(fn: Pipeline, name: str, data: bytes, workers: int, seconds: float) -> float:
    """Images/s by wall clock with ``workers`` threads looping on ``fn``."""
    deadline = time.perf_counter() + seconds

    def loop() -> int:
        n = 0
        while time.perf_counter() < deadline:
            fn(data)
            n += 1
        return n

    with _context(name), ThreadPoolExecutor(workers) as pool:
        start = time.perf_counter()
        done = sum(f.result() for f in [pool.submit(loop) for _ in range(workers)])
        return done / (time.perf_counter() - start)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def fidelity(fns: dict[str, Pipeline], cases: dict[str, bytes]) -> dict[str, dict[str, Any]]:
    ref = fns.get("exact", fns["baseline_pil"])
    rows: dict[str, dict[str, Any]] = {}
    for name, data in cases.items():
        exact = ref(data)
        row: dict[str, Any] = {"size": list(Image.open(io.BytesIO(data)).size)}
        for variant in ("fast", "fast_pillow"):
            with _context(variant):
                out = fns[variant](data)
            diff = np.abs(out.astype(np.int16) - exact.astype(np.int16))
            db = psnr(out, exact)
            row[variant] = {"psnr_db": None if db == float("inf") else round(db, 2),
                            "max_abs": int(diff.max()),
                            "mean_abs": round(float(diff.mean()), 3)}
        rows[name] = row
    return rows


def embedding_cosines(fns: dict[str, Pipeline], cases: dict[str, bytes]) -> dict[str, Any]:
    """Cosine of fast vs exact image embeddings (pooled vision-tower output)."""
    import tempfile

    import torch
    from transformers import SiglipVisionModel

    from siglip_tools.checkpoint import make_random_checkpoint

    ref = fns.get("exact", fns["baseline_pil"])
    exact = np.stack([ref(d) for d in cases.values()])
    fast = np.stack([fns["fast"](d) for d in cases.values()])
    result: dict[str, Any] = {}
    for size in ("tiny", "base"):
        with tempfile.TemporaryDirectory(prefix=f"siglip-{size}-") as tmp:
            t0 = time.perf_counter()
            make_random_checkpoint(Path(tmp), size=size, seed=0)
            model = SiglipVisionModel.from_pretrained(tmp).eval()
            embs = []
            with torch.inference_mode():
                for arr in (exact, fast):
                    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(255).sub(0.5).div(0.5)
                    embs.append(torch.nn.functional.normalize(model(pixel_values=x).pooler_output,
                                                              dim=-1))
            cos = (embs[0] * embs[1]).sum(-1).tolist()
            # Scale for the numbers above: how similar two *different* images look to this
            # (random-weight) tower. Fast vs exact must sit far closer to 1 than this.
            cross = embs[0] @ embs[0].T
            off_diag = cross[~torch.eye(len(cross), dtype=torch.bool)]
            result[size] = {
                "per_image": dict(zip(cases, (round(c, 6) for c in cos), strict=True)),
                "min": round(min(cos), 6), "mean": round(sum(cos) / len(cos), 6),
                "different_images_mean_cosine": round(off_diag.mean().item(), 4),
                "seconds": round(time.perf_counter() - t0, 1),
            }
            del model
    return result


def _speed_inputs() -> dict[str, bytes]:
    return {"jpeg_640x480": photo_jpeg(640, 480, seed=100),
            "jpeg_4000x3000": photo_jpeg(4000, 3000, seed=101),
            "png_640x480": photo_png(640, 480, seed=102)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--seconds", type=float, default=3.0,
                    help="CPU seconds per pipeline per input (split over --rounds)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="threads for the pool measurement (0: skip it)")
    ap.add_argument("--pool-seconds", type=float, default=1.5)
    ap.add_argument("--fidelity", action="store_true",
                    help="also embedding cosine through random tiny and base towers")
    args = ap.parse_args(argv)

    fns = pipelines()
    report: dict[str, Any] = {"machine": _machine(), "size": SIZE, "speed": {}}
    for name, data in _speed_inputs().items():
        same = np.array_equal(fns["baseline"](data), fns["baseline_pil"](data))
        rates = measure(fns, data, args.seconds, args.rounds)
        base = rates["baseline"]["per_core_ips"]
        for k, r in rates.items():
            r["ratio_vs_baseline"] = r["per_core_ips"] / base
            if args.workers > 0:
                r["pool_ips"] = measure_pool(fns[k], k, data, args.workers, args.pool_seconds)
        report["speed"][name] = {"bytes": len(data), "baseline_pil_identical": same, **rates}
        _print_speed(name, report["speed"][name], args.workers)
    report["fidelity"] = fidelity(fns, fidelity_set())
    _print_fidelity(report["fidelity"])
    if args.fidelity:
        report["embedding_cosine"] = embedding_cosines(fns, fidelity_set())
        for size, r in report["embedding_cosine"].items():
            print(f"embedding cosine fast vs exact, random {size}: min {r['min']:.6f} "
                  f"mean {r['mean']:.6f} (different images: "
                  f"{r['different_images_mean_cosine']:.4f})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=float))
        print(f"wrote {args.json}")
    return report


def _machine() -> dict[str, Any]:
    import PIL

    cv = None
    with contextlib.suppress(ImportError):
        import cv2

        cv = cv2.__version__
    return {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(), "python": platform.python_version(),
            "pillow": PIL.__version__, "opencv": cv, "numpy": np.__version__,
            "fast_uses_opencv": image_fast.opencv_available()}


def _print_speed(name: str, r: dict[str, Any], workers: int) -> None:
    print(f"\n{name} ({r['bytes'] / 1e3:.0f} kB; baseline_pil identical to baseline: "
          f"{r['baseline_pil_identical']})")
    pool = f"  {'pool x' + str(workers):>12s}" if workers > 0 else ""
    print(f"  {'pipeline':14s} {'img/s/core':>10s} {'ms/img':>8s} {'vs baseline':>11s} "
          f"{'wall img/s':>10s}{pool}")
    for k, v in r.items():
        if not isinstance(v, dict):
            continue
        pool_v = f"  {v['pool_ips']:12.1f}" if "pool_ips" in v else ""
        print(f"  {k:14s} {v['per_core_ips']:10.1f} {1e3 / v['per_core_ips']:8.2f} "
              f"{v['ratio_vs_baseline']:10.2f}x {v['wall_ips']:10.1f}{pool_v}")


def _print_fidelity(rows: dict[str, dict[str, Any]]) -> None:
    print("\nfidelity vs exact        size          fast: PSNR dB  max  |  fast_pillow: PSNR  max")
    for name, r in rows.items():
        f, p = r["fast"], r["fast_pillow"]
        print(f"  {name:22s} {'x'.join(map(str, r['size'])):>11s}  {_db(f):>14s} "
              f"{f['max_abs']:4d}  |  {_db(p):>17s} {p['max_abs']:4d}")


def _db(row: dict[str, Any]) -> str:
    return "identical" if row["psnr_db"] is None else f"{row['psnr_db']:.2f}"


if __name__ == "__main__":
    main()
