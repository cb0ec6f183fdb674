#!/usr/bin/env python3
"""Serving benchmark: how close the served path comes to the model's own speed, and how far
ahead it is of the hand-rolled alternative, side by side in one run on one checkpoint.

    python bench/serving_bench.py --size base --json /tmp/serving.json

Modes (see serving_inprocess.py and serving_remote.py for exactly what each does):
  ceiling  the towers in-process on preprocessed tensors, at the batch Triton formed
  direct   Triton over tritonclient.grpc.aio, the client doing the gateway's work itself
  served   the gateway (a subprocess) over gRPC
  served_http  the same gateway process, over its HTTP/JSON port (gateway/http/)
  served_shm  (opt-in) the same, its tensors to Triton through shared memory (same host)
  naive    transformers' pipeline / SiglipModel + SiglipProcessor, once per request
  pillow   one bare Pillow core (decode, RGB, bicubic resize) on the JPEG Embed workloads
  ceiling_compiled  (with --compile) the ceiling with torch.compile'd towers
Workloads: serving_workloads.WORKLOADS. Each cell warms up, then measures a fixed duration;
direct and served run at concurrency C (closed loop), ceiling and naive sequentially.
Cells run workload by workload, every mode back to back (see serving_runner.py), so the
ratios compare cells measured minutes apart at most.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# The gateway package, and this directory for the sibling modules (also under `python -m`).
sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from serving_procs import cached_checkpoint, embedded_triton  # noqa: E402
from serving_report import evaluate_targets, machine, ratios, table  # noqa: E402
from serving_runner import is_remote, run_cells, served_mode  # noqa: E402
from serving_workloads import JPEG_WORKLOADS, WORKLOADS, Payloads  # noqa: E402

from gateway.core.model_meta import load_model_meta  # noqa: E402

MODES = ("ceiling", "direct", "served", "served_http", "naive", "pillow")
ALL_MODES = ("ceiling", "ceiling_compiled", "direct", "served", "served_http", "served_shm",
             "naive", "pillow")
# Per size: concurrency, seconds, warm-up. Base on a CPU takes ~0.3 s per image, so 8 in
# flight already keeps Triton's queue full (batches of ~C/2..C); tiny is overhead-bound and
# needs many calls in flight to show the serving path's own limit.
DEFAULTS = {"tiny": (32, 10.0, 3.0), "base": (8, 20.0, 5.0)}
log = logging.getLogger("serving_bench")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="checkpoint directory (default: a random one)")
    p.add_argument("--size", choices=sorted(DEFAULTS), default="base",
                   help="random checkpoint made (once, cached) when --model is not given")
    p.add_argument("--concurrency", type=int,
                   help="calls in flight (default by checkpoint size: tiny 32, base 8)")
    p.add_argument("--seconds", type=float, help="measured seconds per cell (tiny 10, base 20)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per cell (tiny 3, base 5)")
    p.add_argument("--rounds", type=int, default=1,
                   help="repeat each workload's sequence of modes; each mode reports its "
                        "median round (for machines with drifting background load)")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help=f"comma-separated subset of {','.join(WORKLOADS)}")
    p.add_argument("--modes", default=",".join(MODES),
                   help=f"comma-separated subset of {','.join(ALL_MODES)}")
    p.add_argument("--compile", action="store_true", help="add the ceiling_compiled mode")
    p.add_argument("--compile-mode", default="default",
                   help="torch.compile mode of ceiling_compiled (GPU: reduce-overhead = CUDA "
                        "graphs, as the Triton models' compile_mode parameter)")
    p.add_argument("--preprocess-mode", choices=("exact", "fast", "triton"), default="exact",
                   help="the served gateway's SIGLIP_PREPROCESS_MODE (triton: JPEGs decoded by "
                        "Triton's siglip_image_decode)")
    p.add_argument("--model-repository", type=Path,
                   help="the embedded Triton's model repository (default: model_repository/)")
    p.add_argument("--ceiling-batch", type=int,
                   help="requests per ceiling forward (default: the batch Triton formed under "
                        "served, else direct, else the concurrency)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where ceiling/naive run (Triton's towers go where Triton puts them)")
    p.add_argument("--torch-threads", type=int,
                   help="torch threads for ceiling/naive and Triton's towers; default: "
                        "ceiling/naive torch's own choice (the physical cores), Triton's the "
                        "launcher's (SIGLIP_TRITON_CPU_THREADS: the available CPUs)")
    p.add_argument("--processes", default="1",
                   help="comma-separated gateway process counts (SIGLIP_PROCESSES) for served: "
                        "1 is the mode served, N > 1 the mode served_pN, all in the same run")
    p.add_argument("--connections", type=int,
                   help="TCP connections of the served client, calls taken in turn (default 1; "
                        "with --processes above 1, 4 per process of the largest, for every "
                        "served cell alike)")
    p.add_argument("--triton-url", help="use this Triton instead of starting the embedded one")
    p.add_argument("--gateway-env", action="append", default=[], metavar="NAME=VALUE",
                   help="an environment variable for the served gateway, e.g. "
                        "SIGLIP_TRITON_MAX_CALLS_IN_FLIGHT=0 (repeatable)")
    p.add_argument("--gateway-root", type=Path,
                   help="run the served gateway from this source tree (A/B a gateway change)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per call")
    p.add_argument("--startup-timeout", type=float, default=600.0, help="Triton/gateway start")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--log-dir", type=Path, help="keep the gateway's log here")
    args = p.parse_args(argv)
    args.workload_list = _subset(p, args.workloads, WORKLOADS, "workload")
    modes = _subset(p, args.modes, ALL_MODES, "mode")
    if args.compile and "ceiling_compiled" not in modes:
        modes.append("ceiling_compiled")
    args.mode_list = [m for m in ALL_MODES if m in modes]
    bad_env = [e for e in args.gateway_env if "=" not in e]
    if bad_env:
        p.error(f"--gateway-env takes NAME=VALUE, not {bad_env}")
    args.gateway_env_map = dict(e.split("=", 1) for e in args.gateway_env)
    try:
        processes = [int(x) for x in args.processes.split(",") if x.strip()]
    except ValueError:
        processes = []
    if not processes or min(processes) < 1:
        p.error(f"--processes {args.processes!r}: comma-separated counts of at least 1")
    args.connections = args.connections or (1 if max(processes) == 1 else 4 * max(processes))
    if "served" in args.mode_list:
        at = args.mode_list.index("served")
        args.mode_list[at:at + 1] = [served_mode(n) for n in dict.fromkeys(processes)]
    return args


def _subset(p: argparse.ArgumentParser, text: str, allowed: Any, what: str) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        p.error(f"unknown {what}(s) {bad}; choose from {','.join(allowed)}")
    return items


def apply_defaults(args: argparse.Namespace, size: str) -> None:
    """Concurrency and durations not given: the defaults of the checkpoint's size."""
    conc, secs, warm = DEFAULTS.get(size, DEFAULTS["base"])
    args.concurrency = args.concurrency or conc
    args.seconds = args.seconds if args.seconds is not None else secs
    args.warmup = args.warmup if args.warmup is not None else warm


