"""Shared by the tests/deploy/test_k8s_*.py modules: render k8s/overlays/* with `kubectl kustomize`
(once per overlay and session) and look things up in the rendered objects.

kubectl comes from $KUBECTL, PATH, or the tools venv that .ci/k8s-check.sh builds; without
one the tests skip with that reason.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from gateway.model_specs import ModelSpec, resolve_models

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAY_DIR = K8S / "overlays"
OVERLAYS = sorted(p.name for p in OVERLAY_DIR.iterdir() if (p / "kustomization.yaml").is_file())
GATEWAY, TRITON = "siglip-gateway", "siglip-triton"
NAME_LABEL = "app.kubernetes.io/name"

Obj = dict[str, Any]


def _kubectl() -> str | None:
    for candidate in (
        os.environ.get("KUBECTL"),
        shutil.which("kubectl"),
        str(REPO / ".cache" / "k8s-venv" / "bin" / "kubectl"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


_RENDERED: dict[str, list[Obj]] = {}


def render(overlay: str) -> list[Obj]:
    if overlay not in _RENDERED:
        kubectl = _kubectl()
        if kubectl is None:
            pytest.skip("kubectl not found (PATH, $KUBECTL, .cache/k8s-venv/bin/kubectl); "
                        "bash .ci/k8s-check.sh installs one")
        proc = subprocess.run([kubectl, "kustomize", str(OVERLAY_DIR / overlay)],
                              capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, f"kubectl kustomize {overlay} failed:\n{proc.stderr}"
        _RENDERED[overlay] = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return _RENDERED[overlay]


# --- helpers over rendered objects --------------------------------------------------------


def of_kind(docs: list[Obj], kind: str) -> list[Obj]:
    return [d for d in docs if d["kind"] == kind]


def get(docs: list[Obj], kind: str, name: str) -> Obj:
    found = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def configmap(docs: list[Obj], name: str) -> Obj:
    """A generated ConfigMap by its base name (the render adds a content-hash suffix)."""
    found = [d for d in of_kind(docs, "ConfigMap")
             if re.fullmatch(re.escape(name) + r"(-[a-z0-9]{10})?", d["metadata"]["name"])]
    assert len(found) == 1, f"expected one ConfigMap {name}, found {len(found)}"
    return found[0]


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: Obj) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def all_containers(workload: Obj) -> Iterator[Obj]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def container(workload: Obj, name: str) -> Obj:
    found = [c for c in pod_spec(workload)["containers"] if c["name"] == name]
    assert len(found) == 1, f"no container {name} in {workload['metadata']['name']}"
    return found[0]


def env_of(docs: list[Obj], c: Obj) -> dict[str, Any]:
    """The container's environment: envFrom ConfigMaps, then env (which wins)."""
    env: dict[str, Any] = {}
    for src in c.get("envFrom", []):
        ref = src["configMapRef"]["name"]
        env.update(get(docs, "ConfigMap", ref).get("data", {}))
    for e in c.get("env", []):
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    assert not selector.get("matchExpressions"), "matchExpressions: extend this helper"
    match = selector.get("matchLabels", {})
    return bool(match) and all(labels.get(k) == v for k, v in match.items())


def prestop_seconds(c: Obj) -> int:
    pre = c.get("lifecycle", {}).get("preStop")
    if pre is None:
        return 0
    if "sleep" in pre:
        return int(pre["sleep"]["seconds"])
    cmd = pre.get("exec", {}).get("command", [])
    assert cmd[:1] == ["sleep"], f"preStop I cannot read: {pre}"
    return int(cmd[1])


def colocated(docs: list[Obj]) -> bool:
    """Triton runs as a sidecar in the gateway's pod (components/colocated): no Deployment."""
    return not [d for d in of_kind(docs, "Deployment") if d["metadata"]["name"] == TRITON]


def triton_workload(docs: list[Obj]) -> Obj:
    """The Deployment whose pods run Triton: its own, or the gateway's when colocated."""
    return get(docs, "Deployment", GATEWAY if colocated(docs) else TRITON)


