#!/usr/bin/env python3
"""Which ASGI stack for the HTTP API: the same embed-like route on each, side by side.

    python bench/http_stack.py --seconds 5 --concurrency 32 [--python VENV/bin/python ...]

Each stack serves POST /v1/embed in its own process (one core's worth of Python, as one gateway
process): the body {"inputs": [{"text": ...}]} is parsed, and a {"embeddings": [{"values":
[D floats]}]} answer (float32 values, as the gateway sends) is encoded; no model, so what is
measured is the stack's own cost per request. The load is one aiohttp closed loop in this
process. Reported per stack: requests/s and the server's CPU ms per request (psutil), the
latter less sensitive to other work on a shared machine. Stacks:
  uvicorn-starlette-json    uvicorn (h11) + a Starlette route, stdlib json
  uvicorn-starlette-orjson  the same with orjson (numpy float32 rows): what gateway/http/ runs
  uvicorn-httptools-orjson  the same on uvicorn's httptools parser (pip: httptools)
  uvicorn-fastapi           uvicorn (h11) + FastAPI with pydantic request/response models
  granian-starlette-orjson  granian (Rust HTTP server) + the orjson Starlette route, when
                            --granian-python names a Python with granian and orjson
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

APP = r'''
import json, os, numpy as np
D = int(os.environ.get("DIM", "768"))
ROW = (np.arange(1, D + 1, dtype=np.float32) / np.float32(D * 7.3)).astype(np.float32)
KIND = os.environ["KIND"]
EMBEDS = np.stack([ROW])

def answer(texts):
    return {"embeddings": [{"values": ROW.tolist()} for _ in texts]}

if KIND == "fastapi":
    from fastapi import FastAPI
    from pydantic import BaseModel

    class Input(BaseModel):
        text: str | None = None

    class EmbedRequest(BaseModel):
        inputs: list[Input]

    class Embedding(BaseModel):
        values: list[float]

    class EmbedResponse(BaseModel):
        embeddings: list[Embedding]

    app = FastAPI()

    @app.post("/v1/embed", response_model=EmbedResponse)
    async def embed(request: EmbedRequest) -> EmbedResponse:
        return EmbedResponse(**answer([i.text for i in request.inputs]))
else:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    if KIND == "orjson":
        import orjson

        async def embed(request):
            body = orjson.loads(await request.body())
            rows = np.ascontiguousarray(np.repeat(EMBEDS, len(body["inputs"]), axis=0))
            out = {"embeddings": [{"values": row} for row in rows]}
            return Response(orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY),
                            media_type="application/json")
    else:
        async def embed(request):
            body = json.loads(await request.body())
            out = answer([i["text"] for i in body["inputs"]])
            return Response(json.dumps(out, separators=(",", ":")).encode(),
                            media_type="application/json")

    app = Starlette(routes=[Route("/v1/embed", embed, methods=["POST"])])
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(stack: str, python: str, port: int, workdir: Path, dim: int) -> subprocess.Popen:
    (workdir / "stack_app.py").write_text(APP)
    kind = next(k for k in ("fastapi", "orjson", "json") if stack.endswith(k))
    env = {**os.environ, "KIND": kind, "DIM": str(dim),
           "PYTHONPATH": os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")])}
    if stack.startswith("granian"):
        argv = [python, "-m", "granian", "--interface", "asgi", "--host", "127.0.0.1",
                "--port", str(port), "--workers", "1", "--no-ws", "--log-level", "warning",
                "stack_app:app"]
    else:
        argv = [python, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port),
                "--no-access-log", "--log-level", "warning", "--loop", "asyncio",
                "--http", "httptools" if "httptools" in stack else "h11", "stack_app:app"]
    return subprocess.Popen(argv, env=env, cwd=workdir)


async def wait_up(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


async def load(port: int, concurrency: int, seconds: float, warmup: float) -> tuple[int, float]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/embed"
    counter = [0]
    stop = asyncio.Event()
    measuring = [False]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as s:
        async def worker(w: int) -> None:
            i = 0
            while not stop.is_set():
                i += 1
                body = json.dumps({"inputs": [{"text": f"text {w} {i}"}]}).encode()
                async with s.post(url, data=body,
                                  headers={"Content-Type": "application/json"}) as r:
                    json.loads(await r.read())
                    assert r.status == 200
                if measuring[0]:
                    counter[0] += 1  # one event loop: no lock needed; counted after the call

        tasks = [asyncio.create_task(worker(w)) for w in range(concurrency)]
        await asyncio.sleep(warmup)
        measuring[0] = True
        start = time.perf_counter()
        await asyncio.sleep(seconds)
        measuring[0] = False
        elapsed = time.perf_counter() - start
        stop.set()
        await asyncio.gather(*tasks)
    return counter[0], elapsed


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--dim", type=int, default=768, help="values per embedding (base: 768)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--granian-python", help="a Python with granian and starlette installed")
    args = p.parse_args()
    import psutil

    stacks = {"uvicorn-starlette-json": sys.executable,
              "uvicorn-starlette-orjson": sys.executable,
              "uvicorn-httptools-orjson": sys.executable, "uvicorn-fastapi": sys.executable}
    if args.granian_python:
        stacks["granian-starlette-orjson"] = args.granian_python
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"http-stack-{os.getpid()}"
    workdir.mkdir(exist_ok=True)
    results: dict[str, list[dict[str, float]]] = {s: [] for s in stacks}
    for _ in range(args.rounds):
        for stack, python in stacks.items():
            port = free_port()
            proc = start(stack, python, port, workdir, args.dim)
            try:
                asyncio.run(wait_up(port))
                tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(True)]
                cpu0 = sum(sum(t.cpu_times()[:2]) for t in tree)
                n, elapsed = asyncio.run(load(port, args.concurrency, args.seconds,
                                              args.warmup))
                cpu1 = sum(sum(t.cpu_times()[:2]) for t in tree)
            finally:
                proc.terminate()
                proc.wait(10)
            # CPU over warm-up and window alike; requests of the window only: an upper bound,
            # the same for every stack.
            total = n * (args.seconds + args.warmup) / args.seconds
            results[stack].append({"requests_per_s": n / elapsed,
                                   "server_cpu_ms_per_request": (cpu1 - cpu0) / total * 1e3})
            print(f"{stack:<18} {n / elapsed:8.1f} req/s  "
                  f"{(cpu1 - cpu0) / total * 1e3:6.3f} server CPU ms/request", flush=True)
    print(json.dumps({"args": vars(args), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
