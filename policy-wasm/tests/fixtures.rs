//! Every request fixture through the native policy: always accepted; mutated, left alone or
//! warned about as the fixture's case demands.

use std::path::PathBuf;

use lumigo_policy::admission::evaluate;
use serde_json::{json, Value};

#[derive(Debug, PartialEq)]
enum Expect {
    Mutated,
    Untouched,
    Warned,
}

fn expectation(fixture: &str) -> Expect {
    match fixture {
        "cronjob-create"
        | "daemonset-create"
        | "deployment-create"
        | "job-create"
        | "pod-create"
        | "replicaset-create"
        | "replicationcontroller-create"
        | "statefulset-create"
        | "deployment-update"
        | "pod-multi-container-init-ephemeral"
        | "deployment-existing-ld-preload-and-lumigo-env"
        | "deployment-injected-by-older-version"
        | "deployment-injected-then-opted-out"
        | "pod-owned-by-custom-controller"
        | "deployment-fields-newer-than-k8s-openapi" => Expect::Mutated,
        "deployment-delete"
        | "deployment-opted-out"
        | "deployment-template-opted-out"
        | "replicaset-owned-by-deployment"
        | "job-owned-by-cronjob"
        | "pod-owned-by-replicaset"
        | "deployment-status-subresource" => Expect::Untouched,
        "deployment-own-volume-of-our-name" | "job-update" | "deployment-without-containers" => {
            Expect::Warned
        }
        other => panic!("fixture {other} has no expectation: add it to this table"),
    }
}

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn read_json(path: PathBuf) -> Value {
    serde_json::from_slice(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixtures() -> Vec<(String, Value)> {
    let mut fixtures: Vec<_> = std::fs::read_dir(policies_dir().join("fixtures"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .map(|path| {
            (
                path.file_stem().unwrap().to_string_lossy().into_owned(),
                read_json(path),
            )
        })
        .collect();
    fixtures.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(fixtures.len() >= 25, "fixtures went missing");
    fixtures
}

#[test]
fn every_fixture_is_accepted_and_handled_as_expected() {
    let settings = read_json(policies_dir().join("settings.json"));
    for (name, request) in fixtures() {
        let payload =
            serde_json::to_vec(&json!({"settings": settings, "request": request})).unwrap();
        let response = evaluate(&payload);
        assert!(
            response.accepted,
            "{name}: a mutating policy of ours never denies"
        );
        let got = match (&response.mutated_object, &response.warnings) {
            (Some(_), None) => Expect::Mutated,
            (None, None) => Expect::Untouched,
            (None, Some(warnings)) => {
                assert!(
                    warnings
                        .iter()
                        .all(|w| w.starts_with("lumigo: ") && w.len() < 256),
                    "{name}: {warnings:?}"
                );
                Expect::Warned
            }
            (Some(_), Some(warnings)) => panic!("{name}: mutated and warned {warnings:?}"),
        };
        assert_eq!(got, expectation(&name), "{name}: {response:?}");
    }
}

/// The object the policy makes of the fixture `name` with the default settings.
fn mutated_fixture(name: &str) -> Value {
    let settings = read_json(policies_dir().join("settings.json"));
    let request = read_json(policies_dir().join(format!("fixtures/{name}.json")));
    let payload = serde_json::to_vec(&json!({"settings": settings, "request": request})).unwrap();
    evaluate(&payload).mutated_object.unwrap()
}

#[test]
fn fields_newer_than_any_client_library_are_kept() {
    let mutated = mutated_fixture("deployment-fields-newer-than-k8s-openapi");
    let spec = &mutated["spec"]["template"]["spec"];
    assert_eq!(spec["schedulingGatesV3"], json!({"x": 1}));
    assert_eq!(
        spec["containers"][0]["fieldFromKubernetes2030"],
        json!({"enabled": true, "modes": ["a", "b"]})
    );
}

#[test]
fn the_older_versions_injection_is_replaced_not_stacked() {
    let mutated = mutated_fixture("deployment-injected-by-older-version");
    let template = &mutated["spec"]["template"];
    assert_eq!(
        template["metadata"]["labels"]["lumigo.auto-trace"],
        "lumigo-operator.v0.1.0"
    );
    assert_eq!(
        template["spec"]["initContainers"].as_array().unwrap().len(),
        1
    );
    let env = template["spec"]["containers"][0]["env"].as_array().unwrap();
    assert_eq!(env.iter().filter(|e| e["name"] == "LD_PRELOAD").count(), 1);
}

#[test]
fn bad_payloads_and_settings_are_accepted_with_a_warning() {
    let request = read_json(policies_dir().join("fixtures/deployment-create.json"));
    for payload in [
        b"not json".to_vec(),
        serde_json::to_vec(&json!({"settings": {}, "request": request})).unwrap(),
        serde_json::to_vec(&json!({"settings": {"injectorImage": "x"}, "request": request}))
            .unwrap(),
    ] {
        let response = evaluate(&payload);
        assert!(response.accepted && response.mutated_object.is_none());
        assert_eq!(response.warnings.map(|w| w.len()), Some(1));
    }
}

#[test]
fn settings_validation_explains_itself() {
    use lumigo_policy::admission::validate_settings;
    let good = std::fs::read(policies_dir().join("settings.json")).unwrap();
    assert!(validate_settings(&good).valid);
    let logs = std::fs::read(policies_dir().join("settings-logs-enabled.json")).unwrap();
    assert!(validate_settings(&logs).valid);
    for (bad, mentions) in [
        (json!({}), "injectorImage"),
        (
            json!({
                "injectorImage": "i:latest",
                "tokenSecret": {"name": "s", "key": "k"},
                "operatorVersion": "1"
            }),
            "pinned",
        ),
        (
            json!({
                "injectorImage": "i:1",
                "tokenSecret": {"name": "s", "key": "k"},
                "operatorVersion": "1",
                "enableLog": true
            }),
            "enableLog",
        ),
        (
            json!({
                "injectorImage": "i:1",
                "tokenSecret": {"name": "s", "key": "k"},
                "operatorVersion": "1",
                "logsEndpoint": "x"
            }),
            "logsEndpoint",
        ),
    ] {
        let response = validate_settings(&serde_json::to_vec(&bad).unwrap());
        assert!(!response.valid, "{bad}");
        let message = response.message.unwrap();
        assert!(message.contains(mentions), "{bad}: {message}");
    }
    assert!(!validate_settings(b"{").valid);
}
