"""The data plane: turns domain requests into tower calls and scores.

Blocking work (decode, resize, tokenize) runs in a bounded thread pool, never on the
event loop; Pillow and the tokenizer release the GIL for the heavy parts. For one
request the image and text towers are called concurrently, and text embeddings come
from a bounded LRU cache when the same prompt was seen before. The cache holds the text tower's
raw output and whether the text was truncated; embeddings are normalized on the way out, so
Embed's raw (normalize=false) and normalized answers come from one entry. Prompt ensembles
(several templates) are cached too, per (model, templates, label).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

import numpy as np

from gateway.core.cache import EmbeddingCache
from gateway.core.errors import BackendRejected, InvalidInput
from gateway.core.images import ImageLimits, PreprocessMode, preprocess_image, triton_decodable
from gateway.core.model_meta import ModelMeta
from gateway.core.prompts import (
    check_prompt_count,
    ensemble_key,
    label_prompts,
    prompt_ensemble,
    resolve_templates,
)
from gateway.core.scoring import l2_normalize, score, top_k
from gateway.core.text import TextTokenizer
from gateway.core.types import (
    Classified,
    Embedded,
    EmbedItem,
    EncodedImage,
    ImageInput,
    ImageUrl,
    LabelScore,
    Scored,
)
from gateway.core.validation import (
    RequestLimits,
    check_count,
    check_text,
    check_texts,
    refuse_truncated,
)
from gateway.metrics import ModelMetrics
from gateway.observability.tracing import Tracing

T = TypeVar("T")


class Backend(Protocol):
    async def embed_images(self, pixels: np.ndarray,
                           deadline: float | None = None) -> np.ndarray: ...
    async def embed_texts(self, input_ids: np.ndarray,
                          deadline: float | None = None) -> np.ndarray: ...
    async def embed_encoded(self, images: list[bytes],
                            deadline: float | None = None) -> np.ndarray: ...


class ImageFetcher(Protocol):
    """Images by URL (gateway.fetch.client.UrlFetcher): the bodies, in order, or a
    GatewayError naming the field of the first that is refused or fails."""

    async def fetch_all(self, urls: Sequence[str], fields: Sequence[str],
                        deadline: float | None) -> list[bytes]: ...


class Engine:
    def __init__(self, *, meta: ModelMeta, tokenizer: TextTokenizer, backend: Backend,
                 pool: Executor, metrics: ModelMetrics, cache: EmbeddingCache,
                 request_limits: RequestLimits, image_limits: ImageLimits,
                 mode: PreprocessMode, fetcher: ImageFetcher | None = None,
                 tracing: Tracing | None = None) -> None:
        self.meta = meta
        self._tokenizer = tokenizer
        self._backend = backend
        self._pool = pool
        self._metrics = metrics
        # Each stage timed for its histogram and, with tracing on, a span.
        self._stage = (tracing or Tracing()).stage_timer(metrics.stage)
        self._cache = cache
        self._limits = request_limits
        self._image_limits = image_limits
        self._mode = mode
        # None: images by URL are off (SIGLIP_IMAGE_URL_ALLOW is empty).
        self._fetcher = fetcher
        # What this process decodes with: in TRITON mode, what Triton's decoder does not take.
        self._local_mode = PreprocessMode.EXACT if mode is PreprocessMode.TRITON else mode
        # Text embeddings (raw, truncated?) being fetched right now, by text: see _text_embeds.
        self._in_progress: dict[str, asyncio.Future[tuple[np.ndarray, bool]]] = {}

    async def classify_detailed(self, images: Sequence[ImageInput], labels: Sequence[str],
                                template: str | None, k: int, deadline: float | None, *,
                                templates: Sequence[str] | None = None, truncate: bool = True,
                                ) -> Classified:
        """Zero-shot scores; several ``templates`` make each label a prompt ensemble."""
        check_count("images", len(images), self._limits.max_images, "image")
        chosen = resolve_templates(template, templates)
        check_count("labels", len(labels), self._limits.max_texts, "label")
        check_prompt_count(len(labels), len(chosen), self._limits.max_texts)
        check_texts("labels", labels, self._limits)
        image_embeds, (label_embeds, truncated) = await asyncio.gather(
            self._image_embeds(images, _fields("images", range(len(images))), deadline),
            self._label_embeds(labels, chosen, deadline))
        refuse_truncated(truncated, truncate, self.meta.text_length, lambda j: f"labels[{j}]",
                         "a prompt of this label")
        logits, probs = score(image_embeds, label_embeds, self.meta.logit_scale,
                              self.meta.logit_bias)
        results = []
        for row_logits, row_probs in zip(logits, probs, strict=True):
            order = top_k(row_probs, k or None)  # the API's top_k 0 means all labels
            results.append([LabelScore(labels[j], float(row_probs[j]), float(row_logits[j]))
                            for j in order])
        return Classified(results, np.flatnonzero(truncated).tolist())

    async def score_detailed(self, images: Sequence[ImageInput], texts: Sequence[str],
                             deadline: float | None, *, truncate: bool = True) -> Scored:
        check_count("images", len(images), self._limits.max_images, "image")
        check_count("texts", len(texts), self._limits.max_texts, "text")
        check_texts("texts", texts, self._limits)
        image_embeds, (text_embeds, truncated) = await asyncio.gather(
            self._image_embeds(images, _fields("images", range(len(images))), deadline),
            self._text_embeds(list(texts), deadline))
        refuse_truncated(truncated, truncate, self.meta.text_length, lambda j: f"texts[{j}]")
        logits, probs = score(image_embeds, text_embeds, self.meta.logit_scale,
                              self.meta.logit_bias)
        return Scored(logits, probs, np.flatnonzero(truncated).tolist())

    async def embed(self, items: Sequence[EmbedItem], deadline: float | None,
                    field: str = "inputs") -> np.ndarray:
        """L2-normalized embeddings (N, D) in input order; images and texts may be mixed."""
        return (await self.embed_detailed(items, deadline, field)).embeddings

    async def embed_detailed(self, items: Sequence[EmbedItem], deadline: float | None,
                             field: str = "inputs", *, normalize: bool = True,
                             truncate: bool = True) -> Embedded:
        """Embeddings (N, D) in input order: L2-normalized, or the towers' raw output
        (``get_image_features`` / ``get_text_features``) when ``normalize`` is false."""
        check_count(field, len(items), self._limits.max_images + self._limits.max_texts, "input")
        image_at = [i for i, x in enumerate(items) if not isinstance(x, str)]
        text_at = [i for i, x in enumerate(items) if isinstance(x, str)]
        check_count(field, len(image_at), self._limits.max_images, "image input", allow_empty=True)
        check_count(field, len(text_at), self._limits.max_texts, "text input", allow_empty=True)
        texts = [items[i] for i in text_at]
        for i, text in zip(text_at, texts, strict=True):
            check_text(f"{field}[{i}].text", text, self._limits)
        image_embeds, (text_embeds, truncated) = await asyncio.gather(
            self._image_embeds([items[i] for i in image_at],
                               [f"{field}[{i}].image" for i in image_at], deadline),
            self._text_embeds(texts, deadline))
        refuse_truncated(truncated, truncate, self.meta.text_length,
                         lambda j: f"{field}[{text_at[j]}].text")
        out = np.empty((len(items), self.meta.embedding_dim), dtype=np.float32)
        if image_at:
            out[image_at] = image_embeds
        if text_at:
            out[text_at] = text_embeds
        if normalize:
            out = l2_normalize(out)
        return Embedded(out, [text_at[j] for j in np.flatnonzero(truncated)])

    async def _label_embeds(self, labels: Sequence[str], templates: Sequence[str],
                            deadline: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Per label: its embedding (raw with one template, the prompt ensemble with several)
        and whether any of its prompts was truncated. Ensembles are cached by (model,
        templates, label), so a repeated request fetches no prompt at all."""
        if len(templates) == 1:
            return await self._text_embeds(label_prompts(labels, templates), deadline)
        keys = [(self.meta.model_id, ensemble_key(templates), label) for label in labels]
        cached = self._cache.get_flagged(keys)
        missing = list(dict.fromkeys(lb for lb, c in zip(labels, cached, strict=True)
                                     if c is None))
        fresh: dict[str, tuple[np.ndarray, bool]] = {}
        if missing:
            prompt_embeds, prompt_truncated = await self._text_embeds(
                label_prompts(missing, templates), deadline)
            label_embeds = prompt_ensemble(prompt_embeds, len(templates))
            flags = prompt_truncated.reshape(len(missing), len(templates)).any(axis=1)
            key_of = dict(zip(labels, keys, strict=True))
            self._cache.put_many([key_of[lb] for lb in missing], label_embeds, flags)
            fresh = {lb: (e, bool(f)) for lb, e, f in zip(missing, label_embeds, flags,
                                                          strict=True)}
        rows = [c if c is not None else fresh[lb] for lb, c in zip(labels, cached, strict=True)]
        return (np.stack([r[0] for r in rows]).astype(np.float32),
                np.array([r[1] for r in rows], dtype=bool))

    async def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text before padding (usage reporting of the OpenAI-compatible API)."""
        return await self._run(self._tokenizer.count, list(texts)) if texts else []

    async def _image_embeds(self, images: Sequence[ImageInput], fields: Sequence[str],
                            deadline: float | None) -> np.ndarray:
        if not images:
            return np.empty((0, self.meta.embedding_dim), dtype=np.float32)
        self._metrics.inputs("image").observe(len(images))
        if any(isinstance(image, ImageUrl) for image in images):
            with self._stage("fetch"):
                images = await self._fetch_urls(images, fields, deadline)
        with self._stage("decode"):
            prepared = await asyncio.gather(*(
                self._run(self._prepare, image, field)
                for field, image in zip(fields, images, strict=True)))
        # bytes: for Triton's decoder (TRITON mode); arrays: pixels decoded here.
        encoded = [i for i, p in enumerate(prepared) if isinstance(p, bytes)]
        decoded = [i for i, p in enumerate(prepared) if not isinstance(p, bytes)]
        self._metrics.image_decodes("gateway").inc(len(decoded))
        self._metrics.image_decodes("triton").inc(len(encoded))
        calls = []
        if decoded:
            pixels = np.stack([prepared[i] for i in decoded])
            calls.append(self._backend.embed_images(pixels, deadline))
        if encoded:
            calls.append(self._embed_encoded([images[i] for i in encoded],
                                             [fields[i] for i in encoded], deadline))
        with self._stage("triton_vision"):
            parts = await asyncio.gather(*calls)
        embeds = np.empty((len(images), parts[0].shape[1]), dtype=np.float32)
        for rows, part in zip((r for r in (decoded, encoded) if r), parts, strict=True):
            embeds[rows] = part
        return embeds  # raw: scoring and Embed normalize

    async def _fetch_urls(self, images: Sequence[ImageInput], fields: Sequence[str],
                          deadline: float | None) -> list[ImageInput]:
        """The images with every ImageUrl fetched (concurrently) into an EncodedImage, which
        then takes the path of any encoded image: same limits, same decoding."""
        at = [i for i, image in enumerate(images) if isinstance(image, ImageUrl)]
        if self._fetcher is None:
            raise InvalidInput("fetching images by URL is off (SIGLIP_IMAGE_URL_ALLOW)",
                               field=f"{fields[at[0]]}.url")
        bodies = await self._fetcher.fetch_all(
            [images[i].url for i in at], [f"{fields[i]}.url" for i in at],  # type: ignore[union-attr]
            deadline)
        out = list(images)
        for i, body in zip(at, bodies, strict=True):
            out[i] = EncodedImage(body)
        return out

    async def _embed_encoded(self, images: list[EncodedImage], fields: list[str],
                             deadline: float | None) -> np.ndarray:
        try:
            return await self._backend.embed_encoded([im.data for im in images], deadline)
        except BackendRejected:
            # Triton could not decode one of them (e.g. a truncated JPEG whose header was
            # fine): decode them all here, which names the bad field or succeeds.
            self._metrics.image_decodes("gateway_retry").inc(len(images))
            pixels = await asyncio.gather(*(
                self._run(self._preprocess, image, field)
                for image, field in zip(images, fields, strict=True)))
            return await self._backend.embed_images(np.stack(pixels), deadline)

    async def _text_embeds(self, texts: Sequence[str], deadline: float | None,
                           ) -> tuple[np.ndarray, np.ndarray]:
        """Raw text-tower embeddings (N, D), and per text whether it was truncated to fit."""
        if not texts:
            return (np.empty((0, self.meta.embedding_dim), dtype=np.float32),
                    np.zeros(0, dtype=bool))
        self._metrics.inputs("text").observe(len(texts))
        keys = [(self.meta.model_id, t) for t in texts]
        cached = self._cache.get_flagged(keys)
        missing = list(dict.fromkeys(t for t, v in zip(texts, cached, strict=True) if v is None))
        self._metrics.cache_hits.inc(len(texts) - sum(v is None for v in cached))
        self._metrics.cache_misses.inc(sum(v is None for v in cached))
        # Texts another request is already fetching are awaited, not fetched again: a burst of
        # Classify calls on a cold cache sends each label to Triton once, not once per call.
        joined = {t: self._in_progress[t] for t in missing if t in self._in_progress}
        fresh = await self._fetch_texts([t for t in missing if t not in joined], deadline)
        failed = []
        for text, future in joined.items():
            await asyncio.wait([future])  # never raises the fetcher's error or cancellation
            if future.cancelled():  # that fetch failed or was cancelled: fetch it here
                failed.append(text)
            else:
                fresh[text] = future.result()
        fresh.update(await self._fetch_texts(failed, deadline))
        rows = [v if v is not None else fresh[t] for t, v in zip(texts, cached, strict=True)]
        return np.stack([r[0] for r in rows]), np.array([r[1] for r in rows], dtype=bool)

    async def _fetch_texts(self, texts: list[str], deadline: float | None,
                           ) -> dict[str, tuple[np.ndarray, bool]]:
        if not texts:
            return {}
        loop = asyncio.get_running_loop()
        futures = {t: loop.create_future() for t in texts}
        self._in_progress.update(futures)
        try:
            with self._stage("tokenize"):
                ids, truncated = await self._run(self._tokenizer.encode_checked, texts)
            with self._stage("triton_text"):
                embeds = np.asarray(await self._backend.embed_texts(ids, deadline), np.float32)
            fresh = {t: (e, bool(f)) for t, e, f in zip(texts, embeds, truncated, strict=True)}
            self._cache.put_many([(self.meta.model_id, t) for t in texts], list(embeds),
                                 truncated)
            for text, future in futures.items():
                future.set_result(fresh[text])
            return fresh
        finally:
            for text, future in futures.items():
                if not future.done():
                    future.cancel()  # waiters fetch for themselves
                if self._in_progress.get(text) is future:
                    del self._in_progress[text]

    def _prepare(self, image: ImageInput, field: str) -> np.ndarray | bytes:
        """Pixels decoded here, or (TRITON mode) the bytes of a JPEG Triton will decode."""
        if (self._mode is PreprocessMode.TRITON and isinstance(image, EncodedImage)
                and triton_decodable(image.data, field=field, limits=self._image_limits)):
            return image.data
        return self._preprocess(image, field)

    def _preprocess(self, image: ImageInput, field: str) -> np.ndarray:
        return preprocess_image(image, field=field, limits=self._image_limits,
                                mode=self._local_mode)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)


def _fields(name: str, indices: range) -> list[str]:
    return [f"{name}[{i}]" for i in indices]


def deadline_from(time_remaining: float | None) -> float | None:
    """A monotonic deadline from gRPC's ``time_remaining()`` (None: the caller set none)."""
    return None if time_remaining is None else time.monotonic() + time_remaining
