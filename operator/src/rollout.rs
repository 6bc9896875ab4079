//! A sweep over the workloads of a namespace (or of the cluster) that brings each to the
//! desired injection state with at most one write, retried on fresh state after a conflict.

use std::collections::HashSet;

use futures::{stream, StreamExt, TryStreamExt};
use lumigo_mutation::{
    inspect, reconcile, remove, InjectionConfig, Operation, Outcome, Reason, WorkloadKind,
};
use serde_json::Value;

use crate::crd::InstrumentedResource;
use crate::error::{Error, Result};
use crate::events::Events;
use crate::metrics::Metrics;
use crate::workloads::{reference, WorkloadApi, ROLLOUT_KINDS};

/// Attempts at writing one object before giving up for this sweep (a later one retries).
const WRITE_ATTEMPTS: u32 = 5;

#[derive(Clone, Copy)]
pub enum Desired<'a> {
    /// Injected with `config`; `inject_uninjected: false` only maintains workloads that carry
    /// an injection already (re-injection, opt-out cleaning) and leaves the others alone.
    Injected {
        config: &'a InjectionConfig,
        inject_uninjected: bool,
    },
    Removed,
}

pub struct Sweeper<'a> {
    pub api: &'a WorkloadApi,
    pub events: &'a Events,
    pub metrics: &'a Metrics,
    pub max_concurrent_writes: usize,
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
}

#[derive(Clone, Copy)]
enum Handled {
    Unchanged { instrumented: bool },
    Written { instrumented: bool },
    Failed,
}

impl Sweeper<'_> {
    pub async fn sweep(
        &self,
        namespace: Option<&str>,
        desired: Desired<'_>,
        trigger: &str,
    ) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        for kind in ROLLOUT_KINDS {
            let mut continue_token = None;
            loop {
                let (page, next) = self.api.list_page(kind, namespace, continue_token).await?;
                let results: Vec<(InstrumentedResource, Handled)> = stream::iter(page)
                    .map(|object| async move {
                        let workload = reference(kind, &object);
                        let handled = self.handle(kind, object, desired, trigger).await;
                        Ok::<_, Error>((workload, handled))
                    })
                    .buffer_unordered(self.max_concurrent_writes.max(1))
                    .try_collect()
                    .await?;
                for (workload, handled) in results {
                    if let Handled::Written { instrumented } = handled {
                        report.writes += 1;
                        if instrumented {
                            report.reinjected.insert(workload.uid.clone());
                        }
                    }
                    match handled {
                        Handled::Unchanged { instrumented } | Handled::Written { instrumented }
                            if instrumented =>
                        {
                            report.instrumented.push(workload)
                        }
                        Handled::Failed => report.failed += 1,
                        _ => {}
                    }
                }
                match next {
                    Some(token) => continue_token = Some(token),
                    None => break,
                }
            }
        }
        report.instrumented.sort();
        crate::memory::release_freed_memory();
        Ok(report)
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
            let outcome = match desired {
                Desired::Injected {
                    inject_uninjected: false,
                    ..
                } if !inspect(&object, kind).injected => Outcome::Unchanged(Reason::NotInjected),
                Desired::Injected { config, .. } => {
                    reconcile(&mut candidate, kind, config, Operation::Update)
                }
                Desired::Removed => remove(&mut candidate, kind, Operation::Update),
            };
            let change = match outcome {
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
                    tracing::debug!(kind = kind.name(), name = %workload.name, attempt, "conflict, rereading");
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
                            tracing::warn!(%error, kind = kind.name(), name = %workload.name, "rereading failed");
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
                    tracing::warn!(%error, kind = kind.name(), name = %workload.name, "writing the workload failed");
                    self.metrics.write_failed(kind);
                    return Handled::Failed;
                }
            }
        }
        Handled::Failed
    }
}

/// Instrumented workloads are the ones a person manages: objects whose controller is
/// instrumented in their stead are not listed twice.
fn counts_as_instrumented(object: &Value, kind: WorkloadKind) -> bool {
    let inspection = inspect(object, kind);
    inspection.injected && inspection.managed_by.is_none()
}
