"""One monitored run shared by the monitoring tests: two gateway pods (subprocesses) on the
session's embedded Triton, a real Prometheus per distinct scrape layout of k8s/overlays/*
(scraping at 1 s), then idle, load, and idle again long enough for every window the
autoscalers' queries use to empty. The tests query Prometheus at the recorded moments.

And a two-model run (`two_model_run`): the same Prometheus setup scraping stand-ins for a
deployment serving two models with SIGLIP_PREPROCESS_MODE=triton
(tests/support/synthetic_metrics.py), at rates the tests know; no Triton needed.

Pods: the gateway Deployment gets two (two processes); the Triton Deployment gets one, the
session's Triton (a second would cost another Triton start). In the colocated layout each
gateway pod's `triton` sidecar endpoint scrapes that one Triton: the same series under both
pods' labels, which is what the per-pod plumbing needs, not two servers' behaviour.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
import pytest_asyncio

from gateway.client import SiglipClient
from tests.support.binaries import require_binary
from tests.support.gateway_harness import GatewayProcess
from tests.support.k8s_render import GATEWAY, OVERLAYS, TRITON, Obj, render
from tests.support.monitoring_manifests import (
    AutoscalerQuery,
    Layout,
    autoscaler_queries,
    layout,
    longest_window_s,
    write_rule_file,
)
from tests.support.prometheus import PrometheusServer
from tests.support.synthetic_metrics import FakeGateway, FakeTriton

PODS_PER_DEPLOYMENT = {GATEWAY: 2, TRITON: 1}
SCRAPE_INTERVAL_S = 1.0
# Per gateway pod: well above Triton's one instance per tower, so requests queue there.
CONCURRENCY = 16
LOAD_S = 20.0
IDLE_S = 4.0  # before the load: a few scrapes, so rate() has two samples in its window
log = logging.getLogger(__name__)


@dataclass
class Scrape:
    """One Prometheus and the overlays it stands for."""

    prometheus: PrometheusServer
    layout: Layout  # the first overlay's (all of them scrape the same way)
    overlays: list[str]
    queries: list[AutoscalerQuery]  # the autoscalers' expressions of all those overlays


@dataclass
class MonitoredRun:
    scrapes: list[Scrape]
    idle_at: float  # unix times: before the load
    loaded_at: float  # the end of the load (still running)
    after_at: float  # the longest query window after the load stopped
    started_at: float  # Prometheus' first scrapes
    calls: dict[str, int]  # finished calls by outcome, for messages


async def _drive(targets: list[str], seconds: float) -> tuple[dict[str, int], float]:
    """Mixed calls from CONCURRENCY workers per gateway: Classify with two images and labels
    the cache has (hits), Embed of new texts (misses: tokenize and the text tower), and a
    few undecodable images (INVALID_ARGUMENT) so the error panels have data. Returns the
    calls by outcome and the time the load was stopped (calls were still in flight)."""
    calls: dict[str, int] = {}
    stop = asyncio.Event()
    images = [np.random.default_rng(s).integers(0, 256, (64, 64, 3), dtype=np.uint8)
              for s in range(2)]

    async def worker(client: SiglipClient, w: int) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            try:
                if i % 10 == 0:
                    await client.classify([b"not an image"], ["a cat"], timeout=30)
                elif i % 3 == 0:
                    await client.embed_texts([f"worker {w} text {i}"], timeout=30)
                else:
                    await client.classify(images, ["a cat", "a dog"], timeout=30)
                outcome = "OK"
            except grpc.aio.AioRpcError as exc:
                outcome = exc.code().name
            calls[outcome] = calls.get(outcome, 0) + 1

    clients = [SiglipClient(t) for t in targets]
    try:
        tasks = [asyncio.create_task(worker(c, w)) for c in clients for w in range(CONCURRENCY)]
        await asyncio.sleep(seconds)
        stopped_at = time.time()
        stop.set()
        await asyncio.gather(*tasks)
    finally:
        for c in clients:
            await c.close()
    return calls, stopped_at


@contextlib.asynccontextmanager
async def _gateways(checkpoint: Path, triton_url: str, logs: Path,
                    count: int) -> AsyncIterator[list[GatewayProcess]]:
    procs = [GatewayProcess(checkpoint, triton_url, logs / f"gateway-{i}.log", metrics=True)
             for i in range(count)]
    try:
        await asyncio.gather(*(p.start(timeout_s=60) for p in procs))
        yield procs
    finally:
        for p in procs:
            with contextlib.suppress(Exception):
                p.signal()
        for p in procs:
            try:
                await p.wait(15)
            except AssertionError:
                p.kill()


@pytest_asyncio.fixture(scope="package", loop_scope="session")
async def monitored_run(embedded_triton, tiny_checkpoint: Path,
                        tmp_path_factory) -> AsyncIterator[MonitoredRun]:
    binary = require_binary("prometheus")
    rendered: dict[str, list[Obj]] = {o: render(o) for o in OVERLAYS}
    work = tmp_path_factory.mktemp("monitoring")
    began = time.monotonic()
    triton_metrics = f"{embedded_triton.connect_host}:{embedded_triton.ports.metrics}"
    async with _gateways(tiny_checkpoint, embedded_triton.grpc_url, work,
                         PODS_PER_DEPLOYMENT[GATEWAY]) as gateways:

        def address_of(container: str, index: int) -> str:
            if container == "gateway":
                return f"127.0.0.1:{gateways[index].metrics_port}"
            if container == "triton":
                return triton_metrics
            raise AssertionError(f"the manifests scrape container {container!r}: this test "
                                 "has no process standing in for it")

        by_key: dict[str, Scrape] = {}
        for overlay, docs in rendered.items():
            lay = layout(overlay, docs, PODS_PER_DEPLOYMENT, address_of)
            scrape = by_key.get(lay.key())
            if scrape is None:
                prom = PrometheusServer(binary, work / f"prometheus-{len(by_key)}",
                                        lay.scrape_configs, scrape_interval_s=SCRAPE_INTERVAL_S)
                scrape = by_key[lay.key()] = Scrape(prom, lay, [], [])
            scrape.overlays.append(overlay)
            scrape.queries.extend(autoscaler_queries(lay, docs))
        scrapes = list(by_key.values())
        try:
            for s in scrapes:
                s.prometheus.start()
            started_at = time.time()
            for s in scrapes:
                await asyncio.to_thread(s.prometheus.wait_all_up)
            await asyncio.sleep(IDLE_S)
            idle_at = time.time()
            calls, loaded_at = await _drive([g.target for g in gateways], LOAD_S)
            window = longest_window_s([q.expr for s in scrapes for q in s.queries])
            await asyncio.sleep(window + 3 * SCRAPE_INTERVAL_S)
            after_at = time.time()
            await asyncio.sleep(1.5 * SCRAPE_INTERVAL_S)  # a scrape past after_at
            log.info("monitored run ready in %.1f s (%d Prometheus, calls %s, windows %d s)",
                     time.monotonic() - began, len(scrapes), calls, window)
            yield MonitoredRun(scrapes, idle_at, loaded_at, after_at, started_at, calls)
        finally:
            for s in scrapes:
                s.prometheus.stop()


# Long enough for every $__rate_interval (10 s in the tests) and 1 min window to hold many
# scrapes at 1 s; the counters grow at constant rates, so longer changes no value.
TWO_MODEL_SETTLE_S = 12.0


@dataclass
class TwoModelRun:
    scrapes: list[Scrape]
    at: float  # unix time to query at: steady traffic on both models
    started_at: float


@pytest.fixture(scope="package")
def two_model_run(tmp_path_factory) -> Iterator[TwoModelRun]:
    binary = require_binary("prometheus")
    rendered: dict[str, list[Obj]] = {o: render(o) for o in OVERLAYS}
    work = tmp_path_factory.mktemp("monitoring-two-models")
    gateways = [FakeGateway(in_flight=3 + i) for i in range(PODS_PER_DEPLOYMENT[GATEWAY])]
    triton = FakeTriton()

    def address_of(container: str, index: int) -> str:
        if container == "gateway":
            return gateways[index].address
        if container == "triton":
            return triton.address
        raise AssertionError(f"the manifests scrape container {container!r}: no stand-in")

    # The PrometheusRule too: its alerts, evaluated every second, go pending on these series.
    rules = write_rule_file(work)
    by_key: dict[str, Scrape] = {}
    try:
        for overlay, docs in rendered.items():
            lay = layout(overlay, docs, PODS_PER_DEPLOYMENT, address_of)
            scrape = by_key.get(lay.key())
            if scrape is None:
                prom = PrometheusServer(binary, work / f"prometheus-{len(by_key)}",
                                        lay.scrape_configs, scrape_interval_s=SCRAPE_INTERVAL_S,
                                        rule_files=[rules])
                scrape = by_key[lay.key()] = Scrape(prom, lay, [], [])
            scrape.overlays.append(overlay)
            scrape.queries.extend(autoscaler_queries(lay, docs))
        scrapes = list(by_key.values())
        for s in scrapes:
            s.prometheus.start()
        started_at = time.time()
        for s in scrapes:
            s.prometheus.wait_all_up()
        time.sleep(TWO_MODEL_SETTLE_S)
        yield TwoModelRun(scrapes, time.time(), started_at)
    finally:
        for s in by_key.values():
            s.prometheus.stop()
        for g in gateways:
            g.close()
        triton.close()
