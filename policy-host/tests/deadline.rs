//! The epoch deadline on guests written to misbehave: one that never returns is interrupted
//! after about the deadline, a trap is an error, and the engine answers the next call either way.

use std::time::{Duration, Instant};

use lumigo_e2e::testing::wapc_guest;
use lumigo_policy_host::{EngineOptions, PolicyEngine};

#[test]
fn a_guest_that_never_returns_is_interrupted_at_the_deadline() {
    let deadline = Duration::from_millis(200);
    let options = EngineOptions {
        tick: Duration::from_millis(5),
        deadline,
    };
    let engine = PolicyEngine::new(
        &wapc_guest("(loop $forever (br $forever)) i32.const 1"),
        options,
    )
    .unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        let error = engine.call("validate", b"{}").unwrap_err();
        let took = started.elapsed();
        assert!(
            took >= deadline / 2,
            "interrupted after {took:?}, before the deadline {deadline:?}"
        );
        assert!(
            took < deadline * 5,
            "interrupted only after {took:?}, the deadline is {deadline:?}"
        );
        assert!(
            error.to_string().contains("policy evaluation failed"),
            "{error}"
        );
    }
}

#[test]
fn a_trapping_guest_is_an_error_and_the_engine_stays_usable() {
    let engine = PolicyEngine::new(&wapc_guest("unreachable"), EngineOptions::default()).unwrap();
    for _ in 0..3 {
        let error = engine.call("validate", b"{}").unwrap_err();
        assert!(error.to_string().contains("Guest call failure"), "{error}");
    }
}
