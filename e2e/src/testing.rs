//! What the test suites of every crate share that needs nothing of the operator: the opening of a
//! suite on a control plane or a cluster, waiting for a condition with a timeout and a message, the
//! built policy module, and hand-written waPC guests. The operator's own helpers (its CRD, its
//! process, its resources) are in `operator/tests/support`, built on these.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;

use crate::{Cluster, ControlPlane};

/// How often the waits below check again.
pub const POLL: Duration = Duration::from_millis(200);

/// The control plane every test of the calling test binary shares ([`ControlPlane::shared`]),
/// and a client of it.
pub async fn shared_control_plane() -> (Arc<ControlPlane>, Client) {
    let cp = ControlPlane::shared()
        .await
        .expect("the shared control plane");
    let client = cp.client().expect("a client of the control plane");
    (cp, client)
}

/// A control plane of the caller's own ([`ControlPlane::start`]), and a client of it.
pub async fn own_control_plane() -> (ControlPlane, Client) {
    let cp = ControlPlane::start().await.expect("a control plane");
    let client = cp.client().expect("a client of the control plane");
    (cp, client)
}

/// The cluster with a node every test of the calling test binary shares ([`Cluster::shared`]),
/// and a client of its control plane.
pub async fn shared_cluster() -> (Arc<Cluster>, Client) {
    let cluster = Cluster::shared().await.expect("a cluster with a node");
    let client = cluster
        .control_plane()
        .client()
        .expect("a client of the control plane");
    (cluster, client)
}

/// Checks with `check` every [`POLL`] until it yields a value, for at most `timeout`: `None` if it
/// never did, for a caller that explains the timeout itself.
pub async fn within<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let checked = poll(timeout, || {
        let next = check();
        async move { Ok::<_, Infallible>(next.await) }
    })
    .await;
    match checked {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

/// Checks with `check` every [`POLL`] until it yields a value; panics saying what was awaited
/// once `timeout` has passed.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    within(timeout, check)
        .await
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// [`eventually`] for a check that can fail: its first error ends the wait and is returned.
pub async fn try_eventually<T, E, F, Fut>(what: &str, timeout: Duration, check: F) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    Ok(poll(timeout, check)
        .await?
        .unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}")))
}

async fn poll<T, E, F, Fut>(timeout: Duration, mut check: F) -> Result<Option<T>, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Option<T>, E>>,
{
    let started = Instant::now();
    loop {
        if let Some(value) = check().await? {
            return Ok(Some(value));
        }
        if started.elapsed() >= timeout {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `Some` when `command` runs and exits successfully: a check for [`eventually`].
pub fn succeeded(command: &mut Command) -> Option<()> {
    command.output().ok()?.status.success().then_some(())
}

/// The built policy module (`just policy::build`), named by `LUMIGO_POLICY_WASM`, which the
/// `just` recipes set.
pub fn policy_module_path() -> PathBuf {
    std::env::var_os("LUMIGO_POLICY_WASM")
        .expect(
            "LUMIGO_POLICY_WASM must name the built policy module: \
             LUMIGO_POLICY_WASM=$(just policy::path) after `just policy::build`",
        )
        .into()
}

/// The bytes of the built policy module ([`policy_module_path`]).
pub fn policy_module() -> Vec<u8> {
    let path = policy_module_path();
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("reading the policy module {}: {e}", path.display()))
}

/// A module assembled from its WebAssembly text.
pub fn assemble(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("the test guest assembles")
}

/// A waPC guest whose one function, `__guest_call`, runs `body`: e.g. `unreachable` traps, and
/// `(loop $forever (br $forever)) i32.const 1` never returns.
pub fn wapc_guest(body: &str) -> Vec<u8> {
    assemble(&format!(
        r#"(module
             (memory (export "memory") 1)
             (func (export "__guest_call") (param i32 i32) (result i32) {body}))"#
    ))
}
