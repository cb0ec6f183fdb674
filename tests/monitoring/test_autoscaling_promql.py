"""The autoscalers' PromQL against a real Prometheus scraping the real service.

Every expression is read from the manifests (prometheus-adapter rules rendered for each
overlay's HPA Pods metrics, KEDA triggers' queries as written), evaluated through the HTTP API
on scrapes labelled as the PodMonitors label them (tests/monitoring/conftest.py): each returns
a value for every pod of its target, the series it names exist, and the queue-time signal
rises under load and falls when the load stops.
"""

from __future__ import annotations

import math
import re

import pytest

from tests.monitoring.conftest import MonitoredRun, Scrape
from tests.support.monitoring_manifests import AutoscalerQuery, selectors
from tests.support.prometheus import explain_missing

# The first test sets up the monitored run (~100 s), and the session's Triton (up to 270 s)
# when no earlier test started it: more than the default 300 s per test.
pytestmark = [pytest.mark.triton, pytest.mark.asyncio(loop_scope="session"),
              pytest.mark.timeout(480)]


def _missing(scrape: Scrape, expr: str, run: MonitoredRun) -> list[str]:
    found = (explain_missing(scrape.prometheus, s, run.started_at, run.after_at)
             for s in selectors(expr))
    return [f for f in found if f]


def _values(scrape: Scrape, q: AutoscalerQuery, at: float) -> dict[str, float]:
    """The query's value per pod (adapter) or under "" (KEDA's single value)."""
    samples = scrape.prometheus.query(q.expr, at)
    if q.per_pod:
        return {s["metric"].get("pod", "<no pod label>"): float(s["value"][1]) for s in samples}
    assert len(samples) <= 1, f"{q.source}: {len(samples)} series, KEDA needs one: {q.expr}"
    return {"": float(samples[0]["value"][1])} if samples else {}


def _all(run: MonitoredRun) -> list[tuple[Scrape, AutoscalerQuery]]:
    pairs = [(s, q) for s in run.scrapes for q in s.queries]
    assert {q.signal for _, q in pairs} >= {"queue_time", "in_flight"}, \
        "the manifests no longer scale on queue time and calls in flight: revisit this test"
    return pairs


async def test_series_queries_find_every_pod(monitored_run: MonitoredRun) -> None:
    """The adapter discovers a metric by its rule's seriesQuery and maps each series to a pod
    through its namespace and pod labels: every target pod must have such a series."""
    for scrape, q in _all(monitored_run):
        if q.series_query is None:
            continue
        series = scrape.prometheus.series(q.series_query, monitored_run.started_at,
                                          monitored_run.after_at)
        namespaces = {s.get("namespace") for s in series}
        assert namespaces == {scrape.layout.namespace}, (q.source, q.series_query, namespaces)
        assert {s.get("pod") for s in series} >= set(q.pods), (q.source, q.series_query)


async def test_every_query_returns_a_value_per_pod(monitored_run: MonitoredRun) -> None:
    run = monitored_run
    for scrape, q in _all(run):
        missing = _missing(scrape, q.expr, run)
        assert not missing, f"{q.source} needs series the service does not export:\n  " + \
            "\n  ".join(missing) + f"\nquery: {q.expr}"
        for at in (run.idle_at, run.loaded_at, run.after_at):
            values = _values(scrape, q, at)
            expected = set(q.pods) if q.per_pod else {""}
            assert set(values) == expected, f"{q.source}: values for {sorted(values)}, " \
                f"expected {sorted(expected)}\nquery: {q.expr}"
            assert all(math.isfinite(v) and v >= 0 for v in values.values()), (q.source, values)


async def test_keda_queries_cover_exactly_their_pods(monitored_run: MonitoredRun) -> None:
    """KEDA sums over pods itself: each selector in its query must match the target
    Deployment's pods, all of them, and no other pod's series."""
    run = monitored_run
    for scrape, q in _all(run):
        if q.per_pod:
            continue
        for selector in selectors(q.expr):
            pods = {s.get("pod") for s in scrape.prometheus.series(selector, run.started_at,
                                                                   run.after_at)}
            assert pods == set(q.pods), f"{q.source}: {selector} matches pods {sorted(pods)}"


async def test_signals_rise_under_load_and_fall_after(monitored_run: MonitoredRun) -> None:
    run = monitored_run
    report = []
    for scrape, q in _all(run):
        if q.signal == "other":
            continue
        idle, loaded, after = (_values(scrape, q, at)
                               for at in (run.idle_at, run.loaded_at, run.after_at))
        report.append(f"{q.source}: idle {idle} loaded {loaded} after {after}")
        expected = set(q.pods) if q.per_pod else {""}
        assert set(idle) == set(loaded) == set(after) == expected, \
            f"{q.source}: values missing\n" + "\n".join(report)
        for pod in expected:
            assert loaded[pod] > idle[pod], f"{q.source}: did not rise under load " \
                f"({idle[pod]} -> {loaded[pod]}, calls {run.calls})\n" + "\n".join(report)
            assert after[pod] < loaded[pod] / 2, f"{q.source}: did not fall after the load " \
                f"({loaded[pod]} -> {after[pod]})\n" + "\n".join(report)
    print("\n".join(report))


async def test_queue_time_is_in_microseconds(monitored_run: MonitoredRun) -> None:
    """The HPA targets are microseconds (20000 = 20 ms). A request's time in Triton's queue
    is part of the gateway's Triton round trip for it, so the mean queue time cannot exceed
    the mean round trip by much; a nanosecond-exporting Triton would, 1000-fold."""
    run = monitored_run
    for scrape, q in _all(run):
        if q.signal != "queue_time":
            continue
        window = re.search(r"\[(\w+)\]", q.expr)
        assert window, q.expr
        round_trip_s = scrape.prometheus.query(
            f'sum(rate(siglip_gateway_stage_duration_seconds_sum{{stage=~"triton_.*"}}'
            f'[{window.group(1)}])) / sum(rate(siglip_gateway_stage_duration_seconds_count'
            f'{{stage=~"triton_.*"}}[{window.group(1)}]))', run.loaded_at)
        assert round_trip_s, "no gateway round-trip times scraped"
        bound_us = 2 * float(round_trip_s[0]["value"][1]) * 1e6
        for pod, value in _values(scrape, q, run.loaded_at).items():
            assert 0 < value <= bound_us, f"{q.source} {pod}: {value} us queued per request, " \
                f"mean gateway round trip to Triton {bound_us / 2:.0f} us"
