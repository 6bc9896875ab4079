//! A sweep over the workloads of a namespace (or of the cluster) that brings each to the
//! desired injection state with at most one write, retried on fresh state after a conflict.
//!
//! Injecting a Deployment, StatefulSet or DaemonSet restarts its pods, so those writes are paced:
//! at most a few workloads of a namespace (and of the cluster) restart into the injection at
//! once, the next starting when one is rolled out by its controller's own status. The first
//! one of a rollout goes alone, as a canary. Every injected workload still rolling out is
//! health-gated: when its injected pods fail where its earlier ones did not, the injection is
//! rolled back. Nothing of this is kept in memory between sweeps: the workloads' templates and
//! statuses say where a rollout stands, so a restarted operator resumes where the last one was.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use futures::{stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use lumigo_mutation::{
    inspect, reconcile, remove, roll_back, rollback_marker, Change, Failure, InjectionConfig,
    Operation, Outcome, Reason, WorkloadKind,
};
use serde_json::Value;

use crate::crd::{InstrumentedResource, RolledBackResource};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::workload_health::{deadline_exceeded, restarts_pods, rolled_out, verdict, PodHealth};
use crate::workloads::{reference, WorkloadApi, ROLLOUT_KINDS};

/// Attempts at writing one object before giving up for this sweep (a later one retries).
const WRITE_ATTEMPTS: u32 = 5;
const HEALTH_GATE: &str = "the health gate: the injected pods failed";

#[derive(Clone, Copy)]
pub enum Desired<'a> {
    /// Injected with `config`; `inject_uninjected: false` only maintains workloads that carry
    /// an injection already (re-injection, opt-out cleaning) and leaves the others alone.
    Injected {
        config: &'a InjectionConfig,
        inject_uninjected: bool,
        pacing: Pacing,
    },
    Removed,
    /// Given back uninjected after `failure`, and kept so while `config` is the one in force.
    RolledBack {
        config: &'a InjectionConfig,
        failure: &'a Failure,
    },
}

/// How fast an injection rolls into the workloads that restart for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pacing {
    /// Workloads of the namespace restarting at once; `None`: all at once.
    pub limit: Option<usize>,
    /// The rollout stopped after a failure every workload would share: nothing new is injected.
    pub halted: bool,
}

/// The operator's rollout settings.
#[derive(Clone, Debug)]
pub struct RolloutSettings {
    /// Restarts in progress at once in a namespace, unless its resource says otherwise; `None`:
    /// all at once.
    pub per_namespace: Option<usize>,
    pub check_interval: Duration,
    pub removal_timeout: Duration,
}

impl RolloutSettings {
    pub fn from_args(args: &crate::cli::RolloutArgs) -> Self {
        RolloutSettings {
            per_namespace: limit(args.rollout_max_in_progress),
            check_interval: args.rollout_check_interval,
            removal_timeout: args.removal_timeout,
        }
    }

    /// The pacing of a namespace whose resource asks for `max_in_progress` (or nothing).
    pub fn pacing(&self, max_in_progress: Option<u32>, halted: bool) -> Pacing {
        Pacing {
            limit: max_in_progress.map_or(self.per_namespace, limit),
            halted,
        }
    }
}

/// A limit of `n`, 0 meaning none.
pub fn limit(n: u32) -> Option<usize> {
    (n > 0).then_some(n as usize)
}

/// The restarts in progress in each namespace, so that a cluster-wide limit holds across the
/// reconciles of several namespaces.
pub struct RolloutSlots {
    limit: Option<usize>,
    in_progress: Mutex<HashMap<String, usize>>,
}

impl RolloutSlots {
    /// `limit`: restarts in progress at once in the whole cluster; `None`: no limit.
    pub fn new(limit: Option<usize>) -> Self {
        RolloutSlots {
            limit,
            in_progress: Mutex::default(),
        }
    }

    /// Takes up to `wanted` more slots for `namespace`, which holds `held` already.
    fn grant(&self, namespace: &str, held: usize, wanted: usize) -> usize {
        let mut in_progress = self.lock();
        let others: usize = in_progress
            .iter()
            .filter(|(name, _)| name.as_str() != namespace)
            .map(|(_, count)| count)
            .sum();
        let granted = match self.limit {
            Some(limit) => wanted.min(limit.saturating_sub(others + held)),
            None => wanted,
        };
        in_progress.insert(namespace.to_owned(), held + granted);
        granted
    }

