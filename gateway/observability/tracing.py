"""OpenTelemetry tracing of the gateway: configuration, spans, and trace context to Triton.

Off unless the standard settings turn it on (``TracingConfig.from_env``, read once at start-up):
``OTEL_TRACES_EXPORTER=otlp|console``, or an OTLP endpoint (``OTEL_EXPORTER_OTLP_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``); ``OTEL_SDK_DISABLED=true`` or
``OTEL_TRACES_EXPORTER=none`` keep it off. The SDK and the OTLP exporter are the optional
``otel`` extra and are imported only when tracing is on: off, every method here returns at its
first line, so the request path pays a method call, not a span.

Spans (names are the stage names of ``gateway.metrics``): the request's SERVER span (opened by
``request.py``), child spans ``decode``, ``tokenize``, ``triton_vision``, ``triton_text`` (the
engine's stages, timed for the histogram at the same time by ``stage``), and under those one
CLIENT span per Triton call, whose W3C ``traceparent``/``tracestate`` go to Triton as gRPC
metadata (Triton's ``--trace-config mode=opentelemetry`` joins the trace from them). A call the
coalescer (``gateway/backend/coalescing.py``) sends for several requests is parented to the
first of them and carries span links to the others. Context is W3C trace context only
(``OTEL_PROPAGATORS`` is not read); the provider is this process's own, never the global one.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

SERVICE_NAME = "siglip-gateway"
SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
            "parentbased_always_off", "parentbased_traceidratio")
EXPORTERS = ("otlp", "console")
# What a caller may send and Triton receives: W3C trace context.
TRACE_HEADERS = ("traceparent", "tracestate")
INSTALL_HINT = "pip install 'siglip-gateway[otel]'"
_NULL = contextlib.nullcontext()


class TracingUnavailable(RuntimeError):
    """Tracing is turned on but the OpenTelemetry SDK or exporter is not installed."""


@dataclass(frozen=True)
class TracingConfig:
    """What the ``OTEL_*`` settings ask for; ``enabled`` False means no tracing at all."""

    enabled: bool = False
    exporter: str = "otlp"
    # Empty: the exporter's default (localhost:4317). The exporter itself reads the other
    # OTEL_EXPORTER_OTLP_* settings (headers, certificate, insecure, timeout, compression).
    endpoint: str = ""
    service_name: str = SERVICE_NAME
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TracingConfig:
        """Raises ValueError for a setting outside what is supported."""
        def get(name: str) -> str:
            return environ.get(name, "").strip()

        exporters = [e.strip().lower() for e in get("OTEL_TRACES_EXPORTER").split(",")
                     if e.strip()]
        endpoint = get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or get("OTEL_EXPORTER_OTLP_ENDPOINT")
        if get("OTEL_SDK_DISABLED").lower() == "true" or exporters == ["none"]:
            return cls()
        if not exporters and not endpoint:
            return cls()
        exporter = exporters[0] if exporters else "otlp"
        if len(exporters) > 1 or exporter not in EXPORTERS:
            raise ValueError(f"OTEL_TRACES_EXPORTER={get('OTEL_TRACES_EXPORTER')!r}: the gateway "
                             f"exports to one of {', '.join(EXPORTERS)} (or none)")
        protocol = (get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                    or get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc")
        if exporter == "otlp" and protocol != "grpc":
            raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r}: the gateway exports "
                             "OTLP over gRPC only (a collector's port 4317)")
        sampler = get("OTEL_TRACES_SAMPLER").lower() or cls.sampler
        if sampler not in SAMPLERS:
            raise ValueError(f"OTEL_TRACES_SAMPLER={sampler!r}: one of {', '.join(SAMPLERS)}")
        raw_arg = get("OTEL_TRACES_SAMPLER_ARG")
        try:
            sampler_arg = float(raw_arg) if raw_arg and "ratio" in sampler else 1.0
        except ValueError:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={raw_arg!r} is not a number") from None
        if not 0.0 <= sampler_arg <= 1.0:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG={raw_arg!r} is not between 0 and 1")
        return cls(enabled=True, exporter=exporter, endpoint=endpoint,
                   service_name=get("OTEL_SERVICE_NAME") or SERVICE_NAME,
                   sampler=sampler, sampler_arg=sampler_arg)


class Tracing:
    """This process's tracer, or nothing (``Tracing()``: every method is a no-op)."""

    def __init__(self, provider: Any = None) -> None:
        """``provider``: an SDK ``TracerProvider`` (``start`` builds one; tests pass their
        own with an in-memory exporter). None: tracing off."""
        self.enabled = provider is not None
        self._provider = provider
        self._tracer = provider.get_tracer("siglip-gateway") if provider is not None else None
        if provider is not None:
            from opentelemetry import context, trace
            from opentelemetry.trace.propagation.tracecontext import (
                TraceContextTextMapPropagator,
            )

            self._otel_context = context
            self._trace = trace
            self._propagator = TraceContextTextMapPropagator()

    @classmethod
    def start(cls, config: TracingConfig) -> Tracing:
        """The tracer ``config`` asks for; raises TracingUnavailable without the SDK."""
        if not config.enabled:
            return cls()
        require_sdk(config)
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        if config.exporter == "console":
            exporter = ConsoleSpanExporter()
        else:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.endpoint or None)
        provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            sampler=_sampler(config))
        provider.add_span_processor(BatchSpanProcessor(exporter))
        log.info("tracing on: %s exporter%s, sampler %s, service %s", config.exporter,
                 f" to {config.endpoint}" if config.endpoint else "", config.sampler,
                 config.service_name)
        return cls(provider)

    def shutdown(self) -> None:
        """Exports what is buffered; after it, spans are dropped."""
        if self._provider is not None:
            self._provider.shutdown()

    # -- the request's span (request.py) ------------------------------------------------
    def start_server_span(self, name: str, carrier: Mapping[str, Any],
                          attributes: Mapping[str, Any]) -> tuple[Any, object] | None:
        """A SERVER span, child of the caller's W3C context in ``carrier``, made current.
        Returns (span, token) for ``end_server_span``, or None when off."""
        if self._tracer is None:
            return None
        parent = self._propagator.extract(carrier) if _has_context(carrier) else None
        span = self._tracer.start_span(name, context=parent,
                                       kind=self._trace.SpanKind.SERVER, attributes=attributes)
        token = self._otel_context.attach(self._trace.set_span_in_context(span))
        return span, token

    def end_server_span(self, opened: tuple[Any, object], attributes: Mapping[str, Any],
                        error: str | None) -> None:
        """``error``: a description when the request failed on the server's side."""
        span, token = opened
        span.set_attributes(attributes)
        if error is not None:
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, error))
        span.end()
        self._otel_context.detach(token)

    # -- stages and Triton calls -----------------------------------------------------------
    def stage_timer(self, timer: Callable[[str], AbstractContextManager[None]],
                    ) -> Callable[[str], AbstractContextManager[None]]:
        """``timer`` (e.g. ``Metrics.stage``) as it is when off; on, each stage is also a span."""
        if self._tracer is None:
            return timer
        tracer = self._tracer

        @contextlib.contextmanager
        def stage(name: str) -> Iterator[None]:
            with tracer.start_as_current_span(name), timer(name):
                yield
        return stage

    def capture(self) -> Any:
        """The current context (to parent work done later in another task), None when off."""
        return None if self._tracer is None else self._otel_context.get_current()

    def activate(self, captured: Any) -> AbstractContextManager[Any]:
        """Makes a ``capture()``d context current for the block."""
        if captured is None:
            return _NULL
        return self._activate(captured)

    @contextlib.contextmanager
    def _activate(self, captured: Any) -> Iterator[None]:
        token = self._otel_context.attach(captured)
        try:
            yield
        finally:
            self._otel_context.detach(token)

    def client_call(self, name: str, attributes: Mapping[str, Any],
                    links: Sequence[Any] = ()) -> AbstractContextManager[dict[str, str] | None]:
        """A CLIENT span around one outgoing call, child of the current context, linked to
        the ``capture()``d contexts in ``links``; yields the W3C headers to send (None: off)."""
        if self._tracer is None:
            return _NULL
        return self._client_call(name, attributes, links)

    @contextlib.contextmanager
    def _client_call(self, name: str, attributes: Mapping[str, Any],
                     links: Sequence[Any]) -> Iterator[dict[str, str]]:
        trace = self._trace
        span_links = [trace.Link(c) for c in
                      (trace.get_current_span(ctx).get_span_context() for ctx in links)
                      if c.is_valid]
        with self._tracer.start_as_current_span(name, kind=trace.SpanKind.CLIENT,
                                                attributes=attributes, links=span_links):
            headers: dict[str, str] = {}
            self._propagator.inject(headers)
            yield headers


def require_sdk(config: TracingConfig) -> None:
    """Raises TracingUnavailable when ``config`` turns tracing on and what it needs is not
    installed (the ``otel`` extra)."""
    if not config.enabled:
        return
    modules = ["opentelemetry.sdk.trace"]
    if config.exporter == "otlp":
        modules.append("opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise TracingUnavailable(
                f"OTEL_* settings turn tracing on but {exc.name or module} is not installed: "
                f"{INSTALL_HINT}, or unset them") from None


def trace_id_of(span: Any) -> str | None:
    """The 32-hex-digit trace id of a span, None when it has none."""
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _has_context(carrier: Mapping[str, Any]) -> bool:
    return "traceparent" in carrier


def _sampler(config: TracingConfig) -> Any:
    from opentelemetry.sdk.trace import sampling

    ratio = sampling.TraceIdRatioBased(config.sampler_arg)
    root = {"always_on": sampling.ALWAYS_ON, "always_off": sampling.ALWAYS_OFF,
            "traceidratio": ratio}
    name = config.sampler
    if name.startswith("parentbased_"):
        return sampling.ParentBased(root[name.removeprefix("parentbased_")])
    return root[name]
