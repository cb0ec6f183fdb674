"""Settings: built once at start-up from the environment and the command line, then passed down.

Nothing in the package reads the environment at import time; ``Settings.from_env`` is
called by the CLI (and by tests with an explicit mapping).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from gateway.core.images import ImageLimits
from gateway.core.validation import RequestLimits
from gateway.fetch.policy import AllowList
from gateway.model_specs import ModelSpec, resolve_models
from gateway.processes.cpus import default_processes, default_threads

ENV_PREFIX = "SIGLIP_"
MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Every knob of the gateway. The README's settings table lists these with their defaults."""

    # The models served: comma-separated [NAME=]CHECKPOINT, the first the default (empty:
    # google/siglip-base-patch16-256), or a models file (TOML/JSON) that may also give per-model
    # limits; not both (gateway/model_specs.py).
    model: str = ""
    models_file: str = ""
    host: str = "0.0.0.0"
    port: int = 50051
    metrics_port: int = 9090
    # HTTP/JSON and OpenAI-compatible API (gateway/http/) in the same process(es); -1: off.
    http_port: int = 8080
    # Empty: start the embedded Triton from the nvidia-pytriton wheel.
    triton_url: str = ""
    triton_timeout_s: float = 30.0
    # Triton calls in flight per model; rows arriving meanwhile go out together as one call
    # (gateway/backend/coalescing.py). 0: every request makes its own calls.
    triton_max_calls_in_flight: int = 2
    triton_startup_timeout_s: float = 600.0
    # Tensors through shared memory: auto = only with the embedded Triton (same host).
    triton_shm: str = "auto"
    triton_shm_max_bytes: int = 64 * MiB
    # Embedded Triton, CPU instances: torch threads per tower instance (0 = the CPUs Triton
    # may use) and its inter-op pool. Why these: BENCHMARKS.md, CPU threading of the towers.
    triton_cpu_threads: int = 0
    triton_cpu_interop_threads: int = 1
    # Limits (see README): checked before any work is done.
    max_message_bytes: int = ImageLimits.max_bytes
    max_images: int = RequestLimits.max_images
    max_texts: int = RequestLimits.max_texts
    max_text_chars: int = RequestLimits.max_text_chars
    max_image_pixels: int = ImageLimits.max_pixels
    # Overload: calls beyond this many in flight are rejected with RESOURCE_EXHAUSTED.
    max_in_flight: int = 64
    # Gateway processes sharing the port (0: from the CPUs, see gateway/processes/cpus.py) and
    # threads for decode/resize/tokenize in each (0: the CPUs shared out among the processes).
    processes: int = 0
    workers: int = 0
    preprocess_mode: str = "exact"
    text_cache_size: int = 10_000
    shutdown_grace_s: float = 20.0
    max_connection_age_s: float = 300.0
    # Security (all optional): TLS, mutual TLS, bearer token.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    auth_token: str = ""
    log_level: str = "INFO"
    # Images by URL (gateway/fetch/): off while the allow-list is empty. max_bytes 0: the
    # image size limit (max_message_bytes). The timeout covers redirects and slow bodies.
    image_url_allow: str = ""
    image_url_max_bytes: int = 0
    image_url_timeout_s: float = 10.0
    image_url_max_redirects: int = 3
    image_url_ca_file: str = ""
    # text, or json: one object per line (gateway/observability/logs.py).
    log_format: str = "text"
    # One line per request at INFO (logger gateway.requests): on or off.
    request_log: str = "on"
    # Embedded Triton's own OpenTelemetry tracing: its `--trace-config` values, separated by
    # spaces (docs/observability.md). Empty: off.
    triton_trace_config: str = ""

    def __post_init__(self) -> None:
        # Resolved once here, so every worker process gets the parent's numbers.
        if self.processes == 0:
            object.__setattr__(self, "processes", default_processes(not self.triton_url))
        if self.workers == 0:
            object.__setattr__(self, "workers", default_threads(max(1, self.processes)))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Reads ``SIGLIP_<NAME>`` for every field; explicit ``overrides`` (not None) win."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self, *, models: bool = True) -> None:
        """``models``: also read the model list (and models file); a worker process, handed
        the parent's models as read at start-up, checks the rest only."""
        if self.preprocess_mode not in ("exact", "fast", "triton"):
            raise ValueError(
                f"SIGLIP_PREPROCESS_MODE must be exact, fast or triton, not "
                f"{self.preprocess_mode!r}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"SIGLIP_LOG_FORMAT must be text or json, not {self.log_format!r}")
        if self.request_log not in ("on", "off"):
            raise ValueError(f"SIGLIP_REQUEST_LOG must be on or off, not {self.request_log!r}")
        if self.triton_shm not in ("auto", "on", "off"):
            raise ValueError(f"SIGLIP_TRITON_SHM must be auto, on or off, not {self.triton_shm!r}")
        for name in ("max_images", "max_texts", "max_text_chars", "max_image_pixels",
                     "max_in_flight", "workers", "processes", "max_message_bytes",
                     "triton_shm_max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"SIGLIP_{name.upper()} must be at least 1")
        if self.triton_max_calls_in_flight < 0:
            raise ValueError("SIGLIP_TRITON_MAX_CALLS_IN_FLIGHT must be 0 (off) or more")
        if self.triton_cpu_threads < 0:
            raise ValueError("SIGLIP_TRITON_CPU_THREADS must be 0 (auto) or more")
        if self.triton_cpu_interop_threads < 1:
            raise ValueError("SIGLIP_TRITON_CPU_INTEROP_THREADS must be at least 1")
        if models:  # a bad model list or models file fails the start, naming the entry
            self.model_specs()
        AllowList.parse(self.image_url_allow)  # a bad entry fails the start, naming it
        if self.image_url_max_bytes < 0 or self.image_url_max_redirects < 0:
            raise ValueError("SIGLIP_IMAGE_URL_MAX_BYTES and SIGLIP_IMAGE_URL_MAX_REDIRECTS "
                             "must be 0 or more")
        if not self.image_url_timeout_s > 0:
            raise ValueError("SIGLIP_IMAGE_URL_TIMEOUT_S must be more than 0")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("SIGLIP_TLS_CERT and SIGLIP_TLS_KEY must be set together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError(
                "SIGLIP_TLS_CLIENT_CA (mutual TLS) needs SIGLIP_TLS_CERT and SIGLIP_TLS_KEY")

    def model_specs(self) -> list[ModelSpec]:
        """The served models, the default first (reads the models file, if one is given):
        read once at start-up, then passed down."""
        return resolve_models(self.model, self.models_file)

    def shm_enabled(self) -> bool:
        """Shared memory only reaches a Triton on this host: the embedded one (no URL), or
        one named by the URL when the deployment says it shares /dev/shm (``on``)."""
        return self.triton_shm == "on" or (self.triton_shm == "auto" and not self.triton_url)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


def _parse(f: dataclasses.Field, raw: str) -> Any:
    kind = f.type if isinstance(f.type, str) else f.type.__name__
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        what = "a whole number" if kind == "int" else "a number"
        raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r} is not {what}") from None
    return raw
