"""Logging set-up, in one place for every entry point: text lines (the default) or JSON lines.

``SIGLIP_LOG_FORMAT=json``: one JSON object per line with ``ts``, ``level``, ``logger``,
``message``, and, for records emitted while a request is handled, its ``request_id`` (and
``trace_id`` when traced); the request line (logger ``gateway.requests``) adds ``protocol``,
``method``, ``status``, ``duration_ms``, ``images``, ``texts``, ``input_bytes``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from gateway.observability.request import current_request

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {
            "ts": f"{ts}.{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        scope = current_request()
        if scope is not None:
            out["request_id"] = scope.request_id
            if scope.trace_id is not None:
                out["trace_id"] = scope.trace_id
        fields = getattr(record, "request", None)
        if isinstance(fields, dict):
            out.update(fields)
        extra = getattr(record, "log_fields", None)  # e.g. a worker's index
        if isinstance(extra, dict):
            out.update(extra)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exception"] = record.exc_text
        return json.dumps(out, default=str)


class _Fields(logging.Filter):
    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__()
        self._fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        record.log_fields = self._fields
        return True


def configure_logging(level: str, fmt: str = "text", *, text_format: str = TEXT_FORMAT,
                      fields: dict[str, Any] | None = None) -> None:
    """The root logger's one handler (stderr) in ``fmt``; ``fields`` go into every JSON
    line (the text format carries them in ``text_format``)."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
        if fields:
            handler.addFilter(_Fields(fields))
    else:
        handler.setFormatter(logging.Formatter(text_format))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
