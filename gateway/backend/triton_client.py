"""The Triton adapter: the only module that speaks to Triton.

One ``tritonclient.grpc.aio`` client per process, reused by every request. Tensors go
out as uint8 pixels and int64 token ids; embeddings come back as float32. With a Triton on
this host they travel through system shared memory (``shm.py``), else inside the gRPC
messages; JPEG bytes (BYTES) always go over gRPC. Triton's errors are parsed once, here,
into the gateway's typed errors. With tracing on, each call is a CLIENT span whose W3C trace
context goes to Triton as gRPC metadata (gateway/observability/tracing.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tritonclient.grpc.aio as triton_aio
from tritonclient.grpc import InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from gateway.backend.shm import Region, ShmPool, answered_by_triton, region_unknown, status_code
from gateway.contract import (
    MAX_ROWS,
    PLAIN_NAMES,
    TENSORS,
    TOWER_MODELS,
    TritonNames,
    base_model,
)
from gateway.core.errors import (
    BackendError,
    BackendRejected,
    BackendUnavailable,
    DeadlineExceeded,
    GatewayError,
    Overloaded,
)
from gateway.observability.tracing import Tracing

log = logging.getLogger(__name__)



def channel_args(max_message_bytes: int) -> list[tuple[str, object]]:
    """All channel options: tritonclient replaces its defaults when any are given."""
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", 10_000),
        ("grpc.keepalive_timeout_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # Reconnect quickly after Triton restarts: the default backoff grows to 120 s.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        # A dns:/// target names a headless service: spread calls over all Triton pods.
        ("grpc.lb_policy_name", "round_robin"),
    ]


class TritonBackend:
    """Embeds pixels and token ids with the SigLIP towers hosted by Triton: the process's one
    client, shared by every served model (``tower`` gives a model's view)."""

    def __init__(self, url: str, *, max_message_bytes: int, default_timeout_s: float,
                 models: tuple[str, ...] = TOWER_MODELS, shm_max_bytes: int | None = None,
                 embedding_dim: int | None = None, tracing: Tracing | None = None,
                 embedding_dims: Mapping[str, int] | None = None) -> None:
        """``shm_max_bytes`` (with ``embedding_dim``, or ``embedding_dims`` per Triton model):
        move tensors through up to that many bytes of shared memory; None: inside the gRPC
        messages. ``models``: what ready() requires."""
        self.url = url
        self._tracing = tracing or Tracing()
        self.models = models  # what ready() requires
        self._default_timeout_s = default_timeout_s
        self._client = triton_aio.InferenceServerClient(
            url, channel_args=channel_args(max_message_bytes))
        self.shm: ShmPool | None = None
        self._dims = dict(embedding_dims or {})
        if shm_max_bytes is not None:
            if embedding_dim is None and not self._dims:
                raise ValueError("shared memory needs the embedding size")
            self.shm = ShmPool(self._client, max_bytes=shm_max_bytes)
            log.info("tensors to Triton through shared memory (up to %d MiB), else gRPC",
                     shm_max_bytes >> 20)
        self._default_dim = embedding_dim or 0

    def _out_row(self, model: str) -> int:
        """Bytes of one output row (float32 embeddings) of a Triton model."""
        return 4 * self._dims.get(model, self._default_dim)

    def tower(self, names: TritonNames) -> Towers:
        """The backend of one served model: its Triton models, over this client."""
        return Towers(self, names)

    async def close(self) -> None:
        if self.shm is not None:
            await self.shm.close()
        await self._client.close()

    async def embed_images(self, pixels: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """(N, S, S, 3) uint8 → (N, D) float32, not normalized (the one-model names)."""
        return await self.infer(PLAIN_NAMES.vision, pixels, deadline)

    async def embed_encoded(self, images: list[bytes],
                            deadline: float | None = None) -> np.ndarray:
        """JPEG bytes, decoded and resized by Triton → (N, D) float32, not normalized.
        Raises BackendRejected when Triton could not decode one of them."""
        return await self.infer(PLAIN_NAMES.encoded, _bytes_column(images), deadline)

    async def embed_texts(self, input_ids: np.ndarray, deadline: float | None = None) -> np.ndarray:
        """(N, L) int64 → (N, D) float32, not normalized."""
        return await self.infer(PLAIN_NAMES.text, input_ids, deadline)

    async def ready(self, timeout_s: float = 1.0) -> bool:
        """True when Triton answers and both models are ready; never raises."""
        try:
            checks = [self._client.is_model_ready(m, client_timeout=timeout_s)
                      for m in self.models]
            return all(await asyncio.gather(*checks))
        except (InferenceServerException, asyncio.TimeoutError, OSError):
            return False

    async def statistics(self, model: str) -> dict:
        """Triton's inference statistics of one model (for tests and diagnostics)."""
        stats = await self._client.get_inference_statistics(model, as_json=True)
        return stats["model_stats"][0]

    async def infer_chunk(self, model: str, array: np.ndarray, deadline: float | None,
                          links: Sequence[Any] = ()) -> np.ndarray:
        """One Triton call of at most ``MAX_ROWS[model]`` rows (what the coalescer sends).
        ``links``: traced contexts of the other requests whose rows ride in this call."""
        input_name, datatype, output_name = TENSORS[base_model(model)]
        if not self._tracing.enabled:
            return await self._infer_chunk(model, input_name, output_name, array, datatype,
                                           deadline, None)
        attributes = {"rpc.system": "grpc", "rpc.service": "inference.GRPCInferenceService",
                      "rpc.method": "ModelInfer", "triton.model": model, "triton.rows": len(array),
                      "triton.requests": 1 + len(links)}
        with self._tracing.client_call(f"triton {model}", attributes, links) as headers:
            return await self._infer_chunk(model, input_name, output_name, array, datatype,
                                           deadline, headers)

    async def infer(self, model: str, array: np.ndarray, deadline: float | None) -> np.ndarray:
        """Any number of rows, cut into calls of at most the model's MAX_ROWS."""
        step = MAX_ROWS[base_model(model)]
        chunks = [array[i:i + step] for i in range(0, len(array), step)]
        results = await asyncio.gather(*(self.infer_chunk(model, c, deadline) for c in chunks))
        return results[0] if len(results) == 1 else np.concatenate(results)

    async def _infer_chunk(self, model: str, input_name: str, output_name: str,
                           array: np.ndarray, datatype: str, deadline: float | None,
                           headers: dict[str, str] | None) -> np.ndarray:
        if self.shm is not None and datatype != "BYTES":
            in_row = array.nbytes // max(1, len(array))
            for _ in range(2):
                region = await self.shm.checkout(len(array), in_row, self._out_row(model))
                if region is None:
                    break
                try:
                    return await self._infer_shm(model, input_name, output_name, array,
                                                 datatype, deadline, region, headers)
                except _RegionUnknown:
                    # Triton restarted and forgot every registration: register afresh, once.
                    self.shm.forget()
        tensor = InferInput(input_name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        timeout_s = self._remaining(deadline)
        try:
            result = await self._client.infer(
                model, [tensor], outputs=[InferRequestedOutput(output_name)],
                client_timeout=timeout_s, headers=headers)
        except InferenceServerException as exc:
            raise _translate(exc, model) from None
        out = result.as_numpy(output_name)
        self._check_rows(model, None if out is None else out.shape, len(array))
        assert out is not None
        return out.astype(np.float32, copy=False)

    async def _infer_shm(self, model: str, input_name: str, output_name: str,
                         array: np.ndarray, datatype: str, deadline: float | None,
                         region: Region, headers: dict[str, str] | None) -> np.ndarray:
        """One call with input and output in ``region``, which goes back to the pool on every
        path; reusable only if Triton answered (see shm.py for why)."""
        assert self.shm is not None
        reusable = True  # until the call goes out, Triton has not seen this region
        try:
            timeout_s = self._remaining(deadline)
            region.write(array)  # the only copy of the rows on this side
            tensor = InferInput(input_name, list(array.shape), datatype)
            tensor.set_shared_memory(region.name, array.nbytes)
            output = InferRequestedOutput(output_name)
            out_row = self._out_row(model)
            output.set_shared_memory(region.name, len(array) * out_row, region.output_offset)
            reusable = False
            try:
                result = await self._client.infer(model, [tensor], outputs=[output],
                                                  client_timeout=timeout_s, headers=headers)
            except InferenceServerException as exc:
                reusable = answered_by_triton(exc)
                if region_unknown(exc):
                    raise _RegionUnknown from None
                raise _translate(exc, model) from None
            reusable = True
            meta = result.get_output(output_name)
            shape = None if meta is None else tuple(meta.shape)
            self._check_rows(model, shape, len(array))
            assert shape is not None
            if shape[1] * 4 != out_row:
                log.error("%s returned %s, expected %d floats per row", model, shape,
                          out_row // 4)
                raise BackendError("inference failed")
            return region.read(shape, np.dtype(np.float32))
        finally:
            self.shm.release(region, reusable=reusable)

    @staticmethod
    def _check_rows(model: str, shape: tuple[int, ...] | None, rows: int) -> None:
        if shape is None or len(shape) != 2 or shape[0] != rows:
            log.error("%s returned %s for %s inputs", model, shape, rows)
            raise BackendError("inference failed")

    def _remaining(self, deadline: float | None) -> float:
        if deadline is None:
            return self._default_timeout_s
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("deadline exceeded before the request reached Triton")
        return min(remaining, self._default_timeout_s)


class Towers:
    """One served model's backend for the engine: its Triton models over the shared client."""

    def __init__(self, backend: TritonBackend, names: TritonNames) -> None:
        self.names = names
        self._backend = backend

    async def embed_images(self, pixels: np.ndarray, deadline: float | None = None) -> np.ndarray:
        return await self._backend.infer(self.names.vision, pixels, deadline)

    async def embed_texts(self, input_ids: np.ndarray, deadline: float | None = None) -> np.ndarray:
        return await self._backend.infer(self.names.text, input_ids, deadline)

    async def embed_encoded(self, images: list[bytes],
                            deadline: float | None = None) -> np.ndarray:
        return await self._backend.infer(self.names.encoded, _bytes_column(images), deadline)


def _bytes_column(images: list[bytes]) -> np.ndarray:
    array = np.empty((len(images), 1), dtype=np.object_)
    array[:, 0] = images
    return array


class _RegionUnknown(Exception):
    """Triton did not know the shared memory region of a call."""


def _translate(exc: InferenceServerException, model: str) -> GatewayError:
    """Triton's status (a string like "StatusCode.UNAVAILABLE") → a typed error."""
    status = status_code(exc)
    log.warning("Triton %s failed: %s %s", model, status or "-", exc.message())
    if status == "UNAVAILABLE":
        return BackendUnavailable("inference server unavailable")
    if status == "DEADLINE_EXCEEDED":
        return DeadlineExceeded("deadline exceeded while waiting for the inference server")
    if status == "RESOURCE_EXHAUSTED":
        return Overloaded("inference server queue is full")
    if status == "INVALID_ARGUMENT":
        return BackendRejected("inference failed")
    if status == "NOT_FOUND" or "is not ready" in (exc.message() or "") or (
            "unavailable" in (exc.message() or "").lower()):
        return BackendUnavailable(f"model {model} is not ready")
    return BackendError("inference failed")

