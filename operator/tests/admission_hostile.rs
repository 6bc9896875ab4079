//! The webhook against hostile clients, as anyone who can reach its port could be: the operator
//! binary runs as its own process on a real control plane, and is sent oversized, large, deeply
//! nested, concurrent, slow, truncated and forged requests. It stays up and inside the chart's
//! memory limit, never denies, cuts off what stalls, refuses what it cannot hold (the apiserver
//! then admits unchanged), and records no event about an object that does not exist. The namespaces
//! the rollout must not instrument (the cluster's, the operator's, one with an invalid token) are
//! not instrumented by admission either.
//!
//! One operator serves every phase, in turn: phases that fill its connections would disturb
//! others running beside them.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hyper::body::Bytes;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use kube::Client;
use lumigo_e2e::testing::{eventually, own_control_plane};
use lumigo_e2e::ControlPlane;
use serde_json::{json, Value};
use support::admission::{admission_review, deployment, tls_connect, ReviewClient};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(60);
/// The operator container's memory limit in the chart.
const MEMORY_LIMIT_MIB: u64 = 256;
const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
const BODY_TIMEOUT: Duration = Duration::from_secs(4);
const PER_CLIENT: usize = 48;

struct Webhook {
    address: SocketAddr,
    ca: String,
    pid: u32,
    instrumented: String,
}

impl Webhook {
    async fn client(&self) -> Result<ReviewClient> {
        ReviewClient::connect(self.address, &self.ca).await
    }

    /// Posts `review` on a connection of its own: the HTTP status and the review's `response`.
    async fn post(&self, review: &Value) -> Result<(u16, Value)> {
        let (status, body) = self
            .client()
            .await?
            .post(Bytes::from(serde_json::to_vec(review)?))
            .await?;
        Ok((status, body["response"].clone()))
    }

    fn peak_rss_mib(&self) -> u64 {
        peak_rss_mib(self.pid)
    }

    /// The webhook still injects a plain Deployment, on a new connection.
    async fn still_injects(&self, after: &str) -> Result<()> {
        let uid = format!("after-{after}");
        let (status, response) = self
            .post(&admission_review(
                &uid,
                &self.instrumented,
                "CREATE",
                deployment("plain"),
            ))
            .await?;
        ensure!(
            status == 200
                && response["uid"] == uid.as_str()
                && response["patchType"] == "JSONPatch",
            "after {after}, the webhook no longer injects: {status} {response}"
        );
        Ok(())
    }
}

#[tokio::test]
async fn hostile_clients_neither_exhaust_nor_crash_the_webhook() -> Result<()> {
    let (cp, client) = with_crd(own_control_plane()).await;
    let instrumented = cp.create_namespace("instrumented", &[]).await?;
    let (operator, port, ca) = start_operator_with_registered_webhook(
        &cp,
        &client,
        &[
            (
                "LUMIGO_WEBHOOK_HEADER_TIMEOUT",
                &format!("{}s", HEADER_TIMEOUT.as_secs()),
            ),
            (
                "LUMIGO_WEBHOOK_BODY_TIMEOUT",
                &format!("{}s", BODY_TIMEOUT.as_secs()),
            ),
            (
                "LUMIGO_WEBHOOK_MAX_CONNECTIONS_PER_CLIENT",
                &PER_CLIENT.to_string(),
            ),
            ("RUST_LOG", "info,lumigo_operator=debug,kube=warn"),
        ],
    )
    .await;
    active_lumigo(&client, &instrumented).await;
    let webhook = Webhook {
        address: ([127, 0, 0, 1], port).into(),
        ca,
        pid: operator.id(),
        instrumented,
    };
    webhook.still_injects("start").await?;
    let at_start = webhook.peak_rss_mib();

    large_and_malformed_bodies(&webhook)
        .await
        .context("large and malformed bodies")?;
    println!(
        "peak RSS after large_and_malformed_bodies: {} MiB",
        webhook.peak_rss_mib()
    );
    slow_and_greedy_clients(&webhook)
        .await
        .context("slow and greedy clients")?;
    println!(
        "peak RSS after slow_and_greedy_clients: {} MiB",
        webhook.peak_rss_mib()
    );
    forged_requests(&webhook, &client)
        .await
        .context("forged requests")?;
    println!(
        "peak RSS after forged_requests: {} MiB",
        webhook.peak_rss_mib()
    );
    namespaces_the_rollout_leaves_alone(&webhook, &cp, &client)
        .await
        .context("namespaces the rollout leaves alone")?;

    let peak = webhook.peak_rss_mib();
    println!("operator peak RSS: {at_start} MiB after start, {peak} MiB after every hostile phase");
    ensure!(
        peak < MEMORY_LIMIT_MIB,
        "the operator's peak RSS {peak} MiB reached the chart's limit of {MEMORY_LIMIT_MIB} MiB"
    );
    Ok(())
}

