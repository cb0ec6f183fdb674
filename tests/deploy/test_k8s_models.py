"""Offline checks of the deployments that serve several models (k8s/overlays/gpu-two-models).

Three readers of the model list in such an overlay: the gateway's SIGLIP_MODEL, the init
containers' fetch of the checkpoints (same variable, plus SIGLIP_HF_REPO), and the generator
of Triton's model repository (its --model arguments, $(SIGLIP_MODEL) expanded by the kubelet).
A name or a directory that differs would only show in the cluster, as a gateway that waits for
Triton models that never come or a tower that loads another checkpoint; these tests keep the
three equal. Every overlay is
checked: one-model overlays keep the image's repository and fetch one checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from gateway.contract import triton_names
from tests.support.k8s_render import (
    GATEWAY,
    GENERATOR,
    OVERLAYS,
    REPO,
    Obj,
    all_containers,
    container,
    env_of,
    fetch_script,
    get,
    init_steps,
    of_kind,
    option_values,
    pod_spec,
    render,
    repository_step,
    served_models,
    triton_arg,
    triton_container,
    triton_workload,
    workloads,
)

TWO_MODELS = "gpu-two-models"


def _expanded_args(docs: list[Obj], step: Obj) -> list[str]:
    """The container's args as the kubelet runs them: $(VAR) replaced from its environment
    (an unknown variable stays as written, as Kubernetes leaves it)."""
    env = env_of(docs, step)
    return [re.sub(r"\$\((\w+)\)", lambda m: str(env.get(m[1], m[0])), arg)
            for arg in step["args"]]


@pytest.fixture(scope="module")
def fetch() -> ModuleType:
    return fetch_script()


def test_two_model_overlay_serves_base_and_so400m() -> None:
    assert TWO_MODELS in OVERLAYS
    models = served_models(render(TWO_MODELS))
    assert [(m.name, m.checkpoint) for m in models] == [
        ("base", "/checkpoint/base"), ("so400m", "/checkpoint/so400m")]


def test_triton_repository_names_the_served_models(docs: list[Obj]) -> None:
    models = served_models(docs)
    triton = triton_workload(docs)
    step = repository_step(triton)
    if len(models) == 1:
        # One model: the image's repository, its plain model names, parameter-less configs.
        assert step is None
        assert triton_arg(triton, "--model-repository") == "/models"
        return
    assert step is not None, "several models but no init container generates the repository"
    assert step["command"] == GENERATOR
    args = _expanded_args(docs, step)
    given = [entry.split("=", 1) for value in option_values(args, "--model")
             for entry in value.split(",")]
    # Same names, same checkpoint directories, same order (the first is the default).
    assert given == [[m.name, m.checkpoint] for m in models]
    assert not option_values(args, "--models-file")
    # The decoder and the ensemble only where the gateway sends JPEG bytes to Triton.
    gw_env = env_of(docs, container(get(docs, "Deployment", GATEWAY), "gateway"))
    assert ("--no-decoder" in args) == (gw_env["SIGLIP_PREPROCESS_MODE"] != "triton")


def test_generated_repository_is_what_triton_serves(docs: list[Obj]) -> None:
    triton = triton_workload(docs)
    step = repository_step(triton)
    if step is None:
        pytest.skip("one model: the image's /models")
    (out,) = option_values(step["args"], "--out")
    assert triton_arg(triton, "--model-repository") == out
    written = [m for m in step["volumeMounts"] if m["mountPath"] == out]
    read = [m for m in triton_container(triton)["volumeMounts"] if m["mountPath"] == out]
    assert len(written) == len(read) == 1
    assert not written[0].get("readOnly") and read[0]["readOnly"] is True
    assert written[0]["name"] == read[0]["name"]
    (vol,) = [v for v in pod_spec(triton)["volumes"] if v["name"] == read[0]["name"]]
    assert "emptyDir" in vol  # regenerated with every pod: never stale against SIGLIP_MODEL
    # After the checkpoints are in place, from the same volume Triton reads them from.
    names = [c["name"] for c in pod_spec(triton)["initContainers"]]
    assert names.index("checkpoint") < names.index(step["name"])
    ckpt_mounts = {m["name"] for m in triton_container(triton)["volumeMounts"]
                   if m["mountPath"] == "/checkpoint"}
    for m in served_models(docs):
        assert [mt["name"] for mt in step["volumeMounts"]
                if m.checkpoint.startswith(mt["mountPath"] + "/")] == list(ckpt_mounts)


def test_generator_builds_the_repository_the_overlay_expects(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Runs the real generator with the two-model overlay's arguments, as the pod would: into
    an existing empty directory (an emptyDir mount point, which cannot be removed and made
    again), with the checkpoint directories moved under tmp_path."""
    if importlib.util.find_spec("gateway.embedded_triton.repository") is None:
        pytest.skip("gateway/embedded_triton/repository.py (the generator) is not on this branch")
    docs = render(TWO_MODELS)
    step = repository_step(triton_workload(docs))
    assert step is not None
    ckpt = request.getfixturevalue("tiny_checkpoint")
    models = served_models(docs)
    local = {m.checkpoint: tmp_path / "checkpoint" / m.name for m in models}
    for path in local.values():
        path.parent.mkdir(exist_ok=True)
        path.symlink_to(ckpt, target_is_directory=True)
    (out_arg,) = option_values(step["args"], "--out")
    out = tmp_path / "triton-models"
    out.mkdir()
    # Held open, the directory's inode cannot be reused by a new directory of the same path.
    held = os.open(out, os.O_RDONLY)
    args = _expanded_args(docs, step)
    for i, arg in enumerate(args):
        if i and args[i - 1] == "--model":
            entries = [entry.partition("=") for entry in arg.split(",")]
            args[i] = ",".join(f"{name}={local[checkpoint]}" for name, _, checkpoint in entries)
    args[args.index(out_arg)] = str(out)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(tmp_path),
           **{e["name"]: e["value"] for e in step.get("env", []) if e["name"] != "HOME"
              and "value" in e}}
    proc = subprocess.run([sys.executable, *step["command"][1:], *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    try:
        assert proc.returncode == 0, proc.stderr
        assert os.path.samestat(os.fstat(held), out.stat()), (
            "the generator replaced --out: a mount point cannot be removed")
    finally:
        os.close(held)
    with_decoder = "--no-decoder" not in step["args"]
    names = triton_names([m.name for m in models])
    expected = {n for m in models for n in names[m.name].towers(with_decoder)}
    if with_decoder:
        expected |= {names[m.name].decode for m in models}
    assert {p.parent.name for p in out.glob("*/config.pbtxt")} == expected
    # Each python model loads its own model's checkpoint (config parameter `model`).
    for m in models:
        for triton_model in names[m.name].towers(False):
            config = (out / triton_model / "config.pbtxt").read_text()
            value = re.search(r'key:\s*"model"\s*value:?\s*\{\s*string_value:\s*"([^"]*)"',
                              config)
            assert value and value[1] == str(local[m.checkpoint]), triton_model
    # Self-contained: Triton's container has none of the gateway image's files, and a link
    # copied as it was (siglip_text's model.py) would point at an unsuffixed directory.
    for path in out.rglob("*"):
        target = path.resolve(strict=True)
        assert target.is_relative_to(out.resolve()), f"{path} leaves the repository"


def test_generator_runs_the_gateway_image(docs: list[Obj]) -> None:
    step = repository_step(triton_workload(docs))
    if step is None:
        pytest.skip("one model: no generator")
    # The gateway image is the one with the gateway package and model_repository/ beside it.
    assert step["image"] == container(get(docs, "Deployment", GATEWAY), "gateway")["image"]
    text = re.sub(r"\\\n", " ", (REPO / "docker" / "gateway.Dockerfile").read_text())
    assert re.search(r"^COPY model_repository ", text, re.M)
    (run,) = [ln for ln in text.splitlines()
              if ln.startswith("RUN ") and "default_model_repository" in ln]
    assert "cp -a model_repository" in run and "purelib" in run


def checkpoint_fetchers(docs: list[Obj]) -> list[tuple[Obj, Obj]]:
    """(workload, container) of every step that runs fetch_checkpoint.py."""
    return [(w, c) for w in workloads(docs) for c in all_containers(w)
            if any("fetch_checkpoint.py" in part for part in c.get("command", []))]


def test_fetch_fills_exactly_the_served_checkpoints(docs: list[Obj], fetch: ModuleType) -> None:
    models = served_models(docs)
    fetchers = checkpoint_fetchers(docs)
    # Every pod that reads a checkpoint fetches (or waits for) all of them first.
    pods = {w["metadata"]["name"] for w in of_kind(docs, "Deployment")}
    assert pods <= {w["metadata"]["name"] for w, _ in fetchers}
    for w, c in fetchers:
        env = {k: v for k, v in env_of(docs, c).items() if isinstance(v, str)}
        plan = fetch.plan(env)
        where = f"{w['metadata']['name']}/{c['name']}"
        assert [(f.name, str(f.dest)) for f in plan] == [
            (m.name, m.checkpoint) for m in models], where
        if "--wait" not in c.get("args", []):
            assert all(f.repo and f.revision for f in plan), where
        # Each directory on a writable mount of the fetcher (or, waiting, any mount).
        for f in plan:
            held = [m for m in c["volumeMounts"] if str(f.dest).startswith(m["mountPath"] + "/")]
            assert len(held) == 1, (where, str(f.dest))


# model.safetensors of the hub repos an overlay fetches (the hub's file listing; the configs
# and the tokenizer are a few MB). A repo not listed here fails the room check below: add it.
CHECKPOINT_BYTES = {
    "google/siglip-base-patch16-256": 813e6,
    "google/siglip-so400m-patch14-384": 3.51e9,
}
UNITS = {"Mi": 2**20, "Gi": 2**30}


def quantity_bytes(q: str) -> int:
    match = re.fullmatch(r"(\d+)(Mi|Gi)", q)
    assert match, f"quantity {q}: extend quantity_bytes"
    return int(match[1]) * UNITS[match[2]]


def test_checkpoint_volumes_hold_every_checkpoint(docs: list[Obj], fetch: ModuleType) -> None:
    for w, c in checkpoint_fetchers(docs):
        env = {k: v for k, v in env_of(docs, c).items() if isinstance(v, str)}
        repos = [f.repo for f in fetch.plan(env)]
        unknown = [r for r in repos if r not in CHECKPOINT_BYTES]
        assert not unknown, f"size of {unknown} unknown: add it to CHECKPOINT_BYTES"
        (vol,) = [v for v in pod_spec(w)["volumes"] if v["name"] == "checkpoint"]
        if "emptyDir" in vol:
            limit = vol["emptyDir"]["sizeLimit"]
        else:  # the shared PVC
            claim = get(docs, "PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"])
            limit = claim["spec"]["resources"]["requests"]["storage"]
        # A quarter to spare: the hub's files grow a little between revisions.
        assert quantity_bytes(limit) >= 1.25 * sum(CHECKPOINT_BYTES[r] for r in repos), (
            w["metadata"]["name"], limit)


def test_two_models_get_memory_and_time() -> None:
    """Against the one-model gpu overlay it is built on: memory for four python stubs and
    the larger towers, a longer startup window; the same one GPU, Guaranteed QoS."""
    one = triton_container(triton_workload(render("gpu")))
    two = triton_container(triton_workload(render(TWO_MODELS)))
    res1, res2 = one["resources"], two["resources"]
    assert res2["limits"]["nvidia.com/gpu"] == res1["limits"]["nvidia.com/gpu"] == 1
    assert quantity_bytes(res2["limits"]["memory"]) >= 2 * quantity_bytes(
        res1["limits"]["memory"])
    assert res2["requests"] == res2["limits"]

    def window(probe: Obj) -> int:
        return probe["periodSeconds"] * probe["failureThreshold"]

    assert window(two["startupProbe"]) > window(one["startupProbe"])


def test_two_model_shm_holds_an_so400m_vision_batch() -> None:
    args = triton_container(triton_workload(render(TWO_MODELS)))["args"]
    (value,) = [a.rsplit("=", 1)[1] for a in args if "shm-default-byte-size=" in a]
    assert int(value) >= 64 * 384 * 384 * 3


def test_k8s_check_covers_every_overlay() -> None:
    """.ci/k8s-check.sh (schema, checkov) renders the overlays it finds, or names each."""
    script = (REPO / ".ci" / "k8s-check.sh").read_text()
    if re.search(r"for \w+ in k8s/overlays/\*/", script):
        return
    for overlay in OVERLAYS:
        assert overlay in script, f"{overlay} is not checked by .ci/k8s-check.sh"


def test_one_model_overlays_keep_one_init_step_per_deployment(docs: list[Obj]) -> None:
    if len(served_models(docs)) > 1:
        pytest.skip("several models")
    for dep in of_kind(docs, "Deployment"):
        assert [c["name"] for c in init_steps(dep)] == ["checkpoint"]
