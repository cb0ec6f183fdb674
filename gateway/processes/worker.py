"""One worker process of ``serve --processes N``: a GatewayServer on the shared port.

Started by the supervisor as ``python -m gateway.processes.worker`` (a fresh interpreter, not a
fork: the parent runs gRPC and threads, which fork does not copy safely). Everything it needs
comes in one spec (SPEC_ENV, JSON): the parent's Settings as resolved (real port, Triton URL),
each served model's checkpoint directory, its index, and a pipe to report on. The environment is
the channel rather than argv because the settings may hold the bearer token, and a process's
environment is readable by its user only. Reports, one line each: ``listening`` (the port is
bound), ``ready`` (Triton seen ready the first time). SIGTERM drains it as a single-process
gateway is drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from gateway.config import Settings
from gateway.model_specs import ModelSpec
from gateway.observability.logs import configure_logging

SPEC_ENV = "SIGLIP_GATEWAY_WORKER_SPEC"
LISTENING, READY = "listening", "ready"
log = logging.getLogger("gateway")


@dataclass(frozen=True)
class WorkerSpec:
    settings: Settings
    # The served models as the parent read them at start-up (a restarted worker serves the
    # models the parent's Triton serves, whatever became of the models file since).
    models: tuple[ModelSpec, ...]
    # Per model name, its checkpoint directory as the parent resolved it.
    checkpoints: dict[str, str]
    index: int
    status_fd: int

    def encode(self) -> str:
        return json.dumps({"settings": dataclasses.asdict(self.settings),
                           "models": [dataclasses.asdict(m) for m in self.models],
                           "checkpoints": self.checkpoints, "index": self.index,
                           "status_fd": self.status_fd})

    @classmethod
    def decode(cls, raw: str) -> WorkerSpec:
        data = json.loads(raw)
        settings = Settings(**data["settings"])
        settings.validate(models=False)
        return cls(settings, tuple(ModelSpec(**m) for m in data["models"]),
                   dict(data["checkpoints"]), int(data["index"]), int(data["status_fd"]))


def main() -> int:
    raw = os.environ.pop(SPEC_ENV, None)
    if raw is None:
        print(f"{__name__}: started without {SPEC_ENV}; run `siglip-gateway serve "
              "--processes N` instead", file=sys.stderr)
        return 2
    spec = WorkerSpec.decode(raw)
    configure_logging(
        spec.settings.log_level, spec.settings.log_format,
        text_format=f"%(asctime)s %(levelname)s %(name)s [worker {spec.index} pid "
                    "%(process)d]: %(message)s", fields={"worker": spec.index, "pid": os.getpid()})
    status = os.fdopen(spec.status_fd, "w", buffering=1)
    try:
        return asyncio.run(_serve(spec, status))
    except Exception as exc:  # start-up failures end with one clear line, as in one process
        log.error("worker start-up failed: %s", exc)
        return 1
    finally:
        with contextlib.suppress(OSError):
            status.close()


async def _serve(spec: WorkerSpec, status: IO[str]) -> int:
    from gateway.app import _import_transformers_without_torch
    from gateway.observability.tracing import Tracing, TracingConfig
    from gateway.server import GatewayServer

    _import_transformers_without_torch()
    settings = spec.settings
    # Each worker exports its own spans; the parent checked these settings at start-up.
    tracing = Tracing.start(TracingConfig.from_env(os.environ))
    server = GatewayServer(settings, settings.triton_url,
                           checkpoints={name: Path(c) for name, c in spec.checkpoints.items()},
                           share_port=True, tracing=tracing, specs=spec.models)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    _report(status, LISTENING)
    ready = asyncio.create_task(server.ready.wait())
    ready.add_done_callback(lambda task: task.cancelled() or _report(status, READY))
    await stop.wait()
    ready.cancel()
    await server.shutdown()
    tracing.shutdown()
    return 0


def _report(status: IO[str], line: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # the parent is gone: we are going too
        status.write(line + "\n")


if __name__ == "__main__":
    raise SystemExit(main())
