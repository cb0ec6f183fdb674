"""Overload, deadlines and cancellation against a slow fake Triton.

The gateway must reject what it cannot take at once (RESOURCE_EXHAUSTED), give up when the
caller's deadline passes and tell Triton so (the upstream call is cancelled), and free the
in-flight slot of a call the caller cancelled.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
import pytest_asyncio

from siglip.v1 import siglip_pb2 as pb
from siglip.v1 import siglip_pb2_grpc as pb_grpc
from tests.support.fake_triton import VISION_MODEL, FakeTriton
from tests.support.gateway_harness import (
    GatewayProcess,
    classify_request,
    running_gateway,
    small_raw_image,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

IN_FLIGHT_GAUGE = "siglip_gateway_requests_in_flight"


@pytest_asyncio.fixture(scope="module")
async def gateway(tiny_checkpoint, fake):
    async with running_gateway(tiny_checkpoint, fake.url, max_in_flight=8) as gw:
        yield gw


@pytest_asyncio.fixture
async def stub(gateway, fake):
    fake.delay_s = 0.0
    fake.error = None
    async with grpc.aio.insecure_channel(gateway.target) as channel:
        stub = pb_grpc.SiglipServiceStub(channel)
        # Connect and warm the text cache, so timings below are the gateway's, not set-up's.
        await stub.Classify(classify_request(), timeout=10)
        fake.reset_counters()
        yield stub
    fake.delay_s = 0.0
    await wait_until(lambda: gateway.in_flight == 0, 5, what="no call in flight")


async def _timed(coro):
    start = time.monotonic()
    try:
        return await coro, None, time.monotonic() - start
    except grpc.aio.AioRpcError as exc:
        return None, exc, time.monotonic() - start


async def _burst(stub: pb_grpc.SiglipServiceStub, fake: FakeTriton) -> float:
    """40 concurrent calls at a gateway capped at 8, upstream 500 ms: checks the outcome of
    every call and returns the slowest rejection's latency."""
    requests = [classify_request(seed=i) for i in range(40)]
    fake.reset_counters()
    results = await asyncio.gather(*(_timed(stub.Classify(r, timeout=10)) for r in requests))
    ok = [r for r in results if r[1] is None]
    rejected = [r for r in results if r[1] is not None]
    assert len(ok) == 8, [r[1].code() for r in rejected]
    assert len(rejected) == 32
    for _, exc, _elapsed in rejected:
        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
        assert "8 calls in flight" in exc.details()
    for response, _, elapsed in ok:
        assert len(response.results) == 1 and len(response.results[0].scores) == 2
        assert elapsed >= 0.5  # they really waited for the slow upstream
    # Only the accepted calls reached Triton.
    assert fake.rows(VISION_MODEL) == 8
    return max(r[2] for r in rejected)


async def test_overload_rejects_beyond_in_flight_cap_fast(tiny_checkpoint, fake, tmp_path):
    # The gateway in its own process: latencies measured here are the server's, not those of
    # a client sharing its event loop (and its GIL).
    gw = await GatewayProcess(tiny_checkpoint, fake.url, tmp_path / "gateway.log",
                              env={"SIGLIP_MAX_IN_FLIGHT": "8"}).start()
    slowest: list[float] = []
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stub = pb_grpc.SiglipServiceStub(channel)
            fake.delay_s = 0.0
            await stub.Classify(classify_request(), timeout=10)  # connect, cache the labels
            fake.delay_s = 0.5
            # Every burst must reject exactly 32; the latency bound is checked on the best of
            # three, because this 2-core machine may be busy with other work for a moment
            # (a gateway that is slow to reject is slow in every burst).
            for _ in range(3):
                slowest.append(await _burst(stub, fake))
                if slowest[-1] < 0.100:
                    break
    finally:
        fake.delay_s = 0.0
        gw.kill()
    print("slowest rejection per burst: " + ", ".join(f"{s * 1000:.0f} ms" for s in slowest))
    assert min(slowest) < 0.100, f"slowest rejection took {min(slowest) * 1000:.0f} ms"


async def test_deadline_exceeded_and_upstream_call_cancelled(stub, fake, gateway):
    fake.delay_s = 3.0
    _, exc, elapsed = await _timed(stub.Classify(classify_request(seed=1), timeout=0.3))
    assert exc is not None and exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 0.450, f"DEADLINE_EXCEEDED after {elapsed * 1000:.0f} ms"
    # Triton must not keep working for a caller who is gone.
    await wait_until(lambda: any(c.model == VISION_MODEL for c in fake.cancelled), 1.0,
                     what="upstream vision call cancelled")
    await wait_until(lambda: gateway.in_flight == 0, 1.0, what="slot released")
    assert fake.completed[VISION_MODEL] == 0


async def test_cancelled_call_frees_its_slot(stub, fake, gateway):
    fake.delay_s = 3.0
    call = stub.Classify(classify_request(seed=2), timeout=10)
    await asyncio.sleep(0.1)
    assert gateway.gauge(IN_FLIGHT_GAUGE) == 1  # it was holding a slot...
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    # ...and gives it back within 1 s, without waiting for the 3 s upstream call.
    await wait_until(lambda: gateway.gauge(IN_FLIGHT_GAUGE) == 0, 1.0,
                     what="in-flight gauge back to 0")
    assert gateway.in_flight == 0
    await wait_until(lambda: len(fake.cancelled) >= 1, 1.0, what="upstream call cancelled")


async def test_cancelled_stream_frees_its_slot(stub, fake, gateway):
    fake.delay_s = 3.0
    request = pb.EmbedStreamRequest(inputs=[pb.EmbedInput(image=small_raw_image(seed=3))])
    call = stub.EmbedStream(iter([request, request]), timeout=10)
    await asyncio.sleep(0.1)
    assert gateway.gauge(IN_FLIGHT_GAUGE) == 1  # a stream holds one slot for its lifetime
    call.cancel()
    await wait_until(lambda: gateway.gauge(IN_FLIGHT_GAUGE) == 0, 1.0,
                     what="in-flight gauge back to 0")
    await wait_until(lambda: len(fake.cancelled) >= 1, 1.0, what="upstream call cancelled")
