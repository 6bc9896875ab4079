//! `annotate-policy METADATA.yml IN.wasm OUT.wasm`: writes the `io.kubewarden.metadata`
//! section, as `kwctl annotate` does, so Kubewarden's policy-server accepts the module. Like
//! kwctl, it asks the module for its protocol version, which also proves the module runs.

use std::process::ExitCode;

use lumigo_policy_host::metadata::{annotate, metadata_from_yaml};
use lumigo_policy_host::{EngineOptions, Error, PolicyEngine};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [metadata_path, module_path, output_path] = args.as_slice() else {
        eprintln!("usage: annotate-policy METADATA.yml IN.wasm OUT.wasm");
        return ExitCode::from(2);
    };
    match run(metadata_path, module_path, output_path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("annotate-policy: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(metadata_path: &str, module_path: &str, output_path: &str) -> Result<(), Error> {
    let read = |path: &str| {
        std::fs::read(path).map_err(|source| Error::Io {
            path: path.into(),
            source,
        })
    };
    let yaml = String::from_utf8_lossy(&read(metadata_path)?).into_owned();
    let module = read(module_path)?;
    let mut metadata = metadata_from_yaml(&yaml)?;
    let engine = PolicyEngine::new(&module, EngineOptions::default())?;
    let version: serde_json::Value = serde_json::from_slice(&engine.call("protocol_version", &[])?)
        .map_err(|e| {
            Error::Metadata(format!(
                "the module's protocol_version answer is not JSON: {e}"
            ))
        })?;
    metadata["protocolVersion"] = version;
    let annotated = annotate(&module, &metadata)?;
    std::fs::write(output_path, annotated).map_err(|source| Error::Io {
        path: output_path.into(),
        source,
    })
}
