"""Traces across the gateway and the real embedded Triton: Triton's own OpenTelemetry spans
(``--trace-config mode=opentelemetry``, exported over OTLP/HTTP to the session's receiver,
tests/conftest.py) join the gateway's trace, as children of the gateway's Triton-call spans,
with tensors in the gRPC messages and in shared memory.

Observed with Triton 2.51 (the nvidia-pytriton wheel): it does not export the spans of every
traced call (in these runs one ``siglip_vision`` call in 4 to 8 had none, whatever the
transport), so the test sends three calls and checks that each model's spans join the trace
at least once, and that every span Triton exports for these traces hangs from the gateway's.
"""

from __future__ import annotations

import itertools
import time

import grpc
import pytest
from opentelemetry.trace import SpanKind

from siglip.v1 import siglip_pb2 as pb
from siglip.v1 import siglip_pb2_grpc as pb_grpc
from tests.support.gateway_harness import running_gateway, small_raw_image
from tests.support.otlp import hex_id, in_memory_tracing

pytestmark = [pytest.mark.triton, pytest.mark.asyncio(loop_scope="session")]

_unique = itertools.count()


@pytest.mark.parametrize("triton_shm", ["off", "on"])
async def test_tritons_spans_join_the_gateways_trace(tiny_checkpoint, embedded_triton,
                                                     triton_traces, triton_shm):
    tracing, exporter = in_memory_tracing()
    async with running_gateway(tiny_checkpoint, embedded_triton.grpc_url, tracing=tracing,
                               ready_timeout_s=60, triton_shm=triton_shm) as gw:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            for _ in range(3):
                labels = [f"traced label {next(_unique)} {time.monotonic_ns()}" for _ in "ab"]
                response = await pb_grpc.SiglipServiceStub(channel).Classify(
                    pb.ClassifyRequest(images=[small_raw_image()], labels=labels), timeout=60)
                assert [len(r.scores) for r in response.results] == [2]
    spans = exporter.get_finished_spans()
    traces = {hex_id(s.context.trace_id, 32) for s in spans if s.kind is SpanKind.SERVER}
    assert len(traces) == 3
    calls = {hex_id(s.context.span_id, 16): s.attributes["triton.model"]
             for s in spans if s.kind is SpanKind.CLIENT}
    assert sorted(calls.values()) == ["siglip_text"] * 3 + ["siglip_vision"] * 3

    def joined_models(received) -> set[str]:
        """Models whose Triton top span (InferRequest) is a child of one of our call spans."""
        return {calls[s.parent_id] for s in received
                if s.trace_id in traces and s.parent_id in calls}

    received = triton_traces.wait_for(
        lambda got: joined_models(got) == {"siglip_vision", "siglip_text"}, 30)
    ours = [s for s in received if s.trace_id in traces]
    tops = [s for s in ours if s.parent_id in calls]
    assert {s.service for s in tops} == {"triton-inference-server"}
    # Below each top span, the model's span and its compute span, in the same trace.
    ids = {s.span_id: s for s in ours}
    for span in ours:
        assert span.parent_id in calls or span.parent_id in ids, span
        if span.parent_id in ids:
            assert ids[span.parent_id].trace_id == span.trace_id
    assert {"siglip_vision", "siglip_text", "compute"} <= {s.name for s in ours}
