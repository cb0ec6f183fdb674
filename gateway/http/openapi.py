"""The OpenAPI document of the HTTP API, served at ``GET /openapi.json``.

The schemas of the routes that mirror the RPCs are generated from the protobuf descriptors
(one source of truth: siglip.proto), so the document cannot drift from the messages.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor

from gateway.http.openai_api import ENCODINGS, MODALITIES
from siglip.v1 import siglip_pb2 as pb

Json = dict[str, Any]
_SCALARS: dict[int, Json] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BYTES: {"type": "string", "format": "byte",
                                 "description": "standard base64"},
    FieldDescriptor.TYPE_FLOAT: {"type": "number", "format": "float"},
    FieldDescriptor.TYPE_UINT32: {"type": "integer", "format": "int32", "minimum": 0},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
}
# (method, path, summary, request message, response message). A GET's request message
# gives its query parameters.
ROUTES = (
    ("post", "/v1/classify", "Classify (zero-shot classification)", "ClassifyRequest",
     "ClassifyResponse"),
    ("post", "/v1/embed", "Embed images and texts", "EmbedRequest", "EmbedResponse"),
    ("post", "/v1/score", "Score every image against every text", "ScoreRequest",
     "ScoreResponse"),
    ("get", "/v1/models/info", "GetModelInfo", "GetModelInfoRequest", "GetModelInfoResponse"),
)
ERRORS = {"400": "invalid argument (error.param names the field)",
          "401": "missing or invalid bearer token", "413": "request body too large",
          "429": "overloaded: retry later", "503": "unavailable (Triton not ready, draining)",
          "504": "deadline exceeded"}


def _ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def _repeated(fd: FieldDescriptor) -> bool:
    is_repeated = getattr(fd, "is_repeated", None)
    return fd.label == FieldDescriptor.LABEL_REPEATED if is_repeated is None else is_repeated


def _message_schema(desc: Descriptor) -> Json:
    props: Json = {}
    for fd in desc.fields:
        if fd.type == FieldDescriptor.TYPE_MESSAGE:
            schema = _ref(fd.message_type.name)
        elif fd.type == FieldDescriptor.TYPE_ENUM:  # protobuf's JSON mapping: the value's name
            schema = {"type": "string", "enum": [v.name for v in fd.enum_type.values]}
        else:
            schema = dict(_SCALARS[fd.type])
        props[fd.name] = {"type": "array", "items": schema} if _repeated(fd) else schema
    out: Json = {"type": "object", "properties": props, "additionalProperties": False}
    oneofs = [o for o in desc.oneofs if not o.name.startswith("_")]  # not proto3 `optional`
    if oneofs:
        out["description"] = "; ".join(
            f"exactly one of {', '.join(f.name for f in o.fields)}" for o in oneofs)
    return out


def _schemas() -> Json:
    messages = pb.DESCRIPTOR.message_types_by_name
    out = {name: _message_schema(desc) for name, desc in messages.items()}
    out["Error"] = {"type": "object", "properties": {"error": {"type": "object", "properties": {
        "message": {"type": "string"},
        "type": {"type": "string", "description": "OpenAI's error type"},
        "code": {"type": "string", "description": "the gRPC status name"},
        "param": {"type": ["string", "null"], "description": "the field at fault"}}}}}
    out["EmbeddingsRequest"] = {"type": "object", "required": ["input", "model"], "properties": {
        "input": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
                  "description": "texts; with modality image: data URIs, base64 or URLs"},
        "model": {"type": "string", "description": "a served model: its name (GET /v1/models), "
                  "its checkpoint or the checkpoint's last path part"},
        "encoding_format": {"type": "string", "enum": list(ENCODINGS), "default": "float"},
        "dimensions": {"type": "integer", "description": "only the embedding size"},
        "modality": {"type": "string", "enum": list(MODALITIES), "default": "text",
                     "description": "infinity's extension to OpenAI's API"},
        "user": {"type": "string", "description": "accepted, ignored"}}}
    out["EmbeddingsResponse"] = {"type": "object", "properties": {
        "object": {"const": "list"}, "model": {"type": "string"},
        "data": {"type": "array", "items": {"type": "object", "properties": {
            "object": {"const": "embedding"}, "index": {"type": "integer"},
            "embedding": {"oneOf": [{"type": "array", "items": {"type": "number"}},
                                    {"type": "string", "format": "byte"}]}}}},
        "usage": {"type": "object", "properties": {"prompt_tokens": {"type": "integer"},
                                                   "total_tokens": {"type": "integer"}}}}}
    out["ModelsList"] = {"type": "object", "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": {"type": "object", "properties": {
            "id": {"type": "string",
                   "description": "the model's name, as POST /v1/embeddings takes it"},
            "object": {"const": "model"},
            "created": {"type": "integer", "description": "when this server started (Unix s)"},
            "owned_by": {"type": "string"}}}}}}
    return out


def _query(message: str) -> list[Json]:
    """A GET's query parameters: its request message's scalar fields."""
    desc = pb.DESCRIPTOR.message_types_by_name[message]
    return [{"name": fd.name, "in": "query", "required": False, "schema": dict(_SCALARS[fd.type])}
            for fd in desc.fields if fd.type in _SCALARS and not _repeated(fd)]


def _operation(summary: str, request: str | None, response: str, *, query: bool = False,
               ) -> Json:
    op: Json = {"summary": summary, "responses": {
        "200": {"description": "OK", "content": {"application/json": {"schema": _ref(response)}}},
        **{code: {"description": text, "content": {"application/json": {"schema": _ref("Error")}}}
           for code, text in ERRORS.items()}}}
    if request and query:
        op["parameters"] = _query(request)
    elif request:
        op["requestBody"] = {"required": True,
                             "content": {"application/json": {"schema": _ref(request)}}}
    return op


def document(version: str) -> Json:
    paths: Json = {}
    for method, path, summary, request, response in ROUTES:
        paths.setdefault(path, {})[method] = _operation(summary, request, response,
                                                        query=method == "get")
    paths["/v1/embeddings"] = {"post": _operation(
        "OpenAI-compatible embeddings", "EmbeddingsRequest", "EmbeddingsResponse")}
    paths["/v1/models"] = {"get": _operation("OpenAI-compatible model list", None,
                                             "ModelsList")}
    return {"openapi": "3.1.0",
            "info": {"title": "siglip-gateway HTTP API", "version": version,
                     "description": "JSON mirror of siglip.v1.SiglipService, and OpenAI's "
                                    "POST /v1/embeddings and GET /v1/models."},
            "paths": paths, "components": {"schemas": _schemas(), "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}, {}]}
