"""No caller input can grow the number of metric series (a cardinality explosion would
take the gateway's Prometheus down with it): 1,000 calls with random labels and bad
requests later, the series are the same, in the registry and on /metrics.
"""

from __future__ import annotations

import asyncio
import random
import urllib.request

import grpc
import pytest

from siglip.v1 import siglip_pb2 as pb
from siglip.v1 import siglip_pb2_grpc as pb_grpc
from tests.support.fake_triton import TEXT_MODEL
from tests.support.gateway_harness import classify_request, running_gateway, small_raw_image

pytestmark = pytest.mark.timeout(120)

CALLS = 1_000
CONCURRENCY = 16


def _scrape(port: int) -> set[str]:
    """The series on /metrics: every sample line's name and labels, without its value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {line.rsplit(" ", 1)[0] for line in text.splitlines()
            if line and not line.startswith("#")}


def _random_label(rng: random.Random) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz 0123456789éüß日本語{}\"'=,\\"
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))


def _bad_request(rng: random.Random) -> pb.ClassifyRequest:
    bad_image = pb.Image(data=rng.randbytes(rng.randint(1, 64)))
    return rng.choice([
        pb.ClassifyRequest(images=[small_raw_image()], labels=[]),
        pb.ClassifyRequest(images=[bad_image], labels=[_random_label(rng)]),
        pb.ClassifyRequest(images=[small_raw_image()], labels=[_random_label(rng) + "\x00"]),
        # An unknown model counts under the default model's label, not its own.
        pb.ClassifyRequest(images=[small_raw_image()], labels=["x"], model=_random_label(rng)),
    ])


async def test_random_labels_do_not_grow_metric_series(tiny_checkpoint, fake):
    rng = random.Random(1234)
    async with running_gateway(tiny_checkpoint, fake.url, metrics_port=0) as gw, \
            grpc.aio.insecure_channel(gw.target) as channel:
        stub = pb_grpc.SiglipServiceStub(channel)
        metrics = gw.server.metrics
        # One of each outcome first: a (method, code) pair is a series from its first call on.
        await stub.Classify(classify_request(), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Classify(_bad_request(rng), timeout=10)
        before = metrics.series_count()
        scraped_before = await asyncio.to_thread(_scrape, gw.metrics_port)
        assert before > 50 and len(scraped_before) > 50
        text_rows = fake.rows(TEXT_MODEL)

        codes: dict[str, int] = {}

        async def worker(n: int, seed: int) -> None:
            wrng = random.Random(seed)
            for i in range(n):
                if i % 10 == 9:
                    request = _bad_request(wrng)
                else:
                    labels = [_random_label(wrng) for _ in range(wrng.randint(1, 4))]
                    request = classify_request(tuple(labels), seed=i)
                try:
                    await stub.Classify(request, timeout=10)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                codes[code] = codes.get(code, 0) + 1

        await asyncio.gather(*(worker(CALLS // CONCURRENCY, s) for s in range(CONCURRENCY)))
        assert sum(codes.values()) == CALLS // CONCURRENCY * CONCURRENCY
        assert codes.keys() == {"OK", "INVALID_ARGUMENT"}, codes
        assert fake.rows(TEXT_MODEL) - text_rows > 500  # new labels really went through
        assert metrics.series_count() == before
        assert await asyncio.to_thread(_scrape, gw.metrics_port) == scraped_before
        # The series do count what happened (so an unchanged count is not an idle registry).
        ok = metrics.registry.get_sample_value(
            "siglip_gateway_requests_total",
            {"method": "Classify", "code": "OK", "protocol": "grpc",
             "model": gw.server.specs[0].name})
        assert ok == 1 + codes["OK"]
