"""The SiglipService servicer: converts, calls the engine, converts back. Nothing else.

Every RPC goes through ``_observed`` (metrics, errors mapped to gRPC statuses, the request's
scope: request id, span, log line; gateway/observability/request.py) and holds an
admission slot (the in-flight bound). Each request (each EmbedStream message) picks its
model's Engine by its ``model`` field (gateway/engines.py). Requests are parsed by
``parsing.parser`` instead of grpc's deserializer so that a malformed message (e.g. invalid
UTF-8 in a string field) is the caller's INVALID_ARGUMENT rather than grpc's generic INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from gateway.admission import Admission
from gateway.api import convert
from gateway.api.errors import to_grpc_status
from gateway.api.parsing import parsed_bytes, parser, raise_if_undecodable
from gateway.core.text import DEFAULT_PROMPT_TEMPLATE
from gateway.core.types import Embedded, EmbedItem
from gateway.engine import deadline_from
from gateway.engines import Engines, Served
from gateway.metrics import Metrics
from gateway.observability.request import REQUEST_ID_HEADER, Observability, RequestScope
from siglip.v1 import siglip_pb2 as pb

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SiglipService"].full_name
# Messages of one EmbedStream processed concurrently; responses still leave in order.
STREAM_WINDOW = 4
# Failures of the server's side, not the caller's: the request's span is marked ERROR.
SERVER_ERRORS = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DATA_LOSS})


class SiglipServicer:
    def __init__(self, engines: Engines, admission: Admission, metrics: Metrics,
                 preprocess_mode: str, observability: Observability | None = None) -> None:
        self._engines = engines
        self._admission = admission
        self._metrics = metrics
        self._preprocess_mode = preprocess_mode
        self._observability = observability or Observability()

    async def Classify(self, request: pb.ClassifyRequest, context: grpc.aio.ServicerContext,
                       ) -> pb.ClassifyResponse:
        async def run(served: Served) -> pb.ClassifyResponse:
            template = request.prompt_template if request.HasField("prompt_template") else None
            result = await served.engine.classify_detailed(
                convert.images_from_pb(request.images), list(request.labels), template,
                request.top_k, deadline_from(context.time_remaining()),
                templates=list(request.prompt_templates),
                truncate=convert.flag(request, "truncate"))
            return convert.classified_response(result, served.name)
        return await self._call("Classify", request, context, run)

    async def Embed(self, request: pb.EmbedRequest, context: grpc.aio.ServicerContext,
                    ) -> pb.EmbedResponse:
        async def run(served: Served) -> pb.EmbedResponse:
            dtype = convert.embed_dtype(request)
            result = await served.engine.embed_detailed(
                convert.embed_items_from_pb(request.inputs),
                deadline_from(context.time_remaining()),
                normalize=convert.flag(request, "normalize"),
                truncate=convert.flag(request, "truncate"))
            return convert.embed_response(result, dtype, served.name)
        return await self._call("Embed", request, context, run)

    async def Score(self, request: pb.ScoreRequest, context: grpc.aio.ServicerContext,
                    ) -> pb.ScoreResponse:
        async def run(served: Served) -> pb.ScoreResponse:
            result = await served.engine.score_detailed(
                convert.images_from_pb(request.images), list(request.texts),
                deadline_from(context.time_remaining()),
                truncate=convert.flag(request, "truncate"))
            return convert.scored_response(result, served.name)
        return await self._call("Score", request, context, run)

    async def GetModelInfo(self, request: pb.GetModelInfoRequest,
                           context: grpc.aio.ServicerContext) -> pb.GetModelInfoResponse:
        async def run(served: Served) -> pb.GetModelInfoResponse:
            infos = {s.name: convert.model_info(s.name, s.engine.meta, self._preprocess_mode,
                                                DEFAULT_PROMPT_TEMPLATE)
                     for s in self._engines}
            return convert.model_info_response(infos[served.name], list(infos.values()))
        return await self._call("GetModelInfo", request, context, run)

    async def EmbedStream(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                          ) -> AsyncIterator[pb.EmbedStreamResponse]:
        """Up to STREAM_WINDOW messages in work at once; responses in request order."""
        pending: asyncio.Queue[asyncio.Future | None] = asyncio.Queue(STREAM_WINDOW)
        async with self._observed("EmbedStream", context) as scope:
            with self._admission.slot():
                reader = asyncio.create_task(
                    self._read_stream(requests, context, pending, scope))
                try:
                    while (task := await pending.get()) is not None:
                        result, dtype, name = await task
                        yield convert.embed_stream_response(result, dtype, name)
                    await reader
                finally:
                    reader.cancel()
                    while not pending.empty():
                        if (task := pending.get_nowait()) is not None:
                            task.cancel()

    async def _read_stream(self, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext,
                           pending: asyncio.Queue, scope: RequestScope) -> None:
        deadline = deadline_from(context.time_remaining())
        index = 0
        try:
            async for request in requests:
                _count_inputs(scope, request)
                raise_if_undecodable(request, f"stream message {index}")
                served = self._engines.get(request.model)
                scope.model = scope.model or served.name
                items = convert.embed_items_from_pb(request.inputs)
                await pending.put(asyncio.create_task(self._embed_message(
                    served, request, items, deadline)))
                index += 1
        except Exception as exc:  # handed to the writer, which answers it
            failed = asyncio.get_running_loop().create_future()
            failed.set_exception(exc)
            await pending.put(failed)
        await pending.put(None)

    async def _embed_message(self, served: Served, request: pb.EmbedStreamRequest,
                             items: list[EmbedItem], deadline: float | None,
                             ) -> tuple[Embedded, int, str]:
        """One stream message: its embeddings, the dtype they leave in, the model's name."""
        dtype = convert.embed_dtype(request)
        with served.slot():  # the stream holds the process's slot; each message its model's
            result = await served.engine.embed_detailed(
                items, deadline, normalize=convert.flag(request, "normalize"),
                truncate=convert.flag(request, "truncate"))
        return result, dtype, served.name

    async def _call(self, method: str, request: Any, context: grpc.aio.ServicerContext,
                    run: Callable[[Served], Awaitable[Any]]) -> Any:
        async with self._observed(method, context) as scope:
            _count_inputs(scope, request)
            raise_if_undecodable(request, "request")
            served = self._engines.get(request.model)
            scope.model = served.name
            with self._admission.slot(), served.slot():
                return await run(served)

    @contextlib.asynccontextmanager
    async def _observed(self, method: str, context: grpc.aio.ServicerContext,
                        ) -> AsyncIterator[RequestScope]:
        """Metrics and the request's scope for one RPC, and every failure turned into its gRPC
        status. The request id goes back in trailing metadata (``x-request-id``), and in a
        failure's ``google.rpc.RequestInfo`` detail."""
        code = grpc.StatusCode.OK
        headers = dict(context.invocation_metadata() or ())
        with self._observability.request("grpc", method, headers,
                                         span_name=f"{SERVICE_NAME}/{method}",
                                         attributes={"rpc.system": "grpc",
                                                     "rpc.service": SERVICE_NAME}) as scope:
            echo = ((REQUEST_ID_HEADER, scope.request_id),)
            context.set_trailing_metadata(echo)
            try:
                yield scope
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except Exception as exc:
                status = to_grpc_status(exc, request_id=scope.request_id)
                code = status.code
                await context.abort(status.code, status.details,
                                    (*status.trailing_metadata, *echo))
            finally:
                scope.set_status(code.name, server_error=code in SERVER_ERRORS)
                # A request whose model is not known (yet) counts under the default model.
                self._metrics.request_done(method, "grpc", code.name,
                                           time.perf_counter() - scope.start,
                                           scope.model or self._engines.default.name)


