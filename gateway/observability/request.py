"""One scope per request, the same for every protocol adapter (gRPC, HTTP).

``Observability.request(...)`` opens it: the request id (the caller's ``x-request-id`` when it
is a safe token, else a fresh one), the request's SERVER span (child of the caller's W3C trace
context, when tracing is on), and the id in a context variable, so every log record emitted
while the request is handled carries it (``logs.py``). The adapter adds input counts and sets
the status; on leaving, the span ends and one log line is written (logger
``gateway.requests``, INFO). The adapter returns the id to the caller (gRPC: trailing metadata
and the error's ``RequestInfo``; HTTP: a response header).

Only counts and sizes are recorded: never image bytes or text.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.observability.tracing import Tracing, trace_id_of

REQUEST_ID_HEADER = "x-request-id"
MAX_REQUEST_ID_CHARS = 128
# A caller's id is echoed in metadata and logs: printable token characters only.
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{MAX_REQUEST_ID_CHARS}}}")
REQUEST_LOG = logging.getLogger("gateway.requests")

_current: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar(
    "siglip_request", default=None)


def request_id_from(given: Any) -> str:
    """``given`` when it is 1-128 characters of ``[A-Za-z0-9._:/+=@-]``, else a new id
    (32 hex digits)."""
    if isinstance(given, str) and _REQUEST_ID.fullmatch(given):
        return given
    return os.urandom(16).hex()


def current_request() -> RequestScope | None:
    """The scope of the request this code runs for (None outside one)."""
    return _current.get()


@dataclass(eq=False)
class RequestScope:
    """What is known about one request; the adapter fills in inputs and status."""

    request_id: str
    protocol: str
    method: str
    start: float = field(default_factory=time.perf_counter)
    status: str = "OK"
    # A server-side failure (5xx, gRPC INTERNAL/UNAVAILABLE/...): the span is marked ERROR.
    server_error: bool = False
    images: int = 0
    texts: int = 0
    input_bytes: int = 0
    span: Any = None
    trace_id: str | None = None
    # The served model's name, once the adapter knows which the request is for.
    model: str = ""

    def add_inputs(self, images: int = 0, texts: int = 0, nbytes: int = 0) -> None:
        self.images += images
        self.texts += texts
        self.input_bytes += nbytes

    def set_status(self, status: str, *, server_error: bool = False) -> None:
        """``status``: the protocol's own (a gRPC code name, an HTTP status)."""
        self.status = status
        self.server_error = server_error

    def fields(self, duration_s: float) -> dict[str, Any]:
        out = {"request_id": self.request_id, "protocol": self.protocol, "method": self.method,
               "status": self.status, "duration_ms": round(duration_s * 1000, 3),
               "images": self.images, "texts": self.texts, "input_bytes": self.input_bytes}
        if self.model:
            out["model"] = self.model
        if self.trace_id is not None:
            out["trace_id"] = self.trace_id
        return out


class Observability:
    """Per-request observability for any adapter: ``with obs.request(...) as scope``."""

    def __init__(self, tracing: Tracing | None = None, *, log_requests: bool = True,
                 log: logging.Logger = REQUEST_LOG) -> None:
        """``log_requests``: write the request line (SIGLIP_REQUEST_LOG)."""
        self.tracing = tracing or Tracing()
        self.log_requests = log_requests
        self._log = log

    @contextlib.contextmanager
    def request(self, protocol: str, method: str, headers: Mapping[str, Any], *,
                span_name: str | None = None,
                attributes: Mapping[str, Any] | None = None) -> Iterator[RequestScope]:
        """``headers``: the request's metadata or HTTP headers, lower-case keys (read:
        ``x-request-id``, ``traceparent``, ``tracestate``). An exception leaving the block
        without a status set first counts as a server error (status ``UNKNOWN``)."""
        scope = RequestScope(request_id_from(headers.get(REQUEST_ID_HEADER)), protocol, method)
        opened = None
        if self.tracing.enabled:
            span_attributes = {"request.id": scope.request_id, "rpc.method": method,
                               "network.protocol.name": protocol, **(attributes or {})}
            opened = self.tracing.start_server_span(span_name or method, headers,
                                                    span_attributes)
            if opened is not None:
                scope.span = opened[0]
                scope.trace_id = trace_id_of(scope.span)
        token = _current.set(scope)
        try:
            yield scope
        except BaseException:
            if scope.status == "OK":
                scope.set_status("UNKNOWN", server_error=True)
            raise
        finally:
            duration = time.perf_counter() - scope.start
            if opened is not None:
                self.tracing.end_server_span(
                    opened, {"request.status": scope.status, "request.images": scope.images,
                             "request.texts": scope.texts,
                             "request.input_bytes": scope.input_bytes,
                             **({"siglip.model": scope.model} if scope.model else {})},
                    scope.status if scope.server_error else None)
            if self.log_requests and self._log.isEnabledFor(logging.INFO):
                self._log_line(scope, duration)
            with contextlib.suppress(ValueError):  # left in another context (a closed stream)
                _current.reset(token)

    def _log_line(self, scope: RequestScope, duration: float) -> None:
        # The record is made directly: Logger.info would also look up the caller's frame,
        # a third of the line's cost, for a location that is always this one.
        message = (f"{scope.method} {scope.status} {duration * 1000:.1f} ms "
                   f"request_id={scope.request_id} images={scope.images} texts={scope.texts} "
                   f"input_bytes={scope.input_bytes}"
                   + (f" model={scope.model}" if scope.model else ""))
        self._log.handle(self._log.makeRecord(
            self._log.name, logging.INFO, __file__, 0, message, None, None,
            extra={"request": scope.fields(duration)}))
