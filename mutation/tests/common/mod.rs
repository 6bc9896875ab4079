//! Shared by the integration tests: a configuration and workload wrappers.

#![allow(dead_code)] // each test file uses its own part of this module

use lumigo_mutation::{InjectionConfig, PayloadDelivery, WorkloadKind};
use serde_json::{json, Value};

pub fn config() -> InjectionConfig {
    serde_json::from_value(json!({
        "injectorImage": "ghcr.io/lumigo-rs/autotrace:0.1.0",
        "tokenSecret": {"name": "lumigo-credentials", "key": "token"},
        "tracesEndpoint": "http://lumigo-telemetry.lumigo-system.svc:4318/v1/traces",
        "logsEndpoint": "http://lumigo-telemetry.lumigo-system.svc:4318/v1/logs",
        "operatorVersion": "0.1.0"
    }))
    .unwrap()
}

pub fn config_delivering(delivery: PayloadDelivery) -> InjectionConfig {
    InjectionConfig {
        payload_delivery: delivery,
        ..config()
    }
}

/// An object of `kind` around a pod template (`metadata` + `spec`).
pub fn workload(kind: WorkloadKind, metadata: Value, template: Value) -> Value {
    let api_version = match kind.group() {
        "" => "v1".to_owned(),
        group => format!("{group}/v1"),
    };
    match kind {
        WorkloadKind::Pod => {
            let mut pod = json!({"apiVersion": api_version, "kind": kind.name()});
            for (key, value) in template.as_object().unwrap() {
                pod[key] = value.clone();
            }
            pod["metadata"] = merge(
                metadata,
                template.get("metadata").cloned().unwrap_or(json!({})),
            );
            pod
        }
        WorkloadKind::CronJob => json!({
            "apiVersion": api_version, "kind": kind.name(), "metadata": metadata,
            "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": template}}}
        }),
        _ => json!({
            "apiVersion": api_version, "kind": kind.name(), "metadata": metadata,
            "spec": {"selector": {"matchLabels": {"app": "demo"}}, "template": template}
        }),
    }
}

fn merge(mut base: Value, extra: Value) -> Value {
    for (key, value) in extra.as_object().unwrap() {
        base[key] = value.clone();
    }
    base
}

pub fn bytes(value: &Value) -> String {
    serde_json::to_string(value).unwrap()
}
