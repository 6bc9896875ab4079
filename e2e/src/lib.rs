//! A real Kubernetes cluster for end-to-end tests and the demo, built from pinned Go modules:
//! - [`ControlPlane`]: etcd, kube-apiserver and kube-controller-manager on free loopback ports with
//!   freshly generated certificates, RBAC and the admission plugins the project relies on
//!   (MutatingAdmissionWebhook, PodSecurity); no node, for the fast suites;
//! - [`Cluster`]: the control plane reachable from pods plus a real node (kube-scheduler,
//!   containerd with runc and the CNI plugins, kubelet, kube-proxy, CoreDNS), one per machine;
//! - [`images`]: the images the node runs, assembled here as OCI archives ([`oci`],
//!   [`dockerfile`]);
//! - [`OtlpSink`]: an OTLP/HTTP receiver standing in for Lumigo's endpoint;
//! - [`testing`]: what every crate's test suites share (opening a suite, waiting, the built policy
//!   module, hand-written waPC guests).
//!
//! ```no_run
//! # async fn demo() -> lumigo_e2e::Result<()> {
//! let cp = lumigo_e2e::ControlPlane::shared().await?;
//! let namespace = cp.create_namespace("my-test", &[]).await?;
//! let client = cp.client()?;
//! # Ok(()) }
//! ```

mod binaries;
mod certs;
mod control_plane;
pub mod dockerfile;
mod error;
pub mod images;
mod kubeconfig;
mod node;
pub mod oci;
mod otlp_sink;
mod process;
mod shared;
pub mod testing;

pub use certs::{CertificateAuthority, CertifiedKey};
pub use control_plane::ControlPlane;
pub use error::{Error, Result};
pub use node::Cluster;
pub use otlp_sink::{OtlpSink, ReceivedSpan};
pub use process::Process;
