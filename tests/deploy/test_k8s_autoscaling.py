"""Offline checks of the Kubernetes deployment: autoscaling.

One autoscaler per Deployment (HPA autoscaling/v2 with behavior, or a KEDA ScaledObject),
custom metrics that the shipped prometheus-adapter rules actually serve, and targets that
agree with the service's own settings (admission limit, dynamic batcher delay).
"""

from __future__ import annotations

import re

import pytest

from tests.support.k8s_render import (
    GATEWAY,
    TRITON,
    Obj,
    adapter_rules,
    batcher_delays_us,
    container,
    env_of,
    get,
    of_kind,
    render,
    triton_workload,
)


def test_every_deployment_has_exactly_one_autoscaler(docs: list[Obj]) -> None:
    scalers = of_kind(docs, "HorizontalPodAutoscaler") + of_kind(docs, "ScaledObject")
    targets = [s["spec"]["scaleTargetRef"]["name"] for s in scalers]
    for dep in of_kind(docs, "Deployment"):
        assert targets.count(dep["metadata"]["name"]) == 1, dep["metadata"]["name"]
        # An autoscaled Deployment must not carry replicas: every apply would reset the count.
        assert "replicas" not in dep["spec"]
    assert sorted(targets) == sorted(d["metadata"]["name"] for d in of_kind(docs, "Deployment"))


def test_hpas_are_v2_with_behavior(docs: list[Obj]) -> None:
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["apiVersion"] == "autoscaling/v2"
        behavior = hpa["spec"]["behavior"]
        assert behavior["scaleUp"]["policies"] and behavior["scaleDown"]["policies"]
        assert "stabilizationWindowSeconds" in behavior["scaleDown"]
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    for so in of_kind(docs, "ScaledObject"):
        behavior = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        assert behavior["scaleUp"]["policies"] and behavior["scaleDown"]["policies"]


# --- autoscaling targets agree with the service ----------------------------------------------


def pods_metric_target(docs: list[Obj], deployment: str, metric: str) -> float:
    hpa = next(h for h in of_kind(docs, "HorizontalPodAutoscaler")
               if h["spec"]["scaleTargetRef"]["name"] == deployment)
    (m,) = [m for m in hpa["spec"]["metrics"]
            if m["type"] == "Pods" and m["pods"]["metric"]["name"] == metric]
    return float(m["pods"]["target"]["averageValue"])


def keda_threshold(docs: list[Obj], deployment: str, series: str) -> tuple[float, Obj]:
    so = next(s for s in of_kind(docs, "ScaledObject")
              if s["spec"]["scaleTargetRef"]["name"] == deployment)
    (t,) = [t for t in so["spec"]["triggers"]
            if t["type"] == "prometheus" and series in t["metadata"]["query"]]
    return float(t["metadata"]["threshold"]), t


def scaling_target(docs: list[Obj], deployment: str, metric: str, series: str) -> float:
    if of_kind(docs, "ScaledObject"):
        return keda_threshold(docs, deployment, series)[0]
    return pods_metric_target(docs, deployment, metric)


def test_hpa_custom_metrics_come_from_adapter_rules(docs: list[Obj]) -> None:
    served = {r["name"]["as"] for r in adapter_rules()}
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        for m in hpa["spec"]["metrics"]:
            if m["type"] == "Pods":
                assert m["pods"]["metric"]["name"] in served


# The Triton models whose queue time is the towers' saturation, in every deployment shape:
# one model (plain names) or several (suffixed `__NAME`, gateway/contract.py).
TOWER_MATCHER = 'model=~"siglip_(vision|text)(__.+)?"'


def test_tower_matcher_selects_the_towers_only() -> None:
    """Prometheus anchors a regex matcher at both ends, as re.fullmatch does."""
    pattern = re.search(r'=~"(.*)"', TOWER_MATCHER).group(1)  # type: ignore[union-attr]
    towers = ["siglip_vision", "siglip_text", "siglip_vision__so400m", "siglip_text__base-2"]
    others = ["siglip_vision_encoded", "siglip_image_decode", "siglip_vision_encoded__so400m",
              "siglip_image_decode__base", "siglip_vision_encoded__x__y", "resnet"]
    assert all(re.fullmatch(pattern, m) for m in towers)
    assert not any(re.fullmatch(pattern, m) for m in others)


def test_adapter_queue_time_rule() -> None:
    (rule,) = [r for r in adapter_rules()
               if r["name"]["as"] == "siglip_triton_queue_time_us_per_request"]
    num, _, den = rule["metricsQuery"].partition("/")
    # Towers only, above and below the line: the ensemble and the decoder of
    # SIGLIP_PREPROCESS_MODE=triton would triple the requests (tests/monitoring check the value).
    assert f"rate(nv_inference_queue_duration_us{{<<.LabelMatchers>>,{TOWER_MATCHER}}}" in num
    assert f"rate(nv_inference_request_success{{<<.LabelMatchers>>,{TOWER_MATCHER}}}" in den
    for r in adapter_rules():
        assert r["resources"]["overrides"]["pod"] == {"resource": "pod"}
        assert r["resources"]["overrides"]["namespace"] == {"resource": "namespace"}


def test_in_flight_target_below_admission_limit(docs: list[Obj]) -> None:
    gw = container(get(docs, "Deployment", GATEWAY), "gateway")
    limit = int(env_of(docs, gw)["SIGLIP_MAX_IN_FLIGHT"])
    target = scaling_target(docs, GATEWAY, "siglip_gateway_requests_in_flight",
                            "siglip_gateway_requests_in_flight")
    assert 0 < target < limit


def test_queue_time_target_above_batcher_delay(docs: list[Obj]) -> None:
    delays = batcher_delays_us()
    if not delays:
        pytest.skip("no max_queue_delay_microseconds in model_repository/*/config.pbtxt")
    # The Triton Deployment's autoscaler, or the gateway's when Triton is its sidecar.
    target = scaling_target(docs, triton_workload(docs)["metadata"]["name"],
                            "siglip_triton_queue_time_us_per_request",
                            "nv_inference_queue_duration_us")
    # At low load every request may wait the full batcher delay: a target at or below it
    # would scale out an idle service.
    assert target > 2 * max(delays)


def test_keda_queries_follow_namespace(docs: list[Obj]) -> None:
    for so in of_kind(docs, "ScaledObject"):
        ns = so["metadata"]["namespace"]
        get(docs, "Deployment", so["spec"]["scaleTargetRef"]["name"])
        for t in so["spec"]["triggers"]:
            if t["type"] != "prometheus":
                continue
            assert t["metadata"]["serverAddress"].startswith("http")
            found = re.findall(r'namespace="([^"]*)"', t["metadata"]["query"])
            assert found and set(found) == {ns}, t["metadata"]["query"]


def test_keda_triton_trigger_is_a_value() -> None:
    docs = render("gpu-keda")
    _, trigger = keda_threshold(docs, TRITON, "nv_inference_queue_duration_us")
    # Queue time per request is a mean, not a per-pod share: AverageValue would divide it by
    # the replica count.
    assert trigger["metricType"] == "Value"
    query = trigger["metadata"]["query"]
    for series in ("nv_inference_queue_duration_us", "nv_inference_request_success"):
        (matchers,) = re.findall(series + r"\{([^}]*)\}", query)
        assert TOWER_MATCHER in matchers, (series, query)
    _, trigger = keda_threshold(docs, GATEWAY, "siglip_gateway_requests_in_flight")
    assert trigger["metricType"] == "AverageValue"
