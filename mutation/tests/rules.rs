//! The brief's rules, one scenario each, on realistic objects.

mod common;

use common::{bytes, config, config_delivering, workload};
use lumigo_mutation::names::*;
use lumigo_mutation::*;
use serde_json::{json, Value};

fn deployment(containers: Value) -> Value {
    workload(
        WorkloadKind::Deployment,
        json!({"name": "web", "namespace": "shop", "labels": {"app": "web"}}),
        json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": containers}}),
    )
}

fn env_of(object: &Value, container: usize) -> Vec<Value> {
    object["spec"]["template"]["spec"]["containers"][container]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn env_value(object: &Value, container: usize, name: &str) -> Option<Value> {
    env_of(object, container)
        .into_iter()
        .find(|e| e["name"] == name)
}

#[test]
fn a_deployment_gets_every_owned_item() {
    let mut object =
        deployment(json!([{"name": "app", "image": "node:22"}, {"name": "side", "image": "py:3"}]));
    let outcome = inject(
        &mut object,
        WorkloadKind::Deployment,
        &config(),
        Operation::Create,
    );
    assert_eq!(outcome, Outcome::Changed(Change::Injected));

    let spec = &object["spec"]["template"]["spec"];
    assert_eq!(
        spec["volumes"],
        json!([{"name": INJECTOR_NAME, "emptyDir": {"sizeLimit": "80M"}}])
    );
    let init = &spec["initContainers"][0];
    assert_eq!(init["name"], INJECTOR_NAME);
    assert_eq!(init["image"], "ghcr.io/lumigo-rs/autotrace:0.1.0");
    assert_eq!(
        init["env"],
        json!([{"name": "TARGET_DIRECTORY", "value": "/target"}])
    );
    let security = &init["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert!(
        init["resources"]["limits"]["memory"].is_string()
            && init["resources"]["requests"]["cpu"].is_string()
    );

    for (index, name) in ["app", "side"].into_iter().enumerate() {
        let container = &spec["containers"][index];
        assert_eq!(
            container["volumeMounts"],
            json!([{"name": INJECTOR_NAME, "mountPath": "/opt/lumigo", "readOnly": true}])
        );
        assert_eq!(
            env_value(&object, index, LD_PRELOAD).unwrap()["value"],
            INJECTOR_LIBRARY_PATH
        );
        assert_eq!(
            env_value(&object, index, ENV_CONTAINER_NAME).unwrap()["value"],
            name
        );
        assert_eq!(
            env_value(&object, index, ENV_TOKEN).unwrap()["valueFrom"]["secretKeyRef"],
            json!({"name": "lumigo-credentials", "key": "token", "optional": true})
        );
        assert_eq!(
            env_value(&object, index, ENV_ENABLE_TRACES).unwrap()["value"],
            "true"
        );
        assert_eq!(
            env_value(&object, index, ENV_ENABLE_LOGS).unwrap()["value"],
            "false"
        );
    }
    assert_eq!(
        object["metadata"]["labels"][AUTO_TRACE_LABEL],
        "lumigo-operator.v0.1.0"
    );
    assert_eq!(
        object["spec"]["template"]["metadata"]["labels"][AUTO_TRACE_LABEL],
        "lumigo-operator.v0.1.0"
    );
    assert!(inspect(&object, WorkloadKind::Deployment).injected);
}

#[test]
fn a_users_ld_preload_and_lumigo_values_are_kept_and_restored() {
    let original = deployment(json!([{"name": "app", "image": "node:22", "env": [
        {"name": "LD_PRELOAD", "value": "/usr/lib/libjemalloc.so"},
        {"name": "LUMIGO_ENDPOINT", "value": "https://my-collector/v1/traces"},
        {"name": "OTHER", "value": "1"}
    ]}]));
    let mut object = original.clone();
    assert!(matches!(
        inject(
            &mut object,
            WorkloadKind::Deployment,
            &config(),
            Operation::Create
        ),
        Outcome::Changed(_)
    ));
    assert_eq!(
        env_value(&object, 0, LD_PRELOAD).unwrap()["value"],
        format!("{INJECTOR_LIBRARY_PATH} /usr/lib/libjemalloc.so")
    );
    assert_eq!(
        env_value(&object, 0, ENV_TRACES_ENDPOINT).unwrap()["value"],
        "https://my-collector/v1/traces"
    );
    let names: Vec<_> = env_of(&object, 0)
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        names.iter().filter(|n| *n == ENV_TRACES_ENDPOINT).count(),
        1,
        "{names:?}"
    );

    assert_eq!(
        remove(&mut object, WorkloadKind::Deployment, Operation::Update),
        Outcome::Changed(Change::Removed)
    );
    assert_eq!(bytes(&object), bytes(&original));
}

