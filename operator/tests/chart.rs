//! The Helm chart: `helm lint` is clean, both admission engines render, the real apiserver accepts
//! every rendered object (server-side dry run), the webhook the chart registers is the operator's
//! own definition, the containers are hardened, the NetworkPolicies admit each port only from who
//! needs it, the admission guard names the operator's identity, values.yaml is documented key by
//! key, and the Artifact Hub metadata (Chart.yaml annotations, artifacthub-pkg.yml) follows
//! Artifact Hub's schema.

mod support;

use std::collections::BTreeSet;
use std::process::Command;

use clap::Parser;
use lumigo_e2e::ControlPlane;
use lumigo_operator::admission::{webhook_configuration, WebhookTarget};
use serde_json::{json, Value};
use support::chart::*;

const ENGINES: [&str; 2] = ["builtin", "kubewarden"];

#[test]
fn helm_lint_is_clean_for_both_engines() {
    for engine in ENGINES {
        let output = run(Command::new(helm())
            .args(["lint", "--strict"])
            .arg(chart_dir())
            .args(["--set", &format!("admission.engine={engine}")]));
        let out = text(&output);
        assert!(output.status.success(), "helm lint ({engine}):\n{out}");
        assert!(out.contains("0 chart(s) failed"), "{out}");
        assert!(
            !out.contains("[INFO]") && !out.contains("[WARNING]") && !out.contains("[ERROR]"),
            "helm lint ({engine}) is not clean:\n{out}"
        );
    }
}

#[test]
fn an_unknown_engine_or_a_latest_injector_is_refused() {
    for args in [
        ["--set", "admission.engine=sidecar"],
        ["--set", "injector.image.tag=latest"],
        ["--set", "injector.payloadDelivery=copy"],
    ] {
        let output = run(Command::new(helm())
            .args(["template", "x"])
            .arg(chart_dir())
            .args(args));
        assert!(!output.status.success(), "{args:?} should not render");
    }
}

/// The init container's emptyDir holds the payload and nothing else: its `sizeLimit` is the real
/// payload's disk usage (file blocks, as the kubelet measures it) with a margin for growth, and no
/// more, so that a LimitRange or the node's ephemeral storage is not charged for space never used.
#[test]
fn the_payload_volume_limit_is_the_real_payload_with_margin() {
    let payload = lumigo_e2e::images::Artifacts::from_env().unwrap().payload;
    let used = disk_usage(&payload);
    let limit = lumigo_mutation::names::VOLUME_SIZE_LIMIT;
    let megabytes: u64 = limit.strip_suffix('M').unwrap().parse().unwrap();
    let limit_bytes = megabytes * 1_000_000;
    println!("payload {used} bytes on disk, emptyDir sizeLimit {limit}");
    assert!(
        used * 5 / 4 <= limit_bytes,
        "the payload ({used} bytes) leaves less than 25% of sizeLimit {limit}"
    );
    assert!(
        limit_bytes <= used * 2,
        "sizeLimit {limit} is over twice the payload ({used} bytes)"
    );
}

fn disk_usage(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let metadata = entry.metadata().unwrap();
            let own = metadata.blocks() * 512;
            if metadata.is_dir() {
                own + disk_usage(&entry.path())
            } else {
                own
            }
        })
        .sum()
}

