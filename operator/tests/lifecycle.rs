//! The `Lumigo` lifecycle on a real control plane with the operator binary running:
//! rollout into existing workloads, status, events, re-injection on a spec change and on an
//! operator upgrade, opt-out cleaning, and removal on deletion, byte for byte.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use lumigo_e2e::testing::{eventually, shared_control_plane};
use lumigo_e2e::ControlPlane;
use lumigo_mutation::WorkloadKind;
use serde_json::json;
use support::*;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread")]
async fn lumigo_lifecycle() {
    let (cp, client) = with_crd(shared_control_plane()).await;
    let ns = cp.create_namespace("lifecycle", &[]).await.unwrap();

    let workloads = [
        (WorkloadKind::Deployment, "web"),
        (WorkloadKind::DaemonSet, "agent"),
        (WorkloadKind::StatefulSet, "db"),
        (WorkloadKind::ReplicaSet, "standalone"),
        (WorkloadKind::CronJob, "nightly"),
        (WorkloadKind::ReplicationController, "legacy"),
    ];
    for (kind, name) in workloads {
        create_manifest(&client, &ns, kind, name, if name == "web" { 1 } else { 0 }).await;
    }
    create_manifest(&client, &ns, WorkloadKind::Job, "migration", 0).await;
    let mut opted_out = manifest(WorkloadKind::Deployment, "private", 0);
    opted_out["metadata"]["labels"]["lumigo.auto-trace"] = json!("false");
    create(&client, &ns, WorkloadKind::Deployment, opted_out).await;

    let mut before = BTreeMap::new();
    for (kind, name) in workloads.iter().copied().chain([
        (WorkloadKind::Job, "migration"),
        (WorkloadKind::Deployment, "private"),
    ]) {
        before.insert(name, spec_bytes(&client, &ns, kind, name).await);
    }

    let _operator = start_operator(&cp, "0.1.0", &[]);
    create_token_secret(&client, &ns).await;
    create_default_lumigo(&client, &ns).await;

    // Rollout: every eligible workload injected, and the status says exactly which.
    let status = eventually("the rollout to reach every workload", WAIT, || async {
        let status = lumigo_status(&client, &ns, "lumigo").await?;
        (status["instrumentedCount"] == json!(6)).then_some(status)
    })
    .await;
    assert_eq!(condition(&status, "Active").unwrap()["status"], "True");
    assert_eq!(condition(&status, "Error").unwrap()["status"], "False");
    let mut listed: Vec<String> = status["instrumentedResources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            format!(
                "{}/{}",
                r["kind"].as_str().unwrap(),
                r["name"].as_str().unwrap()
            )
        })
        .collect();
    listed.sort();
    let mut expected: Vec<String> = workloads.iter().map(|(k, n)| format!("{k}/{n}")).collect();
    expected.sort();
    assert_eq!(listed, expected);
    // No telemetry proxy to read here: the operator does not pretend to know what is traced.
    let tracing = condition(&status, "Tracing").unwrap();
    assert_eq!(
        (tracing["status"].as_str(), tracing["reason"].as_str()),
        (Some("Unknown"), Some("TracesUnknown")),
        "{tracing}"
    );
    assert_eq!(status["tracing"], "unknown");
    for listed in status["instrumentedResources"].as_array().unwrap() {
        assert_eq!(listed["tracing"]["state"], "Unknown", "{listed}");
        assert!(
            listed["tracing"]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("does not count spans")),
            "{listed}"
        );
    }
    for (kind, name) in workloads {
        let object = get(&client, &ns, kind, name).await;
        assert_eq!(
            injected_label(&object, kind).as_deref(),
            Some("lumigo-operator.v0.1.0"),
            "{kind}/{name}"
        );
        let template = kind.template(&object).unwrap();
        assert_eq!(
            template["spec"]["initContainers"][0]["name"],
            "lumigo-injector"
        );
        let preload = template["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == "LD_PRELOAD")
            .unwrap()["value"]
            .clone();
        assert_eq!(
            preload, "/opt/lumigo/injector/lumigo_injector.so /usr/lib/libjemalloc.so",
            "user's LD_PRELOAD kept"
        );
    }
    assert_eq!(
        spec_bytes(&client, &ns, WorkloadKind::Deployment, "private").await,
        before["private"]
    );
    assert_eq!(
        spec_bytes(&client, &ns, WorkloadKind::Job, "migration").await,
        before["migration"]
    );
    eventually("the Job's warning event", WAIT, || async {
        event_reasons(&client, &ns, "migration")
            .await
            .contains(&"LumigoCannotAddInstrumentation".to_owned())
            .then_some(())
    })
    .await;
    assert!(event_reasons(&client, &ns, "web")
        .await
        .contains(&"LumigoAddedInstrumentation".to_owned()));
    // The Deployment's new Pods carry the injection (through the real controller-manager).
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &ns);
    eventually("a Pod of the injected Deployment", WAIT, || async {
        let list = pods
            .list(&kube::api::ListParams::default().labels("app=web"))
            .await
            .ok()?;
        list.items
            .iter()
            .any(|pod| {
                let spec = pod.spec.as_ref().unwrap();
                spec.init_containers
                    .as_ref()
                    .is_some_and(|c| c[0].name == "lumigo-injector")
            })
            .then_some(())
    })
    .await;

    // A spec change re-injects: logs on.
    enable_logging(&client, &ns).await;
    eventually("LUMIGO_ENABLE_LOGS=true everywhere", WAIT, || async {
        for (kind, name) in workloads {
            let object = get(&client, &ns, kind, name).await;
            let env = kind.template(&object)?["spec"]["containers"][0]["env"].clone();
            let logs = env
                .as_array()?
                .iter()
                .find(|e| e["name"] == "LUMIGO_ENABLE_LOGS")?["value"]
                .clone();
            if logs != "true" {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(event_reasons(&client, &ns, "web")
        .await
        .contains(&"LumigoUpdatedInstrumentation".to_owned()));

    // Opting out cleans: the StatefulSet's spec is back to what it was.
    let statefulsets: Api<k8s_openapi::api::apps::v1::StatefulSet> =
        Api::namespaced(client.clone(), &ns);
    statefulsets
        .patch(
            "db",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"lumigo.auto-trace": "false"}}})),
        )
        .await
        .unwrap();
    eventually("the opted-out StatefulSet to be cleaned", WAIT, || async {
        (spec_bytes(&client, &ns, WorkloadKind::StatefulSet, "db").await == before["db"])
            .then_some(())
    })
    .await;
    eventually(
        "the status to drop the opted-out workload",
        WAIT,
        || async {
            (lumigo_status(&client, &ns, "lumigo").await?["instrumentedCount"] == json!(5))
                .then_some(())
        },
    )
    .await;
    assert!(event_reasons(&client, &ns, "db")
        .await
        .contains(&"LumigoRemovedInstrumentation".to_owned()));

    // An operator upgrade re-injects with the new version's label.
    drop(_operator);
    let _operator = start_operator(&cp, "0.2.0", &[("LUMIGO_REMOVAL_TIMEOUT", "5s")]);
    eventually("re-injection by the new operator version", WAIT, || async {
        for (kind, name) in workloads.iter().filter(|(_, n)| *n != "db") {
            let object = get(&client, &ns, *kind, name).await;
            if injected_label(&object, *kind).as_deref() != Some("lumigo-operator.v0.2.0") {
                return None;
            }
        }
        Some(())
    })
    .await;

    // Deleting the resource removes every injection, byte for byte.
    delete_lumigo(&client, &ns, "lumigo", WAIT).await;
    for (kind, name) in workloads.iter().copied().chain([
        (WorkloadKind::Job, "migration"),
        (WorkloadKind::Deployment, "private"),
    ]) {
        assert_eq!(
            spec_bytes(&client, &ns, kind, name).await,
            before[name],
            "{kind}/{name} after deletion"
        );
        let object = get(&client, &ns, kind, name).await;
        if name != "db" && name != "private" {
            assert!(
                object["metadata"]["labels"]
                    .get("lumigo.auto-trace")
                    .is_none(),
                "{kind}/{name} label left"
            );
        }
    }
    assert!(event_reasons(&client, &ns, "web")
        .await
        .contains(&"LumigoRemovedInstrumentation".to_owned()));

    removal_never_wedges(&cp, &client).await;
}