/// A Deployment whose first container carries `args`.
fn deployment_with_args(name: &str, args: Value) -> Value {
    let mut object = deployment(name);
    object["spec"]["template"]["spec"]["containers"][0]["args"] = args;
    object
}

async fn large_and_malformed_bodies(webhook: &Webhook) -> Result<()> {
    let namespace = webhook.instrumented.as_str();

    // Twice what the apiserver can send: refused from its declared length, before a byte of it
    // is read (so only the head is sent).
    let mut tls = tls_connect(webhook.address, &webhook.ca).await?;
    tls.write_all(
        b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 14000000\r\n\r\n",
    )
    .await?;
    tls.flush().await?;
    let mut answer = vec![0; 64];
    let read = tokio::time::timeout(WAIT, tls.read(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer[..read]);
    ensure!(
        answer.starts_with("HTTP/1.1 413"),
        "a 14 MB review gets 413: {answer:?}"
    );

    // The largest object the apiserver stores, with its bulk in one string (a large annotation or
    // config argument): served and injected.
    let big_string = "x".repeat(3 << 20);
    let legit = admission_review(
        "large-legit",
        namespace,
        "CREATE",
        deployment_with_args("large", json!([big_string])),
    );
    let (status, response) = webhook.post(&legit).await?;
    ensure!(
        status == 200 && response["patchType"] == "JSONPatch",
        "a 3 MiB Deployment is injected: {status} {response}"
    );

    // Within the body limit, but built to explode when parsed: 1.6 million one-letter strings.
    let explosive = admission_review(
        "explosive",
        namespace,
        "CREATE",
        deployment_with_args("explosive", json!(vec!["a"; 1_600_000])),
    );
    let explosive = Bytes::from(serde_json::to_vec(&explosive)?);
    ensure!(explosive.len() < 7 << 20);
    let (status, body) = webhook.client().await?.post(explosive.clone()).await?;
    ensure!(
        status == 200 && body["response"]["allowed"] == true,
        "an explosive review is answered and allowed: {status} {}",
        body["response"]
    );

    // Eight at once: each is answered (200), or turned away while the others hold the budget
    // (503) or when its body, stuck behind the others, comes too slowly (408); the apiserver
    // admits those unchanged. None crashes the operator.
    let statuses = futures::future::try_join_all((0..8).map(|_| {
        let explosive = explosive.clone();
        async move {
            webhook
                .client()
                .await?
                .post(explosive)
                .await
                .map(|(status, _)| status)
        }
    }))
    .await?;
    ensure!(
        statuses
            .iter()
            .all(|status| [200, 408, 503].contains(status))
            && statuses.contains(&200),
        "concurrent explosive reviews: {statuses:?}"
    );

    // Nested far deeper than any object: answered (a warning or a 400 without a uid), not a crash.
    let depth = 100_000;
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "deep", "namespace": namespace,
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "operation": "CREATE",
            "object": {"metadata": {"name": "deep"}, "spec": "NESTED"}
        }
    });
    let spec = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let nested = review.to_string().replace("\"NESTED\"", &spec);
    let (status, body) = webhook.client().await?.post(Bytes::from(nested)).await?;
    ensure!(
        status == 400 || (status == 200 && body["response"]["allowed"] == true),
        "a deeply nested review: {status} {body}"
    );
    webhook.still_injects("large and malformed bodies").await
}

