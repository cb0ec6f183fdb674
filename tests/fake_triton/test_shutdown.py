"""Graceful shutdown of the real process (``python -m gateway serve``) on SIGTERM.

Calls in flight finish, new calls are refused with UNAVAILABLE (clients retry elsewhere),
readiness turns NOT_SERVING at once (Kubernetes stops routing), and the process exits
within its grace period, or at it when calls do not finish in time.
"""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest

from siglip.v1 import siglip_pb2_grpc as pb_grpc
from tests.support.fake_triton import VISION_MODEL
from tests.support.gateway_harness import (
    READINESS_SERVICES,
    GatewayProcess,
    classify_request,
    health_status,
    wait_until,
)

pytestmark = pytest.mark.timeout(90)

GRACE_S = 5.0


async def _start(tiny_checkpoint, fake, tmp_path, grace_s: float) -> GatewayProcess:
    fake.delay_s = 0.0
    # One Triton call per request (no coalescing), so "calls inside Triton" is exact.
    gw = GatewayProcess(tiny_checkpoint, fake.url, tmp_path / "gateway.log",
                        env={"SIGLIP_SHUTDOWN_GRACE_S": str(grace_s),
                             "SIGLIP_TRITON_MAX_CALLS_IN_FLIGHT": "0"})
    return await gw.start()


async def test_sigterm_drains_calls_in_flight_and_refuses_new_ones(tiny_checkpoint, fake,
                                                                   tmp_path):
    gw = await _start(tiny_checkpoint, fake, tmp_path, GRACE_S)
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stub = pb_grpc.SiglipServiceStub(channel)
            await stub.Classify(classify_request(), timeout=10)  # connect, cache the labels
            fake.delay_s = 1.0
            fake.reset_counters()
            calls = [asyncio.ensure_future(stub.Classify(classify_request(seed=i), timeout=10))
                     for i in range(6)]
            await asyncio.sleep(0.2)
            assert fake.in_progress == 6  # all six are inside Triton now

            gw.signal(signal.SIGTERM)
            sigterm_at = time.monotonic()
            for service in READINESS_SERVICES:
                await wait_until(lambda s=service: _is(channel, s, "NOT_SERVING"), 0.25,
                                 interval_s=0.01, what=f"health {service!r} NOT_SERVING")
            assert await health_status(channel, "liveness") == "SERVING"  # still alive
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.Classify(classify_request(seed=99), timeout=5)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "shutting down" in refused.value.details()

            responses = await asyncio.gather(*calls)
            assert all(len(r.results[0].scores) == 2 for r in responses)
            assert fake.completed[VISION_MODEL] == 6 and not fake.cancelled
        assert await gw.wait(GRACE_S) == 0
        exited_after = time.monotonic() - sigterm_at
        assert exited_after < GRACE_S
    finally:
        gw.kill()
    assert "signal received: shutting down" in gw.log()


async def test_sigterm_stops_at_the_grace_period_when_calls_do_not_finish(tiny_checkpoint,
                                                                          fake, tmp_path):
    grace_s = 1.0
    gw = await _start(tiny_checkpoint, fake, tmp_path, grace_s)
    try:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            stub = pb_grpc.SiglipServiceStub(channel)
            await stub.Classify(classify_request(), timeout=10)
            fake.delay_s = 30.0
            call = asyncio.ensure_future(stub.Classify(classify_request(seed=1), timeout=60))
            await asyncio.sleep(0.2)
            gw.signal(signal.SIGTERM)
            sigterm_at = time.monotonic()
            assert await gw.wait(grace_s + 2.0) == 0
            exited_after = time.monotonic() - sigterm_at
            assert exited_after >= grace_s * 0.9  # it did wait for the call...
            with pytest.raises(grpc.aio.AioRpcError) as info:  # ...which was then cut off
                await call
            assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
    finally:
        fake.delay_s = 0.0
        gw.kill()


async def _is(channel: grpc.aio.Channel, service: str, status: str) -> bool:
    return await health_status(channel, service, timeout_s=0.2) == status
