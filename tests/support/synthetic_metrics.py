"""Metrics endpoints standing in for a deployment that serves two models, for the monitoring
tests: what the real gateway and Triton export, at rates the test chooses, without running
either.

Gateway pods: the gateway's own ``Metrics`` (gateway/metrics.py, so names and labels follow
the code) built with two model names and fed by a thread as the servers would feed it.
Triton: its ``nv_inference_*`` counters in the text format, one set per Triton model, named
as gateway/contract.py names them for several models (``siglip_vision__NAME``, ...) and with
SIGLIP_PREPROCESS_MODE=triton (every image is also one request of the ensemble
``siglip_vision_encoded__NAME`` and of the decoder ``siglip_image_decode__NAME``). Counters
are rate x time since start, computed when scraped, so every window reads the chosen rates.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import generate_latest

from gateway.contract import triton_names
from gateway.metrics import Metrics

MODELS = ("base", "so400m")
TICK_S = 0.1


@dataclass(frozen=True)
class Calls:
    """Calls per second of one model and method ending with one code, and their latency."""

    model: str
    method: str
    code: str
    per_s: int  # a multiple of 1 / TICK_S
    seconds: float


# base fails a third of its Embed calls (INTERNAL) and is slow; so400m is healthy apart from
# client errors: an error or latency alert must name base only.
GATEWAY_CALLS = (
    Calls("base", "Embed", "OK", 20, 1.2),
    Calls("base", "Embed", "INTERNAL", 10, 0.02),
    Calls("base", "Classify", "OK", 10, 0.3),
    Calls("so400m", "Classify", "OK", 40, 0.05),
    Calls("so400m", "Classify", "INVALID_ARGUMENT", 10, 0.001),
    Calls("so400m", "Score", "OK", 10, 0.08),
)


@dataclass(frozen=True)
class TritonModel:
    """One Triton model's steady traffic: requests/s and microseconds per request."""

    name: str
    per_s: float
    queue_us: float
    compute_us: float
    batch: float  # inferences per execution


def _triton_models() -> tuple[TritonModel, ...]:
    names = triton_names(list(MODELS))
    base, so400m = (names[m] for m in MODELS)
    # The towers queue for real; so400m's vision tower is saturated (queue time over 4x its
    # compute time and over 50 ms: SiglipTritonQueueTimeHigh); the ensemble and the decoder
    # serve a request per image, with queue times of another kind: a mean over every Triton
    # model reads the towers' queue time several times too low.
    return (
        TritonModel(base.vision, 30, 30_000, 10_000, 4),
        TritonModel(base.text, 5, 10_000, 5_000, 2),
        TritonModel(base.encoded, 30, 20, 40_000, 4),
        TritonModel(base.decode, 30, 150, 3_000, 4),
        TritonModel(so400m.vision, 20, 100_000, 20_000, 4),
        TritonModel(so400m.text, 5, 2_000, 5_000, 1),
        TritonModel(so400m.encoded, 20, 20, 80_000, 4),
        TritonModel(so400m.decode, 20, 150, 3_000, 4),
    )


TRITON_MODELS = _triton_models()


def mean_queue_us(models: tuple[TritonModel, ...]) -> float:
    """Queue time per request over `models`, each weighted by its request rate."""
    return sum(m.per_s * m.queue_us for m in models) / sum(m.per_s for m in models)


def tower_models() -> tuple[TritonModel, ...]:
    names = triton_names(list(MODELS))
    towers = {n for m in MODELS for n in (names[m].vision, names[m].text)}
    return tuple(m for m in TRITON_MODELS if m.name in towers)


class _TextEndpoint:
    """GET /metrics answers body(); a daemon thread serves it on the loopback."""

    def __init__(self, body: Callable[[], str]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = body().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeTriton:
    """Triton's per-model inference counters for TRITON_MODELS."""

    def __init__(self) -> None:
        self.started = time.time()
        self.endpoint = _TextEndpoint(self.exposition)
        self.address = self.endpoint.address

    def exposition(self) -> str:
        t = time.time() - self.started
        families: dict[str, list[str]] = {
            "nv_inference_request_success": [], "nv_inference_request_failure": [],
            "nv_inference_count": [], "nv_inference_exec_count": [],
            "nv_inference_queue_duration_us": [], "nv_inference_compute_input_duration_us": [],
            "nv_inference_compute_infer_duration_us": [],
            "nv_inference_compute_output_duration_us": [],
            "nv_inference_pending_request_count": [],
        }
        for m in TRITON_MODELS:
            labels = f'model="{m.name}",version="1"'
            requests = m.per_s * t
            values = {
                "nv_inference_request_success": requests,
                "nv_inference_count": requests,
                "nv_inference_exec_count": requests / m.batch,
                "nv_inference_queue_duration_us": requests * m.queue_us,
                "nv_inference_compute_input_duration_us": requests * 50,
                "nv_inference_compute_infer_duration_us": requests * m.compute_us,
                "nv_inference_compute_output_duration_us": requests * 20,
                "nv_inference_pending_request_count": 1.0,
            }
            for name, value in values.items():
                families[name].append(f"{name}{{{labels}}} {value:.3f}")
            families["nv_inference_request_failure"].append(
                f'nv_inference_request_failure{{{labels},reason="BACKEND"}} 0')
        out = []
        for name, lines in families.items():
            kind = "gauge" if name == "nv_inference_pending_request_count" else "counter"
            out += [f"# HELP {name} {name}", f"# TYPE {name} {kind}", *lines]
        return "\n".join(out) + "\n"

    def close(self) -> None:
        self.endpoint.close()


class FakeGateway:
    """One gateway pod's /metrics (the real registry, two models), fed GATEWAY_CALLS."""

    def __init__(self, in_flight: int) -> None:
        self.metrics = Metrics(models=MODELS)
        self.metrics.in_flight.set(in_flight)
        self.metrics.triton_ready.set(1)
        self.endpoint = _TextEndpoint(self._exposition)
        self.address = self.endpoint.address
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _exposition(self) -> str:
        return generate_latest(self.metrics.registry).decode()

    def _feed(self) -> None:
        per_model = {m: self.metrics.for_model(m) for m in MODELS}
        while not self._stop.wait(TICK_S):
            for c in GATEWAY_CALLS:
                mm = per_model[c.model]
                for _ in range(round(c.per_s * TICK_S)):
                    self.metrics.request_done(c.method, "grpc", c.code, c.seconds, c.model)
                    if c.code != "OK":
                        continue
                    # Stages as the engine records them (ModelMetrics.stage times real work;
                    # here the durations are chosen, so they go to the family directly).
                    self.metrics.stage_seconds.labels("triton_vision", c.model).observe(
                        c.seconds / 2)
                    self.metrics.stage_seconds.labels("tokenize", c.model).observe(0.001)
                    mm.inputs("image").observe(2)
                    mm.inputs("text").observe(3)
                    mm.image_decodes("triton").inc(2)
                    mm.cache_hits.inc(2)
                    mm.cache_misses.inc()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.endpoint.close()
