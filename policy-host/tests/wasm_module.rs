//! The built policy module under wasmtime/waPC, the stack Kubewarden's evaluator uses: it is
//! annotated for policy-server, answers as the native code on every fixture (the same JSON),
//! answers the operator's `validate_as_patch` with the very patch its `validate` stands for, and
//! never traps or denies on arbitrary input.

use std::path::PathBuf;
use std::sync::OnceLock;

use lumigo_e2e::testing::policy_module;
use lumigo_mutation::{reconciled, InjectionChange, Operation, PatchAnswer, WorkloadKind};
use lumigo_policy_host::metadata::read_metadata;
use lumigo_policy_host::{EngineOptions, PolicyEngine};
use proptest::prelude::*;
use serde_json::{json, Value};

fn module() -> &'static [u8] {
    static MODULE: OnceLock<Vec<u8>> = OnceLock::new();
    MODULE.get_or_init(policy_module)
}

fn engine() -> &'static PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PolicyEngine::new(module(), EngineOptions::default()).unwrap())
}

fn policies_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies")
}

fn read_json(path: PathBuf) -> Value {
    serde_json::from_slice(&std::fs::read(&path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_module_is_annotated_for_policy_server() {
    let metadata = read_metadata(module())
        .unwrap()
        .expect("the io.kubewarden.metadata section");
    assert_eq!(metadata["protocolVersion"], "v1");
    assert_eq!(metadata["mutating"], true);
    let kinds: Vec<&str> = metadata["rules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| {
            rule["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
        })
        .collect();
    for resource in [
        "pods",
        "deployments",
        "daemonsets",
        "statefulsets",
        "replicasets",
        "jobs",
        "cronjobs",
        "replicationcontrollers",
    ] {
        assert!(kinds.contains(&resource), "rules miss {resource}");
    }
    for rule in metadata["rules"].as_array().unwrap() {
        assert_eq!(rule["operations"], json!(["CREATE", "UPDATE"]));
    }
    assert_eq!(engine().call("protocol_version", b"").unwrap(), b"\"v1\"");
}

/// Every example settings file: the defaults, logs on, and image-volume delivery.
const SETTINGS_FILES: [&str; 3] = [
    "settings.json",
    "settings-logs-enabled.json",
    "settings-image-volume.json",
];

#[test]
fn wasm_and_native_answer_every_fixture_identically() {
    let mut compared = 0;
    for settings_file in SETTINGS_FILES {
        let settings = read_json(policies_dir().join(settings_file));
        for entry in std::fs::read_dir(policies_dir().join("fixtures")).unwrap() {
            let path = entry.unwrap().path();
            let request = read_json(path.clone());
            let payload =
                serde_json::to_vec(&json!({"settings": settings, "request": request})).unwrap();
            let native =
                serde_json::to_value(lumigo_policy::admission::evaluate(&payload)).unwrap();
            let wasm: Value =
                serde_json::from_slice(&engine().call("validate", &payload).unwrap()).unwrap();
            // The same JSON, strings (the injection record's among them) to the byte; the
            // module's keys are sorted, the native build's keep their order (Cargo.toml).
            assert_eq!(wasm, native, "{} with {settings_file}", path.display());
            compared += 1;
        }
    }
    assert!(compared >= 50, "compared only {compared}");
}

/// The fixtures' payloads, with each settings file: (what, payload).
fn fixture_payloads() -> Vec<(String, Value)> {
    let mut payloads = Vec::new();
    for settings_file in SETTINGS_FILES {
        let settings = read_json(policies_dir().join(settings_file));
        for entry in std::fs::read_dir(policies_dir().join("fixtures")).unwrap() {
            let path = entry.unwrap().path();
            let request = read_json(path.clone());
            let what = format!("{} with {settings_file}", path.display());
            payloads.push((what, json!({"settings": settings, "request": request})));
        }
    }
    payloads
}

/// `validate_as_patch` says what `validate` says, its patch turns the request's object into
/// `validate`'s mutated object with as many operations as the host's diff of the two (what the
/// operator computed before), and its change is the change the native mutation makes of the same
/// request. Returns whether it was mutated.
fn patch_answer_matches_validate(payload: &Value) -> Result<bool, TestCaseError> {
    let bytes = serde_json::to_vec(payload).unwrap();
    let whole: Value = serde_json::from_slice(&engine().call("validate", &bytes).unwrap()).unwrap();
    let answer: PatchAnswer<json_patch::Patch> =
        serde_json::from_slice(&engine().call("validate_as_patch", &bytes).unwrap()).unwrap();
    prop_assert_eq!(&json!(answer.accepted), &whole["accepted"]);
    prop_assert_eq!(answer.message.as_deref(), whole["message"].as_str());
    let warnings = whole["warnings"].as_array().cloned().unwrap_or_default();
    prop_assert_eq!(&json!(answer.warnings), &json!(warnings));
    let request = &payload["request"];
    let Some(mutated) = whole.get("mutated_object").filter(|m| !m.is_null()) else {
        prop_assert!(answer.patch.is_none() && answer.change.is_none());
        return Ok(false);
    };
    let object = &request["object"];
    let patch = answer.patch.expect("a mutated request has a patch");
    // The host's diff of the two objects, but for the order of the operations: the module's
    // objects keep their keys sorted (Cargo.toml).
    prop_assert_eq!(patch.0.len(), json_patch::diff(object, mutated).0.len());
    let mut patched = object.clone();
    json_patch::patch(&mut patched, &patch).unwrap();
    prop_assert_eq!(&patched, mutated);
    let kind = WorkloadKind::from_group_kind(
        request["kind"]["group"].as_str().unwrap_or_default(),
        request["kind"]["kind"].as_str().unwrap_or_default(),
    )
    .expect("only workloads are mutated");
    let settings = serde_json::value::to_raw_value(&payload["settings"]).unwrap();
    let settings = lumigo_policy::settings::Settings::parse(&settings).unwrap();
    let operation = Operation::from_admission(request["operation"].as_str().unwrap()).unwrap();
    let (change, _) = reconciled(object, kind, &settings.0, operation).expect("mutated natively");
    prop_assert_eq!(answer.change, Some(InjectionChange::from(&change)));
    Ok(true)
}

#[test]
fn the_patch_answer_is_the_diff_to_what_validate_answers_on_every_fixture() {
    let payloads = fixture_payloads();
    let mut mutated = 0;
    for (what, payload) in &payloads {
        match patch_answer_matches_validate(payload) {
            Ok(changed) => mutated += usize::from(changed),
            Err(failure) => panic!("{what}: {failure}"),
        }
        let bytes = serde_json::to_vec(payload).unwrap();
        let native = lumigo_policy::admission::evaluate_as_patch(&bytes);
        let wasm: PatchAnswer<json_patch::Patch> =
            serde_json::from_slice(&engine().call("validate_as_patch", &bytes).unwrap()).unwrap();
        assert_eq!(
            (wasm.accepted, &wasm.message, &wasm.warnings, wasm.change),
            (
                native.accepted,
                &native.message,
                &native.warnings,
                native.change
            ),
            "{what}"
        );
        // The operations come in key order, which differs between the builds; what they make
        // of the object may not.
        let patched = |patch: Option<json_patch::Patch>| {
            patch.map(|patch| {
                let mut object = payload["request"]["object"].clone();
                json_patch::patch(&mut object, &patch).unwrap();
                object
            })
        };
        assert_eq!(patched(wasm.patch), patched(native.patch), "{what}");
    }
    // Creations, updates, removals by opt-out and re-injections are all among them.
    assert!(
        mutated >= 20,
        "only {mutated} of {} mutated",
        payloads.len()
    );
}

/// The operator has a child process compile the module and loads the machine code it returns:
/// that code answers like the module compiled in place.
#[test]
fn precompiled_code_answers_like_the_compiled_module() {
    let precompiled = PolicyEngine::precompile(module()).unwrap();
    // SAFETY: made by `precompile` of this build just above.
    let loaded =
        unsafe { PolicyEngine::from_precompiled(&precompiled, EngineOptions::default()) }.unwrap();
    let settings = read_json(policies_dir().join("settings.json"));
    let request = read_json(policies_dir().join("fixtures/deployment-create.json"));
    let payload = serde_json::to_vec(&json!({"settings": settings, "request": request})).unwrap();
    let answer = loaded.call("validate", &payload).unwrap();
    assert!(serde_json::from_slice::<Value>(&answer).unwrap()["mutated_object"].is_object());
    assert_eq!(answer, engine().call("validate", &payload).unwrap());
}

#[test]
fn settings_are_validated_inside_the_module() {
    let good = std::fs::read(policies_dir().join("settings.json")).unwrap();
    let answer: Value =
        serde_json::from_slice(&engine().call("validate_settings", &good).unwrap()).unwrap();
    assert_eq!(answer["valid"], true);
    let bad = concat!(
        r#"{"injectorImage": "lumigo/autotrace", "tokenSecret": {"name": "s", "key": "k"}, "#,
        r#""operatorVersion": "1"}"#
    )
    .as_bytes();
    let answer: Value =
        serde_json::from_slice(&engine().call("validate_settings", bad).unwrap()).unwrap();
    assert_eq!(answer["valid"], false);
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("injectorImage"),
        "{answer}"
    );
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        prop::sample::select(vec![
            "CREATE",
            "UPDATE",
            "Deployment",
            "Pod",
            "apps",
            "",
            "containers",
            "env"
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "kind",
                        "group",
                        "operation",
                        "object",
                        "spec",
                        "template",
                        "metadata",
                        "labels",
                        "containers",
                        "env",
                        "name",
                        "volumes",
                        "initContainers",
                        "annotations",
                        "x",
                    ]),
                    inner
                ),
                0..5
            )
            .prop_map(|entries| Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v))
                    .collect()
            )),
        ]
    })
}

