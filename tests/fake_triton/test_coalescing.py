"""Coalesced Triton calls (gateway/backend/coalescing.py) against the fake Triton.

The production ``TritonBackend`` talks to the fake over gRPC; the tests drive the coalescer
directly with token-id rows tagged by their first value, so the fake's record of every call
(``fake.received``: rows and tags) shows whose rows went out together, and each caller's
result is checked against the fake's deterministic embeddings of exactly its own rows.
"""

from __future__ import annotations

import asyncio
import random
import time

import grpc
import numpy as np
import pytest
import pytest_asyncio

from gateway.backend.coalescing import CoalescingBackend
from gateway.backend.triton_client import MAX_ROWS, TritonBackend
from gateway.config import Settings
from gateway.core.errors import BackendRejected, BackendUnavailable, DeadlineExceeded, Overloaded
from gateway.core.scoring import l2_normalize
from gateway.core.text import TextTokenizer
from siglip.v1 import siglip_pb2 as pb
from siglip.v1 import siglip_pb2_grpc as pb_grpc
from tests.support.fake_triton import TEXT_MODEL, fake_embeddings
from tests.support.gateway_harness import running_gateway, wait_until

pytestmark = pytest.mark.timeout(60)

BAD = 7_777  # a row tagged this is refused by the fake (fail_when)


def rows(tag: int, n: int) -> np.ndarray:
    """n token-id rows tagged tag*100+i (first value), different in their other values too."""
    out = np.zeros((n, 64), dtype=np.int64)
    out[:, 0] = tag * 100 + np.arange(n)
    out[:, 1:] = (tag * 7 + np.arange(n)[:, None] * 3 + np.arange(63)) % 1000
    return out


def tags(tag: int, n: int) -> tuple[int, ...]:
    return tuple(int(t) for t in rows(tag, n)[:, 0])


@pytest_asyncio.fixture
async def backend(fake):
    fake.delay_s = 0.0
    fake.error = None
    fake.fail_when = None
    fake.reset_counters()
    backend = TritonBackend(fake.url, max_message_bytes=64 * 1024 * 1024, default_timeout_s=10)
    await backend.infer_chunk(TEXT_MODEL, rows(0, 1), None)  # connect
    fake.reset_counters()
    yield backend
    fake.delay_s = 0.0
    fake.fail_when = None
    await wait_until(lambda: fake.in_progress == 0, 5, what="fake Triton idle")
    await backend.close()


def check(fake, out: np.ndarray, sent: np.ndarray) -> None:
    """A caller got exactly its own rows' embeddings, in order."""
    np.testing.assert_array_equal(out, fake_embeddings(sent, fake.dim))