    fn set(&self, namespace: &str, held: usize) {
        self.lock().insert(namespace.to_owned(), held);
    }

    pub fn forget(&self, namespace: &str) {
        self.lock().remove(namespace);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.in_progress
            .lock()
            .expect("the slot table is never poisoned: no code panics while holding it")
    }
}

pub struct Sweeper<'a> {
    pub api: &'a WorkloadApi,
    pub events: &'a Events,
    pub metrics: &'a Metrics,
    pub max_concurrent_writes: usize,
    pub slots: &'a RolloutSlots,
}

#[derive(Debug, Default)]
pub struct SweepReport {
    /// Workloads whose pod template carries the injection after the sweep, sorted.
    pub instrumented: Vec<InstrumentedResource>,
    pub writes: usize,
    /// Uids of the workloads this sweep (re-)injected: their tracing starts over.
    pub reinjected: HashSet<String>,
    /// Workloads that could not be written this time (a later sweep retries them).
    pub failed: usize,
    /// Workloads restarting into the injection after the sweep.
    pub in_progress: usize,
    /// Workloads waiting for their turn to be injected.
    pub pending: usize,
    /// Workloads kept uninjected because the injection broke their pods.
    pub rolled_back: Vec<RolledBackResource>,
    /// A failure this sweep found that every workload would share: the rollout must stop.
    pub halt: Option<(InstrumentedResource, Failure)>,
}

#[derive(Clone, Copy)]
enum Handled {
    Unchanged { instrumented: bool },
    Written { instrumented: bool },
    Failed,
}

/// What the sweep learnt of one workload.
struct Visit {
    workload: InstrumentedResource,
    kind: WorkloadKind,
    handled: Handled,
    /// An injection it needs and will get in its turn.
    queued: bool,
    /// An injection it needs once its current rollout is over.
    waiting: bool,
    /// Injected and still rolling out, with the object (the health gate reads its status).
    rolling: Option<Value>,
    /// Counts as a restart in progress (rolling out and not given up by its controller).
    holds_slot: bool,
    /// Rolled out with the injection in force: a rollout past its canary.
    settled: bool,
    held_back: Option<RolledBackResource>,
}

