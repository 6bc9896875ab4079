//! The `Lumigo` custom resource, compatible with the original operator's
//! `operator.lumigo.io/v1alpha1`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;

use crate::delivery::{DeliveryChoice, DeliveryStatus};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const FINALIZER: &str = "operator.lumigo.io/lumigo-finalizer";

// clippy reads the printer columns' repeated `type_` as a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "operator.lumigo.io",
    version = "v1alpha1",
    kind = "Lumigo",
    plural = "lumigoes",
    namespaced,
    status = "LumigoStatus",
    printcolumn(
        name = "Active",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Active\")].status"
    ),
    printcolumn(
        name = "Instrumented",
        type_ = "integer",
        json_path = ".status.instrumentedCount"
    ),
    printcolumn(name = "Tracing", type_ = "string", json_path = ".status.tracing"),
    printcolumn(
        name = "Delivery",
        type_ = "string",
        priority = "1",
        json_path = ".status.payloadDelivery.mode"
    ),
    printcolumn(
        name = "Error",
        type_ = "string",
        priority = "1",
        json_path = ".status.conditions[?(@.type==\"Error\")].message"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct LumigoSpec {
    /// Where the Lumigo token is: a key of a Secret in this namespace.
    pub lumigo_token: LumigoToken,
    #[serde(default)]
    pub tracing: Tracing,
    #[serde(default)]
    pub logging: Logging,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LumigoToken {
    pub secret_ref: SecretRef,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretRef {
    /// Name of the Secret, in the namespace of this resource.
    #[schemars(length(min = 1))]
    pub name: String,
    /// Key of the token in the Secret's data.
    #[schemars(length(min = 1))]
    pub key: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tracing {
    /// Send traces.
    #[serde(default = "enabled")]
    #[schemars(default = "enabled")]
    pub enabled: bool,
    #[serde(default)]
    pub injection: Injection,
}

impl Default for Tracing {
    fn default() -> Self {
        Tracing {
            enabled: true,
            injection: Injection::default(),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Injection {
    /// Inject workloads of this namespace at all (new ones at admission, existing ones by rollout).
    #[serde(default = "enabled")]
    #[schemars(default = "enabled")]
    pub enabled: bool,
    /// Inject the workloads that exist when this resource is created.
    #[serde(default = "enabled")]
    #[schemars(default = "enabled")]
    pub inject_lumigo_into_existing_resources_on_creation: bool,
    /// Remove the injection from every workload when this resource is deleted.
    #[serde(default = "enabled")]
    #[schemars(default = "enabled")]
    pub remove_lumigo_from_resources_on_deletion: bool,
    /// How existing workloads are restarted into the injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// How the injector and the tracers reach the pods: `auto` (an image volume where every node
    /// and the API server support one, else an init container), `imageVolume` or
    /// `initContainer`. Unset: the operator's setting (the chart's `injection.payloadDelivery`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_delivery: Option<DeliveryChoice>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    /// Deployments, StatefulSets and DaemonSets of this namespace restarting into the injection
    /// at one time; the next starts when one is rolled out by its controller's own status. 0
    /// restarts them all at once. Unset: the operator's setting (the chart's
    /// `rollout.maxInProgressPerNamespace`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_progress: Option<u32>,
}

impl Default for Injection {
    fn default() -> Self {
        Injection {
            enabled: true,
            inject_lumigo_into_existing_resources_on_creation: true,
            remove_lumigo_from_resources_on_deletion: true,
            rollout: None,
            payload_delivery: None,
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct Logging {
    /// Send logs.
    #[serde(default)]
    pub enabled: bool,
}

fn enabled() -> bool {
    true
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LumigoStatus {
    /// `Active`, `Error` and `Tracing`, each with a reason and a message a person can act on.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// The workloads of this namespace whose pod template carries the injection, each with
    /// whether its traces really arrive.
    #[serde(default)]
    pub instrumented_resources: Vec<InstrumentedResource>,
    #[serde(default)]
    pub instrumented_count: i64,
    /// Instrumented workloads whose spans reach the telemetry proxy.
    #[serde(default)]
    pub receiving_count: i64,
    /// `receiving/instrumented` (e.g. `5/6`), or `unknown` when the proxy cannot be read.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tracing: String,
    /// How the rollout of the injection into existing workloads stands.
    #[serde(default)]
    pub rollout: RolloutStatus,
    /// Workloads given back uninjected because the injection broke their pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rolled_back_resources: Vec<RolledBackResource>,
    /// How the payload reaches this namespace's pods, and why (admission injects the same way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_delivery: Option<DeliveryStatus>,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Workloads restarting into the injection now.
    #[serde(default)]
    pub in_progress: i64,
    /// Workloads waiting for their turn.
    #[serde(default)]
    pub pending: i64,
    /// Set when the rollout stopped because its first workloads failed in a way every
    /// workload would: nothing more is injected until the operator's settings or this
    /// resource's spec change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub halted: Option<RolloutHalt>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutHalt {
    /// Fingerprint of the injection settings that failed.
    pub settings: String,
    /// This resource's generation when it stopped.
    pub generation: i64,
    /// `Kind name` of the workload whose pods failed.
    pub workload: String,
    pub reason: String,
    /// What happened and what to fix.
    pub message: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolledBackResource {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    /// `CrashLoopBackOff`, `ImagePullBackOff`, `ProgressDeadlineExceeded`, ...
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// When it was rolled back.
    pub rolled_back_at: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstrumentedResource {
    pub api_version: String,
    pub kind: String,
    pub name: String,
    pub namespace: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// Whether this workload's spans reach the telemetry proxy (absent until the operator knows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<WorkloadTracing>,
}

impl Lumigo {
    /// The payload delivery last decided for this resource, as its status holds it.
    pub fn decided_delivery(&self) -> Option<&DeliveryStatus> {
        self.status.as_ref()?.payload_delivery.as_ref()
    }
}

impl InstrumentedResource {
    pub fn workload_kind(&self) -> Option<lumigo_mutation::WorkloadKind> {
        lumigo_mutation::WorkloadKind::from_api_version_kind(&self.api_version, &self.kind)
    }
}

/// What the telemetry proxy saw of one workload since it was (re-)injected.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadTracing {
    pub state: TracingState,
    /// The first span after the latest injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_span_seen: Option<Time>,
    /// The latest span, as of the last status write (exact whenever the state changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_span_seen: Option<Time>,
    /// The containers that sent spans, with the runtime their tracer reported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<TracedContainer>,
    /// Why a silent workload most likely sends nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(
    Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum TracingState {
    /// Spans arrived within the silence window.
    Receiving,
    /// No span within the silence window (or none yet since the injection).
    Silent,
    /// The telemetry proxy is disabled or cannot be read.
    Unknown,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub struct TracedContainer {
    pub name: String,
    /// `process.runtime.name` of the tracer: `nodejs`, `cpython`, `OpenJDK Runtime Environment`...
    pub runtime: String,
}

/// The CRD as YAML, the form `crdgen` prints and the chart ships.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    serde_norway::to_string(&Lumigo::crd()).expect("the CRD serializes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_minimal_spec_gets_the_documented_defaults() {
        let spec: LumigoSpec = serde_json::from_value(
            json!({"lumigoToken": {"secretRef": {"name": "s", "key": "token"}}}),
        )
        .unwrap();
        assert!(spec.tracing.enabled);
        assert!(spec.tracing.injection.enabled);
        assert!(
            spec.tracing
                .injection
                .inject_lumigo_into_existing_resources_on_creation
        );
        assert!(
            spec.tracing
                .injection
                .remove_lumigo_from_resources_on_deletion
        );
        assert!(!spec.logging.enabled);
    }

    /// The checked-in CRD is what the types generate: regenerate with `just operator::crdgen`.
    #[test]
    fn the_checked_in_crd_is_current() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../charts/lumigo-operator/crds/lumigo.yaml"
        );
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == crd_yaml(),
            "{path} is stale: run `just operator::crdgen`"
        );
    }

    #[test]
    fn the_schema_carries_defaults_and_printer_columns() {
        let crd = serde_json::to_value(<Lumigo as kube::CustomResourceExt>::crd()).unwrap();
        let version = &crd["spec"]["versions"][0];
        let spec = &version["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let injection = &spec["properties"]["tracing"]["properties"]["injection"]["properties"];
        assert_eq!(
            injection["removeLumigoFromResourcesOnDeletion"]["default"],
            true
        );
        assert_eq!(spec["required"], json!(["lumigoToken"]));
        let columns: Vec<_> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].clone())
            .collect();
        assert_eq!(
            columns,
            [
                "Active",
                "Instrumented",
                "Tracing",
                "Delivery",
                "Error",
                "Age"
            ]
        );
        assert_eq!(
            injection["payloadDelivery"]["enum"],
            json!(["auto", "imageVolume", "initContainer"])
        );
        assert_eq!(crd["spec"]["names"]["plural"], "lumigoes");
        assert!(version["subresources"]["status"].is_object());
    }
}
