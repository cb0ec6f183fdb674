"""bench/hpa_sim on cases computed by hand: the HPA's replica arithmetic (tolerance, unready
and missing pods, external metrics), its behavior (stabilization windows, policy periods,
selectPolicy), and the queue model (backlog growth, admission limit)."""

from __future__ import annotations

import math

import pytest

from bench.hpa_sim.controller import (
    HpaController,
    external_average_replicas,
    external_value_replicas,
    plain_replicas,
    scale_down_limit,
    scale_up_limit,
)
from bench.hpa_sim.model import ServiceParams, mdl_wait, run
from bench.hpa_sim.spec import (
    Autoscaler,
    Behavior,
    GatewayFacts,
    Metric,
    Policy,
    Rules,
    autoscalers,
    behavior_of,
)
from tests.support.k8s_render import render

GATEWAY_UP = Rules(0, "Max", (Policy("Percent", 100, 30), Policy("Pods", 4, 30)))
GATEWAY_DOWN = Rules(300, "Max", (Policy("Percent", 20, 60),))
TRITON_UP = Rules(60, "Max", (Policy("Pods", 2, 120),))
TRITON_DOWN = Rules(600, "Max", (Policy("Pods", 1, 300),))


def test_tolerance_and_proportional_proposal() -> None:
    assert plain_replicas(4, [105.0] * 4, 100) == 4  # within 10 %: no change
    assert plain_replicas(4, [150.0] * 4, 100) == 6
    assert plain_replicas(4, [50.0] * 4, 100) == 2
    assert plain_replicas(4, [], 100) is None


def test_unready_pods_count_as_idle_when_scaling_up() -> None:
    # 2 ready at 150 %, 2 starting: 300 / 4 pods = 75 % < 100 %: hold at 4.
    assert plain_replicas(4, [150.0, 150.0], 100, unready=2) == 4
    # 2 ready at 300 %: 600 / 4 = 150 %: ceil(1.5 * 4) = 6.
    assert plain_replicas(4, [300.0, 300.0], 100, unready=2) == 6


def test_missing_pods_count_at_target_when_scaling_down() -> None:
    # 2 reporting at 50, 2 without metrics taken at 100: 300 / 4 = 75 %: ceil(0.75 * 4) = 3.
    assert plain_replicas(4, [50.0, 50.0], 100, missing=2) == 3
    # Scaling up, missing pods count as 0: 2 x 150 over 4 pods = 75 %: hold.
    assert plain_replicas(4, [150.0, 150.0], 100, missing=2) == 4


def test_external_metrics() -> None:
    # AverageValue: total 200 / 32 per pod = 6.25 -> 7, whatever the ready pods.
    assert external_average_replicas(4, 200, 32) == 7
    assert external_average_replicas(4, 130, 32) == 4  # 130 / 128: within tolerance
    # Value: ratio 2 times the 2 ready pods (not the 4 that exist) = 4.
    assert external_value_replicas(4, 0.04, 0.02, ready=2) == 4


def test_policy_limits() -> None:
    assert scale_up_limit(2, GATEWAY_UP, 100, [], []) == 6  # max(2 * 2, 2 + 4)
    assert scale_up_limit(10, GATEWAY_UP, 100, [], []) == 20
    # 4 added 10 s ago count against both 30 s periods: start from 6.
    assert scale_up_limit(10, GATEWAY_UP, 100, [(90, 4)], []) == 12
    assert scale_up_limit(10, GATEWAY_UP, 100, [(70, 4)], []) == 20  # outside the period
    least = Rules(0, "Min", GATEWAY_UP.policies)
    assert scale_up_limit(2, least, 100, [], []) == 4
    assert scale_down_limit(10, GATEWAY_DOWN, 100, [], []) == 8
    # One pod removed 100 s ago: the 300 s period started at 11, 11 - 1 = 10: no more yet.
    assert scale_down_limit(10, TRITON_DOWN, 100, [], [(0, 1)]) == 10
    assert scale_down_limit(10, TRITON_DOWN, 400, [], [(0, 1)]) == 9


def sync_series(spec: Autoscaler, start: int, proposal: int, until: int) -> dict[int, int]:
    c, n, out = HpaController(spec), start, {}
    for t in range(0, until + 1, 15):
        n = c.decide(t, n, [proposal])
        out[t] = n
    return out


def test_triton_scale_up_timing() -> None:
    spec = Autoscaler("siglip-triton", 2, 8, (), Behavior(TRITON_UP, TRITON_DOWN))
    got = sync_series(spec, 2, 8, 330)
    # The initial recommendation (2 at t=0) leaves the 60 s window at t=60; then +2 per
    # 120 s period.
    assert [got[t] for t in (0, 45, 60, 165, 180, 285, 300, 330)] == [2, 2, 4, 4, 6, 6, 8, 8]


