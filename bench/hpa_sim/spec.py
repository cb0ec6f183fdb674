"""The autoscalers of a rendered overlay, as the simulator needs them.

Reads HorizontalPodAutoscalers (autoscaling/v2) and KEDA ScaledObjects from the objects
`kubectl kustomize k8s/overlays/<name>` prints: per Deployment the replica bounds, the
metrics with their targets, and the behavior block with Kubernetes' defaults filled in.
Also the few Deployment facts the service model needs (the gateway's CPU request and limit,
its admission limit). Only the signals this project scales on are understood; anything
else raises, so a new metric cannot be silently left out of the simulation.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]

# Signals by the metric names the HPAs use, or a series their KEDA query reads.
SIGNAL_OF_METRIC = {
    "siglip_gateway_requests_in_flight": "in_flight",
    "siglip_triton_queue_time_us_per_request": "queue_time",
}
SIGNAL_OF_SERIES = {
    "siglip_gateway_requests_in_flight": "in_flight",
    "nv_inference_queue_duration_us": "queue_time",
}
MICROSECONDS = {"queue_time"}  # targets given in µs; the simulator works in seconds


@dataclass(frozen=True)
class Policy:
    kind: str  # "Pods" or "Percent"
    value: int
    period_s: int


@dataclass(frozen=True)
class Rules:
    window_s: int
    select: str  # "Max", "Min" or "Disabled"
    policies: tuple[Policy, ...]


@dataclass(frozen=True)
class Behavior:
    up: Rules
    down: Rules


@dataclass(frozen=True)
class Metric:
    """One metric of an autoscaler. ``source``: how the HPA turns values into replicas.

    "resource" (CPU utilization of ready pods, % of the request), "pods" (average over the
    pods that report it), "external_average" (a total divided by the target per pod:
    KEDA AverageValue), "external_value" (a value against the target, times the ready pods:
    KEDA Value).
    """

    signal: str  # "cpu", "in_flight" or "queue_time"
    source: str
    target: float  # percent for cpu, calls for in_flight, seconds for queue_time


@dataclass(frozen=True)
class Autoscaler:
    deployment: str
    min_replicas: int
    max_replicas: int
    metrics: tuple[Metric, ...]
    behavior: Behavior


# Kubernetes' defaults for an HPA without (part of) a behavior block.
DEFAULT_UP = {"stabilizationWindowSeconds": 0, "selectPolicy": "Max", "policies": [
    {"type": "Percent", "value": 100, "periodSeconds": 15},
    {"type": "Pods", "value": 4, "periodSeconds": 15}]}
DEFAULT_DOWN = {"stabilizationWindowSeconds": 300, "selectPolicy": "Max", "policies": [
    {"type": "Percent", "value": 100, "periodSeconds": 15}]}


def _rules(given: Obj | None, default: Obj) -> Rules:
    merged = {**default, **(given or {})}
    return Rules(
        window_s=int(merged["stabilizationWindowSeconds"]),
        select=merged["selectPolicy"],
        policies=tuple(Policy(p["type"], int(p["value"]), int(p["periodSeconds"]))
                       for p in merged["policies"]))


def behavior_of(block: Obj | None) -> Behavior:
    block = block or {}
    return Behavior(_rules(block.get("scaleUp"), DEFAULT_UP),
                    _rules(block.get("scaleDown"), DEFAULT_DOWN))


def _scaled_target(signal: str, value: float) -> float:
    return value / 1e6 if signal in MICROSECONDS else value


def _hpa_metric(m: Obj) -> Metric:
    kind = m["type"]
    if kind in ("Resource", "ContainerResource"):
        spec = m["resource" if kind == "Resource" else "containerResource"]
        if spec["name"] != "cpu" or spec["target"]["type"] != "Utilization":
            raise ValueError(f"unsupported resource metric: {m}")
        return Metric("cpu", "resource", float(spec["target"]["averageUtilization"]))
    if kind == "Pods":
        signal = SIGNAL_OF_METRIC[m["pods"]["metric"]["name"]]
        value = float(m["pods"]["target"]["averageValue"])
        return Metric(signal, "pods", _scaled_target(signal, value))
    raise ValueError(f"unsupported HPA metric type: {kind}")


def _keda_metric(trigger: Obj) -> Metric:
    meta = trigger["metadata"]
    if trigger["type"] == "cpu":
        return Metric("cpu", "resource", float(meta["value"]))
    if trigger["type"] == "prometheus":
        (signal,) = {s for series, s in SIGNAL_OF_SERIES.items() if series in meta["query"]}
        source = {"AverageValue": "external_average", "Value": "external_value"}[
            trigger.get("metricType", "AverageValue")]
        return Metric(signal, source, _scaled_target(signal, float(meta["threshold"])))
    raise ValueError(f"unsupported KEDA trigger: {trigger['type']}")


def autoscalers(docs: list[Obj]) -> dict[str, Autoscaler]:
    """Every autoscaler in the render, by the Deployment it scales."""
    out: dict[str, Autoscaler] = {}
    for d in docs:
        if d["kind"] == "HorizontalPodAutoscaler":
            s = d["spec"]
            out[s["scaleTargetRef"]["name"]] = Autoscaler(
                s["scaleTargetRef"]["name"], int(s.get("minReplicas", 1)), int(s["maxReplicas"]),
                tuple(_hpa_metric(m) for m in s["metrics"]), behavior_of(s.get("behavior")))
        elif d["kind"] == "ScaledObject":
            s = d["spec"]
            block = s.get("advanced", {}).get("horizontalPodAutoscalerConfig", {})
            out[s["scaleTargetRef"]["name"]] = Autoscaler(
                s["scaleTargetRef"]["name"], int(s.get("minReplicaCount", 1)),
                int(s.get("maxReplicaCount", 100)),
                tuple(_keda_metric(t) for t in s["triggers"]), behavior_of(block.get("behavior")))
    return out


def _cpu(quantity: str) -> float:
    q = str(quantity)
    return float(q[:-1]) / 1000 if q.endswith("m") else float(q)


@dataclass(frozen=True)
class GatewayFacts:
    cpu_request: float  # cores
    cpu_limit: float
    max_in_flight: int


def gateway_facts(docs: list[Obj]) -> GatewayFacts:
    (dep,) = [d for d in docs if d["kind"] == "Deployment"
              and d["metadata"]["name"] == "siglip-gateway"]
    (c,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "gateway"]
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        name = src["configMapRef"]["name"]
        (cm,) = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
        env.update(cm.get("data", {}))
    return GatewayFacts(_cpu(c["resources"]["requests"]["cpu"]),
                        _cpu(c["resources"]["limits"]["cpu"]), int(env["SIGLIP_MAX_IN_FLIGHT"]))


def render(overlay: str) -> list[Obj]:
    """`kubectl kustomize k8s/overlays/<overlay>` ($KUBECTL, else kubectl on PATH)."""
    kubectl = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl not found: set KUBECTL or put kubectl (with kustomize) on PATH")
    out = subprocess.run([kubectl, "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return [d for d in yaml.safe_load_all(out) if d]
