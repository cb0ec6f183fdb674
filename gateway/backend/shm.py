"""System shared memory between the gateway and a Triton on the same host.

Owns `ShmPool`: this process's regions, each registered once with Triton and holding one call's
input rows followed by its output rows. A call checks a region out, writes its tensor into it,
and gives it back; a region is used again only when Triton answered the call that used it.

Life of a region's file: created unnamed (O_TMPFILE) in /dev/shm, given a name only while
Triton's register call maps it, then unlinked. Triton keeps its mapping, so after that the
memory belongs to the two mappings alone: a SIGKILLed gateway leaves no file behind (Triton's
mapping of it lives until Triton unregisters it or exits). An unlinked file cannot be named
again, so a Triton that restarted (and forgot every registration) gets new regions.

Why a used region can be unsafe: a call that ended without Triton's answer (cancelled, client
deadline, connection lost) may still be queued or running in Triton, which will then read its
input from, and write its output into, the region later. Such a region is retired: unmapped
here at once and unregistered from Triton, retried until Triton stops refusing with "in use".
Its bytes count against the budget until then.

Regions come in power-of-two row counts, so a one-image call does not hold a 64-image region.
When the budget is spent the caller sends gRPC tensors instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import mmap
import os
import secrets
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from tritonclient.utils import InferenceServerException

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
NAME_PREFIX = "siglip-gw"
# Output rows start on a cache line; Triton needs no more than the dtype's alignment.
_ALIGN = 64
# gRPC status codes that may come from the transport rather than from Triton: after one of
# these (or an exception with no status) a call's region may still be in use by Triton.
_TRANSPORT_CODES = frozenset({"CANCELLED", "DEADLINE_EXCEEDED", "UNAVAILABLE", "UNKNOWN"})
_REAP_FIRST_S = 0.05
_REAP_MAX_S = 2.0
_CONTROL_TIMEOUT_S = 2.0  # register/unregister: local and quick, or Triton is in trouble


class ShmClient(Protocol):
    """The part of tritonclient.grpc.aio.InferenceServerClient the pool uses."""

    async def register_system_shared_memory(self, name: str, key: str, byte_size: int,
                                            offset: int = 0, **kwargs: Any) -> None: ...
    async def unregister_system_shared_memory(self, name: str = "", **kwargs: Any) -> None: ...


def status_code(exc: InferenceServerException) -> str:
    """Triton's status ("StatusCode.NOT_FOUND") as its name ("NOT_FOUND"); "" when none."""
    return (exc.status() or "").rpartition(".")[2]


def answered_by_triton(exc: BaseException) -> bool:
    """True when the failure is Triton's own answer, so Triton is done with the call."""
    return isinstance(exc, InferenceServerException) and status_code(exc) not in (
        _TRANSPORT_CODES | {""})


def region_unknown(exc: InferenceServerException) -> bool:
    """Triton does not know a region it was sent: it restarted since we registered."""
    return (status_code(exc) == "NOT_FOUND"
            and "shared memory region" in (exc.message() or ""))


def _row_class(rows: int) -> int:
    return 1 << max(0, rows - 1).bit_length()


