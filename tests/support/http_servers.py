"""Local HTTP servers for the image-by-URL tests, which record everything they receive.

``RecordingServer`` is a bare HTTP/1.1 server on a loopback address (127.0.0.1, or another of
127/8 to stand for a second host) and a port the OS picks. A handler writes the answer byte by
byte as it likes (a slow drip, a lying Content-Length, an endless body), and the server
records every connection, every request head and how many body bytes it got out, so a test
can prove that a refused address received nothing and that a cut body was not read to its end.
``FakeResolver`` makes any name "resolve" to any addresses and records each lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.fetch.policy import IPAddress


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]


@dataclass
class Reply:
    """What a handler writes through: counts the body bytes that got out."""

    writer: asyncio.StreamWriter
    server: RecordingServer

    async def head(self, status: int = 200, headers: Mapping[str, str] | None = None) -> None:
        lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await self.writer.drain()

    async def body(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()
        self.server.body_bytes_sent += len(data)


Handler = Callable[[Received, Reply], Awaitable[None]]


@dataclass
class RecordingServer:
    handler: Handler
    host: str = "127.0.0.1"
    port: int = 0
    connections: int = 0
    requests: list[Received] = field(default_factory=list)
    body_bytes_sent: int = 0
    # Set by ``endless`` when a write failed because the client had gone (it cut the body).
    client_went_away: bool = False
    _server: asyncio.Server | None = None

    async def __aenter__(self) -> RecordingServer:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"

    @property
    def received_nothing(self) -> bool:
        return self.connections == 0 and not self.requests

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request_line, *lines = head.decode("latin-1").split("\r\n")
                method, path, _ = request_line.split(" ", 2)
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (line.partition(":") for line in lines if line)}
                request = Received(method, path, headers)
                self.requests.append(request)
                await self.handler(request, Reply(writer, self))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            writer.close()


# --- handlers ------------------------------------------------------------------------------

def image(data: bytes, content_type: str | None = "image/png",
          extra: Mapping[str, str] | None = None) -> Handler:
    async def handle(request: Received, reply: Reply) -> None:
        headers = {"Content-Length": str(len(data))}
        if content_type is not None:
            headers["Content-Type"] = content_type
        headers.update(extra or {})
        await reply.head(200, headers)
        await reply.body(data)
    return handle


def status(code: int, headers: Mapping[str, str] | None = None) -> Handler:
    async def handle(request: Received, reply: Reply) -> None:
        await reply.head(code, {"Content-Length": "0", **(headers or {})})
    return handle


def redirect(location: str | Callable[[], str], code: int = 302) -> Handler:
    async def handle(request: Received, reply: Reply) -> None:
        where = location() if callable(location) else location
        await reply.head(code, {"Location": where, "Content-Length": "0"})
    return handle


def endless(chunk: bytes, declared: int | None = None, interval_s: float = 0.0,
            limit: int = 1 << 30) -> Handler:
    """``chunk`` again and again (every ``interval_s``: a slow drip) until ``limit`` bytes or
    the client goes; Content-Length ``declared`` when given (a lie when it is less), else none
    (the body ends when the connection closes)."""
    async def handle(request: Received, reply: Reply) -> None:
        headers = {"Content-Type": "image/png"}
        headers.update({"Content-Length": str(declared)} if declared is not None
                       else {"Connection": "close"})
        await reply.head(200, headers)
        sent = 0
        try:
            while sent < limit:
                await reply.body(chunk)
                sent += len(chunk)
                if interval_s:
                    await asyncio.sleep(interval_s)
        except ConnectionError:
            reply.server.client_went_away = True
        reply.writer.close()
    return handle


# --- resolver ------------------------------------------------------------------------------

class FakeResolver:
    """Names to addresses; a list of answers is given out one per lookup (the last repeats),
    as a rebinding DNS server would. Unknown names fail as getaddrinfo does."""

    def __init__(self, names: Mapping[str, Sequence[str] | Sequence[Sequence[str]]]) -> None:
        self._answers: dict[str, list[list[str]]] = {}
        for name, answer in names.items():
            nested = answer and not isinstance(answer[0], str)
            self._answers[name] = [list(a) for a in answer] if nested else [list(answer)]  # type: ignore[arg-type]
        self.lookups: list[str] = []

    async def __call__(self, host: str, port: int) -> list[IPAddress]:
        self.lookups.append(host)
        answers = self._answers.get(host)
        if answers is None:
            raise OSError(-2, "Name or service not known")
        answer = answers.pop(0) if len(answers) > 1 else answers[0]
        return [ipaddress.ip_address(a) for a in answer]
