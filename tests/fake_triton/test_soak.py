"""Soak: 10,000 Classify calls through one client must not grow the gateway's memory.

The gateway runs as its own process (``python -m gateway serve``) so that its RSS is the
gateway's alone: in-process, the client's buffers, the fake Triton and pytest's own
allocations would be measured too. The first half of the calls is warm-up (pools, caches,
arenas reach their steady size); growth is measured over the second half. The same
measurement on a gateway that deliberately keeps every request's pixels must fail, so the
test is known to catch a leak of that size.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest

from siglip.v1 import siglip_pb2 as pb
from siglip.v1 import siglip_pb2_grpc as pb_grpc
from tests.support.fake_triton import VISION_MODEL
from tests.support.gateway_harness import GatewayProcess, MiB, small_raw_image

pytestmark = pytest.mark.timeout(240)

SOAK_CALLS = 10_000
CONCURRENCY = 16
MAX_GROWTH = 10 * MiB
IMAGE_SIDE = 48  # 6.9 KB of raw RGB per request
LABELS = ["cat", "dog", "a bird", "two cars"]

# The same gateway with a leak: the pixels of every request are kept forever (the 256x256 RGB
# array sent to Triton, 192 KiB a call), so a short run shows it.
LEAKY_GATEWAY = """
import gateway.engine

_kept = []
_preprocess = gateway.engine.Engine._preprocess


def preprocess(self, image, field):
    pixels = _preprocess(self, image, field)
    _kept.append(pixels)
    return pixels


gateway.engine.Engine._preprocess = preprocess
from gateway.cli import main

raise SystemExit(main())
"""
LEAKY_CALLS = 1_000


async def soak(gw: GatewayProcess, n_calls: int) -> tuple[int, int]:
    """Sends ``n_calls`` Classify calls; returns the gateway's RSS at half-way and at the end."""
    requests = [pb.ClassifyRequest(images=[small_raw_image(IMAGE_SIDE, seed)], labels=LABELS)
                for seed in range(8)]
    done = 0
    rss_mid = 0
    async with grpc.aio.insecure_channel(gw.target) as channel:
        stub = pb_grpc.SiglipServiceStub(channel)

        async def worker(index: int) -> None:
            nonlocal done, rss_mid
            for i in range(index, n_calls, CONCURRENCY):
                response = await stub.Classify(requests[i % len(requests)], timeout=10)
                assert len(response.results[0].scores) == len(LABELS)
                done += 1
                if done == n_calls // 2:
                    rss_mid = gw.rss()

        await asyncio.gather(*(worker(i) for i in range(CONCURRENCY)))
    assert done == n_calls
    return rss_mid, gw.rss()


async def test_soak_rss_stays_flat(tiny_checkpoint, fake, tmp_path):
    gw = await GatewayProcess(tiny_checkpoint, fake.url, tmp_path / "gateway.log").start()
    try:
        vision_rows = fake.rows(VISION_MODEL)
        rss_mid, rss_end = await soak(gw, SOAK_CALLS)
        assert fake.rows(VISION_MODEL) - vision_rows == SOAK_CALLS
    finally:
        gw.kill()
    growth = rss_end - rss_mid
    print(f"gateway RSS {rss_mid / MiB:.1f} MB -> {rss_end / MiB:.1f} MB over the second half")
    assert growth <= MAX_GROWTH, f"RSS grew {growth / MiB:.1f} MB over {SOAK_CALLS // 2} calls"


async def test_soak_detects_a_deliberate_leak(tiny_checkpoint, fake, tmp_path):
    gw = GatewayProcess(tiny_checkpoint, fake.url, tmp_path / "gateway.log", code=LEAKY_GATEWAY)
    await gw.start()
    try:
        rss_mid, rss_end = await soak(gw, LEAKY_CALLS)
    finally:
        gw.kill()
    growth = rss_end - rss_mid
    print(f"leaky gateway RSS {rss_mid / MiB:.1f} MB -> {rss_end / MiB:.1f} MB")
    assert growth > MAX_GROWTH, f"the leak went unnoticed: {growth / MiB:.1f} MB"
