//! Namespaces instrumented without a kubectl step, on a real control plane: the operator binary
//! is started as the chart starts it with each selection in turn (a list, a label selector, `all`,
//! nothing), as `helm upgrade` does, and the namespaces converge: each selected one gets a token
//! Secret and a `Lumigo` resource the operator owns, the others lose theirs, a hand-made resource
//! is never touched, and the token never appears in the operator's log. Then the bad inputs and
//! `lumigo-operator uninstall` beside a running operator that must not recreate what it deletes.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use lumigo_e2e::testing::{eventually, own_control_plane};
use lumigo_e2e::{ControlPlane, Process};
use lumigo_mutation::WorkloadKind;
use lumigo_operator::crd::Lumigo;
use lumigo_operator::onboarding::{MANAGED_BY_INSTALL, MANAGED_SECRET};
use serde_json::json;
use support::*;

const INSTALL: &str = "lumigo-system";
const WAIT: Duration = Duration::from_secs(60);

async fn create_namespace(client: &Client, name: &str, labels: serde_json::Value) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
}

fn operator(cp: &ControlPlane, selection: &str, token_secret: &str) -> Process {
    start_operator(
        cp,
        "0.1.0",
        &[
            ("POD_NAMESPACE", INSTALL),
            ("LUMIGO_MONITORED_NAMESPACES", selection),
            ("LUMIGO_TOKEN_SECRET", token_secret),
            ("LUMIGO_EXCLUDED_NAMESPACES", "sandbox"),
        ],
    )
}

/// Namespaces holding the operator's own `Lumigo` resource (not being deleted) and its Secret.
async fn managed(client: &Client) -> BTreeSet<String> {
    let lumigoes: Api<Lumigo> = Api::all(client.clone());
    let mut with_both = BTreeSet::new();
    for lumigo in lumigoes.list(&ListParams::default()).await.unwrap().items {
        if lumigo.labels().get(MANAGED_BY_INSTALL).map(String::as_str) != Some(INSTALL)
            || lumigo.metadata.deletion_timestamp.is_some()
        {
            continue;
        }
        let namespace = lumigo.namespace().unwrap();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
        if let Some(secret) = secrets.get_opt(MANAGED_SECRET).await.unwrap() {
            let token = secret.data.unwrap_or_default().get("token").cloned();
            assert_eq!(
                token.map(|t| t.0),
                Some(TOKEN.as_bytes().to_vec()),
                "{namespace}: the install's token, copied"
            );
            with_both.insert(namespace);
        }
    }
    with_both
}

/// Namespaces that still hold anything the operator created (a resource or a Secret).
async fn leftovers(client: &Client, namespaces: &[&str]) -> BTreeSet<String> {
    let mut left = BTreeSet::new();
    for namespace in namespaces {
        let lumigoes: Api<Lumigo> = Api::namespaced(client.clone(), namespace);
        let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let lumigo = lumigoes.get_opt("lumigo").await.unwrap();
        let secret = secrets.get_opt(MANAGED_SECRET).await.unwrap();
        if lumigo.is_some_and(|l| l.labels().contains_key(MANAGED_BY_INSTALL)) || secret.is_some() {
            left.insert(namespace.to_string());
        }
    }
    left
}

async fn converges_to(client: &Client, what: &str, expected: &[&str]) {
    let expected: BTreeSet<String> = expected.iter().map(ToString::to_string).collect();
    eventually(what, WAIT, || async {
        let now = managed(client).await;
        (now == expected).then_some(())
    })
    .await;
}

