"""tritonserver's output: forwarded to our logger, and read for why a start failed.

Owns the reader thread of one tritonserver run (stdout and stderr merged, stubs included),
the mapping of Triton's glog severities to logging levels, a tail of recent lines, and the
extraction of failure reasons (a model that failed to load, a port in use) from those lines.
"""

from __future__ import annotations

import collections
import logging
import re
import threading
from typing import IO

# I1127 23:52:49.503235 4196 model_lifecycle.cc:472] "loading: echo:1"
_GLOG = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+ [^\]]+\]\s?(.*)$")
_LEVELS = {"I": logging.INFO, "W": logging.WARNING, "E": logging.ERROR, "F": logging.CRITICAL}
_LOAD_FAILED = re.compile(r"failed to load '([^']+)' version \d+: (.*)")
_LOADED = re.compile(r"successfully loaded '([^']+)'")
_SERVICE_FAILED = re.compile(r"failed to start (\w+) service: (.*)")
# Expected on a machine without a GPU or DCGM; alarming-looking but harmless.
_CPU_NOISE = (
    "CudaDriverHelper has not been initialized",
    "Failed to initialize NVML",
    "DCGM unable to start",
    "Unable to allocate pinned system memory",
    "CUDA memory pool disabled",
    # The ensemble (siglip_vision_encoded) tries a CUDA stream at load; on CPU it runs without.
    "CUDA driver version is insufficient for CUDA runtime version",
)


def _is_noise(line: str) -> bool:
    return any(n in line for n in _CPU_NOISE)


def _unquote(message: str) -> str:
    message = message.strip()
    if len(message) >= 2 and message[0] == message[-1] == '"':
        message = message[1:-1]
    return message.replace("\\n", "\n").replace('\\"', '"')


def first_line(text: str, limit: int = 300) -> str:
    line = next((part.strip() for part in text.splitlines() if part.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


class TritonLog:
    """Reads one run's output until EOF (when tritonserver and all its stubs have exited)."""

    def __init__(self, stream: IO[bytes], logger: logging.Logger, tail: int = 200) -> None:
        self._stream = stream
        self._logger = logger
        self._lock = threading.Lock()
        self._tail: collections.deque[tuple[int, str]] = collections.deque(maxlen=tail)
        self.load_failures: dict[str, str] = {}  # model -> reason
        self.loaded: set[str] = set()
        self.service_failures: dict[str, str] = {}  # "GRPC"/"HTTP"/"Metrics" -> reason
        self._thread = threading.Thread(target=self._run, name="triton-log", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def tail(self, lines: int = 20) -> list[str]:
        with self._lock:
            return [line for _, line in self._tail][-lines:]

    def errors(self, lines: int = 5) -> list[str]:
        """The last error lines, CPU noise excluded."""
        with self._lock:
            found = [line for level, line in self._tail if level >= logging.ERROR]
        return found[-lines:]

    def _run(self) -> None:
        try:
            for raw in iter(self._stream.readline, b""):
                self._handle(raw.decode("utf-8", "replace").rstrip())
        except (OSError, ValueError):  # stream closed under us during shutdown
            pass

    def _handle(self, line: str) -> None:
        if not line.strip():
            return
        match = _GLOG.match(line)
        if match is None:  # tables, "error: creating server: ...", the models' own output
            message = line
            level = (logging.ERROR if line.startswith("error:")
                     else logging.DEBUG if line[:1] in "+|" or _is_noise(line) else logging.INFO)
        else:
            level, message = _LEVELS[match.group(1)], match.group(2).strip()
            if len(message) >= 2 and message[0] == message[-1] == '"':
                message = message[1:-1]  # kept escaped: one log record per line
            # Empty: the header of a table (models, backends, options) that follows.
            if not message or _is_noise(message):
                level = logging.DEBUG
        with self._lock:
            self._tail.append((level, line))
            if (failed := _LOAD_FAILED.search(message)) is not None:
                self.load_failures[failed.group(1)] = first_line(_unquote(failed.group(2)))
            elif (loaded := _LOADED.search(message)) is not None:
                self.loaded.add(loaded.group(1))
            elif (service := _SERVICE_FAILED.search(message)) is not None:
                self.service_failures[service.group(1)] = first_line(_unquote(service.group(2)))
        self._logger.log(level, "%s", message)
