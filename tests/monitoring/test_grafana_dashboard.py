"""k8s/monitoring/grafana-dashboard.json: its panels cover what operators need, and every
panel's query, with Grafana's variables filled in, returns data from the real Prometheus of
the monitored run (tests/monitoring/conftest.py), for every scrape layout of the overlays.

Not checked against data: the replica counts from kube-state-metrics (KUBE_STATE_METRICS),
which this test does not run; the panel's other query (pods up per container, from our own
scrapes) is.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.metrics import Metrics
from gateway.model_specs import default_name
from tests.monitoring.conftest import MonitoredRun
from tests.support.k8s_render import K8S
from tests.support.monitoring_manifests import selectors
from tests.support.prometheus import explain_missing

# The timeout: see test_autoscaling_promql.py (either module may set the monitored run up).
pytestmark = [pytest.mark.timeout(480)]
# Only the tests that query the monitored run need Triton (test_dashboard_shape does not).
monitored = pytest.mark.triton
aio = pytest.mark.asyncio(loop_scope="session")

DASHBOARD = K8S / "monitoring" / "grafana-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
# Metrics from kube-state-metrics, which is not part of the test: their queries are only
# checked to reference nothing else (so the exemption cannot hide one of our series).
KUBE_STATE_METRICS = re.compile(r"kube_[a-z_]+")
# Grafana's built-in interval variables, as a dashboard on the test's 1 s scrapes gets them
# (`$__rate_interval` is at least 4 scrape intervals).
BUILT_INS = {"__rate_interval": "10s", "__interval": "2s", "__range": "1m"}
# What the dashboard must show (issue 14): a metric each topic's queries must use.
TOPICS = {
    "request rate by method and code": "siglip_gateway_requests_total",
    "errors": 'code!="OK"',
    "latency percentiles": "histogram_quantile(0.99, sum by (le, model, method) "
                           "(rate(siglip_gateway_request_duration_seconds_bucket",
    "stage durations": "siglip_gateway_stage_duration_seconds_bucket",
    "in flight": "siglip_gateway_requests_in_flight",
    "cache hit ratio": "siglip_gateway_text_cache_hits_total",
    "Triton queue time": "nv_inference_queue_duration_us",
    "Triton compute time": "nv_inference_compute_infer_duration_us",
    "batch sizes": "nv_inference_exec_count",
    "replicas": "up{",
}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel that is not a row, including those inside collapsed rows."""
    for p in dash["panels"]:
        if p["type"] == "row":
            yield from p.get("panels", [])
        else:
            yield p


def targets() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p['title']} / {t['refId']}", t) for p in panels(dashboard())
            for t in p["targets"]]


def model_value(selected: list[str] | None, variable: dict[str, Any]) -> str:
    """The `$model` text Grafana puts into a Prometheus query: the variable's allValue for
    "All" (None), else each value regex-escaped, several joined as `(a|b)`."""
    if selected is None:
        return str(variable["allValue"])
    escaped = [re.sub(r"([\\.^$*+?()\[\]{}|])", r"\\\1", v) for v in selected]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def substitute(expr: str, namespace: str, model: list[str] | None = None) -> str:
    """`expr` with the dashboard's variables filled in: `$model` as Grafana formats the
    selected models (None: All)."""
    variable = {v["name"]: v for v in dashboard()["templating"]["list"]}["model"]
    values = {**BUILT_INS, "namespace": namespace, "model": model_value(model, variable)}

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        assert name in values, f"Grafana variable ${name} unknown to this test: {expr}"
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", one, expr)


def test_dashboard_shape() -> None:
    dash = dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["namespace"]["datasource"] == DATASOURCE
    ids = [p["id"] for p in dash["panels"]] + [
        q["id"] for p in dash["panels"] if p["type"] == "row" for q in p.get("panels", [])]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in panels(dash):
        assert p["datasource"] == DATASOURCE, p["title"]
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE and t["expr"].strip(), (p["title"], t)
    exprs = " ".join(t["expr"] for _, t in targets())
    for topic, needle in TOPICS.items():
        assert needle in exprs, f"no panel for {topic} (no query uses {needle})"


