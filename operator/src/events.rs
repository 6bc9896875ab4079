//! Kubernetes Events on workloads, each naming what changed and what triggered it.

use std::collections::HashSet;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::Client;
use lumigo_mutation::{Change, Reason};

use crate::crd::{InstrumentedResource, TracedContainer};

pub const CONTROLLER_NAME: &str = "lumigo-operator";
pub const CANNOT_ADD: &str = "LumigoCannotAddInstrumentation";
pub const CANNOT_REMOVE: &str = "LumigoCannotRemoveInstrumentation";
pub const TRACES_RECEIVED: &str = "LumigoTracesReceived";
pub const NO_TRACES: &str = "LumigoNoTraces";
pub const ROLLOUT_HALTED: &str = "LumigoRolloutHalted";
pub const REMOVAL_INCOMPLETE: &str = "LumigoRemovalIncomplete";
pub const ADMISSION_UNAVAILABLE: &str = "LumigoAdmissionUnavailable";

pub struct Events {
    recorder: Recorder,
    /// Warnings already recorded, by object uid and reason: a sweep that finds the same
    /// problem again must not write again.
    warned: Mutex<HashSet<(String, String)>>,
}

impl Events {
    pub fn new(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER_NAME.into(),
            instance,
        };
        Events {
            recorder: Recorder::new(client, reporter),
            warned: Mutex::default(),
        }
    }

    pub async fn changed(&self, workload: &InstrumentedResource, change: &Change, trigger: &str) {
        let type_ = match change {
            Change::RolledBack { .. } => EventType::Warning,
            _ => EventType::Normal,
        };
        let event = Event {
            type_,
            reason: change.event_reason().into(),
            note: Some(format!("{change}; trigger: {trigger}")),
            action: action_for(change.event_reason()).into(),
            secondary: None,
        };
        self.publish(&event, workload).await;
    }

    /// A workload that should have been changed and could not be, recorded once per operator run.
    pub async fn could_not(
        &self,
        workload: &InstrumentedResource,
        adding: bool,
        reason: &Reason,
        trigger: &str,
    ) {
        let event_reason = if adding { CANNOT_ADD } else { CANNOT_REMOVE };
        let first_time = self
            .warned
            .lock()
            .expect("the warned set is never poisoned: no code panics while holding it")
            .insert((workload.uid.clone(), format!("{event_reason}:{reason}")));
        if !first_time {
            return;
        }
        let event = Event {
            type_: EventType::Warning,
            reason: event_reason.into(),
            note: Some(format!("{reason}; trigger: {trigger}")),
            action: action_for(event_reason).into(),
            secondary: None,
        };
        self.publish(&event, workload).await;
    }

    /// The first spans of a workload since its (re-)injection reached the telemetry proxy.
    pub async fn traces_received(
        &self,
        workload: &InstrumentedResource,
        containers: &[TracedContainer],
    ) {
        let senders: Vec<String> = containers
            .iter()
            .map(|c| match (c.name.as_str(), c.runtime.as_str()) {
                ("", "") => "a container".to_owned(),
                (name, "") => format!("container {name}"),
                ("", runtime) => format!("a {runtime} container"),
                (name, runtime) => format!("container {name} ({runtime})"),
            })
            .collect();
        let event = Event {
            type_: EventType::Normal,
            reason: TRACES_RECEIVED.into(),
            note: Some(format!(
                "the telemetry proxy received the first spans since the injection, from {}",
                senders.join(", ")
            )),
            action: "VerifyTracing".into(),
            secondary: None,
        };
        self.publish(&event, workload).await;
    }

    /// A workload with Ready pods sent no span for the whole silence window.
    pub async fn no_traces(&self, workload: &InstrumentedResource, reason: &str) {
        let event = Event {
            type_: EventType::Warning,
            reason: NO_TRACES.into(),
            note: Some(format!(
                "instrumented, but no span reached the telemetry proxy within the silence window: {reason}"
            )),
            action: "VerifyTracing".into(),
            secondary: None,
        };
        self.publish(&event, workload).await;
    }

    /// A warning on the `Lumigo` resource itself: the rollout stopped, or its removal gave up.
    pub async fn on_resource(
        &self,
        resource: &InstrumentedResource,
        reason: &'static str,
        note: String,
    ) {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: action_for(reason).into(),
            secondary: None,
        };
        self.publish(&event, resource).await;
    }

    async fn publish(&self, event: &Event, workload: &InstrumentedResource) {
        let reference = ObjectReference {
            api_version: Some(workload.api_version.clone()),
            kind: Some(workload.kind.clone()),
            name: Some(workload.name.clone()),
            namespace: Some(workload.namespace.clone()),
            uid: Some(workload.uid.clone()).filter(|uid| !uid.is_empty()),
            ..Default::default()
        };
        // An event is a courtesy: failing to record one must not fail the change it describes.
        if let Err(error) = self.recorder.publish(event, &reference).await {
            tracing::warn!(%error, reason = %event.reason, workload = %workload.name, "could not record an event");
        }
    }
}

/// The event's action for one of the event reasons above, shared by the rollout and admission.
pub fn action_for(event_reason: &str) -> &'static str {
    match event_reason {
        "LumigoRemovedInstrumentation" | CANNOT_REMOVE | REMOVAL_INCOMPLETE => {
            "RemoveInstrumentation"
        }
        "LumigoUpdatedInstrumentation" => "UpdateInstrumentation",
        "LumigoRolledBackInstrumentation" => "RollBackInstrumentation",
        ROLLOUT_HALTED => "RollOut",
        ADMISSION_UNAVAILABLE => "Admit",
        _ => "Instrument",
    }
}
