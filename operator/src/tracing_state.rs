//! Whether each instrumented workload's traces really arrive: `Receiving`, `Silent` or `Unknown`,
//! decided from the telemetry proxy's span counts, without I/O (the watch in
//! `tracing_watch.rs` feeds it and acts on what it says).
//!
//! Writes are bounded by construction: what the status shows is the *published* view of a
//! namespace, which changes only when a workload's state, first span, containers or reason
//! change, and at most once per check interval (the time of the latest span alone never asks
//! for a write). Memory is bounded by the instrumented workloads: series naming anything else
//! are dropped on arrival.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use lumigo_mutation::WorkloadKind;

use crate::crd::{InstrumentedResource, TracedContainer, TracingState, WorkloadTracing};
use crate::telemetry_proxy::{SpanSeries, WorkloadKey};

/// Containers listed per workload: a pod has a handful; a proxy reporting more is not believed.
const MAX_CONTAINERS: usize = 32;
/// Failed readings in a row before the state turns `Unknown`: one lost scrape (a proxy pod
/// restarting) must not flip every workload and back.
const FAILURES_BEFORE_UNKNOWN: u32 = 3;

#[derive(Debug, Clone, Copy)]
pub struct TracingSettings {
    /// How long a workload may send nothing before it is `Silent` (and, with Ready pods, warned).
    pub silence_window: Duration,
}

/// Something the watch announces with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirstSpans {
    pub workload: InstrumentedResource,
    pub containers: Vec<TracedContainer>,
}

#[derive(Debug)]
enum Proxy {
    /// No proxy to read (the chart's tracingVerification is off): every workload is `Unknown`.
    Disabled,
    /// Not read yet since the operator started.
    NotYetRead,
    Readable,
    Failing {
        failures: u32,
        error: String,
    },
}

#[derive(Debug, Clone)]
struct Tracked {
    workload: InstrumentedResource,
    injected_at: Timestamp,
    first_seen: Option<Timestamp>,
    last_seen: Option<Timestamp>,
    containers: BTreeSet<TracedContainer>,
    announced: bool,
    /// Set once the silence was reported, with the most likely reason.
    warned: Option<String>,
}

pub struct Tracker {
    settings: TracingSettings,
    proxy: Proxy,
    workloads: HashMap<WorkloadKey, Tracked>,
    /// What the status of each namespace shows, by workload uid.
    published: HashMap<String, BTreeMap<String, WorkloadTracing>>,
}

impl Tracker {
    pub fn new(settings: TracingSettings, proxy_enabled: bool) -> Self {
        Tracker {
            settings,
            proxy: if proxy_enabled {
                Proxy::NotYetRead
            } else {
                Proxy::Disabled
            },
            workloads: HashMap::new(),
            published: HashMap::new(),
        }
    }

    /// The namespace's instrumented workloads after a sweep: new ones are tracked from `now`,
    /// `reinjected` ones (by uid) start over, gone ones are forgotten. `shown` is the current
    /// status, whose times a restarted operator starts from. Returns the list with what the
    /// status should show of each.
    pub fn track(
        &mut self,
        namespace: &str,
        instrumented: Vec<InstrumentedResource>,
        reinjected: &HashSet<String>,
        shown: &[InstrumentedResource],
        now: Timestamp,
    ) -> Vec<InstrumentedResource> {
        let now = to_second(now);
        let current: HashSet<WorkloadKey> = instrumented.iter().filter_map(key_of).collect();
        self.workloads
            .retain(|key, _| key.namespace != namespace || current.contains(key));
        let shown: HashMap<&str, &WorkloadTracing> = shown
            .iter()
            .filter_map(|w| Some((w.uid.as_str(), w.tracing.as_ref()?)))
            .collect();
        for workload in &instrumented {
            let Some(key) = key_of(workload) else {
                continue;
            };
            let fresh = || Tracked {
                workload: without_tracing(workload),
                injected_at: now,
                first_seen: None,
                last_seen: None,
                containers: BTreeSet::new(),
                announced: false,
                warned: None,
            };
            let tracked = self.workloads.entry(key).or_insert_with(|| {
                let mut tracked = fresh();
                if let Some(previous) = shown.get(workload.uid.as_str()) {
                    tracked.first_seen = previous.first_span_seen.as_ref().map(|t| t.0);
                    tracked.last_seen = previous.last_span_seen.as_ref().map(|t| t.0);
                    tracked.announced = tracked.first_seen.is_some();
                    tracked.containers = previous.containers.iter().cloned().collect();
                    tracked.warned = previous.reason.clone();
                }
                tracked
            });
            if reinjected.contains(&workload.uid) || tracked.workload.uid != workload.uid {
                *tracked = fresh();
            }
        }
        let published = self.published.entry(namespace.to_owned()).or_default();
        let uids: HashSet<&str> = instrumented.iter().map(|w| w.uid.as_str()).collect();
        published.retain(|uid, _| uids.contains(uid.as_str()));
        let mut listed = instrumented;
        for workload in &mut listed {
            let view = key_of(workload)
                .and_then(|key| self.workloads.get(&key))
                .map(|tracked| view_of(tracked, &self.proxy, self.settings, now));
            if let Some(view) = view {
                let view = published.entry(workload.uid.clone()).or_insert(view);
                workload.tracing = Some(view.clone());
            }
        }
        listed
    }

