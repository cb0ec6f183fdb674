"""Offline checks of the images: pinned references in the manifests, the two Dockerfiles,
the build context, and the init container's checkpoint step (k8s/base/config/fetch_checkpoint.py).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from tests.support.k8s_render import (
    GATEWAY,
    K8S,
    REPO,
    TRITON,
    Obj,
    all_containers,
    container,
    fetch_script,
    get,
    of_kind,
    render,
    triton_arg,
    workloads,
)

# --- images ---------------------------------------------------------------------------------


def test_images_are_pinned(docs: list[Obj]) -> None:
    for w in workloads(docs):
        for c in all_containers(w):
            image = c["image"]
            name, _, digest = image.partition("@")
            tag = name.rsplit("/", 1)[-1].partition(":")[2]
            assert digest.startswith("sha256:") or tag, f"untagged image {image}"
            assert tag != "latest", image
            # The kustomize `images:` block must have replaced the short placeholder names.
            assert "/" in name, f"{image}: placeholder not replaced by the images block"


def test_one_images_block() -> None:
    with_images = [p.relative_to(K8S) for p in sorted(K8S.rglob("kustomization.yaml"))
                   if "images" in (yaml.safe_load(p.read_text()) or {})]
    assert with_images == [Path("base/kustomization.yaml")]


def test_job_runs_the_gateway_image(docs: list[Obj]) -> None:
    gw_image = container(get(docs, "Deployment", GATEWAY), "gateway")["image"]
    for job in of_kind(docs, "Job"):
        assert [c["image"] for c in all_containers(job)] == [gw_image]


# --- Dockerfiles ------------------------------------------------------------------------------


def dockerfile(name: str) -> list[str]:
    """Instructions with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "docker" / name).read_text())
    return [ln.strip() for ln in text.splitlines()
            if ln.strip() and not ln.lstrip().startswith("#")]


@pytest.mark.parametrize("name", ["gateway.Dockerfile", "triton.Dockerfile"])
def test_dockerfile_pins_and_user(name: str) -> None:
    lines = dockerfile(name)
    froms = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    stages = {ln.split()[3] for ln in lines if ln.startswith("FROM ") and " AS " in ln}
    for image in froms:
        if image in stages:
            continue
        assert ":" in image and not image.endswith(":latest"), image
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users, "no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000, users[-1]
    assert lines.index(next(ln for ln in lines if ln.startswith("USER "))) > max(
        i for i, ln in enumerate(lines) if ln.startswith("FROM "))


def test_gateway_image_has_no_torch() -> None:
    installs = [cmd for ln in dockerfile("gateway.Dockerfile") for cmd in ln.split("&&")
                if "pip install" in cmd]
    assert installs
    for cmd in installs:
        assert not re.search(r"\[triton\]|torch|pytriton", cmd), cmd
    constraints = (REPO / "docker" / "gateway-constraints.txt").read_text().lower()
    assert not re.search(r"^(torch|nvidia-pytriton)\b", constraints, re.M)


def test_triton_image_matches_deployment() -> None:
    lines = dockerfile("triton.Dockerfile")
    (base,) = [ln.split()[1] for ln in lines if ln.startswith("FROM ")]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-py3(@sha256:[0-9a-f]{64})?", base)
    assert "COPY model_repository /models" in lines
    pip = " ".join(ln for ln in lines if "pip install" in ln)
    for pkg in ("torch", "transformers", "sentencepiece", "safetensors"):
        assert re.search(rf"\b{pkg}==[0-9][\w.]*", pip), f"{pkg} not pinned"
    triton = get(render("gpu"), "Deployment", TRITON)
    assert triton_arg(triton, "--model-repository") == "/models"


def test_dockerignore_keeps_context_small() -> None:
    rules = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert rules[0] == "**"  # allow-list: nothing enters the context unless named
    assert {"!gateway/", "!siglip/", "!model_repository/", "!pyproject.toml"} <= set(rules)


