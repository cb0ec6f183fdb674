"""Prometheus metrics of the gateway, all in one place.

Names carry the ``siglip_gateway_`` prefix and their unit; every label takes values
from a fixed set (RPC names, status-code names, stage names), so no caller input can
grow the number of series. Each ``Metrics`` has its own registry so that several
servers (tests) can live in one process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

METHODS = ("Classify", "Embed", "EmbedStream", "Score", "GetModelInfo")
# HTTP routes: the unary RPCs they mirror, and OpenAI's POST /v1/embeddings.
HTTP_METHODS = ("Classify", "Embed", "Score", "GetModelInfo", "OpenAIEmbeddings")
PROTOCOLS = ("grpc", "http")
STAGES = ("decode", "tokenize", "triton_vision", "triton_text", "total")
INPUT_KINDS = ("image", "text")
DECODE_PLACES = ("gateway", "triton", "gateway_retry")

# Seconds: from sub-millisecond cache hits to multi-second overloaded GPUs.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "siglip_gateway_requests",
            "Finished requests by method, gRPC status code name and protocol (grpc, http).",
            ["method", "code", "protocol"], registry=r)
        self.request_seconds = Histogram(
            "siglip_gateway_request_duration_seconds", "Request latency as seen by the gateway.",
            ["method", "protocol"], buckets=LATENCY_BUCKETS, registry=r)
        self.stage_seconds = Histogram(
            "siglip_gateway_stage_duration_seconds",
            "Time per request stage: decode (image decode+resize), tokenize, triton_vision and "
            "triton_text (Triton round trips), total.",
            ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.inputs = Histogram(
            "siglip_gateway_inputs_per_request", "Images or texts per request.",
            ["kind"], buckets=COUNT_BUCKETS, registry=r)
        # Multiprocess modes (serve --processes N, gateway/processes/aggregate.py): the calls
        # in flight of the live processes add up; Triton counts as ready only if every live
        # process sees it ready (as every process's health must then say SERVING).
        self.in_flight = Gauge(
            "siglip_gateway_requests_in_flight", "RPCs being handled now.", registry=r,
            multiprocess_mode="livesum")
        self.cache_hits = Counter(
            "siglip_gateway_text_cache_hits", "Text embeddings served from the cache.", registry=r)
        self.cache_misses = Counter(
            "siglip_gateway_text_cache_misses", "Text embeddings computed by Triton.", registry=r)
        self.image_decodes = Counter(
            "siglip_gateway_image_decodes",
            "Images by where they were decoded: gateway, triton (SIGLIP_PREPROCESS_MODE=triton), "
            "gateway_retry (Triton could not decode them, so the gateway did).",
            ["where"], registry=r)
        self.triton_ready = Gauge(
            "siglip_gateway_triton_ready",
            "1 when Triton and every model this gateway calls are ready.",
            registry=r, multiprocess_mode="livemin")
        for method in METHODS:
            self.request_seconds.labels(method, "grpc")
        for method in HTTP_METHODS:
            self.request_seconds.labels(method, "http")
        for stage in STAGES:
            self.stage_seconds.labels(stage)
        for kind in INPUT_KINDS:
            self.inputs.labels(kind)
        for where in DECODE_PLACES:
            self.image_decodes.labels(where)

    def request_done(self, method: str, protocol: str, code: str, elapsed_s: float) -> None:
        """One finished request of either protocol; ``code`` is a gRPC status name."""
        self.requests.labels(method, code, protocol).inc()
        self.request_seconds.labels(method, protocol).observe(elapsed_s)
        if method != "GetModelInfo":
            self.stage_seconds.labels("total").observe(elapsed_s)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stage_seconds.labels(name).observe(time.perf_counter() - start)

    def serve(self, port: int, addr: str = "0.0.0.0") -> tuple[Any, Any]:
        """Starts the /metrics HTTP endpoint in a daemon thread; returns (server, thread)."""
        return start_http_server(port, addr=addr, registry=self.registry)

    def series_count(self) -> int:
        return sum(len(m.samples) for m in self.registry.collect())