class Region:
    """One mapped region: ``rows`` input rows of ``in_row`` bytes, then output rows."""

    def __init__(self, name: str, rows: int, in_row: int, out_row: int) -> None:
        self.name = name
        self.rows = rows
        self.in_row = in_row
        self.out_row = out_row
        self.output_offset = -(-rows * in_row // _ALIGN) * _ALIGN
        self.size = self.output_offset + rows * out_row
        self._fd = os.open(SHM_DIR, os.O_TMPFILE | os.O_RDWR, 0o600)
        try:
            # Reserve the pages now: a full /dev/shm fails here, not as SIGBUS on a later write.
            os.posix_fallocate(self._fd, 0, self.size)
            self._map: mmap.mmap | None = mmap.mmap(self._fd, self.size)
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def key(self) -> str:
        return "/" + self.name

    @property
    def path(self) -> str:
        return os.path.join(SHM_DIR, self.name)

    def link(self) -> None:
        """Gives the unnamed file its name, for Triton's shm_open; only possible once."""
        directory = os.open(SHM_DIR, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.link(f"/proc/self/fd/{self._fd}", self.name, dst_dir_fd=directory,
                    follow_symlinks=True)
        finally:
            os.close(directory)

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def write(self, array: np.ndarray) -> None:
        """Copies ``array`` (at most ``rows`` rows of ``in_row`` bytes) to the input part."""
        assert self._map is not None and array.nbytes <= self.output_offset
        view = np.ndarray(array.shape, array.dtype, buffer=self._map)
        np.copyto(view, array, casting="no")

    def read(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A copy of the output part as ``shape``: the region is reused once given back."""
        assert self._map is not None
        return np.ndarray(shape, dtype, buffer=self._map, offset=self.output_offset).copy()

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None
            os.close(self._fd)


class ShmPool:
    """Regions of one process for one Triton; every method runs on the event loop."""

    def __init__(self, client: ShmClient, *, max_bytes: int,
                 region_factory: Callable[[str, int, int, int], Region] = Region) -> None:
        self._client = client
        self.max_bytes = max_bytes
        self._make = region_factory
        # Unique per process and per pool: several gateway processes share one Triton.
        self._token = secrets.token_hex(4)
        self._seq = itertools.count()
        self._idle: dict[tuple[int, int, int], list[Region]] = {}
        self._busy: set[Region] = set()
        self._retired: dict[str, int] = {}  # name -> bytes, until Triton lets go of it
        self._reaper: asyncio.Task | None = None
        self.disabled = False
        self._closed = False

    @property
    def bytes_held(self) -> int:
        """Bytes of regions mapped here, plus retired ones Triton may still map."""
        idle = sum(r.size for regions in self._idle.values() for r in regions)
        return idle + sum(r.size for r in self._busy) + sum(self._retired.values())

    @property
    def regions(self) -> int:
        return sum(map(len, self._idle.values())) + len(self._busy)

    @property
    def retired(self) -> int:
        return len(self._retired)

    async def checkout(self, rows: int, in_row: int, out_row: int) -> Region | None:
        """A registered region for ``rows`` rows, or None: send gRPC tensors instead."""
        if self.disabled or self._closed:
            return None
        shape = (_row_class(rows), in_row, out_row)
        idle = self._idle.get(shape)
        if idle:
            region = idle.pop()
        else:
            region = await self._new(*shape)
            if region is None:
                return None
        self._busy.add(region)
        return region

    def release(self, region: Region, *, reusable: bool) -> None:
        """Gives a region back. ``reusable`` only when Triton answered the call that used it."""
        self._busy.discard(region)
        if reusable and not self._closed and not self.disabled:
            self._idle.setdefault((region.rows, region.in_row, region.out_row), []).append(region)
        else:
            self._retire(region)

    def forget(self) -> None:
        """Triton restarted: none of the idle regions is registered any more."""
        for regions in self._idle.values():
            for region in regions:
                region.close()
        self._idle.clear()

    async def close(self) -> None:
        """Unregisters every region from Triton (best effort) and unmaps them here."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for regions in self._idle.values():
            for region in regions:
                self._retired[region.name] = region.size
                region.close()
        self._idle.clear()
        # Busy regions belong to calls still unwinding; release() unmaps them, and Triton's
        # mapping goes when Triton exits (a drained shutdown leaves none).
        await asyncio.gather(*(self._unregister(name) for name in list(self._retired)))

    async def _new(self, rows: int, in_row: int, out_row: int) -> Region | None:
        name = f"{NAME_PREFIX}-{os.getpid()}-{self._token}-{next(self._seq)}"
        need = -(-rows * in_row // _ALIGN) * _ALIGN + rows * out_row
        if not self._make_room(need):
            return None
        try:
            region = self._make(name, rows, in_row, out_row)
        except OSError as exc:  # /dev/shm full or missing: this call goes over gRPC
            log.warning("cannot create a %d-byte shared memory region (%s); "
                        "sending tensors over gRPC", need, exc)
            return None
        try:
            region.link()
            try:
                await self._client.register_system_shared_memory(
                    region.name, region.key, region.size, client_timeout=_CONTROL_TIMEOUT_S)
            finally:
                region.unlink()  # Triton has mapped it (or failed): the name is not needed
        except InferenceServerException as exc:
            if not answered_by_triton(exc):
                self._retire(region)  # Triton may have mapped it before the call failed
                return None
            # e.g. Triton on another host cannot open our file: it never will.
            region.close()
            self.disabled = True
            for shape in list(self._idle):
                while self._idle[shape]:
                    self._retire(self._idle[shape].pop(), in_use=False)
            self._idle.clear()
            log.warning("Triton refused shared memory (%s); sending tensors over gRPC "
                        "from now on", exc.message())
            return None
        except BaseException:
            # Cancelled while registering: Triton may have mapped it.
            self._retire(region)
            raise
        return region

    def _make_room(self, need: int) -> bool:
        """Drops idle regions, largest first, until ``need`` fits in the budget."""
        while self.bytes_held + need > self.max_bytes:
            victims = [(r.size, shape) for shape, rs in self._idle.items() for r in rs[:1]]
            if not victims:
                return False
            _, shape = max(victims)
            # Idle, so Triton is not using it: its bytes count as free at once.
            self._retire(self._idle[shape].pop(), in_use=False)
            if not self._idle[shape]:
                del self._idle[shape]
        return True

    def _retire(self, region: Region, *, in_use: bool = True) -> None:
        region.close()
        self._retired[region.name] = region.size if in_use else 0
        if not self._closed and (self._reaper is None or self._reaper.done()):
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """Unregisters retired regions until Triton has let go of all of them."""
        delay = _REAP_FIRST_S
        while self._retired:
            await asyncio.gather(*(self._unregister(name) for name in list(self._retired)))
            if self._retired:
                await asyncio.sleep(delay)
                delay = min(delay * 2, _REAP_MAX_S)

    async def _unregister(self, name: str) -> None:
        try:
            # Triton answers OK for a name it does not know (it restarted): nothing is held.
            await self._client.unregister_system_shared_memory(
                name, client_timeout=_CONTROL_TIMEOUT_S)
        except InferenceServerException as exc:
            # "currently in use" (a call it still runs) or unreachable: try again later.
            log.debug("shared memory region %s not unregistered yet: %s", name, exc.message())
            return
        self._retired.pop(name, None)
