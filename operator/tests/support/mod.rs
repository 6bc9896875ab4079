//! What the operator's end-to-end tests and benchmarks share, on top of `lumigo_e2e::testing`
//! (opening a suite, waiting, the built policy module, waPC guests): the CRD, the operator binary
//! as a real process against the real control plane, `Lumigo` resources and their status, workload
//! manifests, events and metrics. Its parts: [`admission`] (webhook hosts and an AdmissionReview
//! client), [`chart`] (helm and the rendered chart), [`node_rollout`] (rollouts on the real node).
//! Every suite says `mod support;` once; a bench includes it by `#[path]`.

#![allow(dead_code)] // each test binary uses its own part of this module

pub mod admission;
pub mod chart;
pub mod node_rollout;

use std::future::Future;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, CustomResourceExt};
use lumigo_e2e::testing::{eventually, policy_module_path, succeeded};
use lumigo_e2e::{ControlPlane, Process};
use lumigo_mutation::WorkloadKind;
use lumigo_operator::crd::Lumigo;
use lumigo_operator::workloads::WorkloadApi;
use serde_json::{json, Value};

pub const TOKEN: &str = "t_0123456789abcdef01234";

pub async fn install_crd(client: &Client) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("lumigo-operator-tests").force();
    crds.patch(
        "lumigoes.operator.lumigo.io",
        &params,
        &Patch::Apply(Lumigo::crd()),
    )
    .await
    .unwrap();
    eventually(
        "the Lumigo CRD to be established",
        Duration::from_secs(30),
        || async {
            let crd = crds.get("lumigoes.operator.lumigo.io").await.ok()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        },
    )
    .await;
}

/// The opening of a suite: `opening` (e.g. `lumigo_e2e::testing::shared_control_plane()`), then
/// the Lumigo CRD installed on it.
pub async fn with_crd<T>(opening: impl Future<Output = (T, Client)>) -> (T, Client) {
    let (place, client) = opening.await;
    install_crd(&client).await;
    (place, client)
}

/// Kubewarden's AdmissionPolicy CRD (a fixture), once the apiserver serves it.
pub async fn install_admission_policy_crd(cp: &ControlPlane, timeout: Duration) {
    let crd = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/kubewarden-admissionpolicy-crd.yaml"
    );
    let applied = chart::run(cp.kubectl().args(["apply", "-f", crd]));
    assert!(applied.status.success(), "{}", chart::text(&applied));
    eventually("the AdmissionPolicy CRD to be served", timeout, || async {
        succeeded(cp.kubectl().args(["get", "admissionpolicies", "-A"]))
    })
    .await;
}

/// The operator binary, started against the control plane as a real process.
pub fn start_operator(cp: &ControlPlane, version: &str, extra_env: &[(&str, &str)]) -> Process {
    start_operator_probed(cp, version, extra_env, "127.0.0.1:0")
}

/// The same, with /metrics on `probe_address`.
pub fn start_operator_probed(
    cp: &ControlPlane,
    version: &str,
    extra_env: &[(&str, &str)],
    probe_address: &str,
) -> Process {
    start_operator_with_webhook(cp, version, extra_env, probe_address).0
}

