//! `lumigo-operator uninstall` across two namespaces: every `Lumigo` resource deleted, every
//! workload back to its spec byte for byte, with and without a running operator; twice is safe.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::Api;
use lumigo_e2e::testing::{eventually, shared_control_plane};
use lumigo_mutation::WorkloadKind;
use lumigo_operator::crd::Lumigo;
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

/// Until the namespace's three workloads are instrumented.
async fn rolled_out(client: &kube::Client, ns: &str, what: &str) {
    eventually(what, WAIT, || async {
        (lumigo_status(client, ns, "lumigo").await?["instrumentedCount"] == json!(3)).then_some(())
    })
    .await;
}

async fn assert_no_lumigo(client: &kube::Client) {
    let lumigos: Api<Lumigo> = Api::all(client.clone());
    assert!(lumigos
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty());
}

/// Every workload's spec is what it was `before` Lumigo, byte for byte.
async fn assert_restored(
    client: &kube::Client,
    before: &BTreeMap<(String, WorkloadKind), String>,
    when: &str,
) {
    for ((ns, kind), spec) in before {
        assert_eq!(
            &spec_bytes(client, ns, *kind, "app").await,
            spec,
            "{ns} {kind}{when}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn uninstall_cleans_every_namespace_and_is_repeatable() {
    let (cp, client) = with_crd(shared_control_plane()).await;
    let kinds = [
        WorkloadKind::Deployment,
        WorkloadKind::CronJob,
        WorkloadKind::DaemonSet,
    ];
    let mut before = BTreeMap::new();
    let mut namespaces = Vec::new();
    for prefix in ["shop", "billing"] {
        let ns = cp.create_namespace(prefix, &[]).await.unwrap();
        for kind in kinds {
            create_manifest(&client, &ns, kind, "app", 0).await;
            before.insert(
                (ns.clone(), kind),
                spec_bytes(&client, &ns, kind, "app").await,
            );
        }
        create_token_secret(&client, &ns).await;
        create_default_lumigo(&client, &ns).await;
        namespaces.push(ns);
    }

    let mut operator = start_operator(&cp, "0.1.0", &[]);
    for ns in &namespaces {
        rolled_out(&client, ns, "both namespaces rolled out").await;
    }

    // With the operator running, its finalizers do the work.
    uninstall(&cp, "60s", &[]);
    assert_no_lumigo(&client).await;
    assert_restored(&client, &before, "").await;

    // Without an operator, the command finishes the cleanup itself.
    for ns in &namespaces {
        create_default_lumigo(&client, ns).await;
        rolled_out(&client, ns, "rolled out again").await;
    }
    operator.kill();
    uninstall(&cp, "2s", &[]);
    assert_no_lumigo(&client).await;
    assert_restored(&client, &before, " without an operator").await;
    uninstall(&cp, "2s", &[]);
    assert_restored(&client, &before, " after a second run").await;
}
