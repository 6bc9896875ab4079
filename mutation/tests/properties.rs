//! Properties over generated pod templates of every kind: injection is idempotent, removal
//! gives back the input byte for byte, and nothing outside the owned items changes.

mod common;

use common::{bytes, config_delivering, workload};
use lumigo_mutation::names::*;
use lumigo_mutation::*;
use proptest::prelude::*;
use serde_json::{json, Map, Value};

fn env_entry() -> impl Strategy<Value = Value> {
    prop_oneof![
        "[A-Z_]{1,8}".prop_map(|name| json!({"name": name, "value": "v"})),
        "[a-z/. :]{0,20}".prop_map(|value| json!({"name": LD_PRELOAD, "value": value})),
        Just(json!({"name": LD_PRELOAD})),
        prop::sample::select(vec![
            ENV_TRACES_ENDPOINT,
            ENV_TOKEN,
            ENV_CONTAINER_NAME,
            ENV_ENABLE_LOGS
        ])
        .prop_map(|name| json!({"name": name, "value": "user's own"})),
        Just(json!({"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})),
    ]
}

/// An optional key: absent, null, or a value.
fn maybe(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Option<Value>> {
    prop_oneof![Just(None), Just(Some(Value::Null)), value.prop_map(Some)]
}

fn container(index: usize) -> impl Strategy<Value = Value> {
    (
        maybe(prop::collection::vec(env_entry(), 0..4).prop_map(Value::Array)),
        maybe(Just(json!([{"name": "data", "mountPath": "/data"}]))),
        any::<bool>(),
    )
        .prop_map(move |(env, mounts, unknown_field)| {
            let mut container = Map::new();
            container.insert("name".into(), json!(format!("c{index}")));
            container.insert("image".into(), json!("registry/app:1"));
            if let Some(env) = env {
                container.insert("env".into(), dedup_by_name(env));
            }
            if let Some(mounts) = mounts {
                container.insert("volumeMounts".into(), mounts);
            }
            if unknown_field {
                container.insert("fieldFromTheFuture".into(), json!({"a": [1, {"b": null}]}));
            }
            Value::Object(container)
        })
}

/// Kubernetes keeps the first of duplicate env names only on the API's merge key; generated
/// containers keep names unique, as real manifests do.
fn dedup_by_name(env: Value) -> Value {
    let Value::Array(entries) = env else {
        return env;
    };
    let mut seen = std::collections::HashSet::new();
    Value::Array(
        entries
            .into_iter()
            .filter(|e| seen.insert(e["name"].clone()))
            .collect(),
    )
}

fn pod_template() -> impl Strategy<Value = Value> {
    (
        (1usize..4).prop_flat_map(|n| (0..n).map(container).collect::<Vec<_>>()),
        maybe(Just(json!([{"name": "data", "emptyDir": {}}]))),
        maybe(Just(json!([{"name": "migrate", "image": "m:1"}]))),
        maybe(prop_oneof![
            Just(json!({"app": "demo"})),
            Just(json!({"app": "demo", "lumigo.auto-trace": "lumigo-operator.v0.0.1"})),
        ]),
        maybe(Just(json!({"note": "kept"}))),
        prop::option::of((1i64..70000, any::<bool>())),
    )
        .prop_map(
            |(containers, volumes, init, labels, annotations, security)| {
                let mut spec = Map::new();
                if let Some(volumes) = volumes {
                    spec.insert("volumes".into(), volumes);
                }
                if let Some(init) = init {
                    spec.insert("initContainers".into(), init);
                }
                spec.insert("containers".into(), Value::Array(containers));
                if let Some((uid, with_group)) = security {
                    let mut context = json!({"runAsUser": uid});
                    if with_group {
                        context["runAsGroup"] = json!(uid + 1);
                    }
                    spec.insert("securityContext".into(), context);
                }
                let mut metadata = Map::new();
                if let Some(labels) = labels {
                    metadata.insert("labels".into(), labels);
                }
                if let Some(annotations) = annotations {
                    metadata.insert("annotations".into(), annotations);
                }
                let mut template = Map::new();
                if !metadata.is_empty() {
                    template.insert("metadata".into(), Value::Object(metadata));
                }
                template.insert("spec".into(), Value::Object(spec));
                Value::Object(template)
            },
        )
}

fn any_workload() -> impl Strategy<Value = (WorkloadKind, Value)> {
    (
        prop::sample::select(WorkloadKind::ALL.to_vec()),
        maybe(Just(json!({"team": "a"}))),
        pod_template(),
    )
        .prop_map(|(kind, labels, template)| {
            let mut metadata = json!({"name": "w", "namespace": "ns"});
            if let Some(labels) = labels {
                metadata["labels"] = labels;
            }
            (kind, workload(kind, metadata, template))
        })
}

fn any_delivery() -> impl Strategy<Value = PayloadDelivery> {
    prop_oneof![
        Just(PayloadDelivery::InitContainer),
        Just(PayloadDelivery::ImageVolume)
    ]
}

/// The object with every owned item taken away by name, and empty maps and lists dropped:
/// what remains is what the injection must never touch.
fn without_owned_items(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut kept = Map::new();
            for (key, item) in map {
                if key == AUTO_TRACE_LABEL || key == RECORD_ANNOTATION {
                    continue;
                }
                let item = without_owned_items(item);
                let empty = matches!(&item, Value::Object(m) if m.is_empty())
                    || matches!(&item, Value::Array(a) if a.is_empty())
                    || item.is_null();
                if !empty {
                    kept.insert(key.clone(), item);
                }
            }
            Value::Object(kept)
        }
        Value::Array(items) => Value::Array(
            items
                .iter()
                .filter(|item| !is_ours(item.as_object().unwrap_or(&Map::new())))
                .map(without_owned_items)
                .collect(),
        ),
        other => other.clone(),
    }
}

fn is_ours(item: &Map<String, Value>) -> bool {
    let owned_names = [
        INJECTOR_NAME,
        LD_PRELOAD,
        ENV_TOKEN,
        ENV_TRACES_ENDPOINT,
        ENV_LOGS_ENDPOINT,
        ENV_ENABLE_TRACES,
        ENV_ENABLE_LOGS,
        ENV_CONTAINER_NAME,
    ];
    item.get("name")
        .and_then(Value::as_str)
        .is_some_and(|name| owned_names.contains(&name))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn injection_is_idempotent((kind, original) in any_workload(), delivery in any_delivery()) {
        let config = config_delivering(delivery);
        let mut once = original.clone();
        let first = inject(&mut once, kind, &config, Operation::Create);
        prop_assert_eq!(first, Outcome::Changed(Change::Injected));
        let mut twice = once.clone();
        prop_assert_eq!(
            inject(&mut twice, kind, &config, Operation::Update),
            Outcome::Unchanged(Reason::AlreadyInjected)
        );
        prop_assert_eq!(bytes(&twice), bytes(&once));
    }

    #[test]
    fn removal_gives_back_the_input_exactly(
        (kind, original) in any_workload(),
        delivery in any_delivery()
    ) {
        let mut object = original.clone();
        inject(&mut object, kind, &config_delivering(delivery), Operation::Create);
        prop_assert_eq!(
            remove(&mut object, kind, Operation::Create),
            Outcome::Changed(Change::Removed)
        );
        prop_assert_eq!(bytes(&object), bytes(&original));
    }

    #[test]
    fn reinjection_with_other_settings_still_removes_exactly(
        (kind, original) in any_workload(),
        logs in any::<bool>(),
        deliveries in (any_delivery(), any_delivery())
    ) {
        let mut old = config_delivering(deliveries.0);
        old.operator_version = "0.0.1".into();
        let mut object = original.clone();
        inject(&mut object, kind, &old, Operation::Create);
        let mut new = config_delivering(deliveries.1);
        new.enable_logs = logs;
        prop_assert!(matches!(
            inject(&mut object, kind, &new, Operation::Create),
            Outcome::Changed(_)
        ));
        remove(&mut object, kind, Operation::Create);
        prop_assert_eq!(bytes(&object), bytes(&original));
    }

    #[test]
    fn only_owned_items_differ((kind, original) in any_workload(), delivery in any_delivery()) {
        let mut object = original.clone();
        inject(&mut object, kind, &config_delivering(delivery), Operation::Create);
        prop_assert_eq!(without_owned_items(&object), without_owned_items(&original));
    }
}
