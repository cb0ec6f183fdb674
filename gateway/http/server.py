"""Listens for the HTTP API: uvicorn in the gateway's own event loop, beside grpc.aio.

uvicorn with its httptools parser (the stack measured cheapest per request, BENCHMARKS.md
"HTTP/JSON API") is started with its lower-level calls (startup / main_loop / shutdown) rather than
``serve()``, which would take over SIGTERM: the gateway owns the signals and drains both
protocols together (gateway/server.py). The socket is bound here, so that a worker of
``serve --processes N`` can share the port with SO_REUSEPORT as the gRPC port is shared.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

import uvicorn
from starlette.types import ASGIApp

from gateway.config import Settings
from gateway.processes.sockets import address_for

log = logging.getLogger(__name__)
BACKLOG = 2048


class HttpServer:
    def __init__(self, app: ASGIApp, settings: Settings, *, share_port: bool = False) -> None:
        self._settings = settings
        self._share_port = share_port
        s = settings
        self._config = uvicorn.Config(
            app, http="httptools", lifespan="off", access_log=False, log_config=None,
            server_header=False, backlog=BACKLOG, timeout_keep_alive=75,
            ssl_certfile=s.tls_cert or None, ssl_keyfile=s.tls_key or None,
            ssl_ca_certs=s.tls_client_ca or None,
            ssl_cert_reqs=ssl.CERT_REQUIRED if s.tls_client_ca else ssl.CERT_NONE)
        self._server: uvicorn.Server | None = None
        self._ticker: asyncio.Task | None = None
        self._socket: socket.socket | None = None

    async def start(self) -> int:
        """Binds and listens; returns the real port."""
        s = self._settings
        self._socket = bind(s.host, s.http_port, reuse_port=self._share_port)
        self._config.load()  # TLS files are read here: a bad one fails the start-up
        server = uvicorn.Server(self._config)
        server.lifespan = self._config.lifespan_class(self._config)
        await server.startup(sockets=[self._socket])
        self._server = server
        # Keeps the Date header current, as uvicorn's own main loop does.
        self._ticker = asyncio.create_task(server.main_loop())
        return self._socket.getsockname()[1]

    def stop_accepting(self) -> None:
        """New connections are refused from now on; open ones are still answered."""
        if self._server is not None:
            for listener in self._server.servers:
                listener.close()

    async def stop(self, timeout_s: float) -> None:
        """Closes idle connections, waits up to ``timeout_s`` for responses in progress."""
        if self._server is None:
            return
        self._server.should_exit = True
        if self._ticker is not None:
            await self._ticker
        self._config.timeout_graceful_shutdown = max(0.1, timeout_s)
        await self._server.shutdown(sockets=[self._socket] if self._socket else None)
        self._server = None


def bind(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A listening-ready TCP socket on host:port. ``reuse_port``: the port is shared with the
    sibling workers (its parent reserved it, gateway/processes/sockets.py)."""
    family, address = address_for(host, port)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(BACKLOG)
        sock.set_inheritable(False)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"HTTP port {port} on {host} is not available: "
                                 f"{exc.strerror}") from exc
    return sock
