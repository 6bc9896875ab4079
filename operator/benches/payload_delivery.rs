//! The two payload deliveries on the real node, with the real autotrace image (the whole payload):
//! pods started one at a time, uninjected, injected with the init container's copy, and injected
//! with the image mounted as an image volume. Prints each one's start-up time (creation to Ready,
//! watched; the kubelet reports container changes once a second) and the node disk each pod holds
//! in its volumes, the payload's size, and the copy step alone: the image's program (busybox
//! `cp -R`) copying the payload on the node's disk, as the init container does. Each pod is
//! measured alone: the next one is created once the previous one is gone from the API and the
//! kubelet has removed its directory (its containers stopped, its volumes deleted). The pods'
//! volumes are on the test node's journaled ext4 (`e2e/node/janitor.sh`): on this VM's root, an
//! ext4 without a journal, each copy after the first spent about 1.3 s of CPU finding free inodes
//! among the 2,000 the previous pod's emptyDir had just freed.
//! Needs root and the image inputs: `just operator::bench-payload-delivery`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions, Condition};
use lumigo_e2e::images;
use lumigo_e2e::testing::shared_cluster;
use lumigo_mutation::{inject, InjectionConfig, Operation, PayloadDelivery, WorkloadKind};
use lumigo_operator::workloads::pod_is_ready;
use serde_json::json;
use support::workload;

const PODS: usize = 7;
const WAIT: Duration = Duration::from_secs(180);
const NAMESPACE: &str = "bench-delivery";

/// A pod of the static app (busybox httpd, no readiness probe: Ready once its container runs).
fn pod(name: &str, delivery: Option<PayloadDelivery>) -> Pod {
    let spec = json!({
        "terminationGracePeriodSeconds": 0,
        "containers": [{
            "name": "app", "image": images::STATIC_APP, "imagePullPolicy": "Never",
            "command": ["/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/www"]
        }]
    });
    let mut object = workload(WorkloadKind::Pod, name, 1, spec);
    if let Some(delivery) = delivery {
        let config: InjectionConfig = serde_json::from_value(json!({
            "injectorImage": images::autotrace_name(),
            "tokenSecret": {"name": "lumigo-credentials", "key": "token"},
            "operatorVersion": "0.1.0",
            "payloadDelivery": delivery,
        }))
        .unwrap();
        inject(&mut object, WorkloadKind::Pod, &config, Operation::Create);
    }
    serde_json::from_value(object).unwrap()
}

/// Milliseconds from the injector init container's start to its exit, from containerd's log (the
/// API's timestamps have whole seconds only).
fn init_container_millis(pod: &Pod, containerd_log: &str) -> Option<f64> {
    let id = pod
        .status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .first()?
        .container_id
        .as_ref()?
        .strip_prefix("containerd://")?
        .to_owned();
    let logged_at = |marker: &str| {
        containerd_log
            .lines()
            .find(|line| line.contains(marker))?
            .strip_prefix("time=\"")?
            .split('"')
            .next()?
            .parse::<k8s_openapi::jiff::Timestamp>()
            .ok()
    };
    let started = logged_at(&format!("StartContainer for \\\"{id}\\\""))?;
    let exited = logged_at(&format!(
        "received container exit event container_id:\\\"{id}\\\""
    ))?;
    Some(exited.duration_since(started).as_secs_f64() * 1000.0)
}

/// Writes back what earlier steps left dirty (the images just imported, the previous copy), so
/// that each measurement pays only for its own writes: on this shared disk the write-back of the
/// imports alone made the copy six times slower.
fn settle_disk() {
    let status = std::process::Command::new("sync").status().unwrap();
    assert!(status.success(), "sync: {status}");
}

/// Bytes of the files under `dir` (0 when it does not exist).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => bytes_under(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// The pod `name` once `condition` holds, watched, for at most [`WAIT`].
async fn watch_until(
    pods: &Api<Pod>,
    name: &str,
    what: &str,
    condition: impl Condition<Pod>,
) -> Option<Pod> {
    tokio::time::timeout(WAIT, await_condition(pods.clone(), name, condition))
        .await
        .unwrap_or_else(|_| panic!("{name} not {what} after {WAIT:?}"))
        .unwrap_or_else(|error| panic!("watching {name}: {error}"))
}

