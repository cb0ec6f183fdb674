"""The gateway's gRPC server (and its HTTP/JSON port on the same engines): wiring, health,
readiness monitoring and graceful shutdown.

Start-up order: each served model's checkpoint metadata and tokenizer (no weights, no torch) →
one Triton client → an Engine per model → gRPC server with health NOT_SERVING → a monitor that
flips health to SERVING while every Triton model of every served model is ready. Shutdown
(SIGTERM): health NOT_SERVING at once, new calls refused (and the HTTP port stops accepting
connections), calls in flight of both protocols drained within the grace period, then stop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.admission import Admission
from gateway.api.auth import BearerTokenInterceptor
from gateway.api.servicer import SERVICE_NAME, SiglipServicer, add_to_server
from gateway.backend.coalescing import CoalescingBackend
from gateway.backend.triton_client import TritonBackend
from gateway.config import Settings
from gateway.contract import TritonNames, triton_names
from gateway.core.cache import EmbeddingCache
from gateway.core.families import check_approximable
from gateway.core.images import ImageLimits, PreprocessMode, ensure_mode_available
from gateway.core.model_meta import ModelMeta, load_model_meta
from gateway.core.text import TextTokenizer
from gateway.core.validation import RequestLimits
from gateway.engine import Engine
from gateway.engines import Engines, Served
from gateway.fetch.client import FetchConfig, Resolver, UrlFetcher
from gateway.fetch.policy import AllowList
from gateway.metrics import Metrics
from gateway.model_specs import ModelSpec
from gateway.observability.request import Observability
from gateway.observability.tracing import Tracing

if TYPE_CHECKING:
    from gateway.http.server import HttpServer

log = logging.getLogger(__name__)

# Health service names: readiness follows Triton; "liveness" only says the process answers.
READINESS_SERVICES = ("", SERVICE_NAME)
LIVENESS_SERVICE = "liveness"
MONITOR_INTERVAL_S = 0.5


@dataclass
class Bound:
    """Where the server listens (ports are real even when 0 was asked for)."""

    port: int
    metrics_port: int | None
    http_port: int | None = None


class GatewayServer:
    def __init__(self, settings: Settings, triton_url: str, *, metrics: Metrics | None = None,
                 checkpoints: Mapping[str, Path] | None = None, share_port: bool = False,
                 url_resolver: Resolver | None = None, tracing: Tracing | None = None,
                 specs: Sequence[ModelSpec] | None = None) -> None:
        """``tracing``: the process's tracer (its owner shuts it down); None: no tracing.
        ``specs``: the models as read at start-up (None: read from the settings here)."""
        self.settings = settings
        self.tracing = tracing or Tracing()
        # Shared by every protocol adapter of this server (request ids, spans, request lines).
        self.observability = Observability(self.tracing,
                                           log_requests=settings.request_log == "on")
        # A worker of `serve --processes N`: its siblings listen on the same port.
        self._share_port = share_port
        self.triton_url = triton_url
        self.specs = list(specs) if specs is not None else settings.model_specs()
        # Per model name, its checkpoint already resolved (e.g. a hub snapshot): read there,
        # but the model is reported as configured.
        self._checkpoints = dict(checkpoints or {})
        self.metrics = metrics or Metrics([spec.name for spec in self.specs])
        self.health = health.aio.HealthServicer()
        self.admission = Admission(settings.max_in_flight, self.metrics.in_flight)
        self.ready = asyncio.Event()
        self._draining = False
        self._server: grpc.aio.Server | None = None
        self._backend: TritonBackend | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._monitor: asyncio.Task | None = None
        self._metrics_http = None
        # Images by URL: built in start() when SIGLIP_IMAGE_URL_ALLOW is set; the resolver is
        # the system's unless a test injects one.
        self._url_resolver = url_resolver
        self.fetcher: UrlFetcher | None = None
        self._http: HttpServer | None = None
        self.engines: Engines | None = None
        self.meta: ModelMeta | None = None  # the default model's
        self.bound: Bound | None = None

    async def start(self) -> Bound:
        s = self.settings
        mode = PreprocessMode(s.preprocess_mode)
        ensure_mode_available(mode)
        metas = await asyncio.gather(*(asyncio.to_thread(self._load_meta, spec)
                                       for spec in self.specs))
        self.meta = metas[0]
        names = triton_names([spec.name for spec in self.specs])
        # TRITON mode also needs each model's JPEG decoder: not ready without it.
        with_decoder = mode is PreprocessMode.TRITON
        self._backend = TritonBackend(
            self.triton_url, max_message_bytes=s.max_message_bytes,
            default_timeout_s=s.triton_timeout_s,
            models=tuple(m for n in names.values() for m in n.towers(with_decoder)),
            shm_max_bytes=s.triton_shm_max_bytes if s.shm_enabled() else None,
            embedding_dims={m: meta.embedding_dim for spec, meta in zip(self.specs, metas,
                                                                         strict=True)
                            for m in names[spec.name].towers(True)},
            tracing=self.tracing)
        self._pool = ThreadPoolExecutor(s.workers, thread_name_prefix="preprocess")
        self.fetcher = self._url_fetcher()
        served = []
        for spec, meta in zip(self.specs, metas, strict=True):
            engine = await self._engine(spec, meta, names[spec.name], mode)
            own = (Admission(spec.max_in_flight, holder=f"model {spec.name}")
                   if spec.max_in_flight else None)
            served.append(Served(spec, engine, own))
        self.engines = Engines(served)
        engines = self.engines
        interceptors = [BearerTokenInterceptor(s.auth_token)] if s.auth_token else []
        self._server = grpc.aio.server(interceptors=interceptors, options=self._options())
        add_to_server(SiglipServicer(engines, self.admission, self.metrics, s.preprocess_mode,
                                     self.observability), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        address = f"{s.host}:{s.port}"
        port = (self._server.add_secure_port(address, self._credentials()) if s.tls_cert
                else self._server.add_insecure_port(address))
        for name in READINESS_SERVICES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)
        # A worker joining siblings already SERVING must not answer NOT_SERVING while its
        # first check is on the way: it checks before it listens.
        seen = await self._check_triton(None) if self._share_port else None
        await self._server.start()
        http_port = None
        if s.http_port >= 0:
            # Imported only when on: starlette, uvicorn and orjson stay out of gRPC-only runs.
            from gateway.http.app import HttpApi
            from gateway.http.server import HttpServer

            api = HttpApi(engines, self.admission, self.metrics, preprocess_mode=s.preprocess_mode,
                          max_message_bytes=s.max_message_bytes, auth_token=s.auth_token,
                          observability=self.observability)
            self._http = HttpServer(api.app(), s, share_port=self._share_port)
            http_port = await self._http.start()
        metrics_port = None
        if s.metrics_port >= 0:
            self._metrics_http, _ = self.metrics.serve(s.metrics_port, s.host)
            metrics_port = self._metrics_http.server_port
        self._monitor = asyncio.create_task(self._watch_triton(seen))
        self.bound = Bound(port, metrics_port, http_port)
        return self.bound

    def _load_meta(self, spec: ModelSpec) -> ModelMeta:
        checkpoint = self._checkpoints.get(spec.name)
        meta = load_model_meta(str(checkpoint or spec.checkpoint))
        if checkpoint is not None:
            meta = dataclasses.replace(meta, model_id=spec.checkpoint)
        mode = self.settings.preprocess_mode
        if mode != PreprocessMode.EXACT.value:
            check_approximable(meta.image.resample, mode)
        return meta

    async def _engine(self, spec: ModelSpec, meta: ModelMeta, names: TritonNames,
                      mode: PreprocessMode) -> Engine:
        """One served model's Engine: its tokenizer, Triton models, cache and limits."""
        s = self.settings
        assert self._backend is not None and self._pool is not None
        tokenizer = await asyncio.to_thread(TextTokenizer.for_model, meta)
        model_backend = self._backend.tower(names)
        backend = (CoalescingBackend(self._backend, s.triton_max_calls_in_flight,
                                     tracing=self.tracing, names=names)
                   if s.triton_max_calls_in_flight else model_backend)
        return Engine(
            meta=meta, tokenizer=tokenizer, backend=backend, pool=self._pool,
            metrics=self.metrics.for_model(spec.name),
            cache=EmbeddingCache(spec.setting("text_cache_size", s.text_cache_size)),
            request_limits=RequestLimits(spec.setting("max_images", s.max_images),
                                         spec.setting("max_texts", s.max_texts),
                                         spec.setting("max_text_chars", s.max_text_chars)),
            image_limits=ImageLimits(
                max_pixels=spec.setting("max_image_pixels", s.max_image_pixels),
                max_bytes=s.max_message_bytes, size=meta.image.size,
                resample=meta.image.resample),
            mode=mode, fetcher=self.fetcher, tracing=self.tracing)

    async def wait_ready(self, timeout_s: float) -> None:
        await asyncio.wait_for(self.ready.wait(), timeout_s)

    async def shutdown(self, grace_s: float | None = None) -> None:
        """NOT_SERVING now, refuse new calls, let calls in flight finish, then stop."""
        grace_s = self.settings.shutdown_grace_s if grace_s is None else grace_s
        end = time.monotonic() + grace_s
        self._draining = True
        self.admission.close()
        if self._http:
            self._http.stop_accepting()
        for name in READINESS_SERVICES:
            await self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info("draining %d calls in flight (grace %.0f s)", self.admission.in_flight, grace_s)
        await self.admission.wait_idle(end - time.monotonic())
        if self._monitor:
            self._monitor.cancel()
        if self._http:
            await self._http.stop(end - time.monotonic())
        if self._server:
            await self._server.stop(max(0.0, end - time.monotonic()))
        if self._backend:
            await self._backend.close()
        if self.fetcher:
            await self.fetcher.aclose()
        if self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)
        if self._metrics_http:
            self._metrics_http.shutdown()
        log.info("stopped")

    async def wait_closed(self) -> None:
        assert self._server is not None
        await self._server.wait_for_termination()

    async def _watch_triton(self, was_ready: bool | None = None) -> None:
        while not self._draining:
            was_ready = await self._check_triton(was_ready)
            await asyncio.sleep(MONITOR_INTERVAL_S)

    async def _check_triton(self, was_ready: bool | None) -> bool | None:
        """Asks Triton once; health, gauge and `ready` follow a change. Returns what it saw."""
        assert self._backend is not None
        ok = await self._backend.ready(timeout_s=1.0)
        if ok != was_ready and not self._draining:
            status = (health_pb2.HealthCheckResponse.SERVING if ok
                      else health_pb2.HealthCheckResponse.NOT_SERVING)
            for name in READINESS_SERVICES:
                await self.health.set(name, status)
            self.metrics.triton_ready.set(1 if ok else 0)
            if ok:
                self.ready.set()
                log.info("Triton at %s is ready: SERVING", self.triton_url)
            else:
                self.ready.clear()
                log.warning("Triton at %s is not ready (needs models %s): NOT_SERVING",
                            self.triton_url, ", ".join(self._backend.models))
            return ok
        return was_ready

    def _url_fetcher(self) -> UrlFetcher | None:
        s = self.settings
        allow = AllowList.parse(s.image_url_allow)
        if not allow:
            return None
        max_bytes = min(s.image_url_max_bytes or s.max_message_bytes, s.max_message_bytes)
        config = FetchConfig(allow=allow, max_bytes=max_bytes,
                             max_total_bytes=s.max_message_bytes,
                             timeout_s=s.image_url_timeout_s,
                             max_redirects=s.image_url_max_redirects)
        context = ssl.create_default_context(cafile=s.image_url_ca_file) \
            if s.image_url_ca_file else None
        return UrlFetcher(config, metrics=self.metrics, resolver=self._url_resolver,
                          ssl_context=context)

    def _options(self) -> list[tuple[str, int]]:
        s = self.settings
        return [
            ("grpc.max_receive_message_length", s.max_message_bytes),
            ("grpc.max_send_message_length", s.max_message_bytes),
            # Long-lived clients reconnect now and then, so new pods get their share.
            ("grpc.max_connection_age_ms", int(s.max_connection_age_s * 1000)),
            ("grpc.max_connection_age_grace_ms", int(s.shutdown_grace_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
            # Fail loudly when the port is taken instead of silently sharing it. Workers share
            # it among themselves only: their parent checked it was free and holds it
            # (gateway/processes/sockets.py).
            ("grpc.so_reuseport", 1 if self._share_port else 0),
        ]

    def _credentials(self) -> grpc.ServerCredentials:
        s = self.settings
        with open(s.tls_key, "rb") as f:
            key = f.read()
        with open(s.tls_cert, "rb") as f:
            cert = f.read()
        client_ca = None
        if s.tls_client_ca:
            with open(s.tls_client_ca, "rb") as f:
                client_ca = f.read()
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None)
