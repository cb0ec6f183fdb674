"""Typed domain errors.

Every error the gateway raises on purpose is a ``GatewayError``; its ``kind`` says
which class of failure it is. ``gateway.api.errors`` holds the one table that maps
kinds to gRPC status codes and HTTP statuses, so this module stays free of grpc.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class ErrorKind(enum.Enum):
    INVALID_ARGUMENT = "invalid_argument"
    UNAUTHENTICATED = "unauthenticated"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    INTERNAL = "internal"


class GatewayError(Exception):
    """Base of all expected failures. ``message`` is safe to show to the caller."""

    kind: ClassVar[ErrorKind] = ErrorKind.INTERNAL

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field

    @property
    def public_message(self) -> str:
        return str(self)


class InvalidInput(GatewayError):
    """The caller sent something we cannot use; ``field`` names it (``images[3]``)."""

    kind = ErrorKind.INVALID_ARGUMENT


class Unauthenticated(GatewayError):
    """No valid bearer token (HTTP; gRPC answers from its interceptor)."""

    kind = ErrorKind.UNAUTHENTICATED


class PayloadTooLarge(GatewayError):
    """A request body over the size limit, refused before the rest of it is read (HTTP)."""

    kind = ErrorKind.PAYLOAD_TOO_LARGE


class Overloaded(GatewayError):
    kind = ErrorKind.RESOURCE_EXHAUSTED


class BackendUnavailable(GatewayError):
    kind = ErrorKind.UNAVAILABLE


class ShuttingDown(GatewayError):
    """A call arrived while the server drains; UNAVAILABLE tells clients to retry elsewhere."""

    kind = ErrorKind.UNAVAILABLE


class DeadlineExceeded(GatewayError):
    kind = ErrorKind.DEADLINE_EXCEEDED


class BackendError(GatewayError):
    """The inference server failed in a way the caller cannot fix; details go to our log."""

    kind = ErrorKind.INTERNAL


class BackendRejected(BackendError):
    """The inference server refused a request as invalid. For tensors the gateway built that is
    a bug (INTERNAL); for encoded images Triton could not decode, the caller decodes them here."""