#[test]
fn an_ld_preload_without_value_comes_back_without_value() {
    let original =
        deployment(json!([{"name": "app", "image": "x:1", "env": [{"name": "LD_PRELOAD"}]}]));
    let mut object = original.clone();
    inject(
        &mut object,
        WorkloadKind::Deployment,
        &config(),
        Operation::Create,
    );
    remove(&mut object, WorkloadKind::Deployment, Operation::Update);
    assert_eq!(bytes(&object), bytes(&original));
}

#[test]
fn ld_preload_from_a_secret_cannot_be_composed_and_says_so() {
    let mut object = deployment(json!([{"name": "app", "image": "x:1", "env": [
        {"name": "LD_PRELOAD", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}}]}]));
    let before = object.clone();
    let outcome = inject(
        &mut object,
        WorkloadKind::Deployment,
        &config(),
        Operation::Create,
    );
    assert!(
        matches!(&outcome, Outcome::Unchanged(reason @ Reason::Conflict(_)) if reason.is_problem()),
        "{outcome}"
    );
    assert_eq!(object, before);
}

#[test]
fn opting_out_an_injected_object_cleans_it() {
    let original = deployment(json!([{"name": "app", "image": "x:1"}]));
    let mut object = original.clone();
    inject(
        &mut object,
        WorkloadKind::Deployment,
        &config(),
        Operation::Create,
    );
    object["metadata"]["labels"][AUTO_TRACE_LABEL] = json!("false");
    assert_eq!(
        reconcile(
            &mut object,
            WorkloadKind::Deployment,
            &config(),
            Operation::Update
        ),
        Outcome::Changed(Change::Removed)
    );
    let mut expected = original;
    expected["metadata"]["labels"][AUTO_TRACE_LABEL] = json!("false");
    // The workload's label is the user's opt-out now, so it stays; all the rest is gone.
    assert_eq!(object, expected);
    assert_eq!(
        reconcile(
            &mut object,
            WorkloadKind::Deployment,
            &config(),
            Operation::Update
        ),
        Outcome::Unchanged(Reason::OptedOut)
    );
}

#[test]
fn opt_out_on_the_template_alone_is_honoured() {
    let mut object = deployment(json!([{"name": "app", "image": "x:1"}]));
    object["spec"]["template"]["metadata"]["labels"][AUTO_TRACE_LABEL] = json!("false");
    let before = object.clone();
    assert_eq!(
        reconcile(
            &mut object,
            WorkloadKind::Deployment,
            &config(),
            Operation::Create
        ),
        Outcome::Unchanged(Reason::OptedOut)
    );
    assert_eq!(object, before);
}

#[test]
fn another_version_or_other_settings_are_reinjected() {
    let original = deployment(json!([{"name": "app", "image": "x:1"}]));
    let mut old_config = config();
    old_config.operator_version = "0.0.9".into();
    let mut object = original.clone();
    inject(
        &mut object,
        WorkloadKind::Deployment,
        &old_config,
        Operation::Create,
    );

    let outcome = reconcile(
        &mut object,
        WorkloadKind::Deployment,
        &config(),
        Operation::Update,
    );
    assert_eq!(
        outcome,
        Outcome::Changed(Change::Reinjected {
            previous_label: "lumigo-operator.v0.0.9".into()
        })
    );
    let mut fresh = original.clone();
    inject(
        &mut fresh,
        WorkloadKind::Deployment,
        &config(),
        Operation::Create,
    );
    assert_eq!(bytes(&object), bytes(&fresh));

    let mut logging = config();
    logging.enable_logs = true;
    assert!(matches!(
        reconcile(
            &mut object,
            WorkloadKind::Deployment,
            &logging,
            Operation::Update
        ),
        Outcome::Changed(Change::Reinjected { .. })
    ));
    assert_eq!(
        env_value(&object, 0, ENV_ENABLE_LOGS).unwrap()["value"],
        "true"
    );
    assert_eq!(
        reconcile(
            &mut object,
            WorkloadKind::Deployment,
            &logging,
            Operation::Update
        ),
        Outcome::Unchanged(Reason::AlreadyInjected)
    );
}

