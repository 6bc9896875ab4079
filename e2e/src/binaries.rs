//! The Go-built binaries. `e2e/build-binaries.sh` and `e2e/build-node-binaries.sh` are the single
//! places that know the pinned versions and the cache layout; this runs them (a no-op when the
//! binaries exist) and uses the directory it prints, so `cargo test` works on a fresh machine
//! without going through `just`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::error::{Error, IoContext, Result};

pub(crate) struct Binaries {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub kubectl: PathBuf,
    pub kube_scheduler: PathBuf,
    pub kubelet: PathBuf,
    pub kube_proxy: PathBuf,
}

impl Binaries {
    pub async fn ensure() -> Result<Self> {
        let dir = run_build_script("build-binaries.sh").await?;
        Ok(Self {
            etcd: dir.join("etcd"),
            kube_apiserver: dir.join("kube-apiserver"),
            kube_controller_manager: dir.join("kube-controller-manager"),
            kubectl: dir.join("kubectl"),
            kube_scheduler: dir.join("kube-scheduler"),
            kubelet: dir.join("kubelet"),
            kube_proxy: dir.join("kube-proxy"),
        })
    }
}

/// The node's runtime: containerd, its runc shim, ctr and CoreDNS (`e2e/build-node-binaries.sh`).
pub(crate) struct NodeBinaries {
    pub dir: PathBuf,
    pub containerd: PathBuf,
    pub ctr: PathBuf,
    pub coredns: PathBuf,
}

impl NodeBinaries {
    pub async fn ensure() -> Result<Self> {
        let dir = run_build_script("build-node-binaries.sh").await?;
        Ok(Self {
            containerd: dir.join("containerd"),
            ctr: dir.join("ctr"),
            coredns: dir.join("coredns"),
            dir,
        })
    }
}

/// Runs one of e2e's build scripts (a no-op when its cache entry exists) and returns the directory
/// it prints last.
async fn run_build_script(name: &'static str) -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(name);
    let output = tokio::process::Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .await
        .context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        return Err(Error::Build(name, output.status.to_string()));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    Ok(PathBuf::from(
        stdout.lines().last().unwrap_or_default().trim(),
    ))
}
