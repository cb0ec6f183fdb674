"""The parent of ``serve --processes N``: N worker processes on one port, kept running.

Order: check and hold the gRPC port (sockets.py), serve the aggregated /metrics
(aggregate.py), spawn the workers (worker.py) with the resolved settings, wait until every one
is listening and has seen Triton ready, then log the ready line. A worker that dies is logged
(exit code or signal) and started again after a backoff; one that keeps dying within
STABLE_S of its start is given up on after MAX_QUICK_DEATHS, and the whole service exits 1
(the orchestrator restarts the pod: a clearer signal than a pod short of a process). At
start-up, a worker that dies before it listens fails the start-up (bad TLS file, ...).
SIGTERM: forwarded to every worker, which drains as one process does; the parent waits (grace
plus a margin, then SIGKILL) and returns. The embedded Triton, if any, is the caller's
(gateway/app.py), stopped after this returns.

Workers are children guarded by gateway/embedded_triton/procgroup.py (death signal and watchdog): if
the parent dies, however, they die too. They are spawned from the event loop's thread, since
a death signal follows the thread that forked.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import gateway
from gateway.config import Settings
from gateway.core.model_meta import ModelMeta
from gateway.embedded_triton import procgroup
from gateway.embedded_triton.errors import describe_exit
from gateway.model_specs import ModelSpec
from gateway.processes.aggregate import AggregatedMetrics
from gateway.processes.sockets import reserve_port
from gateway.processes.worker import LISTENING, READY, SPEC_ENV, WorkerSpec

log = logging.getLogger("gateway")

POLL_S = 0.1
BACKOFF_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0  # a worker that ran this long counts as healthy: its backoff starts over
MAX_QUICK_DEATHS = 5
KILL_MARGIN_S = 5.0  # after the grace period, before SIGKILL



def worker_settings(settings: Settings, *, port: int, triton_url: str,
                    embedded: bool, http_port: int | None = None) -> Settings:
    """What a worker serves with: the parent's settings, with the real port and Triton URL.
    The parent serves the metrics. An embedded Triton runs on this host, so ``auto`` shared
    memory stays on although the worker is handed a URL."""
    shm = "on" if embedded and settings.triton_shm == "auto" else settings.triton_shm
    return settings.replace(port=port, metrics_port=-1, triton_url=triton_url, triton_shm=shm,
                            http_port=settings.http_port if http_port is None else http_port)

class StartupError(RuntimeError):
    pass


@dataclass
class _Slot:
    """Worker number `index` across its restarts."""

    index: int
    tree: procgroup.ProcessTree | None = None
    status_fd: int | None = None
    pending: bytes = b""
    started: float = 0.0
    listening: bool = False
    ready: bool = False
    ever_listened: bool = False
    quick_deaths: int = 0
    restart_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.tree.pid if self.tree else None


class Supervisor:
    def __init__(self, settings: Settings, specs: Sequence[ModelSpec],
                 checkpoints: Mapping[str, Path], triton_url: str,
                 metas: Mapping[str, ModelMeta], *, embedded: bool) -> None:
        """``specs``: the models as read at start-up, handed to every worker (which never
        reads the models file again); ``checkpoints`` and ``metas``: per model name."""
        self.settings = settings
        self.specs = tuple(specs)
        self.checkpoints = dict(checkpoints)
        self.triton_url = triton_url
        self.metas = dict(metas)
        self.embedded = embedded
        self.slots = [_Slot(i) for i in range(settings.processes)]
        self.metrics = AggregatedMetrics()
        self._worker_settings = settings
        self._announced = False
        self._fatal: str | None = None

    async def run(self, stop: asyncio.Event) -> int:
        """Serves until `stop` is set; returns the exit code (raises StartupError)."""
        s = self.settings
        held = held_http = None
        try:
            held, port = reserve_port(s.host, s.port)
            http_port = None
            if s.http_port >= 0:
                held_http, http_port = reserve_port(s.host, s.http_port, "HTTP")
            metrics_port = (self.metrics.serve(s.metrics_port, s.host)
                            if s.metrics_port >= 0 else None)
            self._worker_settings = worker_settings(s, port=port, triton_url=self.triton_url,
                                                    embedded=self.embedded, http_port=http_port)
            for slot in self.slots:
                self._spawn(slot)
            while not stop.is_set() and self._fatal is None:
                self._tick()
                if not self._announced and all(slot.ready for slot in self.slots):
                    self._announced = True
                    self._log_ready(port, metrics_port, http_port)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), POLL_S)
            if stop.is_set():
                log.info("signal received: shutting down %d workers (grace %.0f s)",
                         len(self.slots), s.shutdown_grace_s)
            await self._drain()
        finally:
            for slot in self.slots:
                if slot.tree is not None:  # only when something above raised
                    slot.tree.kill_group()
                    slot.tree.wait_exit()
                    slot.tree.reap()
                self._close_status(slot)
            self.metrics.close()
            for socket_ in (held, held_http):
                if socket_ is not None:
                    socket_.close()
        if self._fatal is not None:
            if not self._announced:
                raise StartupError(self._fatal)
            log.error("%s", self._fatal)
            return 1
        return 0

    # -- workers -----------------------------------------------------------------------
    def _spawn(self, slot: _Slot) -> None:
        read_end, write_end = os.pipe()
        spec = WorkerSpec(self._worker_settings, self.specs,
                          {name: str(path) for name, path in self.checkpoints.items()},
                          slot.index, write_end)
        # The workers import this very package, wherever the parent found it.
        root = str(Path(gateway.__file__).resolve().parent.parent)
        env = {**os.environ, **self.metrics.worker_env, SPEC_ENV: spec.encode(),
               "PYTHONPATH": os.pathsep.join(
                   p for p in (root, os.environ.get("PYTHONPATH", "")) if p)}
        try:
            slot.tree = procgroup.spawn([sys.executable, "-m", "gateway.processes.worker"],
                                        env, capture_output=False, pass_fds=(write_end,))
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        restart = slot.restart_at is not None
        slot.started, slot.restart_at = time.monotonic(), None
        slot.listening = slot.ready = False
        slot.status_fd, slot.pending = read_end, b""
        os.set_blocking(read_end, False)
        asyncio.get_running_loop().add_reader(read_end, self._read_status, slot)
        if restart:
            self.metrics.restarts.count += 1
        log.info("worker %d %s: pid %d", slot.index, "restarted" if restart else "started",
                 slot.tree.pid)

    def _tick(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.tree is not None and slot.tree.exited():
                self._on_exit(slot, now)
            if (slot.tree is None and slot.restart_at is not None and now >= slot.restart_at
                    and self._fatal is None):
                self._spawn(slot)

    def _on_exit(self, slot: _Slot, now: float) -> None:
        assert slot.tree is not None
        self._read_status(slot)  # a last report may still be in the pipe
        pid, returncode = slot.tree.pid, slot.tree.reap()
        self._close_status(slot)
        self.metrics.process_dead(pid)
        slot.tree, slot.listening, slot.ready = None, False, False
        what, ran = describe_exit(returncode), now - slot.started
        if not slot.ever_listened and not self._announced:
            self._fatal = (f"worker {slot.index} (pid {pid}) ended with {what} before it "
                           "listened; its log is above")
            return
        slot.quick_deaths = slot.quick_deaths + 1 if ran < STABLE_S else 1
        if slot.quick_deaths > MAX_QUICK_DEATHS:
            self._fatal = (f"worker {slot.index} (pid {pid}) ended with {what}, the "
                           f"{slot.quick_deaths}th time in a row within {STABLE_S:.0f} s of "
                           "its start: giving up")
            return
        delay = min(BACKOFF_MAX_S, BACKOFF_S * 2 ** (slot.quick_deaths - 1))
        log.error("worker %d (pid %d) died: %s after %.1f s; restarting it in %.1f s",
                  slot.index, pid, what, ran, delay)
        slot.restart_at = now + delay

    def _read_status(self, slot: _Slot) -> None:
        fd = slot.status_fd
        if fd is None:
            return
        while True:
            try:
                data = os.read(fd, 4096)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            if not data:
                self._close_status(slot)
                break
            slot.pending += data
        *lines, slot.pending = slot.pending.split(b"\n")
        for line in lines:
            if line.decode() == LISTENING:
                slot.listening = slot.ever_listened = True
            elif line.decode() == READY:
                slot.ready = True

    def _close_status(self, slot: _Slot) -> None:
        if slot.status_fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(slot.status_fd)
            os.close(slot.status_fd)
            slot.status_fd = None

    async def _drain(self) -> None:
        """SIGTERM to every worker, wait for them (grace + margin), SIGKILL the rest, reap."""
        running = [slot for slot in self.slots if slot.tree is not None]
        for slot in running:
            assert slot.tree is not None
            slot.tree.signal_leader(signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_s + KILL_MARGIN_S
        while time.monotonic() < deadline:
            if all(slot.tree.exited() for slot in running if slot.tree):
                break
            await asyncio.sleep(0.05)
        for slot in running:
            tree = slot.tree
            assert tree is not None
            if not tree.exited():
                log.warning("worker %d (pid %d) still running %.0f s after the grace period: "
                            "killing it", slot.index, tree.pid, KILL_MARGIN_S)
                tree.kill_group()
                await asyncio.to_thread(tree.wait_exit)
            returncode = tree.reap()
            if returncode != 0:
                log.warning("worker %d (pid %d) ended with %s", slot.index, tree.pid,
                            describe_exit(returncode))
            self.metrics.process_dead(tree.pid)
            slot.tree = None

    def _log_ready(self, port: int, metrics_port: int | None, http_port: int | None) -> None:
        from gateway.app import describe_models

        s = self.settings
        log.info(
            "siglip-gateway ready: grpc %s:%d, metrics :%s, http :%s, %s, triton %s%s, "
            "%d processes (pids %s) x %d threads", s.host, port, metrics_port, http_port,
            describe_models(self.metas), self.triton_url, " (embedded)" if self.embedded else "",
            len(self.slots), ",".join(str(slot.pid) for slot in self.slots), s.workers)
