//! The `run` command: probes first, then leadership, then the controller; it exits when
//! leadership is lost, so a standby replica takes over from a clean start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kube::Client;

use kube::runtime::events::Reporter;

use crate::admission::compile::PolicyCompiler;
use crate::admission::{self, AdmissionOptions, TlsOptions};
use crate::cli::{AdmissionEngine, RunArgs};
use crate::error::Result;
use crate::events::Events;
use crate::events::CONTROLLER_NAME;
use crate::health::{self, Probes};
use crate::leader::LeaderElection;
use crate::metrics::Metrics;
use crate::onboarding::{Onboarding, Selection};
use crate::reconciler::{self, Context};
use crate::rollout::{limit, RolloutSettings, RolloutSlots};
use crate::telemetry_proxy::{ProxyLocation, ProxyReader};
use crate::tracing_state::TracingSettings;
use crate::tracing_watch::TracingWatch;
use crate::workloads::WorkloadApi;

pub fn context(
    client: Client,
    injection: &crate::cli::InjectionArgs,
    instance: Option<String>,
    kubewarden_module: Option<String>,
    tracing: TracingWatch,
) -> Context {
    Context {
        tracing,
        client: client.clone(),
        operator: injection.operator_settings(),
        workloads: WorkloadApi::new(client.clone()),
        events: Events::new(client, instance),
        metrics: Arc::new(Metrics::default()),
        max_concurrent_writes: injection.max_concurrent_writes,
        kubewarden_module,
        rollout: RolloutSettings::from_args(&injection.rollout),
        slots: RolloutSlots::new(limit(injection.rollout.rollout_max_in_progress_cluster)),
        failures: Default::default(),
    }
}

/// Runs the operator; `compiler` says where the built-in webhook's policy module is compiled.
pub async fn run(args: RunArgs, compiler: PolicyCompiler) -> Result<()> {
    let client = Client::try_default().await?;
    let kubewarden_module = (args.admission_engine == AdmissionEngine::Kubewarden)
        .then(|| args.kubewarden_policy_module.clone());
    let ctx = Arc::new(context(
        client.clone(),
        &args.injection,
        Some(args.identity.clone()),
        kubewarden_module,
        tracing_watch(&args),
    ));
    let ready = Arc::new(AtomicBool::new(false));
    let probes = Probes {
        metrics: ctx.metrics.clone(),
        ready: ready.clone(),
    };
    let probe_server = tokio::spawn(health::serve(args.probe_address, probes));

    let election = LeaderElection::new(
        client.clone(),
        &args.namespace,
        &args.lease_name,
        &args.identity,
        args.lease_duration,
    );
    if args.leader_election {
        election.acquire().await?;
    }
    let (controller, store) =
        reconciler::controller(client.clone(), args.injection.rollout.reconcile_concurrency);
    ready.store(true, Ordering::Relaxed);
    tracing::info!(version = %args.injection.operator_version, "operator started");

    let admission_metrics = ctx.metrics.clone();
    let admission = async {
        if args.admission_engine != AdmissionEngine::Builtin {
            return std::future::pending().await;
        }
        let options = admission_options(&args, compiler, admission_metrics)?;
        admission::serve(
            options,
            store.clone(),
            args.injection.operator_settings(),
            client.clone(),
        )
        .await
        .map_err(|error| crate::Error::Admission(Box::new(error)))
    };
    let onboarding = async {
        match onboarding(&args) {
            Some(onboarding) => crate::onboarding::run(client.clone(), onboarding).await,
            None => std::future::pending().await,
        }
    };
    let controller_run = reconciler::run(ctx, controller, store.clone());
    tokio::select! {
        served = admission => served,
        () = controller_run => {
            tracing::info!("controller stopped");
            Ok(())
        }
        () = onboarding => Ok(()),
        lost = election.hold(), if args.leader_election => Err(lost),
        served = probe_server => {
            served.unwrap_or_else(|join| Err(crate::Error::Serve(std::io::Error::other(join))))
        }
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
) -> Result<AdmissionOptions> {
    let module = std::fs::read(&args.policy_module).map_err(|source| {
        crate::Error::Serve(std::io::Error::new(
            source.kind(),
            format!(
                "reading the policy module {}: {source}",
                args.policy_module.display()
            ),
        ))
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
    })
}

pub async fn uninstall(args: crate::cli::UninstallArgs) -> Result<()> {
    let client = Client::try_default().await?;
    let ctx = context(
        client,
        &args.injection,
        None,
        None,
        TracingWatch::disabled(),
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