def triton_container(workload: Obj) -> Obj:
    """The `triton` container, or the native sidecar (init container, restartPolicy Always)."""
    spec = pod_spec(workload)
    found = [c for c in spec["containers"] if c["name"] == "triton"] + [
        c for c in spec.get("initContainers", [])
        if c["name"] == "triton" and c.get("restartPolicy") == "Always"]
    assert len(found) == 1, f"no triton container in {workload['metadata']['name']}"
    return found[0]


def init_steps(workload: Obj) -> list[Obj]:
    """Init containers that run to completion (not native sidecars)."""
    return [c for c in pod_spec(workload).get("initContainers", [])
            if c.get("restartPolicy") != "Always"]


def triton_port_names(c: Obj) -> dict[str, int]:
    """Triton's ports by role (http, grpc, metrics); a sidecar's names carry "triton-"."""
    return {p["name"].removeprefix("triton-"): p["containerPort"] for p in c["ports"]}


def triton_arg(triton: Obj, flag: str) -> str:
    values = [a.split("=", 1)[1] for a in triton_container(triton)["args"]
              if a.startswith(flag + "=")]
    assert len(values) == 1, f"{flag} given {len(values)} times"
    return values[0]


def components_of(overlay: str) -> list[str]:
    k = yaml.safe_load((OVERLAY_DIR / overlay / "kustomization.yaml").read_text())
    return [Path(c).name for c in k.get("components", [])]


def adapter_rules() -> list[Obj]:
    values = yaml.safe_load((K8S / "monitoring" / "prometheus-adapter-values.yaml").read_text())
    return values["rules"]["custom"]


def batcher_delays_us() -> list[int]:
    return [int(m) for p in sorted((REPO / "model_repository").glob("*/config.pbtxt"))
            for m in re.findall(r"max_queue_delay_microseconds:\s*(\d+)", p.read_text())]


def workloads(docs: list[Obj]) -> list[Obj]:
    return of_kind(docs, "Deployment") + of_kind(docs, "Job")


# --- several models ------------------------------------------------------------------------

GENERATOR = ["python", "-m", "gateway.embedded_triton.repository"]


def served_models(docs: list[Obj]) -> list[ModelSpec]:
    """The models the gateway serves, from its SIGLIP_MODEL as the gateway itself reads it."""
    env = env_of(docs, container(get(docs, "Deployment", GATEWAY), "gateway"))
    assert not env.get("SIGLIP_MODELS_FILE"), "a models file: extend this helper"
    return resolve_models(env["SIGLIP_MODEL"], "")


def repository_step(workload: Obj) -> Obj | None:
    """The init container that generates Triton's model repository, if the pod has one."""
    found = [c for c in init_steps(workload) if c.get("command") == GENERATOR]
    assert len(found) <= 1, "two repository generators"
    return found[0] if found else None


def option_values(args: list[str], flag: str) -> list[str]:
    """Every value of `flag` in an argument list, given as `flag VALUE` or `flag=VALUE`."""
    values = []
    for i, arg in enumerate(args):
        if arg == flag:
            assert i + 1 < len(args), f"{flag} without a value"
            values.append(args[i + 1])
        elif arg.startswith(flag + "="):
            values.append(arg.split("=", 1)[1])
    return values


def volume_at(workload: Obj, c: Obj, path: str) -> tuple[Obj, Obj]:
    """(mount, volume) of the container's mount that holds `path`."""
    mounts = [m for m in c.get("volumeMounts", [])
              if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(mounts) == 1, f"{c['name']}: {len(mounts)} mounts hold {path}"
    (vol,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == mounts[0]["name"]]
    return mounts[0], vol


def fetch_script() -> ModuleType:
    """k8s/base/config/fetch_checkpoint.py, loaded as a module."""
    path = K8S / "base" / "config" / "fetch_checkpoint.py"
    spec = importlib.util.spec_from_file_location("fetch_checkpoint", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # Registered while it runs, as `python fetch_checkpoint.py` registers __main__: its
    # dataclasses look their module up there.
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module
