//! Events for what admission did to an object, recorded off the response path: the apiserver is
//! not kept waiting, and an object being created gets its event once it exists and has a uid (so
//! that `kubectl describe` shows it).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use tokio::sync::{mpsc, Semaphore};

use super::review::{GroupVersionKind, GroupVersionResource};

/// Events waiting to be recorded; beyond this, new ones are dropped rather than buffered without bound.
const QUEUE: usize = 1024;
/// Events being recorded at once (each may wait for its object to appear).
const IN_FLIGHT: usize = 32;
/// How long an object being created may take to appear. One that never does was rejected after us.
const APPEAR_WITHIN: Duration = Duration::from_secs(15);

#[derive(Clone)]
pub(crate) struct AdmittedObject {
    pub kind: GroupVersionKind,
    pub resource: GroupVersionResource,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

pub(crate) struct AdmissionEvent {
    object: AdmittedObject,
    event: Event,
}

impl AdmissionEvent {
    pub fn changed(object: &AdmittedObject, reason: &'static str, operation: &str) -> Self {
        let action = crate::events::action_for(reason);
        AdmissionEvent {
            object: object.clone(),
            event: Event {
                type_: EventType::Normal,
                reason: reason.into(),
                note: Some(format!("pod template changed by the Lumigo admission webhook; trigger: {operation} of this {}", object.kind.kind)),
                action: action.into(),
                secondary: None,
            },
        }
    }

    pub fn cannot_add(object: &AdmittedObject, warnings: String, operation: &str) -> Self {
        let mut note = format!(
            "{warnings}; trigger: {operation} of this {}",
            object.kind.kind
        );
        // The Events API caps the note at 1 kB.
        if note.len() > 1000 {
            let mut end = 1000;
            while !note.is_char_boundary(end) {
                end -= 1;
            }
            note.truncate(end);
        }
        AdmissionEvent {
            object: object.clone(),
            event: Event {
                type_: EventType::Warning,
                reason: crate::events::CANNOT_ADD.into(),
                note: Some(note),
                action: crate::events::action_for(crate::events::CANNOT_ADD).into(),
                secondary: None,
            },
        }
    }
}

/// Hands events to the recording task without waiting.
#[derive(Clone)]
pub(crate) struct EventSink {
    queue: mpsc::Sender<AdmissionEvent>,
}

impl EventSink {
    pub fn send(&self, event: AdmissionEvent) {
        if event.object.name.is_empty() {
            // A generated name is not known at admission: there is nothing to refer to.
            return;
        }
        if let Err(error) = self.queue.try_send(event) {
            tracing::warn!(%error, "admission event dropped: the event queue is full");
        }
    }

    /// The sink and the task that records what it is sent, until every sink is dropped.
    pub fn start(
        client: Client,
        reporter: Reporter,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let (queue, mut received) = mpsc::channel::<AdmissionEvent>(QUEUE);
        let recorder = Recorder::new(client.clone(), reporter);
        let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
        let task = async move {
            while let Some(event) = received.recv().await {
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                let (client, recorder) = (client.clone(), recorder.clone());
                tokio::spawn(async move {
                    record(client, &recorder, event).await;
                    drop(permit);
                });
            }
        };
        (EventSink { queue }, task)
    }
}

async fn record(
    client: Client,
    recorder: &Recorder,
    AdmissionEvent { object, event }: AdmissionEvent,
) {
    let api_version = match object.kind.group.as_str() {
        "" => object.kind.version.clone(),
        group => format!("{group}/{}", object.kind.version),
    };
    let uid = match object.uid.clone() {
        Some(uid) => uid,
        None => match uid_once_created(client, &object, &api_version).await {
            Some(uid) => uid,
            None => {
                tracing::debug!(kind = %object.kind.kind, name = %object.name, "admitted object never appeared; no event");
                return;
            }
        },
    };
    let reference = ObjectReference {
        api_version: Some(api_version),
        kind: Some(object.kind.kind.clone()),
        namespace: Some(object.namespace.clone()),
        name: Some(object.name.clone()),
        uid: Some(uid),
        ..Default::default()
    };
    if let Err(error) = recorder.publish(&event, &reference).await {
        tracing::warn!(%error, reason = %event.reason, name = %object.name, "could not record an admission event");
    }
}

async fn uid_once_created(
    client: Client,
    object: &AdmittedObject,
    api_version: &str,
) -> Option<String> {
    let resource = ApiResource {
        group: object.kind.group.clone(),
        version: object.kind.version.clone(),
        api_version: api_version.to_owned(),
        kind: object.kind.kind.clone(),
        plural: object.resource.resource.clone(),
    };
    let api: Api<DynamicObject> = Api::namespaced_with(client, &object.namespace, &resource);
    let started = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    while started.elapsed() < APPEAR_WITHIN {
        tokio::time::sleep(pause).await;
        if let Ok(Some(found)) = api.get_metadata_opt(&object.name).await {
            return found.metadata.uid;
        }
        pause = (pause * 2).min(Duration::from_secs(2));
    }
    None
}
