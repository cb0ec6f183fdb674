"""The CLI's zero-shot flags (prompt ensembles, raw and float16 embeddings, --no-truncate) send
what the client API sends: compared over the wire, against a gateway on the fake Triton."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from gateway.cli import EXIT_FAILED, EXIT_USAGE, main
from gateway.client import SiglipClient
from tests.support import imagegen
from tests.support.gateway_harness import running_gateway

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(120)]

LONG = "river " * 100  # far more than the model's 64 tokens


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def gateway(tiny_checkpoint, fake):
    async with running_gateway(tiny_checkpoint, fake.url) as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="session")
async def client(gateway):
    async with SiglipClient(f"127.0.0.1:{gateway.port}") as c:
        yield c


async def _cli(capsys: pytest.CaptureFixture[str], gateway, *argv: str,
               ) -> tuple[int, str, list[str]]:
    """``siglip-gateway ARGV --server GATEWAY``: main() runs its own event loop, so in a thread."""
    code = await asyncio.to_thread(main, [*argv, "--server", f"127.0.0.1:{gateway.port}"])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out, out.err.splitlines()


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "photo.jpg"
    path.write_bytes(imagegen.photo_jpeg(64, 48, seed=7))
    return path


async def test_classify_template_flags(capsys, gateway, client, image, tmp_path):
    templates_file = tmp_path / "templates.txt"
    templates_file.write_text("a drawing of {}\n\nthe {}, up close\n")
    labels = ["cat", "dog", "bird"]
    code, out, _ = await _cli(capsys, gateway, "classify", str(image), "--labels", "cat,dog,bird",
                              "--template", "a photo of {}.", "--templates-file",
                              str(templates_file), "--json")
    assert code == 0
    expected = await client.classify([image.read_bytes()], labels, prompt_templates=[
        "a photo of {}.", "a drawing of {}", "the {}, up close"])
    assert json.loads(out) == [[s.__dict__ for s in r] for r in expected]
    first_only = await client.classify([image.read_bytes()], labels,
                                       prompt_template="a photo of {}.")
    assert json.loads(out) != [[s.__dict__ for s in r] for r in first_only]  # all were sent
    # One --template is the plain prompt_template, which an ensemble of one equals.
    code, out, _ = await _cli(capsys, gateway, "classify", str(image), "--labels", "cat,dog",
                              "--template", "the {}, up close", "--json")
    single = await client.classify([image.read_bytes()], ["cat", "dog"],
                                   prompt_template="the {}, up close")
    assert code == 0 and json.loads(out) == [[s.__dict__ for s in r] for r in single]


async def test_embed_flags(capsys, gateway, client, image):
    code, out, err = await _cli(capsys, gateway, "embed", "--image", str(image), "--text", "a cat",
                                "--text", LONG, "--no-normalize", "--dtype", "float16", "--json")
    assert code == 0
    got = json.loads(out)
    expected = await client.embed([image.read_bytes(), "a cat", LONG], normalize=False,
                                  dtype="float16")
    assert expected.dtype == np.float16
    assert list(got.values()) == expected.tolist()
    assert len(err) == 1 and err[0].startswith("note: text 'river river") and "truncated" in err[0]
    unit = await client.embed([image.read_bytes(), "a cat", LONG])
    assert not np.allclose(np.asarray(list(got.values()), np.float32), unit, atol=1e-2)


async def test_no_truncate_refuses_long_texts(capsys, gateway, image):
    code, _, err = await _cli(capsys, gateway, "embed", "--text", "a cat", "--text", LONG,
                              "--no-truncate")
    assert code == EXIT_FAILED
    assert len(err) == 1 and err[0].startswith(
        "siglip-gateway embed: INVALID_ARGUMENT: inputs[1].text: ")
    code, _, err = await _cli(capsys, gateway, "score", str(image), "--texts", f"a cat|{LONG}",
                              "--no-truncate")
    assert code == EXIT_FAILED and "texts[1]: " in err[0]
    code, _, err = await _cli(capsys, gateway, "classify", str(image), "--labels", f"cat,{LONG}",
                              "--no-truncate")
    assert code == EXIT_FAILED and "labels[1]: " in err[0]
    code, _, err = await _cli(capsys, gateway, "classify", str(image), "--labels", f"cat,{LONG}")
    assert code == 0 and len(err) == 1 and err[0].startswith("note: label 'river")


async def test_templates_file_mistakes(capsys, gateway, image, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    for path, reason in ((tmp_path / "missing.txt", "no such file or directory"),
                         (empty, "no templates in it")):
        code, _, err = await _cli(capsys, gateway, "classify", str(image), "--labels", "cat",
                                  "--templates-file", str(path))
        assert code == EXIT_USAGE
        assert err == [f"siglip-gateway classify: --templates-file: {path}: {reason}"]
