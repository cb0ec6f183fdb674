"""CPU threading of the embedded Triton's towers: what goes into tritonserver's environment.

The towers (model_repository/siglip_*/1/model.py) read SIGLIP_TRITON_CPU_THREADS and
SIGLIP_TRITON_CPU_INTEROP_THREADS on CPU instances and hand them to torch; the OpenMP runtime
(libgomp, in torch's CPU wheel) reads OMP_WAIT_POLICY once, when a stub loads it, so that one
must already be in the environment tritonserver passes to its stubs. This module turns the
settings into those variables; the CPU count comes from gateway/cpus.py. Why these defaults:
BENCHMARKS.md, "CPU threading of Triton's towers".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.cpus import available_cpus

THREADS_ENV = "SIGLIP_TRITON_CPU_THREADS"
INTEROP_THREADS_ENV = "SIGLIP_TRITON_CPU_INTEROP_THREADS"
# libgomp: PASSIVE = idle workers sleep at once; by default they spin a while after every
# parallel region, burning CPU that the other tower, Triton and the gateway need.
WAIT_POLICY_ENV = "OMP_WAIT_POLICY"


@dataclass(frozen=True)
class CpuThreading:
    """Threads of each tower's CPU instance.

    `threads`: torch intra-op threads per instance; 0 = the CPUs Triton may use (affinity
    within the cgroup quota); None = torch's own default (every physical core). `interop_threads`:
    torch's inter-op pool; None = torch's default. `passive_wait`: OMP_WAIT_POLICY=PASSIVE.
    GPU instances ignore all of it except the wait policy (their CPU side barely uses OpenMP).
    """

    threads: int | None = 0
    interop_threads: int | None = 1
    passive_wait: bool = True

    def environment(self, inherited: Mapping[str, str], cpus: int | None = None) -> dict[str, str]:
        """Variables to add to Triton's environment. An OpenMP variable already in `inherited`
        (the operator's own tuning) is left as it is."""
        env: dict[str, str] = {}
        if self.threads is not None:
            threads = self.threads or (cpus if cpus is not None else available_cpus())
            env[THREADS_ENV] = str(threads)
        if self.interop_threads is not None:
            env[INTEROP_THREADS_ENV] = str(self.interop_threads)
        if self.passive_wait and not inherited.get(WAIT_POLICY_ENV):
            env[WAIT_POLICY_ENV] = "PASSIVE"
        return env

    def validate(self) -> None:
        if self.threads is not None and self.threads < 0:
            raise ValueError(f"CPU threads {self.threads}: want 0 (the available CPUs) or more")
        if self.interop_threads is not None and self.interop_threads < 1:
            raise ValueError(f"CPU inter-op threads {self.interop_threads}: want 1 or more")
