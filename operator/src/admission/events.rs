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
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use lumigo_mutation::WorkloadKind;
use tokio::sync::Semaphore;
use tokio::time::Instant;

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
/// A series is continued (its count raised) while it was last seen within this; then a new Event
/// starts, as the Kubernetes event recorder does.
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);
const DROP_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Series remembered for continuing; past this a new one gets an Event of its own each flush, so a
/// flood of distinct objects cannot grow the table without bound.
const MAX_SERIES: usize = 4096;

#[derive(Clone)]
pub(crate) struct AdmittedObject {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
    pub uid: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Severity {
    Normal,
    Warning,
}

pub(crate) struct AdmissionEvent {
    object: AdmittedObject,
    severity: Severity,
    reason: &'static str,
    note: String,
}

impl AdmissionEvent {
    pub fn changed(object: &AdmittedObject, reason: &'static str, operation: &str) -> Self {
        AdmissionEvent {
            object: object.clone(),
            severity: Severity::Normal,
            reason,
            note: format!(
                "pod template changed by the Lumigo admission webhook; trigger: {operation} of this {}",
                object.kind.name()
            ),
        }
    }

    pub fn cannot_add(object: &AdmittedObject, warnings: String, operation: &str) -> Self {
        let mut note = format!(
            "{warnings}; trigger: {operation} of this {}",
            object.kind.name()
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
            severity: Severity::Warning,
            reason: crate::events::CANNOT_ADD,
            note,
        }
    }

    fn key(&self) -> SeriesKey {
        SeriesKey {
            namespace: self.object.namespace.clone(),
            kind: self.object.kind,
            name: self.object.name.clone(),
            reason: self.reason,
        }
    }
}

/// What makes two admission events one series.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct SeriesKey {
    namespace: String,
    kind: WorkloadKind,
    name: String,
    reason: &'static str,
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
        let recorder = Arc::new(SeriesRecorder {
            client,
            reporter,
            published: Mutex::default(),
        });
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
                recorder.forget_ended_series();
                for (event, count) in flushed.series.into_values() {
                    let Ok(permit) = in_flight.clone().acquire_owned().await else {
                        return;
                    };
                    let recorder = recorder.clone();
                    tokio::spawn(async move {
                        recorder.record(event, count).await;
                        drop(permit);
                    });
                }
            }
        };
        (sink, task)
    }
}

/// Creates an Event for the first occurrence of a series and raises its `series.count` after.
struct SeriesRecorder {
    client: Client,
    reporter: Reporter,
    published: Mutex<HashMap<SeriesKey, Series>>,
}

enum Series {
    /// Its Event is being created (its object may not exist yet): what happens meanwhile is
    /// added once it is.
    Creating { meanwhile: u32 },
    Created {
        name: String,
        count: u32,
        last_seen: Timestamp,
    },
}

