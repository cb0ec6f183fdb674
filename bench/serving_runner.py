"""Runs the serving benchmark's cells, one workload at a time, every mode back to back.

Workload by workload (direct, served, served_http, served_pN, pillow, ceiling, ceiling_compiled,
naive)
rather than mode by mode: on a shared machine the background load drifts over minutes, and the
ratios compare cells measured within a minute or two of each other. With --rounds N that
sequence repeats N times per workload and each mode reports its median round. served_http is
the one-process gateway of served, called over its HTTP/JSON port. served_pN is the
gateway with N processes (--processes), its CPU summed over them. Triton and the gateways stay
up, idle, while the in-process modes run (an idle Triton costs no CPU); served runs before
ceiling because the ceiling's batch is the one Triton formed under served. pillow (the bare
Pillow loop) runs only on serving_workloads.PILLOW_WORKLOADS; elsewhere it has no cell.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from serving_load import closed_loop, sequential
from serving_procs import CpuMeter, GatewayProcess
from serving_workloads import PILLOW_WORKLOADS, WORKLOADS, Payloads, UniqueTexts, Workload

EXECUTION_ORDER = ("direct", "served", "served_http", "served_shm", "pillow", "ceiling",
                   "ceiling_compiled", "naive")
log = logging.getLogger("serving_bench")


def served_mode(processes: int) -> str:
    """The mode name of the served gateway with `processes` processes (--processes)."""
    return "served" if processes == 1 else f"served_p{processes}"


def served_processes(mode: str) -> int:
    return int(mode.removeprefix("served_p")) if mode.startswith("served_p") else 1


def is_served(mode: str) -> bool:
    """served, served_pN (--processes), served_shm (tensors through shared memory)."""
    return mode in ("served", "served_shm") or mode.startswith("served_p")


def is_remote(mode: str) -> bool:
    return mode in ("direct", "served_http") or is_served(mode)


def gateway_of(mode: str) -> str:
    """The gateway a mode calls: served_http calls served's, over HTTP."""
    return "served" if mode == "served_http" else mode


def execution_order(modes: list[str]) -> list[str]:
    """EXECUTION_ORDER, each served_pN right after served (in the order given)."""
    return sorted(modes, key=lambda m: EXECUTION_ORDER.index(
        "served" if m.startswith("served_p") else m))


