//! One AdmissionReview: the namespace's settings from the cache, the policy module's answer, and the
//! JSON Patch from the request's object to the module's. The object is kept as raw JSON from end to
//! end, so fields the compiled Kubernetes types do not know survive. Whatever goes wrong, the
//! object is admitted, unchanged, with a warning.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kube::runtime::reflector::Store;
use lumigo_mutation::{inspect, InjectionConfig, WorkloadKind};
use lumigo_policy_host::PolicyEngine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::crd::Lumigo;
use crate::settings::{injection_config, instrumenting, rollout_halted, OperatorSettings};

use super::events::{AdmissionEvent, EventSink};

const WARNING_PREFIX: &str = "lumigo";
/// A request up to this size is evaluated on the runtime thread that read it: its evaluation takes
/// tens of microseconds, less than handing it to another thread and back costs. A larger one goes
/// to the blocking pool, so that no worker thread is held for long (the permits bound both).
const INLINE_PAYLOAD: usize = 64 << 10;

/// An AdmissionReview, its request left as the raw bytes it came in: the module gets them as they
/// are, and nothing is copied or built before the namespace says the request is ours.
#[derive(Deserialize)]
struct Review<'a> {
    #[serde(borrow, default)]
    request: Option<&'a RawValue>,
}

/// The parts of an AdmissionRequest the host itself reads; the object stays raw until a patch
/// is to be computed against it.
#[derive(Deserialize)]
struct RequestHead<'a> {
    uid: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
    kind: GroupVersionKind,
    resource: GroupVersionResource,
    #[serde(default)]
    operation: String,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    #[serde(default, rename = "dryRun")]
    dry_run: bool,
}

/// What is left to read of a request whose head is malformed, to answer it.
#[derive(Deserialize)]
struct RequestUid {
    uid: String,
}

#[derive(Deserialize, Clone)]
pub(crate) struct GroupVersionKind {
    #[serde(default)]
    pub group: String,
    pub version: String,
    pub kind: String,
}

#[derive(Deserialize, Clone)]
pub(crate) struct GroupVersionResource {
    pub resource: String,
}

/// Kubewarden's ValidationResponse: only what the host uses.
#[derive(Deserialize)]
struct ValidationResponse {
    accepted: bool,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    mutated_object: Option<Value>,
    #[serde(default)]
    warnings: Option<Vec<String>>,
}

#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

impl AdmissionResponse {
    fn allowed(uid: String) -> Self {
        AdmissionResponse {
            uid,
            allowed: true,
            ..Default::default()
        }
    }

    pub fn into_review(self) -> Value {
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": self})
    }
}

/// Evaluates the module on the blocking pool, at most `permits` at a time.
pub(crate) struct Evaluator {
    engine: Arc<PolicyEngine>,
    permits: Arc<Semaphore>,
    /// How long a request may wait for a permit: past it the apiserver would give up on us anyway.
    queue_timeout: Duration,
}

impl Evaluator {
    pub fn new(engine: PolicyEngine, max_concurrent: usize, queue_timeout: Duration) -> Self {
        let permits = max_concurrent.clamp(1, PolicyEngine::MAX_CONCURRENT_CALLS);
        Evaluator {
            engine: Arc::new(engine),
            permits: Arc::new(Semaphore::new(permits)),
            queue_timeout,
        }
    }

    async fn validate(&self, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        let permit = tokio::time::timeout(self.queue_timeout, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| format!("no evaluation slot free within {:?}", self.queue_timeout))?
            .map_err(|_| "the evaluator is shutting down".to_owned())?;
        if payload.len() <= INLINE_PAYLOAD {
            let _permit = permit;
            return self
                .engine
                .call("validate", &payload)
                .map_err(|error| error.to_string());
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            engine.call("validate", &payload)
        })
        .await
        .map_err(|join| format!("the evaluation panicked: {join}"))?
        .map_err(|error| error.to_string())
    }
}

/// What `review` needs besides the request.
pub(crate) struct Reviewer {
    pub evaluator: Evaluator,
    pub lumigos: Store<Lumigo>,
    pub operator: OperatorSettings,
    pub events: EventSink,
}

/// Why a body got no AdmissionReview answer: without a request uid there is nothing to answer.
#[derive(Debug)]
pub(crate) struct Unanswerable(pub String);

