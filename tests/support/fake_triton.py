"""A fake Triton Inference Server for the reliability tests: exact, instant and controllable.

Speaks Triton's real gRPC protocol (tritonclient's generated servicer) on 127.0.0.1, so the
gateway's production ``TritonBackend`` talks to it unchanged. It serves the two SigLIP towers
with deterministic embeddings of the checkpoint's size and lets a test set an upstream delay, an
error status and the readiness flag, count calls and see which calls the client cancelled.
It can stop and start again on the same port (Triton going away and coming back). With several
models served, it answers for each one's suffixed towers too (``siglip_text__NAME``,
gateway/contract.py); ``received`` tells which model's towers a call went to.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import grpc
import numpy as np
from tritonclient.grpc import service_pb2 as tpb
from tritonclient.grpc import service_pb2_grpc as tpb_grpc

from gateway.contract import TENSORS, TEXT_MODEL, VISION_MODEL, TritonNames, base_model
from siglip_tools.checkpoint import shape_of

# The tiny test checkpoint's shapes (tests/conftest.py makes it with the defaults).
IMAGE_SIZE, TEXT_LENGTH = shape_of("tiny")["image_size"], shape_of("tiny")["text_length"]

# model: (input name, input dtype, per-row input shape, output name)
MODELS = {
    model: (TENSORS[model][0], TENSORS[model][1], shape, TENSORS[model][2])
    for model, shape in ((VISION_MODEL, (IMAGE_SIZE, IMAGE_SIZE, 3)), (TEXT_MODEL, (TEXT_LENGTH,)))
}
_NP_DTYPES = {"UINT8": np.uint8, "INT64": np.int64}


def served_models(names: Sequence[str]) -> dict[str, tuple]:
    """MODELS under the Triton names of a deployment of several models (gateway/contract.py)."""
    out = {}
    for name in names:
        triton = TritonNames.suffixed(name)
        for model in (triton.vision, triton.text):
            out[model] = MODELS[base_model(model)]
    return out


def fake_embeddings(rows: np.ndarray, dim: int) -> np.ndarray:
    """Deterministic (N, dim) float32 from (N, ...) inputs: sums of strided slices, plus an
    offset so no vector is zero (the gateway L2-normalizes them). Cheap, for soak tests."""
    flat = rows.reshape(len(rows), -1)
    pad = (-flat.shape[1]) % dim
    if pad:
        flat = np.pad(flat, ((0, 0), (0, pad)))
    sums = flat.reshape(len(rows), -1, dim).sum(axis=1, dtype=np.int64)
    return (sums / flat.shape[1] + np.arange(1, dim + 1)).astype(np.float32)


@dataclass
class CallRecord:
    model: str
    rows: int
    # The first input value of each row: tests tag rows with it to see whose rows a call held.
    tags: tuple[int, ...] = ()
    # The call's gRPC metadata (e.g. the W3C ``traceparent`` the gateway sends).
    metadata: tuple[tuple[str, str | bytes], ...] = ()


class _Servicer(tpb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, fake: FakeTriton) -> None:
        self._fake = fake

    async def ServerLive(self, request, context):
        return tpb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return tpb.ServerReadyResponse(ready=self._fake.ready)

    async def ModelReady(self, request, context):
        self._fake.ready_checks += 1
        return tpb.ModelReadyResponse(ready=self._fake.ready and request.name in self._fake.models)

    async def ModelStatistics(self, request, context):
        stats = tpb.ModelStatisticsResponse()
        for name in self._fake.models if not request.name else (request.name,):
            done = self._fake.completed[name]
            stats.model_stats.add(name=name, version="1", inference_count=done,
                                  execution_count=done)
        return stats

    async def ModelInfer(self, request, context):
        fake = self._fake
        model = request.model_name
        if model not in fake.models:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{model}'")
        input_name, dtype, row_shape, output_name = fake.models[model]
        tensor = request.inputs[0]
        if (tensor.name != input_name or tensor.datatype != dtype
                or tuple(tensor.shape[1:]) != row_shape):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"unexpected input {tensor.name} {tensor.datatype} {tensor.shape}")
        rows = int(tensor.shape[0])
        array = np.frombuffer(request.raw_input_contents[0], dtype=_NP_DTYPES[dtype])
        array = array.reshape(rows, *row_shape)
        record = CallRecord(model, rows, tuple(int(v) for v in array.reshape(rows, -1)[:, 0]),
                            tuple(tuple(m) for m in context.invocation_metadata() or ()))
        fake.calls[model] += 1
        fake.received.append(record)
        fake.in_progress += 1
        try:
            if fake.delay_s > 0:
                await asyncio.sleep(fake.delay_s)
            error = fake.error if fake.fail_when is None else fake.fail_when(array)
            if error is not None:
                await context.abort(error, fake.error_message)
            embeds = fake_embeddings(array, fake.dim)
        except asyncio.CancelledError:
            # The client cancelled (or its deadline passed): grpc cancels this handler.
            fake.cancelled.append(record)
            raise
        finally:
            fake.in_progress -= 1
        fake.completed[model] += 1
        response = tpb.ModelInferResponse(model_name=model, model_version="1", id=request.id)
        response.outputs.add(name=output_name, datatype="FP32", shape=[rows, fake.dim])
        response.raw_output_contents.append(embeds.tobytes())
        return response


class FakeTriton:
    """Knobs (change them any time): ``delay_s``, ``error`` (a StatusCode or None),
    ``fail_when`` (instead of ``error``: the call's input rows → a StatusCode or None),
    ``error_message``, ``ready``, ``models`` (what it serves: remove one to make it unready).
    Records: ``calls``, ``received`` (every call, in arrival order), ``completed``,
    ``cancelled``, ``in_progress``, ``ready_checks``. ``served``: the names of a deployment of
    several models, whose suffixed towers it then serves instead of the plain ones."""

    def __init__(self, dim: int, *, delay_s: float = 0.0, ready: bool = True,
                 served: Sequence[str] = ()) -> None:
        self.dim = dim
        self.models = served_models(served) if served else dict(MODELS)
        self.delay_s = delay_s
        self.ready = ready
        self.error: grpc.StatusCode | None = None
        self.error_message = "injected failure"
        self.fail_when: Callable[[np.ndarray], grpc.StatusCode | None] | None = None
        self.calls: collections.Counter[str] = collections.Counter()
        self.completed: collections.Counter[str] = collections.Counter()
        self.received: list[CallRecord] = []
        self.cancelled: list[CallRecord] = []
        self.in_progress = 0
        self.ready_checks = 0
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None

    @property
    def url(self) -> str:
        assert self.port is not None, "start() first"
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._server is not None

    async def start(self) -> str:
        """Listens on a free port, or on the port it had before (a restart); returns the URL."""
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ("grpc.so_reuseport", 0),
        ])
        tpb_grpc.add_GRPCInferenceServiceServicer_to_server(_Servicer(self), server)
        port = server.add_insecure_port(f"127.0.0.1:{self.port or 0}")
        if port == 0:
            raise RuntimeError(f"fake Triton could not bind 127.0.0.1:{self.port}")
        await server.start()
        self.port = port
        self._server = server
        return self.url

    async def stop(self, grace_s: float | None = None) -> None:
        """Stops listening; calls in progress are cancelled unless ``grace_s`` lets them end."""
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None

    def rows(self, model: str) -> int:
        """Rows received for ``model`` (calls count less once the gateway coalesces them)."""
        return sum(r.rows for r in self.received if r.model == model)

    def reset_counters(self) -> None:
        self.calls.clear()
        self.received.clear()
        self.completed.clear()
        self.cancelled.clear()
        self.ready_checks = 0

    async def __aenter__(self) -> FakeTriton:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
