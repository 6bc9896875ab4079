//! The Go-built binaries. `e2e/build-binaries.sh` is the single place that knows the pinned versions
//! and the cache layout; this runs it (a no-op when the binaries exist) and uses the directory it
//! prints, so `cargo test` works on a fresh machine without going through `just`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::error::{Error, IoContext, Result};

pub(crate) struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kubectl: PathBuf,
}

impl Binaries {
    pub async fn ensure() -> Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("build-binaries.sh");
        let output = tokio::process::Command::new(&script)
            .stderr(Stdio::inherit())
            .output()
            .await
            .context(|| format!("running {}", script.display()))?;
        if !output.status.success() {
            return Err(Error::Build(output.status.to_string()));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let dir = PathBuf::from(stdout.lines().last().unwrap_or_default().trim());
        Ok(Self {
            etcd: dir.join("etcd"),
            kube_apiserver: dir.join("kube-apiserver"),
            kube_controller_manager: dir.join("kube-controller-manager"),
            kubectl: dir.join("kubectl"),
        })
    }
}
