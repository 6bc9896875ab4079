//! Rollout figures on the real control plane, with the operator binary as a process:
//! time to inject and to remove 500 Deployments, API writes per workload, and the operator's
//! peak RSS while it watches and rolls 2,000 workloads. Run: `just operator::bench`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use futures::{stream, StreamExt};
use lumigo_e2e::testing::{eventually, own_control_plane, succeeded};
use lumigo_mutation::WorkloadKind;
use serde_json::json;
use support::*;

const FIRST: usize = 500;
const TOTAL: usize = 2_000;
const WAIT: Duration = Duration::from_secs(600);

async fn create_deployments(client: &kube::Client, ns: &str, range: std::ops::Range<usize>) {
    stream::iter(range)
        .for_each_concurrent(16, |index| async move {
            let name = format!("svc-{index:04}");
            create_manifest(client, ns, WorkloadKind::Deployment, &name, 0).await;
        })
        .await;
}

async fn wait_instrumented(client: &kube::Client, ns: &str, count: usize) -> Duration {
    let start = Instant::now();
    eventually(&format!("{count} instrumented"), WAIT, || async {
        (lumigo_status(client, ns, "lumigo").await?["instrumentedCount"] == json!(count))
            .then_some(())
    })
    .await;
    start.elapsed()
}

fn memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|line| line.starts_with(field))
        .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
        .unwrap()
}

#[tokio::main]
async fn main() {
    let (cp, client) = with_crd(own_control_plane()).await;
    let ns = cp.create_namespace("bench", &[]).await.unwrap();
    create_deployments(&client, &ns, 0..FIRST).await;
    create_token_secret(&client, &ns).await;

    let port = free_port();
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let operator = start_operator_probed(
        &cp,
        "0.1.0",
        &[("RUST_LOG", "warn")],
        &format!("127.0.0.1:{port}"),
    );
    eventually(
        "the operator's metrics endpoint",
        Duration::from_secs(30),
        || async { succeeded(std::process::Command::new("curl").args(["-sf", &metrics_url])) },
    )
    .await;

    create_default_lumigo(&client, &ns).await;
    let inject = wait_instrumented(&client, &ns, FIRST).await;
    let inject_writes = workload_writes(&metrics_url);

    let start = Instant::now();
    delete_lumigo(&client, &ns, "lumigo", WAIT).await;
    let remove = start.elapsed();
    let remove_writes = workload_writes(&metrics_url) - inject_writes;

    create_deployments(&client, &ns, FIRST..TOTAL).await;
    create_default_lumigo(&client, &ns).await;
    let inject_all = wait_instrumented(&client, &ns, TOTAL).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (peak, now) = (
        memory_kib(operator.id(), "VmHWM:"),
        memory_kib(operator.id(), "VmRSS:"),
    );
    let (anon, file) = (
        memory_kib(operator.id(), "RssAnon:"),
        memory_kib(operator.id(), "RssFile:"),
    );

    println!("rollout on a real control plane, {FIRST} Deployments in one namespace:");
    println!(
        "  inject  {:>6.2} s   {:.2} writes per workload",
        inject.as_secs_f64(),
        inject_writes as f64 / FIRST as f64
    );
    println!(
        "  remove  {:>6.2} s   {:.2} writes per workload",
        remove.as_secs_f64(),
        remove_writes as f64 / FIRST as f64
    );
    println!("with {TOTAL} Deployments (and their ReplicaSets) watched:");
    println!("  inject all {TOTAL}: {:.2} s", inject_all.as_secs_f64());
    println!(
        "  operator RSS: peak {:.1} MB, settled {:.1} MB",
        peak as f64 / 1024.0,
        now as f64 / 1024.0
    );
    println!(
        "  settled RSS: heap and stacks {:.1} MB, mapped code and files {:.1} MB",
        anon as f64 / 1024.0,
        file as f64 / 1024.0
    );
}
