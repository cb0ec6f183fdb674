"""The embedded Triton: start, readiness, supervision and stop of one tritonserver.

Owns `EmbeddedTriton`: the lifecycle, with an opt-in restart of a server that died (same
ports, backoff). One model runs on the shipped model_repository/; several (`served`) on a
repository generated for them (repository.py) in a temporary directory the instance owns.
Runnable: `python -m gateway.embedded_triton --model DIR` (cli.py).
Helpers: procgroup.py (no orphans), distribution.py (the wheel's files), tritonlog.py (its
output), errors.py (`TritonStartupError` and its message), ports.py, readiness.py.
"""

from __future__ import annotations

import atexit
import contextlib
import enum
import logging
import os
import shutil
import signal
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from gateway.contract import TOWER_MODELS, triton_names
from gateway.embedded_triton import distribution, procgroup, readiness
from gateway.embedded_triton.cputhreads import CpuThreading
from gateway.embedded_triton.errors import (
    TritonStartupError,
    checkpoint_problem,
    describe_exit,
    explain,
)
from gateway.embedded_triton.ports import PortUnavailable, TritonPorts, pick_ports
from gateway.embedded_triton.repository import (
    RepositoryError,
    build_repository,
    default_model_repository,
)
from gateway.embedded_triton.tritonlog import TritonLog

__all__ = ["MODELS", "CpuThreading", "EmbeddedTriton", "TritonPorts", "TritonStartupError",
           "TritonState", "default_model_repository", "trace_args"]

MODELS = TOWER_MODELS
# Set in Triton's environment (so in its stubs' too): tells our processes from any other.
INSTANCE_ENV = "SIGLIP_TRITON_INSTANCE"
DEFAULT_CPU_THREADING = CpuThreading()
_BACKOFF_MAX_S = 30.0
_STABLE_S = 60.0  # a run ready this long resets the restart backoff


def trace_args(trace_config: str) -> list[str]:
    """SIGLIP_TRITON_TRACE_CONFIG (``--trace-config`` values separated by spaces, e.g.
    ``mode=opentelemetry rate=0 level=TIMESTAMPS opentelemetry,url=http://c:4318/v1/traces``)
    as tritonserver arguments."""
    return [arg for value in trace_config.split() for arg in ("--trace-config", value)]


class TritonState(str, enum.Enum):
    STARTING = "starting"
    READY = "ready"
    EXITED = "exited"  # died on its own; restarted next if restart_on_exit
    STOPPED = "stopped"


StateListener = Callable[[TritonState, str], None]


@dataclass
class _Run:
    tree: procgroup.ProcessTree
    log: TritonLog
    started: float
    ready_at: float | None = None
    returncode: int | None = None


