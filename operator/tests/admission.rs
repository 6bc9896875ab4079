//! The built-in admission webhook on the real control plane: the apiserver calls it by URL on
//! 127.0.0.1, it evaluates the real policy module, and what the apiserver stores is checked. Every
//! test shares one webhook (and its configuration), served from a runtime of its own because each
//! test has its own.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::events::v1::Event;
use kube::api::{
    ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use lumigo_e2e::testing::{shared_control_plane, try_eventually};
use lumigo_e2e::ControlPlane;
use lumigo_mutation::{inspect, WorkloadKind};
use lumigo_operator::admission::{
    lumigo_cache, webhook_configuration, AdmissionOptions, AdmissionServer, TlsOptions,
    WebhookTarget,
};
use lumigo_operator::crd::Lumigo;
use lumigo_operator::settings::ProtectedNamespaces;
use serde_json::{json, Value};
use support::admission::*;
use support::{with_crd, workload};
use tokio::sync::OnceCell;

const SECRET: &str = "lumigo-webhook-certificate";

/// The shared webhook: its configuration is registered and trusts it.
struct Webhook {
    operator_namespace: String,
}

async fn webhook() -> Result<&'static Webhook> {
    static WEBHOOK: OnceCell<Webhook> = OnceCell::const_new();
    WEBHOOK.get_or_try_init(start_webhook).await
}

async fn start_webhook() -> Result<Webhook> {
    let (cp, client) = with_crd(shared_control_plane()).await;
    let operator_namespace = cp.create_namespace("lumigo-system", &[]).await?;
    let configuration_name = format!("lumigo-admission-{operator_namespace}");

    let config = cp.config().clone();
    let tls = TlsOptions {
        check_interval: Duration::from_secs(1),
        rotation_grace: Duration::from_secs(1),
        ..TlsOptions::for_loopback(&operator_namespace, SECRET, Some(&configuration_name))
    };
    let (bound, port) = tokio::sync::oneshot::channel();
    let protected = ProtectedNamespaces::new(&operator_namespace);
    std::thread::Builder::new()
        .name("admission-webhook".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let client = Client::try_from(config).expect("a client for the control plane");
                let lumigos = lumigo_cache(client.clone());
                let options = AdmissionOptions {
                    protected,
                    ..options(
                        tls,
                        lumigo_e2e::testing::policy_module(),
                        Duration::from_secs(1),
                    )
                };
                match AdmissionServer::bind(options, lumigos, operator_settings(), client).await {
                    Ok(server) => {
                        let _ = bound.send(Ok(server.local_addr().port()));
                        server.run().await.expect("the webhook serves");
                    }
                    Err(error) => drop(bound.send(Err(error))),
                }
            });
        })?;
    let port = port.await.context("the webhook thread ended")??;

    // Created without a caBundle: publishing it is the operator's job.
    let configuration = webhook_configuration(
        &configuration_name,
        &WebhookTarget::Url(format!("https://127.0.0.1:{port}")),
        &operator_namespace,
        None,
    );
    Api::<MutatingWebhookConfiguration>::all(client)
        .create(&PostParams::default(), &configuration)
        .await?;
    Ok(Webhook { operator_namespace })
}

/// A namespace with a `Lumigo` resource, once the webhook injects there (its configuration is
/// loaded by the apiserver, its CA published, the resource in its cache).
async fn namespace_with_lumigo(prefix: &str) -> Result<String> {
    let cp = ControlPlane::shared().await?;
    webhook().await?;
    let namespace = cp.create_namespace(prefix, &[]).await?;
    create_verified_lumigo(&cp.client()?, &namespace, true).await?;
    wait_until_injecting(&namespace).await?;
    Ok(namespace)
}

async fn wait_until_injecting(namespace: &str) -> Result<()> {
    static PROBES: AtomicUsize = AtomicUsize::new(0);
    let what = format!("the webhook to inject in {namespace}");
    try_eventually(&what, WAIT, || async {
        let name = format!("probe-{}", PROBES.fetch_add(1, Ordering::SeqCst));
        let probe = create(namespace, deployment(&name)).await?;
        Ok::<_, anyhow::Error>(
            inspect(&probe, WorkloadKind::Deployment)
                .injected
                .then_some(()),
        )
    })
    .await
}

