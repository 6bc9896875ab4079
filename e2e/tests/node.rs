//! The node's acceptance tests: pods are scheduled and run in real containers from images built
//! here; an init container shares an emptyDir with the app; a pod reaches a Service through
//! kube-proxy, resolves cluster names through CoreDNS, and calls the apiserver through the
//! `kubernetes` Service with its ServiceAccount token; `kubectl logs` reaches the kubelet; the
//! autotrace image runs when referenced by digest, as the chart's `injector.image.digest` has it.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use lumigo_e2e::{images, Cluster};

const PROBE: &str = concat!(
    r#"
import json, os, socket, ssl, time, urllib.error, urllib.request
print("init wrote:", open("/shared/greeting").read().strip())
print("autotrace copied:", open("/opt/lumigo/nodejs/register.js").read().strip())
print("kubernetes resolves to", socket.gethostbyname("kubernetes.default.svc.cluster.local"))
sa = "/var/run/secrets/kubernetes.io/serviceaccount"
token = open(f"{sa}/token").read()
context = ssl.create_default_context(cafile=f"{sa}/ca.crt")
request = urllib.request.Request("https://kubernetes.default.svc/api", "#,
    r#"headers={"Authorization": f"Bearer {token}"})
with urllib.request.urlopen(request, context=context, timeout=10) as response:
    print("apiserver says", response.status, json.load(response)["kind"])
web = f"http://web.{os.environ['NAMESPACE']}.svc.cluster.local:8080/ping"
# kube-proxy programs a Service's endpoint a moment after the pod turns ready; until then the
# Service refuses connections.
for attempt in range(40):
    try:
        with urllib.request.urlopen(web, timeout=10) as response:
            print("web says", response.status, response.read().decode().strip())
        break
    except urllib.error.URLError:
        time.sleep(0.5)
"#
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_runs_and_reaches_services_dns_and_the_apiserver() {
    let cluster = Cluster::shared().await.expect("a cluster with a node");
    let cp = cluster.control_plane();
    let images_dir = tempfile::tempdir().unwrap();
    let cache = images::cache_dir().unwrap();
    let python = images_dir.path().join("python.tar");
    let web = images_dir.path().join("static.tar");
    images::python_app(&python, &cache).unwrap();
    images::static_app(&web).unwrap();
    cluster.import_image(&python).unwrap();
    cluster.import_image(&web).unwrap();
    // The autotrace image of a stand-in payload, pulled by `name:tag@digest`.
    let payload = images_dir.path().join("payload");
    std::fs::create_dir_all(payload.join("nodejs")).unwrap();
    std::fs::write(payload.join("nodejs/register.js"), "// by digest\n").unwrap();
    let autotrace_archive = images_dir.path().join("autotrace.tar");
    let autotrace =
        images::autotrace(&images::autotrace_name(), &payload, &autotrace_archive).unwrap();
    cluster.import_image(&autotrace_archive).unwrap();
    let autotrace_by_digest = format!("{}@{}", autotrace.name, autotrace.manifest_digest);

    let namespace = cp.create_namespace("node", &[]).await.unwrap();
    let manifest = format!(
        r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
        - name: httpd
          image: "{web}"
          imagePullPolicy: Never
          readinessProbe: {{tcpSocket: {{port: 8080}}, periodSeconds: 1}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec:
  selector: {{app: web}}
  ports: [{{port: 8080}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: probe}}
spec:
  restartPolicy: Never
  volumes: [{{name: shared, emptyDir: {{}}}}, {{name: payload, emptyDir: {{}}}}]
  initContainers:
    - name: init
      image: "{web}"
      imagePullPolicy: Never
      command: [/bin/busybox, sh, -c, "echo hello from init > /shared/greeting"]
      volumeMounts: [{{name: shared, mountPath: /shared}}]
    - name: autotrace
      image: "{autotrace_by_digest}"
      imagePullPolicy: Never
      volumeMounts: [{{name: payload, mountPath: /target}}]
  containers:
    - name: probe
      image: "{python}"
      imagePullPolicy: Never
      command: [/usr/bin/python3.11, -c, {probe}]
      env: [{{name: NAMESPACE, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}]
      volumeMounts:
        - {{name: shared, mountPath: /shared}}
        - {{name: payload, mountPath: /opt/lumigo}}
"#,
        web = images::STATIC_APP,
        python = images::PYTHON_APP,
        probe = serde_json::to_string(PROBE).unwrap(),
    );
    cp.run_kubectl(&["apply", "-n", &namespace, "-f", "-"], Some(&manifest))
        .unwrap();
    cp.run_kubectl(
        &[
            "rollout",
            "status",
            "deployment/web",
            "-n",
            &namespace,
            "--timeout=120s",
        ],
        None,
    )
    .unwrap();

    let pods: Api<Pod> = Api::namespaced(cp.client().unwrap(), &namespace);
    let started = Instant::now();
    let (phase, init_statuses) = loop {
        let status = pods.get("probe").await.unwrap().status.unwrap_or_default();
        let phase = status.phase.unwrap_or_default();
        if phase == "Succeeded" || phase == "Failed" || started.elapsed() > Duration::from_secs(120)
        {
            // What a stuck init container waits for (an image not found, say).
            break (
                phase,
                serde_json::to_string(&status.init_container_statuses).unwrap(),
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // `kubectl logs` goes through the apiserver to the kubelet.
    let logs = cp
        .run_kubectl(&["logs", "-n", &namespace, "probe", "-c", "probe"], None)
        .unwrap_or_else(|error| error.to_string());
    assert_eq!(
        phase, "Succeeded",
        "the probe pod:\n{logs}\ninit containers: {init_statuses}"
    );
    println!(
        "probe pod ran in {:.1} s:\n{logs}",
        started.elapsed().as_secs_f64()
    );
    assert!(logs.contains("init wrote: hello from init"), "{logs}");
    assert!(logs.contains("autotrace copied: // by digest"), "{logs}");
    let init_image = pods
        .get("probe")
        .await
        .unwrap()
        .spec
        .unwrap()
        .init_containers
        .unwrap()[1]
        .image
        .clone();
    assert_eq!(init_image.as_deref(), Some(autotrace_by_digest.as_str()));
    assert!(logs.contains("kubernetes resolves to 10.0.0.1"), "{logs}");
    assert!(logs.contains("apiserver says 200 APIVersions"), "{logs}");
    assert!(logs.contains("web says 200 pong"), "{logs}");
}
