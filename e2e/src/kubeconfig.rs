//! The kubeconfig file: what kubectl, the demo and [`kube::Config`] read to reach the apiserver.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::certs::CertifiedKey;
use crate::error::{IoContext, Result};

/// Writes a single-context kubeconfig with everything embedded, so the file works from any
/// directory and survives nothing but the control plane it describes.
pub(crate) fn write(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    client: &CertifiedKey,
) -> Result<()> {
    let text = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: lumigo-e2e
  cluster:
    server: {server}
    certificate-authority-data: {ca}
users:
- name: {user}
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: lumigo-e2e
  context:
    cluster: lumigo-e2e
    user: {user}
current-context: lumigo-e2e
",
        ca = STANDARD.encode(ca_pem),
        cert = STANDARD.encode(&client.cert_pem),
        key = STANDARD.encode(&client.key_pem),
    );
    std::fs::write(path, text).context(|| format!("writing {}", path.display()))
}