fn api_for(client: Client, namespace: &str, object: &Value) -> Result<Api<DynamicObject>> {
    let api_version = object["apiVersion"].as_str().context("apiVersion")?;
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().context("kind")?;
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    Ok(Api::namespaced_with(client, namespace, &resource))
}

/// Creates `object` and returns what the apiserver stored, as JSON.
async fn create(namespace: &str, object: Value) -> Result<Value> {
    let client = ControlPlane::shared().await?.client()?;
    let api = api_for(client, namespace, &object)?;
    let created = api
        .create(&PostParams::default(), &serde_json::from_value(object)?)
        .await?;
    Ok(serde_json::to_value(created)?)
}

/// One of each kind the webhook sees (the Deployment a typical one), named `name`.
fn every_kind(name: &str) -> Vec<(WorkloadKind, Value)> {
    WorkloadKind::ALL
        .into_iter()
        .map(|kind| {
            let object = if kind == WorkloadKind::Deployment {
                deployment(name)
            } else {
                let mut pod_spec =
                    json!({"containers": [{"name": name, "image": "registry.invalid/app:1"}]});
                if matches!(kind, WorkloadKind::Job | WorkloadKind::CronJob) {
                    pod_spec["restartPolicy"] = json!("Never");
                }
                workload(kind, name, 1, pod_spec)
            };
            (kind, object)
        })
        .collect()
}

