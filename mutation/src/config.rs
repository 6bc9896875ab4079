//! What an injection needs to know, shared by the policy settings and the operator.

use serde::{Deserialize, Serialize};

use crate::names::{injected_label_value, INJECTED_VALUE_PREFIX};

pub const DEFAULT_TRACES_ENDPOINT: &str =
    "https://ga-otlp.lumigo-tracer-edge.golumigo.com/v1/traces";
pub const DEFAULT_LOGS_ENDPOINT: &str = "https://ga-otlp.lumigo-tracer-edge.golumigo.com/v1/logs";

/// The Secret key the tracer token is read from; the token itself never appears in a pod spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretKeyRef {
    pub name: String,
    pub key: String,
}

/// The settings of an injection. The same JSON is the Kubewarden policy's settings and what
/// the operator derives from a `Lumigo` resource.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InjectionConfig {
    /// The init container's image, pinned by tag or digest.
    pub injector_image: String,
    pub token_secret: SecretKeyRef,
    #[serde(default = "default_traces_endpoint")]
    pub traces_endpoint: String,
    #[serde(default = "default_logs_endpoint")]
    pub logs_endpoint: String,
    #[serde(default = "enabled")]
    pub enable_traces: bool,
    #[serde(default)]
    pub enable_logs: bool,
    /// Written into the `lumigo.auto-trace` label; a different value on an object means it was
    /// injected by another version and is re-injected.
    pub operator_version: String,
    /// How the payload reaches the pod's containers. The default is left out when written, so
    /// that a policy module older than the setting still takes the settings of the copy.
    #[serde(default, skip_serializing_if = "PayloadDelivery::is_init_container")]
    pub payload_delivery: PayloadDelivery,
}

/// How the injector and the tracers reach `/opt/lumigo` in a pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PayloadDelivery {
    /// An init container copies the payload into an emptyDir: works on every runtime, costs a
    /// copy and the payload's size of ephemeral storage per pod.
    #[default]
    InitContainer,
    /// The image itself is mounted read-only (`volumes[].image`, Kubernetes 1.35 by default; the
    /// runtime must be containerd 2.1 or CRI-O 1.33 or later): no copy, no per-pod storage.
    ImageVolume,
}

impl PayloadDelivery {
    fn is_init_container(&self) -> bool {
        *self == PayloadDelivery::InitContainer
    }
}

fn default_traces_endpoint() -> String {
    DEFAULT_TRACES_ENDPOINT.to_owned()
}

fn default_logs_endpoint() -> String {
    DEFAULT_LOGS_ENDPOINT.to_owned()
}

fn enabled() -> bool {
    true
}

/// Every problem found in a configuration, so a person fixes them all in one go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid settings: {}", .problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

impl InjectionConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        if let Err(problem) = check_image(&self.injector_image) {
            problems.push(format!(
                "injectorImage {:?}: {problem}",
                self.injector_image
            ));
        }
        if !is_dns_subdomain(&self.token_secret.name) {
            problems.push(format!(
                "tokenSecret.name {:?} is not a valid Secret name (lowercase letters, digits, '-' \
                 and '.', at most 253 characters)",
                self.token_secret.name
            ));
        }
        if !is_secret_key(&self.token_secret.key) {
            problems.push(format!(
                "tokenSecret.key {:?} is not a valid Secret key (letters, digits, '-', '_' and \
                 '.', at most 253 characters)",
                self.token_secret.key
            ));
        }
        for (field, url) in [
            ("tracesEndpoint", &self.traces_endpoint),
            ("logsEndpoint", &self.logs_endpoint),
        ] {
            if let Err(problem) = check_endpoint(url) {
                problems.push(format!("{field} {url:?}: {problem}"));
            }
        }
        if let Err(problem) = check_operator_version(&self.operator_version) {
            problems.push(format!(
                "operatorVersion {:?}: {problem}",
                self.operator_version
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError { problems })
        }
    }

    /// The `lumigo.auto-trace` label value this configuration writes.
    pub fn label_value(&self) -> String {
        injected_label_value(&self.operator_version)
    }
}

fn check_image(image: &str) -> Result<(), &'static str> {
    if image.is_empty() {
        return Err("must not be empty");
    }
    if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace");
    }
    // `repo@sha256:…` or `repo:tag@sha256:…`: the digest pins it, whatever the tag says, so the
    // reference is passed to the pod as it is; only a malformed digest, which the kubelet would
    // reject at pull time on every pod, is refused here.
    let (name, digest) = match image.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (image, None),
    };
    if let Some(digest) = digest {
        check_digest(digest)?;
        if name.is_empty() {
            return Err("has a digest but no repository");
        }
    }
    let last_component = name.rsplit('/').next().unwrap_or(name);
    match (last_component.split_once(':'), digest) {
        (Some((_, "")), _) => Err("has an empty tag"),
        (_, Some(_)) => Ok(()),
        (None, None) => {
            Err("must be pinned by a tag or a digest (an untagged image means `latest`)")
        }
        (Some((_, "latest")), None) => {
            Err("must be pinned: `latest` changes under running workloads")
        }
        (Some(_), None) => Ok(()),
    }
}

