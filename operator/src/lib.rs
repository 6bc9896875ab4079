//! The Lumigo operator: the `Lumigo` resource's lifecycle (validation, rollout into existing
//! workloads, re-injection, removal, uninstall) and the built-in admission webhook. Every change
//! to a pod template goes through the mutation core, `lumigo_mutation`.

pub mod admission;
pub mod cli;
pub mod crd;
pub mod error;
pub mod events;
pub mod health;
pub mod kubewarden;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod onboarding;
pub mod reconciler;
pub mod rollout;
pub mod run;
pub mod settings;
pub mod status;
pub mod telemetry_proxy;
pub mod token;
pub mod tracing_state;
pub mod tracing_watch;
pub mod uninstall;
pub mod workload_health;
pub mod workloads;

pub use error::{Error, Result};
