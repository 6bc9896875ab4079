//! Events for what admission did to an object, recorded off the response path: the apiserver is
//! not kept waiting, and an object being created gets its event once it exists and has a uid (so
//! that `kubectl describe` shows it).
//!
//! Under load one object can be admitted thousands of times a minute (a controller retrying, a
//! load test). Repeats are folded, the way Kubernetes event series are: what the webhook sees is
//! counted per object and reason, and recorded once per [`FLUSH_INTERVAL`] as one Event whose
//! `series.count` says how often it happened. What does not fit is dropped, counted in a metric,
//! and logged at most once per [`DROP_LOG_INTERVAL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::Reporter;
use kube::Client;
use lumigo_mutation::WorkloadKind;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::events::{EventPublisher, EventReason, SeriesKey};
use crate::metrics::Metrics;
use crate::workloads::WorkloadApi;

/// Distinct (object, reason) pairs waiting for the next flush; beyond this, new ones are dropped.
const MAX_PENDING: usize = 1024;
/// How often pending events are recorded: every repeat within it costs no API call.
pub(crate) const FLUSH_INTERVAL: Duration = Duration::from_secs(2);
/// Events being recorded at once (each may wait for its object to appear).
const IN_FLIGHT: usize = 32;
/// How long an object being created may take to appear. One that never does was rejected after us.
const APPEAR_WITHIN: Duration = Duration::from_secs(15);
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub(crate) struct AdmittedObject {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

pub(crate) struct AdmissionEvent {
    object: AdmittedObject,
    reason: EventReason,
    note: String,
}

impl AdmissionEvent {
    pub fn changed(object: &AdmittedObject, reason: EventReason, operation: &str) -> Self {
        AdmissionEvent {
            object: object.clone(),
            reason,
            note: format!(
                "pod template changed by the Lumigo admission webhook; trigger: {operation} of \
                 this {}",
                object.kind.name()
            ),
        }
    }

    pub fn cannot_add(object: &AdmittedObject, warnings: String, operation: &str) -> Self {
        AdmissionEvent {
            object: object.clone(),
            reason: EventReason::CannotAddInstrumentation,
            note: format!(
                "{warnings}; trigger: {operation} of this {}",
                object.kind.name()
            ),
        }
    }

    fn key(&self) -> SeriesKey {
        SeriesKey {
            kind: self.object.kind.name().to_owned(),
            namespace: self.object.namespace.clone(),
            name: self.object.name.clone(),
            reason: self.reason,
        }
    }
}

/// The events of one flush: the first of each series and how often it happened.
#[derive(Default)]
struct Pending {
    series: HashMap<SeriesKey, (AdmissionEvent, u32)>,
    dropped: u64,
}

impl Pending {
    /// Counts `event`; false when it had to be dropped.
    fn add(&mut self, event: AdmissionEvent) -> bool {
        let key = event.key();
        if let Some((_, count)) = self.series.get_mut(&key) {
            *count = count.saturating_add(1);
            return true;
        }
        if self.series.len() >= MAX_PENDING {
            self.dropped += 1;
            return false;
        }
        self.series.insert(key, (event, 1));
        true
    }
}

/// Hands events to the recording task without waiting.
#[derive(Clone)]
pub(crate) struct EventSink {
    pending: Arc<Mutex<Pending>>,
    metrics: Arc<Metrics>,
}

impl EventSink {
    pub fn send(&self, event: AdmissionEvent) {
        if event.object.name.is_empty() {
            // A generated name is not known at admission: there is nothing to refer to.
            return;
        }
        let added = self
            .pending
            .lock()
            .expect("the pending events are never poisoned: nothing panics holding them")
            .add(event);
        if !added {
            self.metrics.admission_event_dropped();
        }
    }

    /// The sink and the task that records what it is sent, until every sink is dropped.
    pub fn start(
        client: Client,
        reporter: Reporter,
        metrics: Arc<Metrics>,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let pending = Arc::new(Mutex::new(Pending::default()));
        let sink = EventSink {
            pending: pending.clone(),
            metrics,
        };
        let publisher = Arc::new(EventPublisher::new(client.clone(), reporter));
        let task = async move {
            let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
            let mut ticks = tokio::time::interval(FLUSH_INTERVAL);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut dropped_since_log = 0;
            let mut last_log: Option<Instant> = None;
            // Ends with the last sink: the webhook is gone and nothing more can arrive.
            while Arc::strong_count(&pending) > 1 {
                ticks.tick().await;
                let flushed =
                    std::mem::take(&mut *pending.lock().expect(
                        "the pending events are never poisoned: nothing panics holding them",
                    ));
                dropped_since_log += flushed.dropped;
                if dropped_since_log > 0
                    && last_log.is_none_or(|at| at.elapsed() >= DROP_LOG_INTERVAL)
                {
                    tracing::warn!(
                        dropped = dropped_since_log,
                        "admission events dropped: more distinct objects than the event queue holds"
                    );
                    dropped_since_log = 0;
                    last_log = Some(Instant::now());
                }
                for (key, (event, count)) in flushed.series {
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        return;
                    };
                    let publisher = publisher.clone();
                    let client = client.clone();
                    tokio::spawn(async move {
                        let regarding = reference(client, &event.object);
                        let published = publisher.publish(key, &event.note, count, regarding);
                        if let Err(error) = published.await {
                            tracing::warn!(
                                %error,
                                reason = event.reason.as_str(),
                                name = %event.object.name,
                                "could not record an admission event"
                            );
                        }
                        drop(permit);
                    });
                }
            }
        };
        (sink, task)
    }
}

