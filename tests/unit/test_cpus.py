"""The CPU count (gateway/cpus.py) on fake cgroup trees, and what the launcher puts into
Triton's environment for the towers' CPU threading (gateway/embedded_triton/cputhreads.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway import cpus
from gateway.config import Settings
from gateway.embedded_triton.cputhreads import CpuThreading


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def affinity(monkeypatch: pytest.MonkeyPatch):
    """Sets the affinity mask's size that cpus.py sees."""
    def set_cpus(n: int) -> None:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(n)), raising=False)
    set_cpus(16)
    return set_cpus


def _v2(tmp_path: Path, cpu_max: dict[str, str], own: str = "/") -> tuple[Path, Path]:
    """A cgroup v2 mount with `cpu.max` per directory, and a /proc/self/cgroup naming `own`."""
    root = tmp_path / "cgroup"
    _write(root / "cgroup.controllers", "cpuset cpu io memory pids\n")
    for directory, value in cpu_max.items():
        _write(root / directory.strip("/") / "cpu.max", value + "\n")
    proc = tmp_path / "proc-self-cgroup"
    _write(proc, f"0::{own}\n")
    return root, proc


def _v1(tmp_path: Path, quota: str, period: str = "100000", mount: str = "cpu,cpuacct",
        own: str = "/") -> tuple[Path, Path]:
    root = tmp_path / "cgroup"
    directory = root / mount / own.strip("/")
    _write(directory / "cpu.cfs_quota_us", quota + "\n")
    _write(directory / "cpu.cfs_period_us", period + "\n")
    proc = tmp_path / "proc-self-cgroup"
    _write(proc, f"12:memory:{own}\n4:cpu,cpuacct:{own}\n1:name=systemd:{own}\n")
    return root, proc


@pytest.mark.parametrize(("cpu_max", "quota", "expected"), [
    ("max 100000", None, 16),          # no quota: the affinity mask
    ("400000 100000", 4.0, 4),         # docker --cpus=4 / limits.cpu: 4
    ("150000 100000", 1.5, 2),         # fractional: rounded up, as Kubernetes rounds limits.cpu
    ("50000 100000", 0.5, 1),          # below one CPU: still one thread
    ("3200000 100000", 32.0, 16),      # quota above the affinity: the affinity
    ("garbage", None, 16),             # unreadable: no quota
])
def test_cgroup_v2_quota(tmp_path, affinity, cpu_max, quota, expected):
    root, proc = _v2(tmp_path, {"/": cpu_max})
    assert cpus.cpu_quota(root, proc) == quota
    assert cpus.available_cpus(root, proc) == expected


def test_cgroup_v2_tightest_quota_on_the_path_wins(tmp_path, affinity):
    # A pod-level limit above a container without its own: the parent's 3 CPUs apply.
    root, proc = _v2(tmp_path, {"/": "max 100000", "/kubepods/pod1": "300000 100000",
                                "/kubepods/pod1/ctr": "max 100000"}, own="/kubepods/pod1/ctr")
    assert cpus.cpu_quota(root, proc) == 3.0
    assert cpus.available_cpus(root, proc) == 3


def test_cgroup_v2_path_not_mounted_here_falls_back_to_the_mount_root(tmp_path, affinity):
    # Without a cgroup namespace /proc/self/cgroup names the host's path; the container sees
    # its own cgroup at the mount root.
    root, proc = _v2(tmp_path, {"/": "200000 100000"}, own="/system.slice/docker-abc.scope")
    assert cpus.available_cpus(root, proc) == 2


def test_affinity_caps_the_quota(tmp_path, affinity):
    affinity(2)  # e.g. taskset / a cpuset of 2 CPUs
    root, proc = _v2(tmp_path, {"/": "800000 100000"})
    assert cpus.available_cpus(root, proc) == 2


@pytest.mark.parametrize(("quota", "period", "expected"), [
    ("-1", "100000", 16), ("200000", "100000", 2), ("250000", "100000", 3),
    ("50000", "100000", 1)])
