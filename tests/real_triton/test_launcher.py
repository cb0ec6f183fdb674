"""The embedded Triton launcher: start-up errors, supervision, and no orphaned processes.

Lifecycle tests run Triton on a stand-in repository of two trivial python-backend models
named like the real ones (they start in seconds: no torch); the real repository is exercised
by the session's `embedded_triton` (test_triton_models.py) and by the load-failure test here.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import psutil
import pytest
import tritonclient.grpc as grpcclient

from gateway.cpus import available_cpus
from gateway.embedded_triton import distribution, procgroup
from gateway.embedded_triton.errors import explain
from gateway.embedded_triton.launcher import (
    INSTANCE_ENV,
    CpuThreading,
    EmbeddedTriton,
    TritonStartupError,
    TritonState,
)
from gateway.embedded_triton.tritonlog import TritonLog

REPO_ROOT = Path(__file__).resolve().parents[2]
MARKER_ENV = "SIGLIP_TEST_MARKER"

_CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "x", data_type: TYPE_FP32, dims: [ 4 ] }} ]
output [ {{ name: "y", data_type: TYPE_FP32, dims: [ 4 ] }} ]
dynamic_batching {{ }}
instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
"""
_MODEL = """import os
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        time.sleep(float(os.environ.get("STANDIN_LOAD_S", "0")))
        if os.environ.get("STANDIN_FAIL_LOAD") == args["model_name"]:
            raise RuntimeError("stand-in refuses checkpoint " + os.environ["SIGLIP_MODEL"])

    def execute(self, requests):
        return [pb_utils.InferenceResponse(
            [pb_utils.Tensor("y", pb_utils.get_input_tensor_by_name(r, "x").as_numpy() * 2)])
            for r in requests]
"""


@pytest.fixture(scope="module")
def standin_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("standin-repo")
    for name in ("siglip_vision", "siglip_text"):
        (root / name / "1").mkdir(parents=True)
        (root / name / "config.pbtxt").write_text(_CONFIG.format(name=name))
        (root / name / "1" / "model.py").write_text(_MODEL)
    return root


@pytest.fixture(scope="module")
def standin_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Passes the launcher's checkpoint check; the stand-in models never read it."""
    path = tmp_path_factory.mktemp("standin-ckpt")
    (path / "config.json").write_text("{}")
    return path


