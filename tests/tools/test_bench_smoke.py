"""Smoke run of the serving benchmark (bench/serving_bench.py) on the tiny checkpoint.

A fraction of a second per cell: it checks that one command produces every mode of every
workload (the bare Pillow loop on the JPEG Embed workloads only), that the ratios are the
quotients of the cells they name, that the ceiling ran at the batch size Triton formed, and that
the bare Pillow loop computes the gateway's exact pixels. No timing is asserted: the numbers of
a run this short on a shared CI machine mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.triton]

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench" / "serving_bench.py"
WORKLOADS = {"embed_raw", "embed_jpeg", "embed_jpeg8", "embed_text", "classify", "score"}
# served_p2: --processes 1,2; served_http: served's gateway over HTTP/JSON.
MODES = {"ceiling", "direct", "served", "served_http", "served_p2", "naive"}
PILLOW = {"embed_jpeg", "embed_jpeg8"}  # where the mode pillow runs too
RATIOS = {"served/ceiling": "ceiling", "served/direct": "direct", "served/naive": "naive"}
IMAGES = {"embed_jpeg8": 8, "score": 2}  # images per request, where not 1


def test_serving_bench_smoke(tiny_checkpoint: Path, embedded_triton, tmp_path: Path) -> None:
    out = tmp_path / "serving.json"
    argv = [sys.executable, str(BENCH), "--model", str(tiny_checkpoint),
            "--triton-url", embedded_triton.grpc_url, "--concurrency", "4",
            "--seconds", "0.6", "--warmup", "0.1", "--timeout", "30",
            "--startup-timeout", "60", "--processes", "1,2",
            "--json", str(out), "--log-dir", str(tmp_path / "logs")]
    proc = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    data = json.loads(out.read_text())

    meta = data["meta"]
    assert meta["checkpoint"] == {"path": str(tiny_checkpoint.resolve()), "size": "tiny",
                                  "random_weights": True}
    assert meta["concurrency"] == 4 and meta["machine"]["nproc"] >= 1 and meta["complete"]
    assert meta["served_connections"] == 8  # 4 per process of the largest gateway
    check = meta["naive_pipeline_check"]
    assert isinstance(check["tokenizer_returns_attention_mask"], bool)

    assert set(data["workloads"]) == WORKLOADS
    for name, entry in data["workloads"].items():
        cells = entry["modes"]
        pillow = name in PILLOW
        assert set(cells) == MODES | ({"pillow"} if pillow else set()), name
        for mode, cell in cells.items():
            where = f"{name}/{mode}"
            assert "error" not in cell, (where, cell.get("error"))
            assert cell["errors"] == 0 and cell["first_error"] is None, (where, cell)
            assert cell["requests"] >= 1 and cell["items_per_s"] > 0, (where, cell)
            assert cell["p50_ms"] <= cell["p99_ms"], where
        ratios = {**RATIOS, "served/pillow": "pillow"} if pillow else RATIOS
        extra = ({"served_p2/served", "served_p2/pillow"} if pillow else {"served_p2/served"}
                 ) | {"served_http/served"}
        assert set(entry["ratios"]) == set(ratios) | extra, name
        for ratio, other in ratios.items():
            expected = cells["served"]["items_per_s"] / cells[other]["items_per_s"]
            assert entry["ratios"][ratio]["items_per_s"] == pytest.approx(expected), (name, ratio)
        for ratio in extra:
            mode, other = ratio.split("/")
            assert entry["ratios"][ratio]["items_per_s"] == pytest.approx(
                cells[mode]["items_per_s"] / cells[other]["items_per_s"]), (name, ratio)
        if pillow:  # one thread, the request's images per call, the gateway's exact pixels
            cell = cells["pillow"]
            assert cell["concurrency"] == 1 and cell["matches_gateway_exact"] is True, name
            assert cell["items_per_s"] == pytest.approx(
                IMAGES.get(name, 1) * cell["requests_per_s"]), name
        assert (cells["served"]["gateway_processes"], cells["served_p2"]["gateway_processes"]
                ) == (1, 2)

        # The ceiling's batch is the one Triton formed under `served`, in requests.
        model, rows = (("siglip_text", 1) if name == "embed_text"
                       else ("siglip_vision", IMAGES.get(name, 1)))
        formed = cells["served"]["triton_batches"][model]
        assert cells["ceiling"]["batch"] == max(1, round(formed["mean_batch"] / rows)), name
        assert 1 <= formed["mean_batch"] <= 4 * rows  # never more than C requests' rows
        assert formed["rows_per_request"] >= 1
        # Where the CPU went: the gateway is measured in served only (Triton is the fixture's,
        # not the benchmark's child, so it has no pid here).
        for served in ("served", "served_http", "served_p2"):
            assert set(cells[served]["cpu_ms_per_request"]) == {"client", "gateway"}, name
        assert cells["served_http"]["gateway_processes"] == 1
        assert set(cells["direct"]["cpu_ms_per_request"]) == {"client"}, name

    # Targets: the tiny one applies and is evaluated; the base ones are listed, not judged.
    targets = {(t["workload"], t["ratio"]): t for t in data["targets"]}
    tiny = targets[("embed_text", "served/direct")]
    assert tiny["applies"] and isinstance(tiny["met"], bool)
    assert tiny["value"] == pytest.approx(
        data["workloads"]["embed_text"]["ratios"]["served/direct"]["requests_per_s"])
    assert targets[("embed_raw", "served/ceiling")]["met"] is None
    http = targets[("embed_text", "served_http/served")]  # stated for every size
    assert http["applies"] and http["value"] == pytest.approx(
        data["workloads"]["embed_text"]["ratios"]["served_http/served"]["requests_per_s"])
    assert "ratios (items/s)" in proc.stdout
    report = subprocess.run([sys.executable, str(REPO / "bench" / "serving_report.py"), str(out)],
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert "| served/pillow |" in report and "| pillow |" in report
