#!/usr/bin/env python3
"""Transport cost of one Triton call, shared memory vs gRPC tensors, side by side.

    python bench/shm_transport.py --size tiny --rounds 20 --json /tmp/shm_transport.json

One embedded Triton, two TritonBackends in this process (SIGLIP_TRITON_SHM on and off), one
call at a time, the two alternating so that both see the same machine. Per call: wall time,
CPU of this process (what the gateway spends: serialization, copies, gRPC), and CPU of Triton
with its model stubs (the tower's forward dominates; the transport is the difference).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent)]

import numpy as np  # noqa: E402
from serving_procs import CpuMeter, cached_checkpoint, embedded_triton  # noqa: E402

from gateway.backend.triton_client import TritonBackend  # noqa: E402
from gateway.core.model_meta import load_model_meta  # noqa: E402

MiB = 1024 * 1024


async def measure(url: str, dim: int, triton_pid: int, rows: list[int], rounds: int,
                  ) -> dict[str, Any]:
    backends = {
        "grpc": TritonBackend(url, max_message_bytes=64 * MiB, default_timeout_s=120),
        "shm": TritonBackend(url, max_message_bytes=64 * MiB, default_timeout_s=120,
                             shm_max_bytes=64 * MiB, embedding_dim=dim),
    }
    meter = CpuMeter({"triton": triton_pid})
    rng = np.random.default_rng(0)
    out: dict[str, Any] = {}
    try:
        for kind, n in [("images", r) for r in rows] + [("texts", 256)]:
            data = (rng.integers(0, 256, (n, 256, 256, 3), dtype=np.uint8) if kind == "images"
                    else rng.integers(0, 200, (n, 64), dtype=np.int64))
            samples: dict[str, list[tuple[float, float, float]]] = {m: [] for m in backends}
            for i in range(rounds + 1):  # the first round warms up (and registers regions)
                for name, backend in backends.items():
                    call = backend.embed_images if kind == "images" else backend.embed_texts
                    cpu0, tr0, t0 = time.process_time(), meter.snapshot(), time.perf_counter()
                    await call(data)
                    wall = time.perf_counter() - t0
                    cpu, tr = time.process_time() - cpu0, meter.snapshot()
                    if i:
                        samples[name].append(
                            (wall, cpu, tr.get("triton", 0.0) - tr0.get("triton", 0.0)))
            cell = {}
            for name, s in samples.items():
                cell[name] = {k: round(statistics.median(x[j] for x in s) * 1e3, 3)
                              for j, k in enumerate(("wall_ms", "gateway_cpu_ms",
                                                     "triton_cpu_ms"))}
            out[f"{kind} x{n}"] = cell
            print(f"{kind} x{n}: " + "  ".join(
                f"{m}: wall {c['wall_ms']:.1f} ms, gateway CPU {c['gateway_cpu_ms']:.2f} ms, "
                f"Triton CPU {c['triton_cpu_ms']:.1f} ms" for m, c in cell.items()), flush=True)
    finally:
        for backend in backends.values():
            await backend.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=("tiny", "base"), default="tiny")
    p.add_argument("--model", type=Path, help="checkpoint directory (default: a random one)")
    p.add_argument("--rows", default="1,8,64", help="images per call")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    checkpoint = args.model.resolve() if args.model else cached_checkpoint(args.size)
    dim = load_model_meta(str(checkpoint)).embedding_dim
    meta = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "checkpoint": str(checkpoint), "loadavg_start": os.getloadavg()}
    with embedded_triton(checkpoint, 600.0) as (url, pid):
        results = asyncio.run(measure(url, dim, pid, [int(r) for r in args.rows.split(",")],
                                      args.rounds))
    meta["loadavg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
