"""The serving benchmark's results: ratios, targets, the printed table, machine facts."""

from __future__ import annotations

import os
import platform
import subprocess
from typing import Any

RATIOS = (("served/ceiling", "ceiling"), ("served/ceiling_compiled", "ceiling_compiled"),
          ("served/direct", "direct"), ("served/naive", "naive"), ("served/pillow", "pillow"))

# (workload, ratio, minimum, checkpoint size it is stated for ("any": every size), what is
# compared)
TARGETS = (
    ("embed_text", "served_http/served", 0.8, "any", "requests_per_s"),
    ("embed_raw", "served/ceiling", 0.85, "base", "items_per_s"),
    ("classify", "served/naive", 3.0, "base", "items_per_s"),
    ("embed_text", "served/direct", 0.7, "tiny", "requests_per_s"),
)


def ratios(cells: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """served / other, for items/s and for requests/s, wherever both cells have a rate."""
    served = cells.get("served") or {}
    out: dict[str, dict[str, float]] = {}
    for name, other in RATIOS:
        cell = cells.get(other) or {}
        both = {}
        for key in ("items_per_s", "requests_per_s"):
            a, b = served.get(key), cell.get(key)
            if a is not None and b:
                both[key] = a / b
        if both:
            out[name] = both
    http = cells.get("served_http") or {}  # HTTP/JSON against gRPC, the same gateway process
    if http.get("requests_per_s") and served.get("requests_per_s"):
        out["served_http/served"] = {k: http[k] / served[k]
                                     for k in ("items_per_s", "requests_per_s")}
    for mode, cell in cells.items():  # served_pN (--processes) against one process, and
        if not mode.startswith("served_p"):  # against one bare Pillow core
            continue
        for name, other in ((f"{mode}/served", served), (f"{mode}/pillow", cells.get("pillow"))):
            if other and other.get("requests_per_s") and cell.get("requests_per_s"):
                out[name] = {k: cell[k] / other[k] for k in ("items_per_s", "requests_per_s")}
    return out


def evaluate_targets(results: dict[str, Any], size: str) -> list[dict[str, Any]]:
    out = []
    for workload, ratio, minimum, for_size, key in TARGETS:
        value = results.get(workload, {}).get("ratios", {}).get(ratio, {}).get(key)
        applies = for_size in (size, "any")
        out.append({"workload": workload, "ratio": ratio, "on": key, "minimum": minimum,
                    "stated_for": for_size, "applies": applies, "value": value,
                    "met": None if value is None or not applies else value >= minimum})
    return out


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict[str, Any], modes: list[str]) -> str:
    lines = [f"{'workload':<11} {'mode':<17} {'items/s':>9} {'req/s':>9} {'p50 ms':>9} "
             f"{'p99 ms':>9} {'n':>6} {'err':>4} {'batch':>6}"]
    for workload, entry in results.items():
        for mode in modes:
            cell = entry["modes"].get(mode)
            if cell is None:
                continue
            if "error" in cell:
                lines.append(f"{workload:<11} {mode:<17} failed: {cell['error'][:60]}")
                continue
            lines.append(
                f"{workload:<11} {mode:<17} {_fmt(cell['items_per_s'], '9.2f')} "
                f"{_fmt(cell['requests_per_s'], '9.2f')} {_fmt(cell['p50_ms'], '9.1f')} "
                f"{_fmt(cell['p99_ms'], '9.1f')} {cell['requests']:>6} {cell['errors']:>4} "
                f"{_fmt(cell.get('batch'), '6.1f')}")
        ratio_text = "  ".join(f"{name}={_fmt(v.get('items_per_s'), '.2f')}"
                               for name, v in entry.get("ratios", {}).items())
        if ratio_text:
            lines.append(f"{'':<11} ratios (items/s): {ratio_text}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        info["affinity_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in lscpu.splitlines():
            if line.startswith("Model name:"):
                info["cpu_model"] = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        import torch
        import transformers

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["transformers"] = transformers.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def markdown(data: dict[str, Any]) -> str:
    """A results JSON (serving_bench.py --json) as the Markdown tables of BENCHMARKS.md."""
    meta, workloads = data["meta"], data["workloads"]
    extra = sorted({m for e in workloads.values() for m in e["modes"] if m.startswith("served_p")})
    modes = [m for m in ("ceiling", "ceiling_compiled", "direct", "served", "served_http", *extra,
                         "naive", "pillow")
             if any(m in e["modes"] for e in workloads.values())]
    lines = ["| workload (item) | mode | items/s | p50 ms | p99 ms | batch | CPU ms/request "
             "(client / gateway / Triton) |", "|---|---|---:|---:|---:|---:|---|"]
    for name, entry in workloads.items():
        for mode in modes:
            cell = entry["modes"].get(mode)
            if cell is None:
                continue
            if "error" in cell:
                lines.append(f"| {name} ({entry['item']}) | {mode} | failed: "
                             f"{cell['error'][:80]} | | | | |")
                continue
            batch = cell.get("batch")
            if batch is None and cell.get("triton_batches"):
                batch = "Triton " + ", ".join(f"{v['mean_batch']:.1f}"
                                              for v in cell["triton_batches"].values())
            cpu = cell.get("cpu_ms_per_request") or {}
            cpu_text = " / ".join(_fmt(cpu.get(k), ".2f") for k in ("client", "gateway", "triton")
                                  ) if cpu else ""
            lines.append(
                f"| {name} ({entry['item']}) | {mode} | {_fmt(cell['items_per_s'], '.1f')} | "
                f"{_fmt(cell['p50_ms'], '.1f')} | {_fmt(cell['p99_ms'], '.1f')} | "
                f"{batch if isinstance(batch, str) else _fmt(batch, 'd')} | {cpu_text} |")
    names = [n for n, _ in RATIOS if any(n in e.get("ratios", {}) for e in workloads.values())]
    names += ["served_http/served"] if any("served_http/served" in e.get("ratios", {})
                                           for e in workloads.values()) else []
    names += [f"{m}/{other}" for m in extra for other in ("served", "pillow")
              if any(f"{m}/{other}" in e.get("ratios", {}) for e in workloads.values())]
    lines += ["", "| workload | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for name, entry in workloads.items():
        r = entry.get("ratios", {})
        lines.append(f"| {name} | " + " | ".join(
            _fmt(r.get(n, {}).get("items_per_s"), ".2f") for n in names) + " |")
    lines.append("")
    lines.append(f"Concurrency {meta['concurrency']}, {meta['seconds']} s per cell after "
                 f"{meta['warmup_s']} s warm-up, {meta.get('rounds', 1)} round(s); load average "
                 f"{meta['loadavg_start'][0]:.1f} at start, {meta['loadavg_end'][0]:.1f} at end.")
    return "\n".join(lines)


if __name__ == "__main__":
    import json
    import sys
    from pathlib import Path

    print(markdown(json.loads(Path(sys.argv[1]).read_text())))
