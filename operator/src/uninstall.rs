//! `lumigo-operator uninstall`, what the chart's pre-delete hook runs: deletes every `Lumigo`
//! resource, lets the running operator clean each namespace through its finalizer, finishes
//! whatever it could not, and then removes any injection left anywhere. Running it twice is safe.

use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::crd::{Lumigo, FINALIZER};
use crate::error::Result;
use crate::reconciler::Context;
use crate::rollout::{Desired, SweepReport};

const TRIGGER: &str = "operator uninstall";

#[derive(Debug, Default)]
pub struct UninstallReport {
    pub resources_deleted: usize,
    /// Resources whose finalizer the operator did not run in time, cleaned here instead.
    pub resources_cleaned_here: usize,
    pub workloads_cleaned: usize,
}

pub async fn uninstall(
    ctx: &Context,
    wait_for_operator: Duration,
    operator_namespace: &str,
    lease: &str,
) -> Result<UninstallReport> {
    let mut report = UninstallReport::default();
    // First, so that the running operator stops creating what is deleted next.
    crate::onboarding::mark_uninstall(&ctx.client, operator_namespace, lease).await?;
    let lumigos: Api<Lumigo> = Api::all(ctx.client.clone());
    let existing = match lumigos.list(&Default::default()).await {
        Ok(list) => list.items,
        // The CRD is gone already (a second run): nothing to delete, only leftovers to clean.
        Err(kube::Error::Api(status)) if status.code == 404 => Vec::new(),
        Err(error) => return Err(error.into()),
    };
    crate::onboarding::delete_managed_secrets(&ctx.client, &existing).await?;
    for lumigo in &existing {
        let namespaced = namespaced_api(&ctx.client, lumigo);
        match namespaced
            .delete(&lumigo.name_any(), &DeleteParams::default())
            .await
        {
            Ok(_) => report.resources_deleted += 1,
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
    }

    let deadline = tokio::time::Instant::now() + wait_for_operator;
    let mut remaining = if existing.is_empty() {
        Vec::new()
    } else {
        remaining_now(&lumigos).await?
    };
    while !remaining.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        remaining = remaining_now(&lumigos).await?;
    }
    for lumigo in remaining {
        tracing::warn!(lumigo = %lumigo.name_any(), namespace = ?lumigo.namespace(), "the operator did not clean up in time; cleaning here");
        let sweep = ctx
            .sweeper()
            .sweep(lumigo.namespace().as_deref(), Desired::Removed, TRIGGER)
            .await?;
        report.workloads_cleaned += sweep.writes;
        let namespaced = namespaced_api(&ctx.client, &lumigo);
        let without_finalizer: Vec<String> = lumigo
            .finalizers()
            .iter()
            .filter(|f| f.as_str() != FINALIZER)
            .cloned()
            .collect();
        let patch = json!({"metadata": {"finalizers": without_finalizer, "resourceVersion": lumigo.resource_version()}});
        match namespaced
            .patch(
                &lumigo.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(error) => return Err(error.into()),
        }
        report.resources_cleaned_here += 1;
    }

    let SweepReport { writes, .. } = ctx.sweeper().sweep(None, Desired::Removed, TRIGGER).await?;
    report.workloads_cleaned += writes;
    Ok(report)
}

fn namespaced_api(client: &Client, lumigo: &Lumigo) -> Api<Lumigo> {
    Api::namespaced(client.clone(), &lumigo.namespace().unwrap_or_default())
}

async fn remaining_now(lumigos: &Api<Lumigo>) -> Result<Vec<Lumigo>> {
    match lumigos.list(&Default::default()).await {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(Vec::new()),
        Err(error) => Err(error.into()),
    }
}
