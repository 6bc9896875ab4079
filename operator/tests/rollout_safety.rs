//! The rollout never takes a service down, on the real node: the operator binary (as a process,
//! against the node's control plane) rolls the injection into running busybox Deployments.
//! - An injector image nobody can pull: the canary fails, is rolled back, the rollout stops with
//!   `Degraded`, no other workload is restarted and admission stops injecting; new settings
//!   resume it.
//! - A container that exits 1 whenever `LD_PRELOAD` is set: rolled back, reported (event, status,
//!   condition) and left alone afterwards, while its neighbours stay injected.
//! - 40 Deployments: never more than the limit starting at once and none without a Ready pod,
//!   measured from the pods, with the operator killed mid-rollout and restarted.
//!
//! Needs root and the image inputs of `e2e/image-inputs.sh` (`just operator::test-cluster`).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use kube::Client;
use lumigo_e2e::testing::{eventually, shared_cluster};
use lumigo_e2e::{Cluster, Process};
use lumigo_mutation::names::{INJECTOR_NAME, ROLLED_BACK_ANNOTATION};
use lumigo_mutation::WorkloadKind;
use serde_json::{json, Value};
use support::node_rollout::{deployment, load_images, PodSampler, SMALL_AUTOTRACE};
use support::*;

const LIMIT: usize = 4;
const FLEET: usize = 40;
const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);
const VERSION: &str = "0.1.0";
const CRASH_WHEN_PRELOADED: &str =
    "if [ -n \"$LD_PRELOAD\" ]; then echo \"refusing to run with LD_PRELOAD=$LD_PRELOAD\" >&2; \
     exit 1; fi";

fn operator(cluster: &Cluster, injector_image: &str) -> Process {
    start_operator(
        cluster.control_plane(),
        VERSION,
        &[
            ("LUMIGO_INJECTOR_IMAGE", injector_image),
            ("LUMIGO_ROLLOUT_MAX_IN_PROGRESS", &LIMIT.to_string()),
            ("LUMIGO_ROLLOUT_CHECK_INTERVAL", "1s"),
        ],
    )
}

async fn namespace_with(client: &Client, cluster: &Cluster, name: &str, deployments: &[Value]) {
    cluster
        .control_plane()
        .run_kubectl(&["create", "namespace", name], None)
        .unwrap();
    create_token_secret(client, name).await;
    let api: Api<Deployment> = Api::namespaced(client.clone(), name);
    for manifest in deployments {
        api.create(
            &PostParams::default(),
            &serde_json::from_value(manifest.clone()).unwrap(),
        )
        .await
        .unwrap();
    }
    wait_all_rolled_out(client, name, |_| true).await;
}

/// Until every Deployment of the namespace for which `wanted` holds is rolled out.
async fn wait_all_rolled_out(client: &Client, namespace: &str, wanted: impl Fn(&Value) -> bool) {
    eventually(
        &format!("the Deployments of {namespace} to roll out"),
        ROLLOUT_TIMEOUT,
        || async {
            let list = deployments(client, namespace).await;
            list.iter()
                .filter(|d| wanted(d))
                .all(|d| lumigo_operator::workload_health::rolled_out(WorkloadKind::Deployment, d))
                .then_some(())
        },
    )
    .await;
}

async fn deployments(client: &Client, namespace: &str) -> Vec<Value> {
    let api = lumigo_operator::workloads::WorkloadApi::new(client.clone());
    api.list_page(WorkloadKind::Deployment, Some(namespace), None)
        .await
        .unwrap()
        .0
}

