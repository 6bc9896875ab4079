//! Admission needs no leadership, and a broken webhook breaks only admission. Operator binaries run
//! as processes on a real control plane: with two replicas electing a leader, both are ready and
//! both inject at admission, and when the leader is killed the standby takes the lease within its
//! duration and reconciles. A replica whose webhook cannot start (its certificate cannot be stored)
//! is not ready, says why in an Event on its Pod, and still rolls the injection out.

mod support;

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams};
use kube::Client;
use lumigo_e2e::testing::{eventually, own_control_plane};
use lumigo_e2e::{ControlPlane, Process};
use lumigo_mutation::WorkloadKind;
use support::admission::{admission_review, deployment, ReviewClient};
use support::*;

const WAIT: Duration = Duration::from_secs(60);
const LEASE: Duration = Duration::from_secs(6);

struct Replica {
    process: Process,
    webhook_port: u16,
    probe_port: u16,
    name: String,
}

fn replica(cp: &ControlPlane, name: &str, extra_env: &[(&str, &str)]) -> Replica {
    let probe_port = free_port();
    let mut env = vec![
        ("POD_NAME", name),
        ("LUMIGO_LEADER_ELECTION", "true"),
        ("RUST_LOG", "info,kube=warn"),
    ];
    env.extend_from_slice(extra_env);
    let (process, webhook_port) =
        start_operator_with_webhook(cp, "0.1.0", &env, &format!("127.0.0.1:{probe_port}"));
    Replica {
        process,
        webhook_port,
        probe_port,
        name: name.to_owned(),
    }
}

impl Replica {
    /// Whether `/readyz` says ready; `None` while nothing answers.
    async fn ready(&self) -> Option<bool> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut probe = tokio::net::TcpStream::connect(("127.0.0.1", self.probe_port))
            .await
            .ok()?;
        probe
            .write_all(b"GET /readyz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(2), probe.read_to_end(&mut answer))
            .await
            .ok()?
            .ok()?;
        let status_line = String::from_utf8_lossy(&answer);
        Some(status_line.split_whitespace().nth(1)? == "200")
    }
}

async fn lease_holder(client: &Client) -> Option<String> {
    Api::<Lease>::namespaced(client.clone(), "default")
        .get_opt("lumigo-operator")
        .await
        .ok()??
        .spec?
        .holder_identity
}

#[tokio::test]
async fn every_replica_admits_and_the_standby_takes_over_within_the_lease() -> Result<()> {
    let (cp, client) = with_crd(own_control_plane()).await;
    let lease = format!("{}s", LEASE.as_secs());
    let first = replica(&cp, "replica-a", &[("LUMIGO_LEASE_DURATION", &lease)]);
    eventually("replica-a to lead", WAIT, || async {
        (lease_holder(&client).await? == "replica-a").then_some(())
    })
    .await;
    let second = replica(&cp, "replica-b", &[("LUMIGO_LEASE_DURATION", &lease)]);
    let ca = register_loopback_webhook(&client, first.webhook_port).await;
    let namespace = cp.create_namespace("shop", &[]).await?;
    active_lumigo(&client, &namespace).await;

    for replica in [&first, &second] {
        eventually(&format!("{} to be ready", replica.name), WAIT, || async {
            replica.ready().await?.then_some(())
        })
        .await;
        let mut reviews =
            ReviewClient::connect(([127, 0, 0, 1], replica.webhook_port).into(), &ca).await?;
        let response = reviews
            .review(&admission_review(
                "u1",
                &namespace,
                "CREATE",
                deployment("web"),
            ))
            .await?;
        ensure!(
            response["patchType"] == "JSONPatch",
            "{} injects at admission: {response}",
            replica.name
        );
    }
    ensure!(
        lease_holder(&client).await.as_deref() == Some("replica-a"),
        "the standby did not take the lease while the leader lives"
    );

    let killed = Instant::now();
    let mut first = first;
    first.process.kill();
    eventually("replica-b to take the lease", WAIT, || async {
        (lease_holder(&client).await? == "replica-b").then_some(())
    })
    .await;
    let took = killed.elapsed();
    // The lease expires one duration after its last renewal, and the standby tries every third.
    ensure!(
        took < LEASE * 2,
        "the standby took over {took:?} after the leader died; the lease is {LEASE:?}"
    );
    println!("the standby took the lease {took:?} after the leader was killed (lease {LEASE:?})");
    // It reconciles: a new resource becomes active.
    let later = cp.create_namespace("later", &[]).await?;
    active_lumigo(&client, &later).await;
    drop(second);
    Ok(())
}

#[tokio::test]
async fn a_webhook_that_cannot_start_degrades_admission_not_the_reconciler() -> Result<()> {
    let (cp, client) = with_crd(own_control_plane()).await;
    let namespace = cp.create_namespace("shop", &[]).await?;
    create_manifest(&client, &namespace, WorkloadKind::Deployment, "existing", 0).await;
    // No Secret can have this name: the certificate cannot be stored, so the webhook cannot start.
    let broken = replica(
        &cp,
        "replica-broken",
        &[
            ("LUMIGO_WEBHOOK_SECRET", "Not A Valid Name"),
            ("LUMIGO_LEADER_ELECTION", "false"),
        ],
    );
    active_lumigo(&client, &namespace).await;
    eventually(
        "the rollout to inject the existing Deployment",
        WAIT,
        || async {
            let stored = Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(
                client.clone(),
                &namespace,
            )
            .get("existing")
            .await
            .ok()?;
            let stored = serde_json::to_value(stored).ok()?;
            lumigo_mutation::inspect(&stored, WorkloadKind::Deployment)
                .injected
                .then_some(())
        },
    )
    .await;
    let note = eventually("an event saying admission is unavailable", WAIT, || async {
        Api::<Event>::namespaced(client.clone(), "default")
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .find(|event| {
                event.reason.as_deref() == Some("LumigoAdmissionUnavailable")
                    && event.regarding.as_ref().and_then(|r| r.name.as_deref())
                        == Some("replica-broken")
            })?
            .note
    })
    .await;
    ensure!(
        note.contains("admitted unchanged") && note.contains("certificate"),
        "the event says what is wrong and what it means: {note}"
    );
    ensure!(
        broken.ready().await == Some(false),
        "a replica whose webhook is down is not ready"
    );
    Ok(())
}
