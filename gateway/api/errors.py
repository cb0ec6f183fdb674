"""The one table from domain errors to gRPC status codes, and how a call is aborted.

Client mistakes carry a message that names the field and ``google.rpc.BadRequest``
details; anything unexpected becomes INTERNAL with a generic message, and its
details go to our log only.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from gateway.core.errors import ErrorKind, GatewayError

log = logging.getLogger(__name__)

STATUS_BY_KIND: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorKind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorKind.INTERNAL: grpc.StatusCode.INTERNAL,
}

INTERNAL_MESSAGE = "internal error; see the gateway's log"


def status_for(exc: BaseException) -> grpc.StatusCode:
    if isinstance(exc, GatewayError):
        return STATUS_BY_KIND[exc.kind]
    return grpc.StatusCode.INTERNAL


def to_grpc_status(exc: BaseException, request_id: str | None = None) -> grpc.Status:
    """A rich status: code, safe message, for bad fields BadRequest details, and with
    ``request_id`` a RequestInfo detail naming the request (as in our logs and traces)."""
    code = status_for(exc)
    if not isinstance(exc, GatewayError) or code is grpc.StatusCode.INTERNAL:
        log.error("internal error", exc_info=exc)
        message = INTERNAL_MESSAGE
    else:
        message = exc.public_message
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
