//! The `Lumigo` controller: validates the resource and its Secret, rolls the injection into the
//! namespace's workloads, keeps the status current, and removes the injection on deletion.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{stream, Stream, StreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, ReplicationController, Secret};
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::finalizer::{finalizer, Event as FinalizerEvent};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{predicates, watcher, Predicate, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use lumigo_mutation::{Failure, InjectionConfig};

use crate::crd::{InstrumentedResource, Lumigo, RolloutHalt, RolloutStatus, FINALIZER};
use crate::delivery::{self, ClusterSupport, DeliveryChoice, DeliveryMode, DeliveryStatus};
use crate::error::{Error, Result};
use crate::events::{EventReason, Events};
use crate::metrics::Metrics;
use crate::rollout::{Desired, RolloutSettings, RolloutSlots, Sweeper};
use crate::settings::{
    delivery_choice, injection_config, instrumenting, rollout_halted, OperatorSettings,
    ProtectedNamespaces,
};
use crate::status::{next_status, Health, RolloutView};
use crate::token::check_secret_data;
use crate::tracing_watch::{self, TracingWatch};
use crate::workloads::WorkloadApi;

/// How soon a resource whose Secret is missing or wrong is looked at again: the operator does
/// not watch Secrets (that would need list access to every Secret of the cluster).
const SECRET_RECHECK: Duration = Duration::from_secs(5);
/// How soon a sweep that could not write every workload is retried.
const RETRY_FAILED_WRITES: Duration = Duration::from_secs(10);
/// A read-only safety net: a sweep that finds nothing to do writes nothing.
const RESYNC: Duration = Duration::from_secs(600);
/// The first retry of a failed reconcile, doubled on each further failure up to the longest.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const LONGEST_RETRY: Duration = Duration::from_secs(300);

pub struct Context {
    pub client: Client,
    pub operator: OperatorSettings,
    /// Namespaces never instrumented, whatever their resources say (admission skips them too).
    pub protected: ProtectedNamespaces,
    pub workloads: WorkloadApi,
    pub events: Events,
    pub metrics: Arc<Metrics>,
    pub max_concurrent_writes: usize,
    /// The module of the namespaces' Kubewarden AdmissionPolicies, when that engine admits.
    pub kubewarden_module: Option<String>,
    /// Whether the instrumented workloads' traces arrive.
    pub tracing: TracingWatch,
    pub rollout: RolloutSettings,
    /// Restarts in progress per namespace, for the cluster-wide limit.
    pub slots: RolloutSlots,
    /// Consecutive failed reconciles per resource uid, for the retries' backoff.
    pub failures: Mutex<HashMap<String, u32>>,
    /// Whether the cluster's pods can mount the injector image, for the payload delivery.
    pub image_volumes: ClusterSupport,
}

impl Context {
    pub fn sweeper(&self) -> Sweeper<'_> {
        Sweeper {
            api: &self.workloads,
            events: &self.events,
            metrics: &self.metrics,
            max_concurrent_writes: self.max_concurrent_writes,
            slots: &self.slots,
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures
            .lock()
            .expect("the failure counts are never poisoned: no code panics while holding them")
    }
}

/// The controller and the store of `Lumigo` resources it maintains (the admission webhook reads
/// its settings from the same store); at most `concurrency` resources are reconciled at once.
pub fn controller(client: Client, concurrency: u16) -> (Controller<Lumigo>, Store<Lumigo>) {
    let controller = Controller::new(Api::<Lumigo>::all(client), watcher::Config::default())
        .with_config(
            ControllerConfig::default()
                .debounce(Duration::from_millis(300))
                .concurrency(concurrency),
        );
    let store = controller.store();
    (controller, store)
}

/// Runs the controller until the stream ends (on shutdown), with the watch of what is really
/// traced beside it: the watch asks for a reconcile when a status must show a change.
/// Watches go through `watches`, the client without a read timeout.
pub async fn run(
    ctx: Arc<Context>,
    controller: Controller<Lumigo>,
    store: Store<Lumigo>,
    watches: Client,
    delivery_changes: impl Stream<Item = ()> + Send + 'static,
) {
    let (tracing_changes, tracing_requests) = futures::channel::mpsc::unbounded();
    let watch = tokio::spawn(tracing_watch::run(
        ctx.clone(),
        store.clone(),
        tracing_changes,
    ));
    controller
        .reconcile_on(stream::select(
            workload_changes(watches, store).boxed(),
            tracing_requests.boxed(),
        ))
        // Every resource decides its payload delivery again when the nodes' support changes.
        .reconcile_all_on(delivery_changes)
        .shutdown_on_signal()
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile request failed");
            }
        })
        .await;
    watch.abort();
}

/// The namespace of every object of kind `K` that is created, or whose generation or labels
/// change. Only metadata is watched, so status churn and large specs cost nothing.
pub(crate) fn changed_namespaces<K>(client: &Client) -> impl Stream<Item = String> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    watcher(
        Api::<PartialObjectMeta<K>>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .touched_objects()
    .predicate_filter(
        predicates::generation.combine(predicates::labels),
        Default::default(),
    )
    .filter_map(|object| async move { object.ok().and_then(|o| o.metadata.namespace) })
}

