"""``serve --processes N``: real worker processes on one port, under one parent, against the
fake Triton.

Connections are spread by the kernel (SO_REUSEPORT), so each test opens many channels, each
its own TCP connection, and checks with psutil which worker accepted which; the metrics on
the parent's port must count every call exactly once; health must agree on every worker;
SIGTERM drains all of them; a killed worker is restarted; nothing outlives the parent.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import psutil
import pytest

from siglip.v1 import siglip_pb2 as pb
from siglip.v1 import siglip_pb2_grpc as pb_grpc
from tests.support.fake_triton import VISION_MODEL
from tests.support.gateway_harness import (
    READINESS_SERVICES,
    GatewayProcess,
    alive,
    classify_request,
    connection_owners,
    health_status,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

PROCESSES = 2
CHANNELS = 16  # all on one worker out of two: 2 ** -15
REQUESTS = "siglip_gateway_requests_total"
# The `model` label of the one model served: the gateway is started with "tiny=CHECKPOINT".
MODEL = "tiny"


async def _start(tiny_checkpoint, fake, tmp_path, *, http: bool = False,
                 **env: str) -> GatewayProcess:
    fake.delay_s = 0.0
    fake.ready = True
    gw = GatewayProcess(f"{MODEL}={tiny_checkpoint}", fake.url, tmp_path / "gateway.log",
                        metrics=True, processes=PROCESSES, http=http,
                        env={"SIGLIP_SHUTDOWN_GRACE_S": "5", **env})
    await gw.start(timeout_s=60)
    assert len(gw.worker_pids()) == PROCESSES
    return gw


@contextlib.asynccontextmanager
async def _channels(target: str, n: int = CHANNELS) -> AsyncIterator[list[grpc.aio.Channel]]:
    """n channels, each with its own TCP connection (no subchannel shared between them)."""
    channels = [grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(n)]
    try:
        yield channels
    finally:
        for channel in channels:
            await channel.close()


def _scrape(port: int) -> list[tuple[str, float]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [(line.rsplit(" ", 1)[0], float(line.rsplit(" ", 1)[1]))
            for line in text.splitlines() if line and not line.startswith("#")]


def _value(samples: list[tuple[str, float]], series: str) -> float | None:
    found = [v for name, v in samples if name == series]
    assert len(found) <= 1, f"{series} appears {len(found)} times"
    return found[0] if found else None


def _metrics_dirs() -> set[Path]:
    """The parents' multiprocess metrics directories now in the temp directory."""
    return set(Path(tempfile.gettempdir()).glob("siglip-gateway-metrics-*"))


def _embed_ok(protocol: str) -> str:
    return f'{REQUESTS}{{code="OK",method="Embed",model="{MODEL}",protocol="{protocol}"}}'


def _classify_ok() -> str:
    return f'{REQUESTS}{{code="OK",method="Classify",model="{MODEL}",protocol="grpc"}}'


async def test_workers_share_the_port_and_metrics_count_every_call_once(tiny_checkpoint, fake,
                                                                       tmp_path):
    gw = await _start(tiny_checkpoint, fake, tmp_path)
    try:
        workers = gw.worker_pids()
        calls = 0
        async with _channels(gw.target) as channels:
            for round_ in range(3):
                await asyncio.gather(*(pb_grpc.SiglipServiceStub(ch).Classify(
                    classify_request(seed=round_ * 100 + i), timeout=10)
                    for i, ch in enumerate(channels)))
                calls += len(channels)
            texts = pb.EmbedRequest(inputs=[pb.EmbedInput(text="a unique text")])
            await asyncio.gather(*(pb_grpc.SiglipServiceStub(ch).Embed(texts, timeout=10)
                                   for ch in channels))
            owners = connection_owners(gw.port, workers)
        assert sum(owners.values()) == CHANNELS
        assert sorted(owners) == workers, owners  # every worker took connections

        samples = await asyncio.to_thread(_scrape, gw.metrics_port)
        names = [name for name, _ in samples]
        assert len(names) == len(set(names)), "a series appears twice"
        assert not any('pid="' in name for name in names)  # gauges aggregated, not per pid
        assert _value(samples, _classify_ok()) == calls
        assert _value(samples, _embed_ok("grpc")) == CHANNELS
        assert _value(samples, "siglip_gateway_requests_in_flight") == 0
        assert _value(samples, "siglip_gateway_triton_ready") == 1
        assert _value(samples, "siglip_gateway_worker_restarts_total") == 0
        # The text cache is per process: the one text missed once in each worker.
        assert _value(samples, f'siglip_gateway_text_cache_misses_total{{model="{MODEL}"}}') \
            >= PROCESSES
        count = _value(samples, "siglip_gateway_request_duration_seconds_count"
                                f'{{method="Classify",model="{MODEL}",protocol="grpc"}}')
        assert count == calls
    finally:
        gw.kill()


