"""Coalesced Triton calls: many callers' rows go to Triton together as one request.

Every gateway request used to make its own outgoing Triton call, and at high concurrency that
call's gRPC machinery costs the gateway as much CPU as the incoming one. ``CoalescingBackend``
wraps ``TritonBackend`` and keeps, per model, at most K calls in flight:

- **Send.** With a free slot, a caller's rows go at once (no added latency at low load). While
  all K are busy, arriving rows queue; when a call returns, the queued rows (first come first,
  up to the model's ``MAX_ROWS``, never splitting a caller's chunk) go out as one call, stacked
  into one array. A caller with more than ``MAX_ROWS`` rows is cut into chunks first, as
  ``TritonBackend`` does.
- **Order.** Each caller gets exactly its own rows back, in its order: a call's result is cut
  at the offsets its callers' rows were stacked at.
- **Cancellation.** A caller that is cancelled, or whose deadline passes, before its rows were
  sent leaves the queue: its rows are never sent. When every caller of a call in flight is
  gone, the call is cancelled, so Triton stops working for nobody.
- **Deadlines.** A shared call runs until the latest deadline among its callers (no deadline:
  the backend's default timeout), so nobody's rows are cut short by a neighbour; each caller
  waits only until its own deadline and then gets ``DeadlineExceeded`` while the call goes on
  for the others.
- **Errors.** Triton's INVALID_ARGUMENT (``BackendRejected``) for a call with several callers
  says one row is bad, not which: each caller's rows are sent again on their own, so only the
  request that owns the bad row fails. Those re-sends run in the slot of the rejected call,
  concurrently, so for that moment a model may have more than K calls in flight. Every other
  error (``Overloaded`` for RESOURCE_EXHAUSTED, ``BackendUnavailable``, ``DeadlineExceeded``,
  ``BackendError``) goes to exactly the callers in that call.

- **Traces.** A call's span (tracing on) is a child of its first caller's span, with span
  links to the other callers', so each request's trace leads to the call that carried its rows.

K = 0 (``SIGLIP_TRITON_MAX_CALLS_IN_FLIGHT``) turns this off: the server then hands the engine
``TritonBackend`` itself. The engine's single-flight of texts sits above this and is unchanged.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from gateway.contract import MAX_ROWS, PLAIN_NAMES, TritonNames, base_model
from gateway.core.errors import BackendError, BackendRejected, DeadlineExceeded, GatewayError
from gateway.observability.tracing import Tracing

log = logging.getLogger(__name__)


class ChunkBackend(Protocol):
    def infer_chunk(self, model: str, array: np.ndarray, deadline: float | None,
                    links: Sequence[Any] = ()) -> Awaitable[np.ndarray]: ...


@dataclass(eq=False)
class _Entry:
    """One caller's chunk: rows waiting for, or riding in, a call."""

    rows: np.ndarray
    deadline: float | None
    future: asyncio.Future[np.ndarray]
    trace: Any = None  # the caller's traced context (None: tracing off)


@dataclass(eq=False)
class _Call:
    entries: list[_Entry]
    task: asyncio.Task[None] | None = None
    finished: bool = False


@dataclass(eq=False)
class _Lane:
    """One model's queue and its calls in flight."""

    max_rows: int
    queue: collections.deque[_Entry] = field(default_factory=collections.deque)
    calls: set[_Call] = field(default_factory=set)


