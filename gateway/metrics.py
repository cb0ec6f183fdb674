"""Prometheus metrics of the gateway, all in one place.

Names carry the ``siglip_gateway_`` prefix and their unit; every label takes values
from a fixed set (RPC names, status-code names, stage names, the configured models' names), so
no caller input can grow the number of series. The per-model metrics carry a ``model`` label;
an Engine records through its model's ``ModelMetrics``. Each ``Metrics`` has its own
registry so that several servers (tests) can live in one process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from gateway.fetch.policy import OUTCOMES as URL_FETCH_OUTCOMES

METHODS = ("Classify", "Embed", "EmbedStream", "Score", "GetModelInfo")
# HTTP routes: the unary RPCs they mirror, and OpenAI's POST /v1/embeddings.
HTTP_METHODS = ("Classify", "Embed", "Score", "GetModelInfo", "OpenAIEmbeddings")
PROTOCOLS = ("grpc", "http")
STAGES = ("fetch", "decode", "tokenize", "triton_vision", "triton_text", "total")
INPUT_KINDS = ("image", "text")
DECODE_PLACES = ("gateway", "triton", "gateway_retry")
# The ``model`` label of a Metrics built without the served models' names (tests, tools).
DEFAULT_MODEL_LABEL = "default"

# Seconds: from sub-millisecond cache hits to multi-second overloaded GPUs.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self, models: Sequence[str] = (DEFAULT_MODEL_LABEL,)) -> None:
        """``models``: the served models' names, the only values of the ``model`` label."""
        self.models = tuple(models)
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "siglip_gateway_requests",
            "Finished requests by method, gRPC status code name and protocol (grpc, http).",
            ["method", "code", "protocol", "model"], registry=r)
        self.request_seconds = Histogram(
            "siglip_gateway_request_duration_seconds", "Request latency as seen by the gateway.",
            ["method", "protocol", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram(
            "siglip_gateway_stage_duration_seconds",
            "Time per request stage: fetch (images by URL), decode (image decode+resize), "
            "tokenize, triton_vision and triton_text (Triton round trips), total.",
            ["stage", "model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inputs = Histogram(
            "siglip_gateway_inputs_per_request", "Images or texts per request.",
            ["kind", "model"], buckets=COUNT_BUCKETS, registry=r)
        # Multiprocess modes (serve --processes N, gateway/processes/aggregate.py): the calls
        # in flight of the live processes add up; Triton counts as ready only if every live
        # process sees it ready (as every process's health must then say SERVING).
        self.in_flight = Gauge(
            "siglip_gateway_requests_in_flight", "RPCs being handled now.", registry=r,
            multiprocess_mode="livesum")
        self.cache_hits = Counter(
            "siglip_gateway_text_cache_hits", "Text embeddings served from the cache.", ["model"],
            registry=r)
        self.cache_misses = Counter(
            "siglip_gateway_text_cache_misses", "Text embeddings computed by Triton.", ["model"],
            registry=r)
        self.image_decodes = Counter(
            "siglip_gateway_image_decodes",
            "Images by where they were decoded: gateway, triton (SIGLIP_PREPROCESS_MODE=triton), "
            "gateway_retry (Triton could not decode them, so the gateway did).",
            ["where", "model"], registry=r)
        self.triton_ready = Gauge(
            "siglip_gateway_triton_ready",
            "1 when Triton and every model this gateway calls are ready.",
            registry=r, multiprocess_mode="livemin")
        self.image_url_fetches = Counter(
            "siglip_gateway_image_url_fetches",
            "Images fetched by URL, by outcome (ok, or why it was refused or failed).",
            ["outcome"], registry=r)
        self.image_url_fetch_seconds = Histogram(
            "siglip_gateway_image_url_fetch_duration_seconds",
            "Time to fetch one image by URL, redirects included, whatever the outcome.",
            buckets=LATENCY_BUCKETS, registry=r)
        for outcome in URL_FETCH_OUTCOMES:
            self.image_url_fetches.labels(outcome)
        for model in self.models:
            for method in METHODS:
                self.request_seconds.labels(method, "grpc", model)
            for method in HTTP_METHODS:
                self.request_seconds.labels(method, "http", model)
            for stage in STAGES:
                self.stage_seconds.labels(stage, model)
            for kind in INPUT_KINDS:
                self.inputs.labels(kind, model)
            for where in DECODE_PLACES:
                self.image_decodes.labels(where, model)
            self.cache_hits.labels(model)
            self.cache_misses.labels(model)

    def request_done(self, method: str, protocol: str, code: str, elapsed_s: float,
                     model: str) -> None:
        """One finished request of either protocol; ``code`` is a gRPC status name, ``model``
        the name of the model it went to (the default one when it named none it could get)."""
        self.requests.labels(method, code, protocol, model).inc()
        self.request_seconds.labels(method, protocol, model).observe(elapsed_s)
        if method != "GetModelInfo":
            self.stage_seconds.labels("total", model).observe(elapsed_s)

    def for_model(self, model: str) -> ModelMetrics:
        if model not in self.models:
            raise ValueError(f"model {model!r} is not one of {self.models}")
        return ModelMetrics(self, model)

    def serve(self, port: int, addr: str = "0.0.0.0") -> tuple[Any, Any]:
        """Starts the /metrics HTTP endpoint in a daemon thread; returns (server, thread)."""
        return start_http_server(port, addr=addr, registry=self.registry)

    def series_count(self) -> int:
        return sum(len(m.samples) for m in self.registry.collect())


class ModelMetrics:
    """One model's view of the per-model metrics: what its Engine records."""

    def __init__(self, metrics: Metrics, model: str) -> None:
        self.model = model
        self._metrics = metrics
        self.cache_hits = metrics.cache_hits.labels(model)
        self.cache_misses = metrics.cache_misses.labels(model)

    def inputs(self, kind: str) -> Any:
        return self._metrics.inputs.labels(kind, self.model)

    def image_decodes(self, where: str) -> Any:
        return self._metrics.image_decodes.labels(where, self.model)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._metrics.stage_seconds.labels(name, self.model).observe(
                time.perf_counter() - start)