/// A workload created, changed or labelled (e.g. opted out) in a namespace with a `Lumigo`
/// resource asks for that resource's reconcile.
fn workload_changes(
    client: Client,
    store: Store<Lumigo>,
) -> impl Stream<Item = ObjectRef<Lumigo>> + Send {
    let namespaces = stream::select_all([
        changed_namespaces::<Deployment>(&client).boxed(),
        changed_namespaces::<DaemonSet>(&client).boxed(),
        changed_namespaces::<StatefulSet>(&client).boxed(),
        changed_namespaces::<ReplicaSet>(&client).boxed(),
        changed_namespaces::<CronJob>(&client).boxed(),
        changed_namespaces::<Job>(&client).boxed(),
        changed_namespaces::<ReplicationController>(&client).boxed(),
    ]);
    namespaces.flat_map(move |namespace| {
        let owners: Vec<ObjectRef<Lumigo>> = store
            .state()
            .iter()
            .filter(|lumigo| lumigo.namespace().as_deref() == Some(namespace.as_str()))
            .map(|lumigo| ObjectRef::from_obj(lumigo.as_ref()))
            .collect();
        stream::iter(owners)
    })
}

pub async fn reconcile(lumigo: Arc<Lumigo>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciled();
    let namespace = lumigo.namespace().ok_or(Error::NotNamespaced)?;
    let api: Api<Lumigo> = Api::namespaced(ctx.client.clone(), &namespace);
    let uid = lumigo.uid().unwrap_or_default();
    let action = finalizer(&api, FINALIZER, lumigo, |event| async {
        match event {
            FinalizerEvent::Apply(lumigo) => apply(&lumigo, &ctx, &api).await,
            FinalizerEvent::Cleanup(lumigo) => cleanup(&lumigo, &ctx, &api).await,
        }
    })
    .await
    .map_err(|error| Error::Finalizer(Box::new(error)))?;
    ctx.failures().remove(&uid);
    Ok(action)
}

/// Retries back off exponentially per resource, with jitter, so that many resources failing
/// together (an API server outage) do not come back in lockstep.
pub fn error_policy(lumigo: Arc<Lumigo>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.reconcile_failed();
    let failures = {
        let mut failures = ctx.failures();
        let count = failures
            .entry(lumigo.uid().unwrap_or_default())
            .or_default();
        *count = count.saturating_add(1);
        *count
    };
    let delay = retry_delay(failures, fastrand::f64());
    tracing::warn!(
        %error,
        lumigo = %lumigo.name_any(),
        namespace = ?lumigo.namespace(),
        failures,
        retry_in = ?delay,
        "reconcile failed; retrying"
    );
    Action::requeue(delay)
}

/// The wait before retry number `failures` (from 1), `jitter` in [0, 1) taking up to half off.
fn retry_delay(failures: u32, jitter: f64) -> Duration {
    let doubled = FIRST_RETRY.saturating_mul(1 << failures.saturating_sub(1).min(16));
    doubled.min(LONGEST_RETRY).mul_f64(1.0 - jitter / 2.0)
}

async fn apply(lumigo: &Lumigo, ctx: &Context, api: &Api<Lumigo>) -> Result<Action> {
    let namespace = lumigo.namespace().ok_or(Error::NotNamespaced)?;
    if ctx.protected.contains(&namespace) {
        let health = Health::Failing {
            reason: "ProtectedNamespace",
            message: format!(
                "namespace {namespace} is never instrumented: it belongs to the cluster or to the \
                 operator ({}), whose requests the webhook is never sent either; delete this \
                 resource",
                ctx.protected.names().join(", ")
            ),
        };
        write_status(lumigo, ctx, api, &health, None, None, None).await?;
        return Ok(Action::await_change());
    }
    if let Some(first) = earlier_resource_in_namespace(lumigo, api).await? {
        let health = Health::Failing {
            reason: "DuplicateResource",
            message: format!(
                "namespace {namespace} is already instrumented by the Lumigo resource {first}; \
                 only one is used per namespace, delete this one"
            ),
        };
        write_status(lumigo, ctx, api, &health, None, None, None).await?;
        return Ok(Action::await_change());
    }
    let delivery = delivery::resolve(
        delivery_choice(lumigo, &ctx.operator),
        &ctx.image_volumes.known().await,
    );
    let config = match check_secret(lumigo, ctx, &namespace).await? {
        Ok(()) => injection_config(lumigo, &ctx.operator, delivery.mode.into()),
        Err(message) => {
            stop_kubewarden_admission(ctx, &namespace).await?;
            let message = match lumigo.annotations().get(crate::onboarding::TOKEN_SOURCE) {
                Some(source) => format!(
                    "{message} (the operator copies this Secret from {source}, the install's \
                     lumigoToken: that Secret is missing or holds no token)"
                ),
                None => message,
            };
            let health = Health::Failing {
                reason: "InvalidToken",
                message,
            };
            write_status(lumigo, ctx, api, &health, None, None, None).await?;
            return Ok(Action::requeue(SECRET_RECHECK));
        }
    };
    let Some(config) = config else {
        stop_kubewarden_admission(ctx, &namespace).await?;
        let health = Health::Active {
            reason: "InjectionDisabled",
            message: "the token is valid; injection is disabled by spec.tracing.injection.enabled"
                .into(),
        };
        write_status(lumigo, ctx, api, &health, None, None, None).await?;
        return Ok(Action::await_change());
    };
    // Read fresh: the store may not have the halt the previous reconcile wrote yet, and a
    // stale view would start another canary.
    let fresh = api.get(&lumigo.name_any()).await?;
    let halted = rollout_halted(&fresh, &config);
    match &ctx.kubewarden_module {
        // Before the rollout, so that workloads created meanwhile are admitted injected.
        Some(module) if !halted => {
            crate::kubewarden::apply(&ctx.client, lumigo, &config, module).await?;
        }
        _ => stop_kubewarden_admission(ctx, &namespace).await?,
    }
    let injection = &lumigo.spec.tracing.injection;
    let pacing = ctx.rollout.pacing(
        injection.rollout.as_ref().and_then(|r| r.max_in_progress),
        halted,
    );
    let desired = Desired::Injected {
        config: &config,
        inject_uninjected: injection.inject_lumigo_into_existing_resources_on_creation,
        pacing,
    };
    let trigger = format!(
        "Lumigo resource {namespace}/{} (generation {})",
        lumigo.name_any(),
        lumigo.metadata.generation.unwrap_or_default()
    );
    // Admission delivers the payload as the status says: a new decision goes there before the
    // rollout re-injects, or workloads admitted meanwhile would be re-injected once more.
    if lumigo
        .decided_delivery()
        .is_some_and(|decided| decided.mode != delivery.mode)
    {
        api.patch_status(
            &lumigo.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"payloadDelivery": &delivery}})),
        )
        .await?;
    }
    let report = ctx
        .sweeper()
        .sweep(Some(&namespace), desired, &trigger)
        .await?;
    ctx.metrics
        .set_instrumented(&namespace, report.instrumented.len());
    let count = report.instrumented.len();
    let shown = lumigo
        .status
        .as_ref()
        .map_or(&[][..], |status| &status.instrumented_resources[..]);
    let listed = ctx.tracing.tracker().track(
        &namespace,
        report.instrumented,
        &report.reinjected,
        shown,
        k8s_openapi::jiff::Timestamp::now(),
    );
    let halt = match (&report.halt, halted) {
        (Some((workload, failure)), false) => {
            let halt = RolloutHalt {
                settings: config.fingerprint(),
                generation: lumigo.metadata.generation.unwrap_or_default(),
                workload: format!("{} {}", workload.kind, workload.name),
                reason: failure.reason.clone(),
                message: halt_message(workload, failure, &config, report.pending),
            };
            ctx.events
                .on_resource(
                    &resource_reference(lumigo),
                    EventReason::RolloutHalted,
                    halt.message.clone(),
                )
                .await;
            Some(halt)
        }
        (_, true) => fresh.status.as_ref().and_then(|s| s.rollout.halted.clone()),
        (None, false) => None,
    };
    let rollout = RolloutView {
        status: RolloutStatus {
            in_progress: report.in_progress as i64,
            pending: report.pending as i64,
            halted: halt,
        },
        rolled_back: report.rolled_back,
    };
    let health = Health::Active {
        reason: "Instrumenting",
        message: format!(
            "{count} workload{} instrumented",
            if count == 1 { "" } else { "s" }
        ),
    };
    announce_fallback(lumigo, ctx, &delivery).await;
    write_status(
        lumigo,
        ctx,
        api,
        &health,
        Some(listed),
        Some(rollout),
        Some(delivery),
    )
    .await?;
    if report.in_progress > 0 || (report.pending > 0 && !halted && report.halt.is_none()) {
        return Ok(Action::requeue(ctx.rollout.check_interval));
    }
    if report.failed > 0 {
        tracing::info!(
            namespace,
            failed = report.failed,
            "some workloads could not be written; retrying soon"
        );
        return Ok(Action::requeue(RETRY_FAILED_WRITES));
    }
    Ok(Action::requeue(RESYNC))
}