class CoalescingBackend:
    """The engine's backend (``embed_images``, ``embed_texts``, ``embed_encoded``), coalescing
    callers' rows into at most ``max_calls_in_flight`` Triton calls per model. ``names``: the
    Triton models of the served model it calls (one coalescer per served model)."""

    def __init__(self, backend: ChunkBackend, max_calls_in_flight: int,
                 max_rows: Mapping[str, int] = MAX_ROWS, tracing: Tracing | None = None,
                 names: TritonNames = PLAIN_NAMES) -> None:
        if max_calls_in_flight < 1:
            raise ValueError("max_calls_in_flight must be at least 1")
        self._backend = backend
        self._tracing = tracing or Tracing()
        self._k = max_calls_in_flight
        self._names = names
        self._lanes = {model: _Lane(max_rows[base_model(model)])
                       for model in (names.vision, names.text, names.encoded)}

    async def embed_images(self, pixels: np.ndarray, deadline: float | None = None) -> np.ndarray:
        return await self.infer(self._names.vision, pixels, deadline)

    async def embed_texts(self, input_ids: np.ndarray, deadline: float | None = None) -> np.ndarray:
        return await self.infer(self._names.text, input_ids, deadline)

    async def embed_encoded(self, images: list[bytes],
                            deadline: float | None = None) -> np.ndarray:
        array = np.empty((len(images), 1), dtype=np.object_)
        array[:, 0] = images
        return await self.infer(self._names.encoded, array, deadline)

    async def infer(self, model: str, array: np.ndarray, deadline: float | None) -> np.ndarray:
        """One caller's rows → their embeddings, in order; raises the error of its own call."""
        lane = self._lanes[model]
        loop = asyncio.get_running_loop()
        trace = self._tracing.capture()
        entries = [_Entry(array[i:i + lane.max_rows], deadline, loop.create_future(), trace)
                   for i in range(0, len(array), lane.max_rows)]
        lane.queue.extend(entries)
        self._pump(lane, model)
        futures = [e.future for e in entries]
        try:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            _, pending = await asyncio.wait(futures, timeout=timeout,
                                            return_when=asyncio.FIRST_EXCEPTION)
            errors = [f.exception() for f in futures if f.done() and not f.cancelled()]
            for error in errors:  # in order: the first failed chunk's error is the caller's
                if error is not None:
                    raise error
            if pending:
                raise DeadlineExceeded("deadline exceeded while waiting for the inference server")
        finally:
            # Leaving (an error, the deadline, or the caller cancelled): drop what is unsent.
            for future in futures:
                future.cancel()
        parts = [f.result() for f in futures]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _pump(self, lane: _Lane, model: str) -> None:
        """Starts calls while a slot is free and rows wait."""
        while len(lane.calls) < self._k:
            entries = _take(lane)
            if not entries:
                return
            call = _Call(entries)
            lane.calls.add(call)
            call.task = asyncio.create_task(self._run(lane, model, call))
            for entry in entries:
                entry.future.add_done_callback(lambda _f, c=call: _abandon_if_unwanted(c))

    async def _run(self, lane: _Lane, model: str, call: _Call) -> None:
        try:
            await self._send(model, call.entries)
        finally:
            call.finished = True
            lane.calls.discard(call)
            self._pump(lane, model)

    async def _send(self, model: str, entries: list[_Entry]) -> None:
        rows = [e.rows for e in entries]
        array = rows[0] if len(rows) == 1 else np.concatenate(rows)
        deadlines = [e.deadline for e in entries]
        deadline = None if None in deadlines else max(deadlines)  # type: ignore[type-var]
        try:
            if entries[0].trace is None:
                out = await self._backend.infer_chunk(model, array, deadline)
            else:
                with self._tracing.activate(entries[0].trace):
                    out = await self._backend.infer_chunk(
                        model, array, deadline, [e.trace for e in entries[1:]])
        except BackendRejected as exc:
            if len(entries) == 1:
                _fail(entries, exc)
                return
            # Which caller's row was bad is not said: each caller's rows go again, alone.
            await asyncio.gather(*(self._send(model, [e]) for e in entries if not e.future.done()))
            return
        except GatewayError as exc:
            _fail(entries, exc)
            return
        except Exception:  # a bug: its callers must not wait for a call that is gone
            log.exception("%s call of %d rows failed", model, len(array))
            _fail(entries, BackendError("inference failed"))
            return
        start = 0
        for entry in entries:
            end = start + len(entry.rows)
            if not entry.future.done():
                entry.future.set_result(out[start:end])
            start = end


def _take(lane: _Lane) -> list[_Entry]:
    """The next call's entries: waiting ones in arrival order, up to the model's max rows."""
    entries: list[_Entry] = []
    rows = 0
    now = time.monotonic()
    while lane.queue:
        entry = lane.queue[0]
        if entry.future.done():  # its caller left before the rows were sent
            lane.queue.popleft()
            continue
        if entry.deadline is not None and entry.deadline <= now:
            lane.queue.popleft()
            entry.future.set_exception(
                DeadlineExceeded("deadline exceeded before the request reached Triton"))
            continue
        if rows + len(entry.rows) > lane.max_rows:
            break
        lane.queue.popleft()
        entries.append(entry)
        rows += len(entry.rows)
    return entries


def _fail(entries: list[_Entry], exc: GatewayError) -> None:
    for entry in entries:
        if not entry.future.done():
            # A fresh instance per caller: one exception object raised from several tasks
            # would collect every task's traceback.
            entry.future.set_exception(type(exc)(exc.message, field=exc.field))


def _abandon_if_unwanted(call: _Call) -> None:
    """Cancels a call in flight once none of its callers waits for it (all are answered or
    gone, and some are gone: answered ones alone mean the call is ending anyway)."""
    futures = [e.future for e in call.entries]
    if (not call.finished and call.task is not None and all(f.done() for f in futures)
            and any(f.cancelled() for f in futures)):
        call.task.cancel()
