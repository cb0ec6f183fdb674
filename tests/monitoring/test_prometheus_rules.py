"""The alerting and recording rules of k8s/monitoring/prometheus-rules.yaml, through promtool.

promtool reads plain rule files, so the PrometheusRule's ``spec`` is written out next to a
copy of each unit-test file in tests/monitoring/rules/ (which name it
``prometheus-rules.rules.yaml``); ``promtool check rules`` must accept it and every
``promtool test rules`` case must pass. A failure shows promtool's own output.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from gateway.metrics import Metrics
from tests.support.binaries import require_binary
from tests.support.monitoring_manifests import prometheus_rule, write_rule_file

REPO = Path(__file__).resolve().parents[2]
TESTS = sorted((Path(__file__).parent / "rules").glob("*.test.yaml"))


def promtool(*args: str) -> None:
    proc = subprocess.run([require_binary("promtool"), *args], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


def alert_names() -> set[str]:
    return {r["alert"] for g in prometheus_rule()["spec"]["groups"] for r in g["rules"]
            if "alert" in r}


def test_is_a_prometheus_rule() -> None:
    doc = prometheus_rule()
    assert (doc["apiVersion"], doc["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    for group in doc["spec"]["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
                assert "Runbook: docs/monitoring.md" in rule["annotations"]["description"]


def exposed_series_names() -> set[str]:
    """The series names the gateway's registry exposes, children created or not."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"),
                "gauge": ("",)}
    return {family.name + suffix for family in Metrics().registry.collect()
            for suffix in suffixes.get(family.type, ("",))}


def test_rules_read_series_the_gateway_exposes() -> None:
    exprs = " ".join(r["expr"] for g in prometheus_rule()["spec"]["groups"] for r in g["rules"])
    # Raw series only: recording-rule names (level:metric:ops) have colons around the name.
    used = set(re.findall(r"(?<![:\w])siglip_gateway_\w+(?![\w:])", exprs))
    assert used, "no gateway series found in the rules"
    assert used <= exposed_series_names(), used - exposed_series_names()


def test_promtool_check_rules(tmp_path: Path) -> None:
    promtool("check", "rules", str(write_rule_file(tmp_path)))


@pytest.mark.parametrize("test_file", TESTS, ids=[p.name for p in TESTS])
def test_promtool_unit_tests(test_file: Path, tmp_path: Path) -> None:
    write_rule_file(tmp_path)
    shutil.copy(test_file, tmp_path / test_file.name)
    promtool("test", "rules", str(tmp_path / test_file.name))


def test_every_alert_has_unit_tests_firing_and_not_firing() -> None:
    fired: set[str] = set()
    silent: set[str] = set()
    for path in TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    assert alert_names() - fired == set(), "alerts never shown firing"
    assert alert_names() - silent == set(), "alerts never shown not firing"


def test_docs_have_a_runbook_entry_per_alert() -> None:
    text = (REPO / "docs" / "monitoring.md").read_text()
    for name in alert_names():
        # Fast/Slow pairs share one entry.
        assert name.removesuffix("Fast").removesuffix("Slow") in text, name
