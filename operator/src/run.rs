//! The `run` command: probes first; the built-in webhook on every replica; then leadership and,
//! on the leader, the controller. It exits when leadership is lost, so that a standby replica
//! takes over and this one comes back from a clean start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;

use kube::runtime::events::Reporter;

use crate::admission::compile::PolicyCompiler;
use crate::admission::{self, AdmissionOptions, TlsOptions};
use crate::cli::{AdmissionEngine, RunArgs};
use crate::crd::InstrumentedResource;
use crate::delivery::{self, ClusterSupport, ImageVolumes};
use crate::error::Result;
use crate::events::{EventReason, Events, CONTROLLER_NAME};
use crate::health::{self, Probes};
use crate::leader::LeaderElection;
use crate::metrics::Metrics;
use crate::onboarding::{Onboarding, Selection};
use crate::reconciler::{self, Context};
use crate::rollout::{limit, RolloutSettings, RolloutSlots};
use crate::settings::ProtectedNamespaces;
use crate::telemetry_proxy::{ProxyLocation, ProxyReader};
use crate::tracing_state::TracingSettings;
use crate::tracing_watch::TracingWatch;
use crate::workloads::WorkloadApi;

pub fn context(
    client: Client,
    injection: &crate::cli::InjectionArgs,
    protected: ProtectedNamespaces,
    instance: Option<String>,
    kubewarden_module: Option<String>,
    tracing: TracingWatch,
    image_volumes: ClusterSupport,
) -> Context {
    Context {
        tracing,
        client: client.clone(),
        operator: injection.operator_settings(),
        protected,
        workloads: WorkloadApi::new(client.clone()),
        events: Events::new(client, instance),
        metrics: Arc::new(Metrics::default()),
        max_concurrent_writes: injection.max_concurrent_writes,
        kubewarden_module,
        rollout: RolloutSettings::from_args(&injection.rollout),
        slots: RolloutSlots::new(limit(injection.rollout.rollout_max_in_progress_cluster)),
        failures: Default::default(),
        image_volumes,
    }
}

/// Two clients of one configuration. A request gets its answer within `timeout`, so a hung
/// connection cannot stall a lease renewal or a reconcile. A watch is quiet for minutes by
/// design: it goes through the other client, and the watcher's own idle timeout cuts it off.
pub async fn api_clients(timeout: Duration) -> Result<(Client, Client)> {
    let config = kube::Config::infer().await?;
    let watches = Client::try_from(config.clone())?;
    let mut bounded = config;
    bounded.read_timeout = Some(timeout);
    // From when the request is written, not from when its pooled connection went idle.
    bounded.reset_reader_on_write = true;
    Ok((Client::try_from(bounded)?, watches))
}

