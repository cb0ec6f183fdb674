"""The pieces of ``serve --processes N`` that need no process: the settings' defaults, the
worker spec and the port check (CPU counting itself: test_cpus.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.cpus import available_cpus
from gateway.model_specs import ModelSpec
from gateway.processes.cpus import default_processes, default_threads
from gateway.processes.sockets import PortTaken, reserve_port
from gateway.processes.worker import WorkerSpec


@pytest.mark.parametrize(("cpus", "embedded", "expected"),
                         [(8, False, 8), (8, True, 4), (1, True, 1), (1, False, 1), (3, True, 1)])
def test_default_processes(cpus: int, embedded: bool, expected: int):
    assert default_processes(embedded, cpus) == expected


def test_threads_are_shared_out_among_processes():
    assert default_threads(1, 8) == 8
    assert default_threads(4, 8) == 2
    assert default_threads(8, 2) == 1


def test_settings_resolve_processes_and_threads_once():
    cpus = available_cpus()
    external = Settings.from_env({}, triton_url="127.0.0.1:8001")
    assert external.processes == default_processes(False, cpus)
    assert external.workers == default_threads(external.processes, cpus)
    embedded = Settings.from_env({})
    assert embedded.processes == default_processes(True, cpus)
    explicit = Settings.from_env({"SIGLIP_PROCESSES": "3", "SIGLIP_WORKERS": "5"})
    assert (explicit.processes, explicit.workers) == (3, 5)
    assert Settings.from_env({"SIGLIP_PROCESSES": "3"}).workers == default_threads(3, cpus)
    with pytest.raises(ValueError, match="SIGLIP_PROCESSES must be at least 1"):
        Settings.from_env({"SIGLIP_PROCESSES": "-2"})


def test_worker_spec_carries_the_settings_unchanged():
    settings = Settings.from_env({}, triton_url="127.0.0.1:1", processes=7, workers=3,
                                 auth_token="secret", port=4321, max_in_flight=9)
    spec = WorkerSpec(settings, (ModelSpec("tiny", "/c/tiny", max_images=3),),
                      {"tiny": "/ckpt"}, 2, 11)
    assert WorkerSpec.decode(spec.encode()) == spec


def test_reserve_port_fails_loudly_when_taken_and_holds_it_for_reuseport_only():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(PortTaken, match=r"gRPC port \d+ on 127.0.0.1 is not available"):
            reserve_port("127.0.0.1", other.getsockname()[1])

    held, port = reserve_port("127.0.0.1", 0)
    with held:
        assert port > 0 and held.getsockname()[1] == port
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))  # anyone else: refused
        with socket.socket() as sibling:  # a worker: joins
            sibling.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sibling.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sibling.bind(("127.0.0.1", port))
            sibling.listen()
            with pytest.raises(PortTaken):  # and a second gateway on it fails
                reserve_port("127.0.0.1", port)


class _DeadTree:
    """A worker process that has exited with ``returncode`` (what _on_exit reads)."""

    def __init__(self, pid: int, returncode: int) -> None:
        self.pid, self._returncode = pid, returncode

    def reap(self) -> int:
        return self._returncode


def _supervisor(processes: int = 2):
    from gateway.processes.supervisor import Supervisor

    settings = Settings.from_env({}, triton_url="127.0.0.1:1", processes=processes)
    return Supervisor(settings, [ModelSpec("tiny", "/c/tiny")], {"tiny": Path("/ckpt")},
                      settings.triton_url, {}, embedded=False)


def test_restart_backoff_doubles_and_gives_up_after_quick_deaths(caplog):
    from gateway.processes import supervisor as sup

    s = _supervisor()
    try:
        slot = s.slots[0]
        slot.ever_listened, s._announced = True, True
        delays = []
        for death in range(sup.MAX_QUICK_DEATHS):
            slot.started = 100.0
            slot.tree = _DeadTree(1000 + death, -9)  # type: ignore[assignment]
            s._on_exit(slot, now=101.0)  # died 1 s after its start
            assert s._fatal is None and slot.tree is None
            delays.append(slot.restart_at - 101.0)
        assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]
        assert "died: killed by SIGKILL after 1.0 s; restarting it in 16.0 s" in caplog.text
        slot.started = 100.0
        slot.tree = _DeadTree(2000, 1)  # type: ignore[assignment]
        s._on_exit(slot, now=101.0)
        assert s._fatal is not None and "giving up" in s._fatal

        # A worker that ran for a while before it died starts the count over.
        other = s.slots[1]
        other.ever_listened, other.quick_deaths = True, 4
        other.started = 0.0
        other.tree = _DeadTree(3000, 0)  # type: ignore[assignment]
        s._fatal = None
        s._on_exit(other, now=sup.STABLE_S + 1)
        assert other.quick_deaths == 1 and other.restart_at == sup.STABLE_S + 1 + sup.BACKOFF_S
    finally:
        s.metrics.close()


def test_a_worker_dying_before_it_listens_fails_the_start_up():
    s = _supervisor()
    try:
        slot = s.slots[0]
        slot.tree = _DeadTree(1234, 1)  # type: ignore[assignment]
        s._on_exit(slot, now=1.0)
        assert s._fatal is not None and "before it listened" in s._fatal
        assert slot.restart_at is None
    finally:
        s.metrics.close()


def test_metrics_directories_of_dead_parents_are_removed(tmp_path: Path):
    import os
    import subprocess

    from gateway.processes.aggregate import PREFIX, AggregatedMetrics

    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = [tmp_path / f"{PREFIX}{gone.pid}-abc", tmp_path / f"{PREFIX}{os.getpid()}-def"]
    live = tmp_path / f"{PREFIX}{os.getppid()}-ghi"  # another gateway's, running
    other = tmp_path / "unrelated"
    for d in (*stale, live, other):
        d.mkdir()
    metrics = AggregatedMetrics(str(tmp_path))
    try:
        assert not any(d.exists() for d in stale)
        assert live.exists() and other.exists()
        assert Path(metrics.directory).name.startswith(f"{PREFIX}{os.getpid()}-")
    finally:
        metrics.close()
    assert not Path(metrics.directory).exists()


@pytest.mark.parametrize(("shm", "embedded", "expected"), [
    ("auto", True, "on"), ("auto", False, "auto"), ("off", True, "off"), ("on", False, "on")])
def test_workers_of_an_embedded_triton_keep_shared_memory(shm: str, embedded: bool,
                                                           expected: str):
    from gateway.processes.supervisor import worker_settings

    parent = Settings(triton_shm=shm, port=0, metrics_port=9090)
    worker = worker_settings(parent, port=50123, triton_url="127.0.0.1:8001", embedded=embedded)
    assert (worker.port, worker.metrics_port, worker.triton_url) == (50123, -1, "127.0.0.1:8001")
    assert worker.triton_shm == expected
    assert worker.shm_enabled() == (expected == "on")
