//! A real Kubernetes control plane for end-to-end tests and the demo: etcd, kube-apiserver and
//! kube-controller-manager built from the Go modules pinned in `e2e/k8s/go.mod`, started on free
//! loopback ports with freshly generated certificates, RBAC and the admission plugins the project
//! relies on (MutatingAdmissionWebhook, PodSecurity).
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

pub use certs::{CertificateAuthority, CertifiedKey};
pub use control_plane::ControlPlane;
pub use error::{Error, Result};
pub use node::Cluster;
pub use otlp_sink::{OtlpSink, ReceivedSpan};
pub use process::Process;
