use std::path::PathBuf;

/// Everything that can go wrong while providing a control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("e2e/{0} failed ({1}); its output above says why")]
    Build(&'static str, String),

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error("generating certificates: {0}")]
    Certificate(#[from] rcgen::Error),

    #[error(
        "{component} exited ({status}) before the control plane was ready; end of {log}:\n{tail}"
    )]
    Exited {
        component: &'static str,
        status: String,
        log: PathBuf,
        tail: String,
    },

    #[error("{component} was not ready after {seconds} s; end of {log}:\n{tail}")]
    NotReady {
        component: &'static str,
        seconds: u64,
        log: PathBuf,
        tail: String,
    },

    #[error("reading the kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),

    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error("kubectl {args} failed ({status}): {stderr}")]
    Kubectl {
        args: String,
        status: String,
        stderr: String,
    },

    /// The node could not be set up on this machine; the message says what and how to fix it.
    #[error("the e2e node: {0}")]
    Node(String),

    /// Assembling or reading a container image, or reading the Dockerfile it is made from.
    #[error("container image: {0}")]
    Image(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches what was being attempted to an I/O error, which on its own rarely says which file or
/// port.
pub(crate) trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}