/// A workload that refuses the removal's write holds the deletion only as long as the removal
/// timeout, then the resource goes with a LumigoRemovalIncomplete event; the resource of a
/// namespace being deleted goes without writing its workloads.
async fn removal_never_wedges(cp: &ControlPlane, client: &kube::Client) {
    let ns = instrumented_namespace(cp, client, "wedged", "locked").await;
    let policy = format!("lumigo-test-deny-updates-{ns}");
    let freeze = format!(
        r#"{{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
  "metadata": {{"name": "{policy}"}},
  "spec": {{"failurePolicy": "Fail",
    "matchConstraints": {{"resourceRules": [{{"apiGroups": ["apps"],
      "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["deployments"]}}]}},
    "validations": [{{"expression": "false", "message": "frozen by the test"}}]}}}}
---
{{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
  "metadata": {{"name": "{policy}"}},
  "spec": {{"policyName": "{policy}", "validationActions": ["Deny"],
    "matchResources": {{"namespaceSelector": {{
      "matchLabels": {{"kubernetes.io/metadata.name": "{ns}"}}}}}}}}}}"#
    );
    cp.run_kubectl(&["apply", "-f", "-"], Some(&freeze))
        .unwrap();
    // The binding takes a moment to be enforced: until a direct update is refused.
    eventually("the policy to refuse updates", WAIT, || async {
        let refused = cp.run_kubectl(
            &[
                "label",
                "deployment",
                "locked",
                "-n",
                &ns,
                "probe=1",
                "--overwrite",
            ],
            None,
        );
        refused.is_err().then_some(())
    })
    .await;
    // Released after the removal timeout (5 s here).
    delete_lumigo(client, &ns, "lumigo", WAIT).await;
    let reasons = event_reasons(client, &ns, "lumigo").await;
    assert!(
        reasons.contains(&"LumigoRemovalIncomplete".to_owned()),
        "{reasons:?}"
    );
    let notes = event_notes(client, &ns, "lumigo").await;
    assert!(
        notes
            .iter()
            .any(|note| note.contains("lumigo-operator uninstall")),
        "the event says how to finish: {notes:?}"
    );
    let object = get(client, &ns, WorkloadKind::Deployment, "locked").await;
    assert!(
        injected_label(&object, WorkloadKind::Deployment).is_some(),
        "the refused workload still carries the injection, as the event says"
    );
    cp.run_kubectl(
        &[
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            &policy,
        ],
        None,
    )
    .unwrap();

    // A namespace deleted with its resource: nothing waits on its workloads.
    let doomed = instrumented_namespace(cp, client, "doomed", "web").await;
    delete_namespace(cp, client, &doomed, WAIT).await;
}

/// A new namespace with a token Secret, a Deployment named `deployment` and a `Lumigo`
/// resource, once the Deployment is injected.
async fn instrumented_namespace(
    cp: &ControlPlane,
    client: &kube::Client,
    prefix: &str,
    deployment: &str,
) -> String {
    let ns = cp.create_namespace(prefix, &[]).await.unwrap();
    create_token_secret(client, &ns).await;
    create_manifest(client, &ns, WorkloadKind::Deployment, deployment, 0).await;
    create_default_lumigo(client, &ns).await;
    eventually(&format!("{deployment} to be injected"), WAIT, || async {
        let object = get(client, &ns, WorkloadKind::Deployment, deployment).await;
        injected_label(&object, WorkloadKind::Deployment).map(|_| ())
    })
    .await;
    ns
}
