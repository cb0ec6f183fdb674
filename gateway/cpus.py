"""How many CPUs this process may use: its affinity mask within its cgroup's CPU quota.

The one place that counts CPUs: the gateway's default process and thread counts (config.py,
gateway/processes/cpus.py) and the embedded Triton's CPU threading (gateway/embedded_triton/) ask
here. Triton's towers do not count CPUs themselves: they get the launcher's numbers through their
environment (model_repository/README.md), or the deployment's (k8s: the container's CPU limit).

`os.cpu_count()` and torch's default see every core of the machine; a container limited by a CFS
quota (docker --cpus, a Kubernetes CPU limit) may use only a fraction of them, and threads beyond it
are throttled in lockstep. The quota is read from cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_quota_us` /
`cpu.cfs_period_us`), the tightest one on the path from this process's cgroup up to the hierarchy's
root.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (cpuset), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def cpu_quota(cgroup_root: Path = CGROUP_ROOT,
              proc_self_cgroup: Path = PROC_SELF_CGROUP) -> float | None:
    """The CFS quota in CPUs (e.g. 1.5), or None when there is none or it cannot be read."""
    try:
        lines = proc_self_cgroup.read_text().splitlines()
    except OSError:
        return None
    v1_path, v2_path = None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "" and v2_path is None:
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = (controllers, path)
    quotas: list[float] = []
    if v1_path is not None:
        controllers, path = v1_path
        for mount in _v1_mounts(cgroup_root, controllers):
            quotas += _along(mount, path, _v1_quota)
    if not quotas and v2_path is not None and (cgroup_root / "cgroup.controllers").exists():
        quotas += _along(cgroup_root, v2_path, _v2_quota)
    return min(quotas) if quotas else None


def available_cpus(cgroup_root: Path = CGROUP_ROOT,
                   proc_self_cgroup: Path = PROC_SELF_CGROUP) -> int:
    """CPUs this process may keep busy: its affinity, capped by the CFS quota.

    A fractional quota is rounded up (1.5 -> 2), as Kubernetes rounds `limits.cpu` for a
    resourceFieldRef with divisor 1: the quota is then used in full, and deployments that take
    the count from the limit get the same number as the embedded Triton computes.
    """
    cpus = affinity_cpus()
    quota = cpu_quota(cgroup_root, proc_self_cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota - 1e-9)))
    return cpus


def _v1_mounts(root: Path, controllers: str) -> list[Path]:
    """Where cgroup v1 mounts the cpu controller: as named in /proc/self/cgroup
    (`cpu,cpuacct`), or under the usual link names."""
    for name in (controllers, "cpu,cpuacct", "cpu"):
        if (root / name / "cpu.cfs_quota_us").exists():
            return [root / name]
    return []


def _along(mount: Path, cgroup_path: str,
           read: Callable[[Path], float | None]) -> list[float]:
    """Quotas on the cgroup's path from its own directory up to the mount's root.

    Inside a container with its own cgroup namespace the path is "/" and the mount is the
    container's cgroup; without one the path may name host directories that are not mounted
    here, which are skipped.
    """
    quotas = []
    directory = mount / cgroup_path.strip("/")
    while True:
        if directory.is_dir():
            quota = read(directory)
            if quota is not None:
                quotas.append(quota)
        if directory == mount or mount not in directory.parents:
            return quotas
        directory = directory.parent


def _v2_quota(directory: Path) -> float | None:
    try:
        fields = (directory / "cpu.max").read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None