def test_cgroup_v1_fallback(tmp_path, affinity, quota, period, expected):
    root, proc = _v1(tmp_path, quota, period)
    assert cpus.available_cpus(root, proc) == expected


def test_cgroup_v1_under_the_plain_cpu_name_and_nested(tmp_path, affinity):
    root, proc = _v1(tmp_path, "-1", mount="cpu", own="/docker/abc")
    for directory, quota in (("", "-1"), ("docker", "300000")):
        _write(root / "cpu" / directory / "cpu.cfs_quota_us", quota + "\n")
        _write(root / "cpu" / directory / "cpu.cfs_period_us", "100000\n")
    assert cpus.cpu_quota(root, proc) == 3.0


def test_no_cgroup_files_means_the_affinity(tmp_path, affinity):
    assert cpus.available_cpus(tmp_path / "none", tmp_path / "none-either") == 16


def test_this_machine_is_counted_sanely():
    n = cpus.available_cpus()
    assert 1 <= n <= len(os.sched_getaffinity(0))


def test_gateway_workers_default_to_the_available_cpus_shared_by_the_processes():
    settings = Settings.from_env({})
    assert settings.workers == max(1, cpus.available_cpus() // settings.processes)


# -- what the launcher hands Triton --------------------------------------------------------
def test_default_threading_env_uses_the_cpu_count():
    env = CpuThreading().environment({}, cpus=6)
    assert env == {"SIGLIP_TRITON_CPU_THREADS": "6", "SIGLIP_TRITON_CPU_INTEROP_THREADS": "1",
                   "OMP_WAIT_POLICY": "PASSIVE"}


def test_explicit_threads_and_the_operators_wait_policy_win():
    env = CpuThreading(threads=3, interop_threads=2).environment(
        {"OMP_WAIT_POLICY": "ACTIVE", "SIGLIP_TRITON_CPU_THREADS": "9"}, cpus=6)
    assert env == {"SIGLIP_TRITON_CPU_THREADS": "3", "SIGLIP_TRITON_CPU_INTEROP_THREADS": "2"}


def test_torch_defaults_add_nothing():
    assert CpuThreading(threads=None, interop_threads=None, passive_wait=False).environment(
        {}, cpus=6) == {}


@pytest.mark.parametrize("bad", [CpuThreading(threads=-1), CpuThreading(interop_threads=0)])
def test_out_of_range_threading_is_refused(bad):
    with pytest.raises(ValueError):
        bad.validate()


def test_settings_carry_the_triton_cpu_knobs():
    s = Settings.from_env({"SIGLIP_TRITON_CPU_THREADS": "3",
                           "SIGLIP_TRITON_CPU_INTEROP_THREADS": "2"})
    assert (s.triton_cpu_threads, s.triton_cpu_interop_threads) == (3, 2)
    d = Settings.from_env({})
    assert (d.triton_cpu_threads, d.triton_cpu_interop_threads) == (0, 1)
    for bad in ({"SIGLIP_TRITON_CPU_THREADS": "-1"}, {"SIGLIP_TRITON_CPU_INTEROP_THREADS": "0"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Settings.from_env(bad)


def test_serve_hands_the_settings_to_the_embedded_triton(tiny_checkpoint, monkeypatch):
    """gateway.app.serve -> EmbeddedTriton(cpu_threading=...): recorded by a launcher that
    refuses to start, so serve stops right there (after reading the checkpoint)."""
    import asyncio

    from gateway import app
    from gateway.embedded_triton import launcher

    seen: dict[str, object] = {}

    class Recorder:
        def __init__(self, **kwargs: object) -> None:
            seen.update(kwargs)

        def start(self) -> None:
            raise launcher.TritonStartupError("install", "recorded, not started")

    monkeypatch.setattr(launcher, "EmbeddedTriton", Recorder)
    settings = Settings.from_env({}, model=str(tiny_checkpoint), triton_cpu_threads=5,
                                 triton_cpu_interop_threads=2)
    with pytest.raises(launcher.TritonStartupError):
        asyncio.run(app.serve(settings))
    assert seen["cpu_threading"] == CpuThreading(threads=5, interop_threads=2)