def test_gateway_scale_down_timing() -> None:
    spec = Autoscaler("siglip-gateway", 2, 20, (), Behavior(GATEWAY_UP, GATEWAY_DOWN))
    got = sync_series(spec, 10, 2, 600)
    # 10 held for the 300 s window, then -20 % of the period's start per 60 s, truncated.
    assert [got[t] for t in (285, 300, 345, 360, 420, 480, 540)] == [10, 8, 8, 6, 4, 3, 2]


def test_scale_up_waits_for_a_sustained_rise() -> None:
    spec = Autoscaler("siglip-triton", 2, 8, (), Behavior(TRITON_UP, TRITON_DOWN))
    c, n = HpaController(spec), 2
    for t in range(0, 300, 15):
        # A burst of 30 s every 90 s: the window's lowest recommendation stays 2.
        n = c.decide(t, n, [8 if t % 90 < 30 else 2])
        assert n == 2


def test_defaults_fill_a_partial_behavior() -> None:
    b = behavior_of({"scaleDown": {"stabilizationWindowSeconds": 60}})
    assert b.up.window_s == 0 and len(b.up.policies) == 2
    assert b.down.window_s == 60 and b.down.policies == (Policy("Percent", 100, 15),)


def test_batching_wait() -> None:
    assert mdl_wait(0.5, 0.02) == pytest.approx(0.01)
    assert mdl_wait(2.0, 0.02) == pytest.approx(0.02 * 0.95 / 0.1)  # capped at rho 0.95


def fixed(name: str) -> Autoscaler:
    return Autoscaler(name, 1, 1, (Metric("cpu", "resource", 70),),
                      Behavior(GATEWAY_UP, GATEWAY_DOWN))


def test_backlog_then_admission_limit() -> None:
    params = ServiceParams(gateway_cpu_s_per_call=0.001, triton_calls_per_s=100,
                           triton_batch_s=0.01, gateway=GatewayFacts(1, 1, 300))
    scalers = {"siglip-gateway": fixed("siglip-gateway"), "siglip-triton": fixed("siglip-triton")}
    samples, summary = run(scalers, params, lambda t: 150.0, warmup_s=0, duration_s=60)
    # Triton serves 100/s at the capped utilization: in service 100 * (0.001 + 0.095 + 0.01).
    in_service = 100 * (0.001 + mdl_wait(1.0, 0.01) + 0.01)
    assert samples[4].backlog == pytest.approx(250)  # 50/s for 5 s
    assert samples[4].rejected_per_s == 0
    assert samples[4].wait_s == pytest.approx(250 / 100 + mdl_wait(1.0, 0.01))
    # Then the 300 admission slots fill: the excess 50/s is refused.
    assert samples[-1].in_flight_per_pod == pytest.approx(300)
    assert samples[-1].backlog == pytest.approx(300 - in_service)
    assert samples[-1].rejected_per_s == pytest.approx(50)
    assert summary.recovered_s is None and summary.capacity_s is None


def test_overlays_read_and_step_catches_up() -> None:
    hpa, keda = autoscalers(render("gpu")), autoscalers(render("gpu-keda"))
    assert set(hpa) == set(keda) == {"siglip-gateway", "siglip-triton"}
    # KEDA's ScaledObjects carry the base HPAs' behavior, bounds and targets.
    for name in hpa:
        assert keda[name].behavior == hpa[name].behavior
        assert (keda[name].min_replicas, keda[name].max_replicas) == (
            hpa[name].min_replicas, hpa[name].max_replicas)
        assert ({m.signal: m.target for m in keda[name].metrics}
                == {m.signal: m.target for m in hpa[name].metrics})
    # The colocated pod starts like a Triton pod, so it scales up like one.
    colocated = autoscalers(render("gpu-colocated"))["siglip-gateway"]
    assert colocated.behavior == hpa["siglip-triton"].behavior
    params = ServiceParams(gateway_cpu_s_per_call=0.0016, triton_calls_per_s=2000,
                           triton_batch_s=0.032, gateway=GatewayFacts(1, 2, 64))
    samples, summary = run(hpa, params, lambda t: 2000.0 if t < 0 else 6000.0,
                           warmup_s=300, duration_s=900)
    assert summary.capacity_s is not None and summary.recovered_s is not None
    assert summary.rejected > 0
    tri = hpa["siglip-triton"]
    assert all(tri.min_replicas <= s.replicas["siglip-triton"] <= tri.max_replicas
               for s in samples)
    end = samples[-1]
    assert end.capacity >= 6000 and math.isclose(end.rejected_per_s, 0)
