"""The one pooled HTTP client that fetches images by URL, connecting only to checked addresses.

Every hop (the URL, then each redirect) goes through the same steps: parse and match the
allow-list (gateway.fetch.policy), resolve the name once, check every address, then connect to
one of exactly those addresses. The connection pool's network backend (``PinnedBackend``)
never resolves a name: it connects to the addresses this fetch checked for that host, so a
second DNS answer cannot redirect the connection (DNS rebinding). The URL keeps the host
name, so the Host header, TLS SNI and the certificate check are all for the name.

Caps: the body is read in chunks and cut at ``max_bytes`` (a larger Content-Length is refused
before reading), all URL images of one request together at ``max_total_bytes`` (what one
request message may carry), and one fetch, redirects and slow bodies included, at
``timeout_s`` (or the caller's deadline, when nearer). Outcomes are counted by
``siglip_gateway_image_url_fetches_total{outcome}``.
"""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import logging
import socket
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpcore

from gateway.core.errors import DeadlineExceeded
from gateway.fetch.addresses import check_addresses
from gateway.fetch.errors import fetch_error
from gateway.fetch.policy import AllowList, IPAddress, Refused, Target, parse_url
from gateway.metrics import Metrics

log = logging.getLogger(__name__)

# A name and port -> its addresses; injectable so tests can make any name resolve anywhere.
Resolver = Callable[[str, int], Awaitable[Sequence[IPAddress]]]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Object stores often serve images without an image/* type; the decoder checks the bytes anyway.
ACCEPTED_GENERIC_TYPES = frozenset({"application/octet-stream", "binary/octet-stream"})
MAX_CONNECTIONS = 64
KEEPALIVE_S = 30.0
USER_AGENT = b"siglip-gateway"

# The addresses checked for (host, port) by the fetch running in this task.
_PINS: contextvars.ContextVar[dict[tuple[str, int], list[IPAddress]] | None] = \
    contextvars.ContextVar("siglip_fetch_pins", default=None)


async def system_resolver(host: str, port: int) -> list[IPAddress]:
    """One getaddrinfo (in the loop's thread pool); every address it returns, in its order."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    # A scope id (fe80::1%eth0) is dropped: link-local is refused unless listed anyway.
    return list(dict.fromkeys(
        ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos))


@dataclass(frozen=True)
class FetchConfig:
    allow: AllowList
    max_bytes: int
    max_total_bytes: int
    timeout_s: float
    max_redirects: int = 3


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """Connects to the addresses the current fetch checked for the host, never resolving."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        addresses = (_PINS.get() or {}).get((host, port))
        if not addresses:  # a bug, never a fallback to resolving here
            raise httpcore.ConnectError(f"no checked address for {host}:{port}")
        error: Exception | None = None
        for ip in addresses:
            try:
                return await self._inner.connect_tcp(
                    str(ip), port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: Iterable[Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not fetched from")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _Budget:
    """Bytes all URL images of one request may still bring."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def take(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise Refused("too_large", f"the request's images by URL together are larger than "
                                       f"{self.limit} bytes")


class UrlFetcher:
    """Fetches images by URL under a FetchConfig. One per process; ``aclose`` at shutdown."""

    def __init__(self, config: FetchConfig, *, metrics: Metrics | None = None,
                 resolver: Resolver | None = None, ssl_context: ssl.SSLContext | None = None,
                 network_backend: httpcore.AsyncNetworkBackend | None = None) -> None:
        self.config = config
        self._metrics = metrics
        self._resolver = resolver or system_resolver
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context, max_connections=MAX_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_S, http1=True, http2=False, retries=0,
            network_backend=PinnedBackend(network_backend))

    async def aclose(self) -> None:
        await self._pool.aclose()

    async def fetch_all(self, urls: Sequence[str], fields: Sequence[str],
                        deadline: float | None) -> list[bytes]:
        """The bodies of ``urls``, fetched concurrently. On the first failure the others are
        cancelled and that failure raised (the lowest index, when several have failed)."""
        budget = _Budget(self.config.max_total_bytes)
        tasks = [asyncio.ensure_future(self.fetch(url, field, deadline, budget))
                 for url, field in zip(urls, fields, strict=True)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                if task.done() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            return [task.result() for task in tasks]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def fetch(self, url: str, field: str, deadline: float | None = None,
                    budget: _Budget | None = None) -> bytes:
        """The body of ``url``; a GatewayError naming ``field`` when it is refused or fails."""
        start = time.perf_counter()
        outcome = "cancelled"
        timeout_s, callers = self.config.timeout_s, False
        if deadline is not None and deadline - time.monotonic() < timeout_s:
            timeout_s, callers = max(0.0, deadline - time.monotonic()), True
        try:
            data = await asyncio.wait_for(self._fetch(url, budget), timeout_s)
            outcome = "ok"
            return data
        except asyncio.TimeoutError:
            if callers:
                raise DeadlineExceeded("deadline exceeded while fetching the image",
                                       field=field) from None
            outcome = "timeout"
            raise fetch_error(outcome, f"no complete answer within {timeout_s:g} s",
                              field) from None
        except Refused as exc:
            outcome = exc.outcome
            raise fetch_error(outcome, exc.message, field) from None
        finally:
            if self._metrics is not None:
                self._metrics.image_url_fetches.labels(outcome).inc()
                self._metrics.image_url_fetch_seconds.observe(time.perf_counter() - start)

    async def _fetch(self, url: str, budget: _Budget | None) -> bytes:
        target = parse_url(url)
        for hop in range(self.config.max_redirects + 1):
            redirect = hop > 0
            rule = self.config.allow.match(target)
            if rule is None:
                raise Refused("redirect_refused" if redirect else "not_allowed",
                              ("redirect refused: " if redirect else "") +
                              self.config.allow.refusal(target))
            addresses = [target.ip] if target.ip is not None else await self._resolve(target)
            try:
                checked = check_addresses(target.host, addresses, explicit=rule.explicit)
            except Refused as exc:
                if redirect and exc.outcome == "forbidden_address":
                    raise Refused("redirect_refused", f"redirect refused: {exc.message}") from None
                raise
            result = await self._get(target, checked, budget)
            if isinstance(result, bytes):
                return result
            if target.scheme == "https" and result.scheme == "http":
                raise Refused("redirect_refused", "redirect from https to http refused")
            target = result
        raise Refused("too_many_redirects",
                      f"more than {self.config.max_redirects} redirects")

    async def _resolve(self, target: Target) -> Sequence[IPAddress]:
        try:
            return await self._resolver(target.host, target.port)
        except (OSError, UnicodeError) as exc:
            log.debug("image URL host %s did not resolve: %s", target.host, exc)
            raise Refused("resolve_failed", f"could not resolve {target.host}") from None

    async def _get(self, target: Target, addresses: list[IPAddress],
                   budget: _Budget | None) -> bytes | Target:
        """One GET to one of ``addresses``: the body, or the Target a redirect points to."""
        url = httpcore.URL(scheme=target.scheme.encode(), host=target.host.encode(),
                           port=target.port, target=target.path.encode())
        headers = [(b"Host", target.authority.encode()), (b"Accept", b"image/*"),
                   (b"Accept-Encoding", b"identity"), (b"User-Agent", USER_AGENT)]
        pins = dict(_PINS.get() or {})
        pins[(target.host, target.port)] = addresses
        token = _PINS.set(pins)
        try:
            async with self._pool.stream(b"GET", url, headers=headers) as response:
                if response.status in REDIRECT_STATUSES:
                    return _redirect_target(target, response)
                if response.status != 200:
                    raise Refused("bad_status", f"the remote answered HTTP {response.status}")
                self._check_headers(response)
                return await self._read_body(response, budget)
        except httpcore.TimeoutException:
            raise Refused("timeout", f"{target.authority} timed out") from None
        except httpcore.ConnectError as exc:
            log.debug("image URL %s: could not connect: %s", target.authority, exc)
            tls = "CERTIFICATE_VERIFY_FAILED" in str(exc)
            raise Refused("network_error", f"could not connect to {target.authority}" +
                          (" (TLS certificate not valid for the host)" if tls else "")) from None
        except (httpcore.NetworkError, httpcore.ProtocolError) as exc:
            log.debug("image URL %s: %s: %s", target.authority, type(exc).__name__, exc)
            raise Refused("network_error", f"connection to {target.authority} failed or broke "
                                           "the HTTP protocol") from None
        finally:
            _PINS.reset(token)

    def _check_headers(self, response: httpcore.Response) -> None:
        content_type = _header(response, b"content-type")
        if content_type is not None:
            mime = content_type.split(";", 1)[0].strip().lower()
            if not (mime.startswith("image/") or mime in ACCEPTED_GENERIC_TYPES):
                raise Refused("bad_content_type", f"the remote sent Content-Type {mime[:100]!r}, "
                                                  "not an image")
        encoding = _header(response, b"content-encoding")
        if encoding is not None and encoding.strip().lower() not in ("", "identity"):
            raise Refused("bad_content_type", f"the remote sent Content-Encoding "
                                              f"{encoding[:50]!r}; only identity is accepted")
        length = _header(response, b"content-length")
        if length is not None and length.strip().isdigit() and \
                int(length) > self.config.max_bytes:
            raise Refused("too_large", f"the image is {int(length)} bytes, more than the limit "
                                       f"of {self.config.max_bytes}")

    async def _read_body(self, response: httpcore.Response, budget: _Budget | None) -> bytes:
        chunks, size = [], 0
        async for chunk in response.aiter_stream():
            size += len(chunk)
            if size > self.config.max_bytes:
                raise Refused("too_large", f"the image is more than the limit of "
                                           f"{self.config.max_bytes} bytes")
            if budget is not None:
                budget.take(len(chunk))
            chunks.append(chunk)
        return b"".join(chunks)


def _header(response: httpcore.Response, name: bytes) -> str | None:
    for key, value in response.headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _redirect_target(current: Target, response: httpcore.Response) -> Target:
    location = _header(response, b"location")
    if location is None:
        raise Refused("bad_status", f"the remote answered HTTP {response.status} "
                                    "without a Location")
    try:
        return parse_url(urllib.parse.urljoin(current.url, location))
    except Refused as exc:
        raise Refused("redirect_refused", f"redirect to a URL that is refused: "
                                          f"{exc.message}") from None
