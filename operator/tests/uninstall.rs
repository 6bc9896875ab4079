//! `lumigo-operator uninstall` across two namespaces: every `Lumigo` resource deleted, every
//! workload back to its spec byte for byte, with and without a running operator; twice is safe.

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use kube::api::Api;
use lumigo_e2e::ControlPlane;
use lumigo_mutation::WorkloadKind;
use lumigo_operator::crd::Lumigo;
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

fn uninstall(cp: &ControlPlane, wait_for_operator: &str) {
    let output = Command::new(env!("CARGO_BIN_EXE_lumigo-operator"))
        .args(["uninstall", "--wait-for-operator", wait_for_operator])
        .env("KUBECONFIG", cp.kubeconfig())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "uninstall failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn uninstall_cleans_every_namespace_and_is_repeatable() {
    let cp = ControlPlane::shared().await.unwrap();
    let client = cp.client().unwrap();
    install_crd(&client).await;
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
            create(&client, &ns, kind, manifest(kind, "app", 0)).await;
            before.insert(
                (ns.clone(), kind),
                spec_bytes(&client, &ns, kind, "app").await,
            );
        }
        create_secret(&client, &ns, "lumigo-credentials", &[("token", TOKEN)]).await;
        create_lumigo(&client, &ns, "lumigo", default_spec("lumigo-credentials")).await;
        namespaces.push(ns);
    }

    let mut operator = start_operator(&cp, "0.1.0", &[]);
    for ns in &namespaces {
        eventually("both namespaces rolled out", WAIT, || async {
            (lumigo_status(&client, ns, "lumigo").await?["instrumentedCount"] == json!(3))
                .then_some(())
        })
        .await;
    }

    // With the operator running, its finalizers do the work.
    uninstall(&cp, "60s");
    let lumigos: Api<Lumigo> = Api::all(client.clone());
    assert!(lumigos
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty());
    for ((ns, kind), spec) in &before {
        assert_eq!(
            &spec_bytes(&client, ns, *kind, "app").await,
            spec,
            "{ns} {kind}"
        );
    }

    // Without an operator, the command finishes the cleanup itself.
    for ns in &namespaces {
        create_lumigo(&client, ns, "lumigo", default_spec("lumigo-credentials")).await;
        eventually("rolled out again", WAIT, || async {
            (lumigo_status(&client, ns, "lumigo").await?["instrumentedCount"] == json!(3))
                .then_some(())
        })
        .await;
    }
    operator.kill();
    uninstall(&cp, "2s");
    assert!(lumigos
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .is_empty());
    for ((ns, kind), spec) in &before {
        assert_eq!(
            &spec_bytes(&client, ns, *kind, "app").await,
            spec,
            "{ns} {kind} without an operator"
        );
    }
    uninstall(&cp, "2s");
    for ((ns, kind), spec) in &before {
        assert_eq!(
            &spec_bytes(&client, ns, *kind, "app").await,
            spec,
            "{ns} {kind} after a second run"
        );
    }
}
