"""What the Kubernetes manifests ask of Prometheus, read from the rendered overlays and from
k8s/monitoring/: the scrape configs their PodMonitors make the Prometheus Operator generate,
and every PromQL expression that the autoscalers evaluate (prometheus-adapter rules as the
adapter renders them for an HPA's Pods metric, KEDA triggers' queries as written).

Test pods stand in for a Deployment's pods: named like the ReplicaSet's pods
(`<deployment>-<hash>-<suffix>`), each container's metrics port served by a local process
that the caller maps (`AddressOf`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.support.k8s_render import (
    K8S,
    Obj,
    adapter_rules,
    all_containers,
    of_kind,
    pod_labels,
    selects,
)

# (container name, index of the pod in its Deployment) -> "127.0.0.1:port" of the process
# standing in for that container's metrics port.
AddressOf = Callable[[str, int], str]

_POD_HASH = "6d4cf56db6"
_POD_SUFFIXES = ("x7k2p", "q9m4t", "b3n8w", "h5r2z")

# One vector selector: a metric name followed by its label matchers.
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^{}]*)\}")
_WINDOW = re.compile(r"\[(\d+)([smh])\]")
_SECONDS = {"s": 1, "m": 60, "h": 3600}


# --- test pods and scrape configs -------------------------------------------------------------

def pod_names(deployment: str, count: int) -> list[str]:
    return [f"{deployment}-{_POD_HASH}-{s}" for s in _POD_SUFFIXES[:count]]


@dataclass
class Layout:
    """One overlay's pods and scrape configs, as a real cluster would have them."""

    overlay: str
    namespace: str
    pods: dict[str, list[str]]  # Deployment -> its test pods
    scrape_configs: list[dict[str, Any]] = field(default_factory=list)

    def key(self) -> str:
        """Equal for overlays that a single Prometheus can stand for."""
        return json.dumps([self.namespace, self.scrape_configs], sort_keys=True)


def _check_supported(monitor: Obj) -> None:
    spec = monitor["spec"]
    unsupported = {"jobLabel", "podTargetLabels", "namespaceSelector"} & set(spec)
    assert not unsupported, f"PodMonitor {monitor['metadata']['name']}: {unsupported}: extend " \
                            "tests/support/monitoring_manifests.py to model them"
    for ep in spec["podMetricsEndpoints"]:
        extra = set(ep) - {"port", "path", "interval", "scrapeTimeout"}
        assert not extra, f"PodMonitor {monitor['metadata']['name']}: endpoint fields {extra}: " \
                          "extend tests/support/monitoring_manifests.py to model them"


def layout(overlay: str, docs: list[Obj], pods_per_deployment: dict[str, int],
           address_of: AddressOf) -> Layout:
    """The scrape configs the Prometheus Operator generates from the overlay's PodMonitors
    (default relabelling: labels namespace, pod, container, endpoint, job="<ns>/<monitor>"),
    with static targets in place of Kubernetes service discovery. Only the scrape interval
    differs: the caller's global one (seconds, not the manifests' 15 s)."""
    assert not of_kind(docs, "ServiceMonitor"), "ServiceMonitor: extend this module to model it"
    deployments = of_kind(docs, "Deployment")
    namespaces = {d["metadata"]["namespace"] for d in deployments}
    assert len(namespaces) == 1, f"{overlay}: Deployments in namespaces {namespaces}"
    (namespace,) = namespaces
    pods = {d["metadata"]["name"]: pod_names(d["metadata"]["name"],
                                                   pods_per_deployment[d["metadata"]["name"]])
            for d in deployments}
    result = Layout(overlay, namespace, pods)
    for monitor in of_kind(docs, "PodMonitor"):
        _check_supported(monitor)
        name = monitor["metadata"]["name"]
        for i, ep in enumerate(monitor["spec"]["podMetricsEndpoints"]):
            groups = []
            for dep in deployments:
                if not selects(monitor["spec"]["selector"], pod_labels(dep)):
                    continue
                for c in all_containers(dep):
                    if not any(p.get("name") == ep["port"] for p in c.get("ports", [])):
                        continue
                    for index, pod in enumerate(pods[dep["metadata"]["name"]]):
                        groups.append({"targets": [address_of(c["name"], index)], "labels": {
                            "namespace": namespace, "pod": pod, "container": c["name"],
                            "endpoint": ep["port"], "job": f"{namespace}/{name}"}})
            assert groups, f"{overlay}: PodMonitor {name} port {ep['port']!r} selects no " \
                           "container port"
            result.scrape_configs.append({
                "job_name": f"podMonitor/{namespace}/{name}/{i}",
                "metrics_path": ep.get("path", "/metrics"), "honor_labels": False,
                "static_configs": groups})
    return result


# --- the autoscalers' expressions ---------------------------------------------------------------

@dataclass(frozen=True)
class AutoscalerQuery:
    """One expression an autoscaler evaluates, and the pods whose series it must cover."""

    source: str  # where it comes from, for messages
    expr: str
    pods: tuple[str, ...]  # the target Deployment's pods
    per_pod: bool  # a value per pod (adapter, grouped by pod) or one value (KEDA's sum)
    series_query: str | None = None  # the adapter rule's seriesQuery, else None

    @property
    def signal(self) -> str:
        if "nv_inference_queue_duration_us" in self.expr:
            return "queue_time"
        if "siglip_gateway_requests_in_flight" in self.expr:
            return "in_flight"
        return "other"