async fn slow_and_greedy_clients(webhook: &Webhook) -> Result<()> {
    // More connections than one client may hold, each sending half a header and stalling.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..PER_CLIENT + 20 {
        match tls_connect(webhook.address, &webhook.ca).await {
            Ok(mut tls) => {
                tls.write_all(b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                    .await?;
                tls.flush().await?;
                held.push(tls);
            }
            Err(_) => refused += 1,
        }
    }
    ensure!(
        held.len() <= PER_CLIENT && refused >= 20,
        "one client held {} connections ({refused} refused); its limit is {PER_CLIENT}",
        held.len()
    );
    // Each stalled connection is closed once its header time is up.
    let started = Instant::now();
    for mut tls in held {
        let mut buffer = [0; 256];
        let read = tokio::time::timeout(HEADER_TIMEOUT * 4, tls.read(&mut buffer)).await;
        ensure!(
            read.is_ok(),
            "a stalled connection was still open {:?} after its header timeout of \
             {HEADER_TIMEOUT:?}",
            started.elapsed()
        );
    }

    // A body shorter than declared: given up on at the body timeout, with 408.
    let mut tls = tls_connect(webhook.address, &webhook.ca).await?;
    tls.write_all(
        b"POST /mutate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
          Content-Length: 1000\r\n\r\n{\"request\":",
    )
    .await?;
    tls.flush().await?;
    let started = Instant::now();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(BODY_TIMEOUT * 4, tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    ensure!(
        answer.starts_with("HTTP/1.1 408"),
        "a truncated body is answered 408 after {:?}: {answer:?}",
        started.elapsed()
    );
    webhook.still_injects("slow and greedy clients").await
}

async fn forged_requests(webhook: &Webhook, client: &Client) -> Result<()> {
    let namespace = webhook.instrumented.as_str();
    let forged_namespace = admission_review(
        "forged-namespace",
        "../../../api/v1/namespaces/kube-system/secrets",
        "CREATE",
        deployment("web"),
    );
    let (status, response) = webhook.post(&forged_namespace).await?;
    ensure!(
        status == 200
            && response["allowed"] == true
            && response.get("patch").is_none()
            && response["warnings"][0]
                .as_str()
                .is_some_and(|w| w.contains("not a Kubernetes namespace name")),
        "a forged namespace: {response}"
    );
    let mut forged_name = admission_review("forged-name", namespace, "CREATE", deployment("web"));
    forged_name["request"]["name"] = json!("web/../../../secrets/x");
    let (_, response) = webhook.post(&forged_name).await?;
    ensure!(
        response.get("patch").is_none()
            && response["warnings"][0]
                .as_str()
                .is_some_and(|w| w.contains("not a Kubernetes object name")),
        "a forged name: {response}"
    );

    // UPDATEs of objects that do not exist as claimed: one that was never created, and a real
    // one under another uid. Each is answered (injected), and no event is recorded about either.
    let mut real = deployment("real");
    // Opted out, so that its own creation through the apiserver records nothing.
    real["metadata"]["labels"]["lumigo.auto-trace"] = json!("false");
    create(
        client,
        namespace,
        lumigo_mutation::WorkloadKind::Deployment,
        real,
    )
    .await;
    let mut ghost = admission_review("ghost", namespace, "UPDATE", deployment("ghost"));
    ghost["request"]["object"]["metadata"]["uid"] = json!("00000000-0000-0000-0000-000000000001");
    let mut impostor = admission_review("impostor", namespace, "UPDATE", deployment("real"));
    impostor["request"]["object"]["metadata"]["uid"] =
        json!("00000000-0000-0000-0000-000000000002");
    for review in [&ghost, &impostor] {
        let (status, response) = webhook.post(review).await?;
        ensure!(
            status == 200 && response["allowed"] == true,
            "a review of a missing object is still answered: {response}"
        );
    }
    // The recorder waits up to 15 s for an object to appear, after a flush every 2 s.
    tokio::time::sleep(Duration::from_secs(19)).await;
    let events: Vec<String> = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter(|event| event.reporting_controller.as_deref() == Some("lumigo-operator"))
        .filter(|event| {
            event
                .regarding
                .as_ref()
                .and_then(|regarding| regarding.name.as_deref())
                .is_some_and(|name| name == "ghost" || name == "real")
        })
        .map(|event| format!("{:?}: {:?}", event.reason, event.note))
        .collect();
    ensure!(
        events.is_empty(),
        "events about objects that do not exist as claimed: {events:?}"
    );
    Ok(())
}

async fn namespaces_the_rollout_leaves_alone(
    webhook: &Webhook,
    cp: &ControlPlane,
    client: &Client,
) -> Result<()> {
    // A resource in kube-system is refused by the reconciler, and admission agrees.
    let status = lumigo_with_status(client, "kube-system").await;
    ensure!(
        condition(&status, "Active").context("Active")?["reason"] == "ProtectedNamespace",
        "{status}"
    );
    // A token of the wrong form: the reconciler says InvalidToken, and admission does not inject.
    let bad_token = cp.create_namespace("bad-token", &[]).await?;
    create_secret(
        client,
        &bad_token,
        "lumigo-credentials",
        &[("token", "not-a-token")],
    )
    .await;
    create_default_lumigo(client, &bad_token).await;
    eventually("the invalid token to be reported", WAIT, || async {
        let status = lumigo_status(client, &bad_token, "lumigo").await?;
        (condition(&status, "Active")?["reason"] == "InvalidToken").then_some(())
    })
    .await;
    for namespace in ["kube-system", bad_token.as_str()] {
        let (status, response) = webhook
            .post(&admission_review(
                "left-alone",
                namespace,
                "CREATE",
                deployment("web"),
            ))
            .await?;
        ensure!(
            status == 200 && response["allowed"] == true && response.get("patch").is_none(),
            "a review for {namespace} is admitted unchanged: {response}"
        );
    }
    webhook.still_injects("namespaces left alone").await
}