impl Sweeper<'_> {
    pub async fn sweep(
        &self,
        namespace: Option<&str>,
        desired: Desired<'_>,
        trigger: &str,
    ) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        let mut queued = Vec::new();
        let mut rolling = Vec::new();
        let (mut held, mut settled, mut waiting) = (0, 0, 0);
        for kind in ROLLOUT_KINDS {
            let mut continue_token = None;
            loop {
                let (page, next) = self.api.list_page(kind, namespace, continue_token).await?;
                let visits: Vec<Visit> = stream::iter(page)
                    .map(|object| async move {
                        Ok::<_, Error>(self.visit(kind, object, desired, trigger).await)
                    })
                    .buffer_unordered(self.max_concurrent_writes.max(1))
                    .try_collect()
                    .await?;
                for visit in visits {
                    held += usize::from(visit.holds_slot);
                    settled += usize::from(visit.settled);
                    report.record(&visit.workload, visit.handled);
                    report.rolled_back.extend(visit.held_back);
                    waiting += usize::from(visit.waiting);
                    if visit.queued {
                        queued.push((kind, visit.workload.clone()));
                    }
                    if let Some(object) = visit.rolling {
                        rolling.push((visit.kind, visit.workload, object, visit.holds_slot));
                    }
                }
                match next {
                    Some(token) => continue_token = Some(token),
                    None => break,
                }
            }
        }
        if let (Desired::Injected { config, pacing, .. }, Some(namespace)) = (desired, namespace) {
            held -= self
                .health_gate(namespace, config, rolling, &mut report)
                .await?;
            self.take_turns(
                namespace,
                desired,
                pacing,
                queued,
                held,
                settled,
                trigger,
                &mut report,
            )
            .await;
            report.pending += waiting;
        }
        // A re-injected workload taking its turn was listed already, under the previous version.
        report.instrumented.sort();
        report.instrumented.dedup();
        crate::memory::release_freed_memory();
        Ok(report)
    }

    async fn visit(
        &self,
        kind: WorkloadKind,
        object: Value,
        desired: Desired<'_>,
        trigger: &str,
    ) -> Visit {
        let workload = reference(kind, &object);
        let instrumented = counts_as_instrumented(&object, kind);
        let restarting = restarts_pods(kind) && instrumented && !rolled_out(kind, &object);
        let mut visit = Visit {
            workload,
            kind,
            handled: Handled::Unchanged { instrumented },
            queued: false,
            waiting: false,
            rolling: None,
            holds_slot: restarting && !deadline_exceeded(kind, &object),
            settled: false,
            held_back: None,
        };
        match outcome(&object, kind, desired) {
            Outcome::Unchanged(Reason::RolledBack(_)) => {
                visit.held_back = rollback_marker(&object)
                    .map(|marker| rolled_back(&visit.workload, marker.failure, marker.at));
                return visit;
            }
            Outcome::Unchanged(Reason::AlreadyInjected) => {
                visit.settled = restarts_pods(kind) && !restarting;
            }
            Outcome::Changed(Change::Injected | Change::Reinjected { .. })
                if is_paced(desired) && restarts_pods(kind) =>
            {
                // One in the middle of a rollout (its own or ours) waits until it is over.
                visit.queued = !restarting;
                visit.waiting = restarting;
                if restarting {
                    visit.rolling = Some(object);
                }
                return visit;
            }
            _ => {}
        }
        if restarting {
            visit.rolling = Some(object.clone());
        }
        visit.handled = self.handle(kind, object, desired, trigger).await;
        visit
    }

    /// Rolls back every rolling-out workload whose injected pods fail; returns how many of them
    /// held a slot.
    async fn health_gate(
        &self,
        namespace: &str,
        config: &InjectionConfig,
        rolling: Vec<(WorkloadKind, InstrumentedResource, Value, bool)>,
        report: &mut SweepReport,
    ) -> Result<usize> {
        if rolling.is_empty() {
            return Ok(0);
        }
        let wanted: HashSet<(WorkloadKind, String)> = rolling
            .iter()
            .map(|(kind, workload, ..)| (*kind, workload.name.clone()))
            .collect();
        let pods = self.pods_of(namespace, &wanted).await?;
        let mut freed = 0;
        for (kind, workload, object, held_slot) in rolling {
            let key = (kind, workload.name.clone());
            let found = pods.get(&key).map_or(&[][..], Vec::as_slice);
            let Some(verdict) = verdict(kind, &object, found) else {
                continue;
            };
            tracing::warn!(
                kind = kind.name(),
                namespace,
                name = %workload.name,
                failure = %verdict.failure,
                "the injected pods fail; rolling back"
            );
            let desired = Desired::RolledBack {
                config,
                failure: &verdict.failure,
            };
            let Handled::Written { .. } = self.handle(kind, object, desired, HEALTH_GATE).await
            else {
                continue;
            };
            freed += usize::from(held_slot);
            report.writes += 1;
            report.instrumented.retain(|w| w.uid != workload.uid);
            report.rolled_back.push(rolled_back(
                &workload,
                verdict.failure.clone(),
                k8s_openapi::jiff::Timestamp::now().to_string(),
            ));
            if verdict.everywhere && report.halt.is_none() {
                report.halt = Some((workload, verdict.failure));
            }
        }
        Ok(freed)
    }

    /// The health of the pods of each wanted workload, found by their controller owner.
    async fn pods_of(
        &self,
        namespace: &str,
        wanted: &HashSet<(WorkloadKind, String)>,
    ) -> Result<HashMap<(WorkloadKind, String), Vec<PodHealth>>> {
        let mut found: HashMap<(WorkloadKind, String), Vec<PodHealth>> = HashMap::new();
        let mut continue_token = None;
        let now = k8s_openapi::jiff::Timestamp::now();
        loop {
            let (pods, next) = self.api.pods_page(namespace, continue_token).await?;
            for pod in &pods {
                if let Some(owner) = owning_workload(pod).filter(|owner| wanted.contains(owner)) {
                    found
                        .entry(owner)
                        .or_default()
                        .push(PodHealth::of(pod, now));
                }
            }
            match next {
                Some(token) => continue_token = Some(token),
                None => return Ok(found),
            }
        }
    }

    /// Injects as many queued workloads as the limits allow: the namespace's, the cluster's,
    /// and one alone while no workload of the rollout has rolled out yet (the canary).
    #[allow(clippy::too_many_arguments)]
    async fn take_turns(
        &self,
        namespace: &str,
        desired: Desired<'_>,
        pacing: Pacing,
        queued: Vec<(WorkloadKind, InstrumentedResource)>,
        held: usize,
        settled: usize,
        trigger: &str,
        report: &mut SweepReport,
    ) {
        let wanted = match (pacing.halted || report.halt.is_some(), pacing.limit) {
            (true, _) => 0,
            (false, None) => queued.len(),
            (false, Some(_)) if settled == 0 => usize::from(held == 0),
            (false, Some(limit)) => limit.saturating_sub(held),
        }
        .min(queued.len());
        let granted = self.slots.grant(namespace, held, wanted);
        tracing::debug!(
            namespace,
            held,
            settled,
            queued = queued.len(),
            wanted,
            granted,
            "rollout turn"
        );
        let mut started = 0;
        for (kind, workload) in queued.iter().take(granted) {
            let object = match self.api.get(*kind, namespace, &workload.name).await {
                Ok(object) => object,
                Err(error) if error.is_not_found() => continue,
                Err(error) => {
                    tracing::warn!(
                        %error,
                        kind = kind.name(),
                        name = %workload.name,
                        "reading a workload for its turn failed"
                    );
                    report.failed += 1;
                    continue;
                }
            };
            let handled = self.handle(*kind, object, desired, trigger).await;
            report.record(workload, handled);
            started += usize::from(matches!(handled, Handled::Written { .. }));
        }
        self.slots.set(namespace, held + started);
        report.in_progress = held + started;
        report.pending = queued.len().saturating_sub(granted);
    }

    async fn handle(
        &self,
        kind: WorkloadKind,
        mut object: Value,
        desired: Desired<'_>,
        trigger: &str,
    ) -> Handled {
        for attempt in 1..=WRITE_ATTEMPTS {
            let workload = reference(kind, &object);
            let mut candidate = object.clone();
            let change = match apply(&mut candidate, kind, desired) {
                Outcome::Unchanged(reason) => {
                    if reason.is_problem() {
                        let adding = matches!(desired, Desired::Injected { .. });
                        self.events
                            .could_not(&workload, adding, &reason, trigger)
                            .await;
                    }
                    return Handled::Unchanged {
                        instrumented: counts_as_instrumented(&object, kind),
                    };
                }
                Outcome::Changed(change) => change,
            };
            match self.api.replace(kind, &candidate).await {
                Ok(stored) => {
                    self.metrics.workload_written(kind, &change);
                    self.events.changed(&workload, &change, trigger).await;
                    return Handled::Written {
                        instrumented: counts_as_instrumented(&stored, kind),
                    };
                }
                Err(error) if error.is_conflict() && attempt < WRITE_ATTEMPTS => {
                    tracing::debug!(
                        kind = kind.name(),
                        name = %workload.name,
                        attempt,
                        "conflict, rereading"
                    );
                    match self
                        .api
                        .get(kind, &workload.namespace, &workload.name)
                        .await
                    {
                        Ok(fresh) => object = fresh,
                        Err(error) if error.is_not_found() => {
                            return Handled::Unchanged {
                                instrumented: false,
                            }
                        }
                        Err(error) => {
                            tracing::warn!(
                                %error,
                                kind = kind.name(),
                                name = %workload.name,
                                "rereading failed"
                            );
                            return Handled::Failed;
                        }
                    }
                }
                Err(error) if error.is_not_found() => {
                    return Handled::Unchanged {
                        instrumented: false,
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        %error,
                        kind = kind.name(),
                        name = %workload.name,
                        "writing the workload failed"
                    );
                    self.metrics.write_failed(kind);
                    return Handled::Failed;
                }
            }
        }
        Handled::Failed
    }
}