def _processes_with_env(key: str, value: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(key) == value and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _names(procs: list[psutil.Process]) -> list[str]:
    names = []
    for proc in procs:
        try:
            names.append(Path(proc.cmdline()[0]).name)
        except (psutil.NoSuchProcess, psutil.ZombieProcess, IndexError):
            continue
    return sorted(names)


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not {what} within {timeout_s} s")
        time.sleep(0.1)


def _gone(key: str, value: str) -> bool:
    return not _processes_with_env(key, value)


def _echo(url: str, model: str = "siglip_text") -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput("x", [2, 4], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer(model, [tensor], client_timeout=20)
    np.testing.assert_array_equal(result.as_numpy("y"), x * 2)


# -- start-up errors: immediate, no server started ----------------------------------------
@pytest.mark.parametrize("kind", ["missing", "not_a_checkpoint"])
def test_bad_checkpoint_fails_fast_naming_it(tmp_path, standin_repository, kind):
    checkpoint = tmp_path / "nope"
    if kind == "not_a_checkpoint":
        checkpoint.mkdir()
    triton = EmbeddedTriton(model=str(checkpoint), model_repository=standin_repository)
    started = time.monotonic()
    with pytest.raises(TritonStartupError) as info:
        triton.start()
    assert time.monotonic() - started < 2.0
    assert info.value.reason == "checkpoint"
    assert str(checkpoint) in str(info.value)
    assert not triton.is_running()


def test_port_in_use_fails_fast_naming_it(standin_repository, standin_checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        triton = EmbeddedTriton(model=str(standin_checkpoint), grpc_port=port,
                                model_repository=standin_repository)
        started = time.monotonic()
        with pytest.raises(TritonStartupError) as info:
            triton.start()
    assert time.monotonic() - started < 2.0
    assert info.value.reason == "port_in_use"
    assert f"grpc port {port}" in str(info.value)
    assert not triton.is_running()


def test_missing_model_in_repository_fails_fast(tmp_path, standin_checkpoint):
    with pytest.raises(TritonStartupError) as info:
        EmbeddedTriton(model=str(standin_checkpoint), model_repository=tmp_path).start()
    assert info.value.reason == "repository"
    assert "siglip_vision" in str(info.value)


# -- start-up errors read from Triton ------------------------------------------------------
@pytest.mark.triton
def test_model_load_failure_says_which_model_and_why(standin_repository, standin_checkpoint):
    triton = EmbeddedTriton(model=str(standin_checkpoint), model_repository=standin_repository,
                            env={"STANDIN_FAIL_LOAD": "siglip_text"}, startup_timeout_s=60)
    with pytest.raises(TritonStartupError) as info:
        triton.start()
    message = str(info.value)
    assert info.value.reason == "model_load", message
    # The model's own exception, with the checkpoint it got through SIGLIP_MODEL.
    assert (f"model 'siglip_text' failed to load: Internal: RuntimeError: stand-in refuses "
            f"checkpoint {standin_checkpoint}") in message
    assert "siglip_vision" not in message
    assert any("failed to load" in line for line in info.value.log_tail)
    assert not triton.is_running()
    _wait_for(lambda: _gone(INSTANCE_ENV, triton.instance_id), 5.0, "all processes gone")


@pytest.mark.triton
def test_startup_timeout_is_an_error_not_a_hang(standin_repository, standin_checkpoint):
    triton = EmbeddedTriton(model=str(standin_checkpoint), model_repository=standin_repository,
                            env={"STANDIN_LOAD_S": "120"}, startup_timeout_s=3)
    started = time.monotonic()
    with pytest.raises(TritonStartupError) as info:
        triton.start()
    assert time.monotonic() - started < 3 + 2 + 3  # timeout, stop grace, margin
    assert info.value.reason == "timeout"
    assert "siglip_vision, siglip_text not ready after 3 s" in str(info.value)
    assert triton.state is TritonState.STOPPED
    _wait_for(lambda: _gone(INSTANCE_ENV, triton.instance_id), 5.0, "all processes gone")


def test_log_reading_extracts_reasons_and_skips_cpu_noise():
    lines = [
        'E1127 23:52:49.501909 4196 server.cc:241] "CudaDriverHelper has not been initialized."',
        'I1127 23:53:00.182480 5589 pb_stub.cc:366] "Failed to initialize Python stub: x"',
        "E1127 23:53:00.381451 5589 model_lifecycle.cc:642] \"failed to load 'siglip_text' "
        "version 1: Internal: RuntimeError: checkpoint not found: /x\\n\\nAt:\\n  model.py(9)\"",
        "I1127 23:52:54.028910 4196 model_lifecycle.cc:839] "
        "\"successfully loaded 'siglip_vision'\"",
        "E1128 00:04:08.007233 16833 main.cc:245] \"failed to start GRPC service: Unavailable - "
        "Socket '0.0.0.0:18001' already in use \"",
        "error: creating server: Internal - failed to load all models",
    ]
    log = TritonLog(io.BytesIO("\n".join(lines).encode()), __import__("logging").getLogger("t"))
    log.start()
    log.join(5)
    assert log.load_failures == {"siglip_text": "Internal: RuntimeError: checkpoint not found: /x"}
    assert log.loaded == {"siglip_vision"}
    assert "already in use" in log.service_failures["GRPC"]
    assert not any("CudaDriverHelper" in line for line in log.errors())
    assert log.errors()[-1].startswith("error: creating server")
    error = explain(log, 1, ("siglip_vision", "siglip_text"), "/x", 3.0)
    assert error.reason == "port_in_use"
    log.service_failures.clear()
    error = explain(log, 1, ("siglip_vision", "siglip_text"), "/x", 3.0)
    assert error.reason == "model_load"
    assert ("'siglip_text' failed to load: Internal: RuntimeError: checkpoint not found"
            in str(error))


def test_backend_directory_is_prepared_once(tmp_path):
    first = distribution.locate(cache_dir=tmp_path)
    stub = first.backend_dir / "python" / distribution.STUB_NAME
    assert os.access(stub, os.X_OK)
    assert (first.backend_dir / "python" / "libtriton_python.so").is_file()
    mtime = stub.stat().st_mtime_ns
    second = distribution.locate(cache_dir=tmp_path)
    assert second.backend_dir == first.backend_dir
    assert stub.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [first.backend_dir.name]  # no staging left


# -- supervision and no orphans ------------------------------------------------------------
@pytest.mark.triton
def test_restart_on_exit_brings_killed_triton_back_and_stop_kills_everything(
        standin_repository, standin_checkpoint):
    states: list[TritonState] = []
    triton = EmbeddedTriton(model=str(standin_checkpoint), model_repository=standin_repository,
                            restart_on_exit=True, restart_backoff_s=0.2, startup_timeout_s=60)
    triton.add_state_listener(lambda state, _detail: states.append(state))
    try:
        triton.start()
        url, first_pid = triton.grpc_url, triton.pid
        assert first_pid is not None
        _echo(url)
        before = _processes_with_env(INSTANCE_ENV, triton.instance_id)
        assert _names(before) == sorted(["tritonserver", *[distribution.STUB_NAME] * 2])

        os.kill(first_pid, signal.SIGKILL)
        _wait_for(lambda: triton.restarts == 1 and triton.is_ready(), 60.0, "restarted")
        assert triton.pid not in (None, first_pid)
        assert triton.grpc_url == url  # same ports
        _echo(url, "siglip_vision")
        _wait_for(lambda: not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE
                                  for p in before if _alive(p)), 5.0, "old stubs gone")
        assert states[:4] == [TritonState.STARTING, TritonState.READY, TritonState.EXITED,
                              TritonState.STARTING]
        assert states[-1] is TritonState.READY

        # A server that ignores SIGTERM (stopped here) is killed, group and all, after grace_s.
        os.kill(triton.pid, signal.SIGSTOP)
        stopping = time.monotonic()
        triton.stop(grace_s=1)
        assert time.monotonic() - stopping < 4.0
        assert triton.restarts == 1  # a stop is not a crash
    finally:
        triton.stop(grace_s=5)
    assert not triton.is_running()
    assert triton.state is TritonState.STOPPED
    assert _gone(INSTANCE_ENV, triton.instance_id)
    assert not [p for p in psutil.process_iter(["cmdline"])
                if "siglip-triton-watchdog" in (p.info["cmdline"] or [])
                and str(first_pid) in p.info["cmdline"]]


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running()
    except psutil.Error:
        return False


def _cli(repository: Path, checkpoint: Path, marker: str) -> subprocess.Popen[str]:
    env = {**os.environ, MARKER_ENV: marker,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.embedded_triton", "--model", str(checkpoint),
         "--model-repository", str(repository), "--startup-timeout", "60"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _wait_ready_line(proc: subprocess.Popen[str], timeout_s: float) -> str:
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(proc.stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    assert lines and lines[0].startswith("triton ready"), f"no ready line: {lines}"
    return lines[0]


@pytest.mark.triton
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_cli_killed_or_terminated_leaves_no_triton_behind(standin_repository,
                                                          standin_checkpoint, sig):
    marker = uuid.uuid4().hex
    cli = _cli(standin_repository, standin_checkpoint, marker)
    try:
        line = _wait_ready_line(cli, 60.0)
        _echo(line.split()[3])  # "triton ready: grpc HOST:PORT ..."
        ours = [p for p in _processes_with_env(MARKER_ENV, marker) if p.pid != cli.pid]
        assert "tritonserver" in _names(ours)
        assert _names(ours).count(distribution.STUB_NAME) == 2
        cli.send_signal(sig)
        code = cli.wait(20)
        assert code == (-signal.SIGKILL if sig == signal.SIGKILL else 0)
        _wait_for(lambda: _gone(MARKER_ENV, marker), 5.0, "tritonserver, stubs, watchdog gone")
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()


def test_watchdog_kills_the_group_when_its_owner_is_sigkilled():
    """A group member that is not our child (like a stub whose tritonserver is a zombie) dies
    with us: the death signal alone would only reach the direct child."""
    marker = uuid.uuid4().hex
    code = (
        "import os, sys, time\n"
        "from gateway.embedded_triton import procgroup\n"
        "tree = procgroup.spawn(['/bin/sh', '-c', 'sleep 300 & wait'], dict(os.environ))\n"
        "print('spawned', flush=True)\n"
        "time.sleep(300)\n"
    )
    env = {**os.environ, MARKER_ENV: marker, "PYTHONPATH": str(REPO_ROOT)}
    owner = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert owner.stdout.readline().strip() == "spawned"
        _wait_for(lambda: "sleep" in _names(_processes_with_env(MARKER_ENV, marker)), 5.0,
                  "sleep started")
        owner.kill()
        owner.wait()
        _wait_for(lambda: _gone(MARKER_ENV, marker), 5.0, "the whole group gone")
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def test_processes_with_env_finds_ours():
    assert os.getpid() in procgroup.processes_with_env("PATH", os.environ["PATH"])
    assert procgroup.processes_with_env(MARKER_ENV, uuid.uuid4().hex) == []


# -- the towers' CPU threading, as it reaches the stubs -------------------------------------
@pytest.mark.triton
@pytest.mark.parametrize(("threading", "inherited", "expected"), [
    # Default: threads = the CPUs Triton may use, inter-op 1, OpenMP's passive wait.
    (None, {}, {"SIGLIP_TRITON_CPU_THREADS": str(available_cpus()),
                "SIGLIP_TRITON_CPU_INTEROP_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}),
    # Explicit settings win over the launcher's environment; the operator's OpenMP tuning stays.
    (CpuThreading(threads=3, interop_threads=2),
     {"SIGLIP_TRITON_CPU_THREADS": "7", "OMP_WAIT_POLICY": "ACTIVE"},
     {"SIGLIP_TRITON_CPU_THREADS": "3", "SIGLIP_TRITON_CPU_INTEROP_THREADS": "2",
      "OMP_WAIT_POLICY": "ACTIVE"}),
])
def test_cpu_threading_reaches_the_stubs_environment(
        standin_repository, standin_checkpoint, monkeypatch, threading, inherited, expected):
    for name, value in inherited.items():
        monkeypatch.setenv(name, value)
    kwargs = {} if threading is None else {"cpu_threading": threading}
    with EmbeddedTriton(model=str(standin_checkpoint), model_repository=standin_repository,
                        startup_timeout_s=60, **kwargs) as triton:
        stubs = [p for p in psutil.Process(triton.pid).children(recursive=True)
                 if "stub" in Path(p.cmdline()[0]).name]
        assert len(stubs) == 2
        for stub in stubs:
            env = stub.environ()
            assert {k: env.get(k) for k in expected} == expected