/// The module's stack (`.cargo/config.toml`) holds the deepest request its JSON parser accepts:
/// every depth up to the parser's limit is mutated, and past it the request is admitted unchanged
/// with a warning; no depth traps.
#[test]
fn the_deepest_request_the_parser_accepts_is_mutated_not_trapped() {
    let settings = read_json(policies_dir().join("settings.json"));
    let request = read_json(policies_dir().join("fixtures/deployment-create.json"));
    let mut deepest_mutated = 0;
    let mut refused = 0;
    for depth in 100..=130 {
        let mut nested = json!("x");
        for level in 0..depth {
            nested = if level % 2 == 0 {
                json!([nested])
            } else {
                json!({ "k": nested })
            };
        }
        let mut request = request.clone();
        request["object"]["spec"]["template"]["spec"]["containers"][0]["deep"] = nested;
        let payload =
            serde_json::to_vec(&json!({"settings": settings, "request": request})).unwrap();
        let answer = engine()
            .call("validate_as_patch", &payload)
            .unwrap_or_else(|error| panic!("depth {depth}: the module trapped: {error}"));
        let answer: PatchAnswer<json_patch::Patch> = serde_json::from_slice(&answer).unwrap();
        assert!(answer.accepted, "depth {depth}");
        if answer.patch.is_some() {
            deepest_mutated = depth;
        } else {
            assert!(
                answer
                    .warnings
                    .iter()
                    .any(|w| w.contains("recursion limit")),
                "depth {depth}: {:?}",
                answer.warnings
            );
            refused += 1;
        }
    }
    assert!(
        deepest_mutated >= 115,
        "mutated up to depth {deepest_mutated}"
    );
    assert!(refused > 0, "no depth reached the parser's limit");
}

