//! The Lumigo operator: the `Lumigo` resource's lifecycle (validation, rollout into existing
//! workloads, re-injection, removal, uninstall) and the built-in admission webhook. Every change
//! to a pod template goes through the mutation core, `lumigo_mutation`.

pub mod admission;
pub mod cli;
pub mod crd;
pub mod delivery;
mod error;
mod events;
#[cfg(test)]
mod fake_api;
mod health;
mod kubewarden;
mod leader;
pub mod memory;
mod metrics;
pub mod onboarding;
mod reconciler;
mod rollout;
pub mod run;
pub mod settings;
mod status;
pub mod telemetry_proxy;
mod token;
pub mod tracing_state;
mod tracing_watch;
mod uninstall;
pub mod workload_health;
pub mod workloads;

pub use error::{Error, Result};
