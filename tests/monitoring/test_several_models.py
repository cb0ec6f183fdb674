"""The monitoring of a deployment that serves two models, with SIGLIP_PREPROCESS_MODE=triton,
through a real Prometheus (tests/monitoring/conftest.py `two_model_run`, scraping the
stand-ins of tests/support/synthetic_metrics.py with the overlays' scrape configs and the
PrometheusRule loaded):

- every autoscaler reads Triton's queue time over the tower models only (the ensemble and
  decoder requests once diluted it several times) and calls in flight over all models;
- the recording rules sum over models and the per-model alerts go pending for the failing
  model only;
- every dashboard query returns data for each model and for both, the `model` variable lists
  both and filters the gateway panels, and the Triton panels show every Triton model.
"""

from __future__ import annotations

import math
import re

import pytest

from tests.monitoring.conftest import Scrape, TwoModelRun
from tests.monitoring.test_grafana_dashboard import (
    KUBE_STATE_METRICS,
    dashboard,
    panels,
    substitute,
)
from tests.support.monitoring_manifests import AutoscalerQuery
from tests.support.prometheus import Sample
from tests.support.synthetic_metrics import (
    GATEWAY_CALLS,
    MODELS,
    TRITON_MODELS,
    mean_queue_us,
    tower_models,
)

pytestmark = [pytest.mark.timeout(300)]

SELECTIONS: list[list[str] | None] = [None, [MODELS[0]], [MODELS[1]], list(MODELS)]


def _query(scrape: Scrape, expr: str, run: TwoModelRun) -> list[Sample]:
    return scrape.prometheus.query(expr, run.at)


def _values(scrape: Scrape, q: AutoscalerQuery, run: TwoModelRun) -> dict[str, float]:
    samples = _query(scrape, q.expr, run)
    if q.per_pod:
        return {s["metric"].get("pod", "<no pod>"): float(s["value"][1]) for s in samples}
    assert len(samples) <= 1, (q.source, samples)
    return {"": float(samples[0]["value"][1])} if samples else {}


# --- autoscaling ---------------------------------------------------------------------------------

def test_queue_time_signal_reads_the_tower_models(two_model_run: TwoModelRun) -> None:
    """The bug this guards: with the ensemble and the decoder in the denominator, the signal
    read the towers' queue time several times low, and Triton scaled out that much late."""
    towers = mean_queue_us(tower_models())
    diluted = mean_queue_us(TRITON_MODELS)
    assert diluted < towers / 2, "the scenario no longer tells the two readings apart"
    checked = 0
    for scrape in two_model_run.scrapes:
        for q in scrape.queries:
            if q.signal != "queue_time":
                continue
            values = _values(scrape, q, two_model_run)
            assert set(values) == (set(q.pods) if q.per_pod else {""}), (q.source, values)
            for pod, value in values.items():
                assert value == pytest.approx(towers, rel=0.02), \
                    f"{q.source} {pod}: {value:.0f} us, the towers' mean is {towers:.0f} us " \
                    f"(over every Triton model: {diluted:.0f} us)\nquery: {q.expr}"
            checked += 1
    assert checked


def test_in_flight_signal_is_per_pod_over_all_models(two_model_run: TwoModelRun) -> None:
    checked = 0
    for scrape in two_model_run.scrapes:
        for q in scrape.queries:
            if q.signal != "in_flight":
                continue
            # FakeGateway(in_flight=3 + i) per pod, whatever model the calls went to.
            expected = {pod: 3.0 + i for i, pod in enumerate(q.pods)}
            if not q.per_pod:
                expected = {"": sum(expected.values())}
            assert _values(scrape, q, two_model_run) == pytest.approx(expected), q.source
            checked += 1
    assert checked


# --- recording rules and alerts -------------------------------------------------------------------

def _rate(model: str, *, codes: set[str] | None = None, slow_over_s: float | None = None,
          methods: set[str] | None = None) -> float:
    return sum(c.per_s for c in GATEWAY_CALLS if c.model == model
               and (codes is None or c.code in codes)
               and (methods is None or c.method in methods)
               and (slow_over_s is None or c.seconds > slow_over_s))


BAD = {"INTERNAL", "UNKNOWN", "DATA_LOSS", "UNAVAILABLE", "DEADLINE_EXCEEDED",
       "RESOURCE_EXHAUSTED"}