/// Deletes the pod and waits until it is gone from the API and the kubelet has removed its
/// directory (containers stopped, volumes torn down: the init container's emptyDir holds the
/// whole payload), so that this teardown does not weigh on the next pod's measurement.
async fn delete_and_wait(pods: &Api<Pod>, name: &str, uid: &str, pod_dir: &Path) {
    pods.delete(name, &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    watch_until(pods, name, "deleted", conditions::is_deleted(uid)).await;
    let started = Instant::now();
    while pod_dir.exists() {
        assert!(
            started.elapsed() < WAIT,
            "the kubelet kept {} for {WAIT:?}",
            pod_dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (shared, client) = shared_cluster().await;
    let cluster = shared.as_ref();
    let artifacts = images::Artifacts::from_env().unwrap();
    let images_dir = tempfile::tempdir().unwrap();
    for archive in images::build_all(&artifacts, images_dir.path()).unwrap() {
        cluster.import_image(&archive).unwrap();
    }
    cluster
        .control_plane()
        .run_kubectl(&["create", "namespace", NAMESPACE], None)
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    println!(
        "payload {:.1} MB in the autotrace image; {PODS} pods per delivery, one at a time:",
        bytes_under(&artifacts.payload) as f64 / 1e6
    );
    // Where the pods' volumes are.
    let node_disk = cluster.node_dir().join("kubelet/bench-copy");
    let mut copies: Vec<f64> = (0..PODS)
        .map(|_| {
            let _ = std::fs::remove_dir_all(&node_disk);
            std::fs::create_dir_all(&node_disk).unwrap();
            settle_disk();
            let started = Instant::now();
            let status = std::process::Command::new("/bin/busybox")
                .args(["cp", "-R"])
                .arg(artifacts.payload.join("."))
                .arg(&node_disk)
                .status()
                .unwrap();
            assert!(status.success(), "busybox cp: {status}");
            started.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    std::fs::remove_dir_all(&node_disk).unwrap();
    println!(
        "  the copy step alone (busybox cp -R, node disk): median {:.0} ms",
        median(&mut copies)
    );
    let mut baseline = 0.0;
    for (label, delivery) in [
        ("uninjected", None),
        ("init container", Some(PayloadDelivery::InitContainer)),
        ("image volume", Some(PayloadDelivery::ImageVolume)),
    ] {
        let (mut startups, mut disks, mut init_runs) = (Vec::new(), Vec::new(), Vec::new());
        // One pod more than measured: the first of each kind pays for the node's caches.
        for i in 0..=PODS {
            let name = format!("pod-{}-{i}", label.replace(' ', "-"));
            settle_disk();
            let started = Instant::now();
            let created = pods
                .create(&PostParams::default(), &pod(&name, delivery))
                .await
                .unwrap();
            let running = watch_until(&pods, &name, "Ready", |pod: Option<&Pod>| {
                pod.is_some_and(pod_is_ready)
            })
            .await
            .unwrap();
            let startup = started.elapsed();
            let uid = created.metadata.uid.clone().unwrap_or_default();
            let pod_dir = cluster.node_dir().join("kubelet/pods").join(&uid);
            let disk = bytes_under(&pod_dir.join("volumes"));
            delete_and_wait(&pods, &name, &uid, &pod_dir).await;
            if i > 0 {
                startups.push(startup.as_secs_f64() * 1000.0);
                disks.push(disk as f64 / 1e6);
                let containerd_log =
                    std::fs::read_to_string(cluster.node_dir().join("containerd.log"))
                        .unwrap_or_default();
                init_runs.extend(init_container_millis(&running, &containerd_log));
            }
        }
        let startup = median(&mut startups);
        if delivery.is_none() {
            baseline = startup;
        }
        println!(
            "  {label:<15} start-up median {startup:>6.0} ms (max {:>5.0} ms, {:+5.0} ms against \
             uninjected); node disk in the pod's volumes {:>6.1} MB",
            startups.last().copied().unwrap_or_default(),
            startup - baseline,
            median(&mut disks)
        );
        if !init_runs.is_empty() {
            let run = median(&mut init_runs);
            println!(
                "  {:<15} the init container's run, start to exit (containerd's log): median \
                 {run:.0} ms, max {:.0} ms",
                "",
                init_runs.last().copied().unwrap_or_default()
            );
        }
    }
}
