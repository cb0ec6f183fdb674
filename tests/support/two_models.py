"""Two served models in one process, each Engine on its own in-process backend, for the
adapters' tests (HTTP, OpenAI): which model a request reaches is visible in what it gets back.

``base`` is the tiny checkpoint as it is; ``large`` is the same checkpoint's tokenizer and text
length described as another model (its own id, embedding size and logit bias), so its answers
differ in shape and value. Each backend counts the rows it was sent. ``http_serving`` puts
them behind the HTTP API on a real socket.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gateway.admission import Admission
from gateway.config import Settings
from gateway.core.cache import EmbeddingCache
from gateway.core.images import ImageLimits, PreprocessMode
from gateway.core.model_meta import load_model_meta
from gateway.core.text import TextTokenizer
from gateway.core.validation import RequestLimits
from gateway.engine import Engine
from gateway.engines import Engines, Served
from gateway.http.app import HttpApi
from gateway.http.server import HttpServer
from gateway.metrics import Metrics
from gateway.model_specs import ModelSpec

BASE, LARGE = "base", "large"
# ``large``'s configured checkpoint: a hub id, so that its last path part is a name too.
LARGE_CHECKPOINT = "google/siglip-fake-large"
LARGE_DIM_EXTRA = 8
LARGE_LOGIT_BIAS = -3.0


class TaggedBackend:
    """Deterministic embeddings of ``dim`` values whose first one is ``tag`` (before the
    gateway normalizes them); counts the image and text rows it got."""

    def __init__(self, dim: int, tag: float) -> None:
        self.dim = dim
        self.tag = tag
        self.image_rows = 0
        self.text_rows = 0

    def _rows(self, n: int, seeds: np.ndarray) -> np.ndarray:
        out = np.ones((n, self.dim), np.float32)
        out[:, 0] = self.tag
        out[:, 1] = seeds.reshape(n, -1).sum(axis=1) % 97 + 1  # differs between inputs
        return out

    async def embed_images(self, pixels: np.ndarray, deadline: float | None = None) -> np.ndarray:
        self.image_rows += len(pixels)
        return self._rows(len(pixels), pixels.astype(np.int64))

    async def embed_texts(self, input_ids: np.ndarray,
                          deadline: float | None = None) -> np.ndarray:
        self.text_rows += len(input_ids)
        return self._rows(len(input_ids), input_ids)

    async def embed_encoded(self, images: list[bytes],
                            deadline: float | None = None) -> np.ndarray:
        raise AssertionError("the test engines decode images themselves (EXACT mode)")


@dataclass
class TwoModels:
    engines: Engines
    metrics: Metrics
    backends: dict[str, TaggedBackend]
    checkpoint: Path

    def dim(self, name: str) -> int:
        return self.backends[name].dim


@contextmanager
def two_models(checkpoint: Path) -> Iterator[TwoModels]:
    """Engines of ``base`` (the default) and ``large``, with their Metrics."""
    meta = load_model_meta(str(checkpoint))
    metas = {BASE: meta,
             LARGE: dataclasses.replace(meta, model_id=LARGE_CHECKPOINT,
                                        embedding_dim=meta.embedding_dim + LARGE_DIM_EXTRA,
                                        logit_bias=LARGE_LOGIT_BIAS)}
    specs = {BASE: ModelSpec(BASE, str(checkpoint)), LARGE: ModelSpec(LARGE, LARGE_CHECKPOINT)}
    backends = {name: TaggedBackend(m.embedding_dim, tag)
                for (name, m), tag in zip(metas.items(), (2.0, -5.0), strict=True)}
    metrics = Metrics(models=(BASE, LARGE))
    tokenizer = TextTokenizer.for_model(meta)
    with ThreadPoolExecutor(2) as pool:
        served = [Served(specs[name], Engine(
            meta=metas[name], tokenizer=tokenizer, backend=backends[name], pool=pool,
            metrics=metrics.for_model(name), cache=EmbeddingCache(100),
            request_limits=RequestLimits(), image_limits=ImageLimits(),
            mode=PreprocessMode.EXACT)) for name in (BASE, LARGE)]
        yield TwoModels(Engines(served), metrics, backends, checkpoint)


@asynccontextmanager
async def http_serving(models: TwoModels, **api_options: object) -> AsyncIterator[str]:
    """The HTTP API (gateway/http/) over ``models`` on 127.0.0.1; yields its base URL."""
    options: dict[str, object] = {"preprocess_mode": "exact", "max_message_bytes": 1 << 20}
    options.update(api_options)
    api = HttpApi(models.engines, Admission(8, models.metrics.in_flight), models.metrics,
                  **options)  # type: ignore[arg-type]
    server = HttpServer(api.app(), Settings.from_env({}, host="127.0.0.1", http_port=0))
    port = await server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await server.stop(1.0)
