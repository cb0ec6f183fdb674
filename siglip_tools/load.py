"""``siglip-gateway load``: a ghz-like gRPC load driver for SiglipService (grpc.aio).

It takes ghz's main options and payload files (protobuf-JSON; a JSON array is
sent round-robin for unary calls, and as the messages of one stream for
EmbedStream), can read ghz ``--config`` files, and prints ghz's summary or
JSON report (see ``siglip_tools.ghz``). Payloads are parsed and serialized
once; calls carry the pre-serialized bytes and responses are not decoded, so
the driver spends its CPU on gRPC only. ``concurrency`` tasks share
``connections`` channels, and an optional global ``rps`` pacer spaces call starts.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import descriptor, json_format, message_factory

from siglip.v1 import siglip_pb2
from siglip_tools.ghz import (
    CONFIG_KEYS,
    STATUS_NAMES,
    Tally,
    add_ghz_arguments,
    build_report,
    error_message,
    format_summary,
    ghz_arg_parser,
    parse_duration,
    read_ghz_config,
)

_MAX_MESSAGE = 64 * 1024 * 1024
_DESCRIPTION = "ghz-like load driver for siglip.v1.SiglipService (see loadtest/README.md)."


def resolve_method(call: str) -> descriptor.MethodDescriptor:
    """Accepts ``siglip.v1.SiglipService/Classify``, ``...SiglipService.Classify``, ``Classify``."""
    name = call.strip().lstrip("/")
    service, _, method = name.rpartition("/") if "/" in name else name.rpartition(".")
    for svc in siglip_pb2.DESCRIPTOR.services_by_name.values():
        if service in ("", svc.full_name, svc.name) and method in svc.methods_by_name:
            return svc.methods_by_name[method]
    raise ValueError(f"unknown call {call!r}")


def encode_requests(method: descriptor.MethodDescriptor, data: Any) -> list[bytes]:
    """Serialized request messages from protobuf-JSON (an object or a non-empty array)."""
    cls = message_factory.GetMessageClass(method.input_type)
    items = data if isinstance(data, list) else [data or {}]
    if not items:
        raise ValueError("data array must not be empty")
    return [json_format.ParseDict(item, cls()).SerializeToString() for item in items]


@dataclasses.dataclass
class LoadConfig:
    """One run; durations in seconds, 0 = off (``timeout`` 0 = no deadline)."""

    host: str
    call: str
    data: Any = None
    concurrency: int = 50
    total: int = 200
    duration: float = 0.0  # run for this long; total is then ignored (ghz -z)
    max_duration: float = 0.0  # stop after this long even if total is not reached (ghz -x)
    duration_stop: str = "close"  # in-flight calls at the deadline: close | wait | ignore
    rps: float = 0.0
    timeout: float = 20.0
    connections: int = 1
    connect_timeout: float = 10.0
    insecure: bool = True
    cacert: str | None = None
    lb_strategy: str | None = None
    metadata: dict[str, str] | None = None
    name: str | None = None
    progress: bool = False


def _channel(cfg: LoadConfig) -> grpc.aio.Channel:
    # A local subchannel pool gives each channel its own TCP connection; grpc
    # otherwise shares one connection between channels with equal arguments.
    options: list[tuple[str, Any]] = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_receive_message_length", _MAX_MESSAGE),
        ("grpc.max_send_message_length", _MAX_MESSAGE),
    ]
    if cfg.lb_strategy:
        options.append(("grpc.lb_policy_name", cfg.lb_strategy))
    if cfg.insecure:
        return grpc.aio.insecure_channel(cfg.host, options=options)
    roots = Path(cfg.cacert).read_bytes() if cfg.cacert else None
    return grpc.aio.secure_channel(cfg.host, grpc.ssl_channel_credentials(roots), options)


class LoadRun:
    """Drives one run; ``stop()`` ends it early (Ctrl-C) and still yields a report."""

    def __init__(self, cfg: LoadConfig) -> None:
        self.cfg = cfg
        self.method = resolve_method(cfg.call)
        if self.method.client_streaming != self.method.server_streaming:
            raise ValueError("only unary and bidirectional-streaming calls are supported")
        self.streaming = self.method.client_streaming
        self.payloads = encode_requests(self.method, cfg.data)
        self.tally = Tally()
        self._issued = 0
        self._stopping = False
        self._end_reason = "normal"
        self._in_flight: set[asyncio.Task] = set()
        self._stop_event = asyncio.Event()

    def stop(self) -> None:
        self._stop_event.set()

    async def _worker(self, call: Any) -> None:
        cfg, tally, payloads = self.cfg, self.tally, self.payloads
        timeout = cfg.timeout or None
        metadata = tuple(cfg.metadata.items()) if cfg.metadata else None
        bounded = not cfg.duration
        limit = cfg.duration or cfg.max_duration
        me = asyncio.current_task()
        while not self._stopping and not (bounded and self._issued >= cfg.total):
            i, self._issued = self._issued, self._issued + 1
            if cfg.rps > 0:  # slot i starts at i/rps; a worker running late catches up
                if limit and i / cfg.rps >= limit:  # past the deadline: the run ends there
                    await asyncio.sleep(self._t0 + limit - time.perf_counter())
                    self._end_reason = "timeout"
                    return
                delay = self._t0 + i / cfg.rps - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            self._in_flight.add(me)
            t0 = time.perf_counter_ns()
            try:
                if self.streaming:
                    async for _ in call(iter(payloads), timeout=timeout, metadata=metadata):
                        pass
                else:
                    await call(payloads[i % len(payloads)], timeout=timeout, metadata=metadata)
            except grpc.aio.AioRpcError as e:
                code = e.code()
                msg = error_message(code, e.details())
                tally.record(time.perf_counter_ns() - t0, STATUS_NAMES.get(code, "Unknown"), msg)
            except asyncio.CancelledError:
                if cfg.duration_stop == "close":
                    msg = error_message(grpc.StatusCode.CANCELLED, "stopped at the run's end")
                    tally.record(time.perf_counter_ns() - t0, "Canceled", msg)
                raise
            except Exception as e:  # every started call is accounted for
                tally.record(time.perf_counter_ns() - t0, "Unknown", f"{type(e).__name__}: {e}")
            else:
                tally.record(time.perf_counter_ns() - t0, "OK")
            finally:
                self._in_flight.discard(me)

    async def _progress(self) -> None:
        cfg, last_n, last_t = self.cfg, 0, self._t0
        of = f"/{cfg.duration:g}s" if cfg.duration else ""
        goal = "" if cfg.duration else f"/{cfg.total}"
        while True:
            await asyncio.sleep(1.0)
            now, n = time.perf_counter(), self.tally.count
            sys.stderr.write(
                f"[{now - self._t0:5.1f}s{of}] {n}{goal} calls  "
                f"{(n - last_n) / (now - last_t):.1f} rps  {self.tally.errors} errors\n"
            )
            sys.stderr.flush()
            last_n, last_t = n, now

    async def run(self) -> dict[str, Any]:
        """Connects, drives the calls, and returns the ghz-style report."""
        cfg = self.cfg
        channels = [_channel(cfg) for _ in range(max(1, cfg.connections))]
        try:
            ready = asyncio.gather(*(ch.channel_ready() for ch in channels))
            try:
                await asyncio.wait_for(ready, cfg.connect_timeout or None)
            except asyncio.TimeoutError:
                raise ConnectionError(
                    f"could not connect to {cfg.host} within {cfg.connect_timeout:g}s"
                ) from None
            path = f"/{self.method.containing_service.full_name}/{self.method.name}"
            kind = "stream_stream" if self.streaming else "unary_unary"
            calls = [getattr(ch, kind)(path, _registered_method=True) for ch in channels]
            n_workers = cfg.concurrency if cfg.duration else min(cfg.concurrency, cfg.total)
            self._t0, t0_ns = time.perf_counter(), time.perf_counter_ns()
            workers = [
                asyncio.create_task(self._worker(calls[k % len(calls)]))
                for k in range(max(1, n_workers))
            ]
            all_done = asyncio.gather(*workers, return_exceptions=True)
            side = [asyncio.create_task(self._stop_event.wait())]
            if cfg.progress:
                side.append(asyncio.create_task(self._progress()))
            limit = cfg.duration or cfg.max_duration or None
            first = asyncio.FIRST_COMPLETED
            done, _ = await asyncio.wait({all_done, side[0]}, timeout=limit, return_when=first)
            if all_done not in done:  # deadline or stop(): no new calls from here on
                self._end_reason = "cancel" if self._stop_event.is_set() else "timeout"
                self._stopping = True
                for task in workers:
                    if cfg.duration_stop != "wait" or task not in self._in_flight:
                        task.cancel()
                await all_done
            total_ns = time.perf_counter_ns() - t0_ns
            for task in side:
                task.cancel()
            if cfg.progress:
                sys.stderr.write(
                    f"done: {self.tally.count} calls, {self.tally.errors} errors "
                    f"in {total_ns / 1e9:.1f}s ({self._end_reason})\n"
                )
        finally:
            await asyncio.gather(*(ch.close() for ch in channels))
        keys = ("host", "call", "insecure", "total", "concurrency", "connections", "rps")
        options = {k: getattr(cfg, k) for k in keys}
        options |= {"duration": int(cfg.duration * 1e9), "timeout": int(cfg.timeout * 1e9)}
        return build_report(
            self.tally, total_ns, options, end_reason=self._end_reason, name=cfg.name
        )


async def run_load(cfg: LoadConfig) -> dict[str, Any]:
    """Runs ``cfg`` on the current event loop and returns the report (a JSON-ready dict)."""
    return await LoadRun(cfg).run()


HELP = "load-test a running server, ghz-style (see loadtest/README.md)"
DESCRIPTION = _DESCRIPTION
add_arguments = add_ghz_arguments


def config_from_args(argv: list[str] | None = None) -> tuple[LoadConfig, str, str | None]:
    """(run config, report format, output path) from the command line and ``--config``."""
    return config_from_namespace(ghz_arg_parser(_DESCRIPTION).parse_args(argv))


def config_from_namespace(args: argparse.Namespace) -> tuple[LoadConfig, str, str | None]:
    """(run config, report format, output path) from parsed options and ``--config``."""
    values: dict[str, Any] = {}
    if args.config:
        values.update(read_ghz_config(args.config))
    cli = {k: v for k in CONFIG_KEYS if (v := getattr(args, k)) is not None}
    if "data" in cli:
        values.pop("data_file", None)
        cli["data"] = json.loads(cli["data"])
    elif "data_file" in cli:
        values.pop("data", None)
    values |= cli
    if values.get("data_file"):
        values["data"] = json.loads(Path(values["data_file"]).read_text())
    if isinstance(values.get("metadata"), str):
        values["metadata"] = json.loads(values["metadata"])
    if not values.get("host") or not values.get("call"):
        raise ValueError("a host (HOST:PORT) and --call are required")
    for key in ("duration", "max_duration", "timeout", "connect_timeout"):
        if key in values:
            values[key] = parse_duration(values[key])
    fields = {f.name for f in dataclasses.fields(LoadConfig)}
    cfg = LoadConfig(**{k: v for k, v in values.items() if k in fields}, progress=not args.quiet)
    no_total = cfg.total < 1 and not cfg.duration
    if min(cfg.concurrency, cfg.connections) < 1 or cfg.rps < 0 or no_total:
        raise ValueError("concurrency, connections and total must be >= 1, rps >= 0")
    return cfg, values.get("format") or "summary", values.get("output")


async def _main_async(cfg: LoadConfig) -> dict[str, Any]:
    run = LoadRun(cfg)
    loop = asyncio.get_running_loop()
    try:  # Ctrl-C ends the run early but still reports
        loop.add_signal_handler(signal.SIGINT, run.stop)
    except (NotImplementedError, RuntimeError):
        pass
    return await run.run()


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m siglip_tools.load``); see ``run``."""
    return run(ghz_arg_parser(_DESCRIPTION).parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """0: the run completed (whatever the statuses); 1: no connection; 2: bad input."""
    try:
        cfg, fmt, output = config_from_namespace(args)
        report = asyncio.run(_main_async(cfg))
    except ConnectionError as e:
        print(f"siglip-gateway load: {e}", file=sys.stderr)
        return 1
    except (ValueError, OSError, json_format.ParseError) as e:
        print(f"siglip-gateway load: {e}", file=sys.stderr)
        return 2
    if fmt == "summary":
        text = format_summary(report)
    else:
        text = json.dumps(report, indent=2 if fmt == "pretty" else None) + "\n"
    if output:
        Path(output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
