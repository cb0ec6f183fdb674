"""The request log line and the request id, against the fake Triton.

In process: the JSON formatter (gateway/observability/logs.py) on the gateway's loggers, one
line per request with its fields, the request id echoed (trailing metadata), generated when
absent or unsafe, the same in a failure's RequestInfo detail, and no label text or image bytes
in the line. As a subprocess: ``SIGLIP_LOG_FORMAT=json`` makes every line of the log JSON, and
tracing turned on without the OpenTelemetry exporter stops the start with one clear line.
"""

from __future__ import annotations

import io
import json
import logging

import grpc
import pytest
import pytest_asyncio
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from gateway.model_specs import default_name
from gateway.observability.logs import JsonFormatter
from siglip.v1 import siglip_pb2 as pb
from siglip.v1 import siglip_pb2_grpc as pb_grpc
from tests.support.gateway_harness import GatewayProcess, running_gateway, small_raw_image
from tests.support.otlp import in_memory_tracing

pytestmark = pytest.mark.timeout(90)

SECRET_LABEL = "zebra-crossing-7f3a"  # must never appear in a log line


@pytest_asyncio.fixture(scope="module")
async def stub(tiny_checkpoint, fake):
    tracing, _ = in_memory_tracing()
    async with running_gateway(tiny_checkpoint, fake.url, tracing=tracing) as gw:
        async with grpc.aio.insecure_channel(gw.target) as channel:
            yield pb_grpc.SiglipServiceStub(channel)


@pytest_asyncio.fixture(scope="module")
async def http_gateway(tiny_checkpoint, fake):
    tracing, exporter = in_memory_tracing()
    async with running_gateway(tiny_checkpoint, fake.url, tracing=tracing, http_port=0) as gw:
        yield gw, exporter


@pytest.fixture
def lines(fake):
    """The JSON lines the gateway's loggers write during the test."""
    fake.error = None
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("gateway")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def request_lines(records: list[dict]) -> list[dict]:
    return [r for r in records if r["logger"] == "gateway.requests"]


async def test_one_json_line_per_request_with_its_fields_and_no_content(stub, lines,
                                                                        tiny_checkpoint):
    image = small_raw_image(seed=3)
    request = pb.ClassifyRequest(images=[image, image], labels=[SECRET_LABEL, "b", "c"])
    call = stub.Classify(request, timeout=10)
    await call
    echoed = dict(await call.trailing_metadata())["x-request-id"]
    [line] = request_lines(lines())
    assert line["request_id"] == echoed and len(echoed) == 32
    assert line["protocol"] == "grpc" and line["method"] == "Classify"
    assert line["status"] == "OK" and line["level"] == "INFO"
    assert line["model"] == default_name(str(tiny_checkpoint))  # the one model's name
    assert line["images"] == 2 and line["texts"] == 3
    assert line["input_bytes"] == request.ByteSize()
    assert 0 < line["duration_ms"] < 10_000
    assert len(line["trace_id"]) == 32
    text = json.dumps(line)
    assert SECRET_LABEL not in text and image.raw.rgb[:16].hex() not in text


async def test_a_callers_request_id_is_kept_and_an_unsafe_one_replaced(stub, lines):
    for given, kept in (("req-42.a:b/c", True), ("x" * 129, False), ("bad id; x=\"1\"", False),
                        ("", False)):
        call = stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text="a")]),
                          metadata=(("x-request-id", given),), timeout=10)
        await call
        echoed = dict(await call.trailing_metadata())["x-request-id"]
        assert (echoed == given) is kept, (given, echoed)
        assert request_lines(lines())[-1]["request_id"] == echoed
        assert request_lines(lines())[-1]["texts"] == 1


