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
    if object
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        return Outcome::Unchanged(Reason::Terminating);
    }
    if is_opted_out(object, kind) {
        return match remove(object, kind, operation) {
            Outcome::Unchanged(Reason::NotInjected) => Outcome::Unchanged(Reason::OptedOut),
            other => other,
        };
    }
    inject(object, kind, config, operation)
}

/// Injects the object with `config`; an object injected by another version or with other
/// settings is redone, one injected with these settings is left as it is.
pub fn inject(
    object: &mut Value,
    kind: WorkloadKind,
    config: &InjectionConfig,
    operation: Operation,
) -> Outcome {
    if let Some((kind, name)) = kind.managing_owner(object) {
        return Outcome::Unchanged(Reason::OwnedByController { kind, name });
    }
    if is_opted_out(object, kind) {
        return Outcome::Unchanged(Reason::OptedOut);
    }
    if let Some(marker) = rollback::still_rolled_back(object, kind, config) {
        return Outcome::Unchanged(Reason::RolledBack(marker.failure.to_string()));
    }
    let mut candidate = object.clone();
    // A marker of other settings or of another template no longer holds the workload back.
    rollback::clear_marker(&mut candidate);
    let previous = match template::template(object, kind).map(Record::read) {
        None | Some(Ok(None)) => None,
        Some(Ok(Some(record))) => Some(record),
        Some(Err(reason)) => return Outcome::Unchanged(reason),
    };
    if let Some(record) = &previous {
        if let Err(reason) = template::strip(&mut candidate, kind, record) {
            return Outcome::Unchanged(reason);
        }
    }
    if let Err(reason) = template::apply(&mut candidate, kind, config) {
        return Outcome::Unchanged(reason);
    }
    if candidate == *object {
        return Outcome::Unchanged(Reason::AlreadyInjected);
    }
    if operation == Operation::Update && kind.template_immutable_after_create() {
        return Outcome::Unchanged(Reason::TemplateImmutable {
            kind: kind.name().to_owned(),
        });
    }
    let change = match previous {
        None => Change::Injected,
        Some(_) => Change::Reinjected {
            previous_label: injected_label(object, kind).unwrap_or_default(),
        },
    };
    *object = candidate;
    Outcome::Changed(change)
}

/// Takes the injection (and a rollback marker) out of the object, giving back exactly what it
/// was before.
pub fn remove(object: &mut Value, kind: WorkloadKind, operation: Operation) -> Outcome {
    if let Some((kind, name)) = kind.managing_owner(object) {
        return Outcome::Unchanged(Reason::OwnedByController { kind, name });
    }
    let mut candidate = object.clone();
    let had_marker = rollback::clear_marker(&mut candidate);
    let record = match template::template(object, kind).map(Record::read) {
        None | Some(Ok(None)) if had_marker => {
            *object = candidate;
            return Outcome::Changed(Change::Removed);
        }
        None | Some(Ok(None)) => return Outcome::Unchanged(Reason::NotInjected),
        Some(Err(reason)) => return Outcome::Unchanged(reason),
        Some(Ok(Some(record))) => record,
    };
    if operation == Operation::Update && kind.template_immutable_after_create() {
        return Outcome::Unchanged(Reason::TemplateImmutable {
            kind: kind.name().to_owned(),
        });
    }
    if let Err(reason) = template::strip(&mut candidate, kind, &record) {
        return Outcome::Unchanged(reason);
    }
    *object = candidate;
    Outcome::Changed(Change::Removed)
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
    matches!(
        template::template(object, kind).map(Record::read),
        Some(Ok(Some(_)))
    )
}

/// `lumigo.auto-trace: "false"` on the object or on its pod template.
fn is_opted_out(object: &Value, kind: WorkloadKind) -> bool {
    let opted_out = |metadata_owner: Option<&Value>| {
        metadata_owner
            .and_then(|owner| owner.pointer("/metadata/labels"))
            .and_then(|labels| labels.get(AUTO_TRACE_LABEL))
            .and_then(Value::as_str)
            == Some(OPT_OUT_VALUE)
    };
    opted_out(Some(object)) || opted_out(template::template(object, kind))
}

fn injected_label(object: &Value, kind: WorkloadKind) -> Option<String> {
    template::template(object, kind)?
        .pointer("/metadata/labels")?
        .get(AUTO_TRACE_LABEL)?
        .as_str()
        .map(str::to_owned)
}
