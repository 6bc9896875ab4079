//! What a mutation did, or why it did nothing: callers turn it into admission warnings,
//! Kubernetes events and logs without knowing the rules themselves.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Changed(Change),
    Unchanged(Reason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The object was not injected and now is.
    Injected,
    /// The object was injected with another operator version or other settings and was redone.
    Reinjected { previous_label: String },
    /// The injection was removed because the object opted out or removal was asked for.
    Removed,
    /// The injection was removed because it broke the workload's pods.
    RolledBack { failure: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// Injected already, with this very configuration.
    AlreadyInjected,
    /// Nothing to remove.
    NotInjected,
    /// `lumigo.auto-trace: "false"` is set on the object or its pod template.
    OptedOut,
    /// A controller owns the object and its own template is what gets injected.
    OwnedByController { kind: String, name: String },
    /// The pod template cannot change after creation (a Job's, a Pod's spec).
    TemplateImmutable { kind: String },
    /// Being deleted: changing it would only delay its deletion.
    Terminating,
    /// The object is not shaped like its kind (e.g. `containers` is not a list).
    Malformed(String),
    /// Something the user owns uses one of the injection's names, or cannot be composed with it.
    Conflict(String),
    /// Rolled back after it broke the pods, and neither the settings nor the template changed.
    RolledBack(String),
}

impl Reason {
    /// Whether a person should hear about it: the object wanted injection and did not get it.
    pub fn is_problem(&self) -> bool {
        matches!(
            self,
            Reason::TemplateImmutable { .. } | Reason::Malformed(_) | Reason::Conflict(_)
        )
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Injected => f.write_str("Lumigo instrumentation added"),
            Change::Reinjected { previous_label } => {
                write!(f, "Lumigo instrumentation updated (was {previous_label})")
            }
            Change::Removed => f.write_str("Lumigo instrumentation removed"),
            Change::RolledBack { failure } => write!(
                f,
                "Lumigo instrumentation rolled back, the injected pods failed: {failure}; it stays \
                 off until the settings or the pod template change (or the annotation \
                 operator.lumigo.io/rolled-back is deleted)"
            ),
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::AlreadyInjected => {
                f.write_str("already instrumented with the current settings")
            }
            Reason::NotInjected => f.write_str("not instrumented"),
            Reason::OptedOut => f.write_str("opted out with the label lumigo.auto-trace=false"),
            Reason::OwnedByController { kind, name } => {
                write!(
                    f,
                    "owned by {kind} {name}, whose pod template is instrumented instead"
                )
            }
            Reason::TemplateImmutable { kind } => {
                write!(
                    f,
                    "the pod template of a {kind} is immutable after creation; recreate it to \
                     change its instrumentation"
                )
            }
            Reason::Terminating => f.write_str("being deleted"),
            Reason::Malformed(why) => write!(f, "cannot instrument a malformed object: {why}"),
            Reason::Conflict(why) => write!(f, "cannot instrument: {why}"),
            Reason::RolledBack(failure) => {
                write!(f, "rolled back after the injected pods failed: {failure}")
            }
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Changed(change) => change.fmt(f),
            Outcome::Unchanged(reason) => write!(f, "unchanged: {reason}"),
        }
    }
}
