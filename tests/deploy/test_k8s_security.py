"""Offline checks of the Kubernetes deployment: pod security and NetworkPolicy.

Restricted containers (non-root, no capabilities, read-only root with writable volumes where
needed), no API tokens, and ingress that lets only gateway pods reach Triton's gRPC port and
only Prometheus reach the metrics ports.
"""

from __future__ import annotations

from tests.support.k8s_render import (
    GATEWAY,
    NAME_LABEL,
    TRITON,
    Obj,
    all_containers,
    colocated,
    container,
    env_of,
    get,
    of_kind,
    pod_labels,
    pod_spec,
    selects,
    triton_container,
    triton_port_names,
    triton_workload,
    workloads,
)


def test_containers_are_restricted(docs: list[Obj]) -> None:
    service_accounts = {s["metadata"]["name"]: s for s in of_kind(docs, "ServiceAccount")}
    for w in workloads(docs):
        spec = pod_spec(w)
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True
        assert pod_sc["runAsUser"] >= 10000 and pod_sc["runAsGroup"] >= 10000
        assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec["automountServiceAccountToken"] is False
        assert service_accounts[spec["serviceAccountName"]]["automountServiceAccountToken"] is False
        for c in all_containers(w):
            sc = c["securityContext"]
            assert sc.get("runAsNonRoot", pod_sc["runAsNonRoot"]) is True, c["name"]
            assert sc.get("runAsUser", pod_sc["runAsUser"]) != 0, c["name"]
            assert sc["allowPrivilegeEscalation"] is False, c["name"]
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
            assert sc["readOnlyRootFilesystem"] is True, c["name"]
            assert not sc.get("privileged"), c["name"]
            assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"]


def test_writable_paths_are_volumes(docs: list[Obj]) -> None:
    # With a read-only root filesystem, HOME and the HF cache must point into a mounted volume.
    for w in workloads(docs):
        for c in all_containers(w):
            mounts = [m["mountPath"] for m in c.get("volumeMounts", []) if not m.get("readOnly")]
            env = env_of(docs, c)
            for var in ("HOME", "HF_HOME"):
                assert any(env[var] == m or env[var].startswith(m + "/") for m in mounts), (
                    f"{w['metadata']['name']}/{c['name']}: {var}={env[var]} not writable")


def ingress_rules_for_port(policy: Obj, port_name: str, port_number: int) -> list[Obj]:
    rules = []
    for rule in policy["spec"].get("ingress", []):
        ports = rule.get("ports")
        if not ports or any(p.get("port") in (port_name, port_number) for p in ports):
            rules.append(rule)
    return rules


def test_triton_grpc_only_from_gateway_pods(docs: list[Obj]) -> None:
    if colocated(docs):
        # Triton is in the gateway's pod: no policy may open its ports to other pods.
        pod = triton_workload(docs)
        ports = triton_port_names(triton_container(pod))
        for policy in of_kind(docs, "NetworkPolicy"):
            if selects(policy["spec"]["podSelector"], pod_labels(pod)):
                for role in ("grpc", "http"):
                    assert not ingress_rules_for_port(policy, f"triton-{role}", ports[role])
        return
    triton, gateway = get(docs, "Deployment", TRITON), get(docs, "Deployment", GATEWAY)
    grpc = next(p["containerPort"] for p in container(triton, "triton")["ports"]
                if p["name"] == "grpc")
    policies = [p for p in of_kind(docs, "NetworkPolicy")
                if selects(p["spec"]["podSelector"], pod_labels(triton))
                and "Ingress" in p["spec"]["policyTypes"]]
    assert policies, "no ingress NetworkPolicy selects the Triton pods"
    rules = [r for p in policies for r in ingress_rules_for_port(p, "grpc", grpc)]
    assert rules, "the gateway could not reach Triton"
    for rule in rules:
        peers = rule.get("from")
        assert peers, "a rule without `from` opens Triton's gRPC port to everyone"
        for peer in peers:
            # Same namespace only (no namespaceSelector), no IP ranges, gateway pods only.
            assert set(peer) == {"podSelector"}, peer
            assert selects(peer["podSelector"], pod_labels(gateway))
            assert not selects(peer["podSelector"], pod_labels(triton))


def test_metrics_ports_only_from_prometheus(docs: list[Obj]) -> None:
    checked = []
    for dep in of_kind(docs, "Deployment"):
        main = pod_spec(dep)["containers"][0]
        ports = [("metrics", next(p["containerPort"] for p in main["ports"]
                                  if p["name"] == "metrics"))]
        if dep["metadata"]["name"] == GATEWAY and colocated(docs):
            ports.append(("triton-metrics", triton_port_names(triton_container(dep))["metrics"]))
        checked += [(dep, name, number) for name, number in ports]
    for dep, name, number in checked:
        policies = [p for p in of_kind(docs, "NetworkPolicy")
                    if selects(p["spec"]["podSelector"], pod_labels(dep))]
        rules = [r for p in policies for r in ingress_rules_for_port(p, name, number)]
        assert rules, (dep["metadata"]["name"], name)
        for rule in rules:
            for peer in rule["from"]:
                assert peer["namespaceSelector"]["matchLabels"] == {
                    "kubernetes.io/metadata.name": "monitoring"}
                assert peer["podSelector"]["matchLabels"] == {NAME_LABEL: "prometheus"}


def test_gateway_api_open_within_cluster(docs: list[Obj]) -> None:
    gateway = get(docs, "Deployment", GATEWAY)
    policy = get(docs, "NetworkPolicy", GATEWAY)
    assert selects(policy["spec"]["podSelector"], pod_labels(gateway))
    rules = ingress_rules_for_port(policy, "grpc", 50051)
    assert [r["from"] for r in rules] == [[{"namespaceSelector": {}}]]
    # The HTTP/JSON port, as open as the gRPC one.
    rules = ingress_rules_for_port(policy, "http", 8080)
    assert [r["from"] for r in rules] == [[{"namespaceSelector": {}}]]