/// A digest-pinned image (the chart's `injector.image.digest`) is the init container's image as
/// given; moving from the tag to the digest re-injects, and removal restores the original.
#[test]
fn a_digest_pinned_injector_image_is_injected_as_given() {
    let original = deployment(json!([{"name": "app", "image": "node:22"}]));
    let digest = format!("sha256:{}", "e3b0c44298fc1c14".repeat(4));
    let mut pinned = config();
    pinned.injector_image = format!("ghcr.io/lumigo-rs/autotrace:0.1.0@{digest}");
    assert_eq!(pinned.validate(), Ok(()));

    let mut object = original.clone();
    inject(
        &mut object,
        WorkloadKind::Deployment,
        &config(),
        Operation::Create,
    );
    assert!(matches!(
        reconcile(
            &mut object,
            WorkloadKind::Deployment,
            &pinned,
            Operation::Update
        ),
        Outcome::Changed(Change::Reinjected { .. })
    ));
    let init = &object["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["name"], INJECTOR_NAME);
    assert_eq!(init["image"], pinned.injector_image.as_str());
    // The version comes from the operator, not from parsing the image reference.
    assert!(inspect(&object, WorkloadKind::Deployment).injected);
    assert_eq!(
        object["spec"]["template"]["metadata"]["labels"][AUTO_TRACE_LABEL],
        "lumigo-operator.v0.1.0"
    );
    assert_eq!(
        reconcile(
            &mut object,
            WorkloadKind::Deployment,
            &pinned,
            Operation::Update
        ),
        Outcome::Unchanged(Reason::AlreadyInjected)
    );
    remove(&mut object, WorkloadKind::Deployment, Operation::Update);
    assert_eq!(bytes(&object), bytes(&original));
}

#[test]
fn owned_objects_are_left_to_their_owner() {
    let owner = |kind: &str, api_version: &str| {
        json!({"name": "x", "ownerReferences": [{
            "apiVersion": api_version,
            "kind": kind,
            "name": "owner",
            "uid": "u",
            "controller": true
        }]})
    };
    let template = json!({"spec": {"containers": [{"name": "app", "image": "x:1"}]}});
    for (kind, metadata) in [
        (WorkloadKind::ReplicaSet, owner("Deployment", "apps/v1")),
        (WorkloadKind::Job, owner("CronJob", "batch/v1")),
        (WorkloadKind::Pod, owner("ReplicaSet", "apps/v1")),
        (WorkloadKind::Pod, owner("StatefulSet", "apps/v1")),
    ] {
        let mut object = workload(kind, metadata, template.clone());
        let before = object.clone();
        let outcome = reconcile(&mut object, kind, &config(), Operation::Create);
        assert!(
            matches!(
                outcome,
                Outcome::Unchanged(Reason::OwnedByController { .. })
            ),
            "{kind}: {outcome}"
        );
        assert_eq!(object, before);
    }
    let mut custom_owned = workload(
        WorkloadKind::Pod,
        owner("Workflow", "argoproj.io/v1alpha1"),
        template,
    );
    assert!(matches!(
        reconcile(
            &mut custom_owned,
            WorkloadKind::Pod,
            &config(),
            Operation::Create
        ),
        Outcome::Changed(_)
    ));
}

#[test]
fn a_jobs_template_is_never_changed_on_update() {
    let template = json!({"spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "app", "image": "x:1"}]
    }});
    let mut job = workload(WorkloadKind::Job, json!({"name": "batch"}), template);
    let before = job.clone();
    let outcome = reconcile(&mut job, WorkloadKind::Job, &config(), Operation::Update);
    assert_eq!(
        outcome,
        Outcome::Unchanged(Reason::TemplateImmutable { kind: "Job".into() })
    );
    assert!(outcome.to_string().contains("immutable"));
    assert_eq!(job, before);

    assert_eq!(
        reconcile(&mut job, WorkloadKind::Job, &config(), Operation::Create),
        Outcome::Changed(Change::Injected)
    );
    // Unchanged settings on update are simply already done, not a warning.
    assert_eq!(
        reconcile(&mut job, WorkloadKind::Job, &config(), Operation::Update),
        Outcome::Unchanged(Reason::AlreadyInjected)
    );
}

#[test]
fn a_volume_of_our_name_that_is_not_ours_is_a_conflict() {
    let mut object = deployment(json!([{"name": "app", "image": "x:1"}]));
    object["spec"]["template"]["spec"]["volumes"] =
        json!([{"name": INJECTOR_NAME, "configMap": {"name": "mine"}}]);
    let before = object.clone();
    let outcome = inject(
        &mut object,
        WorkloadKind::Deployment,
        &config(),
        Operation::Create,
    );
    assert!(
        matches!(outcome, Outcome::Unchanged(Reason::Conflict(ref why)) if why.contains("volume")),
        "{outcome}"
    );
    assert_eq!(object, before);
}