    pub fn forget(&mut self, namespace: &str) {
        self.workloads.retain(|key, _| key.namespace != namespace);
        self.published.remove(namespace);
    }

    /// One reading of the proxy; returns the workloads whose first spans since their injection
    /// just arrived.
    pub fn observe(
        &mut self,
        reading: Result<Vec<SpanSeries>, String>,
        now: Timestamp,
    ) -> Vec<FirstSpans> {
        let series = match reading {
            Ok(series) => series,
            Err(error) => {
                let failures = match self.proxy {
                    Proxy::Disabled => return Vec::new(),
                    Proxy::NotYetRead | Proxy::Readable => 1,
                    Proxy::Failing { failures, .. } => failures.saturating_add(1),
                };
                self.proxy = Proxy::Failing { failures, error };
                return Vec::new();
            }
        };
        if !matches!(self.proxy, Proxy::Disabled) {
            self.proxy = Proxy::Readable;
        }
        let now = to_second(now);
        for series in series {
            let Some(tracked) = self.workloads.get_mut(&series.workload) else {
                continue;
            };
            let seen = to_second(series.last_seen).min(now);
            tracked.last_seen = tracked.last_seen.max(Some(seen));
            if seen >= tracked.injected_at {
                tracked.first_seen.get_or_insert(seen);
                if tracked.containers.len() < MAX_CONTAINERS {
                    tracked.containers.insert(TracedContainer {
                        name: series.container,
                        runtime: series.runtime,
                    });
                }
            }
            if is_receiving(tracked, now, self.settings) {
                tracked.warned = None;
            }
        }
        let mut first = Vec::new();
        for tracked in self.workloads.values_mut() {
            if !tracked.announced && tracked.first_seen.is_some() {
                tracked.announced = true;
                first.push(FirstSpans {
                    workload: tracked.workload.clone(),
                    containers: tracked.containers.iter().cloned().collect(),
                });
            }
        }
        first.sort_by(|a, b| a.workload.cmp(&b.workload));
        first
    }

    /// Workloads silent for the whole window and not yet reported; Jobs and CronJobs are left
    /// out, their pods are not meant to run all the time.
    pub fn silent_past_window(&self, now: Timestamp) -> Vec<InstrumentedResource> {
        if !matches!(self.proxy, Proxy::Readable) {
            return Vec::new();
        }
        let now = to_second(now);
        let mut silent: Vec<InstrumentedResource> = self
            .workloads
            .iter()
            .filter(|(key, tracked)| {
                !matches!(key.kind, WorkloadKind::Job | WorkloadKind::CronJob)
                    && tracked.warned.is_none()
                    && silent_since(tracked, now, self.settings).is_some()
            })
            .map(|(_, tracked)| tracked.workload.clone())
            .collect();
        silent.sort();
        silent
    }

    /// The silence of `workload` was reported, for `reason`.
    pub fn warned(&mut self, workload: &InstrumentedResource, reason: String) {
        if let Some(tracked) = key_of(workload).and_then(|key| self.workloads.get_mut(&key)) {
            tracked.warned = Some(reason);
        }
    }

