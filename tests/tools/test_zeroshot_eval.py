"""bench/zeroshot_eval.py on a small synthetic folder, through a real gateway and Triton.

Random weights make the accuracy meaningless, so the folder is built from the gateway's own
answers: each image is filed under the class the gateway ranks 1st, 3rd or last for it, which
fixes the exact top-1 and top-5 the script must report. The classes' ranks come from Classify
(the server's prompt ensemble) or Score (one template), independently of the script's own
arithmetic (--via embed) and its chunked Classify calls (--via classify).
"""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from bench import zeroshot_eval
from gateway.client import SiglipClient
from gateway.config import Settings
from gateway.server import GatewayServer
from tests.support import imagegen

pytestmark = [pytest.mark.triton, pytest.mark.asyncio(loop_scope="session")]

CLASSES = ["tabby cat", "golden retriever", "fire truck", "oak tree", "sail boat", "red house"]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}.", "itap of my {}."]
# Rank (1 = best) of the folder's class among the gateway's scores, per image: 5 of 8 are
# right (top-1 5/8), 2 more are 3rd (top-5 7/8), 1 is last (not in the top 5 of 6).
RANKS = [1, 1, 3, 1, 6, 1, 3, 1]


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(embedded_triton, tiny_checkpoint):
    settings = Settings.from_env({}, model=str(tiny_checkpoint), host="127.0.0.1", port=0,
                                 metrics_port=-1)
    server = GatewayServer(settings, embedded_triton.grpc_url)
    await server.start()
    await server.wait_ready(60)
    yield f"127.0.0.1:{server.bound.port}"
    await server.shutdown(grace_s=1)


def _images() -> list[bytes]:
    return [imagegen.photo_jpeg(48 + 8 * i, 40 + 4 * i, seed=100 + i) for i in range(len(RANKS))]


def _ranked(logits: np.ndarray) -> np.ndarray:
    order = np.argsort(-logits, axis=1, kind="stable")
    gaps = -np.diff(np.take_along_axis(logits, order, axis=1), axis=1)
    # Distinct scores, so float32 (client) and float64 (server) arithmetic rank alike.
    assert gaps.min() > 1e-4, gaps.min()
    return order


def _build_folder(root: Path, images: list[bytes], order: np.ndarray) -> tuple[Path, Path]:
    """Class folders c0..c5 (names in a --classes file); image i under the class ranked
    RANKS[i] for it."""
    root.mkdir()
    for index in range(len(CLASSES)):
        (root / f"c{index}").mkdir()
    for i, (data, rank) in enumerate(zip(images, RANKS, strict=True)):
        (root / f"c{order[i, rank - 1]}" / f"img{i}.jpg").write_bytes(data)
    names = root.parent / f"{root.name}-classes.txt"
    names.write_text("\n".join(CLASSES) + "\n")
    return root, names


async def _run(*argv: str | Path) -> tuple[dict, list[list[str]]]:
    """The script's main() (it runs its own event loop, so in a thread): its JSON and CSV."""
    return await asyncio.to_thread(_run_blocking, [str(a) for a in argv])


def _run_blocking(argv: list[str]) -> tuple[dict, list[list[str]]]:
    assert zeroshot_eval.main(argv) == 0
    with Path(argv[argv.index("--predictions") + 1]).open(newline="") as f:
        rows = list(csv.reader(f))
    return json.loads(Path(argv[argv.index("--json") + 1]).read_text()), rows


def _expected_rows(root: Path, order: np.ndarray) -> list[list[str]]:
    """The predictions CSV the script must write: paths in folder order, its top-5."""
    rows = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            i = int(path.stem.removeprefix("img"))
            rows.append([str(path), CLASSES[int(folder.name[1:])],
                         *(CLASSES[j] for j in order[i, :5])])
    return rows


async def test_ensemble_accuracy_and_predictions(gateway, tmp_path):
    images = _images()
    async with SiglipClient(gateway) as client:
        results = await client.classify(images, CLASSES, prompt_templates=TEMPLATES)
    logits = np.array([[{s.label: s.logit for s in row}[c] for c in CLASSES]
                       for row in results])
    order = _ranked(logits)
    root, names = _build_folder(tmp_path / "folder", images, order)
    templates = tmp_path / "templates.txt"
    templates.write_text("\n".join(TEMPLATES) + "\n")
    expected = [["path", "target", "top1", "top2", "top3", "top4", "top5"],
                *_expected_rows(root, order)]
    for via in ("embed", "classify"):
        result, rows = await _run(
            "--server", gateway, "--images", root, "--classes", names, "--templates", templates,
            "--via", via, "--batch-size", "3", "--texts-per-call", "7",  # 3 calls of 2 classes
            "--json", tmp_path / f"{via}.json", "--predictions", tmp_path / f"{via}.csv")
        assert (result["top1"], result["top5"]) == (5 / 8, 7 / 8), via
        assert (result["images"], result["classes"], result["templates"]) == (8, 6, 3)
        assert result["random_weights"] is True and result["truncated_classes"] == []
        assert rows == expected, via


async def test_single_template_and_folder_names(gateway, tmp_path):
    """One template, ranked by Score's matrix; class names from the folder names ("_" = " ")."""
    images = _images()
    classes = sorted(CLASSES, key=lambda name: name.replace(" ", "_"))  # folder order
    async with SiglipClient(gateway) as client:
        scored = await client.score(images, [f"a blurry photo of the {c}." for c in classes])
    order = _ranked(scored.logits.astype(np.float64))
    root = tmp_path / "folder"
    root.mkdir()
    for name in classes:
        (root / name.replace(" ", "_")).mkdir()
    folders = sorted(root.iterdir())
    for i, (data, rank) in enumerate(zip(images, RANKS, strict=True)):
        (folders[order[i, rank - 1]] / f"img{i}.jpg").write_bytes(data)
    result, rows = await _run(
        "--server", gateway, "--images", root, "--template", "a blurry photo of the {}.",
        "--json", tmp_path / "r.json", "--predictions", tmp_path / "p.csv")
    assert (result["top1"], result["top5"], result["templates"]) == (5 / 8, 7 / 8, 1)
    assert [row[2:] for row in rows[1:]] == [
        [classes[j] for j in order[int(Path(row[0]).stem[3:]), :5]] for row in rows[1:]]
    limited = zeroshot_eval.load_dataset(root, None, limit_per_class=1)
    assert limited.classes == classes
    assert sorted(limited.targets) == sorted({int(order[i, r - 1]) for i, r in enumerate(RANKS)})


async def test_truncated_prompts_are_reported(gateway, tmp_path):
    root = tmp_path / "folder"
    (root / "long").mkdir(parents=True)
    (root / "short").mkdir()
    (root / "long" / "a.jpg").write_bytes(imagegen.photo_jpeg(32, 32, seed=1))
    (root / "short" / "b.jpg").write_bytes(imagegen.photo_jpeg(32, 32, seed=2))
    names = tmp_path / "names.txt"
    names.write_text("river " * 80 + "\ncat\n")
    for via in ("embed", "classify"):
        result, _ = await _run("--server", gateway, "--images", root, "--classes", names,
                               "--via", via, "--json", tmp_path / "r.json",
                               "--predictions", tmp_path / "p.csv")
        assert result["truncated_classes"] == [("river " * 80).strip()], via
