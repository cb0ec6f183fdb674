"""One /metrics for all worker processes: prometheus_client's multiprocess mode.

Each worker writes its metrics to memory-mapped files in a directory of its own run
(PROMETHEUS_MULTIPROC_DIR, set in the workers' environment only, so it applies before their
first metric exists); the parent serves the sum. Counters and histograms of a worker that
died stay in the sum (its files stay), so a restart loses no counts; its live gauges
(in flight, Triton ready: see the multiprocess modes in gateway/metrics.py) are dropped with
``process_dead``. The directory is new and empty at start and removed at exit; one left by a
parent that was killed (no exit to remove it) is removed by the next parent that starts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "siglip-gateway-metrics-"  # then the parent's pid


class _Restarts:
    """The parent's own counter, independent of the multiprocess files."""

    def __init__(self) -> None:
        self.count = 0

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "siglip_gateway_worker_restarts",
            "Gateway worker processes restarted after they died (serve --processes N > 1).",
            value=self.count)


class AggregatedMetrics:
    def __init__(self, temp_root: str | None = None) -> None:
        root = Path(temp_root or tempfile.gettempdir())
        remove_stale(root)
        self.directory = tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=root)
        self.registry = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(self.registry, path=self.directory)
        self.restarts = _Restarts()
        self.registry.register(self.restarts)
        self._http: Any = None

    @property
    def worker_env(self) -> dict[str, str]:
        return {MULTIPROC_ENV: self.directory}

    def serve(self, port: int, host: str) -> int:
        """Starts /metrics (raises when the port is taken); returns the real port."""
        self._http, _ = start_http_server(port, addr=host, registry=self.registry)
        return self._http.server_port

    def process_dead(self, pid: int) -> None:
        mark_process_dead(pid, self.directory)

    def close(self) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        shutil.rmtree(self.directory, ignore_errors=True)


def remove_stale(root: Path) -> None:
    """Removes the directories of parents no longer running. One with our own pid is stale
    too: in a restarted container the new parent often gets the old one's pid (1)."""
    for directory in root.glob(PREFIX + "*"):
        pid = directory.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and (int(pid) == os.getpid() or not _running(int(pid))):
            shutil.rmtree(directory, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's
        return True
    return True
