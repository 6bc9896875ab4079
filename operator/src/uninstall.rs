//! `lumigo-operator uninstall`, what the chart's pre-delete hook runs: deletes every `Lumigo`
//! resource, lets the running operator clean each namespace through its finalizer, finishes
//! whatever it could not, and then removes any injection left anywhere. Running it twice is safe.

use std::time::Duration;

use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::crd::{Lumigo, FINALIZER};
use crate::error::{not_found, Result};
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
        Err(error) if not_found(&error) => Vec::new(),
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
            Err(error) if not_found(&error) => {}
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
        tracing::warn!(
            lumigo = %lumigo.name_any(),
            namespace = ?lumigo.namespace(),
            "the operator did not clean up in time; cleaning here"
        );
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
        let patch = json!({
            "metadata": {
                "finalizers": without_finalizer,
                "resourceVersion": lumigo.resource_version()
            }
        });
        match namespaced
            .patch(
                &lumigo.name_any(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => {}
            Err(error) if not_found(&error) => {}
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
        Err(error) if not_found(&error) => Ok(Vec::new()),
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_api::{
        self, created, deployment, failure, injected_deployment, list, not_found, ok, Call, Calls,
        OPERATOR_NAMESPACE,
    };
    use crate::onboarding::{MANAGED_BY_INSTALL, MANAGED_SECRET, UNINSTALL_STARTED};
    use http::Method;
    use serde_json::Value;
    use std::sync::{Arc, Mutex};

    const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/lumigo-system/leases";
    const ALL_LUMIGOES: &str = "/apis/operator.lumigo.io/v1alpha1/lumigoes";

    fn lumigo_path(namespace: &str, name: &str) -> String {
        format!("/apis/operator.lumigo.io/v1alpha1/namespaces/{namespace}/lumigoes/{name}")
    }

    fn resource(namespace: &str, name: &str) -> Value {
        json!({
            "apiVersion": "operator.lumigo.io/v1alpha1", "kind": "Lumigo",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{namespace}"),
                "resourceVersion": "9", "finalizers": [FINALIZER, "other.example/keep"]},
            "spec": {"lumigoToken": {"secretRef": {"name": "lumigo-credentials", "key": "token"}}}
        })
    }

    /// What the fake API server holds, changed by the requests.
    #[derive(Default)]
    struct World {
        /// `None`: the CRD is gone.
        lumigos: Option<Vec<Value>>,
        /// Whether a deleted resource goes (an operator runs its finalizer) or stays.
        operator_runs: bool,
        /// Workloads of the whole cluster, listed by the sweeps.
        deployments: Vec<Value>,
        /// The leader lease exists.
        lease: bool,
    }

    fn serve(world: World) -> (Context, Calls, Arc<Mutex<World>>) {
        let world = Arc::new(Mutex::new(world));
        let state = world.clone();
        let (client, calls) = fake_api::serve(move |call| answer(&mut state.lock().unwrap(), call));
        (fake_api::context(client), calls, world)
    }

    fn answer(world: &mut World, call: &Call) -> fake_api::Reply {
        let path = call.path.as_str();
        let lease = format!("{LEASES}/lumigo-operator");
        match call.method {
            Method::GET if path == lease && world.lease => ok(
                json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "lumigo-operator", "namespace": OPERATOR_NAMESPACE,
                        "resourceVersion": "3"},
                    "spec": {"holderIdentity": "operator-0"}}),
            ),
            Method::GET if path == lease => not_found(),
            Method::PUT if path == lease => ok(call.body.clone()),
            Method::POST if path == LEASES => created(call.body.clone()),
            Method::GET if path == ALL_LUMIGOES => match &world.lumigos {
                Some(items) => list(items.clone(), None),
                None => not_found(),
            },
            Method::DELETE if path.contains("/lumigoes/") => {
                let Some(items) = world.lumigos.as_mut() else {
                    return not_found();
                };
                let name = path.rsplit('/').next().unwrap();
                let Some(index) = items.iter().position(|l| {
                    path == lumigo_path(l["metadata"]["namespace"].as_str().unwrap(), name)
                }) else {
                    return not_found();
                };
                let mut deleted = items[index].clone();
                deleted["metadata"]["deletionTimestamp"] = json!("2024-01-01T00:00:00Z");
                if world.operator_runs {
                    items.remove(index);
                } else {
                    items[index] = deleted.clone();
                }
                ok(deleted)
            }
            Method::PATCH if path.contains("/lumigoes/") => {
                let stored = world.lumigos.iter().flatten().find(|l| {
                    path == lumigo_path(
                        l["metadata"]["namespace"].as_str().unwrap(),
                        l["metadata"]["name"].as_str().unwrap(),
                    )
                });
                match stored {
                    Some(stored) => {
                        let mut patched = stored.clone();
                        patched["metadata"]["finalizers"] =
                            call.body["metadata"]["finalizers"].clone();
                        ok(patched)
                    }
                    None => not_found(),
                }
            }
            Method::GET if path.ends_with(&format!("/secrets/{MANAGED_SECRET}")) => ok(json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": MANAGED_SECRET,
                    "labels": {MANAGED_BY_INSTALL: OPERATOR_NAMESPACE}
                }
            })),
            Method::DELETE if path.ends_with(&format!("/secrets/{MANAGED_SECRET}")) => {
                ok(json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}))
            }
            Method::GET if path.ends_with("/deployments") => {
                let namespace = path
                    .strip_prefix("/apis/apps/v1/namespaces/")
                    .and_then(|rest| rest.split('/').next());
                let items = world
                    .deployments
                    .iter()
                    .filter(|d| namespace.is_none_or(|ns| d["metadata"]["namespace"] == ns))
                    .cloned()
                    .collect();
                list(items, None)
            }
            Method::GET
                if crate::workloads::ROLLOUT_KINDS
                    .iter()
                    .any(|kind| path.ends_with(&format!("/{}", kind.plural()))) =>
            {
                list(vec![], None)
            }
            Method::PUT if path.contains("/deployments/") => {
                let name = path.rsplit('/').next().unwrap();
                world.deployments.retain(|d| d["metadata"]["name"] != name);
                world.deployments.push(call.body.clone());
                ok(call.body.clone())
            }
            _ => failure(500, "UnexpectedRequest"),
        }
    }

    async fn run(ctx: &Context, wait: Duration) -> Result<UninstallReport> {
        uninstall(ctx, wait, OPERATOR_NAMESPACE, "lumigo-operator").await
    }

    fn workload_puts(calls: &Calls) -> Vec<Call> {
        calls
            .writes()
            .into_iter()
            .filter(|c| c.path.contains("/deployments/"))
            .collect()
    }

    #[tokio::test]
    async fn the_operator_cleans_through_its_finalizers_and_uninstall_sweeps_what_is_left() {
        let mut managed = resource("web", "lumigo");
        managed["metadata"]["labels"] = json!({MANAGED_BY_INSTALL: OPERATOR_NAMESPACE});
        let (ctx, calls, _) = serve(World {
            lumigos: Some(vec![resource("shop", "lumigo"), managed]),
            operator_runs: true,
            deployments: vec![
                injected_deployment("shop", "left-over"),
                deployment("shop", "plain"),
            ],
            lease: true,
        });
        let report = run(&ctx, Duration::from_secs(30)).await.unwrap();

        let marks = calls.with(&Method::PUT, &format!("{LEASES}/lumigo-operator"));
        assert_eq!(marks.len(), 1, "the running operator is told first");
        assert!(marks[0].body["metadata"]["annotations"][UNINSTALL_STARTED].is_string());
        assert_eq!(marks[0].body["metadata"]["resourceVersion"], "3");
        assert_eq!(
            calls
                .with(
                    &Method::DELETE,
                    &format!("/api/v1/namespaces/web/secrets/{MANAGED_SECRET}")
                )
                .len(),
            1,
            "the managed token Secret goes"
        );
        for namespace in ["shop", "web"] {
            assert_eq!(
                calls
                    .with(&Method::DELETE, &lumigo_path(namespace, "lumigo"))
                    .len(),
                1
            );
        }
        let puts = workload_puts(&calls);
        assert_eq!(puts.len(), 1, "only what carries the injection: {puts:?}");
        assert!(puts[0].path.ends_with("/left-over"));
        assert!(
            !lumigo_mutation::inspect(&puts[0].body, lumigo_mutation::WorkloadKind::Deployment)
                .injected
        );
        assert!(
            !calls.writes().iter().any(|c| c.method == Method::PATCH),
            "no finalizer removed by hand while the operator runs them"
        );
        assert_eq!(
            (
                report.resources_deleted,
                report.resources_cleaned_here,
                report.workloads_cleaned
            ),
            (2, 0, 1)
        );
    }

    #[tokio::test]
    async fn without_a_running_operator_it_cleans_each_namespace_and_releases_only_its_finalizer() {
        let (ctx, calls, world) = serve(World {
            lumigos: Some(vec![resource("shop", "lumigo")]),
            operator_runs: false,
            deployments: vec![
                injected_deployment("shop", "web"),
                injected_deployment("other", "api"),
            ],
            lease: true,
        });
        let report = run(&ctx, Duration::ZERO).await.unwrap();

        let released = calls.with(&Method::PATCH, &lumigo_path("shop", "lumigo"));
        assert_eq!(released.len(), 1);
        assert_eq!(
            released[0].body["metadata"]["finalizers"],
            json!(["other.example/keep"])
        );
        assert_eq!(
            released[0].body["metadata"]["resourceVersion"], "9",
            "on the version read"
        );
        let puts: Vec<String> = workload_puts(&calls).into_iter().map(|c| c.path).collect();
        assert_eq!(
            puts,
            [
                "/apis/apps/v1/namespaces/shop/deployments/web",
                "/apis/apps/v1/namespaces/other/deployments/api"
            ],
            "the namespace first, then the rest of the cluster"
        );
        assert!(world
            .lock()
            .unwrap()
            .deployments
            .iter()
            .all(
                |d| !lumigo_mutation::inspect(d, lumigo_mutation::WorkloadKind::Deployment)
                    .injected
            ));
        assert_eq!(
            (
                report.resources_deleted,
                report.resources_cleaned_here,
                report.workloads_cleaned
            ),
            (1, 1, 2)
        );
    }

    #[tokio::test]
    async fn a_second_run_finds_nothing_to_do_and_tolerates_what_is_gone() {
        // The CRD went with the first run, and so did the lease: neither is an error.
        let (ctx, calls, _) = serve(World {
            lumigos: None,
            operator_runs: true,
            deployments: vec![deployment("shop", "web")],
            lease: false,
        });
        for round in 1..=2 {
            let report = run(&ctx, Duration::from_secs(30)).await.unwrap();
            assert_eq!(
                (
                    report.resources_deleted,
                    report.resources_cleaned_here,
                    report.workloads_cleaned
                ),
                (0, 0, 0),
                "round {round}"
            );
        }
        let writes = calls.writes();
        assert!(
            writes
                .iter()
                .all(|c| c.method == Method::POST && c.path == LEASES),
            "only the uninstall marker is written: {writes:?}"
        );
        assert_eq!(writes.len(), 2);
        assert!(writes[0].body["metadata"]["annotations"][UNINSTALL_STARTED].is_string());
    }

    #[tokio::test]
    async fn a_resource_deleted_meanwhile_is_not_an_error() {
        let world = Arc::new(Mutex::new(World {
            lumigos: Some(vec![resource("shop", "lumigo")]),
            operator_runs: false,
            deployments: vec![],
            lease: true,
        }));
        // Gone between the list and its deletion, and between the wait and the release.
        let (client, calls) = fake_api::serve(move |call| {
            let mut world = world.lock().unwrap();
            match call.method {
                Method::DELETE if call.path.contains("/lumigoes/") => not_found(),
                Method::PATCH if call.path.contains("/lumigoes/") => {
                    world.lumigos = Some(vec![]);
                    not_found()
                }
                _ => answer(&mut world, call),
            }
        });
        let report = run(&fake_api::context(client), Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(
            calls
                .with(&Method::DELETE, &lumigo_path("shop", "lumigo"))
                .len(),
            1
        );
        assert_eq!(
            calls
                .with(&Method::PATCH, &lumigo_path("shop", "lumigo"))
                .len(),
            1
        );
        assert_eq!(report.resources_deleted, 0, "its deletion answered 404");
        assert_eq!(report.resources_cleaned_here, 1, "its release answered 404");
    }

    #[tokio::test]
    async fn other_failures_stop_the_uninstall() {
        let (client, _) = fake_api::serve(|call| {
            if call.path == ALL_LUMIGOES {
                failure(403, "Forbidden")
            } else if call.method == Method::GET {
                not_found()
            } else {
                created(call.body.clone())
            }
        });
        let error = run(&fake_api::context(client), Duration::ZERO)
            .await
            .unwrap_err();
        assert!(
            matches!(&error, crate::Error::Kube(kube::Error::Api(s)) if s.code == 403),
            "{error}"
        );
    }
}
