//! The operator binary's built-in webhook, registered with the API server: it publishes its CA
//! into the webhook configuration, and a workload created in an instrumented namespace is stored
//! injected. A stored injected workload is a fixed point: checking it again changes nothing, so
//! the operator and the webhook never rewrite it.

mod support;

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, PostParams};
use lumigo_e2e::testing::{eventually, shared_control_plane};
use lumigo_mutation::{reconcile, Operation, Outcome, Reason, WorkloadKind};
use lumigo_operator::admission::{webhook_configuration, WebhookTarget};
use lumigo_operator::crd::Lumigo;
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const CONFIGURATION: &str = "lumigo-operator";

#[tokio::test(flavor = "multi_thread")]
async fn the_operators_webhook_injects_new_workloads() {
    let (cp, client) = with_crd(shared_control_plane()).await;
    let ns = cp.create_namespace("webhook", &[]).await.unwrap();
    create_manifest(&client, &ns, WorkloadKind::Deployment, "existing", 0).await;

    let probe_port = free_port();
    let metrics_url = format!("http://127.0.0.1:{probe_port}/metrics");
    let (operator, port) =
        start_operator_with_webhook(&cp, "0.1.0", &[], &format!("127.0.0.1:{probe_port}"));
    let target = WebhookTarget::Url(format!("https://127.0.0.1:{port}"));
    let configurations: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    configurations
        .create(
            &PostParams::default(),
            &webhook_configuration(CONFIGURATION, &target, "default", None),
        )
        .await
        .unwrap();
    eventually("the operator to publish its CA", WAIT, || async {
        let configuration = configurations.get(CONFIGURATION).await.ok()?;
        configuration
            .webhooks?
            .first()?
            .client_config
            .ca_bundle
            .as_ref()
            .map(|_| ())
    })
    .await;

    create_token_secret(&client, &ns).await;
    create_default_lumigo(&client, &ns).await;
    eventually("the existing Deployment rolled", WAIT, || async {
        (lumigo_status(&client, &ns, "lumigo").await?["instrumentedCount"] == json!(1))
            .then_some(())
    })
    .await;

    let writes_after_rollout = workload_writes(&metrics_url);
    assert_eq!(
        writes_after_rollout, 1,
        "one write for the one existing workload"
    );

    // Created after the resource: injected at admission, before any rollout could reach it.
    create_manifest(&client, &ns, WorkloadKind::CronJob, "report", 0).await;
    let created = get(&client, &ns, WorkloadKind::CronJob, "report").await;
    if injected_label(&created, WorkloadKind::CronJob).is_none() {
        println!(
            "{}",
            std::fs::read_to_string(operator.log_path()).unwrap_or_default()
        );
        let apiserver =
            std::fs::read_to_string(cp.dir().join("kube-apiserver.log")).unwrap_or_default();
        for line in apiserver
            .lines()
            .filter(|l| l.contains("webhook") || l.contains("admission"))
        {
            println!("APISERVER {line}");
        }
    }
    assert_eq!(
        injected_label(&created, WorkloadKind::CronJob).as_deref(),
        Some("lumigo-operator.v0.1.0")
    );
    assert_eq!(
        created.pointer("/metadata/generation"),
        Some(&json!(1)),
        "stored injected by its very creation"
    );

    let lumigos: Api<Lumigo> = Api::namespaced(client.clone(), &ns);
    let lumigo = lumigos.get("lumigo").await.unwrap();
    let settings = lumigo_operator::settings::OperatorSettings {
        injector_image: "ghcr.io/lumigo-rs/autotrace:0.1.0".into(),
        traces_endpoint: lumigo_mutation::config::DEFAULT_TRACES_ENDPOINT.into(),
        logs_endpoint: lumigo_mutation::config::DEFAULT_LOGS_ENDPOINT.into(),
        operator_version: "0.1.0".into(),
        payload_delivery: lumigo_operator::delivery::DeliveryChoice::Auto,
    };
    let config = lumigo_operator::settings::injection_config(
        &lumigo,
        &settings,
        lumigo_mutation::PayloadDelivery::InitContainer,
    )
    .unwrap();
    for (kind, name) in [
        (WorkloadKind::Deployment, "existing"),
        (WorkloadKind::CronJob, "report"),
    ] {
        let mut stored = get(&client, &ns, kind, name).await;
        assert_eq!(
            reconcile(&mut stored, kind, &config, Operation::Update),
            Outcome::Unchanged(Reason::AlreadyInjected),
            "{kind}/{name}: the stored object must need no further change"
        );
    }
    // The new CronJob made the operator look at the namespace again: nothing to write.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        workload_writes(&metrics_url),
        writes_after_rollout,
        "an injected workload was written again"
    );

    // The compiler ran in a child process, so its memory is not the operator's.
    let log = std::fs::read_to_string(operator.log_path()).unwrap();
    assert!(
        log.contains("policy module compiled by a child process"),
        "{log}"
    );
}
