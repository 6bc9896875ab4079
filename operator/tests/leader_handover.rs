//! Leader hand-over on a real control plane: two operator replicas (real processes of the binary)
//! elect a leader on the Lease; the leader is killed with SIGKILL, so it releases nothing, and the
//! standby must take the Lease within its duration plus a stated margin, then do the work: a
//! resource created after the kill is reconciled and its namespace's workload injected.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use kube::Client;
use lumigo_e2e::testing::{eventually, own_control_plane};
use lumigo_e2e::Process;
use lumigo_mutation::WorkloadKind;
use support::*;

const LEASE: Duration = Duration::from_secs(6);
/// Past the lease's expiry (at most one duration after the leader's last renewal, so after the
/// kill), the standby tries once a retry period (a third of the lease), and its request takes a
/// moment on a busy machine: at most a third of the lease and one second more.
const MARGIN: Duration = Duration::from_secs(3);
const WAIT: Duration = Duration::from_secs(60);

async fn lease(client: &Client) -> Option<(String, i32)> {
    let spec = Api::<Lease>::namespaced(client.clone(), "default")
        .get_opt("lumigo-operator")
        .await
        .ok()??
        .spec?;
    Some((spec.holder_identity?, spec.lease_transitions.unwrap_or(0)))
}

fn log(process: &Process) -> String {
    std::fs::read_to_string(process.log_path()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_leader_is_replaced_within_the_lease_and_the_work_goes_on() {
    assert!(MARGIN >= LEASE / 3 + Duration::from_secs(1));
    let (cp, client) = with_crd(own_control_plane()).await;
    let lease_duration = format!("{}s", LEASE.as_secs());
    let mut replicas: Vec<(&str, Process)> = ["replica-a", "replica-b"]
        .into_iter()
        .map(|name| {
            let env = [
                ("POD_NAME", name),
                ("LUMIGO_LEADER_ELECTION", "true"),
                ("LUMIGO_LEASE_DURATION", lease_duration.as_str()),
            ];
            (name, start_operator(&cp, "0.1.0", &env))
        })
        .collect();

    let (leader, transitions) = eventually("one replica to hold the lease", WAIT, || async {
        lease(&client).await
    })
    .await;
    // The leader works: a resource becomes active.
    let before = cp.create_namespace("before", &[]).await.unwrap();
    active_lumigo(&client, &before).await;
    let index = replicas
        .iter()
        .position(|(name, _)| *name == leader)
        .unwrap_or_else(|| panic!("the lease is held by {leader}, not a replica"));
    let (_, mut killed) = replicas.remove(index);
    let (standby, standby_process) = &replicas[0];
    assert_eq!(
        lease(&client).await.map(|(holder, _)| holder).as_deref(),
        Some(leader.as_str()),
        "the standby took the lease while the leader lived"
    );
    assert!(
        !log(standby_process).contains("became the leader"),
        "{standby} led while {leader} held the lease"
    );

    killed.kill();
    let at_kill = Instant::now();
    let (holder, after) = eventually("the standby to take the lease", WAIT, || async {
        lease(&client).await.filter(|(holder, _)| holder != &leader)
    })
    .await;
    let took = at_kill.elapsed();
    println!(
        "{standby} took the lease {took:?} after {leader} was killed (lease {LEASE:?}, bound {:?})",
        LEASE + MARGIN
    );
    assert_eq!(holder, *standby);
    assert_eq!(after, transitions + 1, "one transition, the hand-over");
    assert!(
        took <= LEASE + MARGIN,
        "the standby took over {took:?} after the kill; the lease is {LEASE:?} (margin {MARGIN:?})"
    );

    // The new leader works: a namespace instrumented after the kill is reconciled, and its
    // existing workload injected by the rollout (no webhook is registered here).
    let after_kill = cp.create_namespace("after", &[]).await.unwrap();
    create_manifest(&client, &after_kill, WorkloadKind::Deployment, "web", 0).await;
    active_lumigo(&client, &after_kill).await;
    eventually("the new leader to inject the workload", WAIT, || async {
        let stored = get(&client, &after_kill, WorkloadKind::Deployment, "web").await;
        lumigo_mutation::inspect(&stored, WorkloadKind::Deployment)
            .injected
            .then_some(())
    })
    .await;
    assert!(
        log(standby_process).contains("became the leader"),
        "the work after the kill was the standby's"
    );
}
