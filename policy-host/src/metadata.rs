//! The `io.kubewarden.metadata` custom section: what `kwctl annotate` writes and what
//! policy-server requires before it runs a module.

use serde_json::Value;
use wasm_encoder::{CustomSection, RawSection, Section};
use wasmparser::{Parser, Payload};

use crate::error::{Error, Result};

pub const METADATA_SECTION: &str = "io.kubewarden.metadata";

/// The metadata of `metadata.yml` as the JSON the section holds.
pub fn metadata_from_yaml(yaml: &str) -> Result<Value> {
    let metadata: Value = serde_norway::from_str(yaml)?;
    if !metadata.is_object() {
        return Err(Error::Metadata("the document is not a mapping".into()));
    }
    Ok(metadata)
}

/// The module with the metadata section appended (any earlier one is replaced); policy-server
/// only runs modules that declare protocol v1.
pub fn annotate(module: &[u8], metadata: &Value) -> Result<Vec<u8>> {
    match metadata.get("protocolVersion").and_then(Value::as_str) {
        Some("v1") => {}
        other => {
            return Err(Error::Metadata(format!(
                "protocolVersion must be \"v1\", found {other:?}"
            )))
        }
    }
    let mut annotated = strip_metadata(module)?;
    let payload = serde_json::to_vec(metadata).map_err(|e| Error::Metadata(e.to_string()))?;
    CustomSection {
        name: METADATA_SECTION.into(),
        data: payload.into(),
    }
    .append_to(&mut annotated);
    Ok(annotated)
}

/// The metadata a module carries, if it is annotated.
pub fn read_metadata(module: &[u8]) -> Result<Option<Value>> {
    for payload in Parser::new(0).parse_all(module) {
        if let Payload::CustomSection(section) = payload? {
            if section.name() == METADATA_SECTION {
                let metadata = serde_json::from_slice(section.data()).map_err(|e| {
                    Error::Metadata(format!("the {METADATA_SECTION} section is not JSON: {e}"))
                })?;
                return Ok(Some(metadata));
            }
        }
    }
    Ok(None)
}

fn strip_metadata(module: &[u8]) -> Result<Vec<u8>> {
    let mut kept = Vec::with_capacity(module.len());
    for payload in Parser::new(0).parse_all(module) {
        let payload = payload?;
        if let Payload::Version { range, .. } = &payload {
            kept.extend_from_slice(&module[..range.end as usize]);
            continue;
        }
        let is_metadata =
            matches!(&payload, Payload::CustomSection(s) if s.name() == METADATA_SECTION);
        if let Some((id, range)) = payload.as_section().filter(|_| !is_metadata) {
            let data = &module[range.start as usize..range.end as usize];
            RawSection { id, data }.append_to(&mut kept);
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The smallest valid module: magic and version.
    const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

    #[test]
    fn annotating_twice_keeps_one_section() {
        let once = annotate(EMPTY_MODULE, &json!({"protocolVersion": "v1", "n": 1})).unwrap();
        let twice = annotate(&once, &json!({"protocolVersion": "v1", "n": 2})).unwrap();
        assert_eq!(
            read_metadata(&twice).unwrap(),
            Some(json!({"protocolVersion": "v1", "n": 2}))
        );
        assert_eq!(twice.len(), once.len());
        wasmparser::validate(&twice).unwrap();
    }

    #[test]
    fn metadata_needs_protocol_v1() {
        let metadata = metadata_from_yaml("mutating: true\n").unwrap();
        let error = annotate(EMPTY_MODULE, &metadata).unwrap_err();
        assert!(error.to_string().contains("protocolVersion"), "{error}");
        assert!(metadata_from_yaml("- a list\n").is_err());
    }
}
