//! Turns a Kubewarden validation request into a response: always accepted, mutated only when
//! the mutation core changed something, with a warning when it had to skip.

use kubewarden_policy_sdk::response::ValidationResponse;
use kubewarden_policy_sdk::settings::SettingsValidationResponse;
use lumigo_mutation::{reconciled, Change, InjectionChange, Operation, PatchAnswer, WorkloadKind};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::settings::Settings;

const WARNING_PREFIX: &str = "lumigo";

/// The request as policy-server sends it; settings are parsed apart so that their errors get
/// their own message.
#[derive(Deserialize)]
struct ValidationRequest<'a> {
    /// Read straight into the typed settings: building a JSON tree of them first, and tearing it
    /// down, was work on every request.
    #[serde(borrow, default)]
    settings: Option<&'a RawValue>,
    request: AdmissionRequest,
}

/// The fields of Kubewarden's `KubernetesAdmissionRequest` the policy reads, under the same names
/// and defaults. Parsing the others (the user's identity, the old object of an update) was work
/// thrown away on every request.
#[derive(Deserialize, Default)]
#[serde(default)]
struct AdmissionRequest {
    name: String,
    operation: String,
    kind: GroupKind,
    #[serde(alias = "subResource")]
    sub_resource: String,
    object: Value,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GroupKind {
    group: String,
    kind: String,
}

/// What the policy decided for one request.
enum Decision {
    /// Admitted as it came, perhaps with a warning.
    Unchanged(ValidationResponse),
    /// Mutated: the object as it came and as it goes.
    Changed {
        change: Change,
        before: Value,
        after: Value,
    },
}

fn decide(payload: &[u8]) -> Decision {
    let request: ValidationRequest = match serde_json::from_slice(payload) {
        Ok(request) => request,
        Err(error) => {
            return Decision::Unchanged(accept_with_warning(format!(
                "{WARNING_PREFIX}: cannot read the admission request: {error}"
            )))
        }
    };
    let settings = match Settings::parse(request.settings.unwrap_or(RawValue::NULL)) {
        Ok(settings) => settings,
        Err(error) => {
            return Decision::Unchanged(accept_with_warning(format!("{WARNING_PREFIX}: {error}")))
        }
    };
    let admission = request.request;
    let Some(operation) = Operation::from_admission(&admission.operation) else {
        return Decision::Unchanged(accepted());
    };
    let Some(kind) = WorkloadKind::from_group_kind(&admission.kind.group, &admission.kind.kind)
    else {
        return Decision::Unchanged(accepted());
    };
    if !admission.sub_resource.is_empty() {
        return Decision::Unchanged(accepted());
    }
    let object = admission.object;
    match reconciled(&object, kind, &settings.0, operation) {
        Ok((change, after)) => Decision::Changed {
            change,
            before: object,
            after,
        },
        Err(reason) if reason.is_problem() => {
            let name = object
                .pointer("/metadata/name")
                .and_then(|n| n.as_str())
                .unwrap_or(&admission.name);
            Decision::Unchanged(accept_with_warning(format!(
                "{WARNING_PREFIX}: {kind} {name} is not instrumented: {reason}"
            )))
        }
        Err(_) => Decision::Unchanged(accepted()),
    }
}

/// Kubewarden's `validate`: the mutated object whole, as policy-server and kwctl expect it.
pub fn evaluate(payload: &[u8]) -> ValidationResponse {
    match decide(payload) {
        Decision::Unchanged(response) => response,
        Decision::Changed { after, .. } => ValidationResponse {
            mutated_object: Some(after),
            ..accepted()
        },
    }
}

/// `validate_as_patch`, for the operator's built-in webhook: the same decision as [`evaluate`],
/// answered as the JSON Patch from the request's object to the mutated one.
pub fn evaluate_as_patch(payload: &[u8]) -> PatchAnswer<json_patch::Patch> {
    match decide(payload) {
        Decision::Unchanged(response) => PatchAnswer {
            accepted: response.accepted,
            message: response.message,
            warnings: response.warnings.unwrap_or_default(),
            patch: None,
            change: None,
        },
        Decision::Changed {
            change,
            before,
            after,
        } => {
            let patch = json_patch::diff(&before, &after);
            let changed = !patch.0.is_empty();
            // Only the operator calls this, on an instance it discards after the call: freeing
            // the two objects was a tenth of the call's time, for memory nobody uses again.
            if cfg!(target_family = "wasm") {
                std::mem::forget((before, after));
            }
            PatchAnswer {
                accepted: true,
                message: None,
                warnings: Vec::new(),
                change: changed.then(|| InjectionChange::from(&change)),
                patch: changed.then_some(patch),
            }
        }
    }
}

pub fn validate_settings(payload: &[u8]) -> SettingsValidationResponse {
    let parsed = serde_json::from_slice::<&RawValue>(payload)
        .map_err(|error| format!("settings are not JSON: {error}"))
        .and_then(Settings::parse);
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
