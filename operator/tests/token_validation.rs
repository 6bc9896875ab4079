//! A `Lumigo` resource whose Secret is missing, lacks the key or holds a malformed token goes to
//! Error with a message that says what to fix; fixing the Secret makes it Active and rolls out.
//! A second resource in the same namespace goes to Error and its deletion undoes nothing.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use lumigo_e2e::testing::{eventually, shared_control_plane};
use lumigo_mutation::WorkloadKind;
use lumigo_operator::crd::Lumigo;
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

async fn error_message(client: &kube::Client, ns: &str, name: &str, containing: &str) -> String {
    eventually(
        &format!("an Error condition mentioning {containing:?}"),
        WAIT,
        || async {
            let status = lumigo_status(client, ns, name).await?;
            let error = condition(&status, "Error")?;
            let message = error["message"].as_str()?.to_owned();
            (error["status"] == "True" && message.contains(containing)).then_some(message)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_secrets_are_explained_and_fixing_them_rolls_out() {
    let (cp, client) = with_crd(shared_control_plane()).await;
    let ns = cp.create_namespace("token", &[]).await.unwrap();
    create_manifest(&client, &ns, WorkloadKind::Deployment, "web", 0).await;
    let _operator = start_operator(&cp, "0.1.0", &[]);

    create_default_lumigo(&client, &ns).await;
    let missing = error_message(&client, &ns, "lumigo", "does not exist").await;
    assert!(missing.contains("lumigo-credentials"), "{missing}");
    let status = lumigo_status(&client, &ns, "lumigo").await.unwrap();
    assert_eq!(condition(&status, "Active").unwrap()["status"], "False");
    assert_eq!(
        condition(&status, "Error").unwrap()["reason"],
        "InvalidToken"
    );
    assert!(injected_label(
        &get(&client, &ns, WorkloadKind::Deployment, "web").await,
        WorkloadKind::Deployment
    )
    .is_none());

    create_secret(&client, &ns, "lumigo-credentials", &[("tokn", TOKEN)]).await;
    let wrong_key = error_message(&client, &ns, "lumigo", "no key").await;
    assert!(
        wrong_key.contains("\"token\"") && wrong_key.contains("tokn"),
        "{wrong_key}"
    );

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let set_token = |value: &str| json!({"stringData": {"token": value}});
    secrets
        .patch(
            "lumigo-credentials",
            &PatchParams::default(),
            &Patch::Merge(set_token("t_not-a-token")),
        )
        .await
        .unwrap();
    error_message(&client, &ns, "lumigo", "not a Lumigo token").await;

    secrets
        .patch(
            "lumigo-credentials",
            &PatchParams::default(),
            &Patch::Merge(set_token(TOKEN)),
        )
        .await
        .unwrap();
    eventually("Active and rolled out after the fix", WAIT, || async {
        let status = lumigo_status(&client, &ns, "lumigo").await?;
        let active = condition(&status, "Active")?["status"] == "True";
        (active && status["instrumentedCount"] == json!(1)).then_some(())
    })
    .await;
    let web = get(&client, &ns, WorkloadKind::Deployment, "web").await;
    assert_eq!(
        injected_label(&web, WorkloadKind::Deployment).as_deref(),
        Some("lumigo-operator.v0.1.0")
    );

    // One resource per namespace: the second explains itself, and deleting it keeps the first's
    // work.
    create_lumigo(&client, &ns, "second", default_spec("lumigo-credentials")).await;
    let duplicate = error_message(&client, &ns, "second", "already instrumented").await;
    assert!(duplicate.contains("lumigo"), "{duplicate}");
    let lumigos: Api<Lumigo> = Api::namespaced(client.clone(), &ns);
    lumigos
        .delete("second", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the duplicate to be released", WAIT, || async {
        lumigos
            .get_opt("second")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    let web = get(&client, &ns, WorkloadKind::Deployment, "web").await;
    assert_eq!(
        injected_label(&web, WorkloadKind::Deployment).as_deref(),
        Some("lumigo-operator.v0.1.0")
    );
}
