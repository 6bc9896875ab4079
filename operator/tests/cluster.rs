//! The whole product on a real node, installed as a user installs it: `helm install` of the chart
//! (the operator in its pod with the chart's RBAC, its built-in webhook behind its Service, the
//! collector in its pod), then a Secret and a `Lumigo` resource in a namespace where Node.js,
//! Python and Java services already run. The pods are replaced and spans from each runtime reach
//! an OTLP sink through the proxy with the Kubernetes attributes it adds and the tracer's token
//! header.
//! Both payload deliveries run: the shop's resource leaves it to the operator (`auto`: this node
//! runs Kubernetes 1.35 and containerd 2, so the image is mounted as an image volume), the
//! restricted namespace's asks for the init container's copy. Then the removal: `kubectl delete
//! lumigo`, `helm uninstall`, each restoring the templates byte for byte.
//!
//! Needs root and the image inputs of `e2e/image-inputs.sh` (`just operator::test-cluster`).

mod support;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use kube::Client;
use lumigo_e2e::testing::{eventually, shared_cluster, within};
use lumigo_e2e::{images, Cluster, OtlpSink, ReceivedSpan};
use lumigo_operator::crd::{Lumigo, LumigoStatus, TracingState};
use serde_json::Value;
use support::TOKEN;

const RELEASE_NAMESPACE: &str = "lumigo-system";
/// The shop's traced services and the runtime each one runs.
const TRACED: [(&str, &str); 3] = [
    ("currencyservice", "nodejs"),
    ("emailservice", "python"),
    ("adservice", "java"),
];
/// First spans come after a pod restart and a tracer's start-up (the JVM's agent is the slowest).
const SPANS_TIMEOUT: Duration = Duration::from_secs(240);
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(240);
/// The operator's tracing settings in this test (the chart's defaults are 15 s and 10 minutes).
const CHECK_INTERVAL: Duration = Duration::from_secs(3);
const SILENCE_WINDOW: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_with_helm_it_traces_every_runtime_and_uninstalls_without_a_trace() {
    let (shared, client) = shared_cluster().await;
    let cluster = shared.as_ref();
    let cp = cluster.control_plane();
    let sink = OtlpSink::start(cluster.node_ip().into()).unwrap();
    let kubectl = |args: &[&str]| cp.run_kubectl(args, None).unwrap();
    let kubectl_apply = |namespace: &str, manifest: &str| {
        cp.run_kubectl(&["apply", "-n", namespace, "-f", "-"], Some(manifest))
            .unwrap();
    };

    let images_dir = tempfile::tempdir().unwrap();
    let artifacts = images::Artifacts::from_env().unwrap();
    for archive in images::build_all(&artifacts, images_dir.path()).unwrap() {
        cluster.import_image(&archive).unwrap();
    }

    // Services already running, uninstrumented; one namespace enforces Pod Security `restricted`.
    kubectl(&["create", "namespace", "shop"]);
    kubectl(&["apply", "-n", "shop", "-f", &repo_file("demo/shop.yaml")]);
    kubectl(&["create", "namespace", "secure"]);
    kubectl(&[
        "label",
        "namespace",
        "secure",
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    kubectl_apply("secure", RESTRICTED_SERVICE);
    for namespace in ["shop", "secure"] {
        wait_available(cluster, namespace).await;
    }
    let before: BTreeMap<String, Value> = templates(&client, "shop")
        .await
        .into_iter()
        .chain(templates(&client, "secure").await)
        .collect();

    // The chart as a user installs it, pointed at the images loaded into the node and at the sink.
    let collector_repository = format!(
        "telemetryProxy.image.repository={}",
        images::COLLECTOR_REPOSITORY
    );
    let collector_tag = format!("telemetryProxy.image.tag={}", artifacts.collector_tag);
    let endpoint = format!("telemetryProxy.exporter.endpoint={}", sink.endpoint());
    let chart = support::chart::chart_dir().display().to_string();
    helm(
        cluster,
        &[
            "install",
            "lumigo",
            &chart,
            "--create-namespace",
            "--set",
            "operator.image.pullPolicy=Never",
            "--set",
            &collector_repository,
            "--set",
            &collector_tag,
            "--set",
            "telemetryProxy.image.pullPolicy=Never",
            "--set",
            &endpoint,
            // Two proxy replicas: the counts of both make one picture. A short silence window and
            // check interval, so that the test sees a silent workload reported.
            "--set",
            "telemetryProxy.replicas=2",
            "--set",
            &format!("tracingVerification.interval={}s", CHECK_INTERVAL.as_secs()),
            "--set",
            &format!(
                "tracingVerification.silenceWindow={}s",
                SILENCE_WINDOW.as_secs()
            ),
        ],
    );

    let applied = SystemTime::now();
    let status_writes = count_writes(Api::<Lumigo>::namespaced(client.clone(), "shop"));
    kubectl_apply("shop", &lumigo_manifest(None));
    kubectl_apply("secure", &lumigo_manifest(Some("initContainer")));

    // Every traced service: a span with the proxy's Kubernetes attributes and the tracer's header.
    for (deployment, runtime) in TRACED {
        let span = first_span(cluster, &sink, "shop", deployment).await;
        let pod = span
            .attribute("k8s.pod.name")
            .unwrap_or_default()
            .to_owned();
        assert!(
            pod.starts_with(&format!("{deployment}-")),
            "{runtime}: k8s.pod.name {pod}"
        );
        assert_eq!(
            span.attribute("k8s.namespace.name"),
            Some("shop"),
            "{runtime}: {span:?}"
        );
        assert_eq!(
            span.authorization.as_deref(),
            Some(format!("LumigoToken {TOKEN}").as_str()),
            "{runtime}: the tracer's token header, forwarded by the proxy"
        );
        let waited = span.received_at.duration_since(applied).unwrap_or_default();
        println!(
            "{runtime}: first span {:.1} s after the Lumigo resource was applied",
            waited.as_secs_f64()
        );
    }
    first_span(cluster, &sink, "secure", "inventoryservice").await;

    // The restricted namespace's pods really ran the init container, under the pod's own
    // restrictions; the shop's mount the image, with no copy.
    let secure = running_pod(&client, "secure", "inventoryservice").await;
    let init = &secure["status"]["initContainerStatuses"][0];
    assert_eq!(init["name"], "lumigo-injector", "{secure:#}");
    assert_eq!(init["state"]["terminated"]["exitCode"], 0, "{init:#}");
    for deployment in ["currencyservice", "emailservice", "adservice"] {
        let pod = running_pod(&client, "shop", deployment).await;
        assert!(pod["spec"]["initContainers"].is_null(), "{pod:#}");
        let volume = &pod["spec"]["volumes"]
            .as_array()
            .and_then(|volumes| volumes.iter().find(|v| v["name"] == "lumigo-injector"))
            .cloned()
            .unwrap_or_default();
        assert_eq!(
            volume["image"]["reference"],
            images::autotrace_name(),
            "shop/{deployment}: {pod:#}"
        );
    }
    for (namespace, mode, reason) in [
        ("shop", "imageVolume", "ImageVolumeSupported"),
        ("secure", "initContainer", "Requested"),
    ] {
        let lumigos: Api<Lumigo> = Api::namespaced(client.clone(), namespace);
        let status = lumigos.get("lumigo").await.unwrap().status.unwrap();
        let delivery = serde_json::to_value(&status.payload_delivery).unwrap();
        assert_eq!(delivery["mode"], mode, "{namespace}: {delivery:#}");
        assert_eq!(delivery["reason"], reason, "{namespace}: {delivery:#}");
    }
    // Read from the injected pod (kubectl's deploy/… would pick the oldest ready one).
    let email = running_pod(&client, "shop", "emailservice").await;
    let email = kubectl(&[
        "logs",
        "-n",
        "shop",
        email["metadata"]["name"].as_str().unwrap(),
    ]);
    assert!(
        email.contains("user preload ran: yes"),
        "the container's own LD_PRELOAD still runs:\n{email}"
    );
    assert!(
        email.contains(&format!(
            "LD_PRELOAD={};",
            lumigo_mutation::env::prepend_injector(images::USER_PRELOAD_LIBRARY)
        )),
        "ours first, the user's kept:\n{email}"
    );
    // The static binary was injected like every other container and runs unharmed.
    let frontend = running_pod(&client, "shop", "frontend").await;
    assert!(has_payload_volume(&frontend), "{frontend:#}");
    assert_eq!(
        frontend["status"]["containerStatuses"][0]["restartCount"], 0,
        "{frontend:#}"
    );
    // A Deployment created now is injected at admission by the webhook behind its Service: the
    // apiserver reaches the operator's pod through the cluster's network.
    kubectl(&[
        "create",
        "deployment",
        "checkoutservice",
        "--image",
        images::NODE_APP,
        "-n",
        "shop",
    ]);
    let created = kubectl(&[
        "get",
        "deployment",
        "checkoutservice",
        "-n",
        "shop",
        "-o",
        "jsonpath={.metadata.generation} {.spec.template.spec.volumes[*].image.reference}",
    ]);
    assert_eq!(
        created,
        format!("1 {}", images::autotrace_name()),
        "injected by its very creation, as the rollout injects"
    );
    kubectl(&["delete", "deployment", "checkoutservice", "-n", "shop"]);
    // The opted-out service was never touched and sent nothing.
    let payment = running_pod(&client, "shop", "paymentservice").await;
    assert!(payment["spec"]["initContainers"].is_null(), "{payment:#}");
    assert!(!has_payload_volume(&payment), "{payment:#}");
    assert!(spans_of(&sink, "shop", "paymentservice").is_empty());

    verified_tracing(cluster, &client, &status_writes).await;

    // The other delivery for the same services, through the rollout: each traced again from a pod
    // whose init container copied the payload; then back to the operator's choice.
    let delivery = |value: &str| {
        let patch =
            format!(r#"{{"spec":{{"tracing":{{"injection":{{"payloadDelivery":{value}}}}}}}}}"#);
        kubectl(&[
            "patch", "lumigo", "lumigo", "-n", "shop", "--type", "merge", "-p", &patch,
        ]);
    };
    delivery("\"initContainer\"");
    for (deployment, runtime) in TRACED {
        let pod = pod_delivered_by(&client, "shop", deployment, "initContainers").await;
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        within(SPANS_TIMEOUT, || async {
            spans_of(&sink, "shop", deployment)
                .into_iter()
                .find(|span| span.attribute("k8s.pod.name") == Some(name.as_str()))
        })
        .await
        .unwrap_or_else(|| panic!("{runtime}: no span from {name}, copied by its init container"));
    }
    delivery("null");
    for (deployment, _) in TRACED {
        pod_delivered_by(&client, "shop", deployment, "volumes").await;
    }
    wait_available(cluster, "shop").await;

    // Removal from one namespace: pods replaced without the injection, and no more spans.
    kubectl(&[
        "delete",
        "lumigo",
        "lumigo",
        "-n",
        "shop",
        "--wait=true",
        "--timeout=120s",
    ]);
    for (name, template) in templates(&client, "shop").await {
        assert_eq!(
            Some(&template),
            before.get(&name),
            "{name} restored byte for byte"
        );
    }
    wait_available(cluster, "shop").await;
    // The injected pods flush their spans as they stop: quiet starts once the last one is gone.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    eventually("the injected pods to be gone", ROLLOUT_TIMEOUT, || async {
        let listed = pods.list(&ListParams::default()).await.ok()?;
        let stopping = listed
            .items
            .iter()
            .any(|pod| pod.metadata.deletion_timestamp.is_some());
        (!stopping).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let quiet_from = SystemTime::now();
    tokio::time::sleep(Duration::from_secs(10)).await;
    let late: Vec<ReceivedSpan> = sink
        .spans()
        .into_iter()
        .filter(|span| span.attribute("k8s.namespace.name") == Some("shop"))
        .filter(|span| span.received_at > quiet_from)
        .collect();
    assert!(
        late.is_empty(),
        "spans after the removal: {:?}",
        &late[..late.len().min(3)]
    );

    // helm upgrade to a monitored namespace: the operator (restarted by the upgrade) creates its
    // token Secret and Lumigo resource there, with no kubectl step.
    kubectl(&["create", "namespace", "monitored"]);
    let chart = support::chart::chart_dir().display().to_string();
    let token = format!("lumigoToken.value={TOKEN}");
    helm(
        cluster,
        &[
            "upgrade",
            "lumigo",
            &chart,
            "--reuse-values",
            "--set",
            &token,
            "--set",
            "monitoredNamespaces={monitored}",
        ],
    );
    let monitored: Api<Lumigo> = Api::namespaced(client.clone(), "monitored");
    eventually(
        "the monitored namespace's own Lumigo resource, Active",
        ROLLOUT_TIMEOUT,
        || async {
            let lumigo = monitored.get_opt("lumigo").await.ok()??;
            let active = lumigo
                .status?
                .conditions
                .iter()
                .any(|c| c.type_ == "Active" && c.status == "True");
            active.then_some(())
        },
    )
    .await;

    // helm uninstall: the hook removes the remaining injection, and the operator is gone.
    helm(cluster, &["uninstall", "lumigo"]);
    assert!(
        monitored.get_opt("lumigo").await.unwrap().is_none(),
        "the managed resource is gone with the install"
    );
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(client.clone(), "monitored");
    assert!(
        secrets
            .get_opt(lumigo_operator::onboarding::MANAGED_SECRET)
            .await
            .unwrap()
            .is_none(),
        "and its token Secret"
    );
    for (name, template) in templates(&client, "secure").await {
        assert_eq!(
            Some(&template),
            before.get(&name),
            "{name} restored byte for byte"
        );
    }
    let operators: Api<Deployment> = Api::namespaced(client.clone(), RELEASE_NAMESPACE);
    assert!(
        operators
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "the operator is gone"
    );
    wait_available(cluster, "secure").await;
}

/// Verified tracing, read from the `Lumigo` resource as a user reads it: the three runtimes are
/// `Receiving` with their container and runtime, the static binary is `Silent` and reported with
/// the reason, the opted-out service is not listed, and a restart of the proxy changes nothing.
async fn verified_tracing(cluster: &Cluster, client: &Client, status_writes: &WriteCounter) {
    let kubectl = |args: &[&str]| cluster.control_plane().run_kubectl(args, None).unwrap();
    let lumigoes: Api<Lumigo> = Api::namespaced(client.clone(), "shop");
    let tracing_of = |status: &LumigoStatus, name: &str| {
        status
            .instrumented_resources
            .iter()
            .find(|w| w.name == name)
            .and_then(|w| w.tracing.clone())
    };
    let status = eventually(
        "the three runtimes Receiving and frontend reported silent",
        SPANS_TIMEOUT,
        || async {
            let status = lumigoes.get_status("lumigo").await.ok()?.status?;
            let receiving = TRACED.iter().all(|(deployment, _)| {
                tracing_of(&status, deployment).is_some_and(|t| t.state == TracingState::Receiving)
            });
            let frontend = tracing_of(&status, "frontend")?;
            let reported = frontend.state == TracingState::Silent
                && frontend
                    .reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("no container's image or command"));
            (receiving && reported).then_some(status)
        },
    )
    .await;
    for (deployment, runtime) in TRACED {
        let tracing = tracing_of(&status, deployment).unwrap();
        let expected_runtime = match runtime {
            "nodejs" => "nodejs",
            "python" => "cpython",
            _ => "OpenJDK",
        };
        assert!(
            tracing
                .containers
                .iter()
                .any(|c| c.name == "server" && c.runtime.contains(expected_runtime)),
            "{deployment}: {tracing:?}"
        );
        assert!(
            tracing.first_span_seen.is_some(),
            "{deployment}: {tracing:?}"
        );
        println!("{deployment}: Receiving from {:?}", tracing.containers);
    }
    assert!(
        tracing_of(&status, "paymentservice").is_none()
            && !status
                .instrumented_resources
                .iter()
                .any(|w| w.name == "paymentservice"),
        "the opted-out service is not listed: {status:?}"
    );
    assert_eq!(status.tracing, "3/4", "{status:?}");
    assert_eq!(status.receiving_count, 3);
    let condition = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Tracing")
        .unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("False", "NoTraces"),
        "{condition:?}"
    );
    assert!(
        condition
            .message
            .contains("Deployment frontend (no container's image"),
        "{condition:?}"
    );
    let printed = kubectl(&["get", "lumigoes", "-n", "shop"]);
    println!("{printed}");
    assert!(
        printed
            .lines()
            .next()
            .unwrap_or_default()
            .contains("TRACING")
            && printed.contains("3/4"),
        "{printed}"
    );

    // Events: first spans once per traced workload, the silence of the static binary with its
    // reason.
    let events: Api<Event> = Api::namespaced(client.clone(), "shop");
    let events = events.list(&ListParams::default()).await.unwrap().items;
    let regarding = |reason: &str| {
        let mut names: Vec<String> = events
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.regarding.as_ref()?.name.clone())
            .collect();
        names.sort();
        names
    };
    let received = regarding("LumigoTracesReceived");
    for (deployment, _) in TRACED {
        let announced = received.iter().filter(|name| *name == deployment).count();
        assert_eq!(
            announced, 1,
            "LumigoTracesReceived of {deployment}: {received:?}"
        );
    }
    assert!(
        !received
            .iter()
            .any(|name| name == "frontend" || name == "paymentservice"),
        "{received:?}"
    );
    assert_eq!(regarding("LumigoNoTraces"), ["frontend"]);

    // A restart of the proxy (both replicas replaced) changes nothing the status shows, and the
    // status is not written meanwhile.
    let before = status_writes.count();
    let proxy = kubectl(&[
        "get",
        "deployment",
        "-n",
        RELEASE_NAMESPACE,
        "-l",
        "app.kubernetes.io/component=telemetry-proxy",
        "-o",
        "name",
    ]);
    kubectl(&["rollout", "restart", "-n", RELEASE_NAMESPACE, proxy.trim()]);
    kubectl(&[
        "rollout",
        "status",
        "-n",
        RELEASE_NAMESPACE,
        proxy.trim(),
        "--timeout=120s",
    ]);
    tokio::time::sleep(CHECK_INTERVAL * 5).await;
    let after = lumigoes.get_status("lumigo").await.unwrap().status.unwrap();
    let significant = |status: &LumigoStatus| {
        status
            .instrumented_resources
            .iter()
            .map(|w| {
                let t = w.tracing.clone().unwrap();
                (
                    w.name.clone(),
                    t.state,
                    t.first_span_seen,
                    t.containers,
                    t.reason,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        significant(&after),
        significant(&status),
        "across the proxy restart"
    );
    assert_eq!(
        status_writes.count(),
        before,
        "no status write while only the proxy restarted"
    );
    println!(
        "status writes of shop/lumigo from its creation: {}",
        status_writes.count()
    );
    assert!(
        status_writes.count() <= 20,
        "{} status writes",
        status_writes.count()
    );
}

/// Counts the writes of the `lumigo` resource the watch sees (creation, finalizer, status).
struct WriteCounter {
    writes: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _watch: tokio::task::JoinHandle<()>,
}

impl WriteCounter {
    fn count(&self) -> usize {
        self.writes.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn count_writes(api: Api<Lumigo>) -> WriteCounter {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let writes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = writes.clone();
    let watch = tokio::spawn(async move {
        let config = watcher::Config::default().fields("metadata.name=lumigo");
        let mut versions = std::collections::HashSet::new();
        let mut events = watcher(api, config).boxed();
        while let Some(event) = events.next().await {
            if let Ok(watcher::Event::Apply(lumigo) | watcher::Event::InitApply(lumigo)) = event {
                if versions.insert(lumigo.metadata.resource_version.clone()) {
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
        }
    });
    WriteCounter {
        writes,
        _watch: watch,
    }
}

/// A service in the `restricted` namespace: non-root, no privilege escalation, no capabilities,
/// RuntimeDefault seccomp. The injection must keep it admissible.
const RESTRICTED_SERVICE: &str = concat!(
    r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: inventoryservice}
spec:
  replicas: 1
  selector: {matchLabels: {app: inventoryservice}}
  template:
    metadata: {labels: {app: inventoryservice}}
    spec:
      terminationGracePeriodSeconds: 2
      securityContext: {runAsNonRoot: true, runAsUser: 1000, runAsGroup: 1000, "#,
    r#"seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: server
          image: lumigo-e2e.local/shop-node:1
          imagePullPolicy: Never
          env: [{name: PEER_URL, value: "http://localhost:8080/ping"}]
          securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}, "#,
    r#"readOnlyRootFilesystem: true}
          readinessProbe: {httpGet: {path: /ping, port: 8080}, periodSeconds: 2}
"#
);

/// The token Secret and a `Lumigo` resource, with `payloadDelivery` when one is given.
fn lumigo_manifest(payload_delivery: Option<&str>) -> String {
    let injection = payload_delivery.map_or_else(String::new, |delivery| {
        format!(", tracing: {{injection: {{payloadDelivery: {delivery}}}}}")
    });
    format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: lumigo-credentials}}
stringData: {{token: {TOKEN}}}
---
apiVersion: operator.lumigo.io/v1alpha1
kind: Lumigo
metadata: {{name: lumigo}}
spec: {{lumigoToken: {{secretRef: {{name: lumigo-credentials, key: token}}}}{injection}}}
"
    )
}

fn spans_of(sink: &OtlpSink, namespace: &str, deployment: &str) -> Vec<ReceivedSpan> {
    sink.spans()
        .into_iter()
        .filter(|span| {
            span.attribute("k8s.namespace.name") == Some(namespace)
                && span.attribute("k8s.deployment.name") == Some(deployment)
        })
        .collect()
}

/// The first span from a Deployment; if none comes, the failure shows the namespace's pods and
/// the injected init containers' logs, which say why.
async fn first_span(
    cluster: &Cluster,
    sink: &OtlpSink,
    namespace: &str,
    deployment: &str,
) -> ReceivedSpan {
    let first = within(SPANS_TIMEOUT, || async {
        spans_of(sink, namespace, deployment).into_iter().next()
    })
    .await;
    if let Some(span) = first {
        return span;
    }
    let cp = cluster.control_plane();
    let pods = cp.run_kubectl(&["get", "pods", "-n", namespace, "-o", "wide"], None);
    let selector = format!("app={deployment}");
    let logs = cp.run_kubectl(
        &[
            "logs",
            "-n",
            namespace,
            "-l",
            &selector,
            "--all-containers",
            "--prefix",
            "--tail=20",
        ],
        None,
    );
    panic!(
        "no span from {namespace}/{deployment} after {SPANS_TIMEOUT:?}\n{}\n{}",
        pods.unwrap_or_else(|e| e.to_string()),
        logs.unwrap_or_else(|e| e.to_string())
    );
}

/// Each Deployment's pod template, by name.
async fn templates(client: &Client, namespace: &str) -> Vec<(String, Value)> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|deployment| {
            let name = format!(
                "{namespace}/{}",
                deployment.metadata.name.clone().unwrap_or_default()
            );
            let spec = serde_json::to_value(deployment.spec).unwrap();
            (name, spec["template"].clone())
        })
        .collect()
}

/// Whether a pod has the injection's volume (beside the service account token's, which every pod
/// gets from the API server).
fn has_payload_volume(pod: &Value) -> bool {
    pod["spec"]["volumes"]
        .as_array()
        .is_some_and(|volumes| volumes.iter().any(|v| v["name"] == "lumigo-injector"))
}

/// The one ready pod of a Deployment whose spec has the payload's `field`: `initContainers` for the
/// init container's copy, `volumes` for the image volume (the other field absent).
async fn pod_delivered_by(
    client: &Client,
    namespace: &str,
    deployment: &str,
    field: &str,
) -> Value {
    let what = format!("with the payload in {field}");
    ready_pod(client, namespace, deployment, &what, |pod| {
        let spec = &pod["spec"];
        let copied = spec["initContainers"][0]["name"] == "lumigo-injector";
        let mounted = spec["volumes"]
            .as_array()
            .is_some_and(|volumes| volumes.iter().any(|v| v["image"].is_object()));
        if field == "initContainers" {
            copied && !mounted
        } else {
            mounted && !copied
        }
    })
    .await
}

/// The one Running pod of a Deployment whose containers are all ready (a rollout's old pods gone).
async fn running_pod(client: &Client, namespace: &str, deployment: &str) -> Value {
    ready_pod(client, namespace, deployment, "", |_| true).await
}

/// The Deployment's one pod, once it is ready and `accepted` (`what` says what that asks).
async fn ready_pod(
    client: &Client,
    namespace: &str,
    deployment: &str,
    what: &str,
    accepted: impl Fn(&Value) -> bool,
) -> Value {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    eventually(
        &format!("one ready pod of {namespace}/{deployment} {what}"),
        ROLLOUT_TIMEOUT,
        || async {
            let listed = pods
                .list(&ListParams::default().labels(&format!("app={deployment}")))
                .await
                .ok()?;
            let [pod] = listed.items.as_slice() else {
                return None;
            };
            let pod = serde_json::to_value(pod).ok()?;
            let ready = pod["status"]["containerStatuses"][0]["ready"] == true;
            (ready && accepted(&pod)).then_some(pod)
        },
    )
    .await
}

async fn wait_available(cluster: &Cluster, namespace: &str) {
    let cp = cluster.control_plane();
    let timeout = format!("--timeout={}s", ROLLOUT_TIMEOUT.as_secs());
    let rollout = ["rollout", "status", "deployment", "-n", namespace, &timeout];
    if let Err(error) = cp.run_kubectl(&rollout, None) {
        let pods = cp.run_kubectl(&["get", "pods", "-n", namespace, "-o", "wide"], None);
        panic!("{namespace}: deployments not rolled out: {error}\n{pods:?}");
    }
}

/// `helm ARGS` in the release namespace, waiting for the release's resources; panics with its
/// output.
fn helm(cluster: &Cluster, args: &[&str]) {
    let output = Command::new(support::chart::helm())
        .args(args)
        .args([
            "--namespace",
            RELEASE_NAMESPACE,
            "--wait",
            "--timeout",
            "180s",
            "--kubeconfig",
        ])
        .arg(cluster.control_plane().kubeconfig())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "helm {args:?} failed:\n{}",
        support::chart::text(&output)
    );
}

fn repo_file(path: &str) -> String {
    support::chart::repo().join(path).display().to_string()
}
