"""Load tools: payload generator, ghz configs, and the Python load driver.

The driver runs against an in-process grpc.aio server with a fake SiglipService
(canned answers; Classify fails with RESOURCE_EXHAUSTED every K-th call), so the
expected status mix is exact. Timing is only checked with loose bounds.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import json
import os
import socket
import sys
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from PIL import Image

from siglip.v1 import siglip_pb2 as pb
from siglip.v1 import siglip_pb2_grpc as pb_grpc
from siglip_tools import load as loadgen
from siglip_tools.ghz import PERCENTILES, parse_duration

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)

K = 5  # Classify aborts every K-th call
REQUEST_TYPES = {
    "classify_1img_10labels.json": pb.ClassifyRequest,
    "classify_raw_1img_10labels.json": pb.ClassifyRequest,
    "embed_images.json": pb.EmbedRequest,
    "embed_texts.json": pb.EmbedRequest,
    "score.json": pb.ScoreRequest,
    "embed_stream.json": pb.EmbedStreamRequest,  # a JSON array of these
}


def _load_make_payloads():
    spec = importlib.util.spec_from_file_location(
        "make_payloads", ROOT / "loadtest/make_payloads.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_payloads = _load_make_payloads()


class FakeSiglip(pb_grpc.SiglipServiceServicer):
    def __init__(self) -> None:
        self.classify_calls = 0
        self.stream_messages = 0
        self.embed_sizes: list[int] = []
        self.delay = 0.0  # added to Embed and Score
        self.info_delay = 0.0

    async def Classify(self, request, context):
        self.classify_calls += 1
        if self.classify_calls % K == 0:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests in flight")
        scores = [pb.LabelScore(label=label, probability=0.5) for label in request.labels]
        return pb.ClassifyResponse(results=[pb.Classification(scores=scores)] * len(request.images))

    async def Embed(self, request, context):
        self.embed_sizes.append(len(request.inputs))
        await asyncio.sleep(self.delay)
        return pb.EmbedResponse(embeddings=[pb.Embedding(values=[0.0] * 8)] * len(request.inputs))

    async def EmbedStream(self, request_iterator, context):
        async for request in request_iterator:
            self.stream_messages += 1
            if not request.inputs:
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "inputs: empty")
            yield pb.EmbedStreamResponse(
                embeddings=[pb.Embedding(values=[1.0])] * len(request.inputs)
            )

    async def Score(self, request, context):
        await asyncio.sleep(self.delay)
        n, m = len(request.images), len(request.texts)
        return pb.ScoreResponse(num_images=n, num_texts=m, probabilities=[0.5] * (n * m))

    async def GetModelInfo(self, request, context):
        await asyncio.sleep(self.info_delay)
        return pb.GetModelInfoResponse(model_id="fake")


@pytest.fixture
async def fake_server():
    servicer = FakeSiglip()
    server = grpc.aio.server()
    pb_grpc.add_SiglipServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=None)


@pytest.fixture(scope="module")
def payload_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("payloads")
    make_payloads.write_payloads(out, seed=0)
    return out


def _data(payload_dir: Path, name: str):
    return json.loads((payload_dir / name).read_text())


def _check_accounting(report: dict) -> None:
    assert report["count"] == sum(report["statusCodeDistribution"].values())
    errors = report["count"] - report["statusCodeDistribution"].get("OK", 0)
    assert sum(report["errorDistribution"].values()) == errors
    assert json.loads(json.dumps(report)) == report  # JSON-ready as is


# --- payloads and configs -------------------------------------------------------------


def test_make_payloads_are_valid_requests(payload_dir: Path, tmp_path: Path) -> None:
    assert sorted(p.name for p in payload_dir.iterdir()) == sorted(REQUEST_TYPES)
    for path in payload_dir.iterdir():  # fits a ConfigMap (README), but for the raw-pixel one
        assert "raw" in path.name or path.stat().st_size < 1024 * 1024, path.name
    for name, cls in REQUEST_TYPES.items():
        value = _data(payload_dir, name)
        items = value if name == "embed_stream.json" else [value]
        assert isinstance(items, list) and items
        for item in items:
            json_format.ParseDict(item, cls())  # raises on any unknown field / bad base64

    classify = json_format.ParseDict(
        _data(payload_dir, "classify_1img_10labels.json"), pb.ClassifyRequest()
    )
    assert len(classify.images) == 1 and len(classify.labels) == 10
    with Image.open(io.BytesIO(classify.images[0].data)) as img:
        assert (img.format, img.size, img.mode) == ("JPEG", (640, 480), "RGB")
    raw = json_format.ParseDict(
        _data(payload_dir, "classify_raw_1img_10labels.json"), pb.ClassifyRequest()
    )
    r = raw.images[0].raw
    assert len(r.rgb) == r.width * r.height * 3
    score = json_format.ParseDict(_data(payload_dir, "score.json"), pb.ScoreRequest())
    assert (len(score.images), len(score.texts)) == (2, 5)
    images = json_format.ParseDict(_data(payload_dir, "embed_images.json"), pb.EmbedRequest())
    assert [i.WhichOneof("input") for i in images.inputs] == ["image"] * 4
    assert len({i.image.data for i in images.inputs}) == 4  # distinct images
    texts = json_format.ParseDict(_data(payload_dir, "embed_texts.json"), pb.EmbedRequest())
    assert [i.WhichOneof("input") for i in texts.inputs] == ["text"] * 16

    # Deterministic: the same seed writes the same bytes.
    again = tmp_path / "again"
    make_payloads.write_payloads(again, seed=0)
    for name in REQUEST_TYPES:
        assert (again / name).read_bytes() == (payload_dir / name).read_bytes(), name


# ghz's config-file keys (runner.Config), for catching typos in loadtest/ghz/*.json.
GHZ_KEYS = set(
    """proto protoset call import-paths cacert cert key cname skipTLS insecure authority async
    rps concurrency total timeout duration max-duration duration-stop data data-file binary-file
    metadata metadata-file stream-interval reflect-metadata output format skipFirst connections
    connect-timeout keepalive name tags cpus debug host lb-strategy enable-compression""".split()
)


def test_ghz_configs_are_consistent() -> None:
    configs = sorted((ROOT / "loadtest/ghz").glob("*.json"))
    calls = set()
    for path in configs:
        cfg = json.loads(path.read_text())
        assert set(cfg) <= GHZ_KEYS, (path.name, set(cfg) - GHZ_KEYS)
        method = loadgen.resolve_method(cfg["call"])
        calls.add(method.name)
        data_file = Path(cfg["data-file"])
        assert data_file.parent == Path("loadtest/ghz/data") and data_file.name in REQUEST_TYPES
        expected = REQUEST_TYPES[data_file.name]
        assert method.input_type.full_name == expected.DESCRIPTOR.full_name, path.name
        assert cfg["insecure"] is True and cfg["host"].endswith(":50051")
        for key in ("duration", "timeout", "connect-timeout"):
            assert parse_duration(cfg[key]) > 0
        if "proto" in cfg:
            assert (ROOT / cfg["proto"]).is_file()
            assert all((ROOT / p).is_dir() for p in cfg["import-paths"])
    assert calls == {"Classify", "Embed", "Score", "EmbedStream"}


def test_k8s_ghz_job_matches_payloads_and_service() -> None:
    yaml = pytest.importorskip("yaml")
    job = yaml.safe_load((ROOT / "loadtest/k8s/ghz-job.yaml").read_text())
    assert job["kind"] == "Job"
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    *flags, target = container["args"]
    opts = dict(f.removeprefix("--").partition("=")[::2] for f in flags)
    assert set(opts) <= GHZ_KEYS, set(opts) - GHZ_KEYS
    assert loadgen.resolve_method(opts["call"]).name == "Classify"
    mount = container["volumeMounts"][0]["mountPath"]
    data_file = Path(opts["data-file"])
    assert str(data_file.parent) == mount and data_file.name in REQUEST_TYPES
    assert target.startswith("dns:///siglip-gateway-headless.") and target.endswith(":50051")
    assert opts["lb-strategy"] == "round_robin" and parse_duration(opts["duration"]) > 0


def test_parse_duration_and_resolve_method() -> None:
    assert parse_duration("10s") == 10 and parse_duration("1m30s") == 90
    assert parse_duration("250ms") == pytest.approx(0.25) and parse_duration("0") == 0
    assert parse_duration(2) == 2 and parse_duration("1.5") == 1.5
    for bad in ("10 s", "s", "1x", "1m-2s"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    for call in (
        "Classify",
        "siglip.v1.SiglipService/Classify",
        "siglip.v1.SiglipService.Classify",
        "/siglip.v1.SiglipService/Classify",
        "SiglipService/Classify",
    ):
        assert loadgen.resolve_method(call).full_name == "siglip.v1.SiglipService.Classify"
    for bad in ("Classif", "other.Service/Classify"):
        with pytest.raises(ValueError):
            loadgen.resolve_method(bad)


# --- the driver against the fake server ----------------------------------------------


async def test_unary_counts_every_call_with_the_expected_mix(fake_server, payload_dir) -> None:
    servicer, host = fake_server
    data = _data(payload_dir, "classify_1img_10labels.json")
    cfg = loadgen.LoadConfig(
        host=host, call="Classify", data=data, total=100, concurrency=8, connections=2
    )
    report = await loadgen.run_load(cfg)

    assert servicer.classify_calls == 100
    assert report["count"] == 100
    assert report["statusCodeDistribution"] == {"OK": 80, "ResourceExhausted": 20}
    [(message, n)] = report["errorDistribution"].items()
    assert n == 20 and message.startswith("rpc error: code = ResourceExhausted desc = ")
    _check_accounting(report)
    dist = report["latencyDistribution"]
    assert [d["percentage"] for d in dist] == list(PERCENTILES)
    lat = [d["latency"] for d in dist]
    assert all(isinstance(v, int) and v > 0 for v in lat) and lat == sorted(lat)
    assert 0 < report["fastest"] <= lat[0] <= lat[-1] <= report["slowest"]
    assert sum(b["count"] for b in report["histogram"]) == 80
    assert report["endReason"] == "normal" and report["total"] > 0 and report["rps"] > 0


async def test_unary_array_data_is_sent_round_robin(fake_server) -> None:
    servicer, host = fake_server
    data = [{"inputs": [{"text": "a"}] * size} for size in (1, 2, 3)]
    report = await loadgen.run_load(
        loadgen.LoadConfig(host=host, call="Embed", data=data, total=9, concurrency=3)
    )
    assert report["statusCodeDistribution"] == {"OK": 9}
    assert sorted(servicer.embed_sizes) == [1, 1, 1, 2, 2, 2, 3, 3, 3]


async def test_stream_sends_all_messages_per_call(fake_server, payload_dir) -> None:
    servicer, host = fake_server
    data = _data(payload_dir, "embed_stream.json")
    cfg = loadgen.LoadConfig(
        host=host, call="siglip.v1.SiglipService/EmbedStream", data=data, total=10, concurrency=3
    )
    report = await loadgen.run_load(cfg)
    assert report["count"] == 10 and report["statusCodeDistribution"] == {"OK": 10}
    assert servicer.stream_messages == 10 * len(data)
    _check_accounting(report)
    assert len(report["latencyDistribution"]) == len(PERCENTILES)


async def test_stream_errors_are_counted(fake_server) -> None:
    _, host = fake_server
    data = [{"inputs": [{"text": "ok"}]}, {"inputs": []}]
    cfg = loadgen.LoadConfig(host=host, call="EmbedStream", data=data, total=6, concurrency=2)
    report = await loadgen.run_load(cfg)
    assert report["statusCodeDistribution"] == {"InvalidArgument": 6}
    assert report["latencyDistribution"] == [] and report["fastest"] == 0
    _check_accounting(report)


async def test_deadline_exceeded(fake_server) -> None:
    servicer, host = fake_server
    servicer.info_delay = 1.0
    cfg = loadgen.LoadConfig(host=host, call="GetModelInfo", total=4, concurrency=4, timeout=0.1)
    report = await loadgen.run_load(cfg)
    assert report["statusCodeDistribution"] == {"DeadlineExceeded": 4}
    _check_accounting(report)


async def test_rps_limit(fake_server, payload_dir) -> None:
    _, host = fake_server
    rps, duration = 40, 1.5
    cfg = loadgen.LoadConfig(
        host=host,
        call="Embed",
        data=_data(payload_dir, "embed_texts.json"),
        duration=duration,
        rps=rps,
        concurrency=4,
        duration_stop="wait",
    )
    report = await loadgen.run_load(cfg)
    # Call i starts at i/rps, so at most rps*duration calls start; the lower bound is loose.
    assert rps * duration * 0.5 <= report["count"] <= rps * duration
    assert report["statusCodeDistribution"] == {"OK": report["count"]}
    assert report["endReason"] == "timeout"
    _check_accounting(report)


@pytest.mark.parametrize("stop", ["close", "wait", "ignore"])
async def test_duration_run_stops_by_itself(fake_server, payload_dir, stop) -> None:
    servicer, host = fake_server
    servicer.delay = 0.05
    cfg = loadgen.LoadConfig(
        host=host,
        call="Score",
        data=_data(payload_dir, "score.json"),
        duration=0.5,
        concurrency=4,
        duration_stop=stop,
    )
    started = time.monotonic()
    report = await loadgen.run_load(cfg)
    assert time.monotonic() - started < 10
    assert report["endReason"] == "timeout" and report["total"] >= 0.5e9
    allowed = {"OK", "Canceled"} if stop == "close" else {"OK"}
    assert set(report["statusCodeDistribution"]) <= allowed
    assert report["statusCodeDistribution"].get("OK", 0) > 0
    _check_accounting(report)


# --- the command line ----------------------------------------------------------------


async def _cli(*args: str) -> tuple[int, str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "siglip_tools.load",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_cli_json_report(fake_server, payload_dir, tmp_path) -> None:
    _, host = fake_server
    out = tmp_path / "report.json"
    rc, _, err = await _cli(
        "--call",
        "Classify",
        "-D",
        str(payload_dir / "classify_1img_10labels.json"),
        "-n",
        "40",
        "-c",
        "4",
        "--connections",
        "2",
        "-O",
        "json",
        "-o",
        str(out),
        host,
    )
    assert rc == 0, err
    report = json.loads(out.read_text())
    assert report["count"] == 40
    assert report["statusCodeDistribution"] == {"OK": 32, "ResourceExhausted": 8}
    assert report["options"]["concurrency"] == 4 and report["options"]["timeout"] == 20 * 10**9
    _check_accounting(report)
    assert "done: 40 calls, 8 errors" in err


async def test_cli_summary_and_ghz_config(fake_server, payload_dir) -> None:
    _, host = fake_server
    # A repo config, with host, payload and size overridden on the command line (-z 0 drops
    # its duration, as in ghz, so that -n counts).
    rc, out, err = await _cli(
        "--config",
        "loadtest/ghz/classify.json",
        "-z",
        "0",
        "-n",
        "10",
        "-D",
        str(payload_dir / "classify_1img_10labels.json"),
        "-q",
        host,
    )
    assert rc == 0, err
    assert "Summary:" in out and "Count:\t10" in out
    assert "[OK]\t8 responses" in out and "[ResourceExhausted]\t2 responses" in out
    assert "Latency distribution:" in out and "done:" not in err


def test_cli_errors() -> None:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--call", "GetModelInfo", "-n", "1", "--connect-timeout", "300ms", f"127.0.0.1:{port}"]
    assert loadgen.main([*args, "-q"]) == 1
    assert loadgen.main(["--call", "Nope", "-n", "1", "-q", "127.0.0.1:1"]) == 2
    assert loadgen.main(["--call", "Classify", "-d", '{"nope": 1}', "-q", "127.0.0.1:1"]) == 2
    assert loadgen.main(["--call", "Classify", "-q"]) == 2  # no host
    assert loadgen.main(["--call", "Classify", "-c", "0", "-q", "127.0.0.1:1"]) == 2
    assert loadgen.main(["--call", "Classify", "-z", "ten", "-q", "127.0.0.1:1"]) == 2
