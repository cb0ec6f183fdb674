"""Offline checks of the Kubernetes deployment (k8s/): structure, probes, shutdown, wiring.

Every overlay in k8s/overlays/ is rendered with `kubectl kustomize` (tests/support/k8s_render.py)
and checked for what no schema catches and a cluster would only show in production: probes that
cannot tell "alive" from "ready", Deployments without a disruption budget, grace periods
shorter than the drain, GPU requests on the CPU overlay, Services and URLs that point nowhere.
Schema validation, checkov and hadolint run in .ci/k8s-check.sh; security, autoscaling and
images are in the sibling test_k8s_*.py modules.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.k8s_render import (
    GATEWAY,
    NAME_LABEL,
    OVERLAYS,
    TRITON,
    Obj,
    colocated,
    components_of,
    configmap,
    container,
    env_of,
    get,
    init_steps,
    of_kind,
    option_values,
    pod_labels,
    pod_spec,
    prestop_seconds,
    render,
    repository_step,
    selects,
    served_models,
    triton_arg,
    triton_container,
    triton_port_names,
    triton_workload,
)

# --- structure ------------------------------------------------------------------------------


def test_overlays_exist() -> None:
    assert {"gpu", "cpu", "gpu-colocated"} <= set(OVERLAYS)


def test_everything_in_the_overlay_namespace(docs: list[Obj]) -> None:
    (ns,) = of_kind(docs, "Namespace")
    name = ns["metadata"]["name"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == name, f"{d['kind']}/{d['metadata']['name']}"


def test_every_deployment_has_a_pdb(docs: list[Obj]) -> None:
    deployments = of_kind(docs, "Deployment")
    expected = {GATEWAY} if colocated(docs) else {GATEWAY, TRITON}
    assert {d["metadata"]["name"] for d in deployments} == expected
    for dep in deployments:
        pdbs = [p for p in of_kind(docs, "PodDisruptionBudget")
                if p["apiVersion"] == "policy/v1"
                and selects(p["spec"]["selector"], pod_labels(dep))]
        assert len(pdbs) == 1, f"{dep['metadata']['name']}: {len(pdbs)} PDBs"
        spec = pdbs[0]["spec"]
        # A budget that allows no eviction blocks every node drain.
        assert spec.get("maxUnavailable", 0) >= 1 or "minAvailable" in spec


# --- probes and shutdown -------------------------------------------------------------------


def test_readiness_differs_from_liveness(docs: list[Obj]) -> None:
    for dep in of_kind(docs, "Deployment"):
        sidecars = [c for c in pod_spec(dep).get("initContainers", []) if c not in init_steps(dep)]
        for c in pod_spec(dep)["containers"] + sidecars:
            assert c.get("readinessProbe") and c.get("livenessProbe"), c["name"]
            assert c["readinessProbe"] != c["livenessProbe"], c["name"]


def test_gateway_probes_are_native_grpc(docs: list[Obj]) -> None:
    gw = container(get(docs, "Deployment", GATEWAY), "gateway")
    grpc_port = next(p["containerPort"] for p in gw["ports"] if p["name"] == "grpc")
    live, ready = gw["livenessProbe"]["grpc"], gw["readinessProbe"]["grpc"]
    assert live["port"] == ready["port"] == grpc_port
    # The health servicer answers "liveness" while the process runs, "" and the API service
    # only while Triton is ready: a Triton outage must not restart gateways.
    assert live["service"] == "liveness"
    assert ready.get("service", "") in ("", "siglip.v1.SiglipService")
    assert gw["startupProbe"]["grpc"] == live


def test_gateway_ports_match_settings(docs: list[Obj]) -> None:
    gw = container(get(docs, "Deployment", GATEWAY), "gateway")
    env = env_of(docs, gw)
    ports = {p["name"]: p["containerPort"] for p in gw["ports"]}
    assert ports == {"grpc": int(env["SIGLIP_PORT"]), "metrics": int(env["SIGLIP_METRICS_PORT"]),
                     "http": int(env["SIGLIP_HTTP_PORT"])}
    # Workers follow the CPU limit, not the node's core count.
    assert env["SIGLIP_WORKERS"]["resourceFieldRef"]["resource"] == "limits.cpu"


def test_triton_cpu_threads_follow_the_cpu_limit_and_openmp_does_not_spin(
        docs: list[Obj]) -> None:
    tr = triton_container(triton_workload(docs))
    env = env_of(docs, tr)
    # The towers' torch threads = the container's CPU limit (what gateway/cpus.py computes for
    # the embedded Triton), not the node's core count.
    for name in ("SIGLIP_TRITON_CPU_THREADS", "OMP_NUM_THREADS"):
        ref = env[name]["resourceFieldRef"]
        assert (ref["resource"], ref.get("containerName"), ref["divisor"]) == (
            "limits.cpu", "triton", "1"), name
    assert env["SIGLIP_TRITON_CPU_INTEROP_THREADS"] == "1"
    # libgomp reads its wait policy when torch loads: it must come with the environment.
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"


def test_triton_probes(docs: list[Obj]) -> None:
    tr = triton_container(triton_workload(docs))
    assert tr["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert tr["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    startup = tr["startupProbe"]
    # Model load takes minutes; liveness must not kill it meanwhile.
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    http_port = {p["name"] for p in tr["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert tr[probe]["httpGet"]["port"] in http_port


def test_triton_server_flags(docs: list[Obj]) -> None:
    triton = triton_workload(docs)
    args = triton_container(triton)["args"]
    assert args[0] == "tritonserver"
    # The image's repository (one model, plain names), or the one an init container generates
    # for several models (test_k8s_models.py).
    step = repository_step(triton)
    expected = "/models" if step is None else option_values(step["args"], "--out")[0]
    assert triton_arg(triton, "--model-repository") == expected
    assert triton_arg(triton, "--strict-readiness") == "true"
    assert triton_arg(triton, "--exit-on-error") == "true"
    ports = triton_port_names(triton_container(triton))
    assert ports == {"http": int(triton_arg(triton, "--http-port")),
                     "grpc": int(triton_arg(triton, "--grpc-port")),
                     "metrics": int(triton_arg(triton, "--metrics-port"))}


def test_triton_flags_exist_in_triton_2_51() -> None:
    """Every server flag of the Deployment is one Triton 2.51 (the image's 24.10 base) knows.

    The nvidia-pytriton wheel of the dev environment ships the same server release; an
    unknown flag would only show in the cluster, as a crash loop.
    """
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("nvidia-pytriton (the [triton] extra) is not installed")
    wheel = Path(next(iter(spec.submodule_search_locations)))
    server = wheel / "tritonserver" / "bin" / "tritonserver"
    proc = subprocess.run([str(server), "--help"], capture_output=True, text=True, timeout=30,
                          check=False)
    known = set(re.findall(r"^\s+(--[a-z0-9-]+)", proc.stdout + proc.stderr, re.M))
    assert "--model-repository" in known, "could not read tritonserver --help"
    for overlay in OVERLAYS:
        args = triton_container(triton_workload(render(overlay)))["args"][1:]
        assert {a.split("=", 1)[0] for a in args} <= known, overlay


def test_gateway_grace_covers_prestop_and_drain(docs: list[Obj]) -> None:
    dep = get(docs, "Deployment", GATEWAY)
    gw = container(dep, "gateway")
    drain = float(env_of(docs, gw)["SIGLIP_SHUTDOWN_GRACE_S"])
    assert prestop_seconds(gw) > 0
    assert pod_spec(dep)["terminationGracePeriodSeconds"] > prestop_seconds(gw) + drain


def test_triton_grace_covers_prestop_and_exit_timeout(docs: list[Obj]) -> None:
    dep = triton_workload(docs)
    exit_timeout = int(triton_arg(dep, "--exit-timeout-secs"))
    tr = triton_container(dep)
    grace = pod_spec(dep)["terminationGracePeriodSeconds"]
    if colocated(docs):
        # A sidecar gets SIGTERM only once the gateway has drained and exited; no one else
        # calls it, so it needs no preStop pause, but the grace period covers both in turn.
        gw = container(dep, "gateway")
        drain = float(env_of(docs, gw)["SIGLIP_SHUTDOWN_GRACE_S"])
        assert grace > prestop_seconds(gw) + drain + prestop_seconds(tr) + exit_timeout
        return
    assert prestop_seconds(tr) > 0
    assert grace > prestop_seconds(tr) + exit_timeout


def test_triton_has_memory_dev_shm(docs: list[Obj]) -> None:
    dep = triton_workload(docs)
    (mount,) = [m for m in triton_container(dep)["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    (vol,) = [v for v in pod_spec(dep)["volumes"] if v["name"] == mount["name"]]
    assert vol["emptyDir"]["medium"] == "Memory"
    assert vol["emptyDir"]["sizeLimit"]
    if colocated(docs):  # the gateway's tensor regions live there too
        gw_mounts = container(dep, "gateway")["volumeMounts"]
        assert {"name": mount["name"], "mountPath": "/dev/shm"} in gw_mounts


def test_colocated_gateway_uses_shared_memory_over_loopback(docs: list[Obj]) -> None:
    env = env_of(docs, container(get(docs, "Deployment", GATEWAY), "gateway"))
    if not colocated(docs):
        assert env.get("SIGLIP_TRITON_SHM", "auto") != "on"  # Triton is on other hosts
        return
    dep = triton_workload(docs)
    assert env["SIGLIP_TRITON_URL"] == f"localhost:{triton_arg(dep, '--grpc-port')}"
    assert env["SIGLIP_TRITON_SHM"] == "on"
    assert triton_arg(dep, "--grpc-address") == "127.0.0.1"
    # Same uid in both containers: the gateway's regions are mode 0600.
    users = {c.get("securityContext", {}).get("runAsUser", pod_spec(dep)["securityContext"][
        "runAsUser"]) for c in (container(dep, "gateway"), triton_container(dep))}
    assert len(users) == 1
    # The sidecar starts after the checkpoint is in place.
    names = [c["name"] for c in pod_spec(dep)["initContainers"]]
    assert names.index("checkpoint") < names.index("triton")


def test_colocated_triton_matches_the_standalone_one() -> None:
    """The sidecar is written out in components/colocated: keep it equal to the standalone
    Triton of the gpu overlay (image, flags, environment, resources, probes' paths)."""
    if "gpu-colocated" not in OVERLAYS:
        pytest.skip("no gpu-colocated overlay")
    side = triton_container(triton_workload(render("gpu-colocated")))
    alone_docs = render("gpu")
    alone = triton_container(get(alone_docs, "Deployment", TRITON))
    assert side["image"] == alone["image"]
    assert [a for a in side["args"] if not a.startswith("--grpc-address=")] == alone["args"]
    assert side["env"] == alone["env"] and side["envFrom"] == alone["envFrom"]
    assert side["resources"] == alone["resources"]
    assert side["securityContext"] == alone["securityContext"]
    assert triton_port_names(side) == triton_port_names(alone)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        strip = [dict(side[probe], httpGet={**side[probe]["httpGet"], "port": None}),
                 dict(alone[probe], httpGet={**alone[probe]["httpGet"], "port": None})]
        assert strip[0] == strip[1], probe


# --- GPU vs CPU ----------------------------------------------------------------------------


def test_gpu_only_where_asked(overlay: str, docs: list[Obj]) -> None:
    triton = triton_container(triton_workload(docs))
    if {"triton-gpu", "colocated"} & set(components_of(overlay)):
        assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
        spec = pod_spec(triton_workload(docs))
        assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    else:
        assert "nvidia.com/gpu" not in yaml.safe_dump_all(docs)


def test_gpu_overlay_requests_gpu_and_cpu_overlay_does_not() -> None:
    gpu = container(get(render("gpu"), "Deployment", TRITON), "triton")
    cpu = container(get(render("cpu"), "Deployment", TRITON), "triton")
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
    assert "nvidia.com/gpu" not in cpu["resources"].get("requests", {})


# --- services and wiring ---------------------------------------------------------------------


def test_services(docs: list[Obj]) -> None:
    expected = {"siglip-gateway-headless": (GATEWAY, "None"), "siglip-gateway": (GATEWAY, None)}
    if not colocated(docs):
        expected["siglip-triton-headless"] = (TRITON, "None")
    assert {s["metadata"]["name"] for s in of_kind(docs, "Service")} == set(expected)
    for svc in of_kind(docs, "Service"):
        dep_name, cluster_ip = expected[svc["metadata"]["name"]]
        dep = get(docs, "Deployment", dep_name)
        assert svc["spec"].get("clusterIP") == cluster_ip
        assert svc["spec"]["selector"] == {NAME_LABEL: dep_name}
        assert selects({"matchLabels": svc["spec"]["selector"]}, pod_labels(dep))
        port_names = {p["name"] for c in pod_spec(dep)["containers"] for p in c["ports"]}
        # The gateway's Services carry its HTTP/JSON port too; Triton's only gRPC.
        names = {"grpc", "http"} if dep_name == GATEWAY else {"grpc"}
        assert {p["name"] for p in svc["spec"]["ports"]} == names
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] == port["name"] and port["targetPort"] in port_names


def test_gateway_reaches_triton_through_headless_dns(docs: list[Obj]) -> None:
    if colocated(docs):
        pytest.skip("Triton is in the gateway's pod (test_colocated_gateway_uses_...)")
    svc = get(docs, "Service", "siglip-triton-headless")
    grpc = next(p["port"] for p in svc["spec"]["ports"] if p["name"] == "grpc")
    url = env_of(docs, container(get(docs, "Deployment", GATEWAY), "gateway"))["SIGLIP_TRITON_URL"]
    ns = svc["metadata"]["namespace"]
    assert url == f"dns:///{svc['metadata']['name']}.{ns}.svc.cluster.local:{grpc}"


def test_checkpoint_named_once_and_mounted(docs: list[Obj]) -> None:
    model_cm = configmap(docs, "siglip-model")
    model_list = model_cm["data"]["SIGLIP_MODEL"]
    # One directory, or NAME=DIRECTORY entries (several models): each read where it is fetched.
    model_dirs = [m.checkpoint for m in served_models(docs)]
    gateway, triton = get(docs, "Deployment", GATEWAY), triton_workload(docs)
    for dep, c in ((gateway, container(gateway, "gateway")), (triton, triton_container(triton))):
        refs = [s["configMapRef"]["name"] for s in c["envFrom"]]
        assert model_cm["metadata"]["name"] in refs
        assert "SIGLIP_MODEL" not in {e["name"] for e in c.get("env", [])}
        others = [get(docs, "ConfigMap", r) for r in refs if r != model_cm["metadata"]["name"]]
        assert all("SIGLIP_MODEL" not in o.get("data", {}) for o in others)
        (init,) = [s for s in init_steps(dep) if s["name"] == "checkpoint"]
        assert env_of(docs, init)["SIGLIP_MODEL"] == model_list
        for model_dir in model_dirs:
            (mount,) = [m for m in c["volumeMounts"]
                        if model_dir.startswith(m["mountPath"] + "/")]
            assert mount["readOnly"] is True
            assert any(m["name"] == mount["name"] for m in init["volumeMounts"])


def test_pvc_component(overlay: str, docs: list[Obj]) -> None:
    if "checkpoint-pvc" not in components_of(overlay):
        assert not of_kind(docs, "PersistentVolumeClaim") and not of_kind(docs, "Job")
        return
    pvc = get(docs, "PersistentVolumeClaim", "siglip-checkpoint")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    for name in (GATEWAY, TRITON):
        dep = get(docs, "Deployment", name)
        (vol,) = [v for v in pod_spec(dep)["volumes"] if v["name"] == "checkpoint"]
        assert vol == {"name": "checkpoint", "persistentVolumeClaim": {
            "claimName": "siglip-checkpoint", "readOnly": True}}
        (init,) = [s for s in init_steps(dep) if s["name"] == "checkpoint"]
        assert init["args"] == ["--wait"]
    job = get(docs, "Job", "siglip-checkpoint-fetch")
    (vol,) = [v for v in pod_spec(job)["volumes"] if v["name"] == "checkpoint"]
    assert vol["persistentVolumeClaim"] == {"claimName": "siglip-checkpoint"}


def test_podmonitors_scrape_named_metrics_ports(docs: list[Obj]) -> None:
    monitors = of_kind(docs, "PodMonitor")
    for dep in of_kind(docs, "Deployment"):
        mine = [m for m in monitors if selects(m["spec"]["selector"], pod_labels(dep))]
        assert len(mine) == 1, dep["metadata"]["name"]
        ports = {p["name"] for c in pod_spec(dep)["containers"] for p in c["ports"]}
        endpoints = [e["port"] for e in mine[0]["spec"]["podMetricsEndpoints"]]
        if dep["metadata"]["name"] == GATEWAY and colocated(docs):
            ports |= {p["name"] for p in triton_container(dep)["ports"]}
            assert endpoints == ["metrics", "triton-metrics"]
        else:
            assert endpoints == ["metrics"]
        assert set(endpoints) <= ports
