//! Turns a Kubewarden validation request into a response: always accepted, mutated only when
//! the mutation core changed something, with a warning when it had to skip.

use kubewarden_policy_sdk::request::KubernetesAdmissionRequest;
use kubewarden_policy_sdk::response::ValidationResponse;
use kubewarden_policy_sdk::settings::SettingsValidationResponse;
use lumigo_mutation::{reconcile, Operation, Outcome, WorkloadKind};
use serde::Deserialize;

use crate::settings::Settings;

const WARNING_PREFIX: &str = "lumigo";

/// The request as policy-server sends it; settings are parsed apart so that their errors get
/// their own message.
#[derive(Deserialize)]
struct ValidationRequest {
    #[serde(default)]
    settings: serde_json::Value,
    request: KubernetesAdmissionRequest,
}

pub fn evaluate(payload: &[u8]) -> ValidationResponse {
    let request: ValidationRequest = match serde_json::from_slice(payload) {
        Ok(request) => request,
        Err(error) => {
            return accept_with_warning(format!(
                "{WARNING_PREFIX}: cannot read the admission request: {error}"
            ))
        }
    };
    let settings = match Settings::parse(&request.settings) {
        Ok(settings) => settings,
        Err(error) => return accept_with_warning(format!("{WARNING_PREFIX}: {error}")),
    };
    let admission = request.request;
    let Some(operation) = Operation::from_admission(&admission.operation) else {
        return accepted();
    };
    let Some(kind) = WorkloadKind::from_group_kind(&admission.kind.group, &admission.kind.kind)
    else {
        return accepted();
    };
    if !admission.sub_resource.is_empty() {
        return accepted();
    }
    let mut object = admission.object;
    match reconcile(&mut object, kind, &settings.0, operation) {
        Outcome::Changed(_) => ValidationResponse {
            mutated_object: Some(object),
            ..accepted()
        },
        Outcome::Unchanged(reason) if reason.is_problem() => {
            let name = object
                .pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .unwrap_or(&admission.name);
            accept_with_warning(format!(
                "{WARNING_PREFIX}: {kind} {name} is not instrumented: {reason}"
            ))
        }
        Outcome::Unchanged(_) => accepted(),
    }
}

pub fn validate_settings(payload: &[u8]) -> SettingsValidationResponse {
    let parsed = serde_json::from_slice(payload)
        .map_err(|error| format!("settings are not JSON: {error}"))
        .and_then(|raw| Settings::parse(&raw));
    match parsed {
        Ok(_) => SettingsValidationResponse {
            valid: true,
            message: None,
        },
        Err(message) => SettingsValidationResponse {
            valid: false,
            message: Some(message),
        },
    }
}

fn accepted() -> ValidationResponse {
    ValidationResponse {
        accepted: true,
        message: None,
        code: None,
        mutated_object: None,
        audit_annotations: None,
        warnings: None,
    }
}

fn accept_with_warning(warning: String) -> ValidationResponse {
    ValidationResponse {
        warnings: Some(vec![warning]),
        ..accepted()
    }
}
