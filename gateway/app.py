"""Runs the service: optional embedded Triton, the gateway server (in this process, or in N
worker processes under gateway/processes/supervisor.py), signals, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Mapping

from gateway.config import Settings
from gateway.core.families import check_approximable
from gateway.core.model_meta import ModelMeta, load_model_meta, resolve_checkpoint
from gateway.observability.tracing import Tracing, TracingConfig, require_sdk
from gateway.server import GatewayServer

log = logging.getLogger("gateway")


async def serve(settings: Settings, tracing_config: TracingConfig | None = None) -> int:
    """Serves until SIGTERM/SIGINT; returns the process exit code. ``tracing_config``: from
    the OTEL_* settings (None: no tracing); with several processes each worker traces."""
    tracing_config = tracing_config or TracingConfig()
    # Fails here, before Triton starts, when tracing is on without the SDK.
    require_sdk(tracing_config)
    tracing = Tracing.start(tracing_config) if settings.processes == 1 else Tracing()
    try:
        return await _serve(settings, tracing)
    finally:
        tracing.shutdown()


async def _serve(settings: Settings, tracing: Tracing) -> int:
    if settings.processes == 1:  # with more, the workers tokenize, not this process
        _import_transformers_without_torch()
    specs = settings.model_specs()
    checkpoints = {spec.name: await asyncio.to_thread(resolve_checkpoint, spec.checkpoint)
                   for spec in specs}
    # Refuse a checkpoint (or a mode) that cannot be served before Triton spends minutes on it.
    metas = {}
    for spec in specs:
        meta = await asyncio.to_thread(load_model_meta, str(checkpoints[spec.name]))
        if settings.preprocess_mode != "exact":
            check_approximable(meta.image.resample, settings.preprocess_mode)
        metas[spec.name] = dataclasses.replace(meta, model_id=spec.checkpoint)
    triton = None
    triton_url = settings.triton_url
    if not triton_url:
        from gateway.embedded_triton.launcher import CpuThreading, EmbeddedTriton, trace_args

        threading = CpuThreading(threads=settings.triton_cpu_threads,
                                 interop_threads=settings.triton_cpu_interop_threads)
        # One model: the shipped repository; several: one generated for them
        # (gateway/embedded_triton/repository.py).
        triton = EmbeddedTriton(served=[(spec.name, str(checkpoints[spec.name]))
                                        for spec in specs],
                                with_decoder=settings.preprocess_mode == "triton",
                                restart_on_exit=True,
                                startup_timeout_s=settings.triton_startup_timeout_s,
                                cpu_threading=threading,
                                extra_args=trace_args(settings.triton_trace_config))
        log.info("starting embedded Triton for %s", ", ".join(
            f"{spec.name}={checkpoints[spec.name]}" for spec in specs))
        await asyncio.to_thread(triton.start)
        triton_url = triton.grpc_url
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if settings.processes > 1:
            from gateway.processes.supervisor import Supervisor

            supervisor = Supervisor(settings, specs, checkpoints, triton_url, metas,
                                    embedded=triton is not None)
            return await supervisor.run(stop)
        # One process: this one serves (as before --processes existed).
        server = GatewayServer(settings, triton_url, checkpoints=checkpoints, tracing=tracing,
                               specs=specs)
        bound = await server.start()
        ready = asyncio.create_task(server.ready.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait([ready, stopping], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        stopping.cancel()
        if server.ready.is_set():
            log.info("siglip-gateway ready: grpc %s:%d, metrics :%s, http :%s, %s, triton %s%s",
                     settings.host, bound.port, bound.metrics_port, bound.http_port,
                     describe_models(metas), triton_url, " (embedded)" if triton else "")
        await stop.wait()
        log.info("signal received: shutting down (grace %.0f s)", settings.shutdown_grace_s)
        await server.shutdown()
    finally:
        if triton is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(triton.stop)
    return 0


def describe_models(metas: Mapping[str, ModelMeta]) -> str:
    """For the ready line: each model's name, checkpoint and embedding size, the default
    first, with random weights said loudly."""
    parts = []
    for i, (name, meta) in enumerate(metas.items()):
        default = " (default)" if i == 0 and len(metas) > 1 else ""
        random = " (RANDOM WEIGHTS: scores are meaningless)" if meta.random_weights else ""
        parts.append(f"model {name}={meta.model_id}{default}{random}, "
                     f"embedding dim {meta.embedding_dim}")
    return "; ".join(parts)


def _import_transformers_without_torch() -> None:
    """The gateway needs transformers only for SigLIP's tokenizer, but transformers 4.x imports
    torch whenever it is installed (as with the embedded Triton): +230 MB and seconds of start-up.
    transformers reads USE_TORCH once, at its first import; the variable is restored at once so
    that the embedded Triton's models, started later with our environment, still use torch.
    transformers 5 no longer reads USE_TORCH, and its tokenizer imports no torch anyway."""
    if "transformers" in sys.modules:
        return
    # The second variable silences transformers' "None of PyTorch ... found" advice.
    temporary = {"USE_TORCH": "0", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    previous = {name: os.environ.get(name) for name in temporary}
    os.environ.update(temporary)
    try:
        import transformers  # noqa: F401
        from transformers import AutoTokenizer  # noqa: F401
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