    /// Brings every namespace's published view up to date; returns the namespaces whose status
    /// must be written, i.e. where more than the time of the latest span changed.
    pub fn republish(&mut self, now: Timestamp) -> Vec<String> {
        let now = to_second(now);
        let mut changed = Vec::new();
        for (namespace, published) in &mut self.published {
            let fresh: BTreeMap<String, WorkloadTracing> = self
                .workloads
                .iter()
                .filter(|(key, tracked)| {
                    &key.namespace == namespace && published.contains_key(&tracked.workload.uid)
                })
                .map(|(_, tracked)| {
                    (
                        tracked.workload.uid.clone(),
                        view_of(tracked, &self.proxy, self.settings, now),
                    )
                })
                .collect();
            let significant = |view: &BTreeMap<String, WorkloadTracing>| {
                view.iter()
                    .map(|(uid, tracing)| {
                        let mut tracing = tracing.clone();
                        tracing.last_span_seen = None;
                        (uid.clone(), tracing)
                    })
                    .collect::<Vec<_>>()
            };
            if significant(&fresh) != significant(published) {
                *published = fresh;
                changed.push(namespace.clone());
            }
        }
        changed.sort();
        changed
    }

    /// Receiving workloads of each namespace, as published.
    pub fn receiving_counts(&self) -> Vec<(String, usize)> {
        self.published
            .iter()
            .map(|(namespace, view)| {
                let receiving = view
                    .values()
                    .filter(|t| t.state == TracingState::Receiving)
                    .count();
                (namespace.clone(), receiving)
            })
            .collect()
    }
}

fn key_of(workload: &InstrumentedResource) -> Option<WorkloadKey> {
    Some(WorkloadKey {
        namespace: workload.namespace.clone(),
        kind: workload.workload_kind()?,
        name: workload.name.clone(),
    })
}

fn without_tracing(workload: &InstrumentedResource) -> InstrumentedResource {
    InstrumentedResource {
        tracing: None,
        ..workload.clone()
    }
}

/// Kubernetes keeps times to the second: a finer time would differ from its own round trip
/// through the API and make an unchanged status look changed.
fn to_second(time: Timestamp) -> Timestamp {
    Timestamp::from_second(time.as_second()).unwrap_or(time)
}

fn is_receiving(tracked: &Tracked, now: Timestamp, settings: TracingSettings) -> bool {
    tracked
        .last_seen
        .is_some_and(|seen| now.duration_since(seen) < window(settings))
}

/// When the silence of a workload began, if it has lasted the whole window.
fn silent_since(tracked: &Tracked, now: Timestamp, settings: TracingSettings) -> Option<Timestamp> {
    let since = tracked
        .last_seen
        .map_or(tracked.injected_at, |seen| seen.max(tracked.injected_at));
    (!is_receiving(tracked, now, settings) && now.duration_since(since) >= window(settings))
        .then_some(since)
}

fn window(settings: TracingSettings) -> SignedDuration {
    SignedDuration::try_from(settings.silence_window).unwrap_or(SignedDuration::MAX)
}

