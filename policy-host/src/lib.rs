//! The host side of the Lumigo policy module: annotating it for Kubewarden, and evaluating it
//! in wasmtime through waPC for the operator's built-in admission and for the tests.

pub mod engine;
pub mod error;
pub mod metadata;

pub use engine::{EngineOptions, Instance, PolicyEngine};
pub use error::{Error, Result};