def checkpoint_size(path: Path) -> str:
    cfg = json.loads((path / "config.json").read_text())
    hidden = cfg.get("vision_config", {}).get("hidden_size")
    return {32: "tiny", 768: "base", 1152: "so400m"}.get(hidden, f"hidden_size={hidden}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    checkpoint = args.model.resolve() if args.model else cached_checkpoint(args.size)
    size = checkpoint_size(checkpoint)
    apply_defaults(args, size)
    cfg = json.loads((checkpoint / "config.json").read_text())
    payloads = Payloads.make(jpegs=bool(JPEG_WORKLOADS & set(args.workload_list)),
                             size=load_model_meta(str(checkpoint)).image_size)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="serving-bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(), "device": args.device,
        "checkpoint": {"path": str(checkpoint), "size": size,
                       "random_weights": bool(cfg.get("random_weights"))},
        "concurrency": args.concurrency, "seconds": args.seconds, "warmup_s": args.warmup,
        "rounds": args.rounds, "compile_mode": args.compile_mode,
        "preprocess_mode": args.preprocess_mode,
        "model_repository": str(args.model_repository or "model_repository"),
        "gateway": "subprocess: python -m gateway serve --triton-url <embedded Triton>",
        "gateway_processes": args.processes, "served_connections": args.connections,
        "gateway_root": str(args.gateway_root or Path(__file__).resolve().parent.parent),
        "gateway_env": args.gateway_env_map,
        "items": {w: WORKLOADS[w].item for w in args.workload_list},
        "log_dir": str(log_dir),
        # Other work on the machine skews every number: recorded, not corrected for.
        "loadavg_start": os.getloadavg(),
    }
    results: dict[str, Any] = {
        name: {"description": WORKLOADS[name].description, "item": WORKLOADS[name].item,
               "modes": {}}
        for name in args.workload_list}
    begin = time.perf_counter()
    triton_env = {}
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
        triton_env["OMP_NUM_THREADS"] = str(args.torch_threads)
        triton_env["SIGLIP_TRITON_CPU_THREADS"] = str(args.torch_threads)  # over the launcher's
    meta["torch_threads"] = args.torch_threads or "default"
    with contextlib.ExitStack() as stack:
        triton_url, triton_pid = args.triton_url, None
        if not triton_url and any(is_remote(m) for m in args.mode_list):
            try:
                triton_url, triton_pid = stack.enter_context(
                    embedded_triton(checkpoint, args.startup_timeout, env=triton_env,
                                    model_repository=args.model_repository))
            except Exception as exc:  # e.g. Triton cannot run here: in-process modes still run
                log.exception("embedded Triton did not start")
                meta["remote_error"] = f"{type(exc).__name__}: {exc}"[:2000]
        meta["triton_url"] = triton_url
        meta["triton_pid"] = triton_pid

        def save(complete: bool = False) -> list[dict[str, Any]]:
            """Ratios and targets of what is measured so far, written to --json after every
            cell, so a run cut short (a time limit) still leaves its results."""
            for name in args.workload_list:
                ok = {m: c for m, c in results[name]["modes"].items() if "error" not in c}
                results[name]["ratios"] = ratios(ok)
            meta["elapsed_s"] = round(time.perf_counter() - begin, 1)
            meta["loadavg_end"] = os.getloadavg()
            meta["complete"] = complete
            targets = evaluate_targets(results, size)
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                tmp = args.json.with_name(args.json.name + ".tmp")
                tmp.write_text(json.dumps(
                    {"meta": meta, "workloads": results, "targets": targets}, indent=2) + "\n")
                tmp.replace(args.json)
            return targets

        asyncio.run(run_cells(args, checkpoint, triton_url, payloads, results, meta, log_dir,
                              on_cell=save))
    targets = save(complete=True)
    print(table(results, args.mode_list))
    for t in targets:
        if t["applies"] and t["met"] is not None:
            print(f"target {t['workload']} {t['ratio']} ({t['on']}) >= {t['minimum']}: "
                  f"{t['value']:.2f} -> {'met' if t['met'] else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
