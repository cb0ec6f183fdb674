"""The serving benchmark's processes: the embedded Triton, the gateway subprocess, checkpoints.

The gateway runs as its own process (`python -m gateway serve ... --triton-url URL`), so the
benchmark's load client and the server do not share one GIL: the served numbers then
include exactly what a deployment pays (a process boundary and two gRPC hops), no less.
Triton is the same embedded server the gateway starts for itself
(gateway.embedded_triton.launcher.EmbeddedTriton), started here once and shared by `direct` and
`served`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
_READY = re.compile(r"siglip-gateway ready: grpc [^:\s]+:(\d+),")
_HTTP = re.compile(r"siglip-gateway ready: .*? http :(\d+),")


def cached_checkpoint(size: str, cache_dir: Path | None = None) -> Path:
    """A random-weight checkpoint of `size`, made once into a cache directory and reused."""
    from siglip_tools.checkpoint import make_random_checkpoint

    root = cache_dir or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    target = root / "siglip-gateway" / f"random-{size}-seed0"
    if (target / "config.json").exists() and (target / "spiece.model").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Written aside and renamed, so an interrupted run never leaves half a checkpoint behind.
    tmp = Path(tempfile.mkdtemp(prefix=f".random-{size}-", dir=target.parent))
    try:
        make_random_checkpoint(tmp, size=size, seed=0)  # type: ignore[arg-type]
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def embedded_triton(checkpoint: Path, startup_timeout_s: float,
                    env: dict[str, str] | None = None,
                    model_repository: Path | None = None) -> Iterator[tuple[str, int | None]]:
    """Starts the embedded Triton on `checkpoint`; yields its gRPC HOST:PORT and its pid."""
    from gateway.embedded_triton.launcher import EmbeddedTriton

    triton = EmbeddedTriton(model=str(checkpoint), startup_timeout_s=startup_timeout_s,
                            env=env, model_repository=model_repository)
    triton.start()
    try:
        yield triton.grpc_url, triton.pid
    finally:
        triton.stop()


class CpuMeter:
    """CPU seconds used by named processes (with their descendants, unless `alone`).

    Shows where a request's CPU goes (load client, gateway, Triton with its model stubs):
    on a machine with few cores every process competes for the same ones. Needs psutil;
    without it the meter reports nothing.
    """

    def __init__(self, pids: dict[str, int | None], alone: tuple[str, ...] = ()) -> None:
        self.pids = {k: v for k, v in pids.items() if v}
        self.alone = alone  # names measured without their descendants
        try:
            import psutil  # noqa: F401
        except ImportError:
            self.pids = {}

    def snapshot(self) -> dict[str, float]:
        import psutil

        out = {}
        for name, pid in self.pids.items():
            total = 0.0
            try:
                root = psutil.Process(pid)
                procs = [root] if name in self.alone else [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            for proc in procs:
                try:
                    t = proc.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
            out[name] = total
        return out


class GatewayProcess:
    """`python -m gateway serve` on a free port, with its log in a file.

    `root` is the source tree the gateway runs from (default: this one); another checkout
    A/B-tests a gateway change against the same Triton, client and checkpoint.
    """

    def __init__(self, checkpoint: Path, triton_url: str, log_path: Path, *,
                 max_in_flight: int, env: dict[str, str] | None = None,
                 root: Path = REPO_ROOT, http: bool = False) -> None:
        self.log_path = log_path
        self.root = root
        self.argv = [sys.executable, "-m", "gateway", "serve", "--model", str(checkpoint),
                     "--host", "127.0.0.1", "--port", "0", "--metrics-port", "-1",
                     "--triton-url", triton_url]
        if http:  # its HTTP/JSON port too (mode served_http), on a free port
            self.argv += ["--http-port", "0"]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SIGLIP_")}
        clean["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
        # One gateway process unless env says otherwise (the default follows the CPUs).
        clean.update({"SIGLIP_MAX_IN_FLIGHT": str(max_in_flight),
                      "SIGLIP_SHUTDOWN_GRACE_S": "2", "SIGLIP_PROCESSES": "1"})
        clean.update(env or {})
        self.env = clean
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.http_port: int | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout_s: float) -> GatewayProcess:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=self.root, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = _READY.search(self.log())
            if match:
                self.port = int(match.group(1))
                http = _HTTP.search(self.log())
                self.http_port = int(http.group(1)) if http else None
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"gateway not ready within {timeout_s} s:\n{self.log()[-4000:]}")

    def stop(self, grace_s: float = 5.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