async fn cleanup(lumigo: &Lumigo, ctx: &Context, api: &Api<Lumigo>) -> Result<Action> {
    let namespace = lumigo.namespace().ok_or(Error::NotNamespaced)?;
    // A duplicate resource never instrumented anything: its deletion must not undo the work
    // of the one that did.
    let another_instruments = api
        .list(&Default::default())
        .await?
        .items
        .iter()
        .any(|other| other.uid() != lumigo.uid() && other.metadata.deletion_timestamp.is_none());
    if !another_instruments {
        stop_kubewarden_admission(ctx, &namespace).await?;
    }
    // The workloads of a namespace being deleted go with it: writing them only delays that.
    let namespace_terminating = match Api::<Namespace>::all(ctx.client.clone())
        .get_opt(&namespace)
        .await
    {
        Ok(found) => found.is_none_or(|ns| ns.metadata.deletion_timestamp.is_some()),
        // Not knowing (an RBAC without namespaces/get) must not stop the removal: write them.
        Err(error) => {
            tracing::debug!(%error, namespace, "could not read the namespace");
            false
        }
    };
    if lumigo
        .spec
        .tracing
        .injection
        .remove_lumigo_from_resources_on_deletion
        && !another_instruments
        && !namespace_terminating
    {
        let trigger = format!(
            "deletion of Lumigo resource {namespace}/{}",
            lumigo.name_any()
        );
        let report = ctx
            .sweeper()
            .sweep(Some(&namespace), Desired::Removed, &trigger)
            .await?;
        if report.failed > 0 {
            let message = format!(
                "{} workloads of {namespace} still carry the injection: they could not be \
                 written (see the LumigoCannotRemoveInstrumentation events and the operator's \
                 log)",
                report.failed
            );
            if !removal_timed_out(lumigo, ctx.rollout.removal_timeout) {
                return Err(Error::Incomplete(message));
            }
            // A finalizer that never lets go wedges the namespace's deletion and any uninstall:
            // the resource goes, and the event says how to finish by hand.
            tracing::warn!(
                namespace,
                failed = report.failed,
                "removal timed out; releasing the finalizer"
            );
            ctx.events
                .on_resource(
                    &resource_reference(lumigo),
                    EventReason::RemovalIncomplete,
                    format!(
                        "{message}; gave up after {:?}. Once they can be written, remove what is \
                         left with `lumigo-operator uninstall` (the chart's uninstall job) or by \
                         labelling each one lumigo.auto-trace=false while the operator runs",
                        ctx.rollout.removal_timeout
                    ),
                )
                .await;
        }
    }
    ctx.metrics.forget_namespace(&namespace);
    ctx.tracing.tracker().forget(&namespace);
    ctx.slots.forget(&namespace);
    Ok(Action::await_change())
}

