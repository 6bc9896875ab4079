//! The operator killed in the middle of rolling 200 workloads: after a restart it converges,
//! with every workload injected exactly once (one write each: generation 2).

mod support;

use std::time::Duration;

use kube::api::{Api, ListParams};
use lumigo_e2e::testing::{eventually, shared_control_plane};
use lumigo_mutation::WorkloadKind;
use serde_json::json;
use support::*;

const WORKLOADS: usize = 200;

async fn injected_count(client: &kube::Client, ns: &str) -> usize {
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), ns);
    deployments
        .list(&ListParams::default().labels("lumigo.auto-trace"))
        .await
        .unwrap()
        .items
        .len()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_operator_converges_after_restart() {
    let (cp, client) = with_crd(shared_control_plane()).await;
    let ns = cp.create_namespace("chaos", &[]).await.unwrap();
    for index in 0..WORKLOADS {
        let name = format!("svc-{index:03}");
        create_manifest(&client, &ns, WorkloadKind::Deployment, &name, 0).await;
    }
    create_token_secret(&client, &ns).await;

    // One write at a time, so that the kill lands in the middle of the rollout.
    let mut operator = start_operator(&cp, "0.1.0", &[("LUMIGO_MAX_CONCURRENT_WRITES", "1")]);
    create_default_lumigo(&client, &ns).await;
    eventually(
        "the rollout to be under way",
        Duration::from_secs(60),
        || async { (injected_count(&client, &ns).await >= 20).then_some(()) },
    )
    .await;
    operator.kill();
    let at_kill = injected_count(&client, &ns).await;
    assert!(
        at_kill < WORKLOADS,
        "the rollout finished before the kill ({at_kill}): nothing was proven"
    );
    println!("killed the operator with {at_kill}/{WORKLOADS} workloads injected");

    let _restarted = start_operator(&cp, "0.1.0", &[]);
    eventually(
        "convergence after the restart",
        Duration::from_secs(120),
        || async {
            (lumigo_status(&client, &ns, "lumigo").await?["instrumentedCount"] == json!(WORKLOADS))
                .then_some(())
        },
    )
    .await;
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), &ns);
    for deployment in deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
    {
        let name = deployment.metadata.name.clone().unwrap();
        assert_eq!(
            deployment.metadata.generation,
            Some(2),
            "{name} was written more than once"
        );
        let spec = deployment.spec.unwrap().template.spec.unwrap();
        let init = spec.init_containers.unwrap();
        assert_eq!(
            init.iter().filter(|c| c.name == "lumigo-injector").count(),
            1,
            "{name}"
        );
        let env = spec.containers[0].env.clone().unwrap();
        let preloads: Vec<_> = env.iter().filter(|e| e.name == "LD_PRELOAD").collect();
        assert_eq!(preloads.len(), 1, "{name}");
        assert_eq!(
            preloads[0].value.as_deref(),
            Some("/opt/lumigo/injector/lumigo_injector.so /usr/lib/libjemalloc.so"),
            "{name}"
        );
    }
}
