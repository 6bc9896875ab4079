//! The pod-template mutation of the Lumigo operator, applied by the Kubewarden policy (as wasm),
//! by the operator's rollout and by its uninstall: one implementation, so one behaviour.
//!
//! It edits the raw JSON of an object in place and never round-trips it through typed structs,
//! so fields it does not own, even ones newer than any Kubernetes client library, stay as they
//! were. Every item it adds is named so it can be found, and a record annotation on the pod
//! template remembers what it created or changed, so that `remove(inject(x)) == x` byte for byte.

pub mod config;
pub mod env;
mod json;
pub mod names;
pub mod outcome;
pub mod patch_answer;
mod record;
mod rollback;
mod template;
pub mod workload;

use serde_json::Value;

pub use config::{ConfigError, InjectionConfig, PayloadDelivery, SecretKeyRef};
pub use outcome::{Change, Outcome, Reason};
pub use patch_answer::{InjectionChange, PatchAnswer};
pub use rollback::{roll_back, rollback_marker, Failure, RollbackMarker};
pub use workload::{Operation, WorkloadKind};

use names::{AUTO_TRACE_LABEL, OPT_OUT_VALUE};
use record::Record;

/// Brings an object to what its labels ask for: injected, or clean when it opted out.
/// This is what admission and the operator's rollout apply.
pub fn reconcile(
    object: &mut Value,
    kind: WorkloadKind,
    config: &InjectionConfig,
    operation: Operation,
) -> Outcome {
    settle(object, reconciled(object, kind, config, operation))
}

/// What [`reconcile`] makes of `object`, which is left as it is: the new object and the change,
/// or why there is none. For a caller that needs both objects (admission's patch).
pub fn reconciled(
    object: &Value,
    kind: WorkloadKind,
    config: &InjectionConfig,
    operation: Operation,
) -> Result<(Change, Value), Reason> {
    if json::at(object, &["metadata", "deletionTimestamp"]).is_some_and(|t| !t.is_null()) {
        return Err(Reason::Terminating);
    }
    if is_opted_out(object, kind) {
        return match removed(object, kind, operation) {
            Err(Reason::NotInjected) => Err(Reason::OptedOut),
            other => other,
        };
    }
    injected(object, kind, config, operation)
}

/// Puts a new object in place of the old one, as the in-place functions answer.
fn settle(object: &mut Value, result: Result<(Change, Value), Reason>) -> Outcome {
    match result {
        Ok((change, new)) => {
            *object = new;
            Outcome::Changed(change)
        }
        Err(reason) => Outcome::Unchanged(reason),
    }
}

/// Injects the object with `config`; an object injected by another version or with other
/// settings is redone, one injected with these settings is left as it is.
pub fn inject(
    object: &mut Value,
    kind: WorkloadKind,
    config: &InjectionConfig,
    operation: Operation,
) -> Outcome {
    settle(object, injected(object, kind, config, operation))
}

/// What [`inject`] makes of `object`, which is left as it is.
fn injected(
    object: &Value,
    kind: WorkloadKind,
    config: &InjectionConfig,
    operation: Operation,
) -> Result<(Change, Value), Reason> {
    if let Some((kind, name)) = kind.managing_owner(object) {
        return Err(Reason::OwnedByController { kind, name });
    }
    if is_opted_out(object, kind) {
        return Err(Reason::OptedOut);
    }
    if let Some(marker) = rollback::still_rolled_back(object, kind, config) {
        return Err(Reason::RolledBack(marker.failure.to_string()));
    }
    let mut candidate = object.clone();
    // A marker of other settings or of another template no longer holds the workload back.
    rollback::clear_marker(&mut candidate);
    let previous = match kind.template(object).map(Record::read) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(record))) => Some(record),
        Some(Err(reason)) => return Err(reason),
    };
    if let Some(record) = &previous {
        template::strip(&mut candidate, kind, record)?;
    }
    template::apply(&mut candidate, kind, config)?;
    if candidate == *object {
        return Err(Reason::AlreadyInjected);
    }
    if operation == Operation::Update && kind.template_immutable_after_create() {
        return Err(Reason::TemplateImmutable {
            kind: kind.name().to_owned(),
        });
    }
    let change = match previous {
        None => Change::Injected,
        Some(_) => Change::Reinjected {
            previous_label: injected_label(object, kind).unwrap_or_default(),
        },
    };
    Ok((change, candidate))
}

/// Takes the injection (and a rollback marker) out of the object, giving back exactly what it
/// was before.
pub fn remove(object: &mut Value, kind: WorkloadKind, operation: Operation) -> Outcome {
    settle(object, removed(object, kind, operation))
}

/// What [`remove`] makes of `object`, which is left as it is.
fn removed(
    object: &Value,
    kind: WorkloadKind,
    operation: Operation,
) -> Result<(Change, Value), Reason> {
    if let Some((kind, name)) = kind.managing_owner(object) {
        return Err(Reason::OwnedByController { kind, name });
    }
    let mut candidate = object.clone();
    let had_marker = rollback::clear_marker(&mut candidate);
    let record = match kind.template(object).map(Record::read) {
        None | Some(Ok(None)) if had_marker => {
            return Ok((Change::Removed, candidate));
        }
        None | Some(Ok(None)) => return Err(Reason::NotInjected),
        Some(Err(reason)) => return Err(reason),
        Some(Ok(Some(record))) => record,
    };
    if operation == Operation::Update && kind.template_immutable_after_create() {
        return Err(Reason::TemplateImmutable {
            kind: kind.name().to_owned(),
        });
    }
    template::strip(&mut candidate, kind, &record)?;
    Ok((Change::Removed, candidate))
}

/// What an object's record and owners say about its injection, for the rollout's decisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inspection {
    /// Whether it carries the injection (its record annotation).
    pub injected: bool,
    /// The controller that is injected in this object's stead.
    pub managed_by: Option<(String, String)>,
}

pub fn inspect(object: &Value, kind: WorkloadKind) -> Inspection {
    Inspection {
        injected: is_injected(object, kind),
        managed_by: kind.managing_owner(object),
    }
}

/// Whether the object's pod template holds a valid injection record: `inspect(..).injected`
/// alone, for callers that need nothing else (admission asks it twice per review).
pub fn is_injected(object: &Value, kind: WorkloadKind) -> bool {
    matches!(kind.template(object).map(Record::read), Some(Ok(Some(_))))
}

/// `lumigo.auto-trace: "false"` on the object or on its pod template.
fn is_opted_out(object: &Value, kind: WorkloadKind) -> bool {
    auto_trace_label(object) == Some(OPT_OUT_VALUE)
        || kind.template(object).and_then(auto_trace_label) == Some(OPT_OUT_VALUE)
}

fn injected_label(object: &Value, kind: WorkloadKind) -> Option<String> {
    kind.template(object)
        .and_then(auto_trace_label)
        .map(str::to_owned)
}

/// The `lumigo.auto-trace` label of an object or a pod template.
fn auto_trace_label(metadata_owner: &Value) -> Option<&str> {
    json::at(metadata_owner, &["metadata", "labels", AUTO_TRACE_LABEL])?.as_str()
}
