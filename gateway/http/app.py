"""The HTTP routes (README, "HTTP and OpenAI") over the gRPC server's Engines, as a Starlette app.

Every /v1 route goes through ``HttpApi._call``: bearer token, body read within the size
limit, the model the request names (its ``model``; none: the default model), deadline, an
admission slot, then metrics (``protocol="http"``, labelled with that model) and errors
answered from the one table (gateway/api/errors.py). The page and its static files are public.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.admission import Admission
from gateway.api import convert as api_convert
from gateway.api.errors import to_http_error
from gateway.core.errors import InvalidInput, PayloadTooLarge, Unauthenticated
from gateway.core.text import DEFAULT_PROMPT_TEMPLATE
from gateway.engines import Engines, Served
from gateway.http import convert, openai_api, openapi
from gateway.metrics import Metrics
from gateway.observability.request import REQUEST_ID_HEADER, Observability

STATIC_DIR = Path(__file__).resolve().parent / "static"
# Seconds the caller gives the request; the openai client sends its own timeout as
# X-Stainless-Timeout, after which nobody waits for the answer.
TIMEOUT_HEADERS = ("x-request-timeout", "x-stainless-timeout")
JSON_TYPE = "application/json"
# A route: the model the request names ((request, JSON body or None) -> the ``model`` value;
# empty: the default), the body's parser ((JSON, that model) -> the handler's arguments; None:
# no body), then the handler (that model, arguments, deadline -> a JSON-able answer).
ModelOf = Callable[[Request, Any], str]
Parser = Callable[[Any, Served], Any]
Handler = Callable[[Served, Any, float | None], Awaitable[Any]]
# Bodies over this many bytes are parsed and base64-decoded in a thread: a maximal body
# holds the event loop (shared with gRPC) for tens of milliseconds (BENCHMARKS.md).
OFFLOAD_BYTES = 256 * 1024


def body_limit(max_message_bytes: int) -> int:
    """The largest JSON body: the base64 of a max_message_bytes message, plus room for the
    JSON around it, so that what fits gRPC fits HTTP."""
    return max_message_bytes * 4 // 3 + 64 * 1024


def dumps(payload: Any) -> bytes:
    """JSON bytes; numpy float32 arrays and scalars as the shortest text that reads back as
    the same float32 (orjson: ~25x faster than json.dumps on a 768-value embedding, and 40%
    smaller, BENCHMARKS.md "HTTP/JSON API")."""
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


class HttpApi:
    def __init__(self, engines: Engines, admission: Admission, metrics: Metrics, *,
                 preprocess_mode: str, max_message_bytes: int, auth_token: str = "",
                 static_dir: Path = STATIC_DIR, version: str = "1",
                 observability: Observability | None = None) -> None:
        self._engines = engines
        self._observability = observability or Observability()
        self._admission = admission
        self._metrics = metrics
        self._preprocess_mode = preprocess_mode
        self._limit = body_limit(max_message_bytes)
        self._expected = f"Bearer {auth_token}".encode() if auth_token else None
        self._static = static_dir
        self._openapi = dumps(openapi.document(version))
        # OpenAI's ``created`` of the listed models: when this server started serving them.
        self._created = int(time.time())

    def app(self) -> Starlette:
        def route(path: str, verb: str, method: str, model_of: ModelOf, parser: Parser | None,
                  handler: Handler) -> Route:
            async def endpoint(request: Request) -> Response:
                return await self._call(method, request, model_of, parser, handler)
            return Route(path, endpoint, methods=[verb])

        def body_model(_request: Request, body: Any) -> str:
            return convert.requested_model(body)

        def query_model(request: Request, _body: Any) -> str:
            return request.query_params.get("model", "")

        def openai_model(_request: Request, body: Any) -> str:
            return openai_api.requested_model(body)

        def no_model(_request: Request, _body: Any) -> str:
            return ""

        def openai_parse(body: Any, served: Served) -> openai_api.EmbeddingsRequest:
            return openai_api.parse(body, served.engine.meta)

        routes = [
            route("/v1/classify", "POST", "Classify", body_model,
                  lambda body, _served: convert.classify_request(body), self._classify),
            route("/v1/embed", "POST", "Embed", body_model,
                  lambda body, _served: convert.embed_request(body), self._embed),
            route("/v1/score", "POST", "Score", body_model,
                  lambda body, _served: convert.score_request(body), self._score),
            route("/v1/embeddings", "POST", "OpenAIEmbeddings", openai_model, openai_parse,
                  self._embeddings),
            route("/v1/models/info", "GET", "GetModelInfo", query_model, None,
                  self._model_info),
            # Counted as GetModelInfo: the same facts in OpenAI's shape, and, as they, no
            # inference (no "total" stage time; gateway/metrics.py).
            route("/v1/models", "GET", "GetModelInfo", no_model, None, self._models),
            Route("/openapi.json", self._openapi_json, methods=["GET"]),
            Route("/", self._index, methods=["GET"]),
        ]
        if self._static.is_dir():  # without the page's files, /static/* is a plain 404
            routes.append(Mount("/static", StaticFiles(directory=self._static)))
        return Starlette(routes=routes, exception_handlers={HTTPException: _http_exception})

    # -- handlers: JSON in, JSON out ---------------------------------------------------
    async def _classify(self, served: Served, a: convert.ClassifyArgs,
                        deadline: float | None) -> Any:
        result = await served.engine.classify_detailed(
            a.images, a.labels, a.template, a.top_k, deadline, templates=a.templates,
            truncate=a.truncate)
        return convert.classify_response(result, served.name)

    async def _embed(self, served: Served, a: convert.EmbedArgs, deadline: float | None) -> Any:
        result = await served.engine.embed_detailed(a.items, deadline, normalize=a.normalize,
                                                    truncate=a.truncate)
        return convert.embed_response(result, served.name, a.float16)

    async def _score(self, served: Served, args: tuple[list, list[str], bool],
                     deadline: float | None) -> Any:
        images, texts, truncate = args
        result = await served.engine.score_detailed(images, texts, deadline, truncate=truncate)
        return convert.score_response(result, served.name)

    async def _model_info(self, served: Served, _args: Any, _deadline: float | None) -> Any:
        infos = [api_convert.model_info(s.name, s.engine.meta, self._preprocess_mode,
                                        DEFAULT_PROMPT_TEMPLATE) for s in self._engines]
        selected = infos[[s.name for s in self._engines].index(served.name)]
        return convert.model_info(selected, infos)

    async def _models(self, _served: Served, _args: Any, _deadline: float | None) -> Any:
        return openai_api.models_list([(s.name, s.spec.checkpoint) for s in self._engines],
                                      self._created)

    async def _embeddings(self, served: Served, request: openai_api.EmbeddingsRequest,
                          deadline: float | None) -> Any:
        engine = served.engine
        embeds, tokens = await asyncio.gather(
            engine.embed(request.items, deadline, field="input"),
            engine.token_counts(request.texts))
        return openai_api.response(request, embeds, sum(tokens))

    # -- the one wrapper: auth, limits, deadline, admission, metrics, errors -----------
    async def _call(self, method: str, request: Request, model_of: ModelOf,
                    parser: Parser | None, handler: Handler) -> Response:
        code = "OK"
        # Counted under the default model until the request names one that is served.
        model = self._engines.default.name
        with self._observability.request(
                "http", method, request.headers,
                span_name=f"{request.method} {request.url.path}",
                attributes={"http.request.method": request.method,
                            "url.path": request.url.path}) as scope:
            echo = {REQUEST_ID_HEADER: scope.request_id}
            try:
                self._authorize(request)
                payload, offload = None, False
                if parser is not None:
                    raw = await self._read(request)
                    offload = len(raw) > OFFLOAD_BYTES
                    payload = (await asyncio.to_thread(_parse_json, raw) if offload
                               else _parse_json(raw))
                    scope.add_inputs(*_input_counts(payload), nbytes=len(raw))
                served = self._engines.get(model_of(request, payload), field="model")
                model = scope.model = served.name
                args = None
                if parser is not None:
                    args = (await asyncio.to_thread(parser, payload, served) if offload
                            else parser(payload, served))
                deadline = _deadline(request)
                with self._admission.slot(), served.slot():
                    result = await handler(served, args, deadline)
                scope.set_status("200")
                return Response(dumps(result), headers=echo, media_type=JSON_TYPE)
            except asyncio.CancelledError:
                code = "CANCELLED"
                scope.set_status(code)
                raise
            except Exception as exc:
                status, error = to_http_error(exc)
                code = status.grpc.name
                error["error"]["request_id"] = scope.request_id
                scope.set_status(str(status.http), server_error=status.http >= 500)
                if status.http == 401:
                    echo["WWW-Authenticate"] = "Bearer"
                return Response(dumps(error), status.http, echo, media_type=JSON_TYPE)
            finally:
                self._metrics.request_done(method, "http", code,
                                           time.perf_counter() - scope.start, model)

    def _authorize(self, request: Request) -> None:
        if self._expected is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, self._expected):
            raise Unauthenticated("missing or invalid bearer token in the Authorization header")

    async def _read(self, request: Request) -> bytes:
        """The body, refused (413) as soon as it is known to be over the limit."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self._limit:
            raise PayloadTooLarge(f"request body of {declared} bytes is over the limit of "
                                  f"{self._limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > self._limit:
                raise PayloadTooLarge(f"request body is over the limit of {self._limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # -- public routes ---------------------------------------------------------------
    async def _openapi_json(self, _request: Request) -> Response:
        return Response(self._openapi, media_type=JSON_TYPE)

    async def _index(self, _request: Request) -> Response:
        index = self._static / "index.html"
        if not index.is_file():
            raise HTTPException(404, "no page installed (gateway/http/static/index.html)")
        return FileResponse(index)


def _input_counts(payload: Any) -> tuple[int, int]:
    """Images and texts a body asks for (counts for the request's log line and span; a body
    the converters will refuse counts what it seems to hold)."""
    if not isinstance(payload, dict):
        return 0, 0
    images, texts = payload.get("images"), payload.get("labels", payload.get("texts"))
    n_images = len(images) if isinstance(images, list) else 0
    n_texts = len(texts) if isinstance(texts, list) else 0
    inputs = payload.get("inputs")
    if isinstance(inputs, list):
        kinds = [next(iter(i), None) if isinstance(i, dict) else None for i in inputs]
        n_images, n_texts = kinds.count("image"), kinds.count("text")
    given = payload.get("input")  # OpenAI's embeddings
    if given is not None:
        count = len(given) if isinstance(given, list) else 1
        if payload.get("modality") == "image":
            n_images = count
        else:
            n_texts = count
    return n_images, n_texts


def _parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None


def _deadline(request: Request) -> float | None:
    """The earliest deadline the caller's timeout headers set; None: the Triton timeout only."""
    seconds = []
    for name in TIMEOUT_HEADERS:
        value = request.headers.get(name)
        if value is None:
            continue
        try:
            parsed = float(value)
        except ValueError:
            parsed = -1.0
        if not parsed > 0 or parsed != parsed or parsed == float("inf"):
            raise InvalidInput("must be a positive number of seconds", field=name)
        seconds.append(parsed)
    return time.monotonic() + min(seconds) if seconds else None


async def _http_exception(_request: Request, exc: Exception) -> Response:
    """Unknown routes and methods answer in the same error shape as the API."""
    assert isinstance(exc, HTTPException)
    code = {404: "NOT_FOUND", 405: "UNIMPLEMENTED"}.get(exc.status_code, "INVALID_ARGUMENT")
    body = {"error": {"message": str(exc.detail), "type": "invalid_request_error",
                      "code": code, "param": None}}
    return Response(dumps(body), exc.status_code, exc.headers, media_type=JSON_TYPE)
