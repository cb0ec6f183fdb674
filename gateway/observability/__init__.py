"""Observability beyond the Prometheus metrics: traces, the per-request log line, request ids.

- ``tracing.py``: OpenTelemetry, configured from the standard ``OTEL_*`` settings at start-up,
  a no-op unless they turn it on; stage spans and the W3C trace context sent to Triton.
- ``request.py``: one scope per request, for every protocol adapter (gRPC here, HTTP beside
  it): request id, the request's span, its input counts and status, its log line.
- ``logs.py``: logging set-up in one place (text or JSON lines) and the request log line.
"""
