"""The command line reports every user mistake as one line naming it, with a non-zero exit."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import EXIT_FAILED, EXIT_USAGE, main

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def jpeg(tmp_path: Path) -> Path:
    path = tmp_path / "cat.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not checked before the server sees it")
    return path


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, list[str]]:
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse exits itself
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.splitlines()


@pytest.mark.parametrize(("argv", "expected"), [
    (["classify", "{missing}", "--labels", "cat"],
     "siglip-gateway classify: images: {missing}: no such file or directory"),
    (["classify", "{dir}", "--labels", "cat"],
     "siglip-gateway classify: images: {dir}: is a directory"),
    (["classify", "{jpeg}", "--labels", " , ,"],
     "siglip-gateway classify: --labels: no labels given (separate them with ',')"),
    (["score", "{jpeg}", "--texts", "|"],
     "siglip-gateway score: --texts: no texts given (separate them with '|')"),
    (["embed"], "siglip-gateway embed: nothing to embed: give --image FILE and/or --text TEXT"),
    (["embed", "--image", "{missing}", "--text", "a cat"],
     "siglip-gateway embed: --image: {missing}: no such file or directory"),
    (["classify", "{jpeg}", "--labels", "cat", "--top-k", "-1"],
     "siglip-gateway classify: argument --top-k: must be 0 or more, not -1 "
     "(see 'siglip-gateway classify --help')"),
    (["classify", "{jpeg}", "--labels", "cat", "--top-k", "two"],
     "siglip-gateway classify: argument --top-k: 'two' is not a whole number "
     "(see 'siglip-gateway classify --help')"),
    (["info", "--timeout", "0"],
     "siglip-gateway info: argument --timeout: must be more than 0, not 0 "
     "(see 'siglip-gateway info --help')"),
    (["classify", "{jpeg}"],
     "siglip-gateway classify: the following arguments are required: --labels "
     "(see 'siglip-gateway classify --help')"),
    (["load", "--config", "{missing}", "localhost:1"],
     "siglip-gateway load: [Errno 2] No such file or directory: '{missing}'"),
])
def test_user_mistakes_are_one_line(capsys, tmp_path, jpeg, argv, expected):
    names = {"missing": str(tmp_path / "missing.jpg"), "dir": str(tmp_path), "jpeg": str(jpeg)}
    code, lines = _run(capsys, [a.format(**names) for a in argv])
    assert code == EXIT_USAGE
    assert lines == [expected.format(**names)]


def test_unknown_command_is_one_line(capsys):
    code, lines = _run(capsys, ["frobnicate"])
    assert code == EXIT_USAGE
    assert len(lines) == 1 and "invalid choice: 'frobnicate'" in lines[0]


def test_server_errors_are_one_line_with_the_status(capsys, jpeg):
    """Nothing listens on the port: the call fails as UNAVAILABLE, reported in one line."""
    code, lines = _run(capsys, ["classify", str(jpeg), "--labels", "cat",
                                "--server", f"127.0.0.1:{_closed_port()}", "--timeout", "5"])
    assert code == EXIT_FAILED
    assert len(lines) == 1 and lines[0].startswith("siglip-gateway classify: UNAVAILABLE: ")


def test_tool_file_errors_are_one_line(capsys, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, lines = _run(capsys, ["make-checkpoint", "--random", "--size", "tiny",
                                "--out", str(blocker / "ckpt")])
    assert code == EXIT_USAGE
    assert len(lines) == 1 and lines[0].startswith(f"siglip-gateway make-checkpoint: {blocker}")


def test_installed_entry_point_prints_one_line():
    """Through the real interpreter start-up, as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "classify", "missing.jpg", "--labels", "cat"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_USAGE
    assert proc.stderr.splitlines() == [
        "siglip-gateway classify: images: missing.jpg: no such file or directory"]


def test_bad_setting_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("SIGLIP_PORT", "fifty")
    code, lines = _run(capsys, ["serve"])
    assert code == EXIT_USAGE
    assert lines == ["siglip-gateway serve: SIGLIP_PORT='fifty' is not a whole number"]


def test_model_lists_that_cannot_be_served_are_one_line(capsys, monkeypatch, tmp_path):
    """--model repeated joins into SIGLIP_MODEL's list; its mistakes and the models file's end
    the start in one line naming the entry, before anything is loaded."""
    monkeypatch.delenv("SIGLIP_MODEL", raising=False)
    code, lines = _run(capsys, ["serve", "--model", "a=/x", "--model", "a=/y"])
    assert code == EXIT_USAGE
    assert lines == ["siglip-gateway serve: two models are named 'a' (/x and /y): name them, "
                     "e.g. --model base=CHECKPOINT"]
    models = tmp_path / "models.toml"
    models.write_text('[[models]]\ncheckpoint = "/x"\nmax_image = 4\n')
    code, lines = _run(capsys, ["serve", "--models-file", str(models)])
    assert code == EXIT_USAGE and len(lines) == 1
    assert lines[0].startswith(f"siglip-gateway serve: {models}: models[0]: unknown key "
                               "'max_image'")
    code, lines = _run(capsys, ["serve", "--model", "/x", "--models-file", str(models)])
    assert code == EXIT_USAGE and "not both" in lines[0]


def test_the_service_cli_works_without_the_tools(monkeypatch, capsys):
    """The gateway image ships gateway/ without siglip_tools/: its CLI still serves."""
    import sys as _sys

    monkeypatch.setitem(_sys.modules, "siglip_tools", None)  # import fails as if not installed
    for name in ("siglip_tools.checkpoint", "siglip_tools.load", "siglip_tools.onnx_export",
                 "siglip_tools.ghz"):
        monkeypatch.delitem(_sys.modules, name, raising=False)
    code, lines = _run(capsys, ["frobnicate"])
    assert code == EXIT_USAGE
    assert "'serve'" in lines[0] and "'classify'" in lines[0]
    assert "make-checkpoint" not in lines[0] and "'load'" not in lines[0]
