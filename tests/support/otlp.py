"""Trace collection for the tracing tests: an in-memory tracer for an in-process gateway, and
tiny OTLP receivers (HTTP, as Triton exports; gRPC, as the gateway exports) that keep every
span they are sent.

Spans are compared by hex ids: ``trace_id`` 32 digits, ``span_id``/``parent_id`` 16.
"""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.observability.tracing import Tracing


def in_memory_tracing() -> tuple[Tracing, InMemorySpanExporter]:
    """A gateway tracer whose finished spans land in the returned exporter, synchronously."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def hex_id(value: int, digits: int) -> str:
    return format(value, f"0{digits}x")


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    service: str
    attributes: dict[str, Any] = field(default_factory=dict)


def _attributes(items: list[dict[str, Any]]) -> dict[str, Any]:
    out = {}
    for item in items:
        value = item.get("value", {})
        out[item["key"]] = next(iter(value.values()), None) if value else None
    return out


def _from_json(body: dict[str, Any]) -> list[ReceivedSpan]:
    """OTLP/JSON: ids are hex strings (the OTLP spec), not protobuf-JSON base64."""
    spans = []
    for rs in body.get("resourceSpans", []):
        service = _attributes(rs.get("resource", {}).get("attributes", [])).get("service.name")
        for ss in rs.get("scopeSpans", []):
            for s in ss.get("spans", []):
                spans.append(ReceivedSpan(s["name"], s["traceId"].lower(), s["spanId"].lower(),
                                          s.get("parentSpanId", "").lower(), str(service),
                                          _attributes(s.get("attributes", []))))
    return spans


def _from_proto(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for rs in request.resource_spans:
        service = next((a.value.string_value for a in rs.resource.attributes
                        if a.key == "service.name"), "")
        for ss in rs.scope_spans:
            for s in ss.spans:
                attributes = {a.key: getattr(a.value, a.value.WhichOneof("value") or "string_value")
                              for a in s.attributes}
                spans.append(ReceivedSpan(s.name, s.trace_id.hex(), s.span_id.hex(),
                                          s.parent_span_id.hex(), service, attributes))
    return spans


class _Collector:
    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self._lock = threading.Lock()

    def add(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self.spans.extend(spans)

    def wait_for(self, predicate: Callable[[list[ReceivedSpan]], bool],
                 timeout_s: float) -> list[ReceivedSpan]:
        """The spans so far once ``predicate`` holds for them; fails after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            with self._lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"spans not received within {timeout_s} s: {spans}")
            time.sleep(0.05)


class OtlpHttpReceiver(_Collector):
    """POST /v1/traces, OTLP/HTTP with JSON or protobuf bodies, on 127.0.0.1 (a thread)."""

    def __init__(self) -> None:
        super().__init__()
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if "json" in self.headers.get("content-type", ""):
                    collector.add(_from_json(json.loads(body)))
                    reply, kind = b"{}", "application/json"
                else:
                    collector.add(_from_proto(
                        trace_service_pb2.ExportTraceServiceRequest.FromString(body)))
                    reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                    kind = "application/x-protobuf"
                self.send_response(200)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    def start(self) -> OtlpHttpReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class OtlpGrpcReceiver(_Collector, trace_service_pb2_grpc.TraceServiceServicer):
    """The OTLP/gRPC trace service on 127.0.0.1 (sync grpc server, its own threads)."""

    def __init__(self) -> None:
        super().__init__()
        from concurrent.futures import ThreadPoolExecutor

        self._server = grpc.server(ThreadPoolExecutor(2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")

    def Export(self, request: Any, context: Any) -> Any:
        self.add(_from_proto(request))
        return trace_service_pb2.ExportTraceServiceResponse()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OtlpGrpcReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(0)
