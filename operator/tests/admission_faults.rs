//! The webhook host under failure, spoken to directly over HTTPS: a module that traps, one that
//! never returns (cut off by the epoch deadline), and input the module cannot use. Every answer
//! admits the object unchanged, with a warning, and the host keeps answering.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use hyper::body::Bytes;
use lumigo_e2e::testing::{policy_module, try_eventually, wapc_guest};
use lumigo_e2e::ControlPlane;
use lumigo_mutation::{inspect, WorkloadKind};
use serde_json::{json, Value};
use support::admission::*;

const ACTIVE: &str = "with-lumigo";

/// A webhook host for `module` in which the namespace `ACTIVE` has a Lumigo resource, and a client.
async fn host(module: Vec<u8>, deadline: Duration) -> Result<(SocketAddr, String, ReviewClient)> {
    let cp = ControlPlane::shared().await?;
    let (address, ca) = start_loopback_host(&cp, module, deadline, ACTIVE).await?;
    let client = ReviewClient::connect(address, &ca).await?;
    Ok((address, ca, client))
}

fn assert_unchanged_with_warning(response: &Value, uid: &str, warning_says: &str) -> Result<()> {
    ensure!(response["uid"] == uid, "the uid is echoed: {response}");
    ensure!(response["allowed"] == true, "never denied: {response}");
    ensure!(
        response.get("patch").is_none(),
        "admitted unchanged: {response}"
    );
    let warnings = response["warnings"].as_array().context("warnings")?;
    ensure!(
        warnings
            .iter()
            .any(|w| w.as_str().is_some_and(|w| w.contains(warning_says))),
        "a warning saying {warning_says:?}: {response}"
    );
    Ok(())
}

#[tokio::test]
async fn a_trapping_module_admits_unchanged_with_a_warning() -> Result<()> {
    let (_, _, mut client) = host(wapc_guest("unreachable"), Duration::from_secs(1)).await?;
    for attempt in 0..3 {
        let uid = format!("trap-{attempt}");
        let response = client
            .review(&admission_review(&uid, ACTIVE, "CREATE", deployment("app")))
            .await?;
        assert_unchanged_with_warning(&response, &uid, "the policy evaluation failed")?;
    }
    Ok(())
}

