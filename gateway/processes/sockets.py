"""The ports (gRPC, HTTP) shared by the worker processes: checked free, then held for them.

Workers listen with SO_REUSEPORT, and the kernel spreads new connections over them. That
option would also let any other process of the same user join the group silently, so the
parent first binds the port *without* it: that fails if anyone at all holds the port (a
listener with or without SO_REUSEPORT, another multi-process gateway), which turns a taken
port into a loud start-up error as with one process. The parent then holds a bound,
never-listening SO_REUSEPORT socket until it exits: it reserves the port (and port 0's
choice) for the workers, restarted ones included, and receives no connections itself.
Between the check and the reservation the port is free for a few microseconds.
"""

from __future__ import annotations

import socket


class PortTaken(OSError):
    pass


def reserve_port(host: str, port: int, what: str = "gRPC") -> tuple[socket.socket, int]:
    """Checks that host:port is free; returns the reserving socket and the real port."""
    family, address = address_for(host, port)
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As gRPC does: connections of an earlier run left in TIME_WAIT do not hold the port.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        real_port = probe.getsockname()[1]
    except OSError as exc:
        raise PortTaken(f"{what} port {port} on {host} is not available: {exc.strerror}") from exc
    finally:
        probe.close()
    held = socket.socket(family, socket.SOCK_STREAM)
    try:
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((address[0], real_port, *address[2:]))
    except OSError as exc:
        held.close()
        raise PortTaken(
            f"{what} port {real_port} on {host} was taken while reserving it: {exc.strerror}"
        ) from exc
    return held, real_port


def address_for(host: str, port: int) -> tuple[socket.AddressFamily, tuple]:
    """The first passive address gRPC would bind for host (brackets of [::] removed)."""
    host = host.strip("[]") or None
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0,
                               socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    return family, address