fn assert_token_not_logged(operator: &Process) {
    let log = std::fs::read_to_string(operator.log_path()).unwrap();
    assert!(!log.contains(TOKEN), "the token in the operator's log");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_install_keeps_exactly_the_monitored_namespaces_instrumented() {
    let (cp, client) = with_crd(own_control_plane()).await;
    create_namespace(&client, INSTALL, json!({})).await;
    create_secret(&client, INSTALL, "install-token", &[("token", TOKEN)]).await;
    for (name, labels) in [
        ("shop", json!({})),
        ("checkout", json!({"team": "blue"})),
        ("other", json!({})),
        ("sandbox", json!({"team": "blue"})),
        ("hand", json!({"team": "blue"})),
    ] {
        create_namespace(&client, name, labels).await;
    }
    create(
        &client,
        "shop",
        WorkloadKind::Deployment,
        manifest(WorkloadKind::Deployment, "web", 0),
    )
    .await;
    let shop_web_before = spec_bytes(&client, "shop", WorkloadKind::Deployment, "web").await;
    // A resource made by hand, with its own Secret: it must survive every change untouched.
    create_secret(&client, "hand", "mine", &[("token", TOKEN)]).await;
    let hand_made = create_lumigo(&client, "hand", "mine", default_spec("mine")).await;

    // A list of two namespaces: both instrumented, with the operator's own Secret and resource.
    let mut running = operator(
        &cp,
        r#"{"names": ["shop", "checkout", "kube-system"]}"#,
        "install-token",
    );
    converges_to(&client, "the two listed namespaces", &["checkout", "shop"]).await;
    eventually("shop's workload injected", WAIT, || async {
        let web = get(&client, "shop", WorkloadKind::Deployment, "web").await;
        injected_label(&web, WorkloadKind::Deployment).map(|_| ())
    })
    .await;
    let status = eventually("shop's resource Active", WAIT, || async {
        let status = lumigo_status(&client, "shop", "lumigo").await?;
        (condition(&status, "Active")?["status"] == "True").then_some(status)
    })
    .await;
    assert_eq!(status["instrumentedCount"], 1);
    assert_token_not_logged(&running);
    running.kill();

    // helm upgrade to a label selector: the unlabelled namespace loses everything (its workload
    // restored byte for byte), the labelled ones get theirs, excluded and hand-made ones do not.
    let mut running = operator(
        &cp,
        r#"{"selector": {"matchLabels": {"team": "blue"}}}"#,
        "install-token",
    );
    converges_to(&client, "the labelled namespaces", &["checkout"]).await;
    eventually("shop restored", WAIT, || async {
        let now = spec_bytes(&client, "shop", WorkloadKind::Deployment, "web").await;
        (now == shop_web_before && leftovers(&client, &["shop"]).await.is_empty()).then_some(())
    })
    .await;
    create_namespace(&client, "late", json!({"team": "blue"})).await;
    converges_to(
        &client,
        "a matching namespace created later",
        &["checkout", "late"],
    )
    .await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .patch(
            "checkout",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": null}}})),
        )
        .await
        .unwrap();
    converges_to(&client, "a namespace relabelled out", &["late"]).await;
    assert_token_not_logged(&running);
    running.kill();

    // all: every namespace but the system ones, the install's, the excluded and the hand-made one,
    // including one created afterwards.
    let mut running = operator(&cp, r#"{"all": true}"#, "install-token");
    let every = ["checkout", "default", "late", "other", "shop"];
    converges_to(&client, "every ordinary namespace", &every).await;
    create_namespace(&client, "newest", json!({})).await;
    converges_to(
        &client,
        "and one created afterwards",
        &["checkout", "default", "late", "newest", "other", "shop"],
    )
    .await;
    assert!(leftovers(
        &client,
        &["kube-system", "kube-public", INSTALL, "sandbox", "hand"]
    )
    .await
    .is_empty());
    let lumigoes: Api<Lumigo> = Api::namespaced(client.clone(), "hand");
    let survivor = lumigoes.get("mine").await.unwrap();
    assert_eq!(
        survivor.uid(),
        hand_made.uid(),
        "the hand-made resource survives"
    );
    assert_eq!(survivor.spec, hand_made.spec);
    assert!(lumigoes.get_opt("lumigo").await.unwrap().is_none());
    assert_token_not_logged(&running);
    running.kill();

    // An unreadable selection (say, a bad upgrade): the operator runs on and changes nothing.
    let mut running = operator(&cp, r#"{"all": "yes"}"#, "install-token");
    let log_path = running.log_path().to_owned();
    eventually("the bad selection reported", WAIT, || async {
        let log = std::fs::read_to_string(&log_path).ok()?;
        log.contains("monitored namespaces left as they are")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    running.ensure_running().unwrap();
    assert_eq!(managed(&client).await.len(), 6, "nothing removed");
    running.kill();

    // A token Secret that does not exist: the managed resource says what to fix.
    let mut running = operator(&cp, r#"{"names": ["nosecret"]}"#, "missing-token");
    create_namespace(&client, "nosecret", json!({})).await;
    let status = eventually("the missing token reported", WAIT, || async {
        let status = lumigo_status(&client, "nosecret", "lumigo").await?;
        let error = condition(&status, "Error")?;
        (error["reason"] == "InvalidToken").then(|| error.clone())
    })
    .await;
    let message = status["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("copies this Secret from {INSTALL}/missing-token")),
        "{message}"
    );
    // And nothing selected (an upgrade to an empty selection): everything created is removed.
    converges_to(&client, "only the new selection", &[]).await;
    running.kill();
    let mut running = operator(&cp, "", "install-token");
    eventually("nothing left anywhere", WAIT, || async {
        let left = leftovers(&client, &every).await;
        left.is_empty().then_some(())
    })
    .await;
    running.kill();

    // uninstall beside an operator that monitors everything: it deletes all, and the operator
    // does not create it again.
    let mut running = operator(&cp, r#"{"all": true}"#, "install-token");
    converges_to(
        &client,
        "all again",
        &[
            "checkout", "default", "late", "newest", "nosecret", "other", "shop",
        ],
    )
    .await;
    uninstall(&cp, "30s", &[("POD_NAMESPACE", INSTALL)]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let all: Api<Lumigo> = Api::all(client.clone());
    let remaining: Vec<String> = all
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|l| format!("{}/{}", l.namespace().unwrap(), l.name_any()))
        .collect();
    assert!(remaining.is_empty(), "after uninstall: {remaining:?}");
    assert!(leftovers(&client, &every).await.is_empty());
    assert_token_not_logged(&running);
    running.kill();
}
