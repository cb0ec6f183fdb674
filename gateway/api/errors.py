"""The one table from domain errors to gRPC status codes and HTTP statuses, and how a call
is aborted (gRPC) or answered (HTTP).

Client mistakes carry a message that names the field and ``google.rpc.BadRequest``
details; anything unexpected becomes INTERNAL with a generic message, and its
details go to our log only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.core.errors import ErrorKind, GatewayError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Status:
    grpc: grpc.StatusCode
    http: int
    # OpenAI's error `type`, so that OpenAI clients classify the error as they expect.
    openai_type: str


# The one table. Both protocols answer from it; the HTTP body's `code` is the gRPC name, so
# one dashboard (and one client-side check) covers both.
STATUS_TABLE: dict[ErrorKind, Status] = {
    ErrorKind.INVALID_ARGUMENT: Status(grpc.StatusCode.INVALID_ARGUMENT, 400,
                                       "invalid_request_error"),
    ErrorKind.UNAUTHENTICATED: Status(grpc.StatusCode.UNAUTHENTICATED, 401,
                                      "authentication_error"),
    ErrorKind.PAYLOAD_TOO_LARGE: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 413,
                                        "invalid_request_error"),
    ErrorKind.RESOURCE_EXHAUSTED: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 429,
                                         "rate_limit_error"),
    ErrorKind.UNAVAILABLE: Status(grpc.StatusCode.UNAVAILABLE, 503, "server_error"),
    ErrorKind.DEADLINE_EXCEEDED: Status(grpc.StatusCode.DEADLINE_EXCEEDED, 504, "server_error"),
    # A remote image (Image.url) that did not arrive: the caller's URL, not our outage.
    ErrorKind.FAILED_PRECONDITION: Status(grpc.StatusCode.FAILED_PRECONDITION, 400,
                                          "invalid_request_error"),
    ErrorKind.INTERNAL: Status(grpc.StatusCode.INTERNAL, 500, "server_error"),
}
STATUS_BY_KIND: dict[ErrorKind, grpc.StatusCode] = {
    kind: status.grpc for kind, status in STATUS_TABLE.items()}

INTERNAL_MESSAGE = "internal error; see the gateway's log"


def status_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, GatewayError):
        return STATUS_BY_KIND[exc.kind]
    return grpc.StatusCode.INTERNAL


def _public_message(exc: BaseException) -> str:
    """What the caller may see; an unexpected error is logged here and shown generically."""
    if not isinstance(exc, GatewayError) or exc.kind is ErrorKind.INTERNAL:
        log.error("internal error", exc_info=exc)
        return INTERNAL_MESSAGE
    return exc.public_message


def to_http_error(exc: BaseException) -> tuple[Status, dict[str, Any]]:
    """The status and the JSON body of an HTTP error: OpenAI's error shape, which the openai
    client surfaces (message, type, code, param), with ``code`` the gRPC status name."""
    status = STATUS_TABLE[exc.kind if isinstance(exc, GatewayError) else ErrorKind.INTERNAL]
    field = exc.field if isinstance(exc, GatewayError) else None
    return status, {"error": {"message": _public_message(exc), "type": status.openai_type,
                              "code": status.grpc.name, "param": field}}


def to_grpc_status(exc: BaseException, request_id: str | None = None) -> grpc.Status:
    """A rich status: code, safe message, for bad fields BadRequest details, and with
    ``request_id`` a RequestInfo detail naming the request (as in our logs and traces)."""
    code = status_for(exc)
    message = _public_message(exc)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message)
    if isinstance(exc, GatewayError) and exc.field and code is grpc.StatusCode.INVALID_ARGUMENT:
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=exc.field, description=exc.message)]))
        status.details.append(detail)
    if request_id is not None:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.RequestInfo(request_id=request_id))
        status.details.append(info)
    return rpc_status.to_status(status)
