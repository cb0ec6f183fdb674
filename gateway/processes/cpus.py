"""How many CPUs this process may use, and the default number of gateway processes.

Counts the CPUs in our affinity mask, capped by a cgroup CPU quota (a container's CPU limit):
in a pod limited to 2 CPUs on a 64-core node, the affinity mask still shows 64.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

_CGROUP = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = _CGROUP) -> int:
    """CPUs in the affinity mask, at most the cgroup quota (rounded down, at least 1)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.floor(quota)))
    return max(1, cpus)


def cgroup_cpu_quota(root: Path = _CGROUP) -> float | None:
    """The CPU limit in CPUs (cgroup v2 cpu.max, else v1 cfs quota/period); None: no limit."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us


def default_processes(embedded_triton: bool, cpus: int | None = None) -> int:
    """One gateway process per CPU with an external Triton; with the embedded Triton on the
    same CPUs, half of them (at least 1), the other half left to Triton's own processes."""
    cpus = available_cpus() if cpus is None else cpus
    return max(1, cpus // 2) if embedded_triton else cpus


def default_threads(processes: int, cpus: int | None = None) -> int:
    """SIGLIP_WORKERS default: the CPUs shared out among the processes (at least 1 each)."""
    cpus = available_cpus() if cpus is None else cpus
    return max(1, cpus // processes)