/// Carries the payload volume, in either delivery (the operator's `auto` gives this node an image
/// volume).
fn injected(deployment: &Value) -> bool {
    deployment["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .is_some_and(|volumes| volumes.iter().any(|v| v["name"] == INJECTOR_NAME))
}

fn generation(deployment: &Value) -> i64 {
    deployment["metadata"]["generation"].as_i64().unwrap()
}

fn degraded(status: &Value) -> Option<(String, String, String)> {
    let condition = condition(status, "Degraded")?;
    Some((
        condition["status"].as_str()?.to_owned(),
        condition["reason"].as_str()?.to_owned(),
        condition["message"].as_str()?.to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollouts_are_paced_health_gated_and_rolled_back_on_a_real_node() {
    let (shared, client) = with_crd(shared_cluster()).await;
    let cluster = shared.as_ref();
    load_images(cluster);

    // 1. The canary: an injector image no node can pull stops the rollout after one workload.
    let halting: Vec<Value> = (0..5)
        .map(|i| deployment(&format!("svc-{i}"), None))
        .collect();
    namespace_with(&client, cluster, "halting", &halting).await;
    let mut missing_image = operator(cluster, "lumigo-e2e.local/autotrace-missing:0");
    create_default_lumigo(&client, "halting").await;
    let status = eventually("the rollout to halt", ROLLOUT_TIMEOUT, || async {
        let status = lumigo_status(&client, "halting", "lumigo").await?;
        let (state, reason, _) = degraded(&status)?;
        (state == "True" && reason == "RolloutHalted").then_some(status)
    })
    .await;
    let (_, _, message) = degraded(&status).unwrap();
    assert!(
        message.contains("lumigo-e2e.local/autotrace-missing:0")
            && message.contains("4 other workloads were left untouched"),
        "{message}"
    );
    assert_eq!(status["rollout"]["pending"], 4, "{status:#}");
    let after_halt = deployments(&client, "halting").await;
    let touched: Vec<&str> = after_halt
        .iter()
        .filter(|d| generation(d) > 1)
        .map(|d| d["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(touched, ["svc-0"], "only the canary was ever restarted");
    assert!(
        after_halt.iter().all(|d| !injected(d)),
        "the canary was rolled back"
    );
    assert!(event_reasons(&client, "halting", "lumigo")
        .await
        .contains(&"LumigoRolloutHalted".to_owned()));
    // While it is halted, admission does not inject either.
    let api: Api<Deployment> = Api::namespaced(client.clone(), "halting");
    api.create(
        &PostParams::default(),
        &serde_json::from_value(deployment("late", None)).unwrap(),
    )
    .await
    .unwrap();
    let late = get(&client, "halting", WorkloadKind::Deployment, "late").await;
    assert!(!injected(&late), "admitted uninjected while halted");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let generations = |list: &[Value]| -> BTreeMap<String, i64> {
        list.iter()
            .map(|d| {
                (
                    d["metadata"]["name"].as_str().unwrap().to_owned(),
                    generation(d),
                )
            })
            .collect()
    };
    let mut expected = generations(&after_halt);
    expected.insert("late".into(), 1);
    assert_eq!(
        generations(&deployments(&client, "halting").await),
        expected,
        "a halted rollout writes nothing more"
    );
    missing_image.kill();

    // New settings (an image that exists) resume it, from a canary again.
    let mut operator_process = operator(cluster, SMALL_AUTOTRACE);
    wait_all_rolled_out(&client, "halting", injected).await;
    eventually(
        "every workload of halting injected",
        ROLLOUT_TIMEOUT,
        || async {
            let status = lumigo_status(&client, "halting", "lumigo").await?;
            let all = deployments(&client, "halting").await;
            (all.iter().all(injected)
                && status["instrumentedCount"] == json!(6)
                && degraded(&status)?.1 == "RolloutHealthy")
                .then_some(())
        },
    )
    .await;
    wait_all_rolled_out(&client, "halting", |_| true).await;

    // 2. The health gate: the workload that cannot run injected is given back, its neighbours stay.
    let crashy = [
        deployment("fragile", Some(CRASH_WHEN_PRELOADED)),
        deployment("steady-a", None),
        deployment("steady-b", None),
    ];
    namespace_with(&client, cluster, "crashy", &crashy).await;
    let before = get(&client, "crashy", WorkloadKind::Deployment, "fragile").await;
    create_default_lumigo(&client, "crashy").await;
    let status = eventually("fragile to be rolled back", ROLLOUT_TIMEOUT, || async {
        let status = lumigo_status(&client, "crashy", "lumigo").await?;
        let listed = status["rolledBackResources"].as_array()?.first()?.clone();
        (status["instrumentedCount"] == json!(2)).then_some((status, listed))
    })
    .await;
    let (status, listed) = status;
    assert_eq!(listed["name"], "fragile", "{status:#}");
    assert_eq!(listed["reason"], "CrashLoopBackOff", "{listed:#}");
    assert_eq!(listed["container"], "app");
    assert_eq!(listed["exitCode"], 1);
    let (state, reason, message) = degraded(&status).unwrap();
    assert_eq!(
        (state.as_str(), reason.as_str()),
        ("True", "WorkloadsRolledBack")
    );
    assert!(message.contains("Deployment fragile"), "{message}");
    let fragile = get(&client, "crashy", WorkloadKind::Deployment, "fragile").await;
    assert_eq!(
        serde_json::to_string(&fragile["spec"]["template"]).unwrap(),
        serde_json::to_string(&before["spec"]["template"]).unwrap(),
        "given back byte for byte"
    );
    assert!(fragile["metadata"]["annotations"][ROLLED_BACK_ANNOTATION].is_string());
    let events = event_reasons(&client, "crashy", "fragile").await;
    assert!(
        events.contains(&"LumigoRolledBackInstrumentation".to_owned()),
        "{events:?}"
    );
    let notes = event_notes(&client, "crashy", "fragile").await;
    assert!(
        notes
            .iter()
            .any(|note| note.contains("container app (exit code 1)")),
        "{notes:?}"
    );
    wait_all_rolled_out(&client, "crashy", |_| true).await;
    let settled = generation(&get(&client, "crashy", WorkloadKind::Deployment, "fragile").await);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fragile = get(&client, "crashy", WorkloadKind::Deployment, "fragile").await;
    assert_eq!(generation(&fragile), settled, "not injected again");
    for name in ["steady-a", "steady-b"] {
        assert!(injected(
            &get(&client, "crashy", WorkloadKind::Deployment, name).await
        ));
    }

    // 3. The fleet: paced, every service serving throughout, the operator killed halfway.
    let names: BTreeSet<String> = (0..FLEET).map(|i| format!("fleet-{i:02}")).collect();
    let fleet: Vec<Value> = names.iter().map(|name| deployment(name, None)).collect();
    namespace_with(&client, cluster, "fleet", &fleet).await;
    let sampler = PodSampler::start(&client, "fleet", names.clone());
    create_default_lumigo(&client, "fleet").await;
    eventually("a third of the fleet injected", ROLLOUT_TIMEOUT, || async {
        let injected_now = deployments(&client, "fleet")
            .await
            .iter()
            .filter(|d| injected(d))
            .count();
        (injected_now >= FLEET / 3).then_some(())
    })
    .await;
    operator_process.kill();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _restarted = operator(cluster, SMALL_AUTOTRACE);
    let progress = tokio::spawn({
        let client = client.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_secs(20)).await;
                let list = deployments(&client, "fleet").await;
                let injected_now = list.iter().filter(|d| injected(d)).count();
                let status = lumigo_status(&client, "fleet", "lumigo").await;
                println!(
                    "fleet: {injected_now} injected; rollout {}",
                    status.map(|s| s["rollout"].clone()).unwrap_or_default()
                );
            }
        }
    });
    eventually("the whole fleet injected", ROLLOUT_TIMEOUT, || async {
        deployments(&client, "fleet")
            .await
            .iter()
            .all(injected)
            .then_some(())
    })
    .await;
    progress.abort();
    wait_all_rolled_out(&client, "fleet", |_| true).await;
    let sampled = sampler.stop();
    println!(
        "fleet of {FLEET}: at most {} Deployments starting at once (limit {LIMIT}), {} pods not \
         Ready at once, {} samples",
        sampled.peak_restarting, sampled.peak_not_ready, sampled.samples
    );
    assert!(sampled.samples > 20, "{sampled:?}");
    assert!(
        sampled.peak_restarting <= LIMIT,
        "more than {LIMIT} restarting at once: {sampled:?}"
    );
    assert!(
        sampled.peak_restarting >= 2,
        "paced, not serial: {sampled:?}"
    );
    assert!(
        sampled.down.is_empty(),
        "services without a Ready pod: {sampled:?}"
    );
}
