"""The service under load, one second at a time, with its autoscalers in the loop.

A fluid model: calls arrive at a rate, wait for gateway CPU, then for Triton, in two
first-come-first-served backlogs whose service rates are (ready pods) x (rate per pod).
Below saturation a batching Triton still queues each request for part of a batch: the
M/D/1 mean wait B*rho / (2*(1-rho)) for batch time B at utilization rho (rho capped at 0.95).
The gateway admits at most SIGLIP_MAX_IN_FLIGHT calls per ready pod; calls beyond that
are refused (RESOURCE_EXHAUSTED), as admission control does.

Pods go Pending (image pull, init containers: the HPA ignores them), then Running but not
ready (model load: no custom metrics yet, CPU "unready"), then ready; their metrics exist
one metrics window after that. The HPA reads what Prometheus and metrics-server would
serve: CPU over the last 30 s, in-flight as avg_over_time(...[1m]), queue time as
rate(queue_us[1m]) / rate(success[1m]); every 15 s, controller.HpaController decides.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.hpa_sim.controller import (
    SYNC_PERIOD_S,
    HpaController,
    external_average_replicas,
    external_value_replicas,
    plain_replicas,
)
from bench.hpa_sim.spec import Autoscaler, GatewayFacts

RHO_CAP = 0.95


@dataclass(frozen=True)
class ServiceParams:
    gateway_cpu_s_per_call: float  # gateway CPU per call (measured: BENCHMARKS.md)
    triton_calls_per_s: float  # one Triton pod's rate at full batches (assumed for GPUs)
    triton_batch_s: float  # one full batch's compute time
    gateway: GatewayFacts
    gateway_pending_s: float = 5.0
    gateway_loading_s: float = 5.0
    triton_pending_s: float = 60.0
    triton_loading_s: float = 120.0
    metrics_delay_s: float = 30.0  # ready -> first value of a 1 m rate / a CPU window

    @property
    def gateway_calls_per_s(self) -> float:
        """One gateway pod at its CPU limit (SIGLIP_WORKERS = the limit's cores)."""
        return self.gateway.cpu_limit / self.gateway_cpu_s_per_call


def mdl_wait(rho: float, batch_s: float) -> float:
    """Mean queue wait of a batching server below saturation (M/D/1 in batch time)."""
    rho = min(max(rho, 0.0), RHO_CAP)
    return batch_s * rho / (2 * (1 - rho))


@dataclass
class Pod:
    created: float
    pending_s: float
    loading_s: float

    def running(self, t: float) -> bool:
        return t >= self.created + self.pending_s

    def ready(self, t: float) -> bool:
        return t >= self.created + self.pending_s + self.loading_s

    def reporting(self, t: float, delay_s: float) -> bool:
        return t >= self.created + self.pending_s + self.loading_s + delay_s


@dataclass
class Deployment:
    name: str
    roles: frozenset[str]  # "gateway", "triton"
    scaler: Autoscaler
    pending_s: float
    loading_s: float
    pods: list[Pod] = field(default_factory=list)
    controller: HpaController | None = None

    def scale_to(self, n: int, t: float) -> None:
        while len(self.pods) < n:
            self.pods.append(Pod(t, self.pending_s, self.loading_s))
        while len(self.pods) > n:
            # The ReplicaSet removes pods that are not ready first, then the newest.
            victim = next((p for p in reversed(self.pods) if not p.ready(t)), self.pods[-1])
            self.pods.remove(victim)

    def ready(self, t: float) -> int:
        return sum(p.ready(t) for p in self.pods)


@dataclass
class Sample:
    t: float
    load: float  # offered calls/s
    replicas: dict[str, int]
    ready: dict[str, int]
    capacity: float  # calls/s the ready pods can serve (the smaller tier)
    wait_s: float  # what a call admitted now waits beyond its own work (gateway + Triton)
    backlog: float  # calls queued beyond what the ready pods serve in a second
    in_flight_per_pod: float
    rejected_per_s: float
    hpa_metrics: dict[str, float]  # what the autoscalers read, by signal


class Simulation:
    def __init__(self, scalers: dict[str, Autoscaler], params: ServiceParams) -> None:
        self.p = params
        colocated = "siglip-triton" not in scalers
        self.deps: list[Deployment] = []
        for name, scaler in scalers.items():
            roles = (frozenset({"gateway", "triton"}) if colocated
                     else frozenset({"gateway"} if name == "siglip-gateway" else {"triton"}))
            slow = "triton" in roles
            dep = Deployment(name, roles, scaler,
                             params.triton_pending_s if slow else params.gateway_pending_s,
                             params.triton_loading_s if slow else params.gateway_loading_s)
            dep.controller = HpaController(scaler)
            dep.pods = [Pod(-1e9, 0, 0) for _ in range(scaler.min_replicas)]
            self.deps.append(dep)
        self.q_gateway = 0.0
        self.q_triton = 0.0
        self.window: deque[tuple[float, float, float]] = deque()  # t, cpu %, in flight
        self.served_window: deque[tuple[float, float, float]] = deque()  # t, served, wait

    def _tier(self, role: str) -> Deployment:
        return next(d for d in self.deps if role in d.roles)

    def step(self, t: float, load: float) -> Sample:
        p, gw, tr = self.p, self._tier("gateway"), self._tier("triton")
        n_gw, n_tr = gw.ready(t), tr.ready(t)
        cap_gw = n_gw * p.gateway_calls_per_s
        cap_tr = n_tr * p.triton_calls_per_s

        self.q_gateway += load
        served_gw = min(self.q_gateway, cap_gw)
        self.q_gateway -= served_gw
        self.q_triton += served_gw
        served_tr = min(self.q_triton, cap_tr)
        self.q_triton -= served_tr
        rho = served_tr / cap_tr if cap_tr else 1.0
        steady = mdl_wait(rho, p.triton_batch_s)
        # Calls in the gateway: the two backlogs, and by Little's law the served ones for the
        # time they spend in service and in Triton's steady queue.
        in_service = served_tr * (p.gateway_cpu_s_per_call + steady + p.triton_batch_s)
        in_flight = self.q_gateway + self.q_triton + in_service
        rejected = max(0.0, min(load, in_flight - p.gateway.max_in_flight * n_gw))
        if rejected:  # the newest calls are refused: they are at the back of the queues
            from_gw = min(rejected, self.q_gateway)
            self.q_gateway -= from_gw
            self.q_triton -= rejected - from_gw
            in_flight -= rejected
        wait = ((self.q_gateway / cap_gw if cap_gw else math.inf)
                + (self.q_triton / cap_tr if cap_tr else math.inf) + steady)

        cpu_pct = (100 * served_gw * p.gateway_cpu_s_per_call / (n_gw * p.gateway.cpu_request)
                   if n_gw else 0.0)
        self.window.append((t, cpu_pct, in_flight))
        self.served_window.append((t, served_tr, wait if served_tr else 0.0))
        while self.window[0][0] <= t - 60:
            self.window.popleft()
        while self.served_window[0][0] <= t - 60:
            self.served_window.popleft()
        metrics = self._metrics(t, n_gw)
        if t % SYNC_PERIOD_S == 0:
            for dep in self.deps:
                self._sync(dep, t, metrics)
        return Sample(t, load, {d.name: len(d.pods) for d in self.deps},
                      {d.name: d.ready(t) for d in self.deps}, min(cap_gw, cap_tr),
                      wait, self.q_gateway + self.q_triton,
                      in_flight / n_gw if n_gw else math.inf, rejected, metrics)

    def _metrics(self, t: float, n_gw: int) -> dict[str, float]:
        cpu = [c for s, c, _ in self.window if s > t - 30]
        served = sum(s for _, s, _ in self.served_window)
        queue = (sum(s * w for _, s, w in self.served_window) / served) if served else 0.0
        in_flight_total = sum(i for _, _, i in self.window) / len(self.window)
        return {"cpu": sum(cpu) / len(cpu), "in_flight_total": in_flight_total,
                "in_flight": in_flight_total / n_gw if n_gw else 0.0, "queue_time": queue}

    def _sync(self, dep: Deployment, t: float, metrics: dict[str, float]) -> None:
        pods = dep.pods
        current = len(pods)
        running = [q for q in pods if q.running(t)]
        ready = sum(q.ready(t) for q in running)
        reporting = [q for q in running if q.reporting(t, self.p.metrics_delay_s)]
        proposals: list[int | None] = []
        for m in dep.scaler.metrics:
            value = metrics[m.signal]
            if m.source == "resource":
                proposals.append(plain_replicas(current, [value] * len(reporting), m.target,
                                                unready=len(running) - len(reporting)))
            elif m.source == "pods":
                proposals.append(plain_replicas(current, [value] * len(reporting), m.target,
                                                missing=len(running) - len(reporting)))
            elif m.source == "external_average":
                total = metrics["in_flight_total"] if m.signal == "in_flight" else value
                proposals.append(external_average_replicas(current, total, m.target))
            else:
                proposals.append(external_value_replicas(current, value, m.target, ready))
        assert dep.controller is not None
        dep.scale_to(dep.controller.decide(t, current, proposals), t)


@dataclass(frozen=True)
class Summary:
    capacity_s: float | None  # event -> ready capacity >= load, for good
    recovered_s: float | None  # event -> no backlog and no refusals, for good
    max_wait_s: float
    max_in_flight_per_pod: float
    rejected: float  # calls refused (RESOURCE_EXHAUSTED) from the event on
    offered: float  # calls offered from the event on
    peak_replicas: dict[str, int]
    pod_minutes: dict[str, float]  # pods that existed (ready or not), from the event on


def run(scalers: dict[str, Autoscaler], params: ServiceParams, load: Callable[[float], float],
        warmup_s: int = 900, duration_s: int = 1800) -> tuple[list[Sample], Summary]:
    """Runs warm-up (from min replicas) then the event at t = 0; samples from t = 0."""
    sim = Simulation(scalers, params)
    for t in range(-warmup_s, 0):
        sim.step(float(t), load(float(t)))
    samples = [sim.step(float(t), load(float(t))) for t in range(duration_s)]
    return samples, summarize(samples)


def _settled_from(samples: list[Sample], ok: Callable[[Sample], bool]) -> float | None:
    last_bad = max((i for i, s in enumerate(samples) if not ok(s)), default=-1)
    return samples[last_bad + 1].t if last_bad + 1 < len(samples) else None


def summarize(samples: list[Sample]) -> Summary:
    peak_load = max(s.load for s in samples)
    capacity = _settled_from(samples, lambda s: s.capacity >= min(s.load, peak_load))
    recovered = _settled_from(samples, lambda s: s.rejected_per_s == 0 and s.backlog < 1)
    names = samples[0].replicas
    return Summary(capacity, recovered, max(s.wait_s for s in samples),
                   max(s.in_flight_per_pod for s in samples),
                   sum(s.rejected_per_s for s in samples), sum(s.load for s in samples),
                   {n: max(s.replicas[n] for s in samples) for n in names},
                   {n: sum(s.replicas[n] for s in samples) / 60 for n in names})