impl SweepReport {
    fn record(&mut self, workload: &InstrumentedResource, handled: Handled) {
        if let Handled::Written { instrumented } = handled {
            self.writes += 1;
            if instrumented {
                self.reinjected.insert(workload.uid.clone());
            }
        }
        match handled {
            Handled::Unchanged { instrumented } | Handled::Written { instrumented }
                if instrumented =>
            {
                self.instrumented.push(workload.clone());
            }
            Handled::Failed => self.failed += 1,
            _ => {}
        }
    }
}

fn rolled_back(
    workload: &InstrumentedResource,
    failure: Failure,
    at: String,
) -> RolledBackResource {
    RolledBackResource {
        api_version: workload.api_version.clone(),
        kind: workload.kind.clone(),
        name: workload.name.clone(),
        reason: failure.reason,
        container: failure.container,
        exit_code: failure.exit_code,
        message: failure.message,
        rolled_back_at: at,
    }
}

fn is_paced(desired: Desired<'_>) -> bool {
    matches!(desired, Desired::Injected { pacing, .. } if pacing.limit.is_some() || pacing.halted)
}

/// What `desired` makes of the object, on a copy.
fn outcome(object: &Value, kind: WorkloadKind, desired: Desired<'_>) -> Outcome {
    apply(&mut object.clone(), kind, desired)
}

