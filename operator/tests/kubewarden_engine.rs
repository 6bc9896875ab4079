//! The `kubewarden` engine: an active `Lumigo` resource gets one AdmissionPolicy in its
//! namespace carrying its settings; a spec change updates it, deletion removes it.

mod support;

use std::time::Duration;

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject};
use lumigo_e2e::testing::{eventually, shared_control_plane};
use lumigo_operator::crd::Lumigo;
use serde_json::{json, Value};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

async fn policy(client: &kube::Client, ns: &str) -> Option<Value> {
    let resource = ApiResource {
        group: "policies.kubewarden.io".into(),
        version: "v1".into(),
        api_version: "policies.kubewarden.io/v1".into(),
        kind: "AdmissionPolicy".into(),
        plural: "admissionpolicies".into(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &resource);
    api.get_opt("lumigo-autotrace")
        .await
        .unwrap()
        .map(|p| serde_json::to_value(p).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_kubewarden_engine_keeps_one_policy_per_namespace() {
    let (cp, client) = with_crd(shared_control_plane()).await;
    install_admission_policy_crd(&cp, WAIT).await;

    let ns = cp.create_namespace("kubewarden", &[]).await.unwrap();
    let _operator = start_operator(
        &cp,
        "0.1.0",
        &[
            ("LUMIGO_ADMISSION_ENGINE", "kubewarden"),
            (
                "LUMIGO_KUBEWARDEN_POLICY_MODULE",
                "registry://example.com/lumigo:v0.1.0",
            ),
        ],
    );
    create_default_lumigo(&client, &ns).await;
    eventually(
        "the resource to be in Error without its Secret",
        WAIT,
        || async {
            let status = lumigo_status(&client, &ns, "lumigo").await?;
            (condition(&status, "Error")?["status"] == "True").then_some(())
        },
    )
    .await;
    assert!(
        policy(&client, &ns).await.is_none(),
        "no policy while the token is missing"
    );

    create_token_secret(&client, &ns).await;
    let created = eventually("the namespace's AdmissionPolicy", WAIT, || async {
        policy(&client, &ns).await
    })
    .await;
    assert_eq!(
        created["spec"]["module"],
        "registry://example.com/lumigo:v0.1.0"
    );
    assert_eq!(created["spec"]["mutating"], true);
    assert_eq!(created["spec"]["failurePolicy"], "Ignore");
    assert_eq!(
        created["spec"]["settings"]["tokenSecret"],
        json!({"name": "lumigo-credentials", "key": "token"})
    );
    assert_eq!(created["spec"]["settings"]["enableLogs"], false);
    assert_eq!(created["metadata"]["ownerReferences"][0]["kind"], "Lumigo");

    enable_logging(&client, &ns).await;
    eventually(
        "the policy settings to follow the resource",
        WAIT,
        || async {
            (policy(&client, &ns).await?["spec"]["settings"]["enableLogs"] == true).then_some(())
        },
    )
    .await;

    let lumigos: Api<Lumigo> = Api::namespaced(client.clone(), &ns);
    lumigos
        .delete("lumigo", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the policy to be deleted with the resource",
        WAIT,
        || async { policy(&client, &ns).await.is_none().then_some(()) },
    )
    .await;
}