/// A reference to the object the event is about, once it exists: its uid is read from the
/// API, so that a review forged by whoever can reach the webhook cannot attach events to
/// objects that do not exist, and one claiming a uid must claim the stored object's.
async fn reference(client: Client, object: &AdmittedObject) -> Option<ObjectReference> {
    let uid = stored_uid(client, object).await?;
    if object.uid.as_ref().is_some_and(|claimed| *claimed != uid) {
        return None;
    }
    Some(ObjectReference {
        api_version: Some(object.kind.api_version().into()),
        kind: Some(object.kind.name().into()),
        namespace: Some(object.namespace.clone()),
        name: Some(object.name.clone()),
        uid: Some(uid),
        ..Default::default()
    })
}

/// The uid of the stored object, waiting up to [`APPEAR_WITHIN`] for one being created.
async fn stored_uid(client: Client, object: &AdmittedObject) -> Option<String> {
    let workloads = WorkloadApi::new(client);
    let started = Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        if let Ok(Some(uid)) = workloads
            .uid(object.kind, &object.namespace, &object.name)
            .await
        {
            return Some(uid);
        }
        if started.elapsed() >= APPEAR_WITHIN {
            return None;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(name: &str) -> AdmittedObject {
        AdmittedObject {
            kind: WorkloadKind::Deployment,
            namespace: "shop".into(),
            name: name.into(),
            uid: None,
        }
    }

    #[test]
    fn repeats_of_one_object_and_reason_are_one_series_with_a_count() {
        let mut pending = Pending::default();
        for _ in 0..5 {
            assert!(pending.add(AdmissionEvent::changed(
                &admitted("cart"),
                EventReason::AddedInstrumentation,
                "CREATE"
            )));
        }
        assert!(pending.add(AdmissionEvent::cannot_add(
            &admitted("cart"),
            "no".into(),
            "CREATE"
        )));
        assert!(pending.add(AdmissionEvent::changed(
            &admitted("checkout"),
            EventReason::AddedInstrumentation,
            "UPDATE"
        )));
        let mut counts: Vec<(String, EventReason, u32)> = pending
            .series
            .values()
            .map(|(event, count)| (event.object.name.clone(), event.reason, *count))
            .collect();
        counts.sort();
        assert_eq!(
            counts,
            [
                ("cart".into(), EventReason::AddedInstrumentation, 5),
                ("cart".into(), EventReason::CannotAddInstrumentation, 1),
                ("checkout".into(), EventReason::AddedInstrumentation, 1),
            ]
        );
    }

    #[test]
    fn past_the_bound_new_series_are_dropped_and_counted_but_repeats_still_count() {
        let mut pending = Pending::default();
        for index in 0..MAX_PENDING {
            assert!(pending.add(AdmissionEvent::changed(
                &admitted(&format!("app-{index}")),
                EventReason::AddedInstrumentation,
                "CREATE"
            )));
        }
        assert!(!pending.add(AdmissionEvent::changed(
            &admitted("one-too-many"),
            EventReason::AddedInstrumentation,
            "CREATE"
        )));
        assert!(pending.add(AdmissionEvent::changed(
            &admitted("app-0"),
            EventReason::AddedInstrumentation,
            "CREATE"
        )));
        assert_eq!(pending.series.len(), MAX_PENDING);
        assert_eq!(pending.dropped, 1);
        assert_eq!(
            pending.series.values().map(|(_, count)| count).sum::<u32>() as usize,
            MAX_PENDING + 1
        );
    }
}
