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
    /// The object changed, or appeared, since it was read: read it again.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Kube(error) if lost_race(error))
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Kube(error) if not_found(error))
    }
}

// By status code, not kube's `Status::is_not_found`/`is_conflict`: those read only the reason,
// which a response without a `Status` body lacks (a resource type the apiserver does not serve,
// such as a CRD not installed, answers 404 with plain text).

/// A write refused because the object changed since it was read (a replace with an old
/// `resourceVersion`) or exists already (a create that raced another writer): read it again.
pub(crate) fn lost_race(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 409)
}

pub(crate) fn not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}