/// The operator binary with its built-in webhook on a free loopback port, which is returned.
pub fn start_operator_with_webhook(
    cp: &ControlPlane,
    version: &str,
    extra_env: &[(&str, &str)],
    probe_address: &str,
) -> (Process, u16) {
    let webhook_port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_lumigo-operator"));
    command
        .args(["run", &format!("--probe-address={probe_address}")])
        .env("KUBECONFIG", cp.kubeconfig())
        // One operator per suite unless a suite elects a leader among several (`extra_env`).
        .env("LUMIGO_LEADER_ELECTION", "false")
        .env("POD_NAMESPACE", "default")
        .env("LUMIGO_POLICY_MODULE", policy_module_path())
        .env("LUMIGO_WEBHOOK_LOOPBACK", "true")
        .env(
            "LUMIGO_WEBHOOK_ADDRESS",
            format!("127.0.0.1:{webhook_port}"),
        )
        .env("LUMIGO_OPERATOR_VERSION", version)
        .env("LUMIGO_INJECTOR_IMAGE", "ghcr.io/lumigo-rs/autotrace:0.1.0")
        // No node runs the pods of this control plane, so no workload ever rolls out: a paced
        // rollout would stop at its canary. The real node's suites pace.
        .env("LUMIGO_ROLLOUT_MAX_IN_PROGRESS", "0")
        .env("RUST_LOG", "info,lumigo_operator=debug,kube=warn");
    for (key, value) in extra_env {
        command.env(key, value);
    }
    let log = cp
        .dir()
        .join(format!("operator-{version}-{webhook_port}.log"));
    (
        Process::spawn_command("lumigo-operator", command, log).unwrap(),
        webhook_port,
    )
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub async fn create_secret(client: &Client, namespace: &str, name: &str, data: &[(&str, &str)]) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let string_data: serde_json::Map<String, Value> = data
        .iter()
        .map(|(k, v)| ((*k).to_owned(), Value::String((*v).to_owned())))
        .collect();
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": name}, "stringData": string_data}))
            .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
}

/// The Secret `lumigo-credentials` holding a valid token under `token`.
pub async fn create_token_secret(client: &Client, namespace: &str) {
    create_secret(client, namespace, "lumigo-credentials", &[("token", TOKEN)]).await;
}

pub async fn create_lumigo(client: &Client, namespace: &str, name: &str, spec: Value) -> Lumigo {
    let lumigos: Api<Lumigo> = Api::namespaced(client.clone(), namespace);
    let lumigo: Lumigo = serde_json::from_value(json!({
        "apiVersion": "operator.lumigo.io/v1alpha1", "kind": "Lumigo",
        "metadata": {"name": name}, "spec": spec
    }))
    .unwrap();
    lumigos
        .create(&PostParams::default(), &lumigo)
        .await
        .unwrap()
}

/// The `Lumigo` resource `lumigo` with the [`default_spec`] of the Secret `lumigo-credentials`.
pub async fn create_default_lumigo(client: &Client, namespace: &str) -> Lumigo {
    create_lumigo(
        client,
        namespace,
        "lumigo",
        default_spec("lumigo-credentials"),
    )
    .await
}

/// Turns logs on in the `Lumigo` resource `lumigo` (`spec.logging.enabled`).
pub async fn enable_logging(client: &Client, namespace: &str) -> Lumigo {
    Api::<Lumigo>::namespaced(client.clone(), namespace)
        .patch(
            "lumigo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"logging": {"enabled": true}}})),
        )
        .await
        .unwrap()
}

