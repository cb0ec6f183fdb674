"""Measuring one benchmark cell: a closed loop at concurrency C, or a sequential loop.

Both warm up first, then measure for a fixed duration, and both are bounded in time.

Throughput of the closed loop is counted between completions, not between clock ticks: the
window runs from the last completion before the measurement starts (a) to the last
completion before it ends (b), and the rate is completions in (a, b] / (b - a). When
Triton answers a whole batch at once, completions come in bursts; counting them against a
fixed clock window would be off by up to one burst (several percent on a CPU with the base
model), counting whole bursts against their own span is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass
class CellResult:
    requests: int  # completed OK inside the measured window
    errors: int
    window_s: float
    requests_per_s: float
    latencies_s: list[float] = field(repr=False)
    first_error: str | None = None
    completed: int = 0  # every successful call, warm-up and drain included

    def summary(self, items_per_request: float) -> dict[str, float | int | str | None]:
        lat_ms = np.asarray(self.latencies_s, dtype=np.float64) * 1e3
        pct = (lambda q: float(np.percentile(lat_ms, q))) if len(lat_ms) else (lambda q: None)
        return {
            "items_per_s": self.requests_per_s * items_per_request,
            "requests_per_s": self.requests_per_s,
            "p50_ms": pct(50), "p99_ms": pct(99),
            "mean_ms": float(lat_ms.mean()) if len(lat_ms) else None,
            "requests": self.requests, "errors": self.errors,
            "window_s": self.window_s, "first_error": self.first_error,
        }


async def closed_loop(call: Callable[[], Awaitable[object]], *, concurrency: int,
                      warmup_s: float, seconds: float, timeout_s: float) -> CellResult:
    """``concurrency`` workers call ``call`` back to back; each call is bounded by ``timeout_s``.

    The window lasts ``seconds``, longer if needed to see ``concurrency`` completions (bounded
    by ``seconds + timeout_s``; not longer when the window saw failures and no completion).

    Warm-up lasts ``warmup_s`` and until every worker has finished one call (so the first,
    slow, calls are not measured), but never longer than ``warmup_s + timeout_s``.
    """
    done: list[tuple[float, float]] = []  # (completion time, latency), successes only
    failed: list[float] = []
    first_error: list[str] = []
    stop = asyncio.Event()
    round_done = asyncio.Event()
    window = {"t0": float("inf"), "measured": 0}

    async def worker() -> None:
        while not stop.is_set():
            start = time.perf_counter()
            try:
                await asyncio.wait_for(call(), timeout_s)
            except Exception as exc:  # counted and reported, never fatal
                failed.append(time.perf_counter())
                if not first_error:
                    first_error.append(f"{type(exc).__name__}: {exc}"[:500])
                await asyncio.sleep(0.01)  # a failing backend must not become a busy loop
                continue
            end = time.perf_counter()
            done.append((end, end - start))
            if end > window["t0"]:
                window["measured"] += 1
                if window["measured"] >= concurrency:
                    round_done.set()

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    try:
        begin = time.perf_counter()
        while True:
            elapsed = time.perf_counter() - begin
            warm = len(done) + len(failed) >= concurrency
            if (elapsed >= warmup_s and warm) or elapsed >= warmup_s + timeout_s:
                break
            await asyncio.sleep(0.01)
        t0 = time.perf_counter()
        window["t0"] = t0
        await asyncio.sleep(seconds)
        # At least one round (`concurrency` completions) is measured, however short `seconds`:
        # with whole batches answered at once, a short window could otherwise catch none.
        # Not when every call of the window failed: waiting would only add timeout_s.
        if window["measured"] or not any(t > t0 for t in failed):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(round_done.wait(), timeout_s)
        t1 = time.perf_counter()
        stop.set()
    finally:
        stop.set()
        # Calls still in flight are not counted; give them a moment, then cancel.
        _, pending = await asyncio.wait(tasks, timeout=min(timeout_s, 10.0))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    before = [t for t, _ in done if t <= t0]
    a = max(before) if before else t0
    inside = [(t, lat) for t, lat in done if a < t <= t1]
    b = max((t for t, _ in inside), default=t1)
    rate = len(inside) / (b - a) if inside and b > a else 0.0
    return CellResult(
        requests=len(inside), errors=sum(1 for t in failed if t0 < t <= t1),
        window_s=b - a, requests_per_s=rate, latencies_s=[lat for _, lat in inside],
        first_error=first_error[0] if first_error else None, completed=len(done))


def sequential(call: Callable[[], object], *, warmup_s: float, seconds: float,
               min_calls: int = 2) -> CellResult:
    """``call`` back to back in this thread; the rate is calls / time spent in measured calls.

    At least one warm-up call and ``min_calls`` measured calls, even when one call is longer
    than the durations asked for.
    """
    begin = time.perf_counter()
    call()
    while time.perf_counter() - begin < warmup_s:
        call()
    latencies: list[float] = []
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or len(latencies) < min_calls:
        start = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - start)
    total = sum(latencies)
    return CellResult(requests=len(latencies), errors=0, window_s=total,
                      requests_per_s=len(latencies) / total if total > 0 else 0.0,
                      latencies_s=latencies)
