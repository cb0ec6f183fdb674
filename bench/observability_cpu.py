#!/usr/bin/env python3
"""The gateway's CPU per call with and without its observability, side by side.

    git archive BASE | tar -x -C /tmp/base    # the code before the change, for "base"
    python bench/observability_cpu.py --base /tmp/base --workload text

Same method as bench/gateway_cpu.py (its ``measure``; the fake Triton in this process; the
gateways' CPU seconds per call; variants measured in turns, round by round). Variants: ``base``
(another checkout, ``--base``), ``no_line`` (this checkout, tracing off, SIGLIP_REQUEST_LOG=off:
the request scope without its log line), ``off`` (as shipped: tracing off, the request line
logged as text), ``json`` (SIGLIP_LOG_FORMAT=json), ``traced`` (OTLP/gRPC export of every
request's spans to a receiver in this process), ``base_again`` (``base`` again: the noise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import grpc  # noqa: E402
from gateway_cpu import measure  # noqa: E402
from serving_procs import GatewayProcess, cached_checkpoint  # noqa: E402

from siglip.v1 import siglip_pb2_grpc as pb_grpc  # noqa: E402
from tests.support.fake_triton import FakeTriton  # noqa: E402
from tests.support.gateway_harness import embedding_dim  # noqa: E402
from tests.support.otlp import OtlpGrpcReceiver  # noqa: E402


async def main(args: argparse.Namespace) -> dict:
    checkpoint = cached_checkpoint("tiny")
    log_dir = Path(tempfile.mkdtemp(prefix="observability-cpu-"))
    receiver = OtlpGrpcReceiver().start()
    variants = {"no_line": (ROOT, {"SIGLIP_REQUEST_LOG": "off"}), "off": (ROOT, {}),
                "json": (ROOT, {"SIGLIP_LOG_FORMAT": "json"}),
                "traced": (ROOT, {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint})}
    if args.base:
        # base twice, first and last: how far two gateways running the same code differ here.
        variants = {"base": (args.base, {}), **variants, "base_again": (args.base, {})}
    results: dict[str, list[float]] = {v: [] for v in variants}
    async with FakeTriton(embedding_dim(checkpoint), delay_s=args.triton_ms / 1e3) as fake:
        gateways = {v: GatewayProcess(checkpoint, fake.url, log_dir / f"{v}.log",
                                      max_in_flight=max(64, 2 * args.concurrency), env=env,
                                      root=root) for v, (root, env) in variants.items()}
        try:
            for gw in gateways.values():
                await asyncio.to_thread(gw.start, 120)
            channels = {v: grpc.aio.insecure_channel(gw.target) for v, gw in gateways.items()}
            stubs = {v: pb_grpc.SiglipServiceStub(c) for v, c in channels.items()}
            n = 0
            for v in variants:
                await measure(stubs[v], gateways[v].pid, args.workload, 4 * args.concurrency,
                              args.concurrency, n)
                n += 4 * args.concurrency
            for _ in range(args.rounds):
                for v in variants:
                    cpu, _wall = await measure(stubs[v], gateways[v].pid, args.workload,
                                               args.calls, args.concurrency, n)
                    n += args.calls
                    results[v].append(cpu / args.calls * 1e3)
                    print(f"{v}: {results[v][-1]:.3f} ms CPU per call", flush=True)
            for c in channels.values():
                await c.close()
        finally:
            for gw in gateways.values():
                await asyncio.to_thread(gw.stop)
            receiver.stop()
    spans = len(receiver.spans)
    return {"command": " ".join([Path(sys.executable).name, *sys.argv]),
            "loadavg": os.getloadavg(), "workload": args.workload,
            "concurrency": args.concurrency, "calls": args.calls, "triton_ms": args.triton_ms,
            "spans_received": spans,
            "cpu_ms_per_call": {v: {"median": round(statistics.median(r), 3),
                                    "rounds": [round(x, 3) for x in r]}
                                for v, r in results.items()}}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=Path, help="another checkout: the code before the change")
    p.add_argument("--workload", choices=("text", "raw"), default="text")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--calls", type=int, default=2000, help="calls per round and variant")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--triton-ms", type=float, default=5.0, help="the fake Triton's latency")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    out = asyncio.run(main(args))
    print(json.dumps(out, indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