impl SeriesRecorder {
    fn series(&self) -> std::sync::MutexGuard<'_, HashMap<SeriesKey, Series>> {
        self.published
            .lock()
            .expect("the published series are never poisoned: nothing panics holding them")
    }

    fn forget_ended_series(&self) {
        let now = Timestamp::now();
        self.series().retain(|_, series| match series {
            Series::Creating { .. } => true,
            Series::Created { last_seen, .. } => last_seen
                .saturating_add(SERIES_TTL)
                .is_ok_and(|end| end > now),
        });
    }

    async fn record(&self, event: AdmissionEvent, count: u32) {
        let key = event.key();
        let now = Timestamp::now();
        let continued = match self.series().get_mut(&key) {
            Some(Series::Creating { meanwhile }) => {
                *meanwhile = meanwhile.saturating_add(count);
                return;
            }
            Some(Series::Created {
                name,
                count: so_far,
                last_seen,
            }) => {
                *so_far = so_far.saturating_add(count);
                *last_seen = now;
                Some((name.clone(), *so_far))
            }
            None => None,
        };
        let result = match continued {
            Some((name, total)) => self.raise(&event, &name, total, now).await,
            None => self.create(&key, &event, count, now).await,
        };
        if let Err(error) = result {
            tracing::warn!(%error, reason = event.reason, name = %event.object.name, "could not record an admission event");
        }
    }

    async fn create(
        &self,
        key: &SeriesKey,
        event: &AdmissionEvent,
        count: u32,
        now: Timestamp,
    ) -> kube::Result<()> {
        self.series()
            .insert(key.clone(), Series::Creating { meanwhile: 0 });
        let Some(reference) = self.reference(&event.object).await else {
            self.series().remove(key);
            tracing::debug!(kind = %event.object.kind, name = %event.object.name, "admitted object never appeared, or is not the one the request named; no event");
            return Ok(());
        };
        let created = self.new_event(event, reference, count, now);
        let name = created.metadata.name.clone().unwrap_or_default();
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &event.object.namespace);
        if let Err(error) = events.create(&PostParams::default(), &created).await {
            self.series().remove(key);
            return Err(error);
        }
        let meanwhile = match self.series().remove(key) {
            Some(Series::Creating { meanwhile }) => meanwhile,
            _ => 0,
        };
        let total = count.saturating_add(meanwhile);
        {
            let mut series = self.series();
            if series.len() < MAX_SERIES {
                series.insert(
                    key.clone(),
                    Series::Created {
                        name: name.clone(),
                        count: total,
                        last_seen: now,
                    },
                );
            }
        }
        if meanwhile > 0 {
            self.raise(event, &name, total, Timestamp::now()).await?;
        }
        Ok(())
    }

    async fn raise(
        &self,
        event: &AdmissionEvent,
        name: &str,
        total: u32,
        now: Timestamp,
    ) -> kube::Result<()> {
        let series = EventSeries {
            count: i32::try_from(total).unwrap_or(i32::MAX),
            last_observed_time: MicroTime(now),
        };
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &event.object.namespace);
        events
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(&serde_json::json!({"series": series})),
            )
            .await
            .map(drop)
    }

    fn new_event(
        &self,
        event: &AdmissionEvent,
        reference: ObjectReference,
        count: u32,
        now: Timestamp,
    ) -> K8sEvent {
        let controller = self.reporter.controller.clone();
        K8sEvent {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", event.object.name, now.as_nanosecond())),
                namespace: Some(event.object.namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(format!("{:?}", event.severity)),
            reason: Some(event.reason.into()),
            action: Some(crate::events::action_for(event.reason).into()),
            note: Some(event.note.clone()),
            regarding: Some(reference),
            reporting_instance: Some(
                self.reporter
                    .instance
                    .clone()
                    .unwrap_or_else(|| controller.clone()),
            ),
            reporting_controller: Some(controller),
            // The API accepts a series only from its second occurrence on.
            series: (count > 1).then(|| EventSeries {
                count: i32::try_from(count).unwrap_or(i32::MAX),
                last_observed_time: MicroTime(now),
            }),
            ..Default::default()
        }
    }

    /// A reference to the object the event is about, once it exists: its uid is read from the
    /// API, so that a review forged by whoever can reach the webhook cannot attach events to
    /// objects that do not exist, and one claiming a uid must claim the stored object's.
    async fn reference(&self, object: &AdmittedObject) -> Option<ObjectReference> {
        let uid = stored_uid(self.client.clone(), object).await?;
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
                "LumigoAddedInstrumentation",
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
            "LumigoAddedInstrumentation",
            "UPDATE"
        )));
        let mut counts: Vec<(String, &str, u32)> = pending
            .series
            .values()
            .map(|(event, count)| (event.object.name.clone(), event.reason, *count))
            .collect();
        counts.sort();
        assert_eq!(
            counts,
            [
                ("cart".into(), "LumigoAddedInstrumentation", 5),
                ("cart".into(), crate::events::CANNOT_ADD, 1),
                ("checkout".into(), "LumigoAddedInstrumentation", 1),
            ]
        );
    }

    #[test]
    fn past_the_bound_new_series_are_dropped_and_counted_but_repeats_still_count() {
        let mut pending = Pending::default();
        for index in 0..MAX_PENDING {
            assert!(pending.add(AdmissionEvent::changed(
                &admitted(&format!("app-{index}")),
                "LumigoAddedInstrumentation",
                "CREATE"
            )));
        }
        assert!(!pending.add(AdmissionEvent::changed(
            &admitted("one-too-many"),
            "LumigoAddedInstrumentation",
            "CREATE"
        )));
        assert!(pending.add(AdmissionEvent::changed(
            &admitted("app-0"),
            "LumigoAddedInstrumentation",
            "CREATE"
        )));
        assert_eq!(pending.series.len(), MAX_PENDING);
        assert_eq!(pending.dropped, 1);
        assert_eq!(
            pending.series.values().map(|(_, count)| count).sum::<u32>() as usize,
            MAX_PENDING + 1
        );
    }

    #[test]
    fn a_long_note_is_cut_at_the_api_limit_on_a_character_boundary() {
        let event = AdmissionEvent::cannot_add(&admitted("cart"), "é".repeat(600), "CREATE");
        assert!(event.note.len() <= 1000);
        assert!(event.note.starts_with('é'));
    }
}