/// `desired` applied to the object in place.
fn apply(object: &mut Value, kind: WorkloadKind, desired: Desired<'_>) -> Outcome {
    match desired {
        Desired::Injected {
            inject_uninjected: false,
            ..
        } if !inspect(object, kind).injected => Outcome::Unchanged(Reason::NotInjected),
        Desired::Injected { config, .. } => reconcile(object, kind, config, Operation::Update),
        Desired::Removed => remove(object, kind, Operation::Update),
        Desired::RolledBack { config, failure } => {
            let now = k8s_openapi::jiff::Timestamp::now().to_string();
            roll_back(object, kind, config, failure, &now)
        }
    }
}

/// The Deployment, StatefulSet or DaemonSet a pod belongs to, from its controller reference (a
/// Deployment's pods are owned by its ReplicaSet `<deployment>-<pod-template-hash>`).
fn owning_workload(pod: &Pod) -> Option<(WorkloadKind, String)> {
    let owner = pod
        .metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|owner| owner.controller == Some(true))?;
    match owner.kind.as_str() {
        "ReplicaSet" => {
            let hash = pod.metadata.labels.as_ref()?.get("pod-template-hash")?;
            let deployment = owner.name.strip_suffix(hash)?.strip_suffix('-')?;
            Some((WorkloadKind::Deployment, deployment.to_owned()))
        }
        "StatefulSet" => Some((WorkloadKind::StatefulSet, owner.name.clone())),
        "DaemonSet" => Some((WorkloadKind::DaemonSet, owner.name.clone())),
        _ => None,
    }
}

/// Instrumented workloads are the ones a person manages: objects whose controller is
/// instrumented in their stead are not listed twice.
fn counts_as_instrumented(object: &Value, kind: WorkloadKind) -> bool {
    let inspection = inspect(object, kind);
    inspection.injected && inspection.managed_by.is_none()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_cluster_limit_holds_across_namespaces() {
        let slots = RolloutSlots::new(Some(5));
        assert_eq!(slots.grant("a", 1, 3), 3, "a holds 4");
        assert_eq!(slots.grant("b", 0, 3), 1, "only one left for b");
        assert_eq!(slots.grant("a", 4, 2), 0);
        slots.set("a", 0);
        assert_eq!(slots.grant("b", 1, 9), 4);
        slots.forget("b");
        assert_eq!(slots.grant("c", 0, 9), 5);
        assert_eq!(RolloutSlots::new(None).grant("a", 100, 7), 7);
    }

    #[test]
    fn pods_belong_to_the_workload_that_controls_them() {
        let pod = |owner: Value, hash: &str| -> Pod {
            serde_json::from_value(json!({"metadata": {"name": "p",
                "labels": {"pod-template-hash": hash},
                "ownerReferences": [owner]}}))
            .unwrap()
        };
        let owner = |kind: &str, name: &str, controller: bool| {
            json!({
                "apiVersion": "apps/v1",
                "kind": kind,
                "name": name,
                "uid": "u",
                "controller": controller
            })
        };
        assert_eq!(
            owning_workload(&pod(owner("ReplicaSet", "web-api-7d9f8", true), "7d9f8")),
            Some((WorkloadKind::Deployment, "web-api".into()))
        );
        assert_eq!(
            owning_workload(&pod(owner("StatefulSet", "db", true), "")),
            Some((WorkloadKind::StatefulSet, "db".into()))
        );
        assert_eq!(
            owning_workload(&pod(owner("ReplicaSet", "bare-rs", true), "other")),
            None,
            "a ReplicaSet of no Deployment"
        );
        assert_eq!(
            owning_workload(&pod(owner("DaemonSet", "agent", false), "")),
            None
        );
    }
}

