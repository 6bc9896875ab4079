#!/usr/bin/env bash
# `just demo`: the Lumigo operator at work on a local Kubernetes cluster with a real node, explained
# step by step. Builds what it needs, starts the cluster in the background (its images built here and
# loaded into the node, an OTLP sink standing in for Lumigo), runs a small shop of Node.js, Python and
# Java services, installs the chart with helm, turns Lumigo on for the shop, shows the traces that
# arrive, turns it off again, uninstalls, and stops everything. Needs root (the node).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export LUMIGO_CACHE="${LUMIGO_CACHE:-$HOME/.cache/lumigo-operator}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$LUMIGO_CACHE/target}"
release_ns=lumigo-system
app_ns=shop
work="$(mktemp -d "${TMPDIR:-/tmp}/lumigo-demo.XXXXXX")"
cluster_pid=

cleanup() {
    local status=$?
    if ((status != 0)) && [[ -f $work/admin.kubeconfig ]] && kill -0 "$cluster_pid" 2>/dev/null; then
        local k=("$kubectl" --kubeconfig "$work/admin.kubeconfig" --request-timeout=10s)
        echo "!! the cluster as the demo failed:" >&2
        "${k[@]}" get nodes -o 'custom-columns=NODE:.metadata.name,CONDITIONS:.status.conditions[?(@.status=="True")].type' >&2 || true
        "${k[@]}" get pods -A -o wide >&2 || true
        "${k[@]}" get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 40 >&2 || true
    fi
    if [[ -n $cluster_pid ]]; then
        kill "$cluster_pid" 2>/dev/null || true
        wait "$cluster_pid" 2>/dev/null || true
    fi
    if ((status != 0)); then
        echo "!! the demo failed (exit $status); the last lines of its logs:" >&2
        for log in "$work"/*.log; do [[ -f "$log" ]] && { echo "--- $log" >&2; tail -n 30 "$log" >&2; }; done
    fi
    rm -rf "$work"
    echo "==> Stopped the cluster (node, control plane, sink), removed $work."
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
    shown="${shown//$helm/helm}"
    printf '\n$ %s\n' "${shown//$work/\$DEMO_DIR}"
    "$@" 2>&1 | sed 's/^/  /'
}
wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
    local deadline=$((SECONDS + $1)) what=$2; shift 2
    explain "(waiting for $what)"
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || { echo "!! timed out waiting for $what" >&2; return 1; }
        sleep 0.5
    done
}
timed() { # timed LABEL COMMAND...: runs COMMAND, prints how long it took
    local start=$SECONDS
    "$@"
    explain "$1: $((SECONDS - start)) s"
}
[[ $(id -u) == 0 ]] || { echo "!! the demo runs a real Kubernetes node and needs root" >&2; exit 1; }

say "Build what the demo needs"
explain "Kubernetes (control plane and node) from e2e/k8s/go.mod, containerd and CoreDNS from e2e/containerd" \
        "and e2e/coredns, helm from tools/helm, the collector from tools/otelcol (all cached by version), the" \
        "operator (static, for its image), the policy module and the /opt/lumigo payload. A first run on a new" \
        "machine compiles for ~30 minutes; later runs take seconds. Progress is in $work/build.log."
build_start=$SECONDS
bin="$("$repo/e2e/build-binaries.sh" 2>>"$work/build.log")"
"$repo/e2e/build-node-binaries.sh" >/dev/null 2>>"$work/build.log"
helm="$("$repo/tools/helm/build.sh" 2>>"$work/build.log")"
inputs="$("$repo/e2e/image-inputs.sh" 2>>"$work/build.log")"
eval "$inputs"
(cd "$repo" && cargo build -q -p lumigo-e2e --bin control-plane 2>>"$work/build.log")
kubectl="$bin/kubectl"
explain "built (or found in the cache) in $((SECONDS - build_start)) s: $("$kubectl" version --client 2>/dev/null | head -1)," \
        "helm $("$helm" version --short), collector $LUMIGO_COLLECTOR_TAG"

say "Start a local Kubernetes cluster with a real node, in the background"
explain "etcd, kube-apiserver, kube-controller-manager and kube-scheduler; a node of kubelet, containerd + runc," \
        "kube-proxy and CoreDNS; the images built here loaded into the node's containerd (nothing is pulled);" \
        "and an OTLP receiver on the node's address that stands in for Lumigo's endpoint."
cluster_start=$SECONDS
"$CARGO_TARGET_DIR/debug/control-plane" --node --kubeconfig "$work/admin.kubeconfig" --traces "$work/traces.json" \
    >"$work/cluster.env" 2>"$work/cluster.log" &
cluster_pid=$!
wait_for 600 "the cluster and its images" bash -c "grep -q '^export KUBECONFIG=' '$work/cluster.env' || ! kill -0 $cluster_pid"
kill -0 "$cluster_pid" 2>/dev/null || { echo "!! the cluster did not start" >&2; exit 1; }
# shellcheck disable=SC1091
source "$work/cluster.env"
explain "ready in $((SECONDS - cluster_start)) s ($(grep -o '[0-9]* images built.*' "$work/cluster.log"))"
show "$kubectl" get nodes -o wide
show "$kubectl" get pods,services -n kube-system

say "A shop already runs in namespace '$app_ns': Node.js, Python and Java services, untraced"
explain "currencyservice (Node.js) -> emailservice (Python) -> adservice (Java) -> currencyservice, each calling" \
        "the next every 2 s; frontend is a static binary; paymentservice is opted out (lumigo.auto-trace=false)."
"$kubectl" create namespace "$app_ns" >/dev/null
"$kubectl" apply -n "$app_ns" -f "$repo/demo/shop.yaml" >/dev/null
"$kubectl" rollout status deployment -n "$app_ns" --timeout=180s >/dev/null
show "$kubectl" get pods -n "$app_ns" -o wide
before="$("$kubectl" get deployment currencyservice -n "$app_ns" -o jsonpath='{.spec}' | sha256sum)"

say "Install the operator with helm, as a user does"
explain "The chart's own images (operator, autotrace) under their release names; the collector built here;" \
        "the proxy forwarding to the demo's receiver instead of Lumigo ($LUMIGO_SINK)."
show "$helm" install lumigo "$repo/charts/lumigo-operator" -n "$release_ns" --create-namespace --wait --timeout 180s \
    --set operator.image.pullPolicy=Never \
    --set telemetryProxy.image.repository=lumigo-e2e.local/otelcol --set telemetryProxy.image.tag="$LUMIGO_COLLECTOR_TAG" \
    --set telemetryProxy.image.pullPolicy=Never \
    --set telemetryProxy.exporter.endpoint="$LUMIGO_SINK" \
    --set tracingVerification.interval=5s --set tracingVerification.silenceWindow=45s \
    --set rollout.maxInProgressPerNamespace=0
show "$kubectl" get pods -n "$release_ns" -o wide
explain "tracingVerification.silenceWindow is 45 s here (10 minutes by default), so that the demo sees a silent" \
        "workload reported; the shop's five services roll all at once (by default 10 at a time, canary first)."

say "Turn Lumigo on for the shop: one Secret with the token, one Lumigo resource"
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
applied_at="$(date +%s.%N)"
show "$kubectl" apply -n "$app_ns" -f "$work/lumigo.yaml"
explain "The operator validates the token Secret, then rolls the injection into every existing workload: each" \
        "Deployment's pods are replaced by pods that mount the injector and the tracers read-only at /opt/lumigo."
wait_for 240 "the rollout" bash -c "[[ \$('$kubectl' get lumigo lumigo -n $app_ns -o jsonpath='{.status.instrumentedCount}') == 4 ]]"
"$kubectl" rollout status deployment -n "$app_ns" --timeout=180s >/dev/null
show "$kubectl" get lumigoes -n "$app_ns" -o wide
show --as "kubectl get pods -n $app_ns -o custom-columns=<pod, payload image volume, init containers, ready>" \
    "$kubectl" get pods -n "$app_ns" -o custom-columns='POD:.metadata.name,PAYLOAD-IMAGE:.spec.volumes[?(@.name=="lumigo-injector")].image.reference,INIT:.spec.initContainers[*].name,READY:.status.containerStatuses[*].ready,RESTARTS:.status.containerStatuses[*].restartCount'
explain "paymentservice (opted out) is untouched; frontend (a static binary) is injected too and runs unharmed."
show --as "kubectl get lumigo lumigo -n $app_ns -o jsonpath='<the payload delivery>'" \
    "$kubectl" get lumigo lumigo -n "$app_ns" -o jsonpath='payloadDelivery: {.status.payloadDelivery.mode} ({.status.payloadDelivery.reason}): {.status.payloadDelivery.message}{"\n"}'
explain "This node runs Kubernetes 1.35 and containerd 2, so the autotrace image is mounted as an image volume:" \
        "no copy, no init container, no per-pod storage. Where a node cannot, an init container copies it instead."
show --as "kubectl get lumigo lumigo -n $app_ns -o jsonpath='<the Degraded condition>'" \
    "$kubectl" get lumigo lumigo -n "$app_ns" -o jsonpath='{range .status.conditions[?(@.type=="Degraded")]}Degraded={.status} ({.reason}): {.message}{"\n"}{end}'
explain "The rollout was health-gated: a workload whose injected pods fail would have been rolled back and" \
        "named here."

say "What the app container got"
show --as "kubectl get deployment currencyservice -n $app_ns -o jsonpath='<env of the server container>'" \
    "$kubectl" get deployment currencyservice -n "$app_ns" -o jsonpath='{range .spec.template.spec.containers[0].env[*]}{.name}={.value}{.valueFrom.secretKeyRef.name}{"\n"}{end}'
show --as "kubectl logs -n $app_ns deploy/emailservice -c server | grep 'listening on'" \
    bash -c "'$kubectl' logs -n $app_ns deploy/emailservice -c server | grep 'listening on'"
explain "emailservice's own LD_PRELOAD library is kept after ours, and still runs."

say "The traces that arrived at the receiver, through the telemetry proxy"
explain "Each service's spans carry the Kubernetes attributes the proxy added and the tracer's own token header."
cat >"$work/all-runtimes.py" <<'PY'
import json, sys
services = json.load(open(sys.argv[1]))["services"]
deployments = {s["attributes"].get("k8s.deployment.name") for s in services.values()}
sys.exit(0 if {"currencyservice", "emailservice", "adservice"} <= deployments else 1)
PY
wait_for 240 "spans from the Node.js, Python and Java services" python3 "$work/all-runtimes.py" "$work/traces.json"
sleep 3
python3 - "$work/traces.json" "$applied_at" <<'PY'
import json, sys
summary, applied = json.load(open(sys.argv[1])), float(sys.argv[2])
for name, service in sorted(summary["services"].items()):
    a = service["attributes"]
    print(f"  {name}: {service['spans']} spans, runtime {a.get('process.runtime.name', '?')}, service.name {a.get('service.name')}")
    print(f"    span names: {', '.join(service['names'][:4])}")
    print(f"    k8s: namespace={a.get('k8s.namespace.name')} deployment={a.get('k8s.deployment.name')} pod={a.get('k8s.pod.name')} node={a.get('k8s.node.name')}")
    print(f"    Authorization header forwarded: {service['authorization']}")
    print(f"    first span {service['first'] - applied:.1f} s after 'kubectl apply' of the Lumigo resource")
print(f"  {summary['spans']} spans in all; none from paymentservice (opted out):",
      "yes" if all(s["attributes"].get("k8s.deployment.name") != "paymentservice" for s in summary["services"].values()) else "NO")
PY

say "Which workloads are really traced: the operator checks, it does not assume"
explain "The proxy counts the spans of each workload, container and runtime; the operator reads the counts and" \
        "writes, only when something changes, whether each instrumented workload is Receiving, Silent or Unknown."
wait_for 300 "the verdict on every workload" bash -c "[[ \$('$kubectl' get lumigo lumigo -n $app_ns -o jsonpath='{.status.tracing}') == 3/4 ]] && '$kubectl' get events -n $app_ns --field-selector reason=LumigoNoTraces -o name | grep -q ."
show "$kubectl" get lumigoes -n "$app_ns"
show --as "kubectl get lumigo lumigo -n $app_ns -o jsonpath='<each workload: tracing state, containers, reason>'" \
    "$kubectl" get lumigo lumigo -n "$app_ns" -o jsonpath='{range .status.instrumentedResources[*]}{.name}: {.tracing.state}{range .tracing.containers[*]}  container {.name} ({.runtime}){end}{"  "}{.tracing.reason}{"\n"}{end}'
show --as "kubectl get lumigo lumigo -n $app_ns -o jsonpath='<the Tracing condition>'" \
    "$kubectl" get lumigo lumigo -n "$app_ns" -o jsonpath='{range .status.conditions[?(@.type=="Tracing")]}Tracing={.status} ({.reason}): {.message}{"\n"}{end}'
show "$kubectl" get events -n "$app_ns" --field-selector reason=LumigoTracesReceived \
    -o custom-columns=WORKLOAD:.involvedObject.name,REASON:.reason,MESSAGE:.message
show "$kubectl" get events -n "$app_ns" --field-selector reason=LumigoNoTraces \
    -o custom-columns=WORKLOAD:.involvedObject.name,REASON:.reason,MESSAGE:.message
explain "frontend is injected but runs no Node.js, Python or Java: the operator says so instead of listing it as traced."

say "Figures: the injected pods and the cluster's footprint"
for pod in $("$kubectl" get pods -n "$app_ns" --field-selector=status.phase=Running -o jsonpath='{range .items[?(@.spec.volumes)]}{.metadata.name}{"\n"}{end}'); do
    uid="$("$kubectl" get pod "$pod" -n "$app_ns" -o jsonpath='{.metadata.uid}')"
    # An image volume is the image's own snapshot: nothing of the payload is in the pod's directory.
    bytes="$(du -sb "$LUMIGO_NODE_DIR/kubelet/pods/$uid/volumes" 2>/dev/null | cut -f1)"
    explain "$pod: no init container, $((${bytes:-0} / 1024)) KiB in the pod's volume directory on the node"
done
rss() { ps -o rss= -C "$1" | awk -v n="$1" '{ s += $1 } END { printf "%s %d MiB  ", n, s / 1024 }'; }
explain "RSS: $(rss kubelet)$(rss containerd)$(rss kube-proxy)$(rss coredns)$(rss kube-scheduler)" \
        "     $(rss kube-apiserver)$(rss etcd)$(rss lumigo-operator)$(rss otelcol)"

say "A Deployment created now is injected at admission, by the operator's built-in webhook"
show "$kubectl" create deployment checkoutservice --image=lumigo-e2e.local/shop-node:1 -n "$app_ns"
show --as "kubectl get deployment checkoutservice -n $app_ns -o jsonpath='<generation, payload image, label>'" \
    "$kubectl" get deployment checkoutservice -n "$app_ns" -o jsonpath='generation: {.metadata.generation}  payload image: {.spec.template.spec.volumes[?(@.name=="lumigo-injector")].image.reference}  lumigo.auto-trace: {.metadata.labels.lumigo\.auto-trace}{"\n"}'
explain "Generation 1: it was stored injected by its very creation, no rollout needed."
show "$kubectl" get events -n "$app_ns" --field-selector reason=LumigoAddedInstrumentation \
    -o custom-columns=WORKLOAD:.involvedObject.name,REASON:.reason,MESSAGE:.message

say "Turn Lumigo off: delete the Lumigo resource"
show "$kubectl" delete lumigo lumigo -n "$app_ns" --wait=true --timeout=120s
"$kubectl" rollout status deployment -n "$app_ns" --timeout=180s >/dev/null
# The injected pods flush their spans as they stop: count from when the last one is gone.
wait_for 120 "the injected pods to be gone" bash -c "[[ -z \$('$kubectl' get pods -n $app_ns -o jsonpath='{.items[?(@.metadata.deletionTimestamp)].metadata.name}') ]]"
sleep 3
after="$("$kubectl" get deployment currencyservice -n "$app_ns" -o jsonpath='{.spec}' | sha256sum)"
show "$kubectl" get pods -n "$app_ns" -o custom-columns='POD:.metadata.name,VOLUMES:.spec.volumes[*].name,READY:.status.containerStatuses[*].ready'
if [[ "$before" == "$after" ]]; then
    explain "currencyservice's spec is byte for byte what it was before Lumigo: restored."
else
    echo "!! currencyservice's spec differs from before" >&2
    exit 1
fi
spans_before="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["spans"])' "$work/traces.json")"
sleep 10
spans_after="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["spans"])' "$work/traces.json")"
explain "spans received in the 10 s after the pods were replaced: $((spans_after - spans_before))"

operator_log="$("$kubectl" logs -n "$release_ns" deploy/lumigo-operator)"
if grep -qi forbidden <<<"$operator_log"; then
    echo "!! the operator was refused a request under the chart's RBAC" >&2
    exit 1
fi
explain "The operator's log has no 'forbidden': the chart's RBAC was enough."

say "Uninstall: helm uninstall"
show "$helm" uninstall lumigo -n "$release_ns" --wait --timeout 180s
show "$kubectl" get deployments,pods -n "$release_ns"

say "Done; cleaning up"