class RemoteSide:
    """The gateway subprocess and the direct/served clients, over one Triton."""

    def __init__(self, args: argparse.Namespace, checkpoint: Path, triton_url: str,
                 log_dir: Path, meta: dict[str, Any]) -> None:
        self.args, self.checkpoint, self.triton_url = args, checkpoint, triton_url
        self.log_dir, self.meta = log_dir, meta
        self.gateways: dict[str, GatewayProcess] = {}  # per served mode
        self.clients: dict[str, Any] = {}
        self.pool = ThreadPoolExecutor(os.cpu_count() or 1, thread_name_prefix="direct-prep")
        self.stats: Any = None
        self.cpu = CpuMeter({})

    async def open(self) -> RemoteSide:
        from serving_remote import Direct, HttpServed, Served, TritonStats

        args = self.args
        self.stats = TritonStats(self.triton_url)
        if "direct" in args.mode_list:
            self.clients["direct"] = Direct(self.triton_url, self.checkpoint, self.pool)
        served = [m for m in args.mode_list if is_served(m)]
        http = "served_http" in args.mode_list
        if http and "served" not in served:
            served.insert(0, "served")
        for mode in served:
            processes = served_processes(mode)
            env = {"SIGLIP_PREPROCESS_MODE": args.preprocess_mode,
                   "SIGLIP_PROCESSES": str(processes), **args.gateway_env_map}
            if mode == "served_shm":  # tensors through shared memory (Triton on this host)
                env["SIGLIP_TRITON_SHM"] = "on"
            gateway = GatewayProcess(
                self.checkpoint, self.triton_url,
                self.log_dir / ("gateway.log" if mode == "served" else f"gateway_{mode}.log"),
                max_in_flight=max(64, 2 * args.concurrency), env=env,
                http=http and mode == "served",
                **({"root": args.gateway_root} if args.gateway_root else {}))
            self.gateways[mode] = gateway
            await asyncio.to_thread(gateway.start, args.startup_timeout)
            self.meta.setdefault("gateway_pid", gateway.pid)
            self.meta.setdefault("gateway_pids", {})[mode] = gateway.pid
            if mode in args.mode_list:
                self.clients[mode] = Served(gateway.target, args.timeout, args.connections)
        if http:
            gateway = self.gateways["served"]
            if gateway.http_port is None:
                raise RuntimeError("the served gateway logged no HTTP port")
            self.clients["served_http"] = HttpServed(
                f"http://127.0.0.1:{gateway.http_port}", args.timeout, args.concurrency)
        # Triton and each gateway with its descendants (worker processes); the client alone.
        self.cpu = CpuMeter({"client": os.getpid(), "triton": self.meta.get("triton_pid"),
                             **{f"gateway:{m}": g.pid for m, g in self.gateways.items()}},
                            alone=("client",))
        return self

    async def cell(self, mode: str, workload: Workload, payloads: Payloads,
                   texts: UniqueTexts) -> dict[str, Any]:
        from serving_remote import batch_delta

        args = self.args
        call = self.clients[mode].call_for(workload, payloads, texts)
        before = await self.stats.counts()
        cpu_before = self.cpu.snapshot()
        cell = await closed_loop(call, concurrency=args.concurrency, warmup_s=args.warmup,
                                 seconds=args.seconds, timeout_s=args.timeout)
        cpu_after = self.cpu.snapshot()
        summary = cell.summary(workload.items_per_request)
        summary["concurrency"] = args.concurrency
        summary["triton_batches"] = batch_delta(before, await self.stats.counts())
        # All CPU the cell used (warm-up and drain included) over all the calls it completed.
        if cell.completed and cpu_after:
            names = {"client": "client", "triton": "triton",
                     f"gateway:{gateway_of(mode)}": "gateway"}
            summary["cpu_ms_per_request"] = {
                names[k]: round((cpu_after[k] - cpu_before.get(k, 0.0)) / cell.completed * 1e3, 3)
                for k in cpu_after if k in names}
        if is_served(mode) or mode == "served_http":
            summary["gateway_processes"] = served_processes(mode)
        return summary

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        if self.stats is not None:
            await self.stats.close()
        self.pool.shutdown(wait=False, cancel_futures=True)
        for gateway in self.gateways.values():
            await asyncio.to_thread(gateway.stop)


def ceiling_batch(workload: Workload, entry: dict[str, Any], concurrency: int) -> int:
    """Requests per forward: what Triton formed under `served` (else `direct`), else C."""
    model, rows = (("siglip_vision", workload.images_per_request) if workload.images_per_request
                   else ("siglip_text", workload.texts_per_request))
    for mode in ("served", "direct"):
        seen = (entry["modes"].get(mode) or {}).get("triton_batches", {}).get(model)
        if seen:
            return max(1, round(seen["mean_batch"] / rows))
    return concurrency


def applies(mode: str, workload: str) -> bool:
    """Whether `mode` has a cell in `workload` (the bare Pillow loop: JPEG Embed only)."""
    return mode != "pillow" or workload in PILLOW_WORKLOADS


