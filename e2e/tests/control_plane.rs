//! The acceptance tests of the e2e control plane. They share one control plane, each in its own
//! namespace, the way the project's end-to-end suites use it.

use std::convert::Infallible;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, WebhookClientConfig,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::ByteString;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, PostParams};
use kube::{Api, Resource};
use lumigo_e2e::{CertificateAuthority, ControlPlane};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

const WAIT: Duration = Duration::from_secs(60);

/// Retries `attempt` until it yields `Some`, for state that controllers or caches settle
/// eventually.
async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let started = Instant::now();
    loop {
        let last = attempt().await;
        if let Ok(Some(value)) = last {
            return Ok(value);
        }
        if started.elapsed() > WAIT {
            bail!(
                "{what}: not after {WAIT:?} (last attempt: {:?})",
                last.map(|_| ())
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("test fixture matches the Kubernetes type")
}

#[tokio::test]
async fn deployment_yields_replicaset_and_pending_pods() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.create_namespace("deployment", &[]).await?;
    let client = cp.client()?;
    let deployment: Deployment = from_json(json!({
        "metadata": {"name": "app"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "app"}},
            "template": {
                "metadata": {"labels": {"app": "app"}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/app:1"}]}
            }
        }
    }));
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &deployment)
        .await?;
    let deployment_uid = deployment.meta().uid.clone().context("uid")?;

    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), &ns);
    let replica_set = eventually("a ReplicaSet owned by the Deployment", || async {
        let list = replica_sets.list(&ListParams::default()).await?;
        Ok(list
            .items
            .into_iter()
            .find(|rs| owned_by(rs.meta().owner_references.as_deref(), &deployment_uid)))
    })
    .await?;
    let rs_uid = replica_set.meta().uid.clone().context("uid")?;

    let pods_api = Api::<Pod>::namespaced(client, &ns);
    let pods = eventually("two Pods owned by the ReplicaSet", || async {
        let list = pods_api.list(&ListParams::default()).await?;
        let owned: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|pod| owned_by(pod.meta().owner_references.as_deref(), &rs_uid))
            .collect();
        Ok((owned.len() == 2).then_some(owned))
    })
    .await?;
    for pod in &pods {
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        ensure!(
            phase == Some("Pending"),
            "no kubelet, so Pods must stay Pending, got {phase:?}"
        );
        // The ServiceAccount admission plugin mounts the API token: proof the real admission chain
        // ran.
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .context("volumes")?;
        ensure!(
            volumes
                .iter()
                .any(|v| v.name.starts_with("kube-api-access-")),
            "the ServiceAccount token volume is missing: {volumes:?}"
        );
    }
    Ok(())
}

fn owned_by(
    owners: Option<&[k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference]>,
    uid: &str,
) -> bool {
    owners
        .unwrap_or_default()
        .iter()
        .any(|o| o.uid == uid && o.controller == Some(true))
}

#[tokio::test]
async fn crd_from_yaml_is_served_and_its_schema_enforced() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.create_namespace("crd", &[]).await?;
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/widgets-crd.yaml");
    kubectl(&cp, &["apply", "-f", fixture.to_str().context("path")?]).await?;
    kubectl(
        &cp,
        &[
            "wait",
            "--for=condition=Established",
            "crd/widgets.e2e.lumigo.io",
            "--timeout=60s",
        ],
    )
    .await?;

    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("e2e.lumigo.io", "v1", "Widget"));
    let widgets = Api::<DynamicObject>::namespaced_with(cp.client()?, &ns, &resource);
    let widget = |name: &str, size: Value| -> DynamicObject {
        from_json(json!({
            "apiVersion": "e2e.lumigo.io/v1", "kind": "Widget",
            "metadata": {"name": name}, "spec": {"size": size}
        }))
    };
    let created = eventually("the valid Widget is accepted", || async {
        Ok(widgets
            .create(&PostParams::default(), &widget("valid", json!(3)))
            .await
            .ok())
    })
    .await?;
    ensure!(created.data["spec"]["size"] == json!(3));

    for (name, size) in [("too-big", json!(11)), ("not-a-number", json!("three"))] {
        match widgets
            .create(&PostParams::default(), &widget(name, size))
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 422 => {}
            other => bail!("{name}: the schema should have rejected it with 422, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn pod_security_restricted_rejects_root_and_admits_compliant_pods() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp
        .create_namespace(
            "restricted",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await?;
    let pods = Api::<Pod>::namespaced(cp.client()?, &ns);

    let root: Pod = from_json(json!({
        "metadata": {"name": "root"},
        "spec": {"containers": [{
            "name": "app", "image": "registry.invalid/app:1",
            "securityContext": {"runAsUser": 0}
        }]}
    }));
    match pods.create(&PostParams::default(), &root).await {
        Err(kube::Error::Api(status))
            if status.code == 403 && status.message.contains("PodSecurity") => {}
        other => bail!("a root pod must be forbidden by PodSecurity, got {other:?}"),
    }

    let compliant: Pod = from_json(json!({
        "metadata": {"name": "compliant"},
        "spec": {
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 1000,
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "containers": [{
                "name": "app", "image": "registry.invalid/app:1",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}
                }
            }]
        }
    }));
    pods.create(&PostParams::default(), &compliant)
        .await
        .context("a restricted-compliant pod must be admitted")?;
    Ok(())
}

