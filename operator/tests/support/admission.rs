//! What the admission tests and the admission benchmarks share: the webhook host's options and the
//! operator's settings, `Lumigo` resources as admission sees them, a loopback webhook host, and an
//! HTTPS client that speaks AdmissionReview to the webhook.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use k8s_openapi::api::core::v1::Secret;
use kube::api::PostParams;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Api, Client};
use lumigo_mutation::WorkloadKind;
use lumigo_operator::admission::compile::PolicyCompiler;
use lumigo_operator::admission::{AdmissionLimits, AdmissionOptions, TlsOptions};
use lumigo_operator::crd::{Lumigo, LumigoSpec};
use lumigo_operator::settings::{OperatorSettings, ProtectedNamespaces};
use serde_json::{json, Value};
use tokio::net::TcpStream;

pub const WAIT: Duration = Duration::from_secs(60);

pub fn operator_settings() -> OperatorSettings {
    OperatorSettings {
        injector_image: "ghcr.io/lumigo-rs/autotrace:0.1.0".into(),
        traces_endpoint: "http://lumigo-telemetry.lumigo-system.svc:4318/v1/traces".into(),
        logs_endpoint: "http://lumigo-telemetry.lumigo-system.svc:4318/v1/logs".into(),
        operator_version: "0.1.0".into(),
        payload_delivery: lumigo_operator::delivery::DeliveryChoice::Auto,
    }
}

pub fn reporter() -> Reporter {
    Reporter {
        controller: "lumigo-operator".into(),
        instance: None,
    }
}

pub fn options(tls: TlsOptions, module: Vec<u8>, deadline: Duration) -> AdmissionOptions {
    AdmissionOptions {
        listen: (std::net::Ipv4Addr::LOCALHOST, 0).into(),
        module,
        // SAFETY: the operator binary cargo builds with this test, from the same sources.
        compiler: unsafe { PolicyCompiler::child(env!("CARGO_BIN_EXE_lumigo-operator").into()) },
        tls,
        deadline,
        max_concurrent_evaluations: std::thread::available_parallelism()
            .map_or(2, std::num::NonZero::get),
        reporter: reporter(),
        metrics: Default::default(),
        limits: AdmissionLimits::default(),
        protected: ProtectedNamespaces::new(OPERATOR_NAMESPACE),
    }
}

/// The namespace the tests' webhook hosts take as the operator's: never injected.
pub const OPERATOR_NAMESPACE: &str = "lumigo-system";

pub fn lumigo(name: &str, injection_enabled: bool) -> Lumigo {
    let spec: LumigoSpec = serde_json::from_value(json!({
        "lumigoToken": {"secretRef": {"name": "lumigo-credentials", "key": "token"}},
        "tracing": {"injection": {"enabled": injection_enabled}}
    }))
    .expect("a valid Lumigo spec");
    Lumigo::new(name, spec)
}

/// The status the reconciler writes once it found the resource's token valid: admission injects
/// only then, as the rollout does.
pub fn token_verified_status() -> Value {
    json!({"conditions": [{
        "type": "Active", "status": "True", "reason": "Instrumenting",
        "message": "the token is valid", "lastTransitionTime": "2026-01-01T00:00:00Z"
    }]})
}

/// `lumigo` as the reconciler leaves it once its token is found valid.
pub fn verified(mut lumigo: Lumigo) -> Lumigo {
    lumigo.status = Some(serde_json::from_value(token_verified_status()).expect("a valid status"));
    lumigo
}

/// Writes, as the reconciler would, that the resource's token is valid.
pub async fn mark_token_verified(client: &Client, namespace: &str, name: &str) -> Result<()> {
    use kube::api::{Patch, PatchParams};
    Api::<Lumigo>::namespaced(client.clone(), namespace)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": token_verified_status()})),
        )
        .await
        .context("writing the Lumigo resource's status")?;
    Ok(())
}

/// A `Lumigo` resource named `lumigo` in `namespace`, its token found valid as the reconciler
/// would.
pub async fn create_verified_lumigo(
    client: &Client,
    namespace: &str,
    injection_enabled: bool,
) -> Result<()> {
    Api::<Lumigo>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &lumigo("lumigo", injection_enabled))
        .await
        .context("creating the Lumigo resource")?;
    mark_token_verified(client, namespace, "lumigo").await
}

/// A cache holding `lumigos`, for a webhook host that no apiserver calls.
pub fn fixed_lumigos(lumigos: Vec<Lumigo>) -> Store<Lumigo> {
    let (store, mut writer) = reflector::store();
    writer.apply_watcher_event(&watcher::Event::Init);
    for lumigo in lumigos {
        writer.apply_watcher_event(&watcher::Event::InitApply(lumigo));
    }
    writer.apply_watcher_event(&watcher::Event::InitDone);
    store
}