def _count_inputs(scope: RequestScope, request: Any) -> None:
    """Images, texts and wire bytes of a request or stream message: counts, never content."""
    nbytes = parsed_bytes()
    if isinstance(request, (pb.ClassifyRequest, pb.ScoreRequest)):
        texts = request.labels if isinstance(request, pb.ClassifyRequest) else request.texts
        scope.add_inputs(len(request.images), len(texts), nbytes)
    elif isinstance(request, (pb.EmbedRequest, pb.EmbedStreamRequest)):
        kinds = [item.WhichOneof("input") for item in request.inputs]
        scope.add_inputs(kinds.count("image"), kinds.count("text"), nbytes)
    else:
        scope.add_inputs(nbytes=nbytes)


def add_to_server(servicer: SiglipServicer, server: grpc.aio.Server) -> None:
    unary = {
        "Classify": pb.ClassifyRequest,
        "Embed": pb.EmbedRequest,
        "Score": pb.ScoreRequest,
        "GetModelInfo": pb.GetModelInfoRequest,
    }
    handlers = {
        name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, name), request_deserializer=parser(cls),
            response_serializer=lambda m: m.SerializeToString())
        for name, cls in unary.items()
    }
    handlers["EmbedStream"] = grpc.stream_stream_rpc_method_handler(
        servicer.EmbedStream, request_deserializer=parser(pb.EmbedStreamRequest),
        response_serializer=lambda m: m.SerializeToString())
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
