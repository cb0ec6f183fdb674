"""The typed errors of fetching images by URL, mapped to status codes in gateway/api/errors.py.

Two classes, by whose problem it is: ``UrlRefused`` (INVALID_ARGUMENT) when the URL, where it
leads or what it returned is not acceptable, which the caller must change; ``UrlFetchFailed``
(FAILED_PRECONDITION) when the remote did not deliver (no answer in time, connection failed,
an HTTP error status). The latter is not UNAVAILABLE on purpose: the gateway is fine, so it
must not count against its availability, nor make clients retry on another gateway pod.
"""

from __future__ import annotations

from gateway.core.errors import ErrorKind, GatewayError, InvalidInput

# The outcomes (gateway.fetch.policy.OUTCOMES) that are the remote's failure, not the URL's.
REMOTE_FAILURES = frozenset({"resolve_failed", "network_error", "timeout", "bad_status"})


class UrlRefused(InvalidInput):
    """The URL is not fetched, or what it returned is not taken; ``field`` names it."""

    def __init__(self, message: str, *, field: str, outcome: str) -> None:
        super().__init__(message, field=field)
        self.outcome = outcome


class UrlFetchFailed(GatewayError):
    """The remote did not deliver the image; ``field`` names the URL."""

    kind = ErrorKind.FAILED_PRECONDITION

    def __init__(self, message: str, *, field: str, outcome: str) -> None:
        super().__init__(message, field=field)
        self.outcome = outcome


def fetch_error(outcome: str, message: str, field: str) -> GatewayError:
    cls = UrlFetchFailed if outcome in REMOTE_FAILURES else UrlRefused
    return cls(message, field=field, outcome=outcome)
