//! The `run` command: probes first, then leadership, then the controller; it exits when
//! leadership is lost, so a standby replica takes over from a clean start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use kube::Client;

use crate::cli::{AdmissionEngine, RunArgs};
use crate::error::Result;
use crate::events::Events;
use crate::health::{self, Probes};
use crate::leader::LeaderElection;
use crate::metrics::Metrics;
use crate::reconciler::{self, Context};
use crate::workloads::WorkloadApi;

pub fn context(
    client: Client,
    injection: &crate::cli::InjectionArgs,
    instance: Option<String>,
    kubewarden_module: Option<String>,
) -> Context {
    Context {
        client: client.clone(),
        operator: injection.operator_settings(),
        workloads: WorkloadApi::new(client.clone()),
        events: Events::new(client, instance),
        metrics: Arc::new(Metrics::default()),
        max_concurrent_writes: injection.max_concurrent_writes,
        kubewarden_module,
    }
}

pub async fn run(args: RunArgs) -> Result<()> {
    let client = Client::try_default().await?;
    let kubewarden_module =
        (args.admission_engine == AdmissionEngine::Kubewarden).then(|| args.kubewarden_policy_module.clone());
    let ctx = Arc::new(context(client.clone(), &args.injection, Some(args.identity.clone()), kubewarden_module));
    let ready = Arc::new(AtomicBool::new(false));
    let probes = Probes { metrics: ctx.metrics.clone(), ready: ready.clone() };
    let probe_server = tokio::spawn(health::serve(args.probe_address, probes));

    let election = LeaderElection::new(client.clone(), &args.namespace, &args.lease_name, &args.identity, args.lease_duration);
    if args.leader_election {
        election.acquire().await?;
    }
    let (controller, store) = reconciler::controller(client);
    ready.store(true, Ordering::Relaxed);
    tracing::info!(version = %args.injection.operator_version, "operator started");

    let controller_run = reconciler::run(ctx, controller, store);
    tokio::select! {
        () = controller_run => {
            tracing::info!("controller stopped");
            Ok(())
        }
        lost = election.hold(), if args.leader_election => Err(lost),
        served = probe_server => {
            served.unwrap_or_else(|join| Err(crate::Error::Serve(std::io::Error::other(join))))
        }
    }
}

pub async fn uninstall(args: crate::cli::UninstallArgs) -> Result<()> {
    let client = Client::try_default().await?;
    let ctx = context(client, &args.injection, None, None);
    let report = crate::uninstall::uninstall(&ctx, args.wait_for_operator).await?;
    tracing::info!(
        resources_deleted = report.resources_deleted,
        resources_cleaned_here = report.resources_cleaned_here,
        workloads_cleaned = report.workloads_cleaned,
        "uninstall finished"
    );
    Ok(())
}