class EmbeddedTriton:
    """One tritonserver on `model_repository`, serving checkpoint `model` (SIGLIP_MODEL), or
    the models `served` ((name, checkpoint) pairs) when there are two or more."""

    def __init__(
        self, *, model: str | None = None, model_repository: Path | str | None = None,
        http_port: int | None = None, grpc_port: int | None = None,
        metrics_port: int | None = None, bind_address: str = "127.0.0.1",
        startup_timeout_s: float = 600.0, restart_on_exit: bool = False,
        restart_backoff_s: float = 1.0, env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (), models: Sequence[str] | None = None,
        cache_dir: Path | None = None, logger: logging.Logger | None = None,
        cpu_threading: CpuThreading | None = DEFAULT_CPU_THREADING,
        served: Sequence[tuple[str, str]] | None = None, with_decoder: bool = False,
    ) -> None:
        """`cpu_threading`: the towers' CPU threads (cputhreads.py); None leaves torch's and
        OpenMP's defaults (for comparisons). `env` is added to Triton's environment last.

        `served`: two or more (name, checkpoint) pairs are served from a repository generated
        at start from `model_repository` (the template; removed at stop), each under its own
        Triton names (gateway/contract.py); `with_decoder` adds each one's JPEG decoder and
        ensemble. `models` (what must be ready) defaults to every model written. One pair is
        the same as `model=` its checkpoint: the repository as it is."""
        pairs = tuple((str(name), str(checkpoint)) for name, checkpoint in served or ())
        if model is None:
            if not pairs:
                raise TypeError("EmbeddedTriton needs model or served")
            model = pairs[0][1]
        self.model = model
        self.served = pairs if len(pairs) > 1 else ()
        self.with_decoder = with_decoder
        self._template = Path(model_repository or default_model_repository()).resolve()
        # The generated repository once started with several models; else the template.
        self.model_repository = self._template
        self._generated: Path | None = None
        if models is None:
            models = MODELS if not self.served else [
                m for names in triton_names([n for n, _ in self.served]).values()
                for m in (names.vision, names.text) + (
                    (names.decode, names.encoded) if with_decoder else ())]
        self._requested = (http_port, grpc_port, metrics_port)
        self.bind_address = bind_address
        self.startup_timeout_s = startup_timeout_s
        self.restart_on_exit = restart_on_exit
        self.restart_backoff_s = restart_backoff_s
        self._extra_env = dict(env or {})
        self._extra_args = list(extra_args)
        self.models = tuple(models)
        self._cache_dir = cache_dir
        if cpu_threading is not None:
            cpu_threading.validate()
        self.cpu_threading = cpu_threading
        self.log = logger or logging.getLogger("gateway.embedded_triton")
        self.instance_id = uuid.uuid4().hex
        self._ports: TritonPorts | None = None
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._run: _Run | None = None
        self._state = TritonState.STOPPED
        self._first_outcome: _Run | None = None  # the first run once ready or exited
        self._spawn_error: str | None = None
        self._supervisor: threading.Thread | None = None
        self._listeners: list[StateListener] = []
        self.restarts = 0

    # -- public ------------------------------------------------------------------------
    @property
    def ports(self) -> TritonPorts:
        if self._ports is None:
            raise RuntimeError("EmbeddedTriton not started")
        return self._ports

    @property
    def connect_host(self) -> str:
        return "127.0.0.1" if self.bind_address in ("0.0.0.0", "", "::") else self.bind_address

    @property
    def grpc_url(self) -> str:
        return f"{self.connect_host}:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"{self.connect_host}:{self.ports.http}"  # tritonclient.http style, no scheme

    @property
    def metrics_url(self) -> str:
        return f"http://{self.connect_host}:{self.ports.metrics}/metrics"

    @property
    def state(self) -> TritonState:
        return self._state

    @property
    def pid(self) -> int | None:
        run = self._run
        return run.tree.pid if run is not None and run.returncode is None else None

    def is_running(self) -> bool:
        run = self._run
        return run is not None and not run.tree.exited()

    def is_ready(self) -> bool:
        return self._state is TritonState.READY

    def add_state_listener(self, listener: StateListener) -> None:
        """`listener(state, detail)` runs on the supervisor thread; keep it short."""
        self._listeners.append(listener)

    def wait_ready(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(
                lambda: self._state in (TritonState.READY, TritonState.STOPPED), timeout_s
            ) and self._state is TritonState.READY

    def start(self) -> EmbeddedTriton:
        """Blocks until every model is ready; raises TritonStartupError saying why not."""
        if self._supervisor is not None:
            raise RuntimeError("EmbeddedTriton already started")
        try:
            self._check_inputs()
            try:
                dist = distribution.locate(self._cache_dir)
            except (distribution.TritonNotInstalled, OSError) as exc:
                raise TritonStartupError("install", f"cannot run Triton: {exc}") from exc
            auto = None in self._requested
            for attempt in range(3 if auto else 1):
                try:
                    self._ports = pick_ports(self.bind_address, *self._requested)
                except PortUnavailable as exc:
                    raise TritonStartupError("port_in_use", str(exc)) from exc
                error = self._start_once(dist)
                if error is None:
                    _live.add(self)
                    return self
                # Auto-chosen ports can be taken between the choice and Triton's late bind.
                if not (error.reason == "port_in_use" and auto and attempt < 2):
                    raise error
                self.log.warning("%s; retrying on other ports", error)
        except BaseException:
            self._remove_generated()
            raise
        raise AssertionError("unreachable")

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to tritonserver, SIGKILL to its whole group after `grace_s`; then removes
        a generated repository. Idempotent."""
        self._halt(grace_s)
        self._remove_generated()

    def __enter__(self) -> EmbeddedTriton:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- start-up and stop --------------------------------------------------------------
    def _halt(self, grace_s: float) -> None:
        with self._cond:
            self._stopping.set()
            run, supervisor = self._run, self._supervisor
            self._cond.notify_all()
        if run is not None and not run.tree.exited():
            self.log.info("stopping Triton (pid %d, grace %.0f s)", run.tree.pid, grace_s)
            run.tree.signal_leader(signal.SIGTERM)
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(grace_s)
            if supervisor.is_alive():
                run = self._run
                if run is not None:
                    self.log.warning("Triton did not exit within %.0f s: killing it", grace_s)
                    run.tree.kill_group()
                supervisor.join(10.0)
        self._supervisor = None
        self._set_state(TritonState.STOPPED, "stopped")
        _live.discard(self)

    def _check_inputs(self) -> None:
        if self.served:  # every checkpoint before a repository is built for them
            for name, checkpoint in self.served:
                problem = checkpoint_problem(checkpoint)
                if problem:
                    raise TritonStartupError("checkpoint", f"model {name}: {problem}")
        if self.served and self._generated is None:
            self._generated = Path(tempfile.mkdtemp(prefix="siglip-triton-repository-"))
            try:
                build_repository(self.served, self._generated, source=self._template,
                                 with_decoder=self.with_decoder)
            except (RepositoryError, OSError) as exc:
                self._remove_generated()
                raise TritonStartupError("repository", f"cannot build the model repository "
                                         f"for {self._checkpoints()}: {exc}") from exc
            self.model_repository = self._generated
        for name in self.models:
            if not (self.model_repository / name / "config.pbtxt").is_file():
                raise TritonStartupError(
                    "repository", f"model repository {self.model_repository} has no model "
                    f"{name!r} ({name}/config.pbtxt missing)")
        problem = None if self.served else checkpoint_problem(self.model)
        if problem:
            raise TritonStartupError("checkpoint", problem)

    def _ensure_generated(self) -> None:
        """Each (re)start finds the generated repository whole: if something removed it since
        the first start (a /tmp cleaner, while the server ran for days), it is built again,
        rather than every automatic restart failing on a missing repository."""
        generated = self._generated
        if generated is None or all((generated / m / "config.pbtxt").is_file()
                                    for m in self.models):
            return
        self.log.warning("the generated model repository %s is gone or incomplete: building "
                         "it again", generated)
        shutil.rmtree(generated, ignore_errors=True)
        try:
            generated.mkdir(parents=True)
            build_repository(self.served, generated, source=self._template,
                             with_decoder=self.with_decoder)
        except (RepositoryError, OSError) as exc:
            raise OSError(f"cannot rebuild the model repository {generated}: {exc}") from exc

    def _remove_generated(self) -> None:
        generated, self._generated = self._generated, None
        if generated is not None:
            self.model_repository = self._template
            shutil.rmtree(generated, ignore_errors=True)

    def _checkpoints(self) -> str:
        """The checkpoint, or each model's, as messages name them."""
        return ", ".join(f"{n}={c}" for n, c in self.served) if self.served else self.model

    def _start_once(self, dist: distribution.TritonDistribution) -> TritonStartupError | None:
        self._stopping.clear()
        self._first_outcome, self._spawn_error = None, None
        self._set_state(TritonState.STARTING, "starting")
        self._supervisor = threading.Thread(
            target=self._supervise, args=(dist,), name="triton-supervisor", daemon=True)
        self._supervisor.start()
        started = time.monotonic()
        with self._cond:
            self._cond.wait_for(lambda: self._first_outcome is not None
                                or self._spawn_error is not None, self.startup_timeout_s)
            run, spawn_error = self._first_outcome, self._spawn_error
        if run is not None and run.ready_at is not None:
            self.log.info("Triton ready in %.1f s (grpc %s, pid %d)",
                          run.ready_at - run.started, self.grpc_url, run.tree.pid)
            return None
        if spawn_error is not None:
            error = TritonStartupError("install", f"cannot start tritonserver: {spawn_error}")
        else:
            error = self._startup_error(run, time.monotonic() - started)
        self._halt(grace_s=2.0)
        return error

    def _startup_error(self, run: _Run | None, waited_s: float) -> TritonStartupError:
        run = run or self._run
        if run is None:
            return TritonStartupError("exited", "tritonserver could not be started")
        run.log.join(2.0)  # the rest of its output explains an exit
        index = [] if run.returncode is not None else readiness.repository_index(
            self.connect_host, self.ports.http)
        return explain(run.log, run.returncode, self.models, self._checkpoints(), waited_s,
                       index)

    # -- supervision -------------------------------------------------------------------
    def _supervise(self, dist: distribution.TritonDistribution) -> None:
        backoff = self.restart_backoff_s
        first = True
        while True:
            with self._cond:
                if self._stopping.is_set():
                    return
                try:
                    run = self._spawn(dist)
                except OSError as exc:
                    run = None
                    self.log.error("cannot start tritonserver: %s", exc)
                    if first:
                        self._spawn_error = str(exc)
                        self._cond.notify_all()
                        return
                self._run = run
            if run is not None:
                self._await_ready(run, first)
                run.tree.wait_exit()
                run.returncode = run.tree.reap()
                run.log.join(5.0)
            with self._cond:
                if first and run is not None and run.ready_at is None:
                    self._first_outcome = run  # start() reports the failure
                self._cond.notify_all()
                if self._stopping.is_set() or (first and (run is None or run.ready_at is None)):
                    return
            why = self._exit_reason(run)
            self._set_state(TritonState.EXITED, why)
            if not self.restart_on_exit:
                self.log.error("Triton exited unexpectedly: %s; not restarting", why)
                return
            if run is not None and run.ready_at is not None and \
                    time.monotonic() - run.ready_at >= _STABLE_S:
                backoff = self.restart_backoff_s
            self.log.warning("Triton exited unexpectedly: %s; restarting in %.1f s", why, backoff)
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
            self.restarts += 1
            first = False
            self._set_state(TritonState.STARTING, f"restart #{self.restarts}")

    def _spawn(self, dist: distribution.TritonDistribution) -> _Run:
        self._ensure_generated()
        ports, bind = self.ports, self.bind_address
        argv = [
            str(dist.server), f"--model-repository={self.model_repository}",
            f"--backend-directory={dist.backend_dir}",
            f"--http-address={bind}", f"--http-port={ports.http}",
            f"--grpc-address={bind}", f"--grpc-port={ports.grpc}",
            f"--metrics-address={bind}", f"--metrics-port={ports.metrics}",
            "--exit-on-error=true", "--strict-readiness=true", *self._extra_args,
        ]
        env = dist.environment(dict(os.environ))
        if self.cpu_threading is not None:
            env.update(self.cpu_threading.environment(env))
        env.update(self._extra_env)
        env.update({"SIGLIP_MODEL": self.model, INSTANCE_ENV: self.instance_id})
        tree = procgroup.spawn(argv, env)
        if tree.watchdog is None:
            self.log.warning("no /bin/sh for the watchdog: Triton's stubs may outlive a crash")
        assert tree.proc.stdout is not None
        log = TritonLog(tree.proc.stdout, self.log.getChild("server"))
        log.start()
        self.log.info("started tritonserver pid %d (grpc %s, http %s, models %s, checkpoint %s)",
                      tree.pid, self.grpc_url, self.http_url, self.model_repository,
                      self._checkpoints())
        return _Run(tree=tree, log=log, started=time.monotonic())

    def _await_ready(self, run: _Run, first: bool) -> None:
        """Polls readiness until ready, exit, stop or (restarts only) startup timeout."""
        host, port = self.connect_host, self.ports.http
        deadline = run.started + self.startup_timeout_s
        while not run.tree.exited() and not self._stopping.is_set():
            if readiness.models_ready(host, port, self.models):
                run.ready_at = time.monotonic()
                with self._cond:
                    if first:
                        self._first_outcome = run
                    self._cond.notify_all()
                self._set_state(TritonState.READY, f"ready in {run.ready_at - run.started:.1f} s")
                return
            if not first and time.monotonic() > deadline:
                self.log.error("restarted Triton not ready after %.0f s: killing it",
                               self.startup_timeout_s)
                run.tree.kill_group()
                return
            self._stopping.wait(0.1)

    def _exit_reason(self, run: _Run | None) -> str:
        if run is None:
            return "spawn failed"
        errors = " | ".join(run.log.errors(3))
        return f"{describe_exit(run.returncode)}" + (f": {errors}" if errors else "")

    def _set_state(self, state: TritonState, detail: str) -> None:
        with self._cond:
            if state is self._state and state is not TritonState.STARTING:
                return
            self._state = state
            self._cond.notify_all()
        for listener in list(self._listeners):
            try:
                listener(state, detail)
            except Exception:
                self.log.exception("Triton state listener failed")


# Started instances, stopped at interpreter exit if their owner did not.
_live: weakref.WeakSet[EmbeddedTriton] = weakref.WeakSet()


@atexit.register
def _stop_all() -> None:
    for triton in list(_live):
        with contextlib.suppress(Exception):
            triton.stop(grace_s=2.0)