async def test_every_worker_answers_http_on_the_shared_port(tiny_checkpoint, fake, tmp_path):
    import httpx

    gw = await _start(tiny_checkpoint, fake, tmp_path, http=True)
    try:
        assert gw.http_port
        workers = gw.worker_pids()
        body = {"inputs": [{"text": "a text over HTTP"}]}
        # One client per connection: each its own TCP connection, spread by the kernel.
        clients = [httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}", timeout=10)
                   for _ in range(CHANNELS)]
        try:
            responses = await asyncio.gather(*(c.post("/v1/embed", json=body) for c in clients))
            owners = connection_owners(gw.http_port, workers)
        finally:
            await asyncio.gather(*(c.aclose() for c in clients))
        assert [r.status_code for r in responses] == [200] * CHANNELS
        assert len({str(r.json()) for r in responses}) == 1  # the same answer from each
        assert sum(owners.values()) == CHANNELS
        assert sorted(owners) == workers, owners  # every worker took connections
        samples = await asyncio.to_thread(_scrape, gw.metrics_port)
        assert _value(samples, _embed_ok("http")) == CHANNELS
        assert _value(samples, _embed_ok("grpc")) is None
    finally:
        gw.kill()


async def test_health_agrees_on_every_worker(tiny_checkpoint, fake, tmp_path):
    gw = await _start(tiny_checkpoint, fake, tmp_path)
    try:
        async with _channels(gw.target) as channels:
            for ch in channels:
                assert await health_status(ch) == "SERVING"
            assert len(connection_owners(gw.port, gw.worker_pids())) == PROCESSES

            async def all_are(status: str) -> bool:
                seen = await asyncio.gather(*(health_status(ch, s) for ch in channels
                                              for s in READINESS_SERVICES))
                return set(seen) == {status}

            fake.ready = False
            took = await wait_until(lambda: all_are("NOT_SERVING"), 3.0, interval_s=0.05,
                                    what="every worker NOT_SERVING")
            assert took < 2.0  # one monitor interval (0.5 s) and a check, not more
            samples = await asyncio.to_thread(_scrape, gw.metrics_port)
            assert _value(samples, "siglip_gateway_triton_ready") == 0
            assert await all_are("NOT_SERVING")  # and they stay so

            fake.ready = True
            await wait_until(lambda: all_are("SERVING"), 3.0, interval_s=0.05,
                             what="every worker SERVING again")
            for ch in channels:
                assert await health_status(ch, "liveness") == "SERVING"
    finally:
        fake.ready = True
        gw.kill()