async def start(coalescer: CoalescingBackend, sent: np.ndarray, timeout_s: float | None = None,
                ) -> asyncio.Task[np.ndarray]:
    """A caller in its own task; returns once its rows are queued or sent."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    task = asyncio.create_task(coalescer.embed_texts(sent, deadline))
    await asyncio.sleep(0)
    return task


async def test_a_free_slot_sends_at_once(backend, fake):
    coalescer = CoalescingBackend(backend, 2)
    fake.delay_s = 0.3
    first = await start(coalescer, rows(1, 2))
    second = await start(coalescer, rows(2, 1))
    # Both went out on their own, without waiting for anything (two free slots).
    await wait_until(lambda: fake.in_progress == 2, 0.1, interval_s=0.005, what="2 calls sent")
    check(fake, await first, rows(1, 2))
    check(fake, await second, rows(2, 1))
    assert sorted(r.tags for r in fake.received) == [tags(1, 2), tags(2, 1)]


async def test_rows_arriving_while_slots_are_busy_go_as_one_call_in_order(backend, fake):
    coalescer = CoalescingBackend(backend, 1)
    fake.delay_s = 0.2
    blocker = await start(coalescer, rows(1, 1))
    sizes = {tag: 1 + tag % 3 for tag in range(10, 20)}
    waiting = {tag: await start(coalescer, rows(tag, n)) for tag, n in sizes.items()}
    check(fake, await blocker, rows(1, 1))
    for tag, task in waiting.items():
        check(fake, await task, rows(tag, sizes[tag]))
    assert [r.tags for r in fake.received] == [
        tags(1, 1), sum((tags(tag, n) for tag, n in sizes.items()), ())]


async def test_a_call_holds_at_most_max_rows_and_a_large_caller_is_cut(backend, fake):
    coalescer = CoalescingBackend(backend, 1, max_rows={**MAX_ROWS, TEXT_MODEL: 4})
    fake.delay_s = 0.1
    blocker = await start(coalescer, rows(1, 1))
    a, b, c = [await start(coalescer, rows(tag, n)) for tag, n in ((2, 3), (3, 2), (4, 2))]
    big = await start(coalescer, rows(5, 9))
    for task, tag, n in ((blocker, 1, 1), (a, 2, 3), (b, 3, 2), (c, 4, 2), (big, 5, 9)):
        check(fake, await task, rows(tag, n))
    # Arrival order, whole chunks only: 3 + 2 > 4, so b waits for the next call.
    assert [r.tags for r in fake.received] == [
        tags(1, 1), tags(2, 3), tags(3, 2) + tags(4, 2),
        tags(5, 9)[:4], tags(5, 9)[4:8], tags(5, 9)[8:]]


async def test_a_caller_cancelled_before_its_rows_went_is_never_sent(backend, fake):
    coalescer = CoalescingBackend(backend, 1)
    fake.delay_s = 0.2
    blocker = await start(coalescer, rows(1, 1))
    gone = await start(coalescer, rows(2, 3))
    stays = await start(coalescer, rows(3, 1))
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    check(fake, await blocker, rows(1, 1))
    check(fake, await stays, rows(3, 1))
    assert [r.tags for r in fake.received] == [tags(1, 1), tags(3, 1)]


async def test_a_deadline_that_passes_in_the_queue_answers_on_time_and_sends_nothing(
        backend, fake):
    coalescer = CoalescingBackend(backend, 1)
    fake.delay_s = 0.3
    blocker = await start(coalescer, rows(1, 1))
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        await coalescer.embed_texts(rows(2, 1), time.monotonic() + 0.1)
    assert time.monotonic() - started < 0.2
    check(fake, await blocker, rows(1, 1))
    assert [r.tags for r in fake.received] == [tags(1, 1)]


async def test_shared_call_near_deadline_fails_on_time_far_one_is_served(backend, fake):
    coalescer = CoalescingBackend(backend, 1)
    fake.delay_s = 0.3
    t0 = time.monotonic()
    blocker = await start(coalescer, rows(1, 1))
    near = await start(coalescer, rows(2, 1), timeout_s=0.45)  # sent at ~0.3, back at ~0.6
    far = await start(coalescer, rows(3, 2), timeout_s=5.0)
    with pytest.raises(DeadlineExceeded):
        await near
    near_at = time.monotonic() - t0
    check(fake, await far, rows(3, 2))
    far_at = time.monotonic() - t0
    assert [r.tags for r in fake.received] == [tags(1, 1), tags(2, 1) + tags(3, 2)]
    assert 0.43 <= near_at < 0.55, f"near caller answered after {near_at * 1000:.0f} ms"
    assert far_at >= 0.58, f"far caller answered after {far_at * 1000:.0f} ms"
    assert not fake.cancelled  # the shared call ran to its end for the far caller
    await blocker


async def test_a_call_whose_callers_are_all_gone_is_cancelled_and_frees_its_slot(backend, fake):
    coalescer = CoalescingBackend(backend, 1)
    fake.delay_s = 3.0
    a = await start(coalescer, rows(1, 1))
    b = await start(coalescer, rows(2, 1))  # queued behind a
    await wait_until(lambda: fake.in_progress == 1, 1.0, what="first call in Triton")
    a.cancel()
    await wait_until(lambda: fake.cancelled, 1.0, what="upstream call cancelled")
    # b's rows go in the freed slot at once (not after the 3 s call).
    await wait_until(lambda: len(fake.received) == 2, 1.0, what="b sent")
    b.cancel()
    await wait_until(lambda: len(fake.cancelled) == 2, 1.0, what="b's call cancelled")
    assert [r.tags for r in fake.cancelled] == [tags(1, 1), tags(2, 1)]
    assert fake.completed[TEXT_MODEL] == 0


async def test_one_bad_row_fails_only_the_request_that_owns_it(backend, fake):
    coalescer = CoalescingBackend(backend, 1)
    fake.delay_s = 0.1
    fake.fail_when = lambda a: grpc.StatusCode.INVALID_ARGUMENT if BAD in a[:, 0] else None
    bad = rows(2, 2)
    bad[1, 0] = BAD
    blocker = await start(coalescer, rows(1, 1))
    before = await start(coalescer, rows(3, 2))
    owner = await start(coalescer, bad)
    after = await start(coalescer, rows(4, 1))
    with pytest.raises(BackendRejected):
        await owner
    check(fake, await before, rows(3, 2))
    check(fake, await after, rows(4, 1))
    await blocker
    received = [r.tags for r in fake.received]
    bad_tags = tuple(int(t) for t in bad[:, 0])
    assert received[:2] == [tags(1, 1), tags(3, 2) + bad_tags + tags(4, 1)]
    # Then each caller's rows alone (concurrently: any order).
    assert sorted(received[2:]) == sorted([tags(3, 2), bad_tags, tags(4, 1)])


@pytest.mark.parametrize(("status", "error"), [
    (grpc.StatusCode.RESOURCE_EXHAUSTED, Overloaded),
    (grpc.StatusCode.UNAVAILABLE, BackendUnavailable),
])
async def test_triton_errors_reach_exactly_the_callers_of_that_call(backend, fake, status, error):
    coalescer = CoalescingBackend(backend, 1, max_rows={**MAX_ROWS, TEXT_MODEL: 4})
    fake.delay_s = 0.1
    fake.fail_when = lambda a: status if BAD in a[:, 0] else None
    marked = rows(2, 2)
    marked[0, 0] = BAD
    blocker = await start(coalescer, rows(1, 1))
    same_call = [await start(coalescer, marked), await start(coalescer, rows(3, 2))]
    next_call = await start(coalescer, rows(4, 2))  # 2 + 2 + 2 > 4
    for task in same_call:
        with pytest.raises(error):
            await task
    check(fake, await blocker, rows(1, 1))
    check(fake, await next_call, rows(4, 2))
    assert [r.rows for r in fake.received] == [1, 4, 2]  # no retry of a whole call


async def test_every_caller_gets_its_own_rows_under_concurrency(backend, fake):
    coalescer = CoalescingBackend(backend, 2)
    fake.delay_s = 0.02
    rng = random.Random(0)
    sizes = {tag: rng.randint(1, 5) for tag in range(1, 61)}

    async def caller(tag: int) -> None:
        await asyncio.sleep(rng.random() * 0.1)
        check(fake, await coalescer.embed_texts(rows(tag, sizes[tag]), None), rows(tag, sizes[tag]))

    await asyncio.gather(*(caller(tag) for tag in sizes))
    assert sum(r.rows for r in fake.received) == sum(sizes.values())  # each row sent once
    assert len(fake.received) < len(sizes) / 2  # and most shared a call


async def test_served_embed_calls_share_triton_calls(tiny_checkpoint, fake):
    """Through the gateway: 24 concurrent Embed text calls, 2 Triton calls in flight."""
    fake.delay_s = 0.0
    fake.fail_when = None
    async with running_gateway(tiny_checkpoint, fake.url, triton_max_calls_in_flight=2) as gw, \
            grpc.aio.insecure_channel(gw.target) as channel:
        stub = pb_grpc.SiglipServiceStub(channel)
        await stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text="warm up")]), timeout=10)
        fake.reset_counters()
        fake.delay_s = 0.2
        texts = [f"a photo of thing {i}" for i in range(24)]
        responses = await asyncio.gather(*(
            stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text=t)]), timeout=10)
            for t in texts))
        fake.delay_s = 0.0
        assert all(len(r.embeddings) == 1 for r in responses)
        assert fake.rows(TEXT_MODEL) == 24
        assert fake.calls[TEXT_MODEL] <= 6, [r.rows for r in fake.received]
    # Each call got the embedding of its own text.
    ids = TextTokenizer.from_pretrained(tiny_checkpoint, text_length=64).encode(texts)
    expected = l2_normalize(fake_embeddings(ids, fake.dim))
    got = np.array([r.embeddings[0].values for r in responses], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert len({tuple(row) for row in got}) == 24


def test_setting_parses_and_zero_turns_coalescing_off():
    env = "SIGLIP_TRITON_MAX_CALLS_IN_FLIGHT"
    assert Settings().triton_max_calls_in_flight >= 1  # on by default
    assert Settings.from_env({env: "0"}).triton_max_calls_in_flight == 0
    assert Settings.from_env({env: "4"}).triton_max_calls_in_flight == 4
    with pytest.raises(ValueError, match=env):
        Settings.from_env({env: "-1"})
    with pytest.raises(ValueError):
        CoalescingBackend(object(), 0)  # the server does not wrap the backend at 0
