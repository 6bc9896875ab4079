#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("policy metadata is not valid YAML: {0}")]
    MetadataYaml(#[from] serde_norway::Error),
    #[error("policy metadata: {0}")]
    Metadata(String),
    #[error("not a WebAssembly module: {0}")]
    Module(#[from] wasmparser::BinaryReaderError),
    #[error("cannot prepare the policy module: {0}")]
    Engine(String),
    #[error("policy evaluation failed: {0}")]
    Evaluation(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
