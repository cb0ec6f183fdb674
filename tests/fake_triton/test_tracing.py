"""Traces against the fake Triton: the span tree of an RPC, the caller's W3C context as its
parent, the context sent on to Triton, the request id on the span, coalesced calls' links, and
nothing sent at all when tracing is off.

The gateway's tracer exports into memory (tests/support/otlp.py); the fake Triton records each
call's gRPC metadata, so the ``traceparent`` it got is compared with the spans.
"""

from __future__ import annotations

import asyncio
import itertools
import time

import grpc
import numpy as np
import pytest
import pytest_asyncio
from opentelemetry.trace import SpanKind, StatusCode

from gateway.backend.coalescing import CoalescingBackend
from gateway.backend.triton_client import TritonBackend
from gateway.contract import TEXT_MODEL, VISION_MODEL
from siglip.v1 import siglip_pb2 as pb
from siglip.v1 import siglip_pb2_grpc as pb_grpc
from tests.support.gateway_harness import running_gateway, small_raw_image
from tests.support.otlp import hex_id, in_memory_tracing

pytestmark = pytest.mark.timeout(90)

SERVICE = "siglip.v1.SiglipService"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
_unique = itertools.count()


def labels(n: int = 2) -> list[str]:
    """Labels never sent before: their embeddings are not cached, so Triton is called."""
    return [f"label {next(_unique)} {time.monotonic_ns()}" for _ in range(n)]


@pytest_asyncio.fixture(scope="module")
async def traced(tiny_checkpoint, fake):
    tracing, exporter = in_memory_tracing()
    async with running_gateway(tiny_checkpoint, fake.url, tracing=tracing) as gw:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            yield pb_grpc.SiglipServiceStub(channel), exporter


@pytest.fixture
def reset(fake, traced):
    fake.error = None
    fake.delay_s = 0.0
    fake.reset_counters()
    traced[1].clear()


def by_name(spans) -> dict:
    found = {}
    for span in spans:
        assert span.name not in found, f"two spans named {span.name}"
        found[span.name] = span
    return found


def traceparent(record) -> tuple[str, str]:
    """(trace id, parent span id) of the traceparent a fake Triton call carried."""
    value = dict(record.metadata)["traceparent"]
    version, trace_id, span_id, flags = value.split("-")
    assert version == "00" and int(flags, 16) & 1, value  # sampled
    return trace_id, span_id


async def test_a_classify_call_is_one_rpc_span_with_stage_and_triton_children(
        traced, fake, reset):
    stub, exporter = traced
    call = stub.Classify(pb.ClassifyRequest(images=[small_raw_image()], labels=labels()),
                         timeout=10)
    await call
    request_id = dict(await call.trailing_metadata())["x-request-id"]
    spans = by_name(exporter.get_finished_spans())
    rpc = spans[f"{SERVICE}/Classify"]
    assert rpc.kind is SpanKind.SERVER and rpc.parent is None
    assert rpc.attributes["request.id"] == request_id
    assert rpc.attributes["rpc.system"] == "grpc" and rpc.attributes["request.status"] == "OK"
    assert rpc.attributes["request.images"] == 1 and rpc.attributes["request.texts"] == 2
    trace_id = rpc.context.trace_id
    for stage in ("decode", "tokenize", "triton_vision", "triton_text"):
        assert spans[stage].parent.span_id == rpc.context.span_id, stage
        assert spans[stage].context.trace_id == trace_id
    for model, stage in ((VISION_MODEL, "triton_vision"), (TEXT_MODEL, "triton_text")):
        call_span = spans[f"triton {model}"]
        assert call_span.kind is SpanKind.CLIENT
        assert call_span.parent.span_id == spans[stage].context.span_id
        assert call_span.attributes["triton.model"] == model
        # What Triton got: this trace, with the call's span as the parent of its spans.
        [record] = [r for r in fake.received if r.model == model]
        assert traceparent(record) == (hex_id(trace_id, 32), hex_id(call_span.context.span_id, 16))
    assert set(spans) == {f"{SERVICE}/Classify", "decode", "tokenize", "triton_vision",
                          "triton_text", f"triton {VISION_MODEL}", f"triton {TEXT_MODEL}"}


