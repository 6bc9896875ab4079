//! Native mutation vs the policy module in wasmtime on a typical Deployment request: median and
//! p99 per evaluation, their ratio, and the module's size. The wasm evaluation runs on a
//! pre-instantiated module (a fresh instance made before the clock starts, used once and torn
//! down after it stops); what a request pays end to end, with making and tearing down its
//! fresh instance, is printed beside it. Last, the operator's webhook both ways: `validate` and
//! the patch computed by the host (what it did before), and `validate_as_patch`, whose patch the
//! host passes on as it came (what it does now).
//! Run: `just policy::bench`.

use std::time::{Duration, Instant};

use lumigo_mutation::{is_injected, PatchAnswer, WorkloadKind};
use lumigo_policy_host::{EngineOptions, PolicyEngine};
use serde_json::value::RawValue;

const WARMUP: usize = 200;
const SAMPLES: usize = 5_000;

fn main() {
    let module_path = lumigo_e2e::testing::policy_module_path();
    let module = lumigo_e2e::testing::policy_module();
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../policies");
    let settings: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{root}/settings.json")).unwrap()).unwrap();
    let request: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{root}/fixtures/deployment-create.json")).unwrap(),
    )
    .unwrap();
    let payload =
        serde_json::to_vec(&serde_json::json!({"settings": settings, "request": request})).unwrap();

    let native = measure(
        || (),
        |_| {
            let response = lumigo_policy::admission::evaluate(&payload);
            assert!(response.mutated_object.is_some());
            serde_json::to_vec(&response).unwrap()
        },
    );
    let engine = PolicyEngine::new(&module, EngineOptions::default()).unwrap();
    let wasm = measure(
        || engine.instantiate().unwrap(),
        |instance| instance.call("validate", &payload).unwrap(),
    );
    let end_to_end = measure(|| (), |_| engine.call("validate", &payload).unwrap());
    // The webhook's work from the module's call to the patch's bytes, both ways (base64, the same
    // for both, left out).
    let object_text = request["object"].to_string();
    let host_diff = measure(
        || (),
        |_| {
            let answer: serde_json::Value =
                serde_json::from_slice(&engine.call("validate", &payload).unwrap()).unwrap();
            let object: serde_json::Value = serde_json::from_str(&object_text).unwrap();
            let mutated = &answer["mutated_object"];
            let patch = json_patch::diff(&object, mutated);
            let kind = WorkloadKind::Deployment;
            std::hint::black_box((is_injected(&object, kind), is_injected(mutated, kind)));
            serde_json::to_vec(&patch).unwrap()
        },
    );
    let module_patch = measure(
        || (),
        |_| {
            let bytes = engine.call("validate_as_patch", &payload).unwrap();
            let answer: PatchAnswer<Box<RawValue>> = serde_json::from_slice(&bytes).unwrap();
            answer.patch.unwrap().get().as_bytes().to_vec()
        },
    );
    // A fresh instance and a call that does nothing: the fixed cost every request pays.
    let instance_only = measure(|| (), |_| engine.call("protocol_version", b"").unwrap());

    let native = percentiles(native);
    let wasm = percentiles(wasm);
    let end_to_end = percentiles(end_to_end);
    let host_diff = percentiles(host_diff);
    println!(
        "typical Deployment CREATE request ({} bytes), {SAMPLES} evaluations each",
        payload.len()
    );
    times("native", native);
    times("wasm, pre-instantiated", wasm);
    ratio("wasm/native", wasm, native);
    times("wasm, fresh instance per call", end_to_end);
    ratio("  end to end/native", end_to_end, native);
    times(
        "  of which instance + empty call",
        percentiles(instance_only),
    );
    times("webhook, validate + host diff", host_diff);
    let module_patch = percentiles(module_patch);
    times("webhook, validate_as_patch", module_patch);
    ratio("  as patch/host diff", module_patch, host_diff);
    println!(
        "module size {} bytes ({})",
        module.len(),
        module_path.display()
    );
}

/// Times `evaluate` alone: `prepare` runs before each sample and what it made is dropped
/// after, both off the clock.
fn measure<T>(
    mut prepare: impl FnMut() -> T,
    mut evaluate: impl FnMut(&T) -> Vec<u8>,
) -> Vec<Duration> {
    for _ in 0..WARMUP {
        std::hint::black_box(evaluate(&prepare()));
    }
    (0..SAMPLES)
        .map(|_| {
            let prepared = prepare();
            let start = Instant::now();
            std::hint::black_box(evaluate(&prepared));
            let elapsed = start.elapsed();
            drop(prepared);
            elapsed
        })
        .collect()
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (
        samples[samples.len() / 2],
        samples[samples.len() * 99 / 100],
    )
}

/// A row of median and p99.
fn times(what: &str, (median, p99): (Duration, Duration)) {
    println!(
        "{what:<32} median {:>6.1} µs   p99 {:>6.1} µs",
        micros(median),
        micros(p99)
    );
}

/// A row of the ratios of two rows' median and p99.
fn ratio(what: &str, (median, p99): (Duration, Duration), to: (Duration, Duration)) {
    println!(
        "{what:<32} median {:>6.2}x    p99 {:>6.2}x",
        micros(median) / micros(to.0),
        micros(p99) / micros(to.1)
    );
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}
