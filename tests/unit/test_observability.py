"""gateway/observability without a server: which OTEL_* settings turn tracing on, request ids,
the JSON formatter, Triton's trace arguments, and a real OTLP/gRPC export from ``Tracing.start``.
"""

from __future__ import annotations

import json
import logging
import re

import pytest

from gateway.config import Settings
from gateway.embedded_triton.launcher import trace_args
from gateway.observability.logs import JsonFormatter, configure_logging
from gateway.observability.request import Observability, request_id_from
from gateway.observability.tracing import (
    Tracing,
    TracingConfig,
    TracingUnavailable,
    require_sdk,
)
from tests.support.otlp import OtlpGrpcReceiver, in_memory_tracing


@pytest.mark.parametrize("environ", [
    {},
    {"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"},  # no exporter named
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_SDK_DISABLED": "true"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317", "OTEL_TRACES_EXPORTER": "none"},
])
def test_tracing_is_off_unless_an_exporter_or_endpoint_is_set(environ):
    assert TracingConfig.from_env(environ) == TracingConfig()
    assert not Tracing.start(TracingConfig.from_env(environ)).enabled


def test_an_endpoint_turns_tracing_on_with_the_standard_settings():
    config = TracingConfig.from_env({
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317",
        "OTEL_SERVICE_NAME": "gw-eu", "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert config == TracingConfig(enabled=True, exporter="otlp", endpoint="http://traces:4317",
                                   service_name="gw-eu", sampler="parentbased_traceidratio",
                                   sampler_arg=0.25)
    console = TracingConfig.from_env({"OTEL_TRACES_EXPORTER": "console"})
    assert console.enabled and console.exporter == "console"
    assert console.service_name == "siglip-gateway"


@pytest.mark.parametrize(("environ", "message"), [
    ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_TRACES_EXPORTER": "otlp,console"}, "OTEL_TRACES_EXPORTER"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"},
     "OTLP over gRPC only"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_TRACES_SAMPLER": "traceidratio",
      "OTEL_TRACES_SAMPLER_ARG": "2"}, "between 0 and 1"),
])
def test_unsupported_settings_are_refused_by_name(environ, message):
    with pytest.raises(ValueError, match=message):
        TracingConfig.from_env(environ)


def test_without_the_exporter_installed_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules,
                        "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    config = TracingConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"})
    with pytest.raises(TracingUnavailable, match=re.escape("pip install 'siglip-gateway[otel]'")):
        require_sdk(config)
    require_sdk(TracingConfig())  # off: nothing needed


def test_tracing_start_exports_over_otlp_grpc_with_the_service_name():
    receiver = OtlpGrpcReceiver().start()
    try:
        tracing = Tracing.start(TracingConfig.from_env({
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
            "OTEL_SERVICE_NAME": "gw-test"}))
        obs = Observability(tracing)
        with obs.request("grpc", "Embed", {"x-request-id": "r-1"}) as scope:
            with tracing.stage_timer(lambda name: _null())("tokenize"):
                pass
        tracing.shutdown()  # flushes the batch
        spans = receiver.wait_for(lambda s: len(s) == 2, 10)
    finally:
        receiver.stop()
    by_name = {s.name: s for s in spans}
    assert by_name["Embed"].service == "gw-test"
    assert by_name["Embed"].attributes["request.id"] == "r-1"
    assert by_name["tokenize"].parent_id == by_name["Embed"].span_id
    assert by_name["Embed"].trace_id == scope.trace_id


def test_a_sampled_out_request_still_gets_an_id_and_says_so_downstream():
    tracing = Tracing.start(TracingConfig(enabled=True, exporter="console",
                                          sampler="always_off"))
    with Observability(tracing).request("grpc", "Embed", {}) as scope:
        with tracing.client_call("triton x", {}) as headers:
            pass
    assert len(scope.request_id) == 32
    # W3C: the context goes on, flagged not sampled, so Triton does not sample it either.
    assert int(headers["traceparent"].split("-")[3], 16) & 1 == 0
    tracing.shutdown()


@pytest.mark.parametrize(("given", "kept"), [
    ("abc-123", True), ("a" * 128, True), ("a" * 129, False), ("", False), (None, False),
    ("with space", False), ("ünïcode", False), ("line\nbreak", False), (b"bytes", False),
    ("00f067aa0ba902b7:trace/1+=@.", True),
])
def test_request_ids_from_callers_are_kept_only_when_safe(given, kept):
    rid = request_id_from(given)
    assert (rid == given) is kept
    if not kept:
        assert re.fullmatch(r"[0-9a-f]{32}", rid)


def test_generated_request_ids_differ():
    assert len({request_id_from(None) for _ in range(1000)}) == 1000


def test_json_lines_carry_the_request_id_of_the_request_being_handled():
    formatter = JsonFormatter()
    record = logging.LogRecord("gateway.x", logging.WARNING, __file__, 1, "hello %s", ("w",),
                               None)
    tracing, _ = in_memory_tracing()
    with Observability(tracing).request("http", "POST /v1/embed", {"x-request-id": "abc"}) as s:
        inside = json.loads(formatter.format(record))
    outside = json.loads(formatter.format(record))
    assert inside["request_id"] == "abc" and inside["trace_id"] == s.trace_id
    assert inside["message"] == "hello w" and inside["level"] == "WARNING"
    assert "request_id" not in outside
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", outside["ts"])


def test_an_exception_leaving_the_scope_without_a_status_is_a_server_error(caplog):
    caplog.set_level(logging.INFO, logger="gateway.requests")
    with pytest.raises(RuntimeError), Observability().request("http", "GET /x", {}):
        raise RuntimeError("boom")
    [record] = caplog.records
    assert record.request["status"] == "UNKNOWN"


def test_request_log_off_writes_no_line(caplog):
    caplog.set_level(logging.INFO, logger="gateway.requests")
    with Observability(log_requests=False).request("grpc", "Embed", {}):
        pass
    assert caplog.records == []
    with pytest.raises(ValueError, match="SIGLIP_REQUEST_LOG"):
        Settings.from_env({"SIGLIP_REQUEST_LOG": "maybe"})


def test_log_format_and_trace_config_settings():
    assert Settings.from_env({}).log_format == "text"
    with pytest.raises(ValueError, match="SIGLIP_LOG_FORMAT"):
        Settings.from_env({"SIGLIP_LOG_FORMAT": "xml"})
    with pytest.raises(ValueError, match="log format"):
        configure_logging("INFO", "xml")
    config = Settings.from_env({"SIGLIP_TRITON_TRACE_CONFIG":
                                "mode=opentelemetry  rate=0 opentelemetry,url=http://c/v1/traces"})
    assert trace_args(config.triton_trace_config) == [
        "--trace-config", "mode=opentelemetry", "--trace-config", "rate=0",
        "--trace-config", "opentelemetry,url=http://c/v1/traces"]
    assert trace_args("") == []


def _null():
    import contextlib

    return contextlib.nullcontext()
