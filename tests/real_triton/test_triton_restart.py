"""Triton going away and coming back, without restarting the gateway.

With the fake (cheap and exact): Triton unreachable → calls fail fast with UNAVAILABLE within
their deadline and readiness turns NOT_SERVING; Triton back on the same port → both recover.
With the real embedded Triton (its own instance, since it is killed): SIGKILL under load.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import grpc
import pytest

from siglip.v1 import siglip_pb2_grpc as pb_grpc
from tests.support.fake_triton import FakeTriton
from tests.support.gateway_harness import (
    READINESS_SERVICES,
    classify_request,
    embedding_dim,
    health_status,
    running_gateway,
    wait_until,
)

CALL_DEADLINE_S = 2.0


async def _serving(channel: grpc.aio.Channel, want: str) -> bool:
    statuses = [await health_status(channel, s, timeout_s=0.5) for s in READINESS_SERVICES]
    return all(s == want for s in statuses)


@pytest.mark.timeout(60)
async def test_triton_unreachable_fails_fast_and_recovers_on_the_same_port(tiny_checkpoint):
    fake = FakeTriton(embedding_dim(tiny_checkpoint))
    await fake.start()
    try:
        async with running_gateway(tiny_checkpoint, fake.url) as gw, \
                grpc.aio.insecure_channel(gw.target) as channel:
            stub = pb_grpc.SiglipServiceStub(channel)
            await stub.Classify(classify_request(), timeout=10)
            assert await _serving(channel, "SERVING")
            port = fake.port

            await fake.stop()
            stopped_at = time.monotonic()
            for i in range(5):  # labels cached and new ones: both towers' paths fail alike
                labels = ("cat", "dog") if i % 2 else (f"new label {i}",)
                start = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Classify(classify_request(labels, seed=i),
                                        timeout=CALL_DEADLINE_S)
                elapsed = time.monotonic() - start
                assert info.value.code() == grpc.StatusCode.UNAVAILABLE, info.value
                assert "unavailable" in info.value.details()
                assert elapsed < 0.5, f"took {elapsed:.2f} s of a {CALL_DEADLINE_S} s deadline"
            await wait_until(lambda: _serving(channel, "NOT_SERVING"), 2.0 - (
                time.monotonic() - stopped_at), what="NOT_SERVING")
            assert gw.gauge("siglip_gateway_triton_ready") == 0
            assert gw.in_flight == 0

            await fake.start()  # same port, same gateway
            assert fake.port == port
            back_at = time.monotonic()
            await wait_until(lambda: _serving(channel, "SERVING"), 5.0, what="SERVING again")
            response = await stub.Classify(classify_request(("new label 0",)), timeout=5)
            assert len(response.results[0].scores) == 1
            assert time.monotonic() - back_at < 5.0
            assert gw.gauge("siglip_gateway_triton_ready") == 1
    finally:
        await fake.stop()


@pytest.mark.timeout(60)
async def test_model_not_ready_is_not_serving_and_unavailable(tiny_checkpoint):
    """Triton up but the models not ready (loading, unloading): NOT_SERVING, and Triton's
    "model is not ready" error is UNAVAILABLE (retry elsewhere), not INTERNAL."""
    fake = FakeTriton(embedding_dim(tiny_checkpoint))
    await fake.start()
    try:
        async with running_gateway(tiny_checkpoint, fake.url) as gw, \
                grpc.aio.insecure_channel(gw.target) as channel:
            fake.ready = False
            await wait_until(lambda: _serving(channel, "NOT_SERVING"), 2.0, what="NOT_SERVING")
            fake.error = grpc.StatusCode.UNAVAILABLE
            fake.error_message = "Request for unknown model: 'siglip_vision' is not ready"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.SiglipServiceStub(channel).Classify(classify_request(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            fake.error = grpc.StatusCode.INTERNAL
            fake.error_message = "python backend: CUDA error: out of memory"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await pb_grpc.SiglipServiceStub(channel).Classify(classify_request(), timeout=5)
            assert info.value.code() == grpc.StatusCode.INTERNAL
            assert "CUDA" not in info.value.details()  # internals stay in our log
            fake.error = None
            fake.ready = True
            await wait_until(lambda: _serving(channel, "SERVING"), 2.0, what="SERVING")
            assert gw.in_flight == 0
    finally:
        await fake.stop()


@pytest.mark.triton
@pytest.mark.timeout(300)
async def test_real_triton_killed_under_load(tiny_checkpoint):
    """SIGKILL the real tritonserver while a client loop runs: calls fail with UNAVAILABLE
    within their deadline, readiness turns NOT_SERVING within 2 s, and the first call after
    the supervisor has Triton's models ready again succeeds within 10 s."""
    from gateway.embedded_triton.launcher import EmbeddedTriton, TritonState

    ready_at: list[float] = []
    triton = EmbeddedTriton(model=str(tiny_checkpoint), restart_on_exit=True,
                            restart_backoff_s=0.2, startup_timeout_s=240)
    triton.add_state_listener(
        lambda state, _detail: ready_at.append(time.monotonic())
        if state is TritonState.READY else None)
    await asyncio.to_thread(triton.start)
    try:
        async with running_gateway(tiny_checkpoint, triton.grpc_url) as gw, \
                grpc.aio.insecure_channel(gw.target) as channel:
            stub = pb_grpc.SiglipServiceStub(channel)
            outcomes: list[tuple[float, float, str]] = []  # (start, end, code)
            stop = asyncio.Event()

            async def client_loop(seed: int) -> None:
                while not stop.is_set():
                    start = time.monotonic()
                    try:
                        await stub.Classify(classify_request(seed=seed), timeout=CALL_DEADLINE_S)
                        code = "OK"
                    except grpc.aio.AioRpcError as exc:
                        code = exc.code().name
                    outcomes.append((start, time.monotonic(), code))
                    if code != "OK":
                        await asyncio.sleep(0.1)  # no busy loop: Triton needs the CPU to restart

            loops = [asyncio.create_task(client_loop(i)) for i in range(4)]
            try:
                await wait_until(lambda: sum(o[2] == "OK" for o in outcomes) >= 20, 30,
                                 what="calls succeeding before the kill")
                old_pid = triton.pid
                assert old_pid is not None
                os.kill(old_pid, signal.SIGKILL)
                killed_at = time.monotonic()
                await wait_until(lambda: _serving(channel, "NOT_SERVING"), 2.0,
                                 what="NOT_SERVING after the kill")
                assert len(ready_at) == 1
                await wait_until(lambda: len(ready_at) >= 2, 240, interval_s=0.1,
                                 what="Triton restarted and ready")
                back_at = ready_at[1]
                assert triton.pid not in (None, old_pid) and triton.restarts == 1
                await wait_until(
                    lambda: any(o[0] >= back_at and o[2] == "OK" for o in outcomes),
                    10.0 - (time.monotonic() - back_at), what="a success after the restart")
                await wait_until(lambda: _serving(channel, "SERVING"), 5.0, what="SERVING")
            finally:
                stop.set()
                await asyncio.gather(*loops)
    finally:
        await asyncio.to_thread(triton.stop, 5.0)

    first_ok_after = min(o[1] for o in outcomes if o[0] >= back_at and o[2] == "OK")
    failures = [o for o in outcomes if o[2] != "OK"]
    assert failures, "no call failed while Triton was down"
    assert {o[2] for o in failures} == {"UNAVAILABLE"}, sorted({o[2] for o in failures})
    assert all(killed_at - 0.1 <= o[1] <= first_ok_after for o in failures)
    slowest = max(end - start for start, end, _ in outcomes)
    assert slowest <= CALL_DEADLINE_S + 0.25, f"a call took {slowest:.2f} s"
    print(f"outage: {back_at - killed_at:.1f} s until Triton was ready again, first success "
          f"{first_ok_after - back_at:.2f} s later; {len(failures)} calls failed, all UNAVAILABLE")