#[tokio::test]
async fn every_kind_is_stored_injected_where_a_lumigo_is_active() -> Result<()> {
    let namespace = namespace_with_lumigo("every-kind").await?;
    for (kind, object) in every_kind("app") {
        let stored = create(&namespace, object).await?;
        let inspection = inspect(&stored, kind);
        ensure!(
            inspection.injected,
            "{kind} was stored without the injection: {stored}"
        );
        let label = kind
            .template(&stored)
            .and_then(|template| template.pointer("/metadata/labels/lumigo.auto-trace"))
            .and_then(Value::as_str);
        ensure!(
            label == Some("lumigo-operator.v0.1.0"),
            "{kind}: injected with the label {label:?}"
        );
        let template = kind.template(&stored).cloned().context("template")?;
        let init_images: Vec<_> = template
            .pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|c| c["image"].as_str())
            .collect();
        ensure!(
            init_images == ["ghcr.io/lumigo-rs/autotrace:0.1.0"],
            "{kind}: init containers {init_images:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn an_admitted_change_is_recorded_as_an_event_on_the_object() -> Result<()> {
    let namespace = namespace_with_lumigo("events").await?;
    let stored = create(&namespace, deployment("evented")).await?;
    let uid = stored
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .context("uid")?
        .to_owned();
    let events = Api::<Event>::namespaced(ControlPlane::shared().await?.client()?, &namespace);
    let what = format!("an event regarding the Deployment {uid}");
    let event = try_eventually(&what, WAIT, || async {
        let events = events.list(&ListParams::default()).await?.items;
        Ok::<_, anyhow::Error>(events.into_iter().find(|event| {
            event.regarding.as_ref().and_then(|r| r.uid.as_deref()) == Some(uid.as_str())
                && event.reporting_controller.as_deref() == Some("lumigo-operator")
        }))
    })
    .await?;
    ensure!(
        event.reason.as_deref() == Some("LumigoAddedInstrumentation"),
        "{event:?}"
    );
    ensure!(event.type_.as_deref() == Some("Normal"));
    let regarding = event.regarding.context("regarding")?;
    ensure!(
        regarding.kind.as_deref() == Some("Deployment")
            && regarding.name.as_deref() == Some("evented")
    );
    ensure!(
        event.note.unwrap_or_default().contains("CREATE"),
        "the note names the trigger"
    );
    Ok(())
}

#[tokio::test]
async fn nothing_changes_without_an_active_lumigo() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    // The control: the webhook injects at all.
    namespace_with_lumigo("control").await?;

    let without = cp.create_namespace("without-lumigo", &[]).await?;
    let inactive = cp.create_namespace("inactive-lumigo", &[]).await?;
    create_verified_lumigo(&cp.client()?, &inactive, false).await?;
    // Enabled, but the reconciler found its token invalid: the rollout injects nothing there, and
    // neither may admission.
    let invalid_token = cp.create_namespace("invalid-token", &[]).await?;
    let lumigos = Api::<Lumigo>::namespaced(cp.client()?, &invalid_token);
    lumigos
        .create(&PostParams::default(), &lumigo("lumigo", true))
        .await?;
    lumigos
        .patch_status(
            "lumigo",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": [{
                "type": "Active", "status": "False", "reason": "InvalidToken",
                "message": "the Secret lumigo-credentials does not exist",
                "lastTransitionTime": "2026-01-01T00:00:00Z"
            }]}})),
        )
        .await?;
    // The cache sees a resource within a second or so; long after that, it must still be inactive.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for namespace in [&without, &inactive, &invalid_token] {
        for (kind, object) in every_kind("plain") {
            let stored = create(namespace, object).await?;
            ensure!(
                !inspect(&stored, kind).injected,
                "{kind} injected in {namespace}: {stored}"
            );
            let init = kind
                .template(&stored)
                .and_then(|template| template.pointer("/spec/initContainers"));
            ensure!(
                init.is_none(),
                "{kind} in {namespace} gained init containers: {init:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_operator_namespace_is_not_sent_to_the_webhook() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let webhook = webhook().await?;
    namespace_with_lumigo("control-ops").await?;
    let namespace = &webhook.operator_namespace;
    create_verified_lumigo(&cp.client()?, namespace, true).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stored = create(namespace, deployment("operator-itself")).await?;
    ensure!(
        !inspect(&stored, WorkloadKind::Deployment).injected,
        "the operator's namespace must be excluded: {stored}"
    );
    Ok(())
}

#[tokio::test]
async fn an_opted_out_object_is_left_alone() -> Result<()> {
    let namespace = namespace_with_lumigo("opted-out").await?;
    let mut object = deployment("opted-out");
    object["metadata"]["labels"]["lumigo.auto-trace"] = json!("false");
    let stored = create(&namespace, object.clone()).await?;
    ensure!(
        !inspect(&stored, WorkloadKind::Deployment).injected,
        "{stored}"
    );
    ensure!(stored
        .pointer("/spec/template/spec/initContainers")
        .is_none());
    ensure!(
        stored.pointer("/spec/template/spec/containers/0/env")
            == object.pointer("/spec/template/spec/containers/0/env")
    );
    ensure!(
        stored.pointer("/metadata/labels") == object.pointer("/metadata/labels"),
        "labels untouched"
    );
    Ok(())
}

#[tokio::test]
async fn a_job_update_does_not_touch_its_template() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    webhook().await?;
    let namespace = cp.create_namespace("job-update", &[]).await?;
    // Created before the namespace has a Lumigo: not injected, and its template is immutable since.
    let (_, job) = every_kind("batch")
        .into_iter()
        .find(|(kind, _)| *kind == WorkloadKind::Job)
        .context("a Job")?;
    let created = create(&namespace, job).await?;
    ensure!(!inspect(&created, WorkloadKind::Job).injected);

    create_verified_lumigo(&cp.client()?, &namespace, true).await?;
    wait_until_injecting(&namespace).await?;
    let jobs = Api::<Job>::namespaced(cp.client()?, &namespace);
    let updated = jobs
        .patch(
            "batch",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"touched": "yes"}}})),
        )
        .await
        .context("the update must be admitted")?;
    let updated = serde_json::to_value(updated)?;
    ensure!(updated.pointer("/metadata/labels/touched") == Some(&json!("yes")));
    ensure!(!inspect(&updated, WorkloadKind::Job).injected, "{updated}");
    ensure!(
        updated.pointer("/spec/template/spec") == created.pointer("/spec/template/spec"),
        "the Job's pod template changed on update"
    );
    Ok(())
}
