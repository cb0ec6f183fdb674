#!/usr/bin/env python3
"""CPU threading of Triton's towers: throughput and CPU per item under each threading variant.

    python bench/triton_cpu_bench.py --sizes tiny,base --json /tmp/triton-cpu.json

For each checkpoint size, round by round, each variant starts its own embedded Triton (and a
gateway subprocess for `served`), runs the workloads, and stops. Variants run back to back
within a round, so the comparison holds under drifting background load; --rounds N reports
each cell's median round. Per cell: items/s, p50/p99, Triton's mean batch, and the CPU each
process spent per item (client, gateway, Triton with its python-backend stubs: serving_procs).

Variants (name: what Triton's environment gets; see gateway/embedded_triton/cputhreads.py):
  torch-default  nothing: torch's threads (every physical core), OpenMP's spin-then-sleep
  passive        OMP_WAIT_POLICY=PASSIVE only
  threads1       SIGLIP_TRITON_CPU_THREADS=1 only (libgomp still spins by default)
  default        the launcher's default: threads = available CPUs for each tower,
                 inter-op 1, PASSIVE
  half           threads = available CPUs / 2 (the two towers share them), PASSIVE
  1x1            threads 1, inter-op 1, PASSIVE
  2inst          two CPU instances per tower (a repository copy), 1 thread each, PASSIVE
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

from serving_procs import cached_checkpoint  # noqa: E402
from serving_report import machine  # noqa: E402
from serving_runner import RemoteSide  # noqa: E402
from serving_workloads import WORKLOADS, Payloads, UniqueTexts  # noqa: E402

from gateway.cpus import available_cpus  # noqa: E402
from gateway.embedded_triton.cputhreads import CpuThreading  # noqa: E402
from gateway.embedded_triton.launcher import EmbeddedTriton, default_model_repository  # noqa: E402

log = logging.getLogger("triton_cpu_bench")


def variants(cpus: int) -> dict[str, tuple[CpuThreading | None, int]]:
    """name -> (threading given to the launcher, CPU instances per tower)."""
    return {
        "torch-default": (None, 1),
        "passive": (CpuThreading(threads=None, interop_threads=None, passive_wait=True), 1),
        "threads1": (CpuThreading(threads=1, interop_threads=None, passive_wait=False), 1),
        "default": (CpuThreading(), 1),
        "half": (CpuThreading(threads=max(1, cpus // 2)), 1),
        "1x1": (CpuThreading(threads=1), 1),
        "2inst": (CpuThreading(threads=1), 2),
    }


# (workload, mode): direct = Triton alone (the client preprocesses), served = the whole service.
# both = Score (2 JPEGs x 5 unique texts): the two towers busy at once, sharing the CPUs.
CELLS = {"vision": ("embed_raw", "direct"), "text": ("embed_text", "direct"),
         "service": ("embed_jpeg", "served"), "both": ("score", "served")}
DEFAULTS = {"tiny": (32, 6.0, 2.0), "base": (8, 15.0, 5.0)}  # concurrency, seconds, warm-up


def repository_with_instances(count: int, into: Path) -> Path:
    """A copy of model_repository/ whose towers ask for `count` instances each."""
    target = into / f"model_repository-{count}inst"
    if not target.exists():
        shutil.copytree(default_model_repository(), target,
                        ignore=shutil.ignore_patterns("__pycache__"))
        for model in ("siglip_vision", "siglip_text"):
            config = target / model / "config.pbtxt"
            text, n = re.subn(r"count: 1\b", f"count: {count}", config.read_text())
            assert n == 1, config
            config.write_text(text)
    return target


async def run_variant(args: argparse.Namespace, checkpoint: Path, name: str,
                      threading: CpuThreading | None, instances: int, work_dir: Path,
                      payloads: Payloads, texts: UniqueTexts) -> dict[str, Any]:
    repo = repository_with_instances(instances, work_dir) if instances > 1 else None
    triton = EmbeddedTriton(model=str(checkpoint), model_repository=repo,
                            startup_timeout_s=args.startup_timeout, cpu_threading=threading,
                            logger=logging.getLogger(f"triton.{name}"))
    started = time.perf_counter()
    await asyncio.to_thread(triton.start)
    out: dict[str, Any] = {"load_s": round(time.perf_counter() - started, 1), "cells": {}}
    meta: dict[str, Any] = {"triton_pid": triton.pid}
    remote = None
    try:
        remote = await RemoteSide(args, checkpoint, triton.grpc_url, work_dir, meta).open()
        for cell_name in args.cell_list:
            workload, mode = CELLS[cell_name]
            try:
                summary = await remote.cell(mode, WORKLOADS[workload], payloads, texts)
            except Exception as exc:  # recorded; the other cells still run
                summary = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            out["cells"][cell_name] = summary
            log.info("%s %-13s %-8s %s", checkpoint.name, name, cell_name, _line(summary))
    finally:
        if remote is not None:
            await remote.close()
        await asyncio.to_thread(triton.stop)
    return out


def _line(s: dict[str, Any]) -> str:
    if "error" in s:
        return "failed: " + s["error"][:200]
    cpu = s.get("cpu_ms_per_request", {})
    return (f"{s['items_per_s']:8.2f} items/s p50 {s['p50_ms'] or 0:7.1f} ms  Triton CPU "
            f"{cpu.get('triton', float('nan')):7.2f} ms/item  batch "
            f"{json.dumps(s.get('triton_batches', {}))}")


def median(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    ok = sorted((r for r in rounds if "error" not in r), key=lambda r: r["items_per_s"])
    if not ok:
        return rounds[-1]
    cell = dict(ok[(len(ok) - 1) // 2])
    if len(rounds) > 1:
        cell["rounds_items_per_s"] = [r.get("items_per_s") for r in rounds]
        cell["rounds_triton_cpu_ms"] = [r.get("cpu_ms_per_request", {}).get("triton")
                                        for r in rounds]
    return cell


def _num(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.2f}" if value < 10 else (
        f"{value:.1f}")


def table(results: dict[str, Any]) -> str:
    """Markdown: per size, one row per variant, items/s and Triton CPU ms/item per cell."""
    lines = []
    for size, by_variant in results.items():
        cells = [c for c in CELLS if any(c in v for v in by_variant.values())]
        lines += [f"| {size} | " + " | ".join(f"{c} items/s | {c} Triton CPU ms/item"
                                              for c in cells) + " |",
                  "|---|" + "---:|" * (2 * len(cells))]
        for variant, by_cell in by_variant.items():
            row = [variant]
            for cell in cells:
                s = by_cell.get(cell) or {"error": "not run"}
                cpu = s.get("cpu_ms_per_request", {}).get("triton")
                rate = None if "error" in s else s.get("items_per_s")
                row += [_num(rate) + (f" ({s['errors']} failed)" if s.get("errors") else ""),
                        _num(cpu)]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    cpus = available_cpus()
    all_variants = variants(cpus)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="tiny,base")
    p.add_argument("--variants", default="torch-default,passive,default,1x1",
                   help=f"subset of {','.join(all_variants)}")
    p.add_argument("--cells", default=",".join(CELLS),
                   help=f"subset of {','.join(CELLS)} (workload and mode of each: CELLS)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--concurrency", type=int, help="default: tiny 32, base 8")
    p.add_argument("--seconds", type=float, help="default: tiny 6, base 15")
    p.add_argument("--warmup", type=float, help="default: tiny 2, base 5")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--startup-timeout", type=float, default=600.0)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for name in ("triton", "gateway"):
        logging.getLogger(name).setLevel(logging.WARNING)
    names = [v for v in args.variants.split(",") if v]
    args.cell_list = [c for c in args.cells.split(",") if c]
    unknown = [v for v in names if v not in all_variants] + [
        c for c in args.cell_list if c not in CELLS]
    if unknown:
        p.error(f"unknown variants/cells {unknown}")
    # RemoteSide's settings: which clients to open and how the gateway runs.
    args.mode_list = sorted({CELLS[c][1] for c in args.cell_list})
    args.preprocess_mode, args.gateway_root = "exact", None
    payloads = Payloads.make(jpegs=True)
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "available_cpus": cpus, "loadavg_start": os.getloadavg(),
            "variants": {n: {"threading": None if all_variants[n][0] is None else
                             vars(all_variants[n][0]), "instances": all_variants[n][1]}
                         for n in names}}
    raw: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = {}
    results: dict[str, Any] = {}
    work_dir = Path(tempfile.mkdtemp(prefix="triton-cpu-bench-"))
    begin = time.perf_counter()
    try:
        for size in [s for s in args.sizes.split(",") if s]:
            checkpoint = cached_checkpoint(size)
            conc, secs, warm = DEFAULTS[size]
            run_args = argparse.Namespace(**vars(args))
            run_args.concurrency = args.concurrency or conc
            run_args.seconds = args.seconds if args.seconds is not None else secs
            run_args.warmup = args.warmup if args.warmup is not None else warm
            meta.setdefault("per_size", {})[size] = {
                "concurrency": run_args.concurrency, "seconds": run_args.seconds,
                "warmup_s": run_args.warmup}
            for _ in range(args.rounds):
                for name in names:
                    threading, instances = all_variants[name]
                    try:
                        out = asyncio.run(run_variant(run_args, checkpoint, name, threading,
                                                      instances, work_dir, payloads,
                                                      UniqueTexts(prefix=f"{name} ")))
                    except Exception as exc:
                        log.exception("%s %s failed", size, name)
                        out = {"cells": {c: {"error": f"{type(exc).__name__}: {exc}"[:500]}
                                         for c in args.cell_list}}
                    for cell, summary in out["cells"].items():
                        summary["load_s"] = out.get("load_s")
                        raw.setdefault(size, {}).setdefault(name, {}).setdefault(
                            cell, []).append(summary)
                    results[size] = {n: {c: median(r) for c, r in cells.items()}
                                     for n, cells in raw[size].items()}
                    meta["elapsed_s"] = round(time.perf_counter() - begin, 1)
                    meta["loadavg_end"] = os.getloadavg()
                    if args.json:
                        args.json.write_text(json.dumps(
                            {"meta": meta, "results": results}, indent=2) + "\n")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    print(table(results))
    print(f"load average start {meta['loadavg_start']} end {os.getloadavg()}; "
          f"{round(time.perf_counter() - begin)} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