def test_recording_rules_sum_over_models(two_model_run: TwoModelRun) -> None:
    bad = {m: _rate(m, codes=BAD) for m in MODELS}
    eligible = {m: _rate(m, codes=BAD | {"OK"}) for m in MODELS}
    for scrape in two_model_run.scrapes:
        ns = scrape.layout.namespace
        total = _query(scrape, "namespace:siglip_gateway_slo_errors:ratio_rate5m"
                               f'{{namespace="{ns}"}}', two_model_run)
        assert [float(s["value"][1]) for s in total] == pytest.approx(
            [sum(bad.values()) / sum(eligible.values())]), scrape.overlays
        per_model = {s["metric"]["model"]: float(s["value"][1]) for s in _query(
            scrape, f'namespace_model:siglip_gateway_slo_errors:ratio_rate5m{{namespace="{ns}"}}',
            two_model_run)}
        assert per_model == pytest.approx({m: bad[m] / eligible[m] for m in MODELS})
        queue = _query(scrape, "namespace:siglip_triton_queue_seconds_per_request:mean_rate5m",
                       two_model_run)
        assert [float(s["value"][1]) for s in queue] == pytest.approx(
            [mean_queue_us(tower_models()) / 1e6], rel=0.02)


def _pending(scrape: Scrape, alert: str, run: TwoModelRun) -> list[dict[str, str]]:
    return [s["metric"] for s in _query(scrape, f'ALERTS{{alertname="{alert}"}}', run)]


def test_alerts_name_the_failing_model_only(two_model_run: TwoModelRun) -> None:
    """Their `for` is minutes: within the run they are pending, with their final labels."""
    failing = [m for m in MODELS if _rate(m, codes=BAD) / _rate(m, codes=BAD | {"OK"}) > 0.072]
    slow = [(m, meth) for m in MODELS for meth in ("Embed", "Classify")
            if _rate(m, methods={meth}, slow_over_s=1.0) / (_rate(m, methods={meth}) or 1) > 0.144]
    saturated = [t.name for t in tower_models()
                 if t.queue_us > 4 * t.compute_us and t.queue_us > 50_000]
    assert failing == ["base"] and slow == [("base", "Embed")] and len(saturated) == 1, \
        "the scenario changed: revisit this test"
    for scrape in two_model_run.scrapes:
        errors = _pending(scrape, "SiglipErrorBudgetBurnFast", two_model_run)
        assert [a["model"] for a in errors] == failing, (scrape.overlays, errors)
        latency = _pending(scrape, "SiglipLatencyBudgetBurnFast", two_model_run)
        assert [(a["model"], a["method"]) for a in latency] == slow, (scrape.overlays, latency)
        queue = _pending(scrape, "SiglipTritonQueueTimeHigh", two_model_run)
        assert [a["model"] for a in queue] == saturated, (scrape.overlays, queue)


# --- the dashboard --------------------------------------------------------------------------------

def test_model_variable_lists_both_models(two_model_run: TwoModelRun) -> None:
    variable = {v["name"]: v for v in dashboard()["templating"]["list"]}["model"]
    m = re.fullmatch(r"label_values\((.+), (\w+)\)", variable["query"])
    assert m and m.group(2) == "model", variable["query"]
    for scrape in two_model_run.scrapes:
        match = substitute(m.group(1), scrape.layout.namespace)
        assert sorted(scrape.prometheus.label_values("model", match)) == sorted(MODELS)


def test_every_panel_query_returns_data_per_model(two_model_run: TwoModelRun) -> None:
    """Each gateway query with `$model` = each model alone, both, and All: data, and only
    the selected models' lines; each Triton query: a line per Triton model where it groups
    by model."""
    triton_models = {t.name for t in TRITON_MODELS}
    checked = 0
    for p in panels(dashboard()):
        for target in p["targets"]:
            where = f"{p['title']} / {target['refId']}"
            if KUBE_STATE_METRICS.search(target["expr"]):
                continue
            for scrape in two_model_run.scrapes:
                for selected in SELECTIONS:
                    expr = substitute(target["expr"], scrape.layout.namespace, selected)
                    samples = [s for s in _query(scrape, expr, two_model_run)
                               if math.isfinite(float(s["value"][1]))]
                    assert samples, f"{where}: no data for models {selected} " \
                                    f"({scrape.overlays})\nquery: {expr}"
                    shown = {s["metric"].get("model") for s in samples}
                    if "{{model}}" not in target.get("legendFormat", ""):
                        continue
                    if "siglip_gateway_" in target["expr"]:
                        expected = set(selected or MODELS)
                        if "code!=" in target["expr"]:  # only models with errors have lines
                            expected = {m for m in expected if _rate(m) > _rate(m, codes={"OK"})}
                        assert shown == expected, f"{where}: lines for models {shown} with " \
                            f"$model = {selected}\nquery: {expr}"
                    elif "siglip_(vision|text)" not in target["expr"]:
                        assert shown == triton_models, (where, shown)
                    checked += 1
    assert checked