# --- the init container's checkpoint step --------------------------------------------------


@pytest.fixture
def fetch() -> ModuleType:
    return fetch_script()


def test_fetch_skips_a_complete_checkpoint(fetch: ModuleType, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / fetch.MARKER).write_text("x\n")
    monkeypatch.setenv("SIGLIP_MODEL", str(tmp_path))
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # any hub use would fail
    assert fetch.main([]) == 0
    assert fetch.main(["--wait"]) == 0


def test_fetch_wait_times_out(fetch: ModuleType, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIGLIP_MODEL", str(tmp_path / "missing"))
    monkeypatch.setenv("SIGLIP_CHECKPOINT_WAIT_S", "0")
    assert fetch.main(["--wait"]) == 1


def test_fetch_downloads_then_marks(fetch: ModuleType, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    class FakeHub(ModuleType):
        @staticmethod
        def snapshot_download(**kw: Any) -> str:
            calls.append(kw)
            (Path(kw["local_dir"]) / "model.safetensors").write_bytes(b"")
            return str(kw["local_dir"])

    dest = tmp_path / "ckpt"
    monkeypatch.setitem(sys.modules, "huggingface_hub", FakeHub("huggingface_hub"))
    monkeypatch.setenv("SIGLIP_MODEL", str(dest))
    monkeypatch.setenv("SIGLIP_HF_REPO", "org/model")
    monkeypatch.setenv("SIGLIP_HF_REVISION", "abc123")
    assert fetch.main([]) == 0
    assert (dest / fetch.MARKER).read_text() == "org/model@abc123\n"
    (call,) = calls
    assert (call["repo_id"], call["revision"]) == ("org/model", "abc123")
    # What the gateway and the towers read: configs, tokenizer, weights.
    assert {"*.json", "*.model", "*.safetensors"} <= set(call["allow_patterns"])
    assert fetch.main([]) == 0 and len(calls) == 1  # second run: marker, no download


# --- several checkpoints (SIGLIP_MODEL with NAME=DIRECTORY entries) -----------------------


def test_fetch_plan_one_model_format(fetch: ModuleType) -> None:
    (item,) = fetch.plan({"SIGLIP_MODEL": "/checkpoint/siglip-base-patch16-256",
                          "SIGLIP_HF_REPO": "google/siglip-base-patch16-256",
                          "SIGLIP_HF_REVISION": "abc123"})
    assert (item.name, item.dest, item.repo, item.revision) == (
        "siglip-base-patch16-256", Path("/checkpoint/siglip-base-patch16-256"),
        "google/siglip-base-patch16-256", "abc123")
    # A named model with an unnamed repo is still the one-model format; revision: main.
    (item,) = fetch.plan({"SIGLIP_MODEL": "base=/c/base", "SIGLIP_HF_REPO": "org/x"})
    assert (item.name, item.dest, item.repo, item.revision) == (
        "base", Path("/c/base"), "org/x", "main")


def test_fetch_plan_several_models(fetch: ModuleType) -> None:
    env = {"SIGLIP_MODEL": "base=/c/base, so400m=/c/so400m",
           "SIGLIP_HF_REPO": "base=google/siglip-base-patch16-256,"
                             "so400m=google/siglip-so400m-patch14-384",
           "SIGLIP_HF_REVISION": "r1"}
    got = [(f.name, f.dest, f.repo, f.revision) for f in fetch.plan(env)]
    assert got == [("base", Path("/c/base"), "google/siglip-base-patch16-256", "r1"),
                   ("so400m", Path("/c/so400m"), "google/siglip-so400m-patch14-384", "r1")]
    # Revisions per name; a name left out gets main.
    env["SIGLIP_HF_REVISION"] = "so400m=deadbeef"
    assert [f.revision for f in fetch.plan(env)] == ["main", "deadbeef"]


@pytest.mark.parametrize(("env", "message"), [
    ({"SIGLIP_MODEL": ""}, "SIGLIP_MODEL is empty"),
    ({"SIGLIP_MODEL": "a=/c/a,b=/c/b", "SIGLIP_HF_REPO": "org/x"}, "no NAME="),
    ({"SIGLIP_MODEL": "a=/c/a,b=/c/b", "SIGLIP_HF_REPO": "a=org/x"},
     "give a repo for each model"),
    ({"SIGLIP_MODEL": "a=/c/a,b=/c/b", "SIGLIP_HF_REPO": "b=org/y,a=org/x"},
     "in the same order"),
    ({"SIGLIP_MODEL": "a=/c/a", "SIGLIP_HF_REPO": "a=org/x,a=org/y"}, "given twice"),
    ({"SIGLIP_MODEL": "a=/c/a,b=/c/b", "SIGLIP_HF_REPO": "a=org/x,b=org/y",
      "SIGLIP_HF_REVISION": "c=r1"}, "SIGLIP_HF_REVISION names ['c']"),
    ({"SIGLIP_MODEL": "/c/a", "SIGLIP_HF_REPO": "org/x", "SIGLIP_HF_REVISION": "a=r1"},
     "SIGLIP_HF_REPO has none"),
    ({"SIGLIP_MODEL": "Base=/c/a", "SIGLIP_HF_REPO": "org/x"}, "SIGLIP_MODEL: model name"),
])
def test_fetch_plan_refuses(fetch: ModuleType, env: dict[str, str], message: str) -> None:
    with pytest.raises(fetch.PlanError, match=re.escape(message)):
        fetch.plan(env)


def test_fetch_main_reports_a_bad_plan(fetch: ModuleType, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SIGLIP_MODEL", "a=/c/a,b=/c/b")
    monkeypatch.setenv("SIGLIP_HF_REPO", "a=org/x")
    assert fetch.main([]) == 2
    assert "SIGLIP_HF_REPO names ['a']" in capsys.readouterr().err


def test_fetch_downloads_each_missing_checkpoint(fetch: ModuleType, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []

    class FakeHub(ModuleType):
        @staticmethod
        def snapshot_download(**kw: Any) -> str:
            calls.append(kw)
            return str(kw["local_dir"])

    monkeypatch.setitem(sys.modules, "huggingface_hub", FakeHub("huggingface_hub"))
    done = tmp_path / "base"
    done.mkdir()
    (done / fetch.MARKER).write_text("org/base@r0\n")  # e.g. a restart after the first one
    monkeypatch.setenv("SIGLIP_MODEL", f"base={done},so400m={tmp_path / 'so400m'}")
    monkeypatch.setenv("SIGLIP_HF_REPO", "base=org/base,so400m=org/so400m")
    monkeypatch.setenv("SIGLIP_HF_REVISION", "so400m=r1")
    assert fetch.main([]) == 0
    assert [(c["repo_id"], c["revision"], c["local_dir"]) for c in calls] == [
        ("org/so400m", "r1", tmp_path / "so400m")]
    assert (tmp_path / "so400m" / fetch.MARKER).read_text() == "org/so400m@r1\n"
    assert (done / fetch.MARKER).read_text() == "org/base@r0\n"
    assert fetch.main([]) == 0 and len(calls) == 1


def test_fetch_waits_for_every_checkpoint(fetch: ModuleType, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / fetch.MARKER).write_text("x\n")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # waiting never downloads
    monkeypatch.setenv("SIGLIP_MODEL", f"a={a},b={b}")
    monkeypatch.setenv("SIGLIP_HF_REPO", "a=org/a,b=org/b")
    monkeypatch.setenv("SIGLIP_CHECKPOINT_WAIT_S", "0")
    assert fetch.main(["--wait"]) == 1
    err = capsys.readouterr().err
    assert str(b) in err and str(a) not in err
    b.mkdir()
    (b / fetch.MARKER).write_text("x\n")
    assert fetch.main(["--wait"]) == 0
