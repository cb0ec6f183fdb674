"""gateway/embedded_triton/repository.py: the repository generated for several models, its
command line, and EmbeddedTriton's checks for several models made before any Triton starts.
That Triton loads what is generated: tests/real_triton/test_triton_two_models.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from gateway.contract import (
    DECODE_MODEL,
    ENCODED_MODEL,
    TEXT_MODEL,
    VISION_MODEL,
    TritonNames,
    triton_names,
)
from gateway.embedded_triton.errors import TritonStartupError
from gateway.embedded_triton.launcher import EmbeddedTriton
from gateway.embedded_triton.repository import (
    RepositoryError,
    build_repository,
    configure,
    default_model_repository,
    main,
)

SHIPPED = default_model_repository()
BASES = (VISION_MODEL, TEXT_MODEL, DECODE_MODEL, ENCODED_MODEL)


def _config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def _checkpoint(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def _files(directory: Path) -> dict[str, bytes]:
    """The files under ``directory``, without the byte code Python leaves beside them."""
    return {str(p.relative_to(directory)): p.read_bytes()
            for p in sorted(directory.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts}


def test_each_model_gets_its_own_names_checkpoint_and_ensemble(tmp_path: Path) -> None:
    local = _checkpoint(tmp_path / "ckpt")
    models = [("base", str(local)), ("so400m", "google/siglip-so400m-patch14-384")]
    written = build_repository(models, tmp_path / "repo")
    names = triton_names(["base", "so400m"])
    assert written == [m for n in names.values()
                       for m in (n.vision, n.text, n.decode, n.encoded)]
    assert written[:4] == ["siglip_vision__base", "siglip_text__base",
                           "siglip_image_decode__base", "siglip_vision_encoded__base"]
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == sorted(written)
    for (_, checkpoint), triton in zip(models, names.values(), strict=True):
        for base, name in zip(BASES, (triton.vision, triton.text, triton.decode,
                                      triton.encoded), strict=True):
            got = _config(tmp_path / "repo" / name / "config.pbtxt")
            want = _config(SHIPPED / base / "config.pbtxt")
            assert got.name == name
            if base == ENCODED_MODEL:
                assert [s.model_name for s in got.ensemble_scheduling.step] == [
                    triton.decode, triton.vision]
                assert "model" not in got.parameters
            else:
                assert got.parameters["model"].string_value == checkpoint
            # Nothing else changed: tensors, batching, instances, other parameters.
            got.name = want.name
            for step, shipped in zip(got.ensemble_scheduling.step,
                                     want.ensemble_scheduling.step, strict=True):
                step.model_name = shipped.model_name
            if "model" in want.parameters:
                got.parameters["model"].string_value = want.parameters["model"].string_value
            assert got == want


def test_version_directories_are_copies_that_need_no_link(tmp_path: Path) -> None:
    build_repository([("a", "x/y"), ("b", "x/z")], tmp_path / "repo")
    vision_py = (SHIPPED / VISION_MODEL / "1" / "model.py").read_bytes()
    for name in ("a", "b"):
        triton = TritonNames.suffixed(name)
        for model, base in ((triton.vision, VISION_MODEL), (triton.decode, DECODE_MODEL),
                            (triton.encoded, ENCODED_MODEL)):
            assert _files(tmp_path / "repo" / model / "1") == _files(SHIPPED / base / "1")
        text_dir = tmp_path / "repo" / triton.text / "1"
        assert _files(text_dir) == {"model.py": vision_py}
    assert not [p for p in (tmp_path / "repo").rglob("*") if p.is_symlink()]
    assert not list((tmp_path / "repo").rglob("__pycache__"))


def test_without_decoder_only_the_towers(tmp_path: Path) -> None:
    written = build_repository([("a", "x"), ("b", "y")], tmp_path / "repo", with_decoder=False)
    assert written == ["siglip_vision__a", "siglip_text__a", "siglip_vision__b",
                       "siglip_text__b"]
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == sorted(written)


def test_one_model_keeps_the_plain_names(tmp_path: Path) -> None:
    written = build_repository([("base", "google/siglip-base-patch16-256")], tmp_path / "r")
    assert written == [VISION_MODEL, TEXT_MODEL, DECODE_MODEL, ENCODED_MODEL]
    assert _config(tmp_path / "r" / TEXT_MODEL / "config.pbtxt").parameters[
        "model"].string_value == "google/siglip-base-patch16-256"


def test_a_local_directory_is_made_absolute(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _checkpoint(tmp_path / "ckpts" / "small")
    monkeypatch.chdir(tmp_path)
    build_repository([("a", "ckpts/small"), ("b", "only/where/triton/runs")], tmp_path / "r")
    params = {name: _config(tmp_path / "r" / name / "config.pbtxt").parameters[
        "model"].string_value for name in ("siglip_vision__a", "siglip_vision__b")}
    assert params == {"siglip_vision__a": str(tmp_path / "ckpts" / "small"),
                      "siglip_vision__b": "only/where/triton/runs"}


def test_a_checkpoint_needing_escapes_survives(tmp_path: Path) -> None:
    odd = _checkpoint(tmp_path / 'we"ird\\ café')
    build_repository([("a", str(odd)), ("b", "y")], tmp_path / "r")
    config = _config(tmp_path / "r" / "siglip_image_decode__a" / "config.pbtxt")
    assert config.parameters["model"].string_value == str(odd)


@pytest.mark.parametrize("state", ["absent", "empty"])
def test_dest_absent_or_empty_is_used(tmp_path: Path, state: str) -> None:
    dest = tmp_path / "deep" / "repo"
    if state == "empty":
        dest.mkdir(parents=True)
    assert len(build_repository([("a", "x"), ("b", "y")], dest)) == 8


@pytest.mark.parametrize("state", ["file inside", "a file"])
def test_dest_not_empty_is_refused_and_left_alone(tmp_path: Path, state: str) -> None:
    dest = tmp_path / "repo"
    if state == "a file":
        dest.write_text("mine")
    else:
        dest.mkdir()
        (dest / "keep.txt").write_text("mine")
    before = _files(tmp_path)
    with pytest.raises(RepositoryError, match="not an empty directory"):
        build_repository([("a", "x"), ("b", "y")], dest)
    assert _files(tmp_path) == before


@pytest.mark.parametrize(("models", "match"), [
    ([], "no model"),
    ([("Base", "x"), ("b", "y")], "'Base'"),
    ([("a__b", "x"), ("b", "y")], "'a__b'"),
    ([("a", "x"), ("a", "y")], "unique"),
])
def test_bad_names_are_refused(tmp_path: Path, models: list[tuple[str, str]],
                               match: str) -> None:
    with pytest.raises(RepositoryError, match=match):
        build_repository(models, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_an_incomplete_source_is_refused(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    with pytest.raises(RepositoryError, match=r"siglip_vision/config\.pbtxt missing"):
        build_repository([("a", "x"), ("b", "y")], tmp_path / "repo", source=source)


def test_a_failed_build_leaves_an_empty_dest_empty(tmp_path: Path) -> None:
    import shutil

    source = tmp_path / "source"
    shutil.copytree(SHIPPED, source)
    config = source / ENCODED_MODEL / "config.pbtxt"
    config.write_text(config.read_text().replace('"siglip_vision"\n', '"elsewhere"\n'))
    dest = tmp_path / "repo"
    dest.mkdir()
    with pytest.raises(RepositoryError, match="'elsewhere'"):
        build_repository([("a", "x"), ("b", "y")], dest, source=source)
    assert list(dest.iterdir()) == []


def test_a_config_layout_the_edits_do_not_know_fails_the_build() -> None:
    shipped = (SHIPPED / TEXT_MODEL / "config.pbtxt").read_text()
    renamed = {TEXT_MODEL: "siglip_text__a"}
    # Same config, the parameter written value-first: valid for Triton, not for the edit.
    reordered = shipped.replace('key: "model"\n    value: { string_value: "" }',
                                'value: { string_value: "" }\n    key: "model"')
    assert reordered != shipped
    with pytest.raises(RepositoryError, match="one parameter 'model'"):
        configure(reordered, renamed, "ckpt")
    # A comment that looks like the parameter would be edited instead of it: caught.
    decoy = '# key: "model" value: { string_value: "" }\n' + reordered
    with pytest.raises(RepositoryError, match="not the shipped one"):
        configure(decoy, renamed, "ckpt")
    # The layout it knows, without the colon before the value, is fine.
    compact = shipped.replace('value: { string_value: "" }', 'value { string_value: "" }')
    assert 'string_value: "ckpt"' in configure(compact, renamed, "ckpt")


def test_comments_are_kept(tmp_path: Path) -> None:
    build_repository([("a", "x"), ("b", "y")], tmp_path / "r")
    shipped = (SHIPPED / VISION_MODEL / "config.pbtxt").read_text().splitlines()
    got = (tmp_path / "r" / "siglip_vision__a" / "config.pbtxt").read_text().splitlines()
    assert [line for line in got if line.lstrip().startswith("#")] == [
        line for line in shipped if line.lstrip().startswith("#")]


# -- command line ------------------------------------------------------------------------------

def _cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def test_cli_writes_and_prints_the_names(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, ["--model", "a=x/a", "--model", "b=x/b,c=x/c", "--no-decoder",
                                   "--out", str(tmp_path / "r")])
    assert (code, err) == (0, "")
    assert out.split() == [f"siglip_{t}__{n}" for n in "abc" for t in ("vision", "text")]
    assert _config(tmp_path / "r" / "siglip_text__c" / "config.pbtxt").parameters[
        "model"].string_value == "x/c"


def test_cli_reads_a_models_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = tmp_path / "models.json"
    models.write_text(json.dumps({"models": [
        {"name": "big", "checkpoint": "google/siglip-so400m-patch14-384", "max_images": 4},
        {"checkpoint": "google/siglip-base-patch16-256"}]}))
    code, out, _ = _cli(capsys, ["--models-file", str(models), "--out", str(tmp_path / "r")])
    assert code == 0
    assert out.split()[::4] == ["siglip_vision__big", "siglip_vision__siglip-base-patch16-256"]


@pytest.mark.parametrize(("argv", "message"), [
    ([], "the following arguments are required: --out"),
    (["--out", "{out}"], "give the models with --model"),
    (["--model", "Bad_Name=x", "--out", "{out}"], "model name 'Bad_Name'"),
    (["--model", "a=x", "--model", "a=y", "--out", "{out}"], "two models are named 'a'"),
    (["--model", "a=x", "--models-file", "{tmp}/m.json", "--out", "{out}"], "not both"),
    (["--models-file", "{tmp}/missing.toml", "--out", "{out}"], "missing.toml: No such file"),
    (["--model", "a=x", "--model", "b=y", "--out", "{tmp}/full"], "not an empty directory"),
])
def test_cli_errors_are_one_line_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             argv: list[str], message: str) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    argv = [a.format(tmp=tmp_path, out=tmp_path / "out") for a in argv]
    code, out, err = _cli(capsys, argv)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and message in err, err
    assert err.startswith("python -m gateway.embedded_triton.repository: error: ")
    assert not (tmp_path / "out").exists()


# -- EmbeddedTriton with several models: what is checked before Triton starts -----------------

def test_launcher_waits_for_every_generated_model(tmp_path: Path) -> None:
    served = [("a", "x"), ("b", "y")]
    towers = EmbeddedTriton(served=served)
    assert towers.models == ("siglip_vision__a", "siglip_text__a", "siglip_vision__b",
                             "siglip_text__b")
    assert towers.model == "x" and towers.model_repository == SHIPPED
    with_decoder = EmbeddedTriton(served=served, with_decoder=True)
    assert with_decoder.models == tuple(build_repository(served, tmp_path / "r"))
    one = EmbeddedTriton(served=[("a", "x")])
    assert (one.served, one.model, one.models) == ((), "x", (VISION_MODEL, TEXT_MODEL))


def test_launcher_checks_every_checkpoint_first(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    good = _checkpoint(tmp_path / "good")
    (tmp_path / "no-config").mkdir()
    for bad, problem in ((tmp_path / "missing", "does not exist"),
                         (tmp_path / "no-config", "no config.json")):
        triton = EmbeddedTriton(served=[("a", str(good)), ("b", str(bad))])
        with pytest.raises(TritonStartupError, match=f"model b: .*{problem}") as info:
            triton.start()
        assert info.value.reason == "checkpoint"
    assert os.listdir(tmp_path / "tmp") == []  # nothing was generated


def test_launcher_reports_a_repository_it_cannot_build(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    good = str(_checkpoint(tmp_path / "good"))
    triton = EmbeddedTriton(served=[("a", good), ("b", good)], model_repository=tmp_path)
    with pytest.raises(TritonStartupError, match="cannot build the model repository") as info:
        triton.start()
    assert info.value.reason == "repository"
    assert os.listdir(tmp_path / "tmp") == []  # the temporary repository is removed
    assert triton.model_repository == tmp_path.resolve()


def test_a_restart_rebuilds_a_generated_repository_that_was_removed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A /tmp cleaner may remove the repository while Triton runs for days: the next automatic
    restart builds it again (_spawn runs this before every start) instead of failing."""
    import shutil
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    good = str(_checkpoint(tmp_path / "good"))
    triton = EmbeddedTriton(served=[("a", good), ("b", good)])
    triton._check_inputs()  # what start() does before Triton is spawned: builds it
    generated = triton.model_repository
    first = {p.name: (p / "config.pbtxt").read_text() for p in generated.iterdir()}
    try:
        triton._ensure_generated()  # whole: left as it is
        assert {p.name for p in generated.iterdir()} == set(first)
        shutil.rmtree(generated / "siglip_text__b")
        triton._ensure_generated()
        assert {p.name: (p / "config.pbtxt").read_text() for p in generated.iterdir()} == first
        shutil.rmtree(generated)
        triton._ensure_generated()
        assert {p.name: (p / "config.pbtxt").read_text() for p in generated.iterdir()} == first
    finally:
        triton._remove_generated()
    assert not generated.exists()


@pytest.mark.parametrize(("argv", "message"), [
    ([], "give --model or --models-file"),
    (["--model", "Bad_Name=x"], "model name 'Bad_Name'"),
    (["--model", "a=x", "--model", "a=y"], "two models are named 'a'"),
])
def test_foreground_cli_refuses_bad_models(capsys: pytest.CaptureFixture[str], argv: list[str],
                                           message: str) -> None:
    from gateway.embedded_triton.cli import main as run_main

    with pytest.raises(SystemExit) as info:
        run_main(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