async def test_the_callers_trace_context_is_the_parent_and_goes_on_to_triton(
        traced, fake, reset):
    stub, exporter = traced
    metadata = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),
                ("tracestate", "vendor=abc"))
    await stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text=labels(1)[0])]),
                     metadata=metadata, timeout=10)
    spans = by_name(exporter.get_finished_spans())
    rpc = spans[f"{SERVICE}/Embed"]
    assert hex_id(rpc.context.trace_id, 32) == TRACE_ID
    assert rpc.parent.is_remote and hex_id(rpc.parent.span_id, 16) == PARENT_ID
    [record] = fake.received
    assert traceparent(record)[0] == TRACE_ID
    assert dict(record.metadata)["tracestate"] == "vendor=abc"


async def test_a_server_failure_marks_the_span_and_a_caller_mistake_does_not(
        traced, fake, reset):
    stub, exporter = traced
    fake.error = grpc.StatusCode.INTERNAL
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text=labels(1)[0])]), timeout=10)
    assert failed.value.code() is grpc.StatusCode.INTERNAL
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Classify(pb.ClassifyRequest(labels=["x"]), timeout=10)  # no images
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    rpcs = {s.name: s for s in exporter.get_finished_spans() if s.kind is SpanKind.SERVER}
    internal, invalid = rpcs[f"{SERVICE}/Embed"], rpcs[f"{SERVICE}/Classify"]
    assert internal.status.status_code is StatusCode.ERROR
    assert internal.attributes["request.status"] == "INTERNAL"
    assert invalid.status.status_code is StatusCode.UNSET
    assert invalid.attributes["request.status"] == "INVALID_ARGUMENT"
    ids = {dict(e.trailing_metadata())["x-request-id"] for e in (failed.value, refused.value)}
    assert ids == {internal.attributes["request.id"], invalid.attributes["request.id"]}


async def test_an_embed_stream_is_one_rpc_span_over_its_messages(traced, fake, reset):
    stub, exporter = traced

    async def messages():
        for text in labels(3):
            yield pb.EmbedStreamRequest(inputs=[pb.EmbedInput(text=text)])

    responses = [r async for r in stub.EmbedStream(messages(), timeout=10)]
    assert len(responses) == 3
    spans = exporter.get_finished_spans()
    [rpc] = [s for s in spans if s.kind is SpanKind.SERVER]
    assert rpc.name == f"{SERVICE}/EmbedStream" and rpc.attributes["request.texts"] == 3
    calls = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert calls and all(s.context.trace_id == rpc.context.trace_id for s in calls)
    assert {traceparent(r)[0] for r in fake.received} == {hex_id(rpc.context.trace_id, 32)}


async def test_a_coalesced_call_is_parented_to_its_first_caller_and_linked_to_the_others(
        fake, reset):
    tracing, exporter = in_memory_tracing()
    backend = TritonBackend(fake.url, max_message_bytes=64 * 1024 * 1024, default_timeout_s=10,
                            tracing=tracing)
    coalescer = CoalescingBackend(backend, 1, tracing=tracing)
    tracer = tracing._provider.get_tracer("test")
    rows = {name: np.full((1, 64), i, dtype=np.int64) for i, name in enumerate("abc", 1)}
    fake.delay_s = 0.3

    async def caller(name: str) -> None:
        with tracer.start_as_current_span(name):
            await coalescer.embed_texts(rows[name], None)

    try:
        first = asyncio.create_task(caller("a"))  # takes the one slot
        await asyncio.sleep(0.1)
        await asyncio.gather(caller("b"), caller("c"), first)  # b and c wait, then go together
    finally:
        await backend.close()
    spans = exporter.get_finished_spans()
    callers = {s.name: s for s in spans if s.name in rows}
    calls = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert [s.attributes["triton.requests"] for s in calls] == [1, 2]
    shared = calls[1]
    assert shared.parent.span_id == callers["b"].context.span_id
    assert [link.context.span_id for link in shared.links] == [callers["c"].context.span_id]
    assert [r.tags for r in fake.received] == [(1,), (2, 3)]
    assert traceparent(fake.received[1]) == (hex_id(callers["b"].context.trace_id, 32),
                                             hex_id(shared.context.span_id, 16))


async def test_with_tracing_off_no_trace_context_goes_to_triton(tiny_checkpoint, fake, reset):
    async with running_gateway(tiny_checkpoint, fake.url) as gw:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            call = pb_grpc.SiglipServiceStub(channel).Classify(
                pb.ClassifyRequest(images=[small_raw_image()], labels=labels()),
                metadata=(("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),), timeout=10)
            await call
            assert len(dict(await call.trailing_metadata())["x-request-id"]) == 32
    assert fake.received
    for record in fake.received:
        assert not {"traceparent", "tracestate"} & set(dict(record.metadata)), record
