//! Rollouts on the real node, shared by the rollout-safety suite and its bench: a small autotrace
//! image (the real injector and copy step, no tracers: the pods here run a static program), busybox
//! Deployments with a readiness probe, and a sampler that measures a rollout from the pods.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::Client;
use lumigo_e2e::{images, Cluster};
use lumigo_mutation::WorkloadKind;
use serde_json::{json, Value};

/// The autotrace image of these suites: `images/autotrace.Dockerfile` around the payload's
/// injector alone.
pub const SMALL_AUTOTRACE: &str = "lumigo-e2e.local/autotrace-small:1";

/// Builds the small autotrace image and the static app image and loads them into the node.
pub fn load_images(cluster: &Cluster) {
    let artifacts = images::Artifacts::from_env().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let payload = dir.path().join("payload");
    std::fs::create_dir_all(payload.join("injector")).unwrap();
    for entry in std::fs::read_dir(artifacts.payload.join("injector")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(
            entry.path(),
            payload.join("injector").join(entry.file_name()),
        )
        .unwrap();
    }
    let autotrace = dir.path().join("autotrace.tar");
    images::autotrace(SMALL_AUTOTRACE, &payload, &autotrace).unwrap();
    let app = dir.path().join("static.tar");
    images::static_app(&app).unwrap();
    for archive in [autotrace, app] {
        cluster.import_image(&archive).unwrap();
    }
}

/// A one-replica busybox httpd Deployment, Ready once it answers; `script` replaces its command
/// with a shell script that ends by running the server.
pub fn deployment(name: &str, script: Option<&str>) -> Value {
    let serve = "exec /bin/busybox httpd -f -p 8080 -h /www";
    let command = match script {
        Some(script) => json!(["/bin/busybox", "sh", "-c", format!("{script}; {serve}")]),
        None => json!(["/bin/busybox", "sh", "-c", serve]),
    };
    let pod_spec = json!({
        "terminationGracePeriodSeconds": 1,
        "containers": [{
            "name": "app", "image": images::STATIC_APP, "imagePullPolicy": "Never",
            "command": command,
            "readinessProbe": {"httpGet": {"path": "/ping", "port": 8080}, "periodSeconds": 1}
        }]
    });
    super::workload(WorkloadKind::Deployment, name, 1, pod_spec)
}

/// What the sampler saw over a rollout.
#[derive(Debug, Default, Clone)]
pub struct Sampled {
    /// The most Deployments at one time with a pod that is starting (not Ready, not terminating).
    pub peak_restarting: usize,
    /// The most pods at one time not Ready (and not terminating).
    pub peak_not_ready: usize,
    /// Deployments that at some sample had no Ready pod serving, with when (sample number).
    pub down: BTreeMap<String, usize>,
    pub samples: usize,
}

/// Samples the namespace's pods every 200 ms until stopped.
pub struct PodSampler {
    sampled: Arc<Mutex<Sampled>>,
    task: tokio::task::JoinHandle<()>,
}

impl PodSampler {
    /// `deployments`: the names whose availability is watched (each must have served before).
    pub fn start(client: &Client, namespace: &str, deployments: BTreeSet<String>) -> Self {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let sampled = Arc::new(Mutex::new(Sampled::default()));
        let task = tokio::spawn({
            let sampled = sampled.clone();
            async move {
                loop {
                    if let Ok(list) = pods.list(&ListParams::default()).await {
                        let mut sampled = sampled.lock().unwrap();
                        sampled.record(&list.items, &deployments);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        });
        PodSampler { sampled, task }
    }

    pub fn stop(self) -> Sampled {
        self.task.abort();
        self.sampled.lock().unwrap().clone()
    }
}

impl Sampled {
    fn record(&mut self, pods: &[Pod], deployments: &BTreeSet<String>) {
        self.samples += 1;
        let mut starting = BTreeSet::new();
        let mut serving = BTreeSet::new();
        let mut not_ready = 0;
        for pod in pods {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(app) = pod.metadata.labels.as_ref().and_then(|l| l.get("app")) else {
                continue;
            };
            if lumigo_operator::workloads::pod_is_ready(pod) {
                serving.insert(app.clone());
            } else {
                starting.insert(app.clone());
                not_ready += 1;
            }
        }
        self.peak_restarting = self.peak_restarting.max(starting.len());
        self.peak_not_ready = self.peak_not_ready.max(not_ready);
        for deployment in deployments.difference(&serving) {
            self.down.entry(deployment.clone()).or_insert(self.samples);
        }
    }
}