class InProcessSide:
    """ceiling, ceiling_compiled, naive and pillow; each model set is loaded on first use and
    kept."""

    def __init__(self, args: argparse.Namespace, checkpoint: Path, meta: dict[str, Any]) -> None:
        self.args, self.checkpoint, self.meta = args, checkpoint, meta
        self.models: dict[str, Any] = {}

    def _model(self, mode: str) -> Any:
        from serving_inprocess import BarePillow, Ceiling, Naive

        if mode not in self.models:
            started = time.perf_counter()
            if mode == "naive":
                self.models[mode] = Naive(self.checkpoint, self.args.device)
            elif mode == "pillow":
                self.models[mode] = BarePillow(self.checkpoint)
            else:
                compile_mode = self.args.compile_mode if mode == "ceiling_compiled" else None
                self.models[mode] = Ceiling(self.checkpoint, self.args.device,
                                            compile_mode=compile_mode)
            log.info("%s models loaded in %.1f s", mode, time.perf_counter() - started)
        return self.models[mode]

    def cell(self, mode: str, workload: Workload, entry: dict[str, Any], payloads: Payloads,
             texts: UniqueTexts) -> dict[str, Any]:
        args = self.args
        model = self._model(mode)
        started = time.perf_counter()
        if mode == "naive":
            if "naive_pipeline_check" not in self.meta:
                self.meta["naive_pipeline_check"] = model.pipeline_check(payloads)
            cell = sequential(model.call_for(workload, payloads, texts),
                              warmup_s=args.warmup, seconds=args.seconds)
            summary = cell.summary(workload.items_per_request)
            summary["concurrency"] = 1
        elif mode == "pillow":
            cell = sequential(model.call_for(workload, payloads), warmup_s=args.warmup,
                              seconds=args.seconds)
            summary = cell.summary(workload.items_per_request)
            summary["concurrency"] = 1
            summary["matches_gateway_exact"] = model.matches_gateway_exact(workload, payloads)
        else:
            batch = args.ceiling_batch or ceiling_batch(workload, entry, args.concurrency)
            # torch.compile compiles (per batch shape) on the first call, in the warm-up.
            cell = sequential(model.call_for(workload, batch, payloads, texts),
                              warmup_s=args.warmup, seconds=args.seconds)
            summary = cell.summary(workload.items_per_request * batch)
            summary["batch"] = batch
        summary["cell_wall_s"] = round(time.perf_counter() - started, 1)
        return summary


async def run_cells(args: argparse.Namespace, checkpoint: Path, triton_url: str | None,
                    payloads: Payloads, results: dict[str, Any], meta: dict[str, Any],
                    log_dir: Path, on_cell: Callable[[], object] = lambda: None) -> None:
    remote: RemoteSide | None = None
    remote_error = meta.get("remote_error")
    if triton_url and any(is_remote(m) for m in args.mode_list):
        try:
            remote = await RemoteSide(args, checkpoint, triton_url, log_dir, meta).open()
        except Exception as exc:  # e.g. the gateway does not start: in-process modes still run
            log.exception("direct/served unavailable")
            remote_error = meta["remote_error"] = f"{type(exc).__name__}: {exc}"[:2000]
    inproc = InProcessSide(args, checkpoint, meta)
    texts = UniqueTexts()
    try:
        for name in args.workload_list:
            workload, entry = WORKLOADS[name], results[name]
            rounds: dict[str, list[dict[str, Any]]] = {}
            for _ in range(args.rounds):
                for mode in (m for m in execution_order(args.mode_list) if applies(m, name)):
                    try:
                        if is_remote(mode):
                            if remote is None:
                                raise RuntimeError(remote_error or "no Triton")
                            summary = await remote.cell(mode, workload, payloads, texts)
                        else:
                            summary = await asyncio.to_thread(
                                inproc.cell, mode, workload, entry, payloads, texts)
                    except Exception as exc:  # recorded in the JSON; the other cells still run
                        if not is_remote(mode):
                            log.exception("%s %s failed", name, mode)
                        summary = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
                    _log_cell(name, mode, summary)
                    rounds.setdefault(mode, []).append(summary)
                    entry["modes"][mode] = median_cell(rounds[mode])
                    on_cell()
    finally:
        if remote is not None:
            await remote.close()


def median_cell(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median items/s (the lower middle one for an even count), with every
    round's items/s beside it; a failed round counts only when every round failed."""
    ok = sorted((c for c in cells if "error" not in c), key=lambda c: c["items_per_s"])
    if not ok:
        return cells[-1]
    if len(cells) == 1:
        return ok[0]
    return {**ok[(len(ok) - 1) // 2],
            "rounds_items_per_s": [c.get("items_per_s") for c in cells]}


def _log_cell(workload: str, mode: str, s: dict[str, Any]) -> None:
    if "error" in s:
        log.info("%-10s %-16s failed: %s", workload, mode, s["error"][:300])
        return
    log.info("%-10s %-16s %8.2f items/s  p50 %s ms  p99 %s ms  n=%d err=%d%s", workload, mode,
             s["items_per_s"], _ms(s["p50_ms"]), _ms(s["p99_ms"]), s["requests"], s["errors"],
             f"  first error: {s['first_error']}" if s.get("first_error") else "")


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"
