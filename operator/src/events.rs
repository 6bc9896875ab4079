//! Kubernetes Events: the one vocabulary of reasons and actions the operator records (by the
//! rollout, the webhook and uninstall), and the one place that writes an Event.
//!
//! Repeats are folded the way Kubernetes event series are: the first occurrence of an object's
//! reason creates an Event, later ones within [`SERIES_TTL`] raise its `series.count`.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use kube::{Api, Client};
use lumigo_mutation::{Change, InjectionChange, Reason};

use crate::crd::{InstrumentedResource, TracedContainer};

pub const CONTROLLER_NAME: &str = "lumigo-operator";

/// A series is continued (its count raised) while it was last seen within this; then a new Event
/// starts, as the Kubernetes event recorder does.
const SERIES_TTL: Duration = Duration::from_secs(6 * 60);
/// Series remembered for continuing; past this a new one gets an Event of its own, so a flood of
/// distinct objects cannot grow the table without bound.
const MAX_SERIES: usize = 4096;
/// The Events API refuses a longer note.
const MAX_NOTE_BYTES: usize = 1000;

/// Why an Event was recorded: every reason the operator writes, on workloads and on its own
/// resources.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventReason {
    AddedInstrumentation,
    UpdatedInstrumentation,
    RemovedInstrumentation,
    RolledBackInstrumentation,
    CannotAddInstrumentation,
    CannotRemoveInstrumentation,
    TracesReceived,
    NoTraces,
    RolloutHalted,
    /// `payloadDelivery: imageVolume` was asked for where the cluster cannot mount one.
    ImageVolumeUnsupported,
    RemovalIncomplete,
    AdmissionUnavailable,
}

/// What the operator was doing when it recorded an Event (the Event's `action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventAction {
    Instrument,
    UpdateInstrumentation,
    RemoveInstrumentation,
    RollBackInstrumentation,
    VerifyTracing,
    RollOut,
    Admit,
}

impl EventReason {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventReason::AddedInstrumentation => "LumigoAddedInstrumentation",
            EventReason::UpdatedInstrumentation => "LumigoUpdatedInstrumentation",
            EventReason::RemovedInstrumentation => "LumigoRemovedInstrumentation",
            EventReason::RolledBackInstrumentation => "LumigoRolledBackInstrumentation",
            EventReason::CannotAddInstrumentation => "LumigoCannotAddInstrumentation",
            EventReason::CannotRemoveInstrumentation => "LumigoCannotRemoveInstrumentation",
            EventReason::TracesReceived => "LumigoTracesReceived",
            EventReason::NoTraces => "LumigoNoTraces",
            EventReason::RolloutHalted => "LumigoRolloutHalted",
            EventReason::ImageVolumeUnsupported => "LumigoImageVolumeUnsupported",
            EventReason::RemovalIncomplete => "LumigoRemovalIncomplete",
            EventReason::AdmissionUnavailable => "LumigoAdmissionUnavailable",
        }
    }

    /// The reason a change to a workload is recorded under, whoever made it.
    pub const fn of_change(change: &Change) -> Self {
        match change {
            Change::Injected => EventReason::AddedInstrumentation,
            Change::Reinjected { .. } => EventReason::UpdatedInstrumentation,
            Change::Removed => EventReason::RemovedInstrumentation,
            Change::RolledBack { .. } => EventReason::RolledBackInstrumentation,
        }
    }

    /// The reason of a change admission made, as the policy module reports it.
    pub const fn of_injection_change(change: InjectionChange) -> Self {
        match change {
            InjectionChange::Added => EventReason::AddedInstrumentation,
            InjectionChange::Updated => EventReason::UpdatedInstrumentation,
            InjectionChange::Removed => EventReason::RemovedInstrumentation,
        }
    }

    pub const fn action(self) -> EventAction {
        match self {
            EventReason::AddedInstrumentation | EventReason::CannotAddInstrumentation => {
                EventAction::Instrument
            }
            EventReason::UpdatedInstrumentation => EventAction::UpdateInstrumentation,
            EventReason::RemovedInstrumentation
            | EventReason::CannotRemoveInstrumentation
            | EventReason::RemovalIncomplete => EventAction::RemoveInstrumentation,
            EventReason::RolledBackInstrumentation => EventAction::RollBackInstrumentation,
            EventReason::TracesReceived | EventReason::NoTraces => EventAction::VerifyTracing,
            EventReason::RolloutHalted | EventReason::ImageVolumeUnsupported => {
                EventAction::RollOut
            }
            EventReason::AdmissionUnavailable => EventAction::Admit,
        }
    }

    /// Whether a person should look: everything but a change made or traces arriving.
    pub const fn is_warning(self) -> bool {
        !matches!(
            self,
            EventReason::AddedInstrumentation
                | EventReason::UpdatedInstrumentation
                | EventReason::RemovedInstrumentation
                | EventReason::TracesReceived
        )
    }
}

