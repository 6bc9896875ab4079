//! Online Boutique (GoogleCloudPlatform/microservices-demo's release manifests, Apache-2.0, kept
//! unmodified in tests/fixtures), a realistic hardened namespace: every Deployment comes
//! out injected, the injection adds no Pod Security "restricted" violation, and removal restores
//! every Deployment byte for byte.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};
use lumigo_e2e::testing::{eventually, shared_control_plane};
use lumigo_mutation::{inject, InjectionConfig, Operation, Outcome, WorkloadKind};
use serde::Deserialize;
use serde_json::{json, Value};
use support::*;

const MANIFESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/online-boutique.yaml"
);

fn objects_of_kind(kind: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(MANIFESTS).unwrap_or_else(|e| panic!("{MANIFESTS}: {e}"));
    serde_norway::Deserializer::from_str(&text)
        .filter_map(|document| Value::deserialize(document).ok())
        .filter(|object| object["kind"] == kind)
        .collect()
}

fn deployments() -> Vec<Value> {
    let deployments = objects_of_kind("Deployment");
    assert!(
        deployments.len() >= 10,
        "expected Online Boutique's Deployments, found {}",
        deployments.len()
    );
    deployments
}

fn config() -> InjectionConfig {
    serde_json::from_value(json!({
        "injectorImage": "ghcr.io/lumigo-rs/autotrace:0.1.0",
        "tokenSecret": {"name": "lumigo-credentials", "key": "token"},
        "operatorVersion": "0.1.0"
    }))
    .unwrap()
}

/// The Pod a Deployment's template makes, as the ReplicaSet controller would create it.
fn pod_of(deployment: &Value) -> Pod {
    let template = &deployment["spec"]["template"];
    let mut metadata = template["metadata"].clone();
    metadata["name"] = deployment["metadata"]["name"].clone();
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]}),
    )
    .unwrap()
}

/// `Ok` when admitted (dry run), else the API server's message.
async fn admit(pods: &Api<Pod>, pod: &Pod) -> Result<(), String> {
    let params = PostParams {
        dry_run: true,
        ..Default::default()
    };
    pods.create(&params, pod)
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn injection_adds_no_restricted_violation() {
    let (cp, client) = shared_control_plane().await;
    let restricted = cp
        .create_namespace(
            "restricted",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await
        .unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &restricted);
    for account in objects_of_kind("ServiceAccount") {
        let account: ServiceAccount = serde_json::from_value(account).unwrap();
        accounts
            .create(&PostParams::default(), &account)
            .await
            .unwrap();
    }
    let pods: Api<Pod> = Api::namespaced(client, &restricted);
    for original in deployments() {
        let name = original["metadata"]["name"].as_str().unwrap().to_owned();
        let mut injected = original.clone();
        assert!(
            matches!(
                inject(
                    &mut injected,
                    WorkloadKind::Deployment,
                    &config(),
                    Operation::Create
                ),
                Outcome::Changed(_)
            ),
            "{name}"
        );
        // As shipped (no seccomp profile) the Pods are refused for the same reasons, no more.
        let verdict = admit(&pods, &pod_of(&original)).await;
        assert!(
            verdict
                .as_ref()
                .is_err_and(|e| e.contains("violates PodSecurity")),
            "{name}: {verdict:?}"
        );
        assert_eq!(admit(&pods, &pod_of(&injected)).await, verdict, "{name}");
        // Made compliant, both are admitted.
        let mut compliant = original.clone();
        compliant["spec"]["template"]["spec"]["securityContext"]["seccompProfile"] =
            json!({"type": "RuntimeDefault"});
        let mut compliant_injected = compliant.clone();
        inject(
            &mut compliant_injected,
            WorkloadKind::Deployment,
            &config(),
            Operation::Create,
        );
        assert_eq!(admit(&pods, &pod_of(&compliant)).await, Ok(()), "{name}");
        assert_eq!(
            admit(&pods, &pod_of(&compliant_injected)).await,
            Ok(()),
            "{name} injected"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operator_instruments_and_restores_online_boutique() {
    let (cp, client) = with_crd(shared_control_plane()).await;
    let ns = cp.create_namespace("boutique", &[]).await.unwrap();
    let mut names = Vec::new();
    for mut deployment in deployments() {
        deployment["spec"]["replicas"] = json!(0);
        names.push(deployment["metadata"]["name"].as_str().unwrap().to_owned());
        create(&client, &ns, WorkloadKind::Deployment, deployment).await;
    }
    let mut before = Vec::new();
    for name in &names {
        before.push(spec_bytes(&client, &ns, WorkloadKind::Deployment, name).await);
    }
    let _operator = start_operator(&cp, "0.1.0", &[]);
    create_token_secret(&client, &ns).await;
    create_default_lumigo(&client, &ns).await;
    eventually(
        "every Deployment instrumented",
        Duration::from_secs(60),
        || async {
            (lumigo_status(&client, &ns, "lumigo").await?["instrumentedCount"]
                == json!(names.len()))
            .then_some(())
        },
    )
    .await;
    for name in &names {
        let object = get(&client, &ns, WorkloadKind::Deployment, name).await;
        assert_eq!(
            injected_label(&object, WorkloadKind::Deployment).as_deref(),
            Some("lumigo-operator.v0.1.0"),
            "{name}"
        );
    }
    delete_lumigo(&client, &ns, "lumigo", Duration::from_secs(60)).await;
    for (name, spec) in names.iter().zip(&before) {
        assert_eq!(
            &spec_bytes(&client, &ns, WorkloadKind::Deployment, name).await,
            spec,
            "{name}"
        );
    }
}