fn view_of(
    tracked: &Tracked,
    proxy: &Proxy,
    settings: TracingSettings,
    now: Timestamp,
) -> WorkloadTracing {
    let unknown = match proxy {
        Proxy::Disabled => Some(
            "the telemetry proxy does not count spans (tracingVerification or the proxy is off \
             in the chart)"
                .to_owned(),
        ),
        Proxy::Failing { failures, error } if *failures >= FAILURES_BEFORE_UNKNOWN => {
            Some(format!("the telemetry proxy cannot be read: {error}"))
        }
        Proxy::NotYetRead => Some("the telemetry proxy has not been read yet".to_owned()),
        _ => None,
    };
    let (state, reason) = match unknown {
        Some(why) => (TracingState::Unknown, Some(why)),
        None if is_receiving(tracked, now, settings) => (TracingState::Receiving, None),
        None => {
            let reason = tracked.warned.clone().or_else(|| {
                Some(match tracked.last_seen {
                    Some(_) => "no span within the silence window".to_owned(),
                    None => "no span yet since the injection".to_owned(),
                })
            });
            (TracingState::Silent, reason)
        }
    };
    WorkloadTracing {
        state,
        first_span_seen: tracked.first_seen.map(Time),
        last_span_seen: tracked.last_seen.map(Time),
        containers: tracked.containers.iter().cloned().collect(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(600);

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_764_000_000 + seconds).unwrap()
    }

    fn workload(name: &str) -> InstrumentedResource {
        InstrumentedResource {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: name.into(),
            namespace: "shop".into(),
            uid: format!("uid-{name}"),
            tracing: None,
        }
    }

    fn series(name: &str, seen: Timestamp) -> SpanSeries {
        SpanSeries {
            workload: WorkloadKey {
                namespace: "shop".into(),
                kind: WorkloadKind::Deployment,
                name: name.into(),
            },
            container: "server".into(),
            runtime: "nodejs".into(),
            last_seen: seen,
        }
    }

    fn tracker_with(names: &[&str]) -> Tracker {
        let mut tracker = Tracker::new(
            TracingSettings {
                silence_window: WINDOW,
            },
            true,
        );
        let list = names.iter().map(|n| workload(n)).collect();
        tracker.track("shop", list, &HashSet::new(), &[], at(0));
        tracker
    }

    fn state_of(tracker: &mut Tracker, name: &str, now: Timestamp) -> WorkloadTracing {
        tracker.republish(now);
        let list = tracker.track("shop", vec![workload(name)], &HashSet::new(), &[], now);
        list[0].tracing.clone().unwrap()
    }

    #[test]
    fn first_spans_make_a_workload_receiving_and_are_announced_once() {
        let mut tracker = tracker_with(&["web", "batch"]);
        let first = tracker.observe(Ok(vec![series("web", at(20))]), at(30));
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].workload.name, "web");
        assert_eq!(first[0].containers[0].runtime, "nodejs");
        assert!(tracker
            .observe(Ok(vec![series("web", at(40))]), at(45))
            .is_empty());
        assert_eq!(tracker.republish(at(45)), ["shop"]);
        let view = &tracker.published["shop"]["uid-web"];
        assert_eq!(view.state, TracingState::Receiving);
        assert_eq!(view.first_span_seen, Some(Time(at(20))));
        assert_eq!(view.last_span_seen, Some(Time(at(40))));
        assert_eq!(
            tracker.published["shop"]["uid-batch"].state,
            TracingState::Silent
        );
    }

    #[test]
    fn only_a_change_beyond_the_latest_span_time_is_published() {
        let mut tracker = tracker_with(&["web"]);
        tracker.observe(Ok(vec![series("web", at(10))]), at(15));
        assert_eq!(tracker.republish(at(15)), ["shop"]);
        for step in 1..50 {
            let now = at(15 + step * 5);
            tracker.observe(Ok(vec![series("web", now)]), now);
            assert!(tracker.republish(now).is_empty(), "step {step}");
        }
        // Nothing for the whole window: Silent, published once.
        let later = at(15 + 49 * 5) + SignedDuration::from_secs(601);
        tracker.observe(Ok(vec![]), later);
        assert_eq!(tracker.republish(later), ["shop"]);
        assert!(tracker.republish(later).is_empty());
    }

    #[test]
    fn a_silent_workload_is_reported_once_after_the_window() {
        let mut tracker = tracker_with(&["frontend"]);
        tracker.observe(Ok(vec![]), at(300));
        assert!(tracker.silent_past_window(at(300)).is_empty());
        tracker.observe(Ok(vec![]), at(600));
        let silent = tracker.silent_past_window(at(600));
        assert_eq!(silent.len(), 1);
        tracker.warned(&silent[0], "no container runs a supported runtime".into());
        assert!(tracker.silent_past_window(at(900)).is_empty());
        let view = state_of(&mut tracker, "frontend", at(900));
        assert_eq!(view.state, TracingState::Silent);
        assert_eq!(
            view.reason.as_deref(),
            Some("no container runs a supported runtime")
        );
        // Spans at last: receiving, and a later silence is reported again.
        tracker.observe(Ok(vec![series("frontend", at(950))]), at(950));
        assert_eq!(
            state_of(&mut tracker, "frontend", at(950)).reason,
            None,
            "the reason goes with the silence"
        );
        tracker.republish(at(950));
        assert_eq!(
            tracker.published["shop"]["uid-frontend"].state,
            TracingState::Receiving
        );
        tracker.observe(Ok(vec![]), at(1600));
        assert_eq!(tracker.silent_past_window(at(1600)).len(), 1);
    }

    #[test]
    fn reinjection_starts_over_and_announces_again() {
        let mut tracker = tracker_with(&["web"]);
        assert_eq!(
            tracker
                .observe(Ok(vec![series("web", at(10))]), at(10))
                .len(),
            1
        );
        let reinjected = HashSet::from(["uid-web".to_owned()]);
        tracker.track("shop", vec![workload("web")], &reinjected, &[], at(100));
        // Spans of the old pods (before the re-injection) are no first spans.
        assert!(tracker
            .observe(Ok(vec![series("web", at(90))]), at(110))
            .is_empty());
        assert_eq!(
            tracker
                .observe(Ok(vec![series("web", at(120))]), at(125))
                .len(),
            1
        );
    }

    #[test]
    fn a_proxy_that_fails_makes_everything_unknown_only_after_several_readings() {
        let mut tracker = tracker_with(&["web"]);
        tracker.observe(Ok(vec![series("web", at(10))]), at(10));
        tracker.republish(at(10));
        for attempt in 1..FAILURES_BEFORE_UNKNOWN {
            tracker.observe(
                Err("connection refused".into()),
                at(10 + i64::from(attempt)),
            );
            assert!(tracker.republish(at(20)).is_empty());
        }
        tracker.observe(Err("connection refused".into()), at(30));
        assert_eq!(tracker.republish(at(30)), ["shop"]);
        let view = &tracker.published["shop"]["uid-web"];
        assert_eq!(view.state, TracingState::Unknown);
        assert!(view
            .reason
            .as_deref()
            .unwrap()
            .contains("connection refused"));
        // Unknown is no silence: nothing is reported while the proxy cannot be read.
        assert!(tracker
            .silent_past_window(at(10) + SignedDuration::from_hours(1))
            .is_empty());
        tracker.observe(Ok(vec![series("web", at(40))]), at(40));
        assert_eq!(tracker.republish(at(40)), ["shop"]);
        assert_eq!(
            tracker.published["shop"]["uid-web"].state,
            TracingState::Receiving
        );
    }

    #[test]
    fn a_disabled_proxy_shows_unknown_with_the_reason() {
        let mut tracker = Tracker::new(
            TracingSettings {
                silence_window: WINDOW,
            },
            false,
        );
        let list = tracker.track("shop", vec![workload("web")], &HashSet::new(), &[], at(0));
        let tracing = list[0].tracing.as_ref().unwrap();
        assert_eq!(tracing.state, TracingState::Unknown);
        assert!(tracing
            .reason
            .as_deref()
            .unwrap()
            .contains("tracingVerification"));
    }

    #[test]
    fn series_of_workloads_nobody_instruments_cost_nothing() {
        let mut tracker = tracker_with(&["web"]);
        let noise: Vec<SpanSeries> = (0..10_000)
            .map(|i| series(&format!("stranger-{i}"), at(5)))
            .collect();
        assert!(tracker.observe(Ok(noise), at(10)).is_empty());
        assert_eq!(tracker.workloads.len(), 1);
        assert!(tracker.workloads.values().all(|t| t.last_seen.is_none()));
    }

    #[test]
    fn a_restarted_operator_starts_from_the_status_it_wrote() {
        let mut before = tracker_with(&["web"]);
        before.observe(Ok(vec![series("web", at(10))]), at(10));
        before.republish(at(10));
        let shown = before.track("shop", vec![workload("web")], &HashSet::new(), &[], at(20));

        let mut after = Tracker::new(
            TracingSettings {
                silence_window: WINDOW,
            },
            true,
        );
        after.track(
            "shop",
            vec![workload("web")],
            &HashSet::new(),
            &shown,
            at(30),
        );
        assert!(
            after
                .observe(Ok(vec![series("web", at(35))]), at(40))
                .is_empty(),
            "no second LumigoTracesReceived for the same injection"
        );
        after.republish(at(40));
        assert_eq!(
            after.published["shop"]["uid-web"].first_span_seen,
            Some(Time(at(10)))
        );
    }

    #[test]
    fn times_are_kept_to_the_second() {
        let mut tracker = tracker_with(&["web"]);
        let fine = at(10) + SignedDuration::from_millis(345);
        tracker.observe(Ok(vec![series("web", fine)]), at(11));
        tracker.republish(at(11));
        assert_eq!(
            tracker.published["shop"]["uid-web"].first_span_seen,
            Some(Time(at(10)))
        );
    }
}