#[cfg(test)]
mod sweep_tests {
    use super::*;
    use crate::fake_api::{self, conflict, deployment, failure, list, not_found, ok, Call, Reply};
    use crate::reconciler::Context;
    use http::Method;
    use serde_json::json;

    const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/shop/deployments";

    fn config() -> InjectionConfig {
        fake_api::injection_config()
    }

    fn injected(config: &InjectionConfig, pacing: Pacing) -> Desired<'_> {
        Desired::Injected {
            config,
            inject_uninjected: true,
            pacing,
        }
    }

    const ALL_AT_ONCE: Pacing = Pacing {
        limit: None,
        halted: false,
    };

    /// A list of any workload kind but Deployments: empty.
    fn other_kind_listed(call: &Call) -> Option<Reply> {
        let listed = call.method == Method::GET
            && ROLLOUT_KINDS
                .iter()
                .any(|kind| call.path.ends_with(&format!("/{}", kind.plural())));
        (listed && !call.path.ends_with("/deployments")).then(|| list(vec![], None))
    }

    /// The operator's context on a fake API server that lists no workload of another kind than
    /// Deployments and answers the rest with `answer`.
    fn serve_deployments(
        mut answer: impl FnMut(&Call) -> Reply + Send + 'static,
    ) -> (Context, fake_api::Calls) {
        let (client, calls) =
            fake_api::serve(move |call| other_kind_listed(call).unwrap_or_else(|| answer(call)));
        (fake_api::context(client), calls)
    }

    /// A written object as stored: its resourceVersion raised.
    fn stored(call: &Call) -> Reply {
        let mut object = call.body.clone();
        object["metadata"]["resourceVersion"] = json!("2");
        ok(object)
    }

    fn is_injected(object: &Value) -> bool {
        inspect(object, WorkloadKind::Deployment).injected
    }

    async fn sweep(ctx: &Context, namespace: Option<&str>, desired: Desired<'_>) -> SweepReport {
        ctx.sweeper()
            .sweep(namespace, desired, "a test")
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn every_page_of_a_list_is_followed_and_every_item_handled() {
        let pages = [
            (None, vec!["d0", "d1"], Some("p2")),
            (Some("p2"), vec!["d2", "d3"], Some("p3")),
            (Some("p3"), vec!["d4"], None),
        ];
        let (ctx, calls) = serve_deployments(move |call| match call.method {
            Method::GET if call.path == DEPLOYMENTS => {
                let (_, names, next) = pages
                    .iter()
                    .find(|(token, ..)| call.param("continue") == *token)
                    .expect("a token the server gave");
                let items = names.iter().map(|name| deployment("shop", name)).collect();
                list(items, *next)
            }
            Method::PUT => stored(call),
            _ => failure(500, "InternalError"),
        });
        let config = config();
        let report = sweep(&ctx, Some("shop"), injected(&config, ALL_AT_ONCE)).await;

        let listed = calls.with(&Method::GET, DEPLOYMENTS);
        let tokens: Vec<Option<&str>> = listed.iter().map(|call| call.param("continue")).collect();
        assert_eq!(tokens, [None, Some("p2"), Some("p3")]);
        assert!(listed.iter().all(|call| call.param("limit") == Some("50")));
        let written: HashSet<String> = calls
            .writes()
            .iter()
            .filter(|call| call.method == Method::PUT && is_injected(&call.body))
            .map(|call| call.path.rsplit('/').next().unwrap().to_owned())
            .collect();
        assert_eq!(written.len(), 5, "{written:?}");
        assert_eq!((report.writes, report.failed), (5, 0));
        let instrumented: Vec<&str> = report
            .instrumented
            .iter()
            .map(|w| w.name.as_str())
            .collect();
        assert_eq!(instrumented, ["d0", "d1", "d2", "d3", "d4"]);
        assert_eq!(report.reinjected.len(), 5);
    }

    #[tokio::test]
    async fn a_conflict_is_retried_on_the_object_read_again() {
        let mut writes = 0;
        let (ctx, calls) = serve_deployments(move |call| match call.method {
            Method::GET if call.path == DEPLOYMENTS => list(vec![deployment("shop", "web")], None),
            Method::GET => {
                let mut fresh = deployment("shop", "web");
                fresh["metadata"]["resourceVersion"] = json!("7");
                fresh["metadata"]["labels"] = json!({"team": "changed-meanwhile"});
                ok(fresh)
            }
            Method::PUT => {
                writes += 1;
                if writes == 1 {
                    conflict()
                } else {
                    stored(call)
                }
            }
            _ => failure(500, "InternalError"),
        });
        let config = config();
        let report = sweep(&ctx, Some("shop"), injected(&config, ALL_AT_ONCE)).await;

        let puts = calls.with(&Method::PUT, &format!("{DEPLOYMENTS}/web"));
        assert_eq!(puts.len(), 2);
        assert_eq!(
            calls
                .with(&Method::GET, &format!("{DEPLOYMENTS}/web"))
                .len(),
            1
        );
        assert_eq!(puts[0].body["metadata"]["resourceVersion"], "1");
        assert_eq!(
            puts[1].body["metadata"]["resourceVersion"], "7",
            "written on the fresh read"
        );
        assert_eq!(
            puts[1].body["metadata"]["labels"]["team"], "changed-meanwhile",
            "the concurrent change kept"
        );
        assert!(is_injected(&puts[1].body));
        assert_eq!(
            (report.writes, report.failed, report.instrumented.len()),
            (1, 0, 1)
        );
    }

    #[tokio::test]
    async fn a_workload_that_keeps_conflicting_is_given_up_after_the_attempt_limit() {
        let (ctx, calls) = serve_deployments(|call| match call.method {
            Method::GET if call.path == DEPLOYMENTS => list(vec![deployment("shop", "web")], None),
            Method::GET => ok(deployment("shop", "web")),
            Method::PUT => conflict(),
            _ => failure(500, "InternalError"),
        });
        let config = config();
        let report = sweep(&ctx, Some("shop"), injected(&config, ALL_AT_ONCE)).await;

        let web = format!("{DEPLOYMENTS}/web");
        assert_eq!(
            calls.with(&Method::PUT, &web).len(),
            WRITE_ATTEMPTS as usize
        );
        assert_eq!(
            calls.with(&Method::GET, &web).len(),
            WRITE_ATTEMPTS as usize - 1
        );
        assert_eq!((report.writes, report.failed), (0, 1));
        assert!(report.instrumented.is_empty());
    }

    #[tokio::test]
    async fn a_workload_deleted_meanwhile_is_neither_written_nor_failed() {
        let (ctx, calls) = serve_deployments(|call| match call.method {
            Method::GET if call.path == DEPLOYMENTS => list(
                vec![
                    deployment("shop", "gone"),
                    deployment("shop", "gone-on-reread"),
                ],
                None,
            ),
            Method::GET => not_found(),
            Method::PUT if call.path.ends_with("/gone") => not_found(),
            Method::PUT => conflict(),
            _ => failure(500, "InternalError"),
        });
        let config = config();
        let report = sweep(&ctx, Some("shop"), injected(&config, ALL_AT_ONCE)).await;
        assert_eq!(
            calls
                .with(&Method::PUT, &format!("{DEPLOYMENTS}/gone"))
                .len(),
            1
        );
        assert_eq!(
            calls
                .with(&Method::PUT, &format!("{DEPLOYMENTS}/gone-on-reread"))
                .len(),
            1
        );
        assert_eq!((report.writes, report.failed), (0, 0));
        assert!(report.instrumented.is_empty());
    }

    #[tokio::test]
    async fn any_other_write_failure_counts_as_failed_without_retrying() {
        let (ctx, calls) = serve_deployments(|call| match call.method {
            Method::GET if call.path == DEPLOYMENTS => list(vec![deployment("shop", "web")], None),
            _ => failure(422, "Invalid"),
        });
        let config = config();
        let report = sweep(&ctx, Some("shop"), injected(&config, ALL_AT_ONCE)).await;
        assert_eq!(
            calls
                .with(&Method::PUT, &format!("{DEPLOYMENTS}/web"))
                .len(),
            1
        );
        assert_eq!((report.writes, report.failed), (0, 1));
    }

    #[tokio::test]
    async fn a_paced_rollout_starts_with_one_canary_and_queues_the_rest() {
        let (ctx, calls) = serve_deployments(|call| match call.method {
            Method::GET if call.path == DEPLOYMENTS => list(
                ["a", "b", "c"]
                    .iter()
                    .map(|name| deployment("shop", name))
                    .collect(),
                None,
            ),
            Method::GET => ok(deployment("shop", call.path.rsplit('/').next().unwrap())),
            Method::PUT => stored(call),
            _ => failure(500, "InternalError"),
        });
        let config = config();
        let paced = Pacing {
            limit: Some(3),
            halted: false,
        };
        let report = sweep(&ctx, Some("shop"), injected(&config, paced)).await;
        let puts: Vec<Call> = calls.writes();
        assert_eq!(puts.len(), 1, "the canary alone: {puts:?}");
        assert_eq!(puts[0].path, format!("{DEPLOYMENTS}/a"));
        assert_eq!(
            (report.writes, report.in_progress, report.pending),
            (1, 1, 2)
        );

        let halted = Pacing {
            limit: Some(3),
            halted: true,
        };
        let report = sweep(&ctx, Some("shop"), injected(&config, halted)).await;
        assert_eq!(
            calls.writes().len(),
            1,
            "a halted rollout injects nothing more"
        );
        assert_eq!(report.writes, 0);
    }

    #[tokio::test]
    async fn removal_over_the_cluster_writes_only_what_carries_the_injection() {
        let carrying = fake_api::injected_deployment("shop", "injected");
        let (ctx, calls) = serve_deployments(move |call| match call.method {
            Method::GET if call.path == "/apis/apps/v1/deployments" => {
                list(vec![carrying.clone(), deployment("shop", "plain")], None)
            }
            Method::PUT => stored(call),
            _ => failure(500, "InternalError"),
        });
        let report = sweep(&ctx, None, Desired::Removed).await;
        let puts = calls.writes();
        assert_eq!(puts.len(), 1, "{puts:?}");
        assert_eq!(puts[0].path, format!("{DEPLOYMENTS}/injected"));
        assert!(!is_injected(&puts[0].body));
        assert_eq!((report.writes, report.failed), (1, 0));
        assert!(report.instrumented.is_empty());
    }

    #[test]
    fn maintaining_only_leaves_uninjected_workloads_alone() {
        let config = config();
        let maintain = Desired::Injected {
            config: &config,
            inject_uninjected: false,
            pacing: ALL_AT_ONCE,
        };
        let plain = deployment("shop", "plain");
        assert!(matches!(
            outcome(&plain, WorkloadKind::Deployment, maintain),
            Outcome::Unchanged(Reason::NotInjected)
        ));
        assert!(matches!(
            outcome(
                &plain,
                WorkloadKind::Deployment,
                injected(&config, ALL_AT_ONCE)
            ),
            Outcome::Changed(Change::Injected)
        ));
        assert!(!is_paced(injected(&config, ALL_AT_ONCE)));
        assert!(is_paced(injected(
            &config,
            Pacing {
                limit: Some(1),
                halted: false
            }
        )));
        assert!(is_paced(injected(
            &config,
            Pacing {
                limit: None,
                halted: true
            }
        )));
        assert!(!is_paced(Desired::Removed));
    }
}
