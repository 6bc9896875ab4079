#!/usr/bin/env bash
# `just demo`: the Lumigo operator at work on a local Kubernetes control plane, explained step by step.
# Builds what it needs, starts a control plane in the background, installs the chart's CRD and RBAC,
# runs the operator under the chart's ServiceAccount, instruments a namespace of Online Boutique
# Deployments, shows what a user sees, removes the instrumentation again, and stops everything.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LUMIGO_CACHE="${LUMIGO_CACHE:-$HOME/.cache/lumigo-operator}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LUMIGO_CACHE/target}"
release_ns=lumigo-system
app_ns=shop
probe_port="${DEMO_PROBE_PORT:-18080}"
webhook_port="${DEMO_WEBHOOK_PORT:-18443}"
work="$(mktemp -d "${TMPDIR:-/tmp}/lumigo-demo.XXXXXX")"
pids=()

cleanup() {
    local status=$?
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if ((status != 0)); then
        echo "!! the demo failed (exit $status); the last lines of its logs:" >&2
        for log in "$work"/*.log; do [[ -f "$log" ]] && { echo "--- $log" >&2; tail -n 20 "$log" >&2; }; done
    fi
    rm -rf "$work"
    echo "==> Stopped the operator and the control plane, removed $work."
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step=0
say() { step=$((step + 1)); printf '\n==> Step %d: %s\n' "$step" "$1"; }
explain() { printf '    %s\n' "$@"; }
# show [--as "what the reader sees"] COMMAND...: prints the command the way a user would type it, then its output.
show() {
    local shown
    if [[ $1 == --as ]]; then shown=$2; shift 2; else shown="$*"; fi
    shown="${shown//$kubectl/kubectl}"
    printf '\n$ %s\n' "${shown//$work/\$DEMO_DIR}"
    "$@" 2>&1 | sed 's/^/  /'
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2; shift 2
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "!! timed out waiting for $what" >&2; return 1; }
        sleep 0.5
    done
}

say "Build what the demo needs"
explain "kube-apiserver, kube-controller-manager, etcd and kubectl from e2e/k8s/go.mod, helm from" \
        "tools/helm/go.mod (both cached by version), and the operator and control-plane binaries (cargo)."
bin="$("$repo/e2e/build-binaries.sh")"
helm="$("$repo/tools/helm/build.sh")"
(cd "$repo" && cargo build -q -p lumigo-operator --bin lumigo-operator -p lumigo-e2e --bin control-plane)
just --justfile "$repo/justfile" policy::build >/dev/null
policy_module="$(just --justfile "$repo/justfile" policy::path)"
kubectl="$bin/kubectl"
operator="$CARGO_TARGET_DIR/debug/lumigo-operator"
explain "ok: $("$kubectl" version --client 2>/dev/null | head -1), helm $("$helm" version --short)"

say "Start a local Kubernetes control plane in the background"
explain "A real etcd + kube-apiserver + kube-controller-manager (no nodes: Pods are created but stay Pending)."
"$CARGO_TARGET_DIR/debug/control-plane" --kubeconfig "$work/admin.kubeconfig" >"$work/control-plane.log" 2>&1 &
pids+=($!)
wait_for 120 "the control plane" "$kubectl" --kubeconfig "$work/admin.kubeconfig" get --raw /readyz
export KUBECONFIG="$work/admin.kubeconfig"
show "$kubectl" get namespaces

say "Install the chart's CRD and the operator's RBAC (helm template | kubectl apply)"
explain "Exactly what 'helm install' would create for the operator's identity; the operator itself runs" \
        "on this machine instead of in a Pod, so no image is needed."
"$kubectl" create namespace "$release_ns" >/dev/null
show "$kubectl" apply --server-side -f "$repo/charts/lumigo-operator/crds/lumigo.yaml"
"$helm" template lumigo "$repo/charts/lumigo-operator" -n "$release_ns" \
    --show-only templates/serviceaccount.yaml --show-only templates/rbac.yaml >"$work/rbac.yaml"
show "$kubectl" apply -f "$work/rbac.yaml"
explain "And the chart's MutatingWebhookConfiguration, pointed at the operator on this machine" \
        "(admission.builtin.url); its caBundle stays empty until the operator publishes its own CA."
"$helm" template lumigo "$repo/charts/lumigo-operator" -n "$release_ns" --show-only templates/webhook.yaml \
    --set admission.builtin.url="https://127.0.0.1:$webhook_port/mutate" >"$work/webhook.yaml"
show "$kubectl" apply -f "$work/webhook.yaml"
"$kubectl" wait --for=condition=Established --timeout=60s crd/lumigoes.operator.lumigo.io >/dev/null

say "Run the operator under the chart's ServiceAccount"
explain "A token for ServiceAccount $release_ns/lumigo-operator (TokenRequest API), so the operator has" \
        "exactly the chart's permissions, nothing more. Its log goes to $work/operator.log."
token="$("$kubectl" create token lumigo-operator -n "$release_ns" --duration=1h)"
server="$("$kubectl" config view --minify -o jsonpath='{.clusters[0].cluster.server}')"
"$kubectl" config view --raw --minify -o jsonpath='{.clusters[0].cluster.certificate-authority-data}' | base64 -d >"$work/ca.crt"
sa_kubeconfig="$work/operator.kubeconfig"
KUBECONFIG="$sa_kubeconfig" "$kubectl" config set-cluster demo --server="$server" --certificate-authority="$work/ca.crt" --embed-certs >/dev/null
KUBECONFIG="$sa_kubeconfig" "$kubectl" config set-credentials operator --token="$token" >/dev/null
KUBECONFIG="$sa_kubeconfig" "$kubectl" config set-context demo --cluster=demo --user=operator >/dev/null
KUBECONFIG="$sa_kubeconfig" "$kubectl" config use-context demo >/dev/null
KUBECONFIG="$sa_kubeconfig" POD_NAMESPACE="$release_ns" POD_NAME=lumigo-operator-demo \
    LUMIGO_TRACES_ENDPOINT="http://lumigo-operator-telemetry-proxy.$release_ns.svc.cluster.local:4318/v1/traces" \
    LUMIGO_LOGS_ENDPOINT="http://lumigo-operator-telemetry-proxy.$release_ns.svc.cluster.local:4318/v1/logs" \
    LUMIGO_POLICY_MODULE="$policy_module" LUMIGO_WEBHOOK_LOOPBACK=true LUMIGO_WEBHOOK_ADDRESS="127.0.0.1:$webhook_port" \
    RUST_LOG=info "$operator" run --probe-address=127.0.0.1:$probe_port >"$work/operator.log" 2>&1 &
pids+=($!)
wait_for 60 "the operator to become ready" curl -fsS http://127.0.0.1:$probe_port/readyz
explain "The operator is ready (GET /readyz on 127.0.0.1:$probe_port answered; /metrics is there too)."

say "Create namespace '$app_ns' with six Online Boutique Deployments (Go, Node.js, Python, Java)"
"$kubectl" create namespace "$app_ns" >/dev/null
"$kubectl" apply -n "$app_ns" -f "$repo/demo/online-boutique.yaml" >/dev/null
explain "Opt one out: label the frontend Deployment lumigo.auto-trace=false."
show "$kubectl" label -n "$app_ns" deployment frontend lumigo.auto-trace=false
show "$kubectl" get deployments -n "$app_ns" -L lumigo.auto-trace
before="$("$kubectl" get deployment currencyservice -n "$app_ns" -o jsonpath='{.spec}' | sha256sum)"

say "Turn Lumigo on for the namespace: one Secret with the token, one Lumigo resource"
cat >"$work/lumigo.yaml" <<'YAML'
apiVersion: v1
kind: Secret
metadata: {name: lumigo-credentials}
stringData: {token: t_0123456789abcdef01234}
---
apiVersion: operator.lumigo.io/v1alpha1
kind: Lumigo
metadata: {name: lumigo}
spec: {lumigoToken: {secretRef: {name: lumigo-credentials, key: token}}}
YAML
sed 's/^/  /' "$work/lumigo.yaml"
show "$kubectl" apply -n "$app_ns" -f "$work/lumigo.yaml"
explain "The operator validates the token Secret, then rolls the injection into every existing workload."
wait_for 90 "the rollout" bash -c "[[ \$('$kubectl' get lumigo lumigo -n $app_ns -o jsonpath='{.status.instrumentedCount}') == 5 ]]"

say "What a user sees: the Lumigo resource"
show "$kubectl" get lumigoes -n "$app_ns" -o wide
explain "ACTIVE=True, 5 workloads instrumented (frontend opted out). -o wide adds the Error condition's" \
        "message (here the healthy summary); an Error=True condition says why a namespace is not instrumented."
show "$kubectl" get deployments -n "$app_ns" -L lumigo.auto-trace

say "The injected pod template of currencyservice (Node.js)"
explain "An init container copies the injector and the tracers into the 'lumigo-injector' volume; every app" \
        "container mounts it at /opt/lumigo and gets LD_PRELOAD plus the LUMIGO_* variables (the token" \
        "comes from the Secret by reference, never as a value)."
show --as "kubectl get deployment currencyservice -n $app_ns -o jsonpath='<init container, volume, mount, env>'" \
    "$kubectl" get deployment currencyservice -n "$app_ns" -o jsonpath='init container: {.spec.template.spec.initContainers[0].name}  image: {.spec.template.spec.initContainers[0].image}{"\n"}volume: {.spec.template.spec.volumes[0].name} (emptyDir, sizeLimit {.spec.template.spec.volumes[0].emptyDir.sizeLimit}){"\n"}mount in "server": {.spec.template.spec.containers[0].volumeMounts[0].name} at {.spec.template.spec.containers[0].volumeMounts[0].mountPath}{"\n"}env of "server":{"\n"}{range .spec.template.spec.containers[0].env[*]}  {.name}={.value}{.valueFrom.secretKeyRef.name}{"\n"}{end}'
explain "The pod template's annotation operator.lumigo.io/injection-record: what was added or changed," \
        "so that removal gives back the original byte for byte:"
show "$kubectl" get deployment currencyservice -n "$app_ns" -o jsonpath='{.spec.template.metadata.annotations.operator\.lumigo\.io/injection-record}{"\n"}'

say "A workload created now is injected at admission, by the operator's built-in webhook"
explain "The webhook evaluates the same wasm policy module Kubewarden would run, and never denies."
wait_for 30 "the webhook's CA" bash -c "[[ -n \$('$kubectl' get mutatingwebhookconfiguration lumigo-operator -o jsonpath='{.webhooks[0].clientConfig.caBundle}') ]]"
show "$kubectl" create deployment checkout --image=node:22-alpine -n "$app_ns"
show --as "kubectl get deployment checkout -n $app_ns -o jsonpath='<generation, init containers, label>'" \
    "$kubectl" get deployment checkout -n "$app_ns" -o jsonpath='generation: {.metadata.generation}  init containers: {.spec.template.spec.initContainers[*].name}  lumigo.auto-trace: {.metadata.labels.lumigo\.auto-trace}{"\n"}'
explain "Generation 1: it was stored injected by its very creation, no rollout needed."

say "The events the operator recorded on each workload"
show "$kubectl" get events -n "$app_ns" --field-selector reason=LumigoAddedInstrumentation \
    -o custom-columns=WORKLOAD:.involvedObject.name,REASON:.reason,MESSAGE:.message

say "A Pod created by the Deployment carries the injection"
explain "The controller-manager rolled out a new ReplicaSet from the injected template; its Pod has the init" \
        "container (Pods stay Pending: this control plane has no nodes; the older Pod without the init container" \
        "belongs to the previous ReplicaSet, which a real cluster would scale down once the new Pod is ready)."
wait_for 60 "an injected Pod" bash -c "'$kubectl' get pods -n $app_ns -l app=currencyservice -o jsonpath='{.items[*].spec.initContainers[*].name}' | grep -q lumigo-injector"
show --as "kubectl get pods -n $app_ns -l app=currencyservice -o jsonpath='<name, init containers, LD_PRELOAD>'" \
    "$kubectl" get pods -n "$app_ns" -l app=currencyservice -o jsonpath='{range .items[*]}{.metadata.name}  init containers: {.spec.initContainers[*].name}  LD_PRELOAD: {.spec.containers[0].env[?(@.name=="LD_PRELOAD")].value}{"\n"}{end}'

say "Turn Lumigo off: delete the Lumigo resource"
show "$kubectl" delete lumigo lumigo -n "$app_ns" --wait=true --timeout=90s
explain "Its finalizer let the operator remove the injection from every workload before it went away."
show "$kubectl" get deployments -n "$app_ns" -L lumigo.auto-trace
after="$("$kubectl" get deployment currencyservice -n "$app_ns" -o jsonpath='{.spec}' | sha256sum)"
show --as "kubectl get deployment currencyservice -n $app_ns -o jsonpath='<init containers, volumes>'" \
    "$kubectl" get deployment currencyservice -n "$app_ns" -o jsonpath='init containers: [{.spec.template.spec.initContainers[*].name}]  volumes: [{.spec.template.spec.volumes[*].name}]{"\n"}'
if [[ "$before" == "$after" ]]; then
    explain "currencyservice's spec is byte for byte what it was before Lumigo: restored."
else
    echo "!! currencyservice's spec differs from before" >&2
    exit 1
fi
show "$kubectl" get events -n "$app_ns" --field-selector reason=LumigoRemovedInstrumentation \
    -o custom-columns=WORKLOAD:.involvedObject.name,REASON:.reason,MESSAGE:.message
if grep -qi forbidden "$work/operator.log"; then
    echo "!! the operator was refused a request under the chart's RBAC" >&2
    exit 1
fi
explain "The operator's log has no 'forbidden': the chart's RBAC was enough."

say "Done; cleaning up"