impl Reviewer {
    pub async fn review(&self, body: &[u8]) -> Result<AdmissionResponse, Unanswerable> {
        let review: Review = serde_json::from_slice(body)
            .map_err(|e| Unanswerable(format!("the body is not JSON: {e}")))?;
        let not_a_review =
            || Unanswerable("the body is not an AdmissionReview with a request uid".into());
        let request = review.request.ok_or_else(not_a_review)?;
        let head: RequestHead = match serde_json::from_str(request.get()) {
            Ok(head) => head,
            Err(error) => {
                let RequestUid { uid } =
                    serde_json::from_str(request.get()).map_err(|_| not_a_review())?;
                return Ok(warn(uid, format!("{WARNING_PREFIX}: cannot read the admission request, admitted unchanged: {error}")));
            }
        };
        let Some(settings) = self.settings_for(&head.namespace) else {
            return Ok(AdmissionResponse::allowed(head.uid));
        };
        let payload = validation_request(&settings, request);
        let answer = self.evaluator.validate(payload).await.and_then(|bytes| {
            serde_json::from_slice::<ValidationResponse>(&bytes)
                .map_err(|e| format!("the policy's answer is not a ValidationResponse: {e}"))
        });
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                tracing::warn!(%error, uid = %head.uid, namespace = %head.namespace, "policy evaluation failed");
                return Ok(warn(head.uid, format!("{WARNING_PREFIX}: the policy evaluation failed, admitted unchanged: {error}")));
            }
        };
        Ok(self.respond(head, answer))
    }

    fn respond(&self, head: RequestHead, answer: ValidationResponse) -> AdmissionResponse {
        let mut response = AdmissionResponse {
            warnings: answer.warnings.unwrap_or_default(),
            ..AdmissionResponse::allowed(head.uid.clone())
        };
        if !answer.accepted {
            // This host only mutates; a rejection is reported, not enforced.
            let message = answer.message.unwrap_or_default();
            response.warnings.push(format!(
                "{WARNING_PREFIX}: the policy rejected the request, admitted anyway: {message}"
            ));
        }
        let kind = WorkloadKind::from_group_kind(&head.kind.group, &head.kind.kind);
        // Only a workload's patch or event needs the object; the head parsed, so it is valid JSON.
        let object: Value = kind
            .and(head.object)
            .and_then(|raw| serde_json::from_str(raw.get()).ok())
            .unwrap_or_default();
        if let (Some(mutated), Some(kind)) = (answer.mutated_object, kind) {
            let patch = json_patch::diff(&object, &mutated);
            if !patch.0.is_empty() {
                let reason = change_reason(&object, &mutated, kind);
                response.patch_type = Some("JSONPatch");
                response.patch = Some(
                    STANDARD.encode(serde_json::to_vec(&patch).expect("a JSON Patch serializes")),
                );
                if !head.dry_run {
                    self.events.send(AdmissionEvent::changed(
                        &head_reference(&head, &mutated),
                        reason,
                        &head.operation,
                    ));
                }
            }
        }
        // Events are the webhook's only side effect, and a dry run must have none.
        if !response.warnings.is_empty() && kind.is_some() && !head.dry_run {
            let note = response.warnings.join("; ");
            self.events.send(AdmissionEvent::cannot_add(
                &head_reference(&head, &object),
                note,
                &head.operation,
            ));
        }
        response
    }

    /// The injection settings of the namespace's `Lumigo` resource, from the watch cache; of
    /// several, the one the reconciler lets instrument the namespace.
    fn settings_for(&self, namespace: &str) -> Option<InjectionConfig> {
        if namespace.is_empty() {
            return None;
        }
        let in_namespace = self
            .lumigos
            .state_filter(|lumigo| lumigo.metadata.namespace.as_deref() == Some(namespace));
        let winner = instrumenting(in_namespace.iter().map(|lumigo| lumigo.as_ref()))?;
        injection_config(winner, &self.operator).filter(|config| !rollout_halted(winner, config))
    }
}

/// Kubewarden's ValidationRequest, `{"settings": ..., "request": ...}`, with the request's bytes
/// as they came: the module parses them itself.
fn validation_request(settings: &InjectionConfig, request: &RawValue) -> Vec<u8> {
    let settings = serde_json::to_vec(settings).expect("settings always serialize");
    let request = request.get().as_bytes();
    let mut payload = Vec::with_capacity(settings.len() + request.len() + 24);
    payload.extend_from_slice(b"{\"settings\":");
    payload.extend_from_slice(&settings);
    payload.extend_from_slice(b",\"request\":");
    payload.extend_from_slice(request);
    payload.push(b'}');
    payload
}

fn warn(uid: String, warning: String) -> AdmissionResponse {
    AdmissionResponse {
        warnings: vec![warning],
        ..AdmissionResponse::allowed(uid)
    }
}

/// What the change did, told by the injection record before and after; the module does not say.
fn change_reason(before: &Value, after: &Value, kind: WorkloadKind) -> &'static str {
    match (
        inspect(before, kind).injected,
        inspect(after, kind).injected,
    ) {
        (false, _) => "LumigoAddedInstrumentation",
        (true, true) => "LumigoUpdatedInstrumentation",
        (true, false) => "LumigoRemovedInstrumentation",
    }
}

fn head_reference(head: &RequestHead, object: &Value) -> super::events::AdmittedObject {
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or(&head.name);
    super::events::AdmittedObject {
        kind: head.kind.clone(),
        resource: head.resource.clone(),
        namespace: head.namespace.clone(),
        name: name.to_owned(),
        uid: object
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_owned),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_response_echoes_the_uid_and_omits_empty_fields() {
        let review = AdmissionResponse::allowed("abc".into()).into_review();
        assert_eq!(
            review,
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": {"uid": "abc", "allowed": true}})
        );
    }

    #[test]
    fn the_module_gets_the_settings_and_the_request_exactly_as_it_came() {
        let settings: InjectionConfig = serde_json::from_value(json!({
            "injectorImage": "ghcr.io/lumigo-rs/autotrace:0.1.0",
            "tokenSecret": {"name": "lumigo-credentials", "key": "token"},
            "operatorVersion": "0.1.0",
        }))
        .unwrap();
        // Spacing, key order and escapes the host must not normalise away.
        let body =
            br#"{"kind":"AdmissionReview","request": {"uid":"u1", "object":{"b":1,"a":"\u00e9"}}}"#;
        let review: Review = serde_json::from_slice(body).unwrap();
        let request = review.request.unwrap();
        let payload = validation_request(&settings, request);
        let parsed: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            parsed,
            json!({"settings": serde_json::to_value(&settings).unwrap(), "request": {"uid": "u1", "object": {"b": 1, "a": "é"}}})
        );
        let text = String::from_utf8(payload).unwrap();
        assert!(
            text.ends_with(r#","request":{"uid":"u1", "object":{"b":1,"a":"\u00e9"}}}"#),
            "{text}"
        );
    }
}