/// An OCI content digest of an algorithm registries serve: `sha256:` and 64 lowercase hex digits
/// (or `sha512:` and 128).
fn check_digest(digest: &str) -> Result<(), &'static str> {
    let (algorithm, hex) = digest
        .split_once(':')
        .ok_or("has a digest without an algorithm (sha256:…)")?;
    let length = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err("has a digest of an algorithm other than sha256 or sha512"),
    };
    if hex.len() != length
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("has a malformed digest (sha256: and 64 lowercase hex digits)");
    }
    Ok(())
}

fn is_dns_subdomain(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'.')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

fn is_secret_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 253
        && key != "."
        && key != ".."
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

fn check_endpoint(url: &str) -> Result<(), &'static str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or("must be an http:// or https:// URL")?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err("has no host");
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace");
    }
    Ok(())
}

fn check_operator_version(version: &str) -> Result<(), &'static str> {
    const LABEL_VALUE_MAX: usize = 63;
    if version.is_empty() {
        return Err("must not be empty");
    }
    if INJECTED_VALUE_PREFIX.len() + version.len() > LABEL_VALUE_MAX {
        return Err("is too long to fit in a label value");
    }
    if !version
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err("may only contain letters, digits, '-', '_' and '.'");
    }
    if !version
        .as_bytes()
        .last()
        .is_some_and(u8::is_ascii_alphanumeric)
    {
        return Err("must end with a letter or a digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> serde_json::Value {
        json!({
            "injectorImage": "ghcr.io/lumigo/autotrace:1.2.3",
            "tokenSecret": {"name": "lumigo-credentials", "key": "token"},
            "operatorVersion": "1.2.3"
        })
    }

    #[test]
    fn minimal_settings_get_defaults_and_validate() {
        let config: InjectionConfig = serde_json::from_value(valid()).unwrap();
        assert_eq!(config.traces_endpoint, DEFAULT_TRACES_ENDPOINT);
        assert_eq!(config.logs_endpoint, DEFAULT_LOGS_ENDPOINT);
        assert!(config.enable_traces);
        assert!(!config.enable_logs);
        config.validate().unwrap();
        assert_eq!(config.label_value(), "lumigo-operator.v1.2.3");
    }

    #[test]
    fn unknown_fields_are_rejected_by_name() {
        let mut settings = valid();
        settings["enableTrace"] = json!(true);
        let error = serde_json::from_value::<InjectionConfig>(settings).unwrap_err();
        assert!(error.to_string().contains("enableTrace"), "{error}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut settings = valid();
        settings["injectorImage"] = json!("ghcr.io/lumigo/autotrace:latest");
        settings["tokenSecret"] = json!({"name": "Lumigo_Credentials", "key": "to ken"});
        settings["tracesEndpoint"] = json!("ftp://example.com");
        settings["logsEndpoint"] = json!("https://");
        settings["operatorVersion"] = json!("1.2.3-");
        let config: InjectionConfig = serde_json::from_value(settings).unwrap();
        let problems = config.validate().unwrap_err().problems;
        let fields: Vec<&str> = problems
            .iter()
            .map(|p| p.split(' ').next().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "injectorImage",
                "tokenSecret.name",
                "tokenSecret.key",
                "tracesEndpoint",
                "logsEndpoint",
                "operatorVersion"
            ]
        );
    }

    #[test]
    fn images_must_be_pinned() {
        let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
        for good in [
            "registry:5000/lumigo/autotrace:1.0".to_owned(),
            "a/b:v2".to_owned(),
            format!("ghcr.io/lumigo-rs/autotrace@{digest}"),
            format!("ghcr.io/lumigo-rs/autotrace:0.1.0@{digest}"),
            format!("registry:5000/autotrace@{digest}"),
            // The digest pins it, so a moving tag beside it moves nothing.
            format!("autotrace:latest@{digest}"),
            format!("autotrace@sha512:{}", "ab".repeat(64)),
        ] {
            assert_eq!(check_image(&good), Ok(()), "{good}");
        }
        for bad in [
            "".to_owned(),
            "registry:5000/lumigo/autotrace".to_owned(),
            "autotrace:latest".to_owned(),
            "autotrace:".to_owned(),
            "auto trace:1".to_owned(),
            "autotrace@sha256:abcd".to_owned(),
            "autotrace@".to_owned(),
            format!("autotrace@{}", "0123456789abcdef".repeat(4)),
            format!("autotrace@md5:{}", "0123456789abcdef".repeat(4)),
            format!(
                "autotrace@{}",
                digest.to_uppercase().replace("SHA256", "sha256")
            ),
            format!("autotrace:@{digest}"),
            format!("@{digest}"),
            format!("autotrace@{digest}@{digest}"),
        ] {
            assert!(check_image(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn operator_version_must_fit_the_label() {
        assert!(check_operator_version(&"1".repeat(46)).is_ok());
        assert!(check_operator_version(&"1".repeat(47)).is_err());
        assert!(check_operator_version("1.0.0+build").is_err());
    }
}