async def test_a_failure_names_its_request_id_in_details_metadata_and_logs(stub, fake, lines):
    fake.error = grpc.StatusCode.INTERNAL  # an unexpected Triton failure: INTERNAL, logged
    with pytest.raises(grpc.aio.AioRpcError) as failed:
        await stub.Embed(pb.EmbedRequest(inputs=[pb.EmbedInput(text="never seen 91")]),
                         metadata=(("x-request-id", "failing-1"),), timeout=10)
    fake.error = None
    exc = failed.value
    assert exc.code() is grpc.StatusCode.INTERNAL
    assert dict(exc.trailing_metadata())["x-request-id"] == "failing-1"
    status = rpc_status.from_call(exc)
    infos = []
    for detail in status.details:
        if detail.Is(error_details_pb2.RequestInfo.DESCRIPTOR):
            info = error_details_pb2.RequestInfo()
            detail.Unpack(info)
            infos.append(info.request_id)
    assert infos == ["failing-1"]
    records = lines()
    assert request_lines(records)[-1]["status"] == "INTERNAL"
    # Every line logged while the request was handled carries its id (here Triton's warning
    # and the internal error).
    others = [r for r in records if r["logger"] != "gateway.requests"]
    assert others and all(r.get("request_id") == "failing-1" for r in others), others

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.Score(pb.ScoreRequest(images=[small_raw_image()], texts=[]), timeout=10)
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    last = request_lines(lines())[-1]
    assert last["request_id"] == dict(refused.value.trailing_metadata())["x-request-id"]
    assert last["status"] == "INVALID_ARGUMENT" and last["method"] == "Score"


async def test_log_format_json_makes_every_line_json(tiny_checkpoint, fake, tmp_path):
    # Two worker processes: the supervisor's and the workers' lines are JSON alike.
    gateway = GatewayProcess(tiny_checkpoint, fake.url, tmp_path / "gateway.log", processes=2,
                             env={"SIGLIP_LOG_FORMAT": "json"})
    await gateway.start(timeout_s=60)
    pids = gateway.worker_pids()
    try:
        async with grpc.aio.insecure_channel(gateway.target) as channel:
            await pb_grpc.SiglipServiceStub(channel).Embed(
                pb.EmbedRequest(inputs=[pb.EmbedInput(text=SECRET_LABEL)]),
                metadata=(("x-request-id", "from-the-test"),), timeout=10)
    finally:
        gateway.signal()
        assert await gateway.wait(15) == 0
    records = [json.loads(line) for line in gateway.log().splitlines() if line.strip()]
    [line] = request_lines(records)
    assert line["request_id"] == "from-the-test" and line["method"] == "Embed"
    assert isinstance(line["worker"], int) and line["pid"] in pids
    assert "trace_id" not in line  # tracing is off by default
    assert SECRET_LABEL not in gateway.log()


async def test_tracing_on_without_the_exporter_stops_the_start_with_one_clear_line(
        tiny_checkpoint, tmp_path):
    # The exporter made unimportable, as in an install without the [otel] extra.
    code = ("import sys; sys.modules['opentelemetry.exporter.otlp.proto.grpc.trace_exporter'] "
            "= None; from gateway.cli import main; sys.exit(main())")
    gateway = GatewayProcess(tiny_checkpoint, "127.0.0.1:1", tmp_path / "gateway.log", code=code,
                             env={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
    gateway.spawn()
    assert await gateway.wait(30) == 1
    assert "siglip-gateway[otel]" in gateway.log(), gateway.log()
    assert "Traceback" not in gateway.log()



async def test_http_requests_have_the_same_id_in_header_body_span_and_log(http_gateway, fake,
                                                                         lines):
    import httpx

    gw, exporter = http_gateway
    async with httpx.AsyncClient(base_url=gw.http_url, timeout=10) as http:
        ok = await http.post("/v1/classify", headers={"x-request-id": "http-7"}, json={
            "images": [], "labels": [SECRET_LABEL]})
        fake.error = grpc.StatusCode.INTERNAL
        failed = await http.post("/v1/embed", json={"inputs": [{"text": "never seen 92"}]})
        fake.error = None
    assert ok.status_code == 400  # no images: the caller's mistake, still one logged request
    assert ok.headers["x-request-id"] == ok.json()["error"]["request_id"] == "http-7"
    assert failed.status_code == 500
    generated = failed.headers["x-request-id"]
    assert failed.json()["error"]["request_id"] == generated and len(generated) == 32
    first, second = request_lines(lines())[-2:]
    assert (first["request_id"], first["protocol"], first["method"], first["status"],
            first["texts"]) == ("http-7", "http", "Classify", "400", 1)
    assert (second["request_id"], second["status"]) == (generated, "500")
    assert SECRET_LABEL not in json.dumps(first)
    spans = {s.attributes.get("request.id"): s for s in exporter.get_finished_spans()
             if s.name.startswith("POST /v1/")}
    assert spans["http-7"].name == "POST /v1/classify"
    assert spans[generated].context.trace_id == int(second["trace_id"], 16)
