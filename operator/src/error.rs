#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Kubernetes client configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("building a Kubernetes request: {0}")]
    Request(#[from] kube::core::request::Error),
    #[error("{0}")]
    Serialization(#[from] serde_json::Error),
    #[error(
        "{kind} {namespace}/{name} kept changing under us; giving up after {attempts} attempts"
    )]
    Contended {
        kind: String,
        namespace: String,
        name: String,
        attempts: u32,
    },
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("incomplete: {0}")]
    Incomplete(String),
    #[error("the Lumigo resource has no namespace")]
    NotNamespaced,
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("leader election: {0}")]
    Leadership(String),
    #[error("serving {0}")]
    Serve(std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A 409 from the API server: the object changed since it was read.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(status)) if status.code == 409)
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(status)) if status.code == 404)
    }
}
