"""The HorizontalPodAutoscaler controller's arithmetic, as kube-controller-manager does it.

Follows pkg/controller/podautoscaler (replica_calculator.go, horizontal.go) of Kubernetes
1.30: per metric a proposal from the usage ratio with the 10 % tolerance and the special
cases for pods without metrics (missing) and not-ready pods (CPU only); the largest proposal
wins; then the stabilization windows (scale up: the lowest recommendation of the window,
scale down: the highest) and the rate limits of the behavior policies over their periods
(selectPolicy Max/Min/Disabled); then min/max replicas. Time is in seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from bench.hpa_sim.spec import Autoscaler, Rules

TOLERANCE = 0.1
SYNC_PERIOD_S = 15


def plain_replicas(current: int, values: list[float], target: float, *, unready: int = 0,
                   missing: int = 0, tolerance: float = TOLERANCE) -> int | None:
    """Proposal of a Resource or Pods metric (GetResourceReplicas / calcPlainMetricReplicas).

    ``values``: one per ready pod that reports the metric; ``unready``: pods left out as not
    ready (CPU only); ``missing``: running pods without a value. None: no value at all (the
    HPA skips the metric).
    """
    if not values:
        return None
    ratio = sum(values) / len(values) / target
    up_with_unready = unready > 0 and ratio > 1.0
    if not up_with_unready and missing == 0:
        if abs(1.0 - ratio) <= tolerance:
            return current
        return math.ceil(ratio * len(values))
    # Missing pods count at the target when scaling down, at 0 when scaling up; unready pods
    # at 0 when scaling up. This damps a scale-up while new pods are still starting.
    filled = list(values) + [target if ratio < 1.0 else 0.0] * missing
    if up_with_unready:
        filled += [0.0] * unready
    new_ratio = sum(filled) / len(filled) / target
    if (abs(1.0 - new_ratio) <= tolerance or (ratio < 1.0 < new_ratio)
            or (ratio > 1.0 > new_ratio)):
        return current
    proposal = math.ceil(new_ratio * len(filled))
    if (new_ratio < 1.0 and proposal > current) or (new_ratio > 1.0 and proposal < current):
        return current
    return proposal


def external_average_replicas(current: int, total: float, target_per_pod: float,
                              tolerance: float = TOLERANCE) -> int:
    """External metric with an AverageValue target (KEDA AverageValue): total / target."""
    ratio = total / (target_per_pod * current)
    if abs(1.0 - ratio) <= tolerance:
        return current
    return math.ceil(total / target_per_pod)


def external_value_replicas(current: int, value: float, target: float, ready: int,
                            tolerance: float = TOLERANCE) -> int:
    """External metric with a Value target (KEDA Value): ratio times the ready pods."""
    ratio = value / target
    if abs(1.0 - ratio) <= tolerance:
        return current
    return math.ceil(ratio * ready)


def _change_in_period(events: list[tuple[float, int]], now: float, period_s: int) -> int:
    return sum(change for t, change in events if t > now - period_s)


def scale_up_limit(current: int, rules: Rules, now: float, up_events: list[tuple[float, int]],
                   down_events: list[tuple[float, int]]) -> int:
    if rules.select == "Disabled":
        return current
    pick = min if rules.select == "Min" else max
    result: int | None = None
    for p in rules.policies:
        start = (current - _change_in_period(up_events, now, p.period_s)
                 + _change_in_period(down_events, now, p.period_s))
        proposed = (start + p.value if p.kind == "Pods"
                    else math.ceil(start * (1 + p.value / 100)))
        result = proposed if result is None else pick(result, proposed)
    assert result is not None
    return result


def scale_down_limit(current: int, rules: Rules, now: float,
                     up_events: list[tuple[float, int]],
                     down_events: list[tuple[float, int]]) -> int:
    if rules.select == "Disabled":
        return current
    pick = max if rules.select == "Min" else min
    result: int | None = None
    for p in rules.policies:
        start = (current - _change_in_period(up_events, now, p.period_s)
                 + _change_in_period(down_events, now, p.period_s))
        proposed = (start - p.value if p.kind == "Pods"
                    else int(start * (1 - p.value / 100)))
        result = proposed if result is None else pick(result, proposed)
    assert result is not None
    return result


@dataclass
class HpaController:
    """One HPA's memory between syncs: recommendations and scale events."""

    spec: Autoscaler
    recommendations: list[tuple[float, int]] = field(default_factory=list)
    up_events: list[tuple[float, int]] = field(default_factory=list)
    down_events: list[tuple[float, int]] = field(default_factory=list)
    started: bool = False

    def decide(self, now: float, current: int, proposals: list[int | None]) -> int:
        """The new replica count from this sync's per-metric proposals."""
        valid = [p for p in proposals if p is not None]
        if not valid:
            return current
        b = self.spec.behavior
        if not self.started:
            self.started = True
            if b.down.window_s > 0:
                self.recommendations.append((now, current))
        desired = max(valid)
        up_rec, down_rec = desired, desired
        for t, rec in self.recommendations:
            if t > now - b.up.window_s:
                up_rec = min(up_rec, rec)
            if t > now - b.down.window_s:
                down_rec = max(down_rec, rec)
        stabilized = min(max(current, up_rec), down_rec)
        keep = max(b.up.window_s, b.down.window_s)
        self.recommendations = [(t, r) for t, r in self.recommendations if t > now - keep]
        self.recommendations.append((now, desired))

        new = stabilized
        if stabilized > current:
            limit = max(scale_up_limit(current, b.up, now, self.up_events, self.down_events),
                        current)
            new = min(stabilized, limit, self.spec.max_replicas)
        elif stabilized < current:
            limit = min(scale_down_limit(current, b.down, now, self.up_events,
                                         self.down_events), current)
            new = max(stabilized, limit, self.spec.min_replicas)
        new = min(max(new, self.spec.min_replicas), self.spec.max_replicas)
        if new > current:
            self.up_events.append((now, new - current))
        elif new < current:
            self.down_events.append((now, current - new))
        longest = max(p.period_s for r in (b.up, b.down) for p in r.policies)
        self.up_events = [(t, c) for t, c in self.up_events if t > now - longest]
        self.down_events = [(t, c) for t, c in self.down_events if t > now - longest]
        return new
