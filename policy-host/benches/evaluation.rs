//! Native mutation vs the policy module in wasmtime on a typical Deployment request: median and
//! p99 per evaluation, their ratio, and the module's size. The wasm evaluation runs on a
//! pre-instantiated module (a fresh instance made before the clock starts, used once and torn
//! down after it stops); what a request pays end to end, with making and tearing down its
//! fresh instance, is printed beside it.
//! Run: `just policy::bench`.

use std::time::{Duration, Instant};

use lumigo_policy_host::{EngineOptions, PolicyEngine};

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
    // A fresh instance and a call that does nothing: the fixed cost every request pays.
    let instance_only = measure(|| (), |_| engine.call("protocol_version", b"").unwrap());

    let (native_median, native_p99) = percentiles(native);
    let (wasm_median, wasm_p99) = percentiles(wasm);
    let (end_to_end_median, end_to_end_p99) = percentiles(end_to_end);
    let (instance_median, instance_p99) = percentiles(instance_only);
    println!(
        "typical Deployment CREATE request ({} bytes), {SAMPLES} evaluations each",
        payload.len()
    );
    println!(
        "native                        median {:>6.1} µs   p99 {:>6.1} µs",
        micros(native_median),
        micros(native_p99)
    );
    println!(
        "wasm, pre-instantiated        median {:>6.1} µs   p99 {:>6.1} µs",
        micros(wasm_median),
        micros(wasm_p99)
    );
    println!(
        "wasm/native                   median {:>6.2}x    p99 {:>6.2}x",
        micros(wasm_median) / micros(native_median),
        micros(wasm_p99) / micros(native_p99)
    );
    println!(
        "wasm, fresh instance per call median {:>6.1} µs   p99 {:>6.1} µs",
        micros(end_to_end_median),
        micros(end_to_end_p99)
    );
    println!(
        "  end to end/native           median {:>6.2}x    p99 {:>6.2}x",
        micros(end_to_end_median) / micros(native_median),
        micros(end_to_end_p99) / micros(native_p99)
    );
    println!(
        "  of which instance + empty call median {:>6.1} µs   p99 {:>6.1} µs",
        micros(instance_median),
        micros(instance_p99)
    );
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

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}
