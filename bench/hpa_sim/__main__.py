"""Command line: the autoscalers of an overlay under a load step and a ramp.

    python -m bench.hpa_sim --overlay gpu --overlay gpu-keda --overlay gpu-colocated

Loads are multiples of one Triton pod's rate (--triton-rate): the step goes from --base to
--peak at t = 0, the ramp from --base to --peak over --ramp-s, the burst to --burst for
--burst-s and back. Before t = 0 the service runs
--warmup-s at the base load from min replicas, so the autoscalers start where they would
have settled. Prints one summary table and, per run, a timeline; --json writes everything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

from bench.hpa_sim.model import Sample, ServiceParams, Summary, run
from bench.hpa_sim.spec import REPO, autoscalers, gateway_facts, render

# BENCHMARKS.md, "Serving path against its targets": gateway CPU per embed_raw call
# (one 256x256 raw image), `served`, 1.58 ms.
GATEWAY_CPU_MS = 1.58


def vision_max_batch() -> int:
    text = (REPO / "model_repository" / "siglip_vision" / "config.pbtxt").read_text()
    return int(re.search(r"^max_batch_size:\s*(\d+)", text, re.M).group(1))  # type: ignore[union-attr]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    a = argparse.ArgumentParser(prog="python -m bench.hpa_sim", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--overlay", action="append", help="k8s/overlays/<name> (repeatable; gpu)")
    a.add_argument("--triton-rate", type=float, default=2000.0,
                   help="calls/s of one Triton pod at full batches (GPU: assumed, not measured)")
    a.add_argument("--triton-batch-s", type=float,
                   help="one full batch's compute time (default: siglip_vision's "
                        "max_batch_size / --triton-rate)")
    a.add_argument("--gateway-cpu-ms", type=float, default=GATEWAY_CPU_MS)
    a.add_argument("--triton-pending-s", type=float, default=60.0,
                   help="image pull + checkpoint init container")
    a.add_argument("--triton-loading-s", type=float, default=120.0, help="model load")
    a.add_argument("--gateway-pending-s", type=float, default=5.0)
    a.add_argument("--gateway-loading-s", type=float, default=5.0)
    a.add_argument("--base", type=float, default=1.0, help="load before, x one Triton pod")
    a.add_argument("--peak", type=float, default=5.0, help="load after, x one Triton pod")
    a.add_argument("--ramp-s", type=int, default=600)
    a.add_argument("--burst", type=float, default=3.0, help="burst load, x one Triton pod")
    a.add_argument("--burst-s", type=int, default=45)
    a.add_argument("--warmup-s", type=int, default=900)
    a.add_argument("--duration-s", type=int, default=1800)
    a.add_argument("--timeline-every-s", type=int, default=60)
    a.add_argument("--timeline-until-s", type=int, default=600)
    a.add_argument("--json", type=Path)
    return a.parse_args(argv)


def scenarios(base: float, peak: float, ramp_s: int, burst: float,
              burst_s: int) -> dict[str, object]:
    def step(t: float) -> float:
        return base if t < 0 else peak

    def ramp(t: float) -> float:
        return base + (peak - base) * min(max(t / ramp_s, 0.0), 1.0)

    def spike(t: float) -> float:
        return burst if 0 <= t < burst_s else base

    return {f"step {base:g}x -> {peak:g}x": step,
            f"ramp {base:g}x -> {peak:g}x over {ramp_s} s": ramp,
            f"burst {burst:g}x for {burst_s} s": spike}


def fmt_s(v: float | None) -> str:
    return "never" if v is None else f"{v:.0f} s"


SUMMARY_HEAD = [
    "| overlay | scenario | capacity >= load after | no backlog, no refusals after | "
    "max wait ms | max in flight/pod | calls refused | peak pods | pod-minutes |",
    "|---|---|---:|---:|---:|---:|---:|---|---|"]


def summary_row(overlay: str, name: str, s: Summary) -> str:
    refused = f"{s.rejected / 1000:.0f} k ({100 * s.rejected / s.offered:.1f} %)"
    peaks = ", ".join(f"{k.removeprefix('siglip-')} {v}" for k, v in s.peak_replicas.items())
    minutes = ", ".join(f"{k.removeprefix('siglip-')} {v:.0f}" for k, v in s.pod_minutes.items())
    return (f"| {overlay} | {name} | {fmt_s(s.capacity_s)} | {fmt_s(s.recovered_s)} | "
            f"{1000 * s.max_wait_s:.0f} | {s.max_in_flight_per_pod:.0f} | {refused} | {peaks} "
            f"| {minutes} |")


def timeline(samples: list[Sample], every_s: int, until_s: int) -> list[str]:
    names = list(samples[0].replicas)
    head = ("| t s | load/s | " + " | ".join(f"{n.removeprefix('siglip-')} ready/pods"
                                             for n in names)
            + " | wait ms | in flight/pod | refused/s | HPA reads: CPU % | in flight | "
              "queue ms |")
    lines = [head, "|" + "---:|" * (head.count("|") - 1)]
    for s in samples:
        if s.t % every_s or s.t > until_s:
            continue
        pods = " | ".join(f"{s.ready[n]}/{s.replicas[n]}" for n in names)
        m = s.hpa_metrics
        lines.append(f"| {s.t:.0f} | {s.load:.0f} | {pods} | {1000 * s.wait_s:.0f} | "
                     f"{s.in_flight_per_pod:.0f} | {s.rejected_per_s:.0f} | {m['cpu']:.0f} | "
                     f"{m['in_flight']:.0f} | {1000 * m['queue_time']:.0f} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    overlays = args.overlay or ["gpu"]
    rows, out = [], {}
    for overlay in overlays:
        docs = render(overlay)
        params = ServiceParams(
            gateway_cpu_s_per_call=args.gateway_cpu_ms / 1000,
            triton_calls_per_s=args.triton_rate,
            triton_batch_s=args.triton_batch_s or vision_max_batch() / args.triton_rate,
            gateway=gateway_facts(docs),
            gateway_pending_s=args.gateway_pending_s, gateway_loading_s=args.gateway_loading_s,
            triton_pending_s=args.triton_pending_s, triton_loading_s=args.triton_loading_s)
        for name, shape in scenarios(args.base, args.peak, args.ramp_s, args.burst,
                                         args.burst_s).items():
            samples, summary = run(autoscalers(docs), params,
                                   lambda t, f=shape: f(t) * args.triton_rate,  # type: ignore[misc]
                                   warmup_s=args.warmup_s, duration_s=args.duration_s)
            rows.append(summary_row(overlay, name, summary))
            print(f"\n### {overlay}: {name}\n")
            print("\n".join(timeline(samples, args.timeline_every_s, args.timeline_until_s)))
            out[f"{overlay}: {name}"] = {"summary": dataclasses.asdict(summary),
                                         "samples": [dataclasses.asdict(s) for s in samples]}
    print("\n" + "\n".join(SUMMARY_HEAD + rows))
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "runs": out}))


if __name__ == "__main__":
    main()