/// Whether the resource has waited longer than `timeout` for its removal.
fn removal_timed_out(lumigo: &Lumigo, timeout: Duration) -> bool {
    lumigo
        .metadata
        .deletion_timestamp
        .as_ref()
        .is_some_and(|deleted| {
            let waited = k8s_openapi::jiff::Timestamp::now().duration_since(deleted.0);
            waited.as_secs() >= timeout.as_secs() as i64
        })
}

/// What a stopped rollout tells the user to fix.
fn halt_message(
    workload: &InstrumentedResource,
    failure: &Failure,
    config: &InjectionConfig,
    pending: usize,
) -> String {
    let fix = if failure.container == lumigo_mutation::names::INJECTOR_NAME {
        format!(
            "the nodes cannot pull the injector image {}: make it reachable (registry, pull \
             secret, mirror) or set the chart's injector image",
            config.injector_image
        )
    } else if failure.reason == "Unschedulable" {
        "no node has room for the injected pods (the init container lumigo-injector requests \
         cpu 5m and memory 16Mi, which become the pod's request when its containers request \
         less): add capacity, or set requests on the workloads"
            .to_owned()
    } else {
        "pods with the injection are refused at creation: allow the init container \
         lumigo-injector (its resources, security context and image) in the namespace's \
         LimitRange, ResourceQuota and admission policies"
            .to_owned()
    };
    format!(
        "the rollout stopped after its first workload, {} {}, failed: {failure}. It was rolled \
         back and {pending} other workloads were left untouched. To fix: {fix}. The rollout \
         resumes when the operator's settings or this resource's spec change",
        workload.kind, workload.name
    )
}

/// The resource as the subject of an event.
fn resource_reference(lumigo: &Lumigo) -> InstrumentedResource {
    InstrumentedResource {
        api_version: Lumigo::api_version(&()).into_owned(),
        kind: Lumigo::kind(&()).into_owned(),
        name: lumigo.name_any(),
        namespace: lumigo.namespace().unwrap_or_default(),
        uid: lumigo.uid().unwrap_or_default(),
        tracing: None,
    }
}

async fn stop_kubewarden_admission(ctx: &Context, namespace: &str) -> Result<()> {
    if ctx.kubewarden_module.is_some() {
        crate::kubewarden::delete(&ctx.client, namespace).await?;
    }
    Ok(())
}

/// The other `Lumigo` of the namespace that instruments it instead of this one, if any.
async fn earlier_resource_in_namespace(
    lumigo: &Lumigo,
    api: &Api<Lumigo>,
) -> Result<Option<String>> {
    let in_namespace = api.list(&Default::default()).await?.items;
    Ok(instrumenting(&in_namespace)
        .filter(|winner| winner.uid() != lumigo.uid())
        .map(ResourceExt::name_any))
}

/// `Ok(Err(message))` when the Secret cannot provide a token, saying what to fix.
async fn check_secret(
    lumigo: &Lumigo,
    ctx: &Context,
    namespace: &str,
) -> Result<Result<(), String>> {
    let reference = &lumigo.spec.lumigo_token.secret_ref;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    match secrets.get_opt(&reference.name).await? {
        None => Ok(Err(format!(
            "the Secret {} does not exist in namespace {namespace}; create it with the Lumigo \
             token under the key {:?}",
            reference.name, reference.key
        ))),
        Some(secret) => Ok(check_secret_data(
            &reference.name,
            &reference.key,
            secret.data.as_ref(),
        )),
    }
}

/// A warning on the resource when it (or the operator's setting) asks for an image volume the
/// cluster cannot mount, once per change of the decision (the status says it for as long as it
/// holds).
async fn announce_fallback(lumigo: &Lumigo, ctx: &Context, delivery: &DeliveryStatus) {
    let asked_for_image_volume =
        delivery_choice(lumigo, &ctx.operator) == DeliveryChoice::ImageVolume;
    if asked_for_image_volume
        && delivery.mode == DeliveryMode::InitContainer
        && lumigo.decided_delivery() != Some(delivery)
    {
        ctx.events
            .on_resource(
                &resource_reference(lumigo),
                EventReason::ImageVolumeUnsupported,
                delivery.message.clone(),
            )
            .await;
    }
}

/// Writes the status for `health`; each `None` keeps that part as it is.
async fn write_status(
    lumigo: &Lumigo,
    ctx: &Context,
    api: &Api<Lumigo>,
    health: &Health,
    instrumented: Option<Vec<InstrumentedResource>>,
    rollout: Option<RolloutView>,
    delivery: Option<DeliveryStatus>,
) -> Result<()> {
    let mut status = next_status(
        lumigo.status.as_ref(),
        lumigo.metadata.generation,
        health,
        instrumented,
        rollout,
    );
    if delivery.is_some() {
        status.payload_delivery = delivery;
    }
    if lumigo.status.as_ref() == Some(&status) {
        return Ok(());
    }
    api.patch_status(
        &lumigo.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({"status": status})),
    )
    .await?;
    ctx.metrics.status_written();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_with_jitter_up_to_a_ceiling() {
        assert_eq!(retry_delay(1, 0.0), FIRST_RETRY);
        assert_eq!(retry_delay(2, 0.0), FIRST_RETRY * 2);
        assert_eq!(retry_delay(4, 0.0), FIRST_RETRY * 8);
        assert_eq!(retry_delay(30, 0.0), LONGEST_RETRY);
        assert_eq!(retry_delay(u32::MAX, 0.0), LONGEST_RETRY);
        let jittered = retry_delay(3, 0.999);
        assert!(
            jittered > FIRST_RETRY * 2 && jittered < FIRST_RETRY * 4,
            "{jittered:?}"
        );
    }

    #[test]
    fn a_stopped_rollout_names_what_to_fix() {
        let workload = InstrumentedResource {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "web".into(),
            namespace: "shop".into(),
            uid: "u".into(),
            tracing: None,
        };
        let config: InjectionConfig = serde_json::from_value(serde_json::json!({
            "injectorImage": "registry.example.com/autotrace:1",
            "tokenSecret": {"name": "s", "key": "token"},
            "operatorVersion": "0.1.0"
        }))
        .unwrap();
        let pull = Failure {
            reason: "ImagePullBackOff".into(),
            container: lumigo_mutation::names::INJECTOR_NAME.into(),
            exit_code: None,
            message: String::new(),
        };
        let message = halt_message(&workload, &pull, &config, 7);
        assert!(message.contains("Deployment web"), "{message}");
        assert!(
            message.contains("registry.example.com/autotrace:1"),
            "{message}"
        );
        assert!(
            message.contains("7 other workloads were left untouched"),
            "{message}"
        );
        let refused = Failure {
            reason: "FailedCreate".into(),
            container: String::new(),
            exit_code: None,
            message: "exceeded quota".into(),
        };
        let message = halt_message(&workload, &refused, &config, 0);
        assert!(message.contains("LimitRange, ResourceQuota"));
    }
}

