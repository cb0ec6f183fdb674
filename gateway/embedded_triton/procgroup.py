"""A child process tree that cannot outlive us: own session, death signal, watchdog.

Owns the OS-level mechanics of running tritonserver (and the gateway's worker processes,
gateway/processes/): spawning it as the leader of its own
session (its python-backend stubs inherit the process group), with PR_SET_PDEATHSIG so the
kernel kills it when our process dies, and a watchdog that kills the whole group (stubs
included) when our process dies; waiting for its exit without losing the group id to reuse;
and killing the group.

Why a watchdog on top of the death signal: the stubs poll `kill(parent, 0)` and so keep
running while tritonserver is an unreaped zombie, and a death signal is tied to the thread
that forked, not to the process. The watchdog is `sh` blocked reading a pipe whose only
writer is us: the kernel closes it when we die, however we die.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PR_SET_PDEATHSIG = 1
# POSIX form: dash rejects `kill -KILL -- -PGID`.
_WATCHDOG_SCRIPT = 'read -r _; kill -s KILL -- "-$1" 2>/dev/null'


def _prctl():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.prctl
    except (OSError, AttributeError):  # not Linux
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn


@dataclass
class ProcessTree:
    """tritonserver (leader of process group `pgid`) and the watchdog guarding it."""

    proc: subprocess.Popen[bytes]
    watchdog: subprocess.Popen[bytes] | None
    _watchdog_pipe: int | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def pgid(self) -> int:
        return self.proc.pid  # start_new_session: the leader's pid is the group id

    def exited(self) -> bool:
        """Whether the leader has exited (it is not reaped: the group id stays reserved)."""
        if self.proc.returncode is not None:
            return True
        try:
            info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:  # reaped behind our back (SIGCHLD ignored)
            return not _alive(self.pid)
        return info is not None

    def wait_exit(self) -> None:
        """Blocks until the leader exits; leaves it unreaped."""
        while True:
            try:
                os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
                return
            except ChildProcessError:
                if not _alive(self.pid):
                    return
                time.sleep(0.2)

    def signal_leader(self, sig: int) -> None:
        if not self.exited():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def kill_group(self) -> None:
        """SIGKILL to every process of the group; safe while the leader is unreaped."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signal.SIGKILL)

    def reap(self) -> int:
        """After the leader exited: dismiss the watchdog, kill leftovers, reap. Returns rc."""
        # Watchdog first: once the leader is reaped its pid (the group id) may be reused.
        if self.watchdog is not None:
            with contextlib.suppress(ProcessLookupError):
                self.watchdog.kill()
            self.watchdog.wait()
        if self._watchdog_pipe is not None:
            os.close(self._watchdog_pipe)
            self._watchdog_pipe = None
        self.kill_group()
        return self.proc.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def spawn(argv: Sequence[str], env: dict[str, str], cwd: Path | None = None, *,
          capture_output: bool = True, pass_fds: Sequence[int] = ()) -> ProcessTree:
    """Starts `argv` in its own session, guarded against orphaning: stdout+stderr on a pipe,
    or (not `capture_output`) on ours; `pass_fds` are inherited."""
    prctl = _prctl()
    parent = os.getpid()

    def child_setup() -> None:  # runs between fork and exec: no imports, no locks
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # we died before the death signal was armed
            os._exit(1)

    proc = subprocess.Popen(
        list(argv), env=env, cwd=cwd, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture_output else None,
        stderr=subprocess.STDOUT if capture_output else None, pass_fds=tuple(pass_fds),
        start_new_session=True, preexec_fn=child_setup)
    # Non-inheritable pipe: no other child of ours keeps the write end open; the watchdog reads
    # it as stdin and sees EOF when we die.
    read_end, write_end = os.pipe()
    try:
        watchdog = subprocess.Popen(
            ["/bin/sh", "-c", _WATCHDOG_SCRIPT, "siglip-triton-watchdog", str(proc.pid)],
            stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
    except OSError:
        os.close(write_end)
        watchdog = None
        write_end = None  # type: ignore[assignment]
    finally:
        os.close(read_end)
    return ProcessTree(proc=proc, watchdog=watchdog, _watchdog_pipe=write_end)


def processes_with_env(key: str, value: str) -> list[int]:
    """Pids (from /proc) whose environment has key=value: how to find a launch's stubs."""
    needle = f"{key}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found
