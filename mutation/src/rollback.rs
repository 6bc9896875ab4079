//! Giving a workload back uninjected when the injection broke its pods, and keeping it so.
//!
//! The rollback is an ordinary removal (byte for byte) plus one annotation on the workload. The
//! annotation names the settings that failed and a digest of the pod template as it was given
//! back, so the workload stays uninjected until one of them changes: new settings (another
//! operator version, image or Lumigo spec), a new template (the user's own change or a
//! `kubectl rollout restart`), or the user deleting the annotation. Removal takes it away with
//! the rest of the injection.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::json::{self, remove_in_order};
use crate::names::ROLLED_BACK_ANNOTATION;
use crate::outcome::{Change, Outcome, Reason};
use crate::workload::{Operation, WorkloadKind};
use crate::{remove, InjectionConfig};

/// Why the injected pods failed, as the operator saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// `CrashLoopBackOff`, `ImagePullBackOff`, `ProgressDeadlineExceeded`, ...
    pub reason: String,
    /// The container that failed, when one did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub container: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// What Kubernetes said about it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)?;
        if !self.container.is_empty() {
            write!(f, " of container {}", self.container)?;
        }
        if let Some(code) = self.exit_code {
            write!(f, " (exit code {code})")?;
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

/// The annotation's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackMarker {
    /// [`InjectionConfig::fingerprint`] of the injection that failed.
    pub settings: String,
    /// Digest of the pod template as it was given back.
    pub template: String,
    #[serde(flatten)]
    pub failure: Failure,
    /// When it was rolled back (RFC 3339).
    pub at: String,
}

impl InjectionConfig {
    /// Short digest of every setting: equal fingerprints inject identically.
    pub fn fingerprint(&self) -> String {
        digest(&serde_json::to_vec(self).expect("the settings serialize"))
    }
}

fn digest(bytes: &[u8]) -> String {
    Sha256::digest(bytes)[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

fn template_digest(object: &Value, kind: WorkloadKind) -> String {
    let template = kind.template(object).unwrap_or(&Value::Null);
    digest(&serde_json::to_vec(template).expect("JSON serializes"))
}

/// Removes the injection from an injected workload and marks it rolled back by `config`'s
/// settings; `at` is the time to record.
pub fn roll_back(
    object: &mut Value,
    kind: WorkloadKind,
    config: &InjectionConfig,
    failure: &Failure,
    at: &str,
) -> Outcome {
    let mut candidate = object.clone();
    match remove(&mut candidate, kind, Operation::Update) {
        Outcome::Changed(_) => {}
        unchanged => return unchanged,
    }
    let marker = RollbackMarker {
        settings: config.fingerprint(),
        template: template_digest(&candidate, kind),
        failure: failure.clone(),
        at: at.to_owned(),
    };
    let Some(root) = candidate.as_object_mut() else {
        return Outcome::Unchanged(Reason::Malformed("the object is not a JSON object".into()));
    };
    let annotations = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
        .map(|metadata| {
            metadata
                .entry("annotations")
                .or_insert_with(|| Value::Object(Map::new()))
        })
        .and_then(Value::as_object_mut);
    let Some(annotations) = annotations else {
        return Outcome::Unchanged(Reason::Malformed(
            "metadata.annotations is not an object".into(),
        ));
    };
    annotations.insert(
        ROLLED_BACK_ANNOTATION.to_owned(),
        Value::String(serde_json::to_string(&marker).expect("the marker serializes")),
    );
    *object = candidate;
    Outcome::Changed(Change::RolledBack {
        failure: failure.to_string(),
    })
}

/// The rollback marker of a workload, if it carries a readable one.
pub fn rollback_marker(object: &Value) -> Option<RollbackMarker> {
    let value = json::at(object, &["metadata", "annotations", ROLLED_BACK_ANNOTATION])?.as_str()?;
    serde_json::from_str(value).ok()
}

/// Whether the workload was rolled back by exactly these settings and has not changed since.
pub(crate) fn still_rolled_back(
    object: &Value,
    kind: WorkloadKind,
    config: &InjectionConfig,
) -> Option<RollbackMarker> {
    rollback_marker(object).filter(|marker| {
        marker.settings == config.fingerprint() && marker.template == template_digest(object, kind)
    })
}

/// Takes the marker off; an annotation map left empty goes too (the API server never stores an
/// empty one, so the object is as it was before the marker).
pub(crate) fn clear_marker(object: &mut Value) -> bool {
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return false;
    };
    let Some(annotations) = metadata
        .get_mut("annotations")
        .and_then(Value::as_object_mut)
    else {
        return false;
    };
    if !remove_in_order(annotations, ROLLED_BACK_ANNOTATION) {
        return false;
    }
    if annotations.is_empty() {
        remove_in_order(metadata, "annotations");
    }
    true
}