/// Runs the operator; `compiler` says where the built-in webhook's policy module is compiled.
/// Every replica serves admission; the one holding the lease also reconciles. It exits when it
/// loses the lease, so that it comes back as a standby from a clean start.
pub async fn run(args: RunArgs, compiler: PolicyCompiler) -> Result<()> {
    let (client, watches) = api_clients(args.api_timeout).await?;
    let kubewarden_module = (args.admission_engine == AdmissionEngine::Kubewarden)
        .then(|| args.kubewarden_policy_module.clone());
    // Only the leader drives the node watch (through the controller), so standbys watch nothing.
    let (image_volumes, delivery_changes) = delivery::watch_nodes(client.clone(), watches.clone());
    let ctx = Arc::new(context(
        client.clone(),
        &args.injection,
        args.protected(),
        Some(args.identity.clone()),
        kubewarden_module,
        tracing_watch(&args),
        image_volumes,
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let probes = Probes {
        metrics: ctx.metrics.clone(),
        ready: ready.clone(),
    };
    let probe_server = tokio::spawn(health::serve(args.probe_address, probes));

    let admission = async {
        if args.admission_engine != AdmissionEngine::Builtin {
            // Kubewarden admits; this replica has nothing to get ready.
            ready.store(true, Ordering::Relaxed);
            return std::future::pending().await;
        }
        serve_admission(&args, compiler, &ctx, watches.clone(), &ready).await
    };
    let election = LeaderElection::new(
        client.clone(),
        &args.namespace,
        &args.lease_name,
        &args.identity,
        args.lease_duration,
    );
    let leading = async {
        if args.leader_election {
            election.acquire().await?;
        }
        let (controller, store) = reconciler::controller(
            watches.clone(),
            args.injection.rollout.reconcile_concurrency,
        );
        tracing::info!(version = %args.injection.operator_version, "operator started");
        let onboarding = async {
            match onboarding(&args) {
                Some(onboarding) => {
                    crate::onboarding::run(client.clone(), watches.clone(), onboarding).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = reconciler::run(
                ctx.clone(),
                controller,
                store,
                watches.clone(),
                delivery_changes,
            ) => {
                tracing::info!("controller stopped");
                Ok(())
            }
            () = onboarding => Ok(()),
            lost = election.hold(), if args.leader_election => Err(lost),
        }
    };
    tokio::select! {
        result = leading => result,
        never = admission => match never {},
        served = probe_server => {
            served.unwrap_or_else(|join| Err(crate::Error::Serve(std::io::Error::other(join))))
        }
    }
}

/// Serves the built-in webhook for as long as the process runs. The replica is ready while the
/// webhook is bound and can answer. A failure (the policy module, the certificate, the port)
/// stops only admission: it is logged and recorded as an Event on this replica's Pod, and
/// retried with a growing pause, while the reconciler goes on (and its rollout still instruments
/// what admission let through unchanged).
async fn serve_admission(
    args: &RunArgs,
    compiler: PolicyCompiler,
    ctx: &Context,
    watches: Client,
    ready: &AtomicBool,
) -> std::convert::Infallible {
    // Its own cache: a standby replica runs no controller, and answers from this one.
    let lumigos = admission::lumigo_cache(watches);
    let mut pause = ADMISSION_RETRY_FIRST;
    loop {
        let attempt = async {
            let options = admission_options(args, compiler.clone(), ctx.metrics.clone())?;
            let server = admission::AdmissionServer::bind(
                options,
                lumigos.clone(),
                args.injection.operator_settings(),
                ctx.client.clone(),
            )
            .await?;
            ready.store(true, Ordering::Relaxed);
            pause = ADMISSION_RETRY_FIRST;
            server.run().await
        };
        let error = match attempt.await {
            Ok(()) => "the webhook stopped serving".to_owned(),
            Err(error) => error.to_string(),
        };
        ready.store(false, Ordering::Relaxed);
        let note = format!(
            "the admission webhook is unavailable, new workloads are admitted unchanged (the \
             rollout still instruments them): {error}; retrying in {}s",
            pause.as_secs()
        );
        tracing::error!(%error, retry_in = ?pause, "the admission webhook is unavailable");
        ctx.events
            .on_resource(&own_pod(args), EventReason::AdmissionUnavailable, note)
            .await;
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(ADMISSION_RETRY_LONGEST);
    }
}

const ADMISSION_RETRY_FIRST: Duration = Duration::from_secs(2);
const ADMISSION_RETRY_LONGEST: Duration = Duration::from_secs(60);

/// This replica's Pod, which the chart names through `POD_NAME`.
fn own_pod(args: &RunArgs) -> InstrumentedResource {
    InstrumentedResource {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: args.identity.clone(),
        namespace: args.namespace.clone(),
        uid: String::new(),
        tracing: None,
    }
}

/// The install's monitored namespaces; `None` (and an error logged) when the selection cannot be
/// read: an unreadable value must neither create nor remove anything.
fn onboarding(args: &RunArgs) -> Option<Onboarding> {
    let selection = match Selection::parse(&args.onboarding.monitored_namespaces) {
        Ok(selection) => selection,
        Err(error) => {
            tracing::error!(%error, "monitored namespaces left as they are");
            return None;
        }
    };
    Some(Onboarding {
        selection,
        excluded: args
            .onboarding
            .excluded_namespaces
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(str::to_owned)
            .collect(),
        install_namespace: args.namespace.clone(),
        protected: args.protected(),
        token_secret: args
            .onboarding
            .token_secret
            .clone()
            .map(|name| (name, args.onboarding.token_secret_key.clone())),
        started: k8s_openapi::jiff::Timestamp::now(),
        // Read even without leader election: the uninstall marks it (and creates it if need be).
        lease: args.lease_name.clone(),
    })
}

fn tracing_watch(args: &RunArgs) -> TracingWatch {
    let reader = args
        .tracing
        .telemetry_proxy_selector
        .as_ref()
        .map(|selector| {
            ProxyReader::new(ProxyLocation {
                namespace: args.namespace.clone(),
                selector: selector.clone(),
                port: args.tracing.telemetry_proxy_metrics_port,
            })
        });
    let settings = TracingSettings {
        silence_window: args.tracing.no_traces_window,
    };
    TracingWatch::new(settings, reader, args.tracing.traces_check_interval)
}

fn admission_options(
    args: &RunArgs,
    compiler: PolicyCompiler,
    metrics: Arc<Metrics>,
) -> admission::Result<AdmissionOptions> {
    let module =
        std::fs::read(&args.policy_module).map_err(|source| admission::Error::ReadModule {
            path: args.policy_module.clone(),
            source,
        })?;
    let tls = if args.webhook_loopback {
        TlsOptions::for_loopback(
            &args.namespace,
            &args.webhook_secret,
            Some(&args.webhook_configuration),
        )
    } else {
        TlsOptions::for_service(
            &args.webhook_service,
            &args.namespace,
            &args.webhook_secret,
            &args.webhook_configuration,
        )
    };
    Ok(AdmissionOptions {
        listen: args.webhook_address,
        module,
        compiler,
        tls,
        deadline: args.evaluation_deadline,
        max_concurrent_evaluations: std::thread::available_parallelism().map_or(2, usize::from),
        reporter: Reporter {
            controller: CONTROLLER_NAME.into(),
            instance: Some(args.identity.clone()),
        },
        metrics,
        limits: args.webhook_limits.limits(),
        protected: args.protected(),
    })
}

pub async fn uninstall(args: crate::cli::UninstallArgs) -> Result<()> {
    let (client, _) = api_clients(args.api_timeout).await?;
    let ctx = context(
        client,
        &args.injection,
        ProtectedNamespaces::new(&args.namespace),
        None,
        None,
        TracingWatch::disabled(),
        // Removal takes out what each workload's record names, whatever the delivery.
        ClusterSupport::fixed(ImageVolumes::Unsupported(
            "not consulted by uninstall".into(),
        )),
    );
    let report = crate::uninstall::uninstall(
        &ctx,
        args.wait_for_operator,
        &args.namespace,
        &args.lease_name,
    )
    .await?;
    tracing::info!(
        resources_deleted = report.resources_deleted,
        resources_cleaned_here = report.resources_cleaned_here,
        workloads_cleaned = report.workloads_cleaned,
        "uninstall finished"
    );
    Ok(())
}