#[tokio::test]
async fn a_module_that_never_returns_is_cut_off_at_the_deadline() -> Result<()> {
    let deadline = Duration::from_millis(300);
    let (address, ca, mut client) = host(
        wapc_guest("(loop $forever (br $forever)) i32.const 1"),
        deadline,
    )
    .await?;
    // More runaway evaluations than there are evaluation slots: each must free its slot.
    let slots = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
    for attempt in 0..slots + 2 {
        let uid = format!("loop-{attempt}");
        let started = Instant::now();
        let response = client
            .review(&admission_review(&uid, ACTIVE, "CREATE", deployment("app")))
            .await?;
        let took = started.elapsed();
        assert_unchanged_with_warning(&response, &uid, "the policy evaluation failed")?;
        ensure!(
            took < deadline * 5,
            "answered after {took:?}, the deadline is {deadline:?}"
        );
    }
    // Concurrent runaways too, each on a connection of its own, more than there are slots.
    let started = Instant::now();
    let answers = futures::future::try_join_all((0..slots * 2).map(|i| {
        let ca = ca.clone();
        async move {
            let mut client = ReviewClient::connect(address, &ca).await?;
            let uid = format!("concurrent-{i}");
            let response = client
                .review(&admission_review(&uid, ACTIVE, "CREATE", deployment("app")))
                .await?;
            assert_unchanged_with_warning(&response, &uid, "the policy evaluation failed")
        }
    }))
    .await?;
    ensure!(answers.len() == slots * 2);
    // Two rounds of slots, each cut off at the deadline; waiting for a slot is bounded by it too.
    ensure!(
        started.elapsed() < deadline * 8,
        "the concurrent runaways took {:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn input_the_module_cannot_use_is_admitted_unchanged_and_the_host_keeps_answering(
) -> Result<()> {
    let (_, _, mut client) = host(policy_module(), Duration::from_secs(1)).await?;

    let mut malformed = deployment("malformed");
    malformed["spec"]["template"]["spec"]["containers"] = json!("not a list");
    let response = client
        .review(&admission_review(
            "malformed-object",
            ACTIVE,
            "CREATE",
            malformed,
        ))
        .await?;
    assert_unchanged_with_warning(&response, "malformed-object", "not instrumented")?;

    let mut review = admission_review("malformed-request", ACTIVE, "CREATE", deployment("app"));
    review["request"]["kind"] = json!(5);
    let response = client.review(&review).await?;
    assert_unchanged_with_warning(
        &response,
        "malformed-request",
        "cannot read the admission request",
    )?;

    for (body, why) in [
        (
            &b"{\"not\": \"a review\""[..],
            "a body that is no AdmissionReview has no uid to answer",
        ),
        (
            b"{\"request\": {}}",
            "a request without a uid cannot be answered",
        ),
    ] {
        let (status, _) = client.post(Bytes::from_static(body)).await?;
        ensure!(status == 400, "{why}: {status}");
    }

    // Still answering, and still injecting, on the same connection.
    let object = deployment("after");
    let response = client
        .review(&admission_review("after", ACTIVE, "CREATE", object.clone()))
        .await?;
    ensure!(
        response["uid"] == "after"
            && response["allowed"] == true
            && response["patchType"] == "JSONPatch",
        "{response}"
    );
    ensure!(inspect(&patched(&object, &response)?, WorkloadKind::Deployment).injected);
    Ok(())
}

#[tokio::test]
async fn the_patch_is_the_diff_and_keeps_fields_unknown_to_kubernetes_types() -> Result<()> {
    let (_, _, mut client) = host(policy_module(), Duration::from_secs(1)).await?;
    let mut object = deployment("future");
    object["spec"]["template"]["spec"]["futureField"] = json!({"keep": ["me"]});
    object["spec"]["template"]["spec"]["containers"][0]["futureContainerField"] = json!(true);
    let response = client
        .review(&admission_review(
            "future",
            ACTIVE,
            "CREATE",
            object.clone(),
        ))
        .await?;
    ensure!(response.get("warnings").is_none(), "{response}");
    let injected = patched(&object, &response)?;
    ensure!(inspect(&injected, WorkloadKind::Deployment).injected);
    ensure!(injected["spec"]["template"]["spec"]["futureField"] == json!({"keep": ["me"]}));
    ensure!(injected["spec"]["template"]["spec"]["containers"][0]["futureContainerField"] == true);
    ensure!(
        injected["spec"]["selector"] == object["spec"]["selector"]
            && injected["spec"]["replicas"] == 2
    );

    // An injected object is left as it is: an empty diff is no patch.
    let response = client
        .review(&admission_review("again", ACTIVE, "UPDATE", injected))
        .await?;
    ensure!(
        response.get("patch").is_none() && response["allowed"] == true,
        "{response}"
    );

    // Without a Lumigo resource in the namespace, the module is not even asked.
    let response = client
        .review(&admission_review(
            "elsewhere",
            "no-lumigo",
            "CREATE",
            object,
        ))
        .await?;
    ensure!(
        response == json!({"uid": "elsewhere", "allowed": true}),
        "{response}"
    );
    Ok(())
}

/// A flood of reviews of one object (a controller retrying, a load test) costs one Event, whose
/// series counts every review, instead of one API call and one log line per review.
#[tokio::test(flavor = "multi_thread")]
async fn a_flood_of_reviews_of_one_object_is_one_event_series_with_its_count() -> Result<()> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::events::v1::Event;
    use kube::api::{Api, ListParams, PostParams};

    const REVIEWS: usize = 300;
    let cp = ControlPlane::shared().await?;
    let kube = cp.client()?;
    let namespace = cp.create_namespace("flood", &[]).await?;
    // The object exists, so that its events can name it.
    let stored: Deployment = serde_json::from_value(deployment("busy"))?;
    Api::<Deployment>::namespaced(kube.clone(), &namespace)
        .create(&PostParams::default(), &stored)
        .await?;
    let (address, ca) =
        start_loopback_host(&cp, policy_module(), Duration::from_secs(1), &namespace).await?;
    let body = Bytes::from(serde_json::to_vec(&admission_review(
        "flood",
        &namespace,
        "CREATE",
        deployment("busy"),
    ))?);
    let clients = (0..4).map(|_| {
        let body = body.clone();
        let ca = ca.clone();
        tokio::spawn(async move {
            let mut client = ReviewClient::connect(address, &ca).await?;
            for _ in 0..REVIEWS / 4 {
                let (status, answer) = client.post(body.clone()).await?;
                ensure!(
                    status == 200 && answer["response"]["patchType"] == "JSONPatch",
                    "{answer}"
                );
            }
            Ok::<_, anyhow::Error>(())
        })
    });
    for client in futures::future::join_all(clients).await {
        client??;
    }

    let events = Api::<Event>::namespaced(kube, &namespace);
    let counted = |events: &[Event]| -> Vec<i32> {
        events
            .iter()
            .map(|event| event.series.as_ref().map_or(1, |series| series.count))
            .collect()
    };
    let what = format!("the events of {REVIEWS} reviews to count them all");
    let about_busy = try_eventually(&what, WAIT, || async {
        let about_busy: Vec<Event> = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|event| {
                event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("busy")
                    && event.reporting_controller.as_deref() == Some("lumigo-operator")
            })
            .collect();
        let total = counted(&about_busy).iter().sum::<i32>() as usize;
        Ok::<_, anyhow::Error>((total == REVIEWS).then_some(about_busy))
    })
    .await?;
    ensure!(
        about_busy.len() == 1,
        "one Event for the object, not {:?}",
        counted(&about_busy)
    );
    ensure!(about_busy[0].reason.as_deref() == Some("LumigoAddedInstrumentation"));
    Ok(())
}