_ACTION = re.compile(r"<<-?\s*(.*?)\s*-?>>")
_SUPPORTED_ACTIONS = (".Series", ".LabelMatchers", ".GroupBy")


def render_adapter_query(template: str, series: str, namespace: str, pods: list[str]) -> str:
    """A metricsQuery as prometheus-adapter renders it for a Pods metric of an HPA in
    `namespace` whose target has `pods` (its naming.metricsQuery.Build): LabelMatchers
    `namespace="ns",pod=~"a|b"` (`pod="a"` for one pod), GroupBy `pod`, Series the
    discovered series name. Supports only those three actions, which is all our rules
    use; any other Go-template action (`.LabelValuesByName`, `.GroupBySlice`, range, if,
    pipelines) fails here rather than being rendered wrongly."""
    pod_matcher = f'pod="{pods[0]}"' if len(pods) == 1 else f'pod=~"{"|".join(pods)}"'
    values = {".Series": series, ".LabelMatchers": f'namespace="{namespace}",{pod_matcher}',
              ".GroupBy": "pod"}

    def substitute(m: re.Match[str]) -> str:
        action = m.group(1)
        assert action in _SUPPORTED_ACTIONS, \
            f"adapter template action <<{action}>> not supported by this renderer: {template}"
        return values[action]

    return _ACTION.sub(substitute, template)


def adapter_metric_name(rule: Obj, series: str) -> str | None:
    """The custom metric name a rule serves for a series (name.matches / name.as, Go's $1)."""
    name = rule.get("name", {})
    pattern = name.get("matches", "")
    if not re.search(pattern, series):
        return None
    replacement = re.sub(r"\$\{?(\d+)\}?", r"\\g<\1>", name.get("as", "")) or r"\g<0>"
    return re.sub(pattern, replacement, series, count=1) if name.get("as") else series


def series_name(series_query: str) -> str:
    m = _SELECTOR.search(series_query)
    assert m, f"seriesQuery without a metric name: {series_query}"
    return m.group(1)


def autoscaler_queries(lay: Layout, docs: list[Obj]) -> list[AutoscalerQuery]:
    """Every Prometheus expression the overlay's autoscalers evaluate."""
    found: list[AutoscalerQuery] = []
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        target = hpa["spec"]["scaleTargetRef"]["name"]
        for m in hpa["spec"]["metrics"]:
            if m["type"] != "Pods":
                continue
            metric = m["pods"]["metric"]
            assert "selector" not in metric, "HPA metric selector: extend the adapter renderer"
            served = [(r, series_name(r["seriesQuery"])) for r in adapter_rules()]
            rules = [(r, s) for r, s in served if adapter_metric_name(r, s) == metric["name"]]
            assert len(rules) == 1, \
                f"{lay.overlay}: HPA {hpa['metadata']['name']} metric {metric['name']}: " \
                f"{len(rules)} adapter rules serve it"
            (rule, series), = rules
            found.append(AutoscalerQuery(
                f"{lay.overlay}: HPA {hpa['metadata']['name']} Pods metric {metric['name']} "
                "(prometheus-adapter rule)",
                render_adapter_query(rule["metricsQuery"], series, lay.namespace,
                                     lay.pods[target]),
                tuple(lay.pods[target]), per_pod=True, series_query=rule["seriesQuery"]))
    for so in of_kind(docs, "ScaledObject"):
        target = so["spec"]["scaleTargetRef"]["name"]
        for i, t in enumerate(so["spec"]["triggers"]):
            if t["type"] == "prometheus":
                found.append(AutoscalerQuery(
                    f"{lay.overlay}: ScaledObject {so['metadata']['name']} trigger {i} (KEDA)",
                    t["metadata"]["query"], tuple(lay.pods[target]), per_pod=False))
    return found


def selectors(expr: str) -> list[str]:
    """The vector selectors (`name{matchers}`) in an expression, each once, in order."""
    seen: list[str] = []
    for m in _SELECTOR.finditer(expr):
        selector = f"{m.group(1)}{{{m.group(2)}}}"
        if selector not in seen:
            seen.append(selector)
    return seen


def longest_window_s(exprs: list[str]) -> int:
    return max((int(n) * _SECONDS[u] for e in exprs for n, u in _WINDOW.findall(e)), default=0)


# --- the PrometheusRule -------------------------------------------------------------------------

RULES = K8S / "monitoring" / "prometheus-rules.yaml"
RULE_FILE_NAME = "prometheus-rules.rules.yaml"


def prometheus_rule() -> dict[str, Any]:
    (doc,) = [d for d in yaml.safe_load_all(RULES.read_text()) if d]
    return doc


def write_rule_file(directory: Path) -> Path:
    """The PrometheusRule's spec as a plain rule file (what promtool and a Prometheus that
    is not run by the operator read), written into `directory`."""
    path = directory / RULE_FILE_NAME
    path.write_text(yaml.safe_dump(prometheus_rule()["spec"], sort_keys=False))
    return path
