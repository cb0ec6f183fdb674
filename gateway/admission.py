"""Admission control: a hard bound on calls in flight (per process, and per model where a
models file gives one).

Beyond the bound a call is rejected at once with RESOURCE_EXHAUSTED instead of
queueing without limit; the caller (or its load balancer) retries elsewhere. The
event loop is single-threaded, so a plain counter is exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Gauge

from gateway.core.errors import Overloaded, ShuttingDown


class Admission:
    def __init__(self, max_in_flight: int, gauge: Gauge | None = None,
                 holder: str = "server") -> None:
        """``holder``: who is at its limit, in the error (the server, or one model)."""
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._gauge = gauge
        self._holder = holder
        self._closed = False
        self._idle = asyncio.Event()
        self._idle.set()

    def close(self) -> None:
        """Refuse every new call from now on (graceful shutdown)."""
        self._closed = True

    @contextmanager
    def slot(self) -> Iterator[None]:
        if self._closed:
            raise ShuttingDown("server is shutting down")
        if self.in_flight >= self.max_in_flight:
            raise Overloaded(f"{self._holder} is at its limit of {self.max_in_flight} calls in "
                             "flight; retry later")
        self.in_flight += 1
        self._idle.clear()
        if self._gauge is not None:
            self._gauge.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            if self._gauge is not None:
                self._gauge.set(self.in_flight)
            if self.in_flight == 0:
                self._idle.set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """True once no call is in flight; False when that takes longer than ``timeout_s``."""
        if self.in_flight == 0:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, timeout_s))
        except asyncio.TimeoutError:
            return False
        return True