async def test_sigterm_drains_every_worker_and_leaves_no_process(tiny_checkpoint, fake,
                                                                 tmp_path):
    dirs_before = _metrics_dirs()
    # One Triton call per request (no coalescing), so "every call inside Triton" is exact.
    gw = await _start(tiny_checkpoint, fake, tmp_path, SIGLIP_TRITON_MAX_CALLS_IN_FLIGHT="0")
    # Its own directory: other gateways on the machine may make and remove theirs meanwhile.
    own = {d for d in _metrics_dirs() - dirs_before if d.name.split("-")[3] == str(gw.pid)}
    assert len(own) == 1, (own, gw.pid)
    try:
        workers = gw.worker_pids()
        descendants = gw.descendants()  # workers and their watchdogs
        async with _channels(gw.target) as channels:
            stubs = [pb_grpc.SiglipServiceStub(ch) for ch in channels]
            await asyncio.gather(*(s.Classify(classify_request(), timeout=10) for s in stubs))
            assert len(connection_owners(gw.port, workers)) == PROCESSES
            fake.delay_s = 1.5
            fake.reset_counters()
            calls = [asyncio.ensure_future(s.Classify(classify_request(seed=i + 1), timeout=20))
                     for i, s in enumerate(stubs)]
            await wait_until(lambda: fake.in_progress == CHANNELS, 5.0,
                             what="every call inside Triton")

            gw.signal(signal.SIGTERM)
            sigterm_at = time.monotonic()

            async def not_serving() -> bool:
                seen = await asyncio.gather(*(health_status(ch, timeout_s=0.5)
                                              for ch in channels))
                return set(seen) == {"NOT_SERVING"}

            await wait_until(not_serving, 1.0, interval_s=0.02, what="every worker NOT_SERVING")
            for stub in stubs[:4]:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.Classify(classify_request(seed=99), timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

            responses = await asyncio.gather(*calls)
            assert all(len(r.results[0].scores) == 2 for r in responses)
            assert fake.completed[VISION_MODEL] == CHANNELS and not fake.cancelled
        assert await gw.wait(10) == 0
        assert time.monotonic() - sigterm_at < 5.0  # drained, not cut at the grace period
        await wait_until(lambda: not alive(descendants), 5.0, what="no process left")
        assert not own & _metrics_dirs()  # its own removed at exit
    finally:
        fake.delay_s = 0.0
        gw.kill()
    log = gw.log()
    assert "signal received: shutting down 2 workers" in log
    assert len(re.findall(r"draining \d+ calls in flight", log)) == PROCESSES


async def test_a_killed_worker_is_restarted_and_its_counts_are_kept(tiny_checkpoint, fake,
                                                                    tmp_path):
    gw = await _start(tiny_checkpoint, fake, tmp_path)
    try:
        victim, survivor = gw.worker_pids()
        calls = 0
        async with _channels(gw.target) as channels:
            await asyncio.gather(*(pb_grpc.SiglipServiceStub(ch).Classify(
                classify_request(), timeout=10) for ch in channels))
            calls += len(channels)
            assert connection_owners(gw.port, [victim]).get(victim)  # it counted some

        os.kill(victim, signal.SIGKILL)
        # Reaped, so every thread is gone and its listener closed (a killed leader thread is a
        # zombie while the others still exit, the socket still open).
        await wait_until(lambda: f"(pid {victim}) died" in gw.log(), 5.0, what="reaped")
        # Served on: new connections go to the workers still listening.
        async with _channels(gw.target, 8) as channels:
            await asyncio.gather(*(pb_grpc.SiglipServiceStub(ch).Classify(
                classify_request(), timeout=10) for ch in channels))
            calls += len(channels)

        await wait_until(lambda: len(gw.worker_pids()) == PROCESSES
                         and victim not in gw.worker_pids(), 30.0, interval_s=0.1,
                         what="the worker restarted")
        replacement = (set(gw.worker_pids()) - {survivor}).pop()
        log = gw.log()
        assert re.search(rf"worker \d \(pid {victim}\) died: killed by SIGKILL after [\d.]+ s; "
                         r"restarting it in [\d.]+ s", log), log
        assert re.search(rf"worker \d restarted: pid {replacement}", log)

        await wait_until(lambda: f"pid {replacement}]: Triton at" in gw.log(), 30.0,
                         what="the new worker SERVING")
        async with _channels(gw.target) as channels:
            await asyncio.gather(*(pb_grpc.SiglipServiceStub(ch).Classify(
                classify_request(), timeout=10) for ch in channels))
            calls += len(channels)
            assert connection_owners(gw.port, [replacement]).get(replacement)

        samples = await asyncio.to_thread(_scrape, gw.metrics_port)
        assert _value(samples, _classify_ok()) == calls  # the dead worker's counts included
        assert _value(samples, "siglip_gateway_worker_restarts_total") == 1
        assert _value(samples, "siglip_gateway_requests_in_flight") == 0
        assert _value(samples, "siglip_gateway_triton_ready") == 1  # the dead one not counted
    finally:
        gw.kill()


async def test_parent_killed_leaves_no_orphans(tiny_checkpoint, fake, tmp_path):
    gw = await _start(tiny_checkpoint, fake, tmp_path)
    descendants = gw.descendants()
    assert len(descendants) >= PROCESSES
    gw.signal(signal.SIGKILL)
    await gw.wait(5)
    await wait_until(lambda: not alive(descendants), 10.0, what="every worker gone")


async def test_port_taken_by_another_process_fails_loudly(tiny_checkpoint, fake, tmp_path):
    dirs_before = _metrics_dirs()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gw = GatewayProcess(tiny_checkpoint, fake.url, tmp_path / "gateway.log",
                            processes=PROCESSES, port=port)
        gw.spawn()
        try:
            assert await gw.wait(30) == 1
        finally:
            gw.kill()
    log = gw.log()
    assert f"gRPC port {port} on 127.0.0.1 is not available" in log
    assert "worker 0 started" not in log
    assert _metrics_dirs() <= dirs_before


async def test_a_worker_that_cannot_start_fails_the_start_up(tiny_checkpoint, fake, tmp_path):
    gw = GatewayProcess(tiny_checkpoint, fake.url, tmp_path / "gateway.log",
                        processes=PROCESSES,
                        env={"SIGLIP_TLS_CERT": str(tmp_path / "missing.pem"),
                             "SIGLIP_TLS_KEY": str(tmp_path / "missing.key")})
    gw.spawn()
    try:
        assert await gw.wait(60) == 1
    finally:
        gw.kill()
    log = gw.log()
    assert "worker start-up failed" in log
    assert re.search(r"start-up failed: worker \d \(pid \d+\) ended with exit code 1 before it "
                     r"listened", log), log


@pytest.mark.triton
@pytest.mark.timeout(300)
async def test_with_the_embedded_triton_one_triton_serves_every_worker(
        tiny_checkpoint, family_checkpoint, tmp_path):
    """`serve` with two models and no --triton-url: the parent starts one Triton for both (a
    generated repository), every worker serves both, and after SIGTERM nothing is left behind:
    workers, tritonserver, its model stubs, the generated repository."""
    p14 = family_checkpoint("siglip_p14")
    gw = GatewayProcess(f"tiny={tiny_checkpoint},p14={p14}", "", tmp_path / "gateway.log",
                        processes=PROCESSES, env={"SIGLIP_TRITON_STARTUP_TIMEOUT_S": "240"})
    gw.env.pop("USE_TORCH")  # the harness's shortcut for the gateway would reach Triton's models
    await gw.start(timeout_s=270)
    try:
        descendants = gw.descendants()
        tritons = [p for p in descendants if "tritonserver" in " ".join(_cmdline(p))]
        assert len(tritons) == 1
        assert len(gw.worker_pids()) == PROCESSES
        firsts = {}
        for model in ("tiny", "p14"):
            request = pb.EmbedRequest(model=model,
                                      inputs=[pb.EmbedInput(text="a photo of a cat")])
            async with _channels(gw.target) as channels:
                responses = await asyncio.gather(*(pb_grpc.SiglipServiceStub(ch).Embed(
                    request, timeout=60) for ch in channels))
                assert len(connection_owners(gw.port, gw.worker_pids())) == PROCESSES
            firsts[model] = responses[0].embeddings[0].values
            assert all(r.model == model for r in responses)
            assert len(firsts[model]) > 0
            assert all(r.embeddings[0].values == firsts[model] for r in responses)
        assert firsts["tiny"] != firsts["p14"]  # each model answered with its own checkpoint

        gw.signal(signal.SIGTERM)
        assert await gw.wait(60) == 0
        await wait_until(lambda: not alive(descendants), 20.0, what="nothing left")
    finally:
        gw.kill()
    log = gw.log()
    assert f"model tiny={tiny_checkpoint} (default) (RANDOM WEIGHTS" in log
    assert f"; model p14={p14} (RANDOM WEIGHTS" in log
    assert "(embedded), 2 processes" in log
    assert log.index("signal received: shutting down 2 workers") < log.index("stopping Triton")
    repository = Path(re.search(r"started tritonserver pid \d+ \(.*models (\S+),", log)[1])
    assert repository.name != "model_repository" and not await asyncio.to_thread(repository.exists)


def _cmdline(pid: int) -> list[str]:
    try:
        return psutil.Process(pid).cmdline()
    except psutil.Error:
        return []