/// `injector.image.digest` pins the injected image by digest, in the operator and in the
/// uninstall hook alike (both carry LUMIGO_INJECTOR_IMAGE); a malformed digest does not render.
#[test]
fn an_injector_digest_pins_the_injected_image() {
    let app_version = yaml_file(&chart_dir().join("Chart.yaml"))["appVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    let digest = format!("sha256:{}", "5891b5b522d5df08".repeat(4));
    let injector_images = |args: &[&str]| -> Vec<String> {
        let docs = documents(&render("lumigo-system", args));
        let mut images = Vec::new();
        for doc in &docs {
            let pod = match doc["kind"].as_str() {
                Some("Deployment") | Some("Job") => &doc["spec"]["template"]["spec"],
                _ => continue,
            };
            for container in pod["containers"].as_array().into_iter().flatten() {
                for env in container["env"].as_array().into_iter().flatten() {
                    if env["name"] == "LUMIGO_INJECTOR_IMAGE" {
                        images.push(env["value"].as_str().unwrap().to_owned());
                    }
                }
            }
        }
        images
    };
    let by_digest = format!("ghcr.io/lumigo-rs/autotrace:{app_version}@{digest}");
    assert_eq!(
        injector_images(&["--set", &format!("injector.image.digest={digest}")]),
        [by_digest.clone(), by_digest]
    );
    let by_tag = format!("ghcr.io/lumigo-rs/autotrace:{app_version}");
    assert_eq!(injector_images(&[]), [by_tag.clone(), by_tag]);
    for bad in [
        "sha256:abcd".to_owned(),
        digest.to_uppercase().replace("SHA256", "sha256"),
        digest.trim_start_matches("sha256:").to_owned(),
        format!("sha512:{}", "ab".repeat(64)),
    ] {
        let output = run(Command::new(helm())
            .args(["template", "x"])
            .arg(chart_dir())
            .args(["--set", &format!("injector.image.digest={bad}")]));
        assert!(
            !output.status.success() && text(&output).contains("injector.image.digest"),
            "digest {bad:?} should not render: {}",
            text(&output)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_apiserver_accepts_every_rendered_object_for_both_engines() {
    let cp = ControlPlane::shared().await.unwrap();
    for engine in ENGINES {
        let namespace = cp.create_namespace("lumigo-system", &[]).await.unwrap();
        let yaml = render(
            &namespace,
            &[
                "--include-crds",
                "--set",
                &format!("admission.engine={engine}"),
            ],
        );
        let count = documents(&yaml).len();
        // The kubewarden engine renders no AdmissionPolicy: the operator creates them at run time
        // (one per namespace with a Lumigo resource), so Kubewarden's CRDs are not needed here.
        let output = run_with_stdin(
            cp.kubectl().args(["apply", "--dry-run=server", "-f", "-"]),
            &yaml,
        );
        let out = text(&output);
        assert!(
            output.status.success(),
            "the apiserver refused the {engine} chart:\n{out}"
        );
        let accepted = out
            .lines()
            .filter(|l| l.ends_with("(server dry run)"))
            .count();
        assert_eq!(
            accepted, count,
            "{engine}: every object is accepted:\n{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_crd_examples_of_the_artifact_hub_annotations_are_valid_lumigo_resources() {
    let cp = ControlPlane::shared().await.unwrap();
    let crd = chart_dir().join("crds/lumigo.yaml");
    let output = run(cp
        .kubectl()
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(&crd));
    assert!(output.status.success(), "{}", text(&output));
    let output = run(cp.kubectl().args([
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/lumigoes.operator.lumigo.io",
    ]));
    assert!(output.status.success(), "{}", text(&output));
    let namespace = cp.create_namespace("examples", &[]).await.unwrap();
    let chart = yaml_file(&chart_dir().join("Chart.yaml"));
    let examples: Vec<Value> = serde_norway::from_str(
        chart["annotations"]["artifacthub.io/crdsExamples"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let yaml = to_yaml(&examples.iter().collect::<Vec<_>>());
    let output = run_with_stdin(
        cp.kubectl()
            .args(["apply", "--dry-run=server", "-n", &namespace, "-f", "-"]),
        &yaml,
    );
    assert!(
        output.status.success(),
        "the CRD refused the example: {}",
        text(&output)
    );
}

#[test]
fn the_chart_registers_exactly_the_webhook_the_operator_defines() {
    let docs = documents(&render("lumigo-system", &[]));
    let rendered = find(&docs, "MutatingWebhookConfiguration", "lumigo-operator");
    let service = find(&docs, "Service", "lumigo-operator-webhook");
    assert_eq!(service["spec"]["ports"][0]["port"], 443);
    let target = WebhookTarget::Service {
        name: "lumigo-operator-webhook".into(),
        namespace: "lumigo-system".into(),
        port: 443,
    };
    let expected = serde_json::to_value(webhook_configuration(
        "lumigo-operator",
        &target,
        "lumigo-system",
        None,
    ))
    .unwrap();
    assert_eq!(
        rendered["webhooks"], expected["webhooks"],
        "templates/webhook.yaml and admission::webhook_configuration() differ"
    );
    assert!(
        rendered["webhooks"][0]["clientConfig"]
            .get("caBundle")
            .is_none(),
        "the operator owns caBundle"
    );
    // The webhook's container port behind the Service.
    let deployment = find(&docs, "Deployment", "lumigo-operator");
    let ports = &deployment["spec"]["template"]["spec"]["containers"][0]["ports"];
    assert!(ports
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "webhook" && p["containerPort"] == 9443));

    let kubewarden = documents(&render(
        "lumigo-system",
        &["--set", "admission.engine=kubewarden"],
    ));
    assert!(kubewarden
        .iter()
        .all(|d| d["kind"] != "MutatingWebhookConfiguration"));
}

#[test]
fn every_container_is_hardened_and_the_operator_is_wired_to_the_proxy() {
    let chart = yaml_file(&chart_dir().join("Chart.yaml"));
    let app_version = chart["appVersion"].as_str().unwrap();
    for engine in ENGINES {
        let docs = documents(&render(
            "lumigo-system",
            &["--set", &format!("admission.engine={engine}")],
        ));
        let mut containers = 0;
        for doc in &docs {
            let pod = match doc["kind"].as_str().unwrap() {
                "Deployment" | "Job" => &doc["spec"]["template"]["spec"],
                _ => continue,
            };
            assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"],
                "RuntimeDefault"
            );
            for container in pod["containers"].as_array().unwrap() {
                containers += 1;
                let security = &container["securityContext"];
                assert_eq!(
                    security["readOnlyRootFilesystem"], true,
                    "{}",
                    container["name"]
                );
                assert_eq!(security["allowPrivilegeEscalation"], false);
                assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
                assert!(
                    container["resources"]["limits"]["memory"].is_string(),
                    "{} has limits",
                    container["name"]
                );
                assert!(!container["image"].as_str().unwrap().ends_with(":latest"));
            }
        }
        assert_eq!(containers, 3, "operator, telemetry proxy, uninstall hook");

        let operator = &find(&docs, "Deployment", "lumigo-operator")["spec"]["template"]["spec"]
            ["containers"][0];
        let env = |name: &str| -> Value { env_var(operator, name).cloned().unwrap_or(Value::Null) };
        assert_eq!(
            env("LUMIGO_INJECTOR_IMAGE")["value"],
            format!("ghcr.io/lumigo-rs/autotrace:{app_version}")
        );
        assert_eq!(
            operator["image"],
            format!("ghcr.io/lumigo-rs/lumigo-operator:{app_version}")
        );
        let proxy = "http://lumigo-operator-telemetry-proxy.lumigo-system.svc.cluster.local:4318";
        assert_eq!(
            env("LUMIGO_TRACES_ENDPOINT")["value"],
            format!("{proxy}/v1/traces")
        );
        assert_eq!(
            env("LUMIGO_LOGS_ENDPOINT")["value"],
            format!("{proxy}/v1/logs")
        );
        assert_eq!(
            env("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.name"
        );
        assert_eq!(
            env("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
            "metadata.namespace"
        );
        assert_eq!(env("LUMIGO_LEADER_ELECTION")["value"], "true");
        assert_eq!(operator["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(operator["readinessProbe"]["httpGet"]["path"], "/readyz");

        // The uninstall hook: pre-delete, deleted on success, the operator's identity.
        let hook = find(&docs, "Job", "lumigo-operator-uninstall");
        assert_eq!(
            hook["metadata"]["annotations"]["helm.sh/hook"],
            "pre-delete"
        );
        assert!(
            hook["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
                .as_str()
                .unwrap()
                .contains("hook-succeeded")
        );
        assert_eq!(
            hook["spec"]["template"]["spec"]["serviceAccountName"],
            "lumigo-operator"
        );
        assert_eq!(
            hook["spec"]["template"]["spec"]["containers"][0]["args"][0],
            "uninstall"
        );
    }
}

#[test]
fn the_telemetry_proxy_forwards_the_callers_token_and_holds_none() {
    let docs = documents(&render(
        "lumigo-system",
        &[
            "--set",
            "telemetryProxy.exporter.endpoint=https://otlp.example.com/",
        ],
    ));
    let config_map = find(&docs, "ConfigMap", "lumigo-operator-telemetry-proxy");
    let text = config_map["data"]["config.yaml"].as_str().unwrap();
    let config: Value = serde_norway::from_str(text).unwrap();
    assert_eq!(
        config["receivers"]["otlp"]["protocols"]["http"]["include_metadata"],
        true
    );
    assert_eq!(
        config["receivers"]["otlp"]["protocols"]["http"]["endpoint"],
        "0.0.0.0:4318"
    );
    assert_eq!(
        config["extensions"]["headers_setter"]["headers"][0],
        json!({"key": "Authorization", "from_context": "authorization", "action": "upsert"})
    );
    assert_eq!(
        config["processors"]["batch"]["metadata_keys"],
        json!(["authorization"])
    );
    assert_eq!(
        config["exporters"]["otlphttp"]["endpoint"],
        "https://otlp.example.com"
    );
    assert_eq!(
        config["exporters"]["otlphttp"]["auth"]["authenticator"],
        "headers_setter"
    );
    for pipeline in ["traces", "logs"] {
        let processors = &config["service"]["pipelines"][pipeline]["processors"];
        assert_eq!(
            processors,
            &json!(["memory_limiter", "k8sattributes", "batch"])
        );
    }
    let has_token = text
        .as_bytes()
        .windows(23)
        .any(|w| w.starts_with(b"t_") && w[2..].iter().all(u8::is_ascii_hexdigit));
    assert!(
        !has_token && !text.to_lowercase().contains("lumigotoken"),
        "no token in the collector config"
    );
    let role = find(&docs, "ClusterRole", "lumigo-operator-telemetry-proxy");
    assert_eq!(
        role["rules"],
        json!([
            {
                "apiGroups": [""],
                "resources": ["pods", "namespaces"],
                "verbs": ["get", "list", "watch"]
            },
            {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]}
        ])
    );
    let proxy = find(&docs, "Deployment", "lumigo-operator-telemetry-proxy");
    let image = proxy["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap();
    assert!(
        image.starts_with("otel/opentelemetry-collector-contrib:0."),
        "{image}"
    );
}

/// The proxy counts spans per workload for the operator, exposes no resource attribute, and the
/// operator is told exactly the proxy pods' labels; with the verification off, neither side of it.
#[test]
fn the_proxy_counts_spans_where_the_operator_reads_them() {
    let docs = documents(&render("lumigo-system", &[]));
    let config_map = find(&docs, "ConfigMap", "lumigo-operator-telemetry-proxy");
    let config: Value =
        serde_norway::from_str(config_map["data"]["config.yaml"].as_str().unwrap()).unwrap();
    let pipelines = &config["service"]["pipelines"];
    assert_eq!(
        pipelines["traces"]["exporters"],
        json!(["otlphttp", "spanmetrics"])
    );
    assert_eq!(
        pipelines["metrics/span-counts"],
        json!({"receivers": ["spanmetrics"], "exporters": ["prometheus"]})
    );
    let counted = &config["connectors"]["spanmetrics"];
    assert_eq!(
        counted["aggregation_temporality"],
        "AGGREGATION_TEMPORALITY_DELTA"
    );
    let dimensions: Vec<&str> = counted["dimensions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    for needed in [
        "k8s.namespace.name",
        "k8s.deployment.name",
        "k8s.container.name",
        "process.runtime.name",
    ] {
        assert!(dimensions.contains(&needed), "{needed}: {dimensions:?}");
    }
    assert_eq!(
        config["exporters"]["prometheus"]["endpoint"],
        "0.0.0.0:8889"
    );
    assert_eq!(config["exporters"]["prometheus"]["send_timestamps"], true);

    let proxy = find(&docs, "Deployment", "lumigo-operator-telemetry-proxy");
    let template = &proxy["spec"]["template"];
    assert!(
        template["spec"]["containers"][0]["args"]
            .as_array()
            .unwrap()
            .contains(&json!(
                "--feature-gates=connector.spanmetrics.excludeResourceMetrics"
            )),
        "the counts carry no resource attributes (a tracer's resource may hold its environment)"
    );
    let operator = find(&docs, "Deployment", "lumigo-operator");
    let container = &operator["spec"]["template"]["spec"]["containers"][0];
    let variable =
        |name: &str| env_var(container, name).map(|v| v["value"].as_str().unwrap().to_owned());
    let selector = variable("LUMIGO_TELEMETRY_PROXY_SELECTOR").unwrap();
    let labels = template["metadata"]["labels"].as_object().unwrap();
    for pair in selector.split(',') {
        let (key, value) = pair.split_once('=').unwrap();
        assert_eq!(labels[key], value, "{selector} selects the proxy's pods");
    }
    assert_eq!(
        variable("LUMIGO_TELEMETRY_PROXY_METRICS_PORT").as_deref(),
        Some("8889")
    );

    for off in [
        "tracingVerification.enabled=false",
        "telemetryProxy.k8sattributes=false",
    ] {
        let docs = documents(&render("lumigo-system", &["--set", off]));
        let config_map = find(&docs, "ConfigMap", "lumigo-operator-telemetry-proxy");
        assert!(
            !config_map["data"]["config.yaml"]
                .as_str()
                .unwrap()
                .contains("spanmetrics"),
            "{off}"
        );
        let operator = find(&docs, "Deployment", "lumigo-operator");
        let env = operator["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
        assert!(!env.contains("LUMIGO_TELEMETRY_PROXY_SELECTOR"), "{off}");
    }
}

// ---- NetworkPolicies and the admission guard ----------------------------------------------------

/// The ports a NetworkPolicy rule admits (by name) and its peers (`None`: any source).
fn ingress_rules(policy: &Value) -> Vec<(Vec<String>, Option<Value>)> {
    policy["spec"]["ingress"]
        .as_array()
        .unwrap_or_else(|| panic!("ingress is a list: {policy}"))
        .iter()
        .map(|rule| {
            let ports = rule["ports"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    assert_eq!(p["protocol"], "TCP");
                    p["port"].as_str().unwrap().to_owned()
                })
                .collect();
            (ports, rule.get("from").cloned())
        })
        .collect()
}

fn container_port_names(deployment: &Value) -> BTreeSet<String> {
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect()
}

fn pod_labels(deployment: &Value) -> Value {
    deployment["spec"]["template"]["metadata"]["labels"].clone()
}

/// `selector` (matchLabels) selects pods labelled `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector["matchLabels"]
        .as_object()
        .unwrap()
        .iter()
        .all(|(key, value)| &labels[key] == value)
}

const PROMETHEUS: &str = concat!(
    r#"[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}},"#,
    r#""podSelector":{"matchLabels":{"app.kubernetes.io/name":"prometheus"}}}]"#
);

/// Each listening port of the chart's pods admits only who needs it: the webhook any source (the
/// apiserver's addresses are not selectable), the operator's metrics only configured scrapers, the
/// proxy's OTLP port every pod, its span counts the operator's pods and configured scrapers; the
/// probes' ports are left to the kubelet (host traffic), and egress is not restricted.
#[test]
fn network_policies_admit_each_port_only_from_who_needs_it() {
    let docs = documents(&render("lumigo-system", &[]));
    let operator = find(&docs, "Deployment", "lumigo-operator");
    let proxy = find(&docs, "Deployment", "lumigo-operator-telemetry-proxy");
    let policy = find(&docs, "NetworkPolicy", "lumigo-operator");
    let proxy_policy = find(&docs, "NetworkPolicy", "lumigo-operator-telemetry-proxy");
    for (policy, pods) in [(policy, operator), (proxy_policy, proxy)] {
        assert_eq!(policy["metadata"]["namespace"], "lumigo-system");
        assert_eq!(
            policy["spec"]["policyTypes"],
            json!(["Ingress"]),
            "egress stays open"
        );
        assert!(policy["spec"].get("egress").is_none());
        assert!(selects(&policy["spec"]["podSelector"], &pod_labels(pods)));
        // Every port a rule names is a container port of the pods it selects.
        let names = container_port_names(pods);
        for (ports, _) in ingress_rules(policy) {
            assert!(
                ports.iter().all(|p| names.contains(p)),
                "{ports:?} in {names:?}"
            );
        }
    }
    // The operator and its proxy select each other's pods not.
    assert!(!selects(&policy["spec"]["podSelector"], &pod_labels(proxy)));
    assert!(!selects(
        &proxy_policy["spec"]["podSelector"],
        &pod_labels(operator)
    ));

    assert_eq!(
        ingress_rules(policy),
        vec![(vec!["webhook".to_owned()], None)],
        "the webhook from anywhere, and nothing else (metrics: no scraper by default)"
    );
    let proxy_rules = ingress_rules(proxy_policy);
    assert_eq!(
        proxy_rules[0],
        (
            vec!["otlp-http".to_owned()],
            Some(json!([{"namespaceSelector": {}}]))
        ),
        "OTLP from every pod of every namespace"
    );
    assert_eq!(proxy_rules[1].0, vec!["span-counts".to_owned()]);
    let readers = proxy_rules[1].1.clone().unwrap();
    assert_eq!(readers.as_array().unwrap().len(), 1, "{readers}");
    assert!(
        readers[0].get("namespaceSelector").is_none(),
        "the release namespace only"
    );
    assert!(selects(&readers[0]["podSelector"], &pod_labels(operator)));
    assert_eq!(proxy_rules.len(), 2, "health (the probes) is not opened");

    // Configured scrapers, and the kubewarden engine (no webhook port).
    let docs = documents(&render(
        "lumigo-system",
        &[
            "--set",
            "admission.engine=kubewarden",
            "--set-json",
            &format!("networkPolicy.metricsFrom={PROMETHEUS}"),
            "--set-json",
            &format!("networkPolicy.telemetryProxy.metricsFrom={PROMETHEUS}"),
            "--set-json",
            "networkPolicy.telemetryProxy.otlpFrom=[]",
        ],
    ));
    let prometheus: Value = serde_json::from_str(PROMETHEUS).unwrap();
    assert_eq!(
        ingress_rules(find(&docs, "NetworkPolicy", "lumigo-operator")),
        vec![(vec!["http-metrics".to_owned()], Some(prometheus.clone()))]
    );
    let proxy_rules = ingress_rules(find(
        &docs,
        "NetworkPolicy",
        "lumigo-operator-telemetry-proxy",
    ));
    assert_eq!(
        proxy_rules[0],
        (vec!["otlp-http".to_owned()], None),
        "otlpFrom=[]: any source"
    );
    assert_eq!(proxy_rules[1].1.as_ref().unwrap()[1], prometheus[0]);
    let docs = documents(&render(
        "lumigo-system",
        &["--set", "admission.engine=kubewarden"],
    ));
    assert_eq!(
        find(&docs, "NetworkPolicy", "lumigo-operator")["spec"]["ingress"],
        json!([]),
        "nothing but the kubelet reaches the operator"
    );

    // Span counts off: no rule for a port that does not exist.
    let docs = documents(&render(
        "lumigo-system",
        &["--set", "tracingVerification.enabled=false"],
    ));
    let proxy_rules = ingress_rules(find(
        &docs,
        "NetworkPolicy",
        "lumigo-operator-telemetry-proxy",
    ));
    assert_eq!(proxy_rules.len(), 1);
    // Switched off, or no proxy.
    let docs = documents(&render(
        "lumigo-system",
        &["--set", "networkPolicy.enabled=false"],
    ));
    assert!(docs.iter().all(|d| d["kind"] != "NetworkPolicy"));
    let docs = documents(&render(
        "lumigo-system",
        &["--set", "telemetryProxy.enabled=false"],
    ));
    let policies: Vec<&Value> = docs
        .iter()
        .filter(|d| d["kind"] == "NetworkPolicy")
        .collect();
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0]["metadata"]["name"], "lumigo-operator");
}

/// The rendered NetworkPolicies installed (not a dry run) on the real apiserver, read back as it
/// stores them. The e2e node's CNI (Debian's bridge plugins) does not enforce NetworkPolicy, so no
/// test sends traffic through them: what is proven is that the apiserver accepts them as rendered
/// (named ports, peers) and keeps the rules unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn the_apiserver_stores_the_network_policies_as_rendered() {
    let cp = ControlPlane::shared().await.unwrap();
    for args in [
        vec![],
        vec![
            "--set-json".to_owned(),
            format!("networkPolicy.metricsFrom={PROMETHEUS}"),
            "--set-json".to_owned(),
            format!("networkPolicy.telemetryProxy.metricsFrom={PROMETHEUS}"),
        ],
        vec!["--set".to_owned(), "admission.engine=kubewarden".to_owned()],
    ] {
        let namespace = cp.create_namespace("lumigo-netpol", &[]).await.unwrap();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let docs = documents(&render(&namespace, &args));
        let policies: Vec<&Value> = docs
            .iter()
            .filter(|d| d["kind"] == "NetworkPolicy")
            .collect();
        assert_eq!(policies.len(), 2, "{args:?}");
        let output = run_with_stdin(cp.kubectl().args(["apply", "-f", "-"]), &to_yaml(&policies));
        assert!(output.status.success(), "{args:?}: {}", text(&output));
        for policy in policies {
            let name = policy["metadata"]["name"].as_str().unwrap();
            let output = run(cp.kubectl().args([
                "get",
                "networkpolicy",
                name,
                "-n",
                &namespace,
                "-o",
                "json",
            ]));
            assert!(output.status.success(), "{}", text(&output));
            let stored: Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(stored["spec"]["podSelector"], policy["spec"]["podSelector"]);
            assert_eq!(stored["spec"]["policyTypes"], policy["spec"]["policyTypes"]);
            // An empty ingress list is stored as no list: both mean nothing is admitted.
            let rules = |p: &Value| match &p["spec"]["ingress"] {
                Value::Null => json!([]),
                rules => rules.clone(),
            };
            assert_eq!(rules(&stored), rules(policy), "{args:?}: {name}");
        }
    }
}

/// The admission guard names the chart's own ServiceAccount and the protected namespaces (with the
/// release namespace), and goes away when switched off. operator/tests/rbac.rs sends it requests.
#[test]
fn the_admission_guard_names_the_operators_identity_and_the_protected_namespaces() {
    let docs = documents(&render("shop-ops", &["--set", "fullnameOverride=tracing"]));
    let policy = find(
        &docs,
        "ValidatingAdmissionPolicy",
        "tracing-protected-namespaces",
    );
    let binding = find(
        &docs,
        "ValidatingAdmissionPolicyBinding",
        "tracing-protected-namespaces",
    );
    assert_eq!(
        binding["spec"]["policyName"],
        "tracing-protected-namespaces"
    );
    assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
    assert_eq!(policy["spec"]["failurePolicy"], "Fail");
    assert_eq!(
        policy["spec"]["matchConditions"][0]["expression"],
        r#"request.userInfo.username == "system:serviceaccount:shop-ops:tracing""#
    );
    let service_account = find(&docs, "ServiceAccount", "tracing");
    assert_eq!(service_account["metadata"]["namespace"], "shop-ops");
    assert_eq!(
        policy["spec"]["variables"][0]["expression"],
        r#"["kube-system","kube-public","kube-node-lease","shop-ops"]"#
    );
    let resources: BTreeSet<&str> = policy["spec"]["matchConstraints"]["resourceRules"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|rule| {
            assert_eq!(rule["operations"], json!(["CREATE", "UPDATE", "DELETE"]));
            rule["resources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r.as_str().unwrap())
        })
        .collect();
    for kind in lumigo_mutation::WorkloadKind::ALL.map(lumigo_mutation::WorkloadKind::plural) {
        assert!(
            resources.contains(kind) && resources.contains(format!("{kind}/*").as_str()),
            "{kind}"
        );
    }

    // The webhook configuration: only its own, by name, only the caBundle; none with kubewarden.
    let webhook = find(
        &docs,
        "ValidatingAdmissionPolicy",
        "tracing-webhook-ca-only",
    );
    assert_eq!(
        webhook["spec"]["matchConstraints"]["resourceRules"][0]["resourceNames"],
        json!(["tracing"])
    );
    assert_eq!(
        webhook["spec"]["matchConditions"],
        policy["spec"]["matchConditions"]
    );
    find(
        &docs,
        "ValidatingAdmissionPolicyBinding",
        "tracing-webhook-ca-only",
    );
    let kubewarden = documents(&render(
        "shop-ops",
        &["--set", "admission.engine=kubewarden"],
    ));
    assert!(kubewarden.iter().all(|d| !d["metadata"]["name"]
        .as_str()
        .unwrap()
        .ends_with("webhook-ca-only")));
    find(
        &kubewarden,
        "ValidatingAdmissionPolicy",
        "lumigo-operator-protected-namespaces",
    );

    let docs = documents(&render(
        "lumigo-system",
        &[
            "--set-json",
            r#"protectedNamespaces.namespaces=["billing","lumigo-system"]"#,
        ],
    ));
    let policy = find(
        &docs,
        "ValidatingAdmissionPolicy",
        "lumigo-operator-protected-namespaces",
    );
    let protected = [
        "kube-system",
        "kube-public",
        "kube-node-lease",
        "billing",
        "lumigo-system",
    ];
    assert_eq!(
        policy["spec"]["variables"][0]["expression"],
        serde_json::to_string(&protected).unwrap(),
        "the cluster's namespaces always, the release namespace once"
    );
    // The one list: the webhook is not sent it, and the operator's rollout leaves it alone.
    let webhook = find(&docs, "MutatingWebhookConfiguration", "lumigo-operator");
    assert_eq!(
        webhook["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        json!(protected)
    );
    let operator = find(&docs, "Deployment", "lumigo-operator");
    let passed = env_var(
        &operator["spec"]["template"]["spec"]["containers"][0],
        "LUMIGO_PROTECTED_NAMESPACES",
    )
    .expect("the operator is told the protected namespaces");
    assert_eq!(passed["value"], protected.join(","));
    let docs = documents(&render(
        "lumigo-system",
        &["--set", "protectedNamespaces.enabled=false"],
    ));
    assert!(docs.iter().all(|d| !d["kind"]
        .as_str()
        .unwrap()
        .starts_with("ValidatingAdmissionPolicy")));
}

/// The token given at install is rendered in one Secret of the release namespace and nowhere else
/// (no argument, no literal environment value); a selection is rendered for the operator as JSON;
/// bad values are install-time errors.
#[test]
fn the_install_token_is_rendered_only_in_its_secret() {
    let token = "t_0123456789abcdef01234";
    let docs = documents(&render(
        "lumigo-system",
        &[
            "--set",
            &format!("lumigoToken.value={token}"),
            "--set",
            "monitoredNamespaces={shop,checkout}",
        ],
    ));
    let holding: Vec<String> = docs
        .iter()
        .filter(|d| d.to_string().contains(token))
        .map(|d| format!("{} {}", d["kind"], d["metadata"]["name"]))
        .collect();
    assert_eq!(holding, [r#""Secret" "lumigo-operator-lumigo-token""#]);
    let operator = find(&docs, "Deployment", "lumigo-operator");
    let container = &operator["spec"]["template"]["spec"]["containers"][0];
    let value = |name: &str| env_var(container, name).map(|v| v["value"].clone());
    assert_eq!(
        value("LUMIGO_MONITORED_NAMESPACES"),
        Some(json!(r#"{"names":["shop","checkout"]}"#))
    );
    assert_eq!(
        value("LUMIGO_TOKEN_SECRET"),
        Some(json!("lumigo-operator-lumigo-token"))
    );
    // An existing Secret instead: nothing of the token is rendered at all.
    let docs = documents(&render(
        "lumigo-system",
        &[
            "--set",
            "lumigoToken.existingSecret.name=my-token",
            "--set",
            "monitoredNamespaces=all",
        ],
    ));
    assert!(!docs
        .iter()
        .any(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "lumigo-operator-lumigo-token"));
    for (args, error) in [
        (vec!["monitoredNamespaces={shop}"], "needs the token"),
        (
            vec!["monitoredNamespaces={shop}", "lumigoToken.value=t_secret"],
            "is not a Lumigo token",
        ),
        (
            vec![
                "monitoredNamespaces=some",
                "lumigoToken.value=t_0123456789abcdef01234",
            ],
            "is neither a list of names",
        ),
        (
            vec![
                "monitoredNamespaces={Shop_1}",
                "lumigoToken.value=t_0123456789abcdef01234",
            ],
            "is not a namespace name",
        ),
        (
            vec![
                "monitoredNamespaces.labels.team=blue",
                "lumigoToken.value=t_0123456789abcdef01234",
            ],
            "matchLabels and matchExpressions",
        ),
    ] {
        let mut command = Command::new(helm());
        command.args(["template", "lumigo"]).arg(chart_dir());
        for arg in &args {
            command.args(["--set", arg]);
        }
        let output = run(&mut command);
        let said = text(&output);
        assert!(
            !output.status.success() && said.contains(error),
            "{args:?}: {said}"
        );
        assert!(
            !said.contains("t_secret"),
            "the refused value is not echoed"
        );
    }
}

/// Every leaf key of values.yaml carries a `# --` comment, on itself or on an enclosing key.
#[test]
fn values_yaml_is_documented_key_by_key() {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    // (indent, documented) of the enclosing keys.
    let mut stack: Vec<(usize, bool)> = Vec::new();
    let mut previous_is_doc = false;
    let mut undocumented = Vec::new();
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.starts_with('#') {
            previous_is_doc = previous_is_doc || trimmed.starts_with("# --");
            continue;
        }
        let indent = line.len() - trimmed.len();
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        let key = trimmed.split(':').next().unwrap();
        let documented = previous_is_doc || stack.iter().any(|(_, d)| *d);
        let is_parent = trimmed.ends_with(':');
        if !is_parent && !documented {
            undocumented.push(key.to_owned());
        }
        stack.push((indent, previous_is_doc));
        previous_is_doc = false;
    }
    assert!(
        undocumented.is_empty(),
        "values.yaml keys without a `# --` comment: {undocumented:?}"
    );
}

// ---- Artifact Hub -------------------------------------------------------------------------------
// The schema below is written down from Artifact Hub's documentation of Helm annotations
// (artifacthub.io/docs/topics/annotations/helm) and of the Kubewarden package metadata file
// (artifacthub.io/docs/topics/repositories/kubewarden-policies, artifacthub-pkg.yml).

const CATEGORIES: [&str; 9] = [
    "ai-machine-learning",
    "database",
    "integration-delivery",
    "monitoring-logging",
    "networking",
    "security",
    "storage",
    "streaming-messaging",
    "skip-prediction",
];
const CAPABILITIES: [&str; 5] = [
    "Basic Install",
    "Seamless Upgrades",
    "Full Lifecycle",
    "Deep Insights",
    "Auto Pilot",
];
const CHANGE_KINDS: [&str; 6] = [
    "added",
    "changed",
    "deprecated",
    "removed",
    "fixed",
    "security",
];

fn is_url(text: &str) -> bool {
    (text.starts_with("https://") || text.starts_with("http://"))
        && !text.contains(char::is_whitespace)
}

fn is_semver(text: &str) -> bool {
    let core = text.split(['-', '+']).next().unwrap();
    let parts: Vec<&str> = core.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

/// A YAML list embedded in an annotation string, each entry an object.
fn annotation_list(annotations: &Value, key: &str) -> Vec<Value> {
    let text = annotations[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} must be a string"));
    let value: Value =
        serde_norway::from_str(text).unwrap_or_else(|e| panic!("{key} is not YAML: {e}"));
    let list = value
        .as_array()
        .unwrap_or_else(|| panic!("{key} must be a YAML list"))
        .clone();
    assert!(
        !list.is_empty() && list.iter().all(Value::is_object),
        "{key}: a non-empty list of objects"
    );
    list
}

fn only_keys(object: &Value, allowed: &[&str], what: &str) {
    let keys: BTreeSet<&str> = object
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let unknown: Vec<&&str> = keys.iter().filter(|k| !allowed.contains(k)).collect();
    assert!(unknown.is_empty(), "{what}: unknown keys {unknown:?}");
}

#[test]
fn chart_yaml_annotations_follow_artifact_hubs_schema() {
    let chart = yaml_file(&chart_dir().join("Chart.yaml"));
    assert_eq!(chart["apiVersion"], "v2");
    assert!(is_semver(chart["version"].as_str().unwrap()));
    assert_eq!(
        chart["appVersion"], chart["version"],
        "chart, operator and injector are released together"
    );
    let workspace: Value = toml_version();
    assert_eq!(
        chart["appVersion"], workspace,
        "appVersion is the workspace's version"
    );
    let annotations = &chart["annotations"];
    for (key, value) in annotations.as_object().unwrap() {
        assert!(key.starts_with("artifacthub.io/"), "{key}");
        assert!(value.is_string(), "annotation {key} must be a string");
    }
    assert_eq!(annotations["artifacthub.io/operator"], "true");
    assert!(CAPABILITIES.contains(
        &annotations["artifacthub.io/operatorCapabilities"]
            .as_str()
            .unwrap()
    ));
    assert!(CATEGORIES.contains(&annotations["artifacthub.io/category"].as_str().unwrap()));
    for flag in [
        "artifacthub.io/prerelease",
        "artifacthub.io/containsSecurityUpdates",
    ] {
        assert!(
            ["true", "false"].contains(&annotations[flag].as_str().unwrap()),
            "{flag}"
        );
    }
    assert_eq!(annotations["artifacthub.io/license"], "Apache-2.0");

    for link in annotation_list(annotations, "artifacthub.io/links") {
        only_keys(&link, &["name", "url"], "links");
        assert!(
            link["name"].is_string() && is_url(link["url"].as_str().unwrap()),
            "{link}"
        );
    }
    let app_version = chart["appVersion"].as_str().unwrap();
    let images = annotation_list(annotations, "artifacthub.io/images");
    for image in &images {
        only_keys(
            image,
            &["name", "image", "whitelisted", "platforms"],
            "images",
        );
        let reference = image["image"].as_str().unwrap();
        let (_, tag) = reference
            .rsplit_once(':')
            .unwrap_or_else(|| panic!("{reference} has a tag"));
        assert_ne!(tag, "latest");
        for platform in image["platforms"].as_array().unwrap() {
            assert!(["linux/amd64", "linux/arm64"].contains(&platform.as_str().unwrap()));
        }
    }
    // The images listed are the ones the chart deploys.
    let values = yaml_file(&chart_dir().join("values.yaml"));
    let listed: BTreeSet<String> = images
        .iter()
        .map(|i| i["image"].as_str().unwrap().to_owned())
        .collect();
    let deployed: BTreeSet<String> = [
        format!(
            "{}:{app_version}",
            values["operator"]["image"]["repository"].as_str().unwrap()
        ),
        format!(
            "{}:{app_version}",
            values["injector"]["image"]["repository"].as_str().unwrap()
        ),
        format!(
            "{}:{}",
            values["telemetryProxy"]["image"]["repository"]
                .as_str()
                .unwrap(),
            values["telemetryProxy"]["image"]["tag"].as_str().unwrap()
        ),
    ]
    .into();
    assert_eq!(listed, deployed);

    let crd = yaml_file(&chart_dir().join("crds/lumigo.yaml"));
    for entry in annotation_list(annotations, "artifacthub.io/crds") {
        only_keys(
            &entry,
            &["kind", "version", "name", "displayName", "description"],
            "crds",
        );
        assert_eq!(entry["name"], crd["metadata"]["name"]);
        assert_eq!(entry["kind"], crd["spec"]["names"]["kind"]);
        assert!(crd["spec"]["versions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["name"] == entry["version"]));
        assert!(entry["displayName"].is_string() && entry["description"].is_string());
    }
    for example in annotation_list(annotations, "artifacthub.io/crdsExamples") {
        assert_eq!(example["kind"], crd["spec"]["names"]["kind"]);
        assert!(example["apiVersion"]
            .as_str()
            .unwrap()
            .starts_with("operator.lumigo.io/"));
    }
    for change in annotation_list(annotations, "artifacthub.io/changes") {
        only_keys(&change, &["kind", "description", "links"], "changes");
        assert!(
            CHANGE_KINDS.contains(&change["kind"].as_str().unwrap()),
            "{change}"
        );
        assert!(!change["description"].as_str().unwrap().is_empty());
    }
    for maintainer in chart["maintainers"].as_array().unwrap() {
        assert!(maintainer["name"].is_string());
    }
}

#[test]
fn artifacthub_pkg_yml_follows_artifact_hubs_package_schema() {
    let package = yaml_file(&repo().join("artifacthub-pkg.yml"));
    only_keys(
        &package,
        &[
            "version",
            "name",
            "displayName",
            "createdAt",
            "description",
            "logoPath",
            "logoURL",
            "digest",
            "license",
            "homeURL",
            "appVersion",
            "containersImages",
            "containsSecurityUpdates",
            "operator",
            "deprecated",
            "prerelease",
            "keywords",
            "links",
            "readme",
            "install",
            "changes",
            "maintainers",
            "provider",
            "ignore",
            "recommendations",
            "screenshots",
            "annotations",
        ],
        "artifacthub-pkg.yml",
    );
    for required in ["version", "name", "displayName", "createdAt", "description"] {
        assert!(package[required].is_string(), "{required} is required");
    }
    assert!(is_semver(package["version"].as_str().unwrap()));
    let name = package["name"].as_str().unwrap();
    assert!(
        name.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
        "{name}"
    );
    // RFC 3339
    let created = package["createdAt"].as_str().unwrap();
    assert!(
        time::OffsetDateTime::parse(created, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{created}"
    );
    assert!(is_url(package["homeURL"].as_str().unwrap()));
    for image in package["containersImages"].as_array().unwrap() {
        only_keys(
            image,
            &["name", "image", "whitelisted", "platforms"],
            "containersImages",
        );
        assert!(!image["image"].as_str().unwrap().ends_with(":latest"));
    }
    for link in package["links"].as_array().unwrap() {
        only_keys(link, &["name", "url"], "links");
        assert!(is_url(link["url"].as_str().unwrap()));
    }
    for maintainer in package["maintainers"].as_array().unwrap() {
        only_keys(maintainer, &["name", "email"], "maintainers");
    }
    for recommendation in package["recommendations"].as_array().unwrap() {
        assert!(is_url(recommendation["url"].as_str().unwrap()));
    }
    for (key, value) in package["annotations"].as_object().unwrap() {
        assert!(key.starts_with("kubewarden/"), "{key}");
        assert!(value.is_string(), "annotation {key} must be a string");
    }
    // The policy image the Kubewarden engine of the chart pulls is the one published here.
    let values = yaml_file(&chart_dir().join("values.yaml"));
    let module = values["admission"]["kubewarden"]["module"]
        .as_str()
        .unwrap();
    assert_eq!(
        module.strip_prefix("registry://").unwrap(),
        package["containersImages"][0]["image"].as_str().unwrap()
    );
}

/// Values that turn every optional part of the operator's environment on.
const MONITORING: [&str; 6] = [
    "--set",
    "monitoredNamespaces={shop}",
    "--set",
    "lumigoToken.value=t_0123456789abcdef01234",
    "--set",
    "excludedNamespaces={sandbox}",
];

fn toml_version() -> Value {
    Value::String(env!("CARGO_PKG_VERSION").to_owned())
}

fn env_of(command: &clap::Command) -> BTreeSet<String> {
    command
        .get_arguments()
        .filter_map(|a| a.get_env())
        .map(|e| e.to_string_lossy().into_owned())
        .collect()
}

#[test]
fn every_variable_the_chart_sets_is_read_by_the_operator() {
    use clap::CommandFactory;
    let cli = lumigo_operator::cli::Cli::command();
    let global = env_of(&cli);
    let subcommand = |name: &str| {
        env_of(
            cli.get_subcommands()
                .find(|c| c.get_name() == name)
                .unwrap(),
        )
    };
    for engine in ENGINES {
        let docs = documents(&render(
            "lumigo-system",
            &[
                &["--set", &format!("admission.engine={engine}")][..],
                &MONITORING[..],
            ]
            .concat(),
        ));
        for (kind, name, command) in [
            ("Deployment", "lumigo-operator", "run"),
            ("Job", "lumigo-operator-uninstall", "uninstall"),
        ] {
            let known: BTreeSet<String> = subcommand(command).union(&global).cloned().collect();
            let container = &find(&docs, kind, name)["spec"]["template"]["spec"]["containers"][0];
            for variable in container["env"].as_array().unwrap() {
                let variable = variable["name"].as_str().unwrap();
                if variable == "RUST_LOG" {
                    continue;
                }
                assert!(
                    known.contains(variable),
                    "{engine}: {kind} {name} sets {variable}, which `{command}` does not read"
                );
            }
            let args = container["args"].as_array().unwrap();
            let parsed = lumigo_operator::cli::Cli::try_parse_from(
                std::iter::once("lumigo-operator").chain(args.iter().map(|a| a.as_str().unwrap())),
            );
            assert!(
                parsed.is_ok(),
                "{kind} {name}: args {args:?} do not parse: {:?}",
                parsed.err()
            );
        }
    }
}

/// The image recipes (images/) cannot be built here (no Docker engine); what they rely on can be
/// checked: the scripts and recipes they run exist, every base image is pinned, the final stages
/// are non-root with the uid the chart runs as, and the autotrace entrypoint copies to the
/// directory the init container is given.
#[test]
fn the_image_recipes_use_what_exists_and_run_as_the_chart_expects() {
    let read = |path: &str| {
        std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
    };
    let operator = read("images/operator.Dockerfile");
    let autotrace = read("images/autotrace.Dockerfile");
    for dockerfile in [&operator, &autotrace] {
        for from in dockerfile.lines().filter(|l| l.starts_with("FROM ")) {
            let image = from
                .split_whitespace()
                .find(|w| !w.starts_with("--") && *w != "FROM")
                .unwrap();
            assert!(
                image == "scratch" || (image.contains(':') && !image.ends_with(":latest")),
                "unpinned base image: {from}"
            );
        }
        let last_user = dockerfile
            .lines()
            .rfind(|l| l.starts_with("USER "))
            .unwrap();
        assert_eq!(last_user, "USER 65532:65532");
    }
    let values = documents(&render("lumigo-system", &[]));
    let pod = &find(&values, "Deployment", "lumigo-operator")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);

    for script in ["injector/scripts/build.sh", "injector/scripts/payload.sh"] {
        assert!(
            autotrace.contains(script),
            "autotrace.Dockerfile runs {script}"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(repo().join(script))
                .unwrap()
                .permissions(),
        );
        assert!(mode & 0o111 != 0, "{script} is executable");
    }
    assert!(autotrace.contains(&format!(
        "ENV TARGET_DIRECTORY={}",
        lumigo_mutation::names::INIT_TARGET_DIRECTORY
    )));
    // payload.sh installs from the committed locks: a build context without them cannot build.
    let ignored = read("images/autotrace.Dockerfile.dockerignore");
    for needed in [
        "injector/payload/nodejs/package-lock.json",
        "injector/payload/python/lock/layers.txt",
    ] {
        assert!(repo().join(needed).is_file(), "{needed} exists");
        let components: Vec<&str> = needed.split('/').collect();
        for pattern in ignored.lines().map(str::trim) {
            if pattern.is_empty() || pattern.starts_with('#') {
                continue;
            }
            let pattern = pattern.trim_end_matches('/');
            let excluded = match pattern.strip_prefix("**/") {
                Some(name) => components.contains(&name),
                None => needed == pattern || needed.starts_with(&format!("{pattern}/")),
            };
            assert!(
                !excluded,
                "the autotrace build context excludes {needed} ({pattern})"
            );
        }
    }
    assert!(autotrace.contains("cp -R /opt/lumigo/. \\\"$TARGET_DIRECTORY\\\"/"));
    assert!(autotrace.contains(&format!(
        "test -f /out{}",
        lumigo_mutation::names::INJECTOR_LIBRARY_PATH
    )));
    let policy_justfile = read("policy-wasm/justfile");
    for recipe in ["build:", "path:"] {
        assert!(
            policy_justfile.lines().any(|l| l.starts_with(recipe)),
            "policy::{recipe} exists"
        );
    }
    assert!(operator.contains("just policy::build") && operator.contains("unknown-linux-musl"));
    let push = read("images/build.sh");
    assert!(push.contains("kwctl push") && push.contains("oras push"));
    assert!(push.contains("linux/amd64,linux/arm64"));
}