/// `lumigo-operator uninstall --wait-for-operator <wait_for_operator>` against the control plane,
/// with `extra_env`; panics unless it succeeds.
pub fn uninstall(cp: &ControlPlane, wait_for_operator: &str, extra_env: &[(&str, &str)]) {
    let output = Command::new(env!("CARGO_BIN_EXE_lumigo-operator"))
        .args(["uninstall", "--wait-for-operator", wait_for_operator])
        .env("KUBECONFIG", cp.kubeconfig())
        .envs(extra_env.iter().copied())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "uninstall failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Deletes the `Lumigo` resource and waits until its finalizer lets it go.
pub async fn delete_lumigo(client: &Client, namespace: &str, name: &str, timeout: Duration) {
    let lumigos: Api<Lumigo> = Api::namespaced(client.clone(), namespace);
    lumigos
        .delete(name, &kube::api::DeleteParams::default())
        .await
        .unwrap();
    eventually(
        &format!("the Lumigo resource {namespace}/{name} to be released"),
        timeout,
        || async { lumigos.get_opt(name).await.unwrap().is_none().then_some(()) },
    )
    .await;
}

/// Deletes the namespace and waits until it is gone.
pub async fn delete_namespace(cp: &ControlPlane, client: &Client, name: &str, timeout: Duration) {
    cp.run_kubectl(&["delete", "namespace", name, "--wait=false"], None)
        .unwrap();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    eventually(
        &format!("the namespace {name} to be gone"),
        timeout,
        || async {
            namespaces
                .get_opt(name)
                .await
                .unwrap()
                .is_none()
                .then_some(())
        },
    )
    .await;
}

pub fn default_spec(secret: &str) -> Value {
    json!({"lumigoToken": {"secretRef": {"name": secret, "key": "token"}}})
}

/// A workload of `kind` named and labelled `name` (`app: name`, its selector) whose pods run
/// `pod_spec`; `replicas` where the kind has them.
pub fn workload(kind: WorkloadKind, name: &str, replicas: u32, pod_spec: Value) -> Value {
    let metadata = json!({"name": name, "labels": {"app": name}});
    if kind == WorkloadKind::Pod {
        return json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": pod_spec});
    }
    let template = json!({"metadata": {"labels": {"app": name}}, "spec": pod_spec});
    let spec = match kind {
        WorkloadKind::Deployment | WorkloadKind::StatefulSet | WorkloadKind::ReplicaSet => json!({
            "replicas": replicas, "selector": {"matchLabels": {"app": name}}, "template": template
        }),
        WorkloadKind::DaemonSet => {
            json!({"selector": {"matchLabels": {"app": name}}, "template": template})
        }
        WorkloadKind::ReplicationController => {
            json!({"replicas": replicas, "selector": {"app": name}, "template": template})
        }
        WorkloadKind::Job => json!({"template": template, "backoffLimit": 0}),
        WorkloadKind::CronJob => {
            json!({"schedule": "0 0 1 1 *", "jobTemplate": {"spec": {"template": template}}})
        }
        WorkloadKind::Pod => unreachable!("returned above"),
    };
    let mut object = json!({
        "apiVersion": kind.api_version(), "kind": kind.name(), "metadata": metadata, "spec": spec
    });
    if kind == WorkloadKind::StatefulSet {
        object["spec"]["serviceName"] = json!(name);
    }
    object
}

/// A manifest of `kind` named `name` with one container running `image`; `replicas` 0 keeps
/// the controller-manager from creating Pods where a test does not need them.
pub fn manifest(kind: WorkloadKind, name: &str, replicas: u32) -> Value {
    assert!(
        kind != WorkloadKind::Pod,
        "the rollout does not create bare pods"
    );
    let restart_policy = if matches!(kind, WorkloadKind::Job | WorkloadKind::CronJob) {
        "Never"
    } else {
        "Always"
    };
    let pod_spec = json!({
        "containers": [{"name": "app", "image": "registry.example.com/shop/app:1.0",
                        "env": [{"name": "LD_PRELOAD", "value": "/usr/lib/libjemalloc.so"}]}],
        "restartPolicy": restart_policy
    });
    workload(kind, name, replicas, pod_spec)
}

/// Creates the [`manifest`] of `kind` named `name`.
pub async fn create_manifest(
    client: &Client,
    namespace: &str,
    kind: WorkloadKind,
    name: &str,
    replicas: u32,
) {
    create(client, namespace, kind, manifest(kind, name, replicas)).await;
}

pub async fn create(client: &Client, namespace: &str, kind: WorkloadKind, object: Value) {
    let plural = kind.plural();
    let (group, version) = match kind.api_version().split_once('/') {
        Some((group, version)) => (group, version),
        None => ("", "v1"),
    };
    let resource = kube::api::ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: kind.api_version().into(),
        kind: kind.name().into(),
        plural: plural.into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &resource);
    let object: DynamicObject = serde_json::from_value(object).unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
}

pub async fn get(client: &Client, namespace: &str, kind: WorkloadKind, name: &str) -> Value {
    WorkloadApi::new(client.clone())
        .get(kind, namespace, name)
        .await
        .unwrap()
}

/// The spec as the API server serializes it: what "byte for byte" compares.
pub async fn spec_bytes(
    client: &Client,
    namespace: &str,
    kind: WorkloadKind,
    name: &str,
) -> String {
    serde_json::to_string(&get(client, namespace, kind, name).await["spec"]).unwrap()
}

pub fn injected_label(object: &Value, kind: WorkloadKind) -> Option<String> {
    let template = kind.template(object)?;
    template
        .pointer("/metadata/labels/lumigo.auto-trace")?
        .as_str()
        .map(str::to_owned)
}

