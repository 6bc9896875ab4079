//! A workload rolled back after its injected pods failed: given back byte for byte with a marker,
//! kept uninjected while nothing changed, injected again once something did.

mod common;

use common::{bytes, config, workload};
use lumigo_mutation::names::ROLLED_BACK_ANNOTATION;
use lumigo_mutation::*;
use serde_json::{json, Value};

fn deployment() -> Value {
    workload(
        WorkloadKind::Deployment,
        json!({"name": "web", "namespace": "shop"}),
        json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "node:22"}]}
        }),
    )
}

fn crash() -> Failure {
    Failure {
        reason: "CrashLoopBackOff".into(),
        container: "app".into(),
        exit_code: Some(1),
        message: "back-off 10s restarting failed container".into(),
    }
}

fn injected() -> Value {
    let mut object = deployment();
    let outcome = inject(
        &mut object,
        WorkloadKind::Deployment,
        &config(),
        Operation::Update,
    );
    assert_eq!(outcome, Outcome::Changed(Change::Injected));
    object
}

fn roll_back_crashed(object: &mut Value) -> Outcome {
    roll_back(
        object,
        WorkloadKind::Deployment,
        &config(),
        &crash(),
        "2026-12-01T00:00:00Z",
    )
}

fn rolled_back() -> Value {
    let mut object = injected();
    let outcome = roll_back_crashed(&mut object);
    assert!(
        matches!(
            &outcome,
            Outcome::Changed(Change::RolledBack { failure }) if failure.contains("exit code 1")
        ),
        "{outcome:?}"
    );
    object
}

#[test]
fn a_rollback_gives_the_template_back_and_marks_the_workload() {
    let object = rolled_back();
    let original = deployment();
    assert_eq!(bytes(&object["spec"]), bytes(&original["spec"]));
    let marker = rollback_marker(&object).expect("a readable marker");
    assert_eq!(marker.failure, crash());
    assert_eq!(marker.settings, config().fingerprint());
    assert_eq!(marker.at, "2026-12-01T00:00:00Z");
    let mut without_marker = object.clone();
    without_marker["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    assert_eq!(bytes(&without_marker), bytes(&original));
}

#[test]
fn the_same_settings_do_not_inject_a_rolled_back_workload_again() {
    let mut object = rolled_back();
    let before = bytes(&object);
    let outcome = reconcile(
        &mut object,
        WorkloadKind::Deployment,
        &config(),
        Operation::Update,
    );
    assert!(
        matches!(
            &outcome,
            Outcome::Unchanged(Reason::RolledBack(why)) if why.starts_with("CrashLoopBackOff")
        ),
        "{outcome:?}"
    );
    assert!(!outcome_is_problem(&outcome), "no warning on every sweep");
    assert_eq!(bytes(&object), before);
}

fn outcome_is_problem(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Unchanged(reason) if reason.is_problem())
}

#[test]
fn new_settings_or_a_new_template_inject_again_and_drop_the_marker() {
    let mut other_version = config();
    other_version.operator_version = "0.2.0".into();
    assert_ne!(other_version.fingerprint(), config().fingerprint());
    let mut object = rolled_back();
    let outcome = inject(
        &mut object,
        WorkloadKind::Deployment,
        &other_version,
        Operation::Update,
    );
    assert_eq!(outcome, Outcome::Changed(Change::Injected));
    assert!(rollback_marker(&object).is_none());
    assert!(object["metadata"].get("annotations").is_none());

    let mut edited = rolled_back();
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("node:24");
    let outcome = inject(
        &mut edited,
        WorkloadKind::Deployment,
        &config(),
        Operation::Update,
    );
    assert_eq!(outcome, Outcome::Changed(Change::Injected));
    assert!(rollback_marker(&edited).is_none());
}

#[test]
fn removal_takes_the_marker_away_and_keeps_the_users_annotations() {
    let mut object = rolled_back();
    let outcome = remove(&mut object, WorkloadKind::Deployment, Operation::Update);
    assert_eq!(outcome, Outcome::Changed(Change::Removed));
    assert_eq!(bytes(&object), bytes(&deployment()));

    let mut annotated = deployment();
    annotated["metadata"]["annotations"] = json!({"team": "shop"});
    let mut object = annotated.clone();
    inject(
        &mut object,
        WorkloadKind::Deployment,
        &config(),
        Operation::Update,
    );
    roll_back_crashed(&mut object);
    assert!(object["metadata"]["annotations"][ROLLED_BACK_ANNOTATION].is_string());
    remove(&mut object, WorkloadKind::Deployment, Operation::Update);
    assert_eq!(bytes(&object), bytes(&annotated));
}

#[test]
fn only_an_injected_workload_is_rolled_back() {
    let mut object = deployment();
    let outcome = roll_back_crashed(&mut object);
    assert_eq!(outcome, Outcome::Unchanged(Reason::NotInjected));
    assert_eq!(bytes(&object), bytes(&deployment()));
}

#[test]
fn an_unreadable_marker_does_not_hold_the_workload_back() {
    let mut object = deployment();
    object["metadata"]["annotations"] = json!({ROLLED_BACK_ANNOTATION: "{not json"});
    let outcome = inject(
        &mut object,
        WorkloadKind::Deployment,
        &config(),
        Operation::Update,
    );
    assert_eq!(outcome, Outcome::Changed(Change::Injected));
    assert!(object["metadata"].get("annotations").is_none());
}
