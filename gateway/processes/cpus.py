"""The default number of gateway processes and of preprocessing threads in each, from the CPUs
this process may use (``gateway.cpus``: the affinity mask within the cgroup CPU quota)."""

from __future__ import annotations

from gateway.cpus import available_cpus


def default_processes(embedded_triton: bool, cpus: int | None = None) -> int:
    """One gateway process per CPU with an external Triton; with the embedded Triton on the
    same CPUs, half of them (at least 1), the other half left to Triton's own processes."""
    cpus = available_cpus() if cpus is None else cpus
    return max(1, cpus // 2) if embedded_triton else cpus


def default_threads(processes: int, cpus: int | None = None) -> int:
    """SIGLIP_WORKERS default: the CPUs shared out among the processes (at least 1 each)."""
    cpus = available_cpus() if cpus is None else cpus
    return max(1, cpus // processes)