/// A real request with one place replaced by arbitrary JSON: deep enough to reach the mutation.
fn damaged_request() -> impl Strategy<Value = Value> {
    let request = read_json(policies_dir().join("fixtures/deployment-create.json"));
    let pointers = vec![
        "/object",
        "/object/spec",
        "/object/spec/template",
        "/object/spec/template/spec",
        "/object/spec/template/spec/containers",
        "/object/spec/template/spec/containers/0",
        "/object/spec/template/spec/containers/0/env",
        "/object/metadata",
        "/object/metadata/labels",
        "/object/spec/template/metadata",
        "/kind",
        "/operation",
    ];
    (prop::sample::select(pointers), arbitrary_json()).prop_map(move |(pointer, junk)| {
        let mut damaged = request.clone();
        *damaged.pointer_mut(pointer).unwrap() = junk;
        damaged
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_requests_never_trap_or_deny(
        request in damaged_request(),
        settings in arbitrary_json(),
    ) {
        let real_settings = read_json(policies_dir().join("settings.json"));
        for payload in [
            json!({"settings": real_settings, "request": request}),
            json!({"settings": settings, "request": request}),
        ] {
            let answer = engine().call("validate", &serde_json::to_vec(&payload).unwrap());
            let answer: Value =
                serde_json::from_slice(&answer.expect("the module must not trap")).unwrap();
            prop_assert_eq!(&answer["accepted"], &json!(true));
            patch_answer_matches_validate(&payload)?;
        }
    }

    #[test]
    fn arbitrary_bytes_never_trap(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let answer: Value =
            serde_json::from_slice(&engine().call("validate", &bytes).unwrap()).unwrap();
        prop_assert_eq!(&answer["accepted"], &json!(true));
        let patch_answer: Value =
            serde_json::from_slice(&engine().call("validate_as_patch", &bytes).unwrap()).unwrap();
        prop_assert_eq!(&patch_answer["accepted"], &json!(true));
        let settings_answer: Value =
            serde_json::from_slice(&engine().call("validate_settings", &bytes).unwrap()).unwrap();
        prop_assert!(settings_answer["valid"].is_boolean());
    }
}
