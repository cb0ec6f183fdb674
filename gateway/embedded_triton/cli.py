"""`python -m gateway.embedded_triton`: the embedded Triton in the foreground.

For debugging the model repository and for benchmarks against Triton alone. Prints the URLs
once both models are ready; exits 0 on SIGINT/SIGTERM, 1 if Triton fails or dies. Several
`--model NAME=CHECKPOINT` (or `--models-file`) serve several checkpoints, each under its own
Triton names (`siglip_vision__NAME`, ...; gateway/embedded_triton/repository.py).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from gateway.embedded_triton.errors import TritonStartupError
from gateway.embedded_triton.launcher import CpuThreading, EmbeddedTriton, TritonState
from gateway.model_specs import ModelSpecError, resolve_models


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.embedded_triton",
                                     description="Run the embedded Triton in the foreground.")
    parser.add_argument("--model", action="append", default=[],
                        help="checkpoint dir or hub id (SIGLIP_MODEL); repeat as "
                             "NAME=CHECKPOINT for several models")
    parser.add_argument("--models-file", default="", help="several models (SIGLIP_MODELS_FILE)")
    parser.add_argument("--with-decoder", action="store_true",
                        help="several models: also each one's JPEG decoder and ensemble")
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="default: the repository's model_repository/ (with several "
                             "models: the template of the one generated)")
    parser.add_argument("--grpc-port", type=int, help="default: a free port")
    parser.add_argument("--http-port", type=int, help="default: a free port")
    parser.add_argument("--metrics-port", type=int, help="default: a free port")
    parser.add_argument("--bind-address", default="127.0.0.1")
    parser.add_argument("--startup-timeout", type=float, default=600.0)
    parser.add_argument("--restart", action="store_true", help="restart Triton if it dies")
    parser.add_argument("--cpu-threads", type=int, default=0,
                        help="torch threads per CPU tower instance; 0 = the CPUs Triton may use")
    parser.add_argument("--cpu-interop-threads", type=int, default=1,
                        help="torch inter-op threads per CPU tower instance")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    if not args.model and not args.models_file:
        parser.error("give --model or --models-file")
    try:
        specs = resolve_models(",".join(args.model), args.models_file)
    except (ModelSpecError, OSError) as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("gateway.embedded_triton")

    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    triton = EmbeddedTriton(
        served=[(s.name, s.checkpoint) for s in specs], with_decoder=args.with_decoder,
        model_repository=args.model_repository, grpc_port=args.grpc_port,
        http_port=args.http_port, metrics_port=args.metrics_port,
        bind_address=args.bind_address, startup_timeout_s=args.startup_timeout,
        restart_on_exit=args.restart, logger=log,
        cpu_threading=CpuThreading(threads=args.cpu_threads,
                                   interop_threads=args.cpu_interop_threads))
    if not args.restart:
        triton.add_state_listener(
            lambda state, _: done.set() if state is TritonState.EXITED else None)
    try:
        triton.start()
    except TritonStartupError as exc:
        log.error("%s", exc)
        return 1
    print(f"triton ready: grpc {triton.grpc_url} http {triton.http_url} "
          f"metrics {triton.metrics_url}", flush=True)
    while not done.wait(0.5):  # a timed wait lets the signal handlers run promptly
        pass
    died = triton.state is TritonState.EXITED
    triton.stop()
    return 1 if died else 0