#[cfg(test)]
mod reconcile_tests {
    use super::*;
    use crate::fake_api::{self, deployment, failure, list, not_found, ok, Call, Calls, Reply};
    use base64::Engine;
    use http::Method;
    use serde_json::Value;

    const TOKEN: &str = "t_0123456789abcdef01234";

    fn lumigoes(namespace: &str) -> String {
        format!("/apis/operator.lumigo.io/v1alpha1/namespaces/{namespace}/lumigoes")
    }

    /// What the fake API server holds.
    #[derive(Clone)]
    struct World {
        namespace: String,
        /// The namespace's resources; the first is the one reconciled.
        lumigos: Vec<Value>,
        /// The token Secret's data, `None`: no Secret.
        token: Option<Value>,
        deployments: Vec<Value>,
        /// `None`: the namespace is gone.
        namespace_terminating: Option<bool>,
        /// How workload writes are answered.
        write_fails: bool,
    }

    impl World {
        fn new(namespace: &str, lumigo: Value) -> Self {
            let encoded = base64::engine::general_purpose::STANDARD.encode(TOKEN);
            World {
                namespace: namespace.into(),
                lumigos: vec![lumigo],
                token: Some(json!({"token": encoded})),
                deployments: Vec::new(),
                namespace_terminating: Some(false),
                write_fails: false,
            }
        }

