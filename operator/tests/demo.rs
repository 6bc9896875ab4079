//! `just demo` (demo/run.sh) runs to completion and shows what it promises: the Lumigo resource
//! Active with its workloads, the injected template, the events, an injected Pod, the opt-out, and
//! the restoration after the resource is deleted.

use std::process::Command;

#[test]
fn the_demo_runs_and_shows_the_injection_and_its_removal() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../demo/run.sh");
    let output = Command::new(script)
        // Its own probe port, so that a `just demo` running next to the tests does not collide.
        .env("DEMO_PROBE_PORT", "18181")
        .env("DEMO_WEBHOOK_PORT", "18444")
        .output()
        .expect("running demo/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo/run.sh failed:\n{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
    let row = |cells: &[&str]| lines.iter().any(|l| { let words: Vec<&str> = l.split_whitespace().collect(); cells.iter().all(|c| words.contains(c)) });

    for step in ["Start a local Kubernetes control plane", "Run the operator under the chart's ServiceAccount",
                 "What a user sees", "Turn Lumigo off", "Done; cleaning up"] {
        assert!(has(step), "the demo explains: {step}\n{stdout}");
    }
    assert!(row(&["lumigo", "True", "5"]), "kubectl get lumigoes: Active, 5 instrumented\n{stdout}");
    assert!(row(&["frontend", "false"]), "the opted-out Deployment keeps its label\n{stdout}");
    assert!(row(&["currencyservice", "lumigo-operator.v0.1.0"]) || lines.iter().any(|l| l.contains("currencyservice") && l.contains("lumigo-operator.v")));
    assert!(has("init container: lumigo-injector  image: ghcr.io/lumigo-rs/autotrace:"), "{stdout}");
    assert!(has("volume: lumigo-injector (emptyDir, sizeLimit 200M)"));
    assert!(has("mount in \"server\": lumigo-injector at /opt/lumigo"));
    assert!(has("LD_PRELOAD=/opt/lumigo/injector/lumigo_injector.so"));
    assert!(has("LUMIGO_TRACER_TOKEN=lumigo-credentials"), "the token by Secret reference");
    assert!(!stdout.contains("LUMIGO_TRACER_TOKEN=t_"), "never the token's value in a template");
    assert!(has("\"addedEnv\":[\"LD_PRELOAD\""), "the injection record");
    for service in ["adservice", "currencyservice", "emailservice", "paymentservice", "recommendationservice"] {
        assert!(row(&[service, "LumigoAddedInstrumentation"]), "added event on {service}\n{stdout}");
        assert!(row(&[service, "LumigoRemovedInstrumentation"]), "removed event on {service}\n{stdout}");
    }
    assert!(!row(&["frontend", "LumigoAddedInstrumentation"]), "the opted-out frontend is left alone");
    assert!(lines.iter().any(|l| l.contains("init containers: lumigo-injector  LD_PRELOAD: /opt/lumigo/injector/lumigo_injector.so")),
            "a Pod created by the Deployment is injected\n{stdout}");
    assert!(has("init containers: []  volumes: []"), "restored template");
    assert!(
        has("generation: 1  init containers: lumigo-injector  lumigo.auto-trace: lumigo-operator.v0.1.0"),
        "a Deployment created after the resource is injected at admission\n{stdout}"
    );
    assert!(has("byte for byte what it was before Lumigo: restored"));
    assert!(has("the chart's RBAC was enough"));
    assert!(has("==> Stopped the operator and the control plane"));
}
