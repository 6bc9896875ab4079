//! Every call runs in a fresh instance, though the engine reuses what it can between calls: a
//! guest that counts its calls in its memory and in a global answers 1 every time, whether the
//! calls come one after another or from several threads at once, and after a large call too.

use std::sync::Arc;
use std::thread;

use lumigo_e2e::testing::assemble;
use lumigo_policy_host::{EngineOptions, PolicyEngine};

/// A waPC guest that adds one to a counter in its memory and one in a global, and answers both.
fn counting_guest() -> Vec<u8> {
    assemble(
        r#"(module
             (import "wapc" "__guest_response" (func $respond (param i32 i32)))
             (memory (export "memory") 1)
             (global $calls (mut i32) (i32.const 0))
             (func (export "__guest_call") (param i32 i32) (result i32)
               (i32.store8 (i32.const 0) (i32.add (i32.load8_u (i32.const 0)) (i32.const 1)))
               (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
               (i32.store8 (i32.const 1) (global.get $calls))
               (call $respond (i32.const 0) (i32.const 2))
               (i32.const 1)))"#,
    )
}

fn engine() -> PolicyEngine {
    PolicyEngine::new(&counting_guest(), EngineOptions::default()).unwrap()
}

#[test]
fn calls_one_after_another_each_see_a_fresh_instance() {
    let engine = engine();
    // The guest does count: one instance called twice says so.
    let instance = engine.instantiate().unwrap();
    instance.call("validate", b"{}").unwrap();
    assert_eq!(instance.call("validate", b"{}").unwrap(), [2, 2]);
    drop(instance);
    for call in 0..50 {
        assert_eq!(
            engine.call("validate", b"{}").unwrap(),
            [1, 1],
            "call {call} saw what an earlier call left"
        );
    }
}

#[test]
fn concurrent_calls_each_see_a_fresh_instance() {
    let engine = Arc::new(engine());
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let engine = engine.clone();
            thread::spawn(move || {
                for _ in 0..50 {
                    assert_eq!(engine.call("validate", b"{}").unwrap(), [1, 1]);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("no call saw another's state");
    }
}

#[test]
fn a_call_after_a_large_one_sees_a_fresh_instance() {
    let engine = engine();
    let large = vec![b' '; 1 << 20];
    assert_eq!(engine.call("validate", &large).unwrap(), [1, 1]);
    assert_eq!(engine.call("validate", b"{}").unwrap(), [1, 1]);
}