impl EventAction {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventAction::Instrument => "Instrument",
            EventAction::UpdateInstrumentation => "UpdateInstrumentation",
            EventAction::RemoveInstrumentation => "RemoveInstrumentation",
            EventAction::RollBackInstrumentation => "RollBackInstrumentation",
            EventAction::VerifyTracing => "VerifyTracing",
            EventAction::RollOut => "RollOut",
            EventAction::Admit => "Admit",
        }
    }
}

/// What makes two occurrences one series: the object and the reason.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SeriesKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub reason: EventReason,
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

/// Writes every Event the operator records: creates one for the first occurrence of a series and
/// raises its `series.count` after.
pub(crate) struct EventPublisher {
    client: Client,
    reporter: Reporter,
    published: Mutex<HashMap<SeriesKey, Series>>,
}

impl EventPublisher {
    pub(crate) fn new(client: Client, reporter: Reporter) -> Self {
        EventPublisher {
            client,
            reporter,
            published: Mutex::default(),
        }
    }

    /// Records `count` occurrences of `key.reason` about the object `regarding` resolves to; none
    /// when it resolves to nothing (an object that never appeared).
    pub(crate) async fn publish(
        &self,
        key: SeriesKey,
        note: &str,
        count: u32,
        regarding: impl Future<Output = Option<ObjectReference>>,
    ) -> kube::Result<()> {
        let now = Timestamp::now();
        let continued = match self.series().get_mut(&key) {
            Some(Series::Creating { meanwhile }) => {
                *meanwhile = meanwhile.saturating_add(count);
                return Ok(());
            }
            Some(Series::Created {
                name,
                count: so_far,
                last_seen,
            }) if !ended(*last_seen, now) => {
                *so_far = so_far.saturating_add(count);
                *last_seen = now;
                Some((name.clone(), *so_far))
            }
            _ => None,
        };
        match continued {
            Some((name, total)) => self.raise(&key.namespace, &name, total, now).await,
            None => self.create(key, note, count, regarding, now).await,
        }
    }

    fn series(&self) -> std::sync::MutexGuard<'_, HashMap<SeriesKey, Series>> {
        self.published
            .lock()
            .expect("the published series are never poisoned: nothing panics holding them")
    }

    async fn create(
        &self,
        key: SeriesKey,
        note: &str,
        count: u32,
        regarding: impl Future<Output = Option<ObjectReference>>,
        now: Timestamp,
    ) -> kube::Result<()> {
        self.series()
            .insert(key.clone(), Series::Creating { meanwhile: 0 });
        let Some(reference) = regarding.await else {
            self.series().remove(&key);
            tracing::debug!(
                kind = %key.kind,
                name = %key.name,
                "the event's object never appeared, or is not the one named; no event"
            );
            return Ok(());
        };
        let created = self.new_event(&key, note, reference, count, now);
        let name = created.metadata.name.clone().unwrap_or_default();
        let events: Api<Event> = Api::namespaced(self.client.clone(), &key.namespace);
        if let Err(error) = events.create(&PostParams::default(), &created).await {
            self.series().remove(&key);
            return Err(error);
        }
        let meanwhile = match self.series().remove(&key) {
            Some(Series::Creating { meanwhile }) => meanwhile,
            _ => 0,
        };
        let total = count.saturating_add(meanwhile);
        {
            let mut series = self.series();
            // An ended series is passed over where it is found; the table is swept of them only
            // once it is full, rather than on every event.
            if series.len() >= MAX_SERIES {
                series.retain(|_, series| match series {
                    Series::Creating { .. } => true,
                    Series::Created { last_seen, .. } => !ended(*last_seen, now),
                });
            }
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
            self.raise(&key.namespace, &name, total, Timestamp::now())
                .await?;
        }
        Ok(())
    }

    async fn raise(
        &self,
        namespace: &str,
        name: &str,
        total: u32,
        now: Timestamp,
    ) -> kube::Result<()> {
        let series = EventSeries {
            count: i32::try_from(total).unwrap_or(i32::MAX),
            last_observed_time: MicroTime(now),
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), namespace);
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
        key: &SeriesKey,
        note: &str,
        regarding: ObjectReference,
        count: u32,
        now: Timestamp,
    ) -> Event {
        let controller = self.reporter.controller.clone();
        Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", key.name, now.as_nanosecond())),
                namespace: Some(key.namespace.clone()),
                ..Default::default()
            },
            event_time: Some(MicroTime(now)),
            type_: Some(
                if key.reason.is_warning() {
                    "Warning"
                } else {
                    "Normal"
                }
                .into(),
            ),
            reason: Some(key.reason.as_str().into()),
            action: Some(key.reason.action().as_str().into()),
            note: Some(truncated(note, MAX_NOTE_BYTES).into()),
            regarding: Some(regarding),
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
}

