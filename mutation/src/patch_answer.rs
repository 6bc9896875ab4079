//! The policy module's answer as a JSON Patch, for the operator's built-in webhook.
//!
//! Kubewarden's `validate` answers with the whole mutated object, and an AdmissionReview wants a
//! patch: the host would parse the request's object and the mutated one and diff them, about a
//! quarter of the operator's CPU per review. The module holds both objects already, so its
//! `validate_as_patch` function (same request as `validate`) answers with the patch and what it
//! does to the injection. policy-server and kwctl call `validate`; only the operator calls this.

use serde::{Deserialize, Serialize};

use crate::Change;

/// What a patch does to the injection: the mutation's [`Change`], as the webhook's events group it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InjectionChange {
    Added,
    Updated,
    Removed,
}

impl From<&Change> for InjectionChange {
    /// The same grouping as the operator's own events of a change (`EventReason::of_change`).
    fn from(change: &Change) -> Self {
        match change {
            Change::Injected => InjectionChange::Added,
            Change::Reinjected { .. } => InjectionChange::Updated,
            Change::Removed | Change::RolledBack { .. } => InjectionChange::Removed,
        }
    }
}

/// `validate_as_patch`'s answer. `P` is the patch's type on each side: the module writes
/// operations, the host passes their bytes on as they are.
#[derive(Debug, Serialize, Deserialize)]
pub struct PatchAnswer<P> {
    /// Always true: the policy only mutates.
    pub accepted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// RFC 6902 operations from the request's object to the mutated one; absent when unchanged.
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub patch: Option<P>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<InjectionChange>,
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    #[test]
    fn an_answer_without_a_patch_reads_back_with_none() {
        let answer: PatchAnswer<Value> = serde_json::from_str(r#"{"accepted": true}"#).unwrap();
        assert!(answer.accepted && answer.patch.is_none() && answer.change.is_none());
        assert!(answer.warnings.is_empty());
        let written = PatchAnswer::<Value> {
            accepted: true,
            message: None,
            warnings: vec!["w".into()],
            patch: Some(serde_json::json!([])),
            change: Some(InjectionChange::Removed),
        };
        assert_eq!(
            serde_json::to_string(&written).unwrap(),
            r#"{"accepted":true,"warnings":["w"],"patch":[],"change":"removed"}"#
        );
    }
}
