"""Shared helpers of the reliability tests: gateways (in-process and as a subprocess), TLS
material made at test time, RSS measurement, polling.

Everything listens on 127.0.0.1 with ports the OS picks; nothing reads the test process's
SIGLIP_* environment (the subprocess gets a clean one plus what the test passes).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.client import ClientTLS, SiglipClient
from gateway.config import Settings
from gateway.observability.tracing import Tracing
from gateway.server import GatewayServer
from siglip.v1 import siglip_pb2 as pb

REPO_ROOT = Path(__file__).resolve().parents[2]
READINESS_SERVICES = ("", "siglip.v1.SiglipService")
MiB = 1024 * 1024


# --- polling -------------------------------------------------------------------------------

async def wait_until(predicate: Callable[[], Awaitable[bool] | bool], timeout_s: float,
                     interval_s: float = 0.02, what: str = "condition") -> float:
    """Polls until ``predicate`` is true; returns the seconds it took, fails after ``timeout_s``."""
    start = time.monotonic()
    while True:
        value = predicate()
        if asyncio.iscoroutine(value) or isinstance(value, asyncio.Future):
            value = await value
        if value:
            return time.monotonic() - start
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what} not reached within {timeout_s} s")
        await asyncio.sleep(interval_s)


async def health_status(channel: grpc.aio.Channel, service: str = "",
                        timeout_s: float = 1.0) -> str:
    """SERVING / NOT_SERVING / ..., or the gRPC code name when the check itself fails."""
    try:
        response = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


# --- in-process gateway --------------------------------------------------------------------

def gateway_settings(checkpoint: Path | str, triton_url: str, **overrides: object) -> Settings:
    """Test settings: loopback, free ports, no /metrics or HTTP listener unless asked for
    (``http_port=0``)."""
    base: dict[str, object] = {"model": str(checkpoint), "host": "127.0.0.1", "port": 0,
                               "metrics_port": -1, "http_port": -1, "triton_url": triton_url,
                               "shutdown_grace_s": 2.0}
    base.update(overrides)
    return Settings.from_env({}, **base)


@dataclass
class InProcessGateway:
    server: GatewayServer
    settings: Settings
    port: int
    metrics_port: int | None
    http_port: int | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self) -> str:
        scheme = "https" if self.settings.tls_cert else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    def client(self, **kwargs: object) -> SiglipClient:
        return SiglipClient(self.target, **kwargs)  # type: ignore[arg-type]

    @property
    def in_flight(self) -> int:
        return self.server.admission.in_flight

    def gauge(self, name: str) -> float | None:
        return self.server.metrics.registry.get_sample_value(name)


@contextlib.asynccontextmanager
async def running_gateway(checkpoint: Path | str, triton_url: str, *, wait_ready: bool = True,
                          ready_timeout_s: float = 15.0, shutdown_grace_s: float = 0.5,
                          tracing: Tracing | None = None,
                          **overrides: object) -> AsyncIterator[InProcessGateway]:
    """A GatewayServer in this process and event loop, ready (Triton seen) unless told not."""
    settings = gateway_settings(checkpoint, triton_url, **overrides)
    server = GatewayServer(settings, triton_url, tracing=tracing)
    bound = await server.start()
    try:
        if wait_ready:
            await server.wait_ready(ready_timeout_s)
        yield InProcessGateway(server, settings, bound.port, bound.metrics_port, bound.http_port)
    finally:
        await server.shutdown(shutdown_grace_s)


# --- subprocess gateway --------------------------------------------------------------------

_READY_LINE = re.compile(
    r"siglip-gateway ready: grpc [^:\s]+:(\d+), metrics :(\S+), http :(\S+),")


class GatewayProcess:
    """``python -m gateway serve`` (or ``python -c CODE serve ...``) with its log in a file.

    ``start()`` returns once the ready line is logged (Triton seen, health SERVING) and knows the
    ports the server picked. ``code`` replaces ``-m gateway`` with a Python snippet that must end
    by running ``gateway.cli.main`` (used to start deliberately broken variants).
    """

    def __init__(self, checkpoint: Path | str, triton_url: str, log_path: Path, *,
                 env: Mapping[str, str] | None = None, metrics: bool = False,
                 code: str | None = None, processes: int = 1, port: int = 0,
                 http: bool = False) -> None:
        self.log_path = log_path
        entry = ["-c", code] if code else ["-m", "gateway"]
        # One process unless asked (the default follows the machine's CPUs).
        self.argv = [sys.executable, *entry, "serve", "--model", str(checkpoint),
                     "--host", "127.0.0.1", "--port", str(port), "--processes", str(processes),
                     "--metrics-port", "0" if metrics else "-1",
                     "--http-port", "0" if http else "-1", "--triton-url", triton_url]
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SIGLIP_")}
        clean["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
        # The gateway needs no torch, but transformers (its tokenizer) imports torch whenever it
        # is installed, as it is here for the embedded Triton: +230 MB RSS and seconds of start.
        clean.setdefault("USE_TORCH", "0")
        clean.update(env or {})
        self.env = clean
        self.proc: subprocess.Popen[bytes] | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
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

    def spawn(self) -> subprocess.Popen[bytes]:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv, cwd=REPO_ROOT, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT)
        return self.proc

    async def start(self, timeout_s: float = 30.0) -> GatewayProcess:
        """Spawns the process and waits for its ready line."""
        self.spawn()
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            match = _READY_LINE.search(self.log())
            if match:
                self.port = int(match.group(1))
                self.metrics_port = None if match.group(2) == "None" else int(match.group(2))
                self.http_port = None if match.group(3) == "None" else int(match.group(3))
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited with {self.proc.returncode}:\n{self.log()}")
            await asyncio.sleep(0.05)
        self.kill()
        raise AssertionError(f"gateway not ready within {timeout_s} s:\n{self.log()}")

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout_s: float) -> int:
        """The exit code, polled without blocking the event loop; fails after ``timeout_s``."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway still running after {timeout_s} s:\n{self.log()}")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def worker_pids(self) -> list[int]:
        """The pids of its worker processes (``--processes N`` > 1), live now."""
        found = []
        for child in psutil.Process(self.pid).children():
            try:
                if "gateway.processes.worker" in child.cmdline():
                    found.append(child.pid)
            except psutil.Error:
                pass
        return sorted(found)

    def descendants(self) -> list[int]:
        return [c.pid for c in psutil.Process(self.pid).children(recursive=True)]