/// Whether a series last seen at `last_seen` is over: its next occurrence starts a new Event.
fn ended(last_seen: Timestamp, now: Timestamp) -> bool {
    last_seen
        .saturating_add(SERIES_TTL)
        .is_ok_and(|end| end <= now)
}

/// `text` cut to at most `limit` bytes, on a character boundary.
fn truncated(text: &str, limit: usize) -> &str {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The events of the rollout, the tracing check and uninstall: each names what changed and what
/// triggered it.
pub struct Events {
    publisher: EventPublisher,
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
            publisher: EventPublisher::new(client, reporter),
            warned: Mutex::default(),
        }
    }

    pub async fn changed(&self, workload: &InstrumentedResource, change: &Change, trigger: &str) {
        let note = format!("{change}; trigger: {trigger}");
        self.publish(workload, EventReason::of_change(change), &note)
            .await;
    }

    /// A workload that should have been changed and could not be, recorded once per operator run.
    pub async fn could_not(
        &self,
        workload: &InstrumentedResource,
        adding: bool,
        reason: &Reason,
        trigger: &str,
    ) {
        let event_reason = if adding {
            EventReason::CannotAddInstrumentation
        } else {
            EventReason::CannotRemoveInstrumentation
        };
        let first_time = self
            .warned
            .lock()
            .expect("the warned set is never poisoned: no code panics while holding it")
            .insert((
                workload.uid.clone(),
                format!("{}:{reason}", event_reason.as_str()),
            ));
        if first_time {
            let note = format!("{reason}; trigger: {trigger}");
            self.publish(workload, event_reason, &note).await;
        }
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
        let note = format!(
            "the telemetry proxy received the first spans since the injection, from {}",
            senders.join(", ")
        );
        self.publish(workload, EventReason::TracesReceived, &note)
            .await;
    }

    /// A workload with Ready pods sent no span for the whole silence window.
    pub async fn no_traces(&self, workload: &InstrumentedResource, reason: &str) {
        let note = format!(
            "instrumented, but no span reached the telemetry proxy within the silence window: \
             {reason}"
        );
        self.publish(workload, EventReason::NoTraces, &note).await;
    }

    /// A warning on the `Lumigo` resource itself (or the operator's pod): the rollout stopped,
    /// its removal gave up, or the webhook is unavailable.
    pub async fn on_resource(
        &self,
        resource: &InstrumentedResource,
        reason: EventReason,
        note: String,
    ) {
        self.publish(resource, reason, &note).await;
    }

    async fn publish(&self, object: &InstrumentedResource, reason: EventReason, note: &str) {
        let key = SeriesKey {
            kind: object.kind.clone(),
            namespace: object.namespace.clone(),
            name: object.name.clone(),
            reason,
        };
        let reference = ObjectReference {
            api_version: Some(object.api_version.clone()),
            kind: Some(object.kind.clone()),
            name: Some(object.name.clone()),
            namespace: Some(object.namespace.clone()),
            uid: Some(object.uid.clone()).filter(|uid| !uid.is_empty()),
            ..Default::default()
        };
        let published = self
            .publisher
            .publish(key, note, 1, std::future::ready(Some(reference)))
            .await;
        // An event is a courtesy: failing to record one must not fail the change it describes.
        if let Err(error) = published {
            tracing::warn!(
                %error,
                reason = reason.as_str(),
                object = %object.name,
                "could not record an event"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY_REASON: [EventReason; 12] = [
        EventReason::AddedInstrumentation,
        EventReason::UpdatedInstrumentation,
        EventReason::RemovedInstrumentation,
        EventReason::RolledBackInstrumentation,
        EventReason::CannotAddInstrumentation,
        EventReason::CannotRemoveInstrumentation,
        EventReason::TracesReceived,
        EventReason::NoTraces,
        EventReason::RolloutHalted,
        EventReason::ImageVolumeUnsupported,
        EventReason::RemovalIncomplete,
        EventReason::AdmissionUnavailable,
    ];

    #[test]
    fn every_reason_is_a_distinct_upper_camel_case_name_of_the_lumigo_family() {
        let names: HashSet<&str> = EVERY_REASON.iter().map(|r| r.as_str()).collect();
        assert_eq!(names.len(), EVERY_REASON.len());
        for name in names {
            // The Events API wants UpperCamelCase reasons of at most 128 characters.
            assert!(name.starts_with("Lumigo") && name.len() <= 128, "{name}");
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric()), "{name}");
        }
    }

    #[test]
    fn a_change_is_recorded_under_the_reason_and_action_of_what_it_did() {
        let cases = [
            (Change::Injected, "LumigoAddedInstrumentation", "Instrument"),
            (
                Change::Reinjected {
                    previous_label: "v1".into(),
                },
                "LumigoUpdatedInstrumentation",
                "UpdateInstrumentation",
            ),
            (
                Change::Removed,
                "LumigoRemovedInstrumentation",
                "RemoveInstrumentation",
            ),
            (
                Change::RolledBack {
                    failure: "exit code 1".into(),
                },
                "LumigoRolledBackInstrumentation",
                "RollBackInstrumentation",
            ),
        ];
        for (change, reason, action) in cases {
            let event_reason = EventReason::of_change(&change);
            assert_eq!(
                (event_reason.as_str(), event_reason.action().as_str()),
                (reason, action)
            );
        }
    }

    #[test]
    fn only_changes_made_and_traces_arriving_are_normal() {
        let normal: Vec<&str> = EVERY_REASON
            .iter()
            .filter(|reason| !reason.is_warning())
            .map(|reason| reason.as_str())
            .collect();
        assert_eq!(
            normal,
            [
                "LumigoAddedInstrumentation",
                "LumigoUpdatedInstrumentation",
                "LumigoRemovedInstrumentation",
                "LumigoTracesReceived"
            ]
        );
    }

    #[test]
    fn removal_reasons_share_the_removal_action() {
        for reason in [
            EventReason::RemovedInstrumentation,
            EventReason::CannotRemoveInstrumentation,
            EventReason::RemovalIncomplete,
        ] {
            assert_eq!(reason.action(), EventAction::RemoveInstrumentation);
        }
        assert_eq!(
            EventReason::CannotAddInstrumentation.action(),
            EventAction::Instrument
        );
        assert_eq!(EventReason::RolloutHalted.action(), EventAction::RollOut);
        assert_eq!(
            EventReason::AdmissionUnavailable.action(),
            EventAction::Admit
        );
    }

    #[test]
    fn a_series_ends_once_its_last_occurrence_is_a_ttl_old() {
        let now = Timestamp::now();
        let ago = |seconds: i64| now - k8s_openapi::jiff::SignedDuration::from_secs(seconds);
        let ttl = SERIES_TTL.as_secs() as i64;
        assert!(!ended(now, now));
        assert!(!ended(ago(ttl - 1), now));
        assert!(ended(ago(ttl), now));
        assert!(ended(ago(ttl + 60), now));
    }

    #[test]
    fn a_long_note_is_cut_at_the_api_limit_on_a_character_boundary() {
        let note = "é".repeat(600);
        let cut = truncated(&note, MAX_NOTE_BYTES);
        assert_eq!(cut.len(), MAX_NOTE_BYTES);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(truncated("short", MAX_NOTE_BYTES), "short");
    }
}
