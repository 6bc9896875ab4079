//! The names the injection owns. Every item it adds carries one of them, so that removal
//! finds exactly what was added and nothing else.

/// Name of the volume, of the init container and of every app container's mount.
pub const INJECTOR_NAME: &str = "lumigo-injector";
/// Where the init container sees the volume (`TARGET_DIRECTORY`).
pub const INIT_TARGET_DIRECTORY: &str = "/target";
/// Where app containers see the volume.
pub const PAYLOAD_MOUNT_PATH: &str = "/opt/lumigo";
/// Where the payload is inside the autotrace image, relative to its root: the `subPath` of an
/// image volume's mount.
pub const PAYLOAD_IMAGE_DIRECTORY: &str = "opt/lumigo";
/// The preloaded object, inside the payload mount.
pub const INJECTOR_LIBRARY_PATH: &str = "/opt/lumigo/injector/lumigo_injector.so";
/// Size limit of the init container's payload volume: the payload takes about 55 MB of disk for
/// all runtimes (its budget is 60 MB); `operator/tests/chart.rs` checks the margin against the
/// real payload.
pub const VOLUME_SIZE_LIMIT: &str = "80M";

/// Label on the workload and its pod template: `lumigo-operator.v<version>` when injected,
/// `"false"` to opt out.
pub const AUTO_TRACE_LABEL: &str = "lumigo.auto-trace";
pub const OPT_OUT_VALUE: &str = "false";
pub const INJECTED_VALUE_PREFIX: &str = "lumigo-operator.v";

/// Annotation on the pod template holding what the injection added or changed, so removal
/// can restore the object byte for byte.
pub const RECORD_ANNOTATION: &str = "operator.lumigo.io/injection-record";

/// Annotation on a workload the operator gave back uninjected because the injection broke its
/// pods: it keeps the workload uninjected until the settings or its pod template change.
pub const ROLLED_BACK_ANNOTATION: &str = "operator.lumigo.io/rolled-back";

pub const LD_PRELOAD: &str = "LD_PRELOAD";
pub const ENV_TOKEN: &str = "LUMIGO_TRACER_TOKEN";
pub const ENV_TRACES_ENDPOINT: &str = "LUMIGO_ENDPOINT";
pub const ENV_LOGS_ENDPOINT: &str = "LUMIGO_LOGS_ENDPOINT";
pub const ENV_ENABLE_TRACES: &str = "LUMIGO_ENABLE_TRACES";
pub const ENV_ENABLE_LOGS: &str = "LUMIGO_ENABLE_LOGS";
pub const ENV_CONTAINER_NAME: &str = "LUMIGO_CONTAINER_NAME";

/// The label value that marks an object injected by `operator_version`.
pub fn injected_label_value(operator_version: &str) -> String {
    format!("{INJECTED_VALUE_PREFIX}{operator_version}")
}