def per_model_series() -> set[str]:
    """The gateway's series that carry the `model` label (a Metrics after one request: the
    request counter's children appear with their first increment)."""
    metrics = Metrics()
    metrics.request_done("Embed", "grpc", "OK", 0.1, metrics.models[0])
    return {s.name for family in metrics.registry.collect() for s in family.samples
            if "model" in s.labels}


def test_model_variable_filters_every_gateway_query() -> None:
    """`model`: several models can be picked, All by default; All matches any value (also
    series from before the label existed). Every selector of a per-model gateway series
    filters on it; Triton's series are left whole (their `model` is the Triton model)."""
    variable = {v["name"]: v for v in dashboard()["templating"]["list"]}["model"]
    assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"
    assert variable["current"]["value"] == ["$__all"]
    assert variable["datasource"] == DATASOURCE
    assert "namespace=\"$namespace\"" in variable["query"]
    per_model = per_model_series()
    assert "siglip_gateway_requests_total" in per_model
    filtered = 0
    for where, target in targets():
        for selector in selectors(target["expr"]):
            name = selector.partition("{")[0]
            if name in per_model:
                assert 'model=~"$model"' in selector, f"{where}: {selector}"
                filtered += 1
            elif name.startswith("nv_inference_"):
                assert "$model" not in selector, f"{where}: {selector}"
    assert filtered


@monitored
@aio
async def test_namespace_variable_lists_the_namespace(monitored_run: MonitoredRun) -> None:
    query = {v["name"]: v for v in dashboard()["templating"]["list"]}["namespace"]["query"]
    m = re.fullmatch(r"label_values\((\w+), (\w+)\)", query)
    assert m, f"variable query this test cannot evaluate: {query}"
    for scrape in monitored_run.scrapes:
        values = scrape.prometheus.label_values(m.group(2), m.group(1))
        assert scrape.layout.namespace in values, (query, values)


@monitored
@aio
async def test_model_variable_lists_the_served_model(monitored_run: MonitoredRun,
                                                     tiny_checkpoint: Path) -> None:
    """The real gateways serve one model, named after its checkpoint's directory."""
    query = {v["name"]: v for v in dashboard()["templating"]["list"]}["model"]["query"]
    m = re.fullmatch(r"label_values\((.+), model\)", query)
    assert m, f"variable query this test cannot evaluate: {query}"
    for scrape in monitored_run.scrapes:
        values = scrape.prometheus.label_values(
            "model", substitute(m.group(1), scrape.layout.namespace))
        assert values == [default_name(str(tiny_checkpoint))], (query, values)


@monitored
@aio
async def test_every_panel_query_returns_data(monitored_run: MonitoredRun) -> None:
    run = monitored_run
    checked = 0
    for where, target in targets():
        metrics = set(re.findall(r"\b([a-z_:][a-z0-9_:]*)\{", target["expr"]))
        if any(KUBE_STATE_METRICS.fullmatch(m) for m in metrics):
            assert all(KUBE_STATE_METRICS.fullmatch(m) for m in metrics), \
                f"{where} mixes kube-state-metrics with other series: {target['expr']}"
            continue
        for scrape in run.scrapes:
            expr = substitute(target["expr"], scrape.layout.namespace)
            samples = scrape.prometheus.query(expr, run.loaded_at)
            finite = [s for s in samples if math.isfinite(float(s["value"][1]))]
            if not finite:
                missing = [f for f in (explain_missing(scrape.prometheus, s, run.started_at,
                                                       run.after_at) for s in selectors(expr))
                           if f]
                pytest.fail(f"panel {where}: no data ({scrape.overlays}, {len(samples)} "
                            f"samples, none finite)\nquery: {expr}\n" + "\n".join(missing))
            checked += 1
    assert checked