#[test]
fn fields_unknown_to_any_client_library_survive() {
    let original = deployment(
        json!([{"name": "app", "image": "x:1", "futureField": {"nested": [1, 2]},
        "resizePolicy": [{"resourceName": "cpu", "restartPolicy": "NotRequired"}]}]),
    );
    let mut object = original.clone();
    object["spec"]["template"]["spec"]["hostUsers"] = json!(false);
    object["spec"]["template"]["spec"]["someAlphaField"] = json!({"x": true});
    let with_unknown = object.clone();
    inject(
        &mut object,
        WorkloadKind::Deployment,
        &config(),
        Operation::Create,
    );
    assert_eq!(
        object["spec"]["template"]["spec"]["someAlphaField"],
        json!({"x": true})
    );
    assert_eq!(
        object["spec"]["template"]["spec"]["containers"][0]["futureField"],
        json!({"nested": [1, 2]})
    );
    remove(&mut object, WorkloadKind::Deployment, Operation::Update);
    assert_eq!(bytes(&object), bytes(&with_unknown));
}

#[test]
fn the_init_container_runs_as_the_pods_user() {
    let mut object = deployment(json!([{"name": "app", "image": "x:1"}]));
    object["spec"]["template"]["spec"]["securityContext"] =
        json!({"runAsUser": 1000, "runAsGroup": 3000, "fsGroup": 2000});
    inject(
        &mut object,
        WorkloadKind::Deployment,
        &config(),
        Operation::Create,
    );
    let security = &object["spec"]["template"]["spec"]["initContainers"][0]["securityContext"];
    assert_eq!(
        (
            security["runAsUser"].as_i64(),
            security["runAsGroup"].as_i64()
        ),
        (Some(1000), Some(3000))
    );

    let mut root = deployment(json!([{"name": "app", "image": "x:1"}]));
    root["spec"]["template"]["spec"]["securityContext"] = json!({"runAsUser": 0});
    inject(
        &mut root,
        WorkloadKind::Deployment,
        &config(),
        Operation::Create,
    );
    let security = &root["spec"]["template"]["spec"]["initContainers"][0]["securityContext"];
    assert_ne!(
        security["runAsUser"].as_i64(),
        Some(0),
        "restricted forbids root"
    );
}

