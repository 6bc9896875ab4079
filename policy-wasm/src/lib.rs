//! waPC glue of the Lumigo Kubewarden policy; the logic is in `admission` and the mutation core.

pub mod admission;
#[cfg(any(target_family = "wasm", test))]
mod call_arena;
pub mod settings;

use kubewarden_policy_sdk::protocol_version_guest;
use wapc_guest::prelude::*;

/// One call per instance, as the operator calls the module: see `call_arena`.
#[cfg(target_family = "wasm")]
#[global_allocator]
static ALLOCATOR: call_arena::CallArena<{ 1 << 20 }, std::alloc::System> =
    call_arena::CallArena::new(std::alloc::System);

#[no_mangle]
pub extern "C" fn wapc_init() {
    register_function("validate", validate);
    register_function("validate_as_patch", validate_as_patch);
    register_function("validate_settings", validate_settings);
    register_function("protocol_version", protocol_version_guest);
}

fn validate(payload: &[u8]) -> CallResult {
    Ok(serde_json::to_vec(&admission::evaluate(payload))?)
}

fn validate_as_patch(payload: &[u8]) -> CallResult {
    let answer = admission::evaluate_as_patch(payload);
    let written = serde_json::to_vec(&answer)?;
    // The operator discards the instance after this call: tearing the answer down would walk
    // every value of the patch for memory nobody uses again.
    if cfg!(target_family = "wasm") {
        std::mem::forget(answer);
    }
    Ok(written)
}

fn validate_settings(payload: &[u8]) -> CallResult {
    Ok(serde_json::to_vec(&admission::validate_settings(payload))?)
}
