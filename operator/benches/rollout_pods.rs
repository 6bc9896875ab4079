//! A rollout of real pods on the real node, paced against all at once: 100 one-replica
//! Deployments already serving, then a `Lumigo` resource. Prints the time until every Deployment
//! is rolled out with the injection, the peak number of pods not Ready and of Deployments
//! starting at once, and the Deployments left without a Ready pod at some moment (measured from
//! the pods). Needs root and the image inputs: `just operator::bench-rollout-pods`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use lumigo_e2e::testing::{eventually, shared_cluster};
use lumigo_mutation::WorkloadKind;
use lumigo_operator::workload_health::rolled_out;
use support::node_rollout::{deployment, load_images, PodSampler, SMALL_AUTOTRACE};
use support::*;

const DEPLOYMENTS: usize = 100;
const WAIT: Duration = Duration::from_secs(900);

async fn rolled_out_count(client: &kube::Client, namespace: &str, injected: bool) -> usize {
    let api = lumigo_operator::workloads::WorkloadApi::new(client.clone());
    let mut count = 0;
    let mut token = None;
    loop {
        let (page, next) = api
            .list_page(WorkloadKind::Deployment, Some(namespace), token)
            .await
            .unwrap();
        count += page
            .iter()
            .filter(|d| rolled_out(WorkloadKind::Deployment, d))
            .filter(|d| !injected || d["spec"]["template"]["spec"]["volumes"].is_array())
            .count();
        match next {
            Some(next) => token = Some(next),
            None => return count,
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (shared, client) = with_crd(shared_cluster()).await;
    let cluster = shared.as_ref();
    let cp = cluster.control_plane();
    load_images(cluster);
    println!("{DEPLOYMENTS} one-replica Deployments, the injection rolled in by the operator:");
    for (mode, limit) in [("all at once", "0"), ("paced (default 10)", "10")] {
        let namespace = format!("bench-{}", if limit == "0" { "all" } else { "paced" });
        cp.run_kubectl(&["create", "namespace", &namespace], None)
            .unwrap();
        create_token_secret(&client, &namespace).await;
        let api: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
        let names: BTreeSet<String> = (0..DEPLOYMENTS).map(|i| format!("svc-{i:03}")).collect();
        for name in &names {
            api.create(
                &PostParams::default(),
                &serde_json::from_value(deployment(name, None)).unwrap(),
            )
            .await
            .unwrap();
        }
        eventually("the Deployments to serve", WAIT, || async {
            (rolled_out_count(&client, &namespace, false).await == DEPLOYMENTS).then_some(())
        })
        .await;
        let operator = start_operator(
            cp,
            "0.1.0",
            &[
                ("LUMIGO_INJECTOR_IMAGE", SMALL_AUTOTRACE),
                ("LUMIGO_ROLLOUT_MAX_IN_PROGRESS", limit),
                ("LUMIGO_ROLLOUT_MAX_IN_PROGRESS_CLUSTER", "0"),
            ],
        );
        let sampler = PodSampler::start(&client, &namespace, names);
        let started = Instant::now();
        create_default_lumigo(&client, &namespace).await;
        eventually("every Deployment rolled out injected", WAIT, || async {
            (rolled_out_count(&client, &namespace, true).await == DEPLOYMENTS).then_some(())
        })
        .await;
        let took = started.elapsed();
        let sampled = sampler.stop();
        println!(
            "  {mode:<20} {:>6.1} s to roll {DEPLOYMENTS} pods; at most {:>3} pods not Ready and \
             {:>3} Deployments starting at once; {} Deployments without a Ready pod at some \
             moment",
            took.as_secs_f64(),
            sampled.peak_not_ready,
            sampled.peak_restarting,
            sampled.down.len()
        );
        // The resource goes first, while its operator runs: its finalizer would hold the
        // namespace's deletion otherwise.
        let started = Instant::now();
        delete_lumigo(&client, &namespace, "lumigo", WAIT).await;
        println!(
            "  {:<20} {:>6.1} s to remove the injection from them (the pods restart in the \
             background)",
            "",
            started.elapsed().as_secs_f64()
        );
        drop(operator);
        delete_namespace(cp, &client, &namespace, WAIT).await;
    }
}