#[test]
fn the_injector_goes_before_the_users_init_containers() {
    let mut object = deployment(json!([{"name": "app", "image": "x:1"}]));
    object["spec"]["template"]["spec"]["initContainers"] = json!([
        {"name": "migrate", "image": "m:1"},
        {"name": "proxy", "image": "p:1", "restartPolicy": "Always"}
    ]);
    inject(
        &mut object,
        WorkloadKind::Deployment,
        &config(),
        Operation::Create,
    );
    let names: Vec<_> = object["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, [INJECTOR_NAME, "migrate", "proxy"]);
}

#[test]
fn a_bare_pod_is_injected_once_with_one_label() {
    let original = workload(
        WorkloadKind::Pod,
        json!({"name": "p", "labels": {"app": "p"}}),
        json!({"spec": {"containers": [{"name": "app", "image": "x:1"}],
                        "ephemeralContainers": [{"name": "debug", "image": "busybox:1"}]}}),
    );
    let mut pod = original.clone();
    assert!(matches!(
        reconcile(&mut pod, WorkloadKind::Pod, &config(), Operation::Create),
        Outcome::Changed(_)
    ));
    assert_eq!(
        pod["metadata"]["labels"][AUTO_TRACE_LABEL],
        "lumigo-operator.v0.1.0"
    );
    assert_eq!(
        pod["spec"]["ephemeralContainers"],
        original["spec"]["ephemeralContainers"]
    );
    assert_eq!(
        reconcile(&mut pod, WorkloadKind::Pod, &config(), Operation::Update),
        Outcome::Unchanged(Reason::AlreadyInjected)
    );
}

#[test]
fn malformed_objects_are_reported_and_left_alone() {
    for (label, template) in [
        ("no containers", json!({"spec": {"containers": []}})),
        (
            "containers not a list",
            json!({"spec": {"containers": {"a": 1}}}),
        ),
        ("no spec", json!({"metadata": {}})),
        (
            "volumes not a list",
            json!({"spec": {"volumes": "x", "containers": [{"name": "a"}]}}),
        ),
        (
            "nameless container",
            json!({"spec": {"containers": [{"image": "a"}]}}),
        ),
    ] {
        let mut object = workload(WorkloadKind::StatefulSet, json!({"name": "s"}), template);
        let before = object.clone();
        let outcome = reconcile(
            &mut object,
            WorkloadKind::StatefulSet,
            &config(),
            Operation::Create,
        );
        assert!(
            matches!(outcome, Outcome::Unchanged(Reason::Malformed(_))),
            "{label}: {outcome}"
        );
        assert_eq!(object, before, "{label}");
    }
}

#[test]
fn an_object_being_deleted_is_left_alone() {
    let mut object = deployment(json!([{"name": "app", "image": "x:1"}]));
    object["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    assert_eq!(
        reconcile(
            &mut object,
            WorkloadKind::Deployment,
            &config(),
            Operation::Update
        ),
        Outcome::Unchanged(Reason::Terminating)
    );
}

#[test]
fn an_image_volume_mounts_the_image_with_no_copy() {
    let original = deployment(json!([{"name": "app", "image": "node:22"}]));
    let mut object = original.clone();
    let image_volume = config_delivering(PayloadDelivery::ImageVolume);
    let outcome = inject(
        &mut object,
        WorkloadKind::Deployment,
        &image_volume,
        Operation::Create,
    );
    assert_eq!(outcome, Outcome::Changed(Change::Injected));

    let spec = &object["spec"]["template"]["spec"];
    assert_eq!(
        spec["volumes"],
        json!([{
            "name": INJECTOR_NAME,
            "image": {
                "reference": "ghcr.io/lumigo-rs/autotrace:0.1.0",
                "pullPolicy": "IfNotPresent"
            }
        }])
    );
    assert!(
        spec.get("initContainers").is_none(),
        "no copy step: {spec:#}"
    );
    assert_eq!(
        spec["containers"][0]["volumeMounts"],
        json!([{
            "name": INJECTOR_NAME,
            "mountPath": PAYLOAD_MOUNT_PATH,
            "readOnly": true,
            "subPath": PAYLOAD_IMAGE_DIRECTORY
        }])
    );
    assert_eq!(
        env_value(&object, 0, LD_PRELOAD).unwrap()["value"],
        INJECTOR_LIBRARY_PATH
    );

    remove(&mut object, WorkloadKind::Deployment, Operation::Update);
    assert_eq!(bytes(&object), bytes(&original));
}

#[test]
fn switching_the_delivery_reinjects_and_removal_stays_exact() {
    let original = deployment(json!([{"name": "app", "image": "node:22"}]));
    let mut object = original.clone();
    let copied = config();
    let mounted = config_delivering(PayloadDelivery::ImageVolume);
    inject(
        &mut object,
        WorkloadKind::Deployment,
        &copied,
        Operation::Create,
    );
    let outcome = inject(
        &mut object,
        WorkloadKind::Deployment,
        &mounted,
        Operation::Update,
    );
    assert!(
        matches!(outcome, Outcome::Changed(Change::Reinjected { .. })),
        "{outcome:?}"
    );
    let spec = &object["spec"]["template"]["spec"];
    assert!(spec.get("initContainers").is_none(), "{spec:#}");
    assert!(spec["volumes"][0].get("image").is_some(), "{spec:#}");

    let outcome = inject(
        &mut object,
        WorkloadKind::Deployment,
        &copied,
        Operation::Update,
    );
    assert!(matches!(
        outcome,
        Outcome::Changed(Change::Reinjected { .. })
    ));
    assert_eq!(
        object["spec"]["template"]["spec"]["initContainers"][0]["name"],
        INJECTOR_NAME
    );
    remove(&mut object, WorkloadKind::Deployment, Operation::Update);
    assert_eq!(bytes(&object), bytes(&original));
}

#[test]
fn an_init_container_of_the_injectors_name_is_a_conflict_in_either_mode() {
    for delivery in [PayloadDelivery::InitContainer, PayloadDelivery::ImageVolume] {
        let mut object = deployment(json!([{"name": "app", "image": "node:22"}]));
        object["spec"]["template"]["spec"]["initContainers"] =
            json!([{"name": INJECTOR_NAME, "image": "busybox:1"}]);
        let before = object.clone();
        let outcome = inject(
            &mut object,
            WorkloadKind::Deployment,
            &config_delivering(delivery),
            Operation::Create,
        );
        let conflict = matches!(
            &outcome,
            Outcome::Unchanged(Reason::Conflict(why)) if why.contains("init container")
        );
        assert!(conflict, "{delivery:?}: {outcome:?}");
        assert_eq!(object, before, "{delivery:?}: untouched");
    }
}
