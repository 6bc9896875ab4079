//! The operator's own configuration, and the injection settings it derives for a namespace
//! from its `Lumigo` resource (the same JSON the Kubewarden policy takes).

use lumigo_mutation::{InjectionConfig, SecretKeyRef};

use crate::crd::Lumigo;

/// What every namespace's injection shares: set once per operator installation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorSettings {
    pub injector_image: String,
    pub traces_endpoint: String,
    pub logs_endpoint: String,
    /// Written into the `lumigo.auto-trace` label; workloads labelled by another version are
    /// re-injected.
    pub operator_version: String,
}

/// Whether the resource's last reconcile found it valid (its `Active` condition is true).
pub fn is_active(lumigo: &Lumigo) -> bool {
    lumigo
        .status
        .as_ref()
        .is_some_and(|status| status.conditions.iter().any(|c| c.type_ == crate::status::ACTIVE && c.status == "True"))
}

/// The settings admission applies in the resource's namespace: only once the operator found the
/// resource valid, so that a duplicate or a resource with a broken Secret injects nothing.
pub fn admission_config(lumigo: &Lumigo, operator: &OperatorSettings) -> Option<InjectionConfig> {
    is_active(lumigo).then(|| injection_config(lumigo, operator)).flatten()
}

/// The injection settings of a namespace, or `None` when its resource does not ask for injection.
pub fn injection_config(lumigo: &Lumigo, operator: &OperatorSettings) -> Option<InjectionConfig> {
    if !lumigo.spec.tracing.injection.enabled || lumigo.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let secret = &lumigo.spec.lumigo_token.secret_ref;
    Some(InjectionConfig {
        injector_image: operator.injector_image.clone(),
        token_secret: SecretKeyRef { name: secret.name.clone(), key: secret.key.clone() },
        traces_endpoint: operator.traces_endpoint.clone(),
        logs_endpoint: operator.logs_endpoint.clone(),
        enable_traces: lumigo.spec.tracing.enabled,
        enable_logs: lumigo.spec.logging.enabled,
        operator_version: operator.operator_version.clone(),
    })
}