/// A webhook host serving `module` on loopback, with a Lumigo resource in `active_namespace`
/// only; its address and the CA its certificate chains to.
pub async fn start_loopback_host(
    cp: &lumigo_e2e::ControlPlane,
    module: Vec<u8>,
    deadline: Duration,
    active_namespace: &str,
) -> Result<(SocketAddr, String)> {
    let client = cp.client()?;
    let namespace = cp.create_namespace("webhook-host", &[]).await?;
    let mut active = lumigo("lumigo", true);
    active.metadata.namespace = Some(active_namespace.into());
    let server = lumigo_operator::admission::AdmissionServer::bind(
        options(
            TlsOptions::for_loopback(&namespace, "webhook-certificate", None),
            module,
            deadline,
        ),
        fixed_lumigos(vec![verified(active)]),
        operator_settings(),
        client.clone(),
    )
    .await?;
    let address = server.local_addr();
    tokio::spawn(server.run());
    let ca = serving_ca(&client, &namespace, "webhook-certificate").await?;
    Ok((address, ca))
}

/// The CA the webhook's serving certificate is issued by, from the Secret the operator keeps.
pub async fn serving_ca(client: &Client, namespace: &str, secret: &str) -> Result<String> {
    secret_entry(client, namespace, secret, "ca.crt").await
}

/// The entry `key` of the Secret, as text.
pub async fn secret_entry(
    client: &Client,
    namespace: &str,
    secret: &str,
    key: &str,
) -> Result<String> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get(secret)
        .await?;
    let entry = secret
        .data
        .and_then(|d| d.get(key).cloned())
        .with_context(|| format!("the Secret has no {key}"))?;
    Ok(String::from_utf8(entry.0)?)
}

/// One kept-alive HTTPS connection to the webhook, trusting only `ca_pem`.
pub struct ReviewClient {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

/// A TLS connection to the webhook, trusting only `ca_pem`, for speaking HTTP by hand.
pub async fn tls_connect(
    address: SocketAddr,
    ca_pem: &str,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(address).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::IpAddress(address.ip().into());
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?)
}

impl ReviewClient {
    pub async fn connect(address: SocketAddr, ca_pem: &str) -> Result<Self> {
        let tls = tls_connect(address, ca_pem).await?;
        let (sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls)).await?;
        tokio::spawn(connection);
        Ok(ReviewClient { sender })
    }

    /// Posts `body` to /mutate: the HTTP status and the body, as JSON when it is JSON.
    pub async fn post(&mut self, body: Bytes) -> Result<(u16, Value)> {
        let request = hyper::Request::post("/mutate")
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .body(Full::new(body))?;
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let bytes = response.into_body().collect().await?.to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((status, body))
    }

    /// Posts a review and returns its `response`, failing unless it is a 200 AdmissionReview.
    pub async fn review(&mut self, review: &Value) -> Result<Value> {
        let (status, body) = self.post(Bytes::from(serde_json::to_vec(review)?)).await?;
        if status != 200 {
            bail!("the webhook answered {status}: {body}");
        }
        Ok(body["response"].clone())
    }
}

/// An AdmissionReview v1 request as the apiserver sends it, for a workload of `kind`.
pub fn admission_review(uid: &str, namespace: &str, operation: &str, object: Value) -> Value {
    let api_version = object["apiVersion"].as_str().unwrap_or("v1");
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let kind = object["kind"].as_str().unwrap_or_default();
    let resource = format!("{}s", kind.to_lowercase());
    let name = object
        .pointer("/metadata/name")
        .cloned()
        .unwrap_or(Value::Null);
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "requestKind": {"group": group, "version": version, "kind": kind},
            "requestResource": {"group": group, "version": version, "resource": resource},
            "name": name,
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "admin", "groups": ["system:masters"]},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

/// A typical Deployment, as a user applies it.
pub fn deployment(name: &str) -> Value {
    let pod_spec = json!({"containers": [{
        "name": "app",
        "image": "registry.invalid/app:1",
        "ports": [{"containerPort": 8080}],
        "env": [{"name": "MODE", "value": "production"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}
    }]});
    super::workload(WorkloadKind::Deployment, name, 2, pod_spec)
}

/// The object after applying the response's JSON Patch to `object`.
pub fn patched(object: &Value, response: &Value) -> Result<Value> {
    use base64::Engine;
    let mut object = object.clone();
    if let Some(patch) = response["patch"].as_str() {
        let patch: json_patch::Patch =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(patch)?)?;
        json_patch::patch(&mut object, &patch)?;
    }
    Ok(object)
}