        fn answer(&self, call: &Call) -> Reply {
            let ns = &self.namespace;
            let lumigo = format!("{}/lumigo", lumigoes(ns));
            let secret = format!("/api/v1/namespaces/{ns}/secrets/lumigo-credentials");
            let namespace = format!("/api/v1/namespaces/{ns}");
            let deployments = format!("/apis/apps/v1/namespaces/{ns}/deployments");
            let path = call.path.as_str();
            match call.method {
                Method::GET if path == lumigoes(ns) => list(self.lumigos.clone(), None),
                Method::GET if path == lumigo => ok(self.lumigos[0].clone()),
                Method::PATCH if path == format!("{lumigo}/status") => {
                    let mut patched = self.lumigos[0].clone();
                    patched["status"] = call.body["status"].clone();
                    ok(patched)
                }
                Method::PATCH if path == lumigo => ok(self.lumigos[0].clone()),
                Method::GET if path == secret => match &self.token {
                    Some(data) => ok(json!({
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {"name": "lumigo-credentials", "namespace": ns},
                        "data": data
                    })),
                    None => not_found(),
                },
                Method::GET if path == namespace => match self.namespace_terminating {
                    Some(terminating) => {
                        let mut object = json!({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": ns}});
                        if terminating {
                            object["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
                        }
                        ok(object)
                    }
                    None => not_found(),
                },
                Method::GET if path == deployments => list(self.deployments.clone(), None),
                Method::GET
                    if crate::workloads::ROLLOUT_KINDS
                        .iter()
                        .any(|kind| path.ends_with(&format!("/{}", kind.plural()))) =>
                {
                    list(vec![], None)
                }
                Method::PUT if path.starts_with(&deployments) && self.write_fails => {
                    failure(500, "InternalError")
                }
                Method::PUT if path.starts_with(&deployments) => ok(call.body.clone()),
                _ => failure(500, "UnexpectedRequest"),
            }
        }

        fn serve(self) -> (Arc<Context>, Calls) {
            let (client, calls) = fake_api::serve(move |call| self.answer(call));
            (Arc::new(fake_api::context(client)), calls)
        }
    }

    fn resource(namespace: &str, name: &str, spec: Value) -> Value {
        json!({
            "apiVersion": "operator.lumigo.io/v1alpha1", "kind": "Lumigo",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"),
                "resourceVersion": "5", "generation": 1,
                "creationTimestamp": "2024-01-01T00:00:00Z", "finalizers": [FINALIZER]},
            "spec": spec
        })
    }

    fn spec(injection: Value) -> Value {
        json!({"lumigoToken": {"secretRef": {"name": "lumigo-credentials", "key": "token"}},
            "tracing": {"injection": injection}})
    }

    fn lumigo(namespace: &str) -> Value {
        resource(namespace, "lumigo", spec(json!({})))
    }

    fn deleted(mut lumigo: Value, ago: Duration) -> Value {
        let at = k8s_openapi::jiff::Timestamp::now()
            - k8s_openapi::jiff::SignedDuration::try_from(ago).unwrap();
        lumigo["metadata"]["deletionTimestamp"] = json!(at.to_string());
        lumigo
    }

    async fn reconcile_once(world: &World, ctx: &Arc<Context>) -> Result<Action> {
        let object: Lumigo = serde_json::from_value(world.lumigos[0].clone()).unwrap();
        reconcile(Arc::new(object), ctx.clone()).await
    }

    /// The one status written, and its `Active` condition.
    fn written_status(calls: &Calls, namespace: &str) -> (Value, Value) {
        let writes = calls.with(
            &Method::PATCH,
            &format!("{}/lumigo/status", lumigoes(namespace)),
        );
        assert_eq!(writes.len(), 1, "one status write: {writes:?}");
        let status = writes[0].body["status"].clone();
        let active = status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Active")
            .unwrap()
            .clone();
        (status, active)
    }

    fn workload_requests(calls: &Calls) -> Vec<Call> {
        calls
            .all()
            .into_iter()
            .filter(|call| call.path.contains("/deployments"))
            .collect()
    }

    /// The JSON patch of the resource itself (the finalizer's).
    fn finalizer_patches(calls: &Calls, namespace: &str) -> Vec<Value> {
        calls
            .with(&Method::PATCH, &format!("{}/lumigo", lumigoes(namespace)))
            .into_iter()
            .map(|call| call.body)
            .collect()
    }

    #[tokio::test]
    async fn a_new_resource_first_gets_the_finalizer_and_nothing_else() {
        let mut new = lumigo("shop");
        new["metadata"]["finalizers"] = json!([]);
        let world = World::new("shop", new);
        let (ctx, calls) = world.clone().serve();
        let action = reconcile_once(&world, &ctx).await.unwrap();
        assert_eq!(
            action,
            Action::await_change(),
            "the patch's watch event reconciles next"
        );
        let patches = finalizer_patches(&calls, "shop");
        assert_eq!(patches.len(), 1);
        assert!(patches[0].to_string().contains(FINALIZER), "{}", patches[0]);
        assert_eq!(
            calls.all().len(),
            1,
            "no Secret read, no status: {:?}",
            calls.all()
        );
    }

    #[tokio::test]
    async fn a_protected_namespace_is_never_instrumented() {
        let world = World::new("kube-system", lumigo("kube-system"));
        let (ctx, calls) = world.clone().serve();
        let action = reconcile_once(&world, &ctx).await.unwrap();
        assert_eq!(action, Action::await_change());
        let (_, active) = written_status(&calls, "kube-system");
        assert_eq!(active["status"], "False");
        assert_eq!(active["reason"], "ProtectedNamespace");
        assert!(workload_requests(&calls).is_empty());
        assert!(
            !calls.all().iter().any(|c| c.path.contains("/secrets/")),
            "no token read"
        );
    }

    #[tokio::test]
    async fn a_second_resource_in_a_namespace_is_a_duplicate() {
        let mut world = World::new("shop", resource("shop", "lumigo", spec(json!({}))));
        world.lumigos[0]["metadata"]["creationTimestamp"] = json!("2024-06-01T00:00:00Z");
        world
            .lumigos
            .push(resource("shop", "first", spec(json!({}))));
        let (ctx, calls) = world.clone().serve();
        let action = reconcile_once(&world, &ctx).await.unwrap();
        assert_eq!(action, Action::await_change());
        let (_, active) = written_status(&calls, "shop");
        assert_eq!(active["reason"], "DuplicateResource");
        assert!(
            active["message"]
                .as_str()
                .unwrap()
                .contains("Lumigo resource first"),
            "{active}"
        );
        assert!(workload_requests(&calls).is_empty());
    }

    #[tokio::test]
    async fn a_missing_secret_is_an_invalid_token_looked_at_again_soon() {
        let mut world = World::new("shop", lumigo("shop"));
        world.token = None;
        world.deployments = vec![deployment("shop", "web")];
        let (ctx, calls) = world.clone().serve();
        let action = reconcile_once(&world, &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(SECRET_RECHECK));
        let (_, active) = written_status(&calls, "shop");
        assert_eq!(
            (&active["status"], &active["reason"]),
            (&json!("False"), &json!("InvalidToken"))
        );
        assert!(
            active["message"]
                .as_str()
                .unwrap()
                .contains("does not exist"),
            "{active}"
        );
        assert!(
            workload_requests(&calls).is_empty(),
            "nothing injected without a token"
        );
    }

    #[tokio::test]
    async fn a_malformed_token_is_an_invalid_token() {
        let mut world = World::new("shop", lumigo("shop"));
        world.token =
            Some(json!({"token": base64::engine::general_purpose::STANDARD.encode("not-a-token")}));
        let (ctx, calls) = world.clone().serve();
        assert_eq!(
            reconcile_once(&world, &ctx).await.unwrap(),
            Action::requeue(SECRET_RECHECK)
        );
        let (_, active) = written_status(&calls, "shop");
        assert_eq!(active["reason"], "InvalidToken");
        assert!(
            active["message"]
                .as_str()
                .unwrap()
                .contains("is not a Lumigo token"),
            "{active}"
        );
    }

    #[tokio::test]
    async fn disabled_injection_is_active_and_touches_no_workload() {
        let mut world = World::new(
            "shop",
            resource("shop", "lumigo", spec(json!({"enabled": false}))),
        );
        world.deployments = vec![deployment("shop", "web")];
        let (ctx, calls) = world.clone().serve();
        assert_eq!(
            reconcile_once(&world, &ctx).await.unwrap(),
            Action::await_change()
        );
        let (_, active) = written_status(&calls, "shop");
        assert_eq!(
            (&active["status"], &active["reason"]),
            (&json!("True"), &json!("InjectionDisabled"))
        );
        assert!(workload_requests(&calls).is_empty());
    }

    #[tokio::test]
    async fn an_unchanged_status_is_not_written_again() {
        let mut world = World::new(
            "shop",
            resource("shop", "lumigo", spec(json!({"enabled": false}))),
        );
        let (ctx, calls) = world.clone().serve();
        reconcile_once(&world, &ctx).await.unwrap();
        let (status, _) = written_status(&calls, "shop");
        world.lumigos[0]["status"] = status;
        let (ctx, calls) = world.clone().serve();
        reconcile_once(&world, &ctx).await.unwrap();
        assert!(calls.writes().is_empty(), "{:?}", calls.writes());
    }

    #[tokio::test]
    async fn enabled_injection_rolls_out_and_lists_what_it_instrumented() {
        let mut world = World::new("shop", lumigo("shop"));
        world.deployments = vec![deployment("shop", "web")];
        let (ctx, calls) = world.clone().serve();
        let action = reconcile_once(&world, &ctx).await.unwrap();
        assert_eq!(action, Action::requeue(RESYNC));
        let puts = calls.with(
            &Method::PUT,
            "/apis/apps/v1/namespaces/shop/deployments/web",
        );
        assert_eq!(puts.len(), 1);
        assert!(
            lumigo_mutation::inspect(&puts[0].body, lumigo_mutation::WorkloadKind::Deployment)
                .injected
        );
        let (status, active) = written_status(&calls, "shop");
        assert_eq!(
            (&active["status"], &active["reason"]),
            (&json!("True"), &json!("Instrumenting"))
        );
        assert_eq!(active["message"], "1 workload instrumented");
        assert_eq!(status["instrumentedCount"], 1);
        assert_eq!(status["instrumentedResources"][0]["name"], "web");
    }

    #[tokio::test]
    async fn a_cluster_that_mounts_images_gets_the_injector_image_as_a_volume() {
        let mut world = World::new("shop", lumigo("shop"));
        world.deployments = vec![deployment("shop", "web")];
        let answering = world.clone();
        let (client, calls) = fake_api::serve(move |call| answering.answer(call));
        let ctx = Arc::new(Context {
            image_volumes: ClusterSupport::fixed(delivery::ImageVolumes::Supported),
            ..fake_api::context(client)
        });
        reconcile_once(&world, &ctx).await.unwrap();
        let puts = calls.with(
            &Method::PUT,
            "/apis/apps/v1/namespaces/shop/deployments/web",
        );
        let pod_spec = &puts[0].body["spec"]["template"]["spec"];
        assert!(pod_spec["volumes"][0]["image"].is_object(), "{pod_spec:#}");
        assert!(pod_spec["initContainers"].is_null(), "{pod_spec:#}");
        let (status, _) = written_status(&calls, "shop");
        assert_eq!(status["payloadDelivery"]["mode"], "imageVolume");
        assert_eq!(status["payloadDelivery"]["reason"], "ImageVolumeSupported");
    }

    #[tokio::test]
    async fn an_image_volume_the_cluster_cannot_mount_falls_back_to_the_copy_and_says_why() {
        let asks = resource(
            "shop",
            "lumigo",
            spec(json!({"payloadDelivery": "imageVolume"})),
        );
        let mut world = World::new("shop", asks);
        world.deployments = vec![deployment("shop", "web")];
        let (ctx, calls) = world.clone().serve();
        reconcile_once(&world, &ctx).await.unwrap();
        let puts = calls.with(
            &Method::PUT,
            "/apis/apps/v1/namespaces/shop/deployments/web",
        );
        let pod_spec = &puts[0].body["spec"]["template"]["spec"];
        assert_eq!(pod_spec["initContainers"][0]["name"], "lumigo-injector");
        let (status, _) = written_status(&calls, "shop");
        let delivery = &status["payloadDelivery"];
        assert_eq!(delivery["mode"], "initContainer");
        assert_eq!(delivery["reason"], "ImageVolumeUnsupported");
        assert!(
            delivery["message"]
                .as_str()
                .is_some_and(|m| m.contains("cannot be honoured")),
            "{delivery:#}"
        );
        let warnings: Vec<Value> = calls
            .events()
            .into_iter()
            .map(|call| call.body)
            .filter(|event| event["reason"] == "LumigoImageVolumeUnsupported")
            .collect();
        assert_eq!(warnings.len(), 1, "{warnings:#?}");
        assert_eq!(warnings[0]["type"], "Warning");
    }

    #[tokio::test]
    async fn a_new_delivery_reaches_the_status_before_the_rollout_re_injects() {
        let mut decided = lumigo("shop");
        decided["status"] = json!({"payloadDelivery": {
            "mode": "imageVolume", "reason": "ImageVolumeSupported", "message": ""
        }});
        let mut world = World::new("shop", decided);
        world.deployments = vec![deployment("shop", "web")];
        let (ctx, calls) = world.clone().serve();
        reconcile_once(&world, &ctx).await.unwrap();
        let order: Vec<String> = calls
            .all()
            .into_iter()
            .filter(|call| call.method == Method::PUT || call.path.ends_with("/status"))
            .map(
                |call| match call.body["status"]["payloadDelivery"]["mode"].as_str() {
                    Some(mode) => format!("status {mode}"),
                    None => format!("{} {}", call.method, call.path),
                },
            )
            .collect();
        assert_eq!(
            order,
            [
                "status initContainer",
                "PUT /apis/apps/v1/namespaces/shop/deployments/web",
                "status initContainer"
            ]
        );
    }

    #[tokio::test]
    async fn workloads_that_could_not_be_written_are_retried_soon() {
        let mut world = World::new("shop", lumigo("shop"));
        world.deployments = vec![deployment("shop", "web")];
        world.write_fails = true;
        let (ctx, calls) = world.clone().serve();
        assert_eq!(
            reconcile_once(&world, &ctx).await.unwrap(),
            Action::requeue(RETRY_FAILED_WRITES)
        );
        let (status, _) = written_status(&calls, "shop");
        assert_eq!(status["instrumentedCount"], 0);
    }

    #[tokio::test]
    async fn a_failing_reconcile_backs_off_and_a_success_resets_it() {
        let world = World::new("shop", lumigo("shop"));
        let (client, _) = fake_api::serve(|_| failure(503, "ServiceUnavailable"));
        let ctx = Arc::new(fake_api::context(client));
        let error = reconcile_once(&world, &ctx).await.unwrap_err();
        assert!(matches!(error, Error::Finalizer(_)), "{error}");
        let object = Arc::new(serde_json::from_value::<Lumigo>(world.lumigos[0].clone()).unwrap());
        for expected in 1..=2 {
            let action = error_policy(object.clone(), &error, ctx.clone());
            assert_ne!(
                action,
                Action::await_change(),
                "a failure is always retried"
            );
            assert_eq!(ctx.failures().get("uid-lumigo"), Some(&expected));
        }
        // The same context, now answered: the count goes.
        let (healthy, _) = world.clone().serve();
        let ctx = Arc::new(Context {
            failures: Mutex::new(ctx.failures().clone()),
            ..fake_api::context(healthy.client.clone())
        });
        reconcile_once(&world, &ctx).await.unwrap();
        assert!(ctx.failures().is_empty());
    }

    #[tokio::test]
    async fn deletion_removes_the_injection_then_releases_the_finalizer() {
        let mut world = World::new("shop", deleted(lumigo("shop"), Duration::from_secs(1)));
        world.deployments = vec![fake_api::injected_deployment("shop", "web")];
        let (ctx, calls) = world.clone().serve();
        assert_eq!(
            reconcile_once(&world, &ctx).await.unwrap(),
            Action::await_change()
        );
        let puts = calls.with(
            &Method::PUT,
            "/apis/apps/v1/namespaces/shop/deployments/web",
        );
        assert_eq!(puts.len(), 1);
        assert!(
            !lumigo_mutation::inspect(&puts[0].body, lumigo_mutation::WorkloadKind::Deployment)
                .injected
        );
        let patches = finalizer_patches(&calls, "shop");
        assert_eq!(patches.len(), 1, "the finalizer released");
        assert!(
            patches[0].to_string().contains("\"remove\""),
            "{}",
            patches[0]
        );
        let order: Vec<Method> = calls.writes().into_iter().map(|call| call.method).collect();
        assert_eq!(
            order,
            [Method::PUT, Method::PATCH],
            "the removal before the release"
        );
    }

    #[tokio::test]
    async fn deletion_leaves_the_workloads_when_they_are_not_to_be_cleaned() {
        // Another resource instruments the namespace; the namespace itself is going or gone; the
        // resource asks to keep the injection.
        let mut another = World::new("shop", deleted(lumigo("shop"), Duration::from_secs(1)));
        another
            .lumigos
            .push(resource("shop", "other", spec(json!({}))));
        let mut terminating = World::new("shop", deleted(lumigo("shop"), Duration::from_secs(1)));
        terminating.namespace_terminating = Some(true);
        let mut gone = World::new("shop", deleted(lumigo("shop"), Duration::from_secs(1)));
        gone.namespace_terminating = None;
        let keep = World::new(
            "shop",
            deleted(
                resource(
                    "shop",
                    "lumigo",
                    spec(json!({"removeLumigoFromResourcesOnDeletion": false})),
                ),
                Duration::from_secs(1),
            ),
        );
        for (case, mut world) in [
            ("another", another),
            ("terminating", terminating),
            ("gone", gone),
            ("keep", keep),
        ] {
            world.deployments = vec![deployment("shop", "web")];
            let (ctx, calls) = world.clone().serve();
            assert_eq!(
                reconcile_once(&world, &ctx).await.unwrap(),
                Action::await_change(),
                "{case}"
            );
            assert!(
                workload_requests(&calls).is_empty(),
                "{case}: {:?}",
                workload_requests(&calls)
            );
            assert_eq!(
                finalizer_patches(&calls, "shop").len(),
                1,
                "{case}: the finalizer released"
            );
        }
    }

    #[tokio::test]
    async fn a_removal_that_cannot_write_keeps_the_finalizer_until_its_timeout() {
        let injected = |world: &mut World| {
            world.deployments = vec![fake_api::injected_deployment("shop", "web")];
            world.write_fails = true;
        };
        let mut recent = World::new("shop", deleted(lumigo("shop"), Duration::from_secs(1)));
        injected(&mut recent);
        let (ctx, calls) = recent.clone().serve();
        let error = reconcile_once(&recent, &ctx).await.unwrap_err();
        assert!(
            error.to_string().contains("still carry the injection"),
            "{error}"
        );
        assert!(
            finalizer_patches(&calls, "shop").is_empty(),
            "the finalizer kept"
        );

        let mut late = World::new("shop", deleted(lumigo("shop"), Duration::from_secs(301)));
        injected(&mut late);
        let (ctx, calls) = late.clone().serve();
        assert_eq!(
            reconcile_once(&late, &ctx).await.unwrap(),
            Action::await_change()
        );
        assert_eq!(
            finalizer_patches(&calls, "shop").len(),
            1,
            "released after the timeout"
        );
        let said = calls
            .events()
            .iter()
            .any(|event| event.body.to_string().contains("LumigoRemovalIncomplete"));
        assert!(said, "an event says what is left: {:?}", calls.events());
    }
}