#[tokio::test]
async fn mutating_webhook_on_loopback_is_called_and_its_patch_applied() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.create_namespace("webhook", &[]).await?;
    let client = cp.client()?;

    let ca = CertificateAuthority::new("e2e webhook CA")?;
    let calls = Arc::new(AtomicUsize::new(0));
    let port = serve_webhook(&ca, calls.clone()).await?;

    let configuration = MutatingWebhookConfiguration {
        metadata: kube::api::ObjectMeta {
            name: Some(ns.clone()),
            ..Default::default()
        },
        webhooks: Some(vec![MutatingWebhook {
            name: "label.e2e.lumigo.io".into(),
            client_config: WebhookClientConfig {
                url: Some(format!("https://127.0.0.1:{port}/mutate")),
                ca_bundle: Some(ByteString(ca.cert_pem().as_bytes().to_vec())),
                service: None,
            },
            rules: Some(vec![RuleWithOperations {
                operations: Some(vec!["CREATE".into()]),
                api_groups: Some(vec!["".into()]),
                api_versions: Some(vec!["v1".into()]),
                resources: Some(vec!["configmaps".into()]),
                scope: None,
            }]),
            namespace_selector: Some(LabelSelector {
                match_labels: Some(
                    [("kubernetes.io/metadata.name".to_string(), ns.clone())].into(),
                ),
                ..Default::default()
            }),
            side_effects: "None".into(),
            admission_review_versions: vec!["v1".into()],
            // Fail, not Ignore: a webhook the apiserver cannot reach must make the test fail.
            failure_policy: Some("Fail".into()),
            timeout_seconds: Some(10),
            ..Default::default()
        }]),
    };
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &configuration)
        .await?;

    // The apiserver picks the configuration up from its informer, shortly after it is created.
    let config_maps = Api::<ConfigMap>::namespaced(client, &ns);
    let attempt = AtomicUsize::new(0);
    let mutated = eventually("a ConfigMap labelled by the webhook", || async {
        let name = format!("probe-{}", attempt.fetch_add(1, Ordering::SeqCst));
        let cm: ConfigMap =
            from_json(json!({"metadata": {"name": name, "labels": {"app": "probe"}}}));
        let created = config_maps.create(&PostParams::default(), &cm).await?;
        let labels = created.metadata.labels.unwrap_or_default();
        Ok(
            (labels.get("e2e.lumigo.io/mutated").map(String::as_str) == Some("true"))
                .then_some(labels),
        )
    })
    .await?;
    ensure!(
        mutated.get("app").map(String::as_str) == Some("probe"),
        "the patch must keep existing labels"
    );
    ensure!(
        calls.load(Ordering::SeqCst) >= 1,
        "the webhook server was never called"
    );
    Ok(())
}

/// Serves AdmissionReview v1 on 127.0.0.1 over TLS, with a certificate from `ca`, answering every
/// review with a JSON patch that adds a label.
async fn serve_webhook(ca: &CertificateAuthority, calls: Arc<AtomicUsize>) -> Result<u16> {
    let serving = ca.issue_server_cert(&["127.0.0.1"])?;
    let cert = rustls::pki_types::pem::PemObject::from_pem_slice(serving.cert_pem.as_bytes())?;
    let key = rustls::pki_types::pem::PemObject::from_pem_slice(serving.key_pem.as_bytes())?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)?;
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service =
                    hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
                        let calls = calls.clone();
                        async move {
                            calls.fetch_add(1, Ordering::SeqCst);
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(http_body_util::Collected::to_bytes)
                                .unwrap_or_default();
                            let review: Value = serde_json::from_slice(&body).unwrap_or_default();
                            let patch = json!([{
                                "op": "add",
                                "path": "/metadata/labels/e2e.lumigo.io~1mutated",
                                "value": "true"
                            }]);
                            let answer = json!({
                                "apiVersion": "admission.k8s.io/v1",
                                "kind": "AdmissionReview",
                                "response": {
                                    "uid": review["request"]["uid"],
                                    "allowed": true,
                                    "patchType": "JSONPatch",
                                    "patch": STANDARD.encode(patch.to_string()),
                                }
                            });
                            Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(
                                answer.to_string(),
                            ))))
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(tls);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await;
            });
        }
    });
    Ok(port)
}

#[tokio::test]
async fn go_built_kubectl_works_with_the_kubeconfig() -> Result<()> {
    let cp = ControlPlane::shared().await?;
    let ns = cp.create_namespace("kubectl", &[]).await?;

    let version: Value = serde_json::from_str(&kubectl(&cp, &["version", "-o", "json"]).await?)?;
    ensure!(
        version["serverVersion"]["gitVersion"] == version["clientVersion"]["gitVersion"]
            && version["serverVersion"]["gitVersion"]
                .as_str()
                .is_some_and(|v| v.starts_with("v1.")),
        "client and server must be the same pinned release: {version}"
    );
    ensure!(
        kubectl(&cp, &["auth", "can-i", "*", "*", "--all-namespaces"])
            .await?
            .trim()
            == "yes"
    );

    kubectl(
        &cp,
        &[
            "-n",
            &ns,
            "create",
            "configmap",
            "from-kubectl",
            "--from-literal=k=v",
        ],
    )
    .await?;
    let value = kubectl(
        &cp,
        &[
            "-n",
            &ns,
            "get",
            "configmap",
            "from-kubectl",
            "-o",
            "jsonpath={.data.k}",
        ],
    )
    .await?;
    ensure!(value == "v", "kubectl read back {value:?}");
    Ok(())
}

/// Runs the control plane's kubectl and returns its stdout, failing with its stderr.
async fn kubectl(cp: &ControlPlane, args: &[&str]) -> Result<String> {
    Ok(cp.run_kubectl(args, None)?)
}
