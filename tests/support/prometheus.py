"""A real Prometheus server for tests: the Debian package's binary, a temporary config and
data directory, a free port on the loopback, and the few HTTP API calls the tests make.

Nothing here knows about the manifests: the caller passes the scrape configs
(tests/support/monitoring_manifests.py derives them from the PodMonitors).
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import yaml

Sample = dict[str, Any]  # {"metric": {label: value}, "value": [t, "v"]}


class PromQLError(AssertionError):
    """Prometheus rejected a query (syntax, type) or answered with an error."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrometheusServer:
    """One `prometheus` process; `start()` returns once it answers /-/ready."""

    def __init__(self, binary: str, workdir: Path, scrape_configs: list[dict[str, Any]], *,
                 scrape_interval_s: float = 1.0, rule_files: list[Path] | None = None) -> None:
        """`rule_files`: plain rule files to load, evaluated at the scrape interval."""
        self.binary = binary
        self.workdir = workdir
        interval = f"{scrape_interval_s:g}s"
        self.config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval,
                       "evaluation_interval": interval},
            "scrape_configs": scrape_configs,
        }
        if rule_files:
            self.config["rule_files"] = [str(f) for f in rule_files]
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout_s: float = 30.0) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config, sort_keys=False))
        # The port is free when chosen and may be taken before Prometheus binds it: retry.
        for _ in range(3):
            self.port = _free_port()
            with open(self.workdir / "prometheus.log", "wb") as log:
                self.proc = subprocess.Popen(
                    [self.binary, f"--config.file={config}",
                     f"--storage.tsdb.path={self.workdir / 'data'}",
                     f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                    stdout=log, stderr=subprocess.STDOUT)
            if self._wait_ready(timeout_s):
                return self
            if "address already in use" not in self.log():
                break
        self.stop()
        raise AssertionError(f"prometheus did not become ready:\n{self.log()}")

    def _wait_ready(self, timeout_s: float) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    # -- HTTP API ------------------------------------------------------------------------
    def _get(self, path: str, params: list[tuple[str, str]]) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PromQLError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[Sample]:
        """An instant query (at time `at`, default now); the result as a list of samples."""
        params = [("query", expr)] + ([("time", f"{at:.3f}")] if at is not None else [])
        data = self._get("/api/v1/query", params)
        if data["resultType"] == "scalar":
            return [{"metric": {}, "value": data["result"]}]
        if data["resultType"] != "vector":
            raise PromQLError(f"{expr!r}: result type {data['resultType']}, not a vector")
        return list(data["result"])

    def series(self, match: str, start: float | None = None,
               end: float | None = None) -> list[dict[str, str]]:
        params = [("match[]", match)]
        if start is not None:
            params.append(("start", f"{start:.3f}"))
        if end is not None:
            params.append(("end", f"{end:.3f}"))
        return list(self._get("/api/v1/series", params))

    def label_values(self, label: str, match: str) -> list[str]:
        return list(self._get(f"/api/v1/label/{label}/values", [("match[]", match)]))

    def targets(self) -> list[dict[str, Any]]:
        return list(self._get("/api/v1/targets", [("state", "active")])["activeTargets"])

    def wait_all_up(self, timeout_s: float = 20.0) -> None:
        """Until every target has been scraped successfully at least once."""
        deadline = time.monotonic() + timeout_s
        while True:
            targets = self.targets()
            down = [t for t in targets if t["health"] != "up"]
            if targets and not down:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"targets not up within {timeout_s} s: " + "; ".join(
                    f"{t['scrapeUrl']} {t['health']} {t.get('lastError')}" for t in down))
            time.sleep(0.2)


_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*,?')


def explain_missing(prom: PrometheusServer, selector: str, start: float, end: float) -> str | None:
    """None when `selector` (`name{matchers}`) matched series in [start, end]; else why not:
    the metric name is not scraped at all, or which of its label matchers match nothing."""
    if prom.series(selector, start, end):
        return None
    name, _, rest = selector.partition("{")
    if not prom.series(f'{{__name__="{name}"}}', start, end):
        return f"{selector}: no metric named {name} is scraped"
    failing = [f"{label}{op}\"{value}\"" for label, op, value in _MATCHER.findall(rest.rstrip("}"))
               if not prom.series(f'{name}{{{label}{op}"{value}"}}', start, end)]
    labels = sorted({k for s in prom.series(name, start, end) for k in s} - {"__name__"})
    return f"{selector}: {name} is scraped, but no series matches {failing or 'all matchers'} " \
           f"(its labels: {labels})"
