//! `just demo` (demo/run.sh) runs to completion on a real node and shows what it promises: the
//! shop's pods replaced with injected ones whose init container ran, traces from the Node.js,
//! Python and Java services with the proxy's Kubernetes attributes and the tracer's header, the
//! opt-out, an admission-injected Deployment, the removal byte for byte with no spans after it, and
//! the uninstall.

use std::process::Command;

#[test]
fn the_demo_traces_a_real_shop_and_removes_every_trace_of_it() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/run.sh");
    let output = Command::new(script).output().expect("running demo/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo/run.sh failed:\n{stdout}\n{stderr}"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    let row = |cells: &[&str]| {
        lines.iter().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            cells.iter().all(|c| words.contains(c))
        })
    };

    for step in [
        "Start a local Kubernetes cluster with a real node",
        "Install the operator with helm",
        "The traces that arrived at the receiver",
        "Turn Lumigo off",
        "Uninstall: helm uninstall",
        "Done; cleaning up",
    ] {
        assert!(has(step), "the demo explains: {step}\n{stdout}");
    }
    assert!(
        row(&["lumigo", "True", "4"]),
        "kubectl get lumigoes: Active, 4 instrumented\n{stdout}"
    );
    assert!(
        has("Which workloads are really traced") && row(&["lumigo", "True", "4", "3/4"]),
        "kubectl get lumigoes: 3 of 4 receiving\n{stdout}"
    );
    assert!(
        has("Degraded=False"),
        "no workload was rolled back and the rollout did not stop\n{stdout}"
    );
    assert!(
        has("frontend: Silent") && has("Tracing=False (NoTraces)"),
        "the silent static binary named\n{stdout}"
    );
    for service in ["currencyservice", "emailservice", "adservice"] {
        assert!(
            has(&format!("{service}: Receiving  container server")),
            "{service} receiving, with its container\n{stdout}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("currencyservice-")
            && l.contains("ghcr.io/lumigo-rs/autotrace:")
            && l.contains("<none>")),
        "an injected pod that mounts the autotrace image, with no init container\n{stdout}"
    );
    assert!(
        has("payloadDelivery: imageVolume (ImageVolumeSupported)"),
        "the delivery the operator chose, and why\n{stdout}"
    );
    assert!(has("LD_PRELOAD=/opt/lumigo/injector/lumigo_injector.so"));
    assert!(
        has("LUMIGO_TRACER_TOKEN=lumigo-credentials"),
        "the token by Secret reference"
    );
    assert!(
        !stdout.contains("LUMIGO_TRACER_TOKEN=t_"),
        "never the token's value in a template"
    );
    assert!(
        has("user preload ran: yes"),
        "the container's own LD_PRELOAD still runs\n{stdout}"
    );
    for deployment in ["currencyservice", "emailservice", "adservice"] {
        assert!(
            has(&format!(
                "namespace=shop deployment={deployment} pod={deployment}-"
            )),
            "spans from {deployment} with the proxy's Kubernetes attributes\n{stdout}"
        );
    }
    assert!(
        lines
            .iter()
            .filter(|l| l.contains("Authorization header forwarded: LumigoToken t_…"))
            .count()
            >= 3,
        "the tracers' header, forwarded by the proxy\n{stdout}"
    );
    assert!(has("none from paymentservice (opted out): yes"), "{stdout}");
    assert!(
        has("generation: 1  payload image: ghcr.io/lumigo-rs/autotrace:"),
        "injected at admission\n{stdout}"
    );
    assert!(has("byte for byte what it was before Lumigo: restored"));
    assert!(
        has("spans received in the 10 s after the pods were replaced: 0"),
        "{stdout}"
    );
    assert!(has("the chart's RBAC was enough"));
    assert!(has("==> Stopped the cluster"));
}