/// Reasons of the events recorded on the object named `name` in `namespace`.
pub async fn event_reasons(client: &Client, namespace: &str, name: &str) -> Vec<String> {
    events_of(client, namespace, name)
        .await
        .into_iter()
        .filter_map(|event| event.reason)
        .collect()
}

pub async fn event_notes(client: &Client, namespace: &str, name: &str) -> Vec<String> {
    events_of(client, namespace, name)
        .await
        .into_iter()
        .filter_map(|event| event.note)
        .collect()
}

async fn events_of(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Vec<k8s_openapi::api::events::v1::Event> {
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(client.clone(), namespace);
    let params = kube::api::ListParams::default().fields(&format!("regarding.name={name}"));
    events.list(&params).await.unwrap().items
}

pub async fn lumigo_status(client: &Client, namespace: &str, name: &str) -> Option<Value> {
    let lumigos: Api<Lumigo> = Api::namespaced(client.clone(), namespace);
    let lumigo = lumigos.get_opt(name).await.unwrap()?;
    lumigo
        .status
        .map(|status| serde_json::to_value(status).unwrap())
}

pub fn condition<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == kind)
}

/// Workload writes the operator has made, from its /metrics.
pub fn workload_writes(metrics_url: &str) -> u64 {
    let body = Command::new("curl")
        .args(["-sf", metrics_url])
        .output()
        .unwrap()
        .stdout;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|line| line.starts_with("lumigo_operator_workload_writes_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A token Secret and a `Lumigo` resource in `namespace`, once the reconciler has given the
/// resource a status with an `Active` condition (true, or false with its reason).
pub async fn lumigo_with_status(client: &Client, namespace: &str) -> Value {
    create_token_secret(client, namespace).await;
    create_default_lumigo(client, namespace).await;
    eventually(
        "the Lumigo resource to have a status",
        WAIT_FOR_STATUS,
        || async {
            let status = lumigo_status(client, namespace, "lumigo").await?;
            condition(&status, "Active").is_some().then_some(status)
        },
    )
    .await
}

/// The same, once the resource is active (its token valid, its namespace not protected).
pub async fn active_lumigo(client: &Client, namespace: &str) {
    lumigo_with_status(client, namespace).await;
    eventually(
        "the Lumigo resource to be active",
        WAIT_FOR_STATUS,
        || async {
            let status = lumigo_status(client, namespace, "lumigo").await?;
            (condition(&status, "Active")?["status"] == "True").then_some(())
        },
    )
    .await;
}

const WAIT_FOR_STATUS: Duration = Duration::from_secs(60);

/// The operator binary with its built-in webhook, registered with the apiserver as the operator
/// keeps it ([`register_loopback_webhook`]): the process, the webhook's port and the CA it serves.
pub async fn start_operator_with_registered_webhook(
    cp: &ControlPlane,
    client: &Client,
    extra_env: &[(&str, &str)],
) -> (Process, u16, String) {
    let (operator, port) = start_operator_with_webhook(cp, "0.1.0", extra_env, "127.0.0.1:0");
    let ca = register_loopback_webhook(client, port).await;
    (operator, port, ca)
}

/// Registers the operator's webhook on `https://127.0.0.1:port` as the configuration the
/// operator keeps (`lumigo-operator`), and returns the CA the operator publishes into it.
pub async fn register_loopback_webhook(client: &Client, port: u16) -> String {
    use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
    use lumigo_operator::admission::{webhook_configuration, WebhookTarget};
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    configurations
        .create(
            &PostParams::default(),
            &webhook_configuration(
                "lumigo-operator",
                &WebhookTarget::Url(format!("https://127.0.0.1:{port}")),
                "default",
                None,
            ),
        )
        .await
        .unwrap();
    eventually(
        "the operator to publish its CA",
        WAIT_FOR_STATUS,
        || async {
            let configuration = configurations.get("lumigo-operator").await.ok()?;
            let bundle = configuration
                .webhooks?
                .first()?
                .client_config
                .ca_bundle
                .clone()?;
            String::from_utf8(bundle.0).ok()
        },
    )
    .await
}

/// The peak resident memory of process `pid` so far (VmHWM), in MiB.
pub fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("reading the status of process {pid}: {e}"));
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib / 1024
}