def alive(pids: list[int]) -> list[int]:
    """The pids among ``pids`` that still run (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.NoSuchProcess:
            pass
    return out


def connection_owners(port: int, pids: list[int]) -> dict[int, int]:
    """For this process's TCP connections to ``port``: how many each of ``pids`` accepted."""
    mine = {c.laddr.port for c in psutil.Process().net_connections("tcp")
            if c.raddr and c.raddr.port == port}
    owners: dict[int, int] = {}
    for pid in pids:
        for c in psutil.Process(pid).net_connections("tcp"):
            if c.laddr.port == port and c.raddr and c.raddr.port in mine:
                owners[pid] = owners.get(pid, 0) + 1
    return owners


# --- TLS material --------------------------------------------------------------------------

@dataclass(frozen=True)
class TLSMaterial:
    """PEM bytes and the files they were written to (for the server's settings)."""

    ca_cert: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes
    ca_cert_path: Path
    server_cert_path: Path
    server_key_path: Path

    def client_tls(self, with_certificate: bool = True) -> ClientTLS:
        if not with_certificate:
            return ClientTLS(root_certificates=self.ca_cert)
        return ClientTLS(self.ca_cert, self.client_key, self.client_cert)


def make_tls_material(directory: Path) -> TLSMaterial:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def issue(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
              issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool,
              usage: x509.ObjectIdentifier | None = None,
              san: list[x509.GeneralName] | None = None) -> x509.Certificate:
        builder = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(issuer)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("siglip-test-ca", ca_key, name("siglip-test-ca"), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = issue("localhost", server_key, ca.subject, ca_key, ca=False,
                   usage=ExtendedKeyUsageOID.SERVER_AUTH,
                   san=[x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = issue("siglip-test-client", client_key, ca.subject, ca_key, ca=False,
                   usage=ExtendedKeyUsageOID.CLIENT_AUTH)

    pem = serialization.Encoding.PEM
    material = TLSMaterial(
        ca_cert=ca.public_bytes(pem), server_cert=server.public_bytes(pem),
        server_key=key_pem(server_key), client_cert=client.public_bytes(pem),
        client_key=key_pem(client_key), ca_cert_path=directory / "ca.pem",
        server_cert_path=directory / "server.pem", server_key_path=directory / "server.key")
    material.ca_cert_path.write_bytes(material.ca_cert)
    material.server_cert_path.write_bytes(material.server_cert)
    material.server_key_path.write_bytes(material.server_key)
    material.server_key_path.chmod(0o600)
    return material


# --- memory --------------------------------------------------------------------------------

def rss_bytes(pid: int | None = None) -> int:
    return psutil.Process(pid or os.getpid()).memory_info().rss


class PeakRSS:
    """Samples a process's RSS from a thread every ``interval_s``; ``growth`` is peak - start.

    A thread (not ru_maxrss) because the test process already peaked higher while it built the
    checkpoint with torch, which would hide any later spike.
    """

    def __init__(self, pid: int | None = None, interval_s: float = 0.002) -> None:
        self._process = psutil.Process(pid or os.getpid())
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.start_rss = 0
        self.peak_rss = 0
        self.samples = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)
            self.samples += 1
            self._stop.wait(self._interval_s)

    @property
    def growth(self) -> int:
        return self.peak_rss - self.start_rss

    def __enter__(self) -> PeakRSS:
        self.start_rss = self.peak_rss = self._process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self._process.memory_info().rss)


# --- requests ------------------------------------------------------------------------------

def embedding_dim(checkpoint: Path | str) -> int:
    """The checkpoint's embedding size, which the fake Triton must answer with."""
    from gateway.core.model_meta import load_model_meta

    return load_model_meta(str(checkpoint)).embedding_dim


def small_rgb(side: int = 16, seed: int = 0) -> np.ndarray:
    """Random uint8 RGB pixels, side x side."""
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def small_raw_image(side: int = 16, seed: int = 0) -> pb.Image:
    """A tiny raw RGB image: no decoding cost, so tests measure the gateway, not Pillow."""
    return pb.Image(raw=pb.RawImage(rgb=small_rgb(side, seed).tobytes(), width=side, height=side))


def classify_request(labels: tuple[str, ...] = ("cat", "dog"), seed: int = 0,
                     ) -> pb.ClassifyRequest:
    return pb.ClassifyRequest(images=[small_raw_image(seed=seed)], labels=list(labels))
