"""Triton's three ports: chosen free, or checked free, before it starts.

Triton binds its ports only after loading the models (seconds to minutes): checking first
turns a port in use into an immediate, clear error instead of a late exit.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class TritonPorts:
    http: int
    grpc: int
    metrics: int


class PortUnavailable(OSError):
    pass


def pick_ports(bind_address: str, http: int | None, grpc: int | None,
               metrics: int | None) -> TritonPorts:
    """The requested ports if free, a free port for each None; raises PortUnavailable."""
    chosen = [p if p is not None else 0 for p in (http, grpc, metrics)]
    with contextlib.ExitStack() as held:  # all held at once, so the three are distinct
        for i, (name, port) in enumerate(zip(("http", "grpc", "metrics"), chosen, strict=True)):
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            # As Triton does: a port whose old connections linger in TIME_WAIT is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((bind_address, port))
                sock.listen()
            except OSError as exc:
                raise PortUnavailable(
                    f"Triton {name} port {port} on {bind_address} is not available: "
                    f"{exc.strerror}") from exc
            chosen[i] = sock.getsockname()[1]
    return TritonPorts(*chosen)
