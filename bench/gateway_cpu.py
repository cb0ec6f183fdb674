#!/usr/bin/env python3
"""The gateway's own CPU per call, against the fake Triton, for several settings side by side.

    python bench/gateway_cpu.py --env SIGLIP_TRITON_MAX_CALLS_IN_FLIGHT=0,1,2,4

Throughput on a small shared machine follows whatever else runs there; the CPU seconds the
gateway process itself spends per call follow it much less. Here Triton is the fake of the
tests (tests/support/fake_triton.py, in this process: its CPU is not the gateway's), answering each
call after ``--triton-ms``. One gateway subprocess per value of ``--env``, all started at once
and measured in turns (round by round), each with C calls in flight of one workload (Embed of
one text, unique per call, or of one raw 256x256 image). Prints, per value, the median round:
gateway CPU ms per call, calls/s, Triton calls per gateway call.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import psutil  # noqa: E402
from serving_procs import GatewayProcess, cached_checkpoint  # noqa: E402

from siglip.v1 import siglip_pb2 as pb  # noqa: E402
from siglip.v1 import siglip_pb2_grpc as pb_grpc  # noqa: E402
from tests.support.fake_triton import FakeTriton  # noqa: E402
from tests.support.gateway_harness import embedding_dim  # noqa: E402


def request(workload: str, n: int) -> pb.EmbedRequest:
    if workload == "text":
        return pb.EmbedRequest(inputs=[pb.EmbedInput(text=f"a photo of thing number {n}")])
    pixels = np.random.default_rng(n % 16).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    raw = pb.RawImage(rgb=pixels.tobytes(), width=256, height=256)
    return pb.EmbedRequest(inputs=[pb.EmbedInput(image=pb.Image(raw=raw))])


async def measure(stub: pb_grpc.SiglipServiceStub, pid: int, workload: str, calls: int,
                  concurrency: int, first: int) -> tuple[float, float]:
    """(gateway CPU seconds, wall seconds) for ``calls`` calls at ``concurrency``."""
    requests = [request(workload, first + i) for i in range(calls)]
    queue = iter(requests)

    async def worker() -> None:
        for r in queue:
            await stub.Embed(r, timeout=60)

    proc = psutil.Process(pid)
    cpu0, t0 = sum(proc.cpu_times()[:2]), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sum(proc.cpu_times()[:2]) - cpu0, time.perf_counter() - t0


async def main(args: argparse.Namespace) -> dict:
    name, _, values = args.env.partition("=")
    values = values.split(",")
    checkpoint = cached_checkpoint("tiny")
    dim = embedding_dim(checkpoint)
    log_dir = Path(tempfile.mkdtemp(prefix="gateway-cpu-"))
    results: dict[str, list[dict]] = {v: [] for v in values}
    async with FakeTriton(dim, delay_s=args.triton_ms / 1e3) as fake:
        gateways = {v: GatewayProcess(checkpoint, fake.url, log_dir / f"gateway-{v}.log",
                                      max_in_flight=max(64, 2 * args.concurrency),
                                      env={name: v}) for v in values}
        try:
            for gw in gateways.values():
                await asyncio.to_thread(gw.start, 120)
            channels = {v: grpc.aio.insecure_channel(gw.target) for v, gw in gateways.items()}
            stubs = {v: pb_grpc.SiglipServiceStub(c) for v, c in channels.items()}
            n = 0
            for v in values:  # warm-up: connections, thread pools, code paths
                await measure(stubs[v], gateways[v].pid, args.workload, 4 * args.concurrency,
                              args.concurrency, n)
                n += 4 * args.concurrency
            for _ in range(args.rounds):
                for v in values:
                    fake.reset_counters()
                    cpu, wall = await measure(stubs[v], gateways[v].pid, args.workload,
                                              args.calls, args.concurrency, n)
                    n += args.calls
                    results[v].append({"cpu_ms_per_call": cpu / args.calls * 1e3,
                                       "calls_per_s": args.calls / wall,
                                       "triton_calls_per_call": len(fake.received) / args.calls})
                    print(f"{name}={v}: {results[v][-1]}", flush=True)
            for c in channels.values():
                await c.close()
        finally:
            for gw in gateways.values():
                await asyncio.to_thread(gw.stop)
    summary = {}
    for v, rounds in results.items():
        summary[v] = {k: round(statistics.median(r[k] for r in rounds), 3) for k in rounds[0]}
        summary[v]["rounds_cpu_ms_per_call"] = [round(r["cpu_ms_per_call"], 3) for r in rounds]
    return {"command": " ".join([Path(sys.executable).name, *sys.argv]),
            "loadavg": os.getloadavg(), "workload": args.workload,
            "concurrency": args.concurrency, "calls": args.calls, "triton_ms": args.triton_ms,
            "setting": name, "results": summary}


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="SIGLIP_TRITON_MAX_CALLS_IN_FLIGHT=0,2",
                   help="NAME=V1,V2,...: one gateway per value")
    p.add_argument("--workload", choices=("text", "raw"), default="text")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--calls", type=int, default=2000, help="calls per round and value")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--triton-ms", type=float, default=5.0, help="the fake Triton's latency")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    out = asyncio.run(main(args))
    print(json.dumps(out["results"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
