//! One AdmissionReview: the namespace's settings from the cache, the policy module's answer, and
//! the JSON Patch from the request's object to the module's. The object is kept as raw JSON from
//! end to end, so fields the compiled Kubernetes types do not know survive. Whatever goes wrong,
//! the object is admitted, unchanged, with a warning.

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kube::runtime::reflector::Store;
use lumigo_mutation::{InjectionConfig, PatchAnswer, WorkloadKind};
use lumigo_policy_host::PolicyEngine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Semaphore;

use crate::crd::Lumigo;
use crate::events::EventReason;
use crate::metrics::Metrics;
use crate::settings::{admission_settings, OperatorSettings, ProtectedNamespaces};

use super::events::{AdmissionEvent, EventSink};
use super::limits::ByteBudget;

const WARNING_PREFIX: &str = "lumigo";
/// The module's function that answers with a JSON Patch (`lumigo_mutation::patch_answer`).
const PATCH_FUNCTION: &str = "validate_as_patch";
/// A request up to this size is evaluated on the runtime thread that read it: its evaluation takes
/// tens of microseconds, less than handing it to another thread and back costs. A larger one goes
/// to the blocking pool, so that no worker thread is held for long (the permits bound both).
const INLINE_PAYLOAD: usize = 64 << 10;

/// An AdmissionReview, read in one pass: the request's head, its object left as the raw bytes
/// it came in, which the module gets as they are.
#[derive(Deserialize)]
#[serde(bound(deserialize = "R: Deserialize<'de>"))]
struct Review<R> {
    #[serde(default)]
    request: Option<R>,
}

/// The parts of an AdmissionRequest the host and the module read; the object stays raw until a
/// patch is to be computed against it. The rest (the user's identity, the old object of an
/// update) is skipped, not copied into the module.
#[derive(Deserialize)]
struct RequestHead<'a> {
    uid: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
    kind: GroupKind,
    #[serde(default)]
    operation: String,
    #[serde(default, rename = "subResource")]
    sub_resource: String,
    #[serde(borrow, default)]
    object: Option<&'a RawValue>,
    #[serde(default, rename = "dryRun")]
    dry_run: bool,
}

impl RequestHead<'_> {
    /// The namespace must be a DNS label, the name (empty when generated) a DNS subdomain.
    fn check_names(&self) -> Result<(), String> {
        if !self.namespace.is_empty() && !is_dns_label(&self.namespace) {
            return Err(format!(
                "the request's namespace {:?} is not a Kubernetes namespace name",
                truncated(&self.namespace)
            ));
        }
        if !self.name.is_empty() && !is_dns_subdomain(&self.name) {
            return Err(format!(
                "the request's name {:?} is not a Kubernetes object name",
                truncated(&self.name)
            ));
        }
        Ok(())
    }
}

/// RFC 1123 label, as namespaces are: at most 63 of `a-z`, `0-9` and `-`, alphanumeric at both
/// ends.
fn is_dns_label(name: &str) -> bool {
    let bytes = name.as_bytes();
    let alphanumeric = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| alphanumeric(b) || *b == b'-')
        && bytes.first().is_some_and(alphanumeric)
        && bytes.last().is_some_and(alphanumeric)
}

/// RFC 1123 subdomain, as most object names are: labels joined by dots, at most 253 in all.
fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// A name quoted in a warning: enough to recognise, never the whole of a hostile one.
fn truncated(text: &str) -> &str {
    let mut end = text.len().min(64);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What is left to read of a request whose head is malformed, to answer it.
#[derive(Deserialize)]
struct RequestUid {
    uid: String,
}

#[derive(Deserialize, Serialize)]
struct GroupKind {
    #[serde(default)]
    group: String,
    kind: String,
}

/// The module's answer: its patch passed on as the bytes it wrote.
type Answer = PatchAnswer<Box<RawValue>>;

/// What an event needs of the object: read from the request without building the object.
#[derive(Deserialize, Default)]
struct ObjectIdentity {
    #[serde(default)]
    metadata: IdentityMetadata,
}

#[derive(Deserialize, Default)]
struct IdentityMetadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    uid: Option<String>,
}

#[derive(Serialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AdmissionResponse {
    pub uid: String,
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// The module's JSON Patch as it wrote it; `review_json` writes it base64-encoded.
    #[serde(skip)]
    pub patch: Option<Box<RawValue>>,
}

impl AdmissionResponse {
    fn allowed(uid: String) -> Self {
        AdmissionResponse {
            uid,
            allowed: true,
            ..Default::default()
        }
    }

    /// The AdmissionReview that answers with this response, serialised.
    pub fn review_json(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct AnsweringReview<'a> {
            api_version: &'static str,
            kind: &'static str,
            response: &'a AdmissionResponse,
        }
        let mut json = serde_json::to_vec(&AnsweringReview {
            api_version: "admission.k8s.io/v1",
            kind: "AdmissionReview",
            response: self,
        })
        .expect("an AdmissionReview serializes");
        if let Some(patch) = &self.patch {
            // Base64 needs no escaping: encoded straight into the review, not passed through the
            // serializer, which checks every byte of a string (1–2% of a review's CPU).
            let patch = patch.get().as_bytes();
            let encoded = base64::encoded_len(patch.len(), true).expect("a patch fits in memory");
            json.truncate(json.len() - "}}".len());
            json.extend_from_slice(br#","patch":""#);
            let start = json.len();
            json.resize(start + encoded, 0);
            STANDARD
                .encode_slice(patch, &mut json[start..])
                .expect("sized by encoded_len");
            json.extend_from_slice(br#""}}"#);
        }
        json
    }
}

/// Evaluates the module, at most `permits` at a time, and one large request at a time: what an
/// evaluation allocates grows with its request (the module's memory up to its limit, then the
/// host's parse of the object and of the answer), and two large ones at once could take what
/// the operator's memory limit leaves.
pub(crate) struct Evaluator {
    engine: Arc<PolicyEngine>,
    permits: Arc<Semaphore>,
    large: Arc<Semaphore>,
    /// How long a request may wait for a permit: past it the apiserver would give up on us anyway.
    queue_timeout: Duration,
}

impl Evaluator {
    pub fn new(engine: PolicyEngine, max_concurrent: usize, queue_timeout: Duration) -> Self {
        let permits = max_concurrent.clamp(1, PolicyEngine::MAX_CONCURRENT_CALLS);
        Evaluator {
            engine: Arc::new(engine),
            permits: Arc::new(Semaphore::new(permits)),
            large: Arc::new(Semaphore::new(1)),
            queue_timeout,
        }
    }

    async fn validate(&self, payload: Vec<u8>) -> Result<Vec<u8>, String> {
        let slot = |permits: Arc<Semaphore>| async move {
            tokio::time::timeout(self.queue_timeout, permits.acquire_owned())
                .await
                .map_err(|_| format!("no evaluation slot free within {:?}", self.queue_timeout))?
                .map_err(|_| "the evaluator is shutting down".to_owned())
        };
        let large = if payload.len() > INLINE_PAYLOAD {
            Some(slot(self.large.clone()).await?)
        } else {
            None
        };
        let permit = slot(self.permits.clone()).await?;
        if large.is_none() {
            let _permit = permit;
            return self
                .engine
                .call(PATCH_FUNCTION, &payload)
                .map_err(|error| error.to_string());
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
            let _permits = (permit, large);
            engine.call(PATCH_FUNCTION, &payload)
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
    pub protected: ProtectedNamespaces,
    pub events: EventSink,
    pub budget: ByteBudget,
    pub metrics: Arc<Metrics>,
}

/// Why a body got no AdmissionReview answer: without a request uid there is nothing to answer.
#[derive(Debug)]
pub(crate) struct Unanswerable(pub String);

impl Reviewer {
    pub async fn review(&self, body: &[u8]) -> Result<AdmissionResponse, Unanswerable> {
        let head = match serde_json::from_slice::<Review<RequestHead>>(body) {
            Ok(Review {
                request: Some(head),
            }) => head,
            Ok(Review { request: None }) => return Err(not_a_review()),
            Err(error) => return unreadable_head(body, error),
        };
        if let Err(problem) = head.check_names() {
            // Anyone who reaches the webhook can send a review; what it names reaches API paths
            // (the events' lookups), so it must be a Kubernetes name or nothing is done with it.
            return Ok(warn(
                head.uid,
                format!("{WARNING_PREFIX}: {problem}, admitted unchanged"),
            ));
        }
        let Some(settings) = self.settings_for(&head.namespace) else {
            return Ok(AdmissionResponse::allowed(head.uid));
        };
        let payload = validation_request(&settings, &head);
        let answer = self.evaluator.validate(payload).await.and_then(|bytes| {
            serde_json::from_slice::<Answer>(&bytes)
                .map_err(|e| format!("the policy's answer is not a patch answer: {e}"))
        });
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                tracing::warn!(
                    %error,
                    uid = %head.uid,
                    namespace = %head.namespace,
                    "policy evaluation failed"
                );
                return Ok(warn(
                    head.uid,
                    format!(
                        "{WARNING_PREFIX}: the policy evaluation failed, admitted unchanged: \
                         {error}"
                    ),
                ));
            }
        };
        Ok(self.respond(head, answer))
    }

    fn respond(&self, head: RequestHead, answer: Answer) -> AdmissionResponse {
        let mut response = AdmissionResponse {
            warnings: answer.warnings,
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
        // Only a workload's events need the object's name and uid; the head parsed, so it is JSON.
        let object = || -> ObjectIdentity {
            head.object
                .and_then(|raw| serde_json::from_str(raw.get()).ok())
                .unwrap_or_default()
        };
        if let (Some(patch), Some(change), Some(kind)) = (answer.patch, answer.change, kind) {
            response.patch_type = Some("JSONPatch");
            response.patch = Some(patch);
            if !head.dry_run {
                self.events.send(AdmissionEvent::changed(
                    &admitted_object(&head, kind, &object()),
                    EventReason::of_injection_change(change),
                    &head.operation,
                ));
            }
        }
        // Events are the webhook's only side effect, and a dry run must have none.
        if let Some(kind) = kind.filter(|_| !response.warnings.is_empty() && !head.dry_run) {
            let note = response.warnings.join("; ");
            self.events.send(AdmissionEvent::cannot_add(
                &admitted_object(&head, kind, &object()),
                note,
                &head.operation,
            ));
        }
        response
    }

    /// The injection settings of the namespace's `Lumigo` resource, from the watch cache, by the
    /// rule the rollout follows too.
    fn settings_for(&self, namespace: &str) -> Option<InjectionConfig> {
        if namespace.is_empty() {
            return None;
        }
        let in_namespace = self
            .lumigos
            .state_filter(|lumigo| lumigo.metadata.namespace.as_deref() == Some(namespace));
        admission_settings(
            namespace,
            in_namespace.iter().map(AsRef::as_ref),
            &self.operator,
            &self.protected,
        )
    }
}

/// Kubewarden's ValidationRequest, `{"settings": ..., "request": ...}`, with the request's fields
/// the module reads and its object's bytes as they came: the module parses them itself.
fn validation_request(settings: &InjectionConfig, head: &RequestHead) -> Vec<u8> {
    #[derive(Serialize)]
    struct ValidationRequest<'a> {
        settings: &'a InjectionConfig,
        request: ModuleRequest<'a>,
    }
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ModuleRequest<'a> {
        name: &'a str,
        operation: &'a str,
        kind: &'a GroupKind,
        sub_resource: &'a str,
        object: Option<&'a RawValue>,
    }
    serde_json::to_vec(&ValidationRequest {
        settings,
        request: ModuleRequest {
            name: &head.name,
            operation: &head.operation,
            kind: &head.kind,
            sub_resource: &head.sub_resource,
            object: head.object,
        },
    })
    .expect("a validation request serializes")
}

/// The answer to a review whose head did not parse: a warning if it has a uid to answer.
fn unreadable_head(
    body: &[u8],
    error: serde_json::Error,
) -> Result<AdmissionResponse, Unanswerable> {
    match serde_json::from_slice::<Review<RequestUid>>(body) {
        Ok(Review {
            request: Some(RequestUid { uid }),
        }) => Ok(warn(
            uid,
            format!(
                "{WARNING_PREFIX}: cannot read the admission request, admitted unchanged: {error}"
            ),
        )),
        Err(error) if error.is_syntax() || error.is_eof() => {
            Err(Unanswerable(format!("the body is not JSON: {error}")))
        }
        _ => Err(not_a_review()),
    }
}

fn not_a_review() -> Unanswerable {
    Unanswerable("the body is not an AdmissionReview with a request uid".into())
}

fn warn(uid: String, warning: String) -> AdmissionResponse {
    AdmissionResponse {
        warnings: vec![warning],
        ..AdmissionResponse::allowed(uid)
    }
}

/// The object an event is about: its kind from the table of workload kinds (never the request's
/// strings), its namespace and name as checked, and the uid the request claims, which the event
/// recorder compares with the stored object's.
fn admitted_object(
    head: &RequestHead,
    kind: WorkloadKind,
    object: &ObjectIdentity,
) -> super::events::AdmittedObject {
    super::events::AdmittedObject {
        kind,
        namespace: head.namespace.clone(),
        // The head's name was checked. The apiserver leaves it empty only on a CREATE with a
        // generated name, which has no event; another client may leave it out, and then the
        // object's is used if it is a name at all.
        name: match head.name.as_str() {
            "" => object
                .metadata
                .name
                .clone()
                .filter(|name| is_dns_subdomain(name))
                .unwrap_or_default(),
            name => name.to_owned(),
        },
        uid: object.metadata.uid.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn the_response_echoes_the_uid_and_omits_empty_fields() {
        let review: Value =
            serde_json::from_slice(&AdmissionResponse::allowed("abc".into()).review_json())
                .unwrap();
        assert_eq!(
            review,
            json!({
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {"uid": "abc", "allowed": true}
            })
        );
    }

    #[test]
    fn names_are_checked_as_kubernetes_checks_them() {
        for good in ["shop", "a", "team-1", &"x".repeat(63)] {
            assert!(is_dns_label(good), "{good}");
        }
        for bad in [
            "",
            "Shop",
            "-shop",
            "shop-",
            "a.b",
            "../etc",
            "a/b",
            "caf\u{e9}",
            &"x".repeat(64),
        ] {
            assert!(!is_dns_label(bad), "{bad}");
        }
        assert!(is_dns_subdomain("api.v2-7d9f"));
        assert!(!is_dns_subdomain("api..v2"));
        assert!(!is_dns_subdomain("x/../../secrets"));
        assert!(!is_dns_subdomain(&format!(
            "{}.{}",
            "a".repeat(63),
            "b".repeat(190)
        )));
        let head = |namespace: &str, name: &str| RequestHead {
            uid: "u".into(),
            namespace: namespace.into(),
            name: name.into(),
            kind: GroupKind {
                group: "apps".into(),
                kind: "Deployment".into(),
            },
            operation: "CREATE".into(),
            sub_resource: String::new(),
            object: None,
            dry_run: false,
        };
        assert!(
            head("shop", "").check_names().is_ok(),
            "a generated name is empty"
        );
        let long = "ä".repeat(200);
        let problem = head(&long, "web").check_names().unwrap_err();
        assert!(
            problem.len() < 200,
            "a hostile name is not echoed whole: {problem}"
        );
        assert!(head("shop", "web/../../x").check_names().is_err());
    }

    #[test]
    fn the_module_gets_the_settings_the_fields_it_reads_and_the_object_exactly_as_it_came() {
        let settings: InjectionConfig = serde_json::from_value(json!({
            "injectorImage": "ghcr.io/lumigo-rs/autotrace:0.1.0",
            "tokenSecret": {"name": "lumigo-credentials", "key": "token"},
            "operatorVersion": "0.1.0",
        }))
        .unwrap();
        // Spacing, key order and escapes in the object the host must not normalise away; the
        // user's identity and the old object the module never reads.
        let body = br#"{"kind":"AdmissionReview","request": {"uid":"u1", "name": "web",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "operation": "UPDATE", "userInfo": {"username": "admin"},
            "object":{"b":1,"a":"\u00e9"}, "oldObject": {"b": 0}}}"#;
        let Review {
            request: Some(head),
        } = serde_json::from_slice::<Review<RequestHead>>(body).unwrap()
        else {
            panic!("the review has a request")
        };
        let payload = validation_request(&settings, &head);
        let parsed: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            parsed,
            json!({
                "settings": serde_json::to_value(&settings).unwrap(),
                "request": {
                    "name": "web",
                    "operation": "UPDATE",
                    "kind": {"group": "apps", "kind": "Deployment"},
                    "subResource": "",
                    "object": {"b": 1, "a": "é"}
                }
            })
        );
        let text = String::from_utf8(payload).unwrap();
        assert!(
            text.ends_with(r#","object":{"b":1,"a":"\u00e9"}}}"#),
            "{text}"
        );
    }

    #[test]
    fn the_patch_is_written_base64_encoded_into_the_review() {
        let patch = r#"[{"op":"add","path":"/metadata/labels","value":{"a":"\"é"}}]"#;
        let response = AdmissionResponse {
            patch_type: Some("JSONPatch"),
            warnings: vec!["lumigo: \"quoted\"".into()],
            patch: Some(RawValue::from_string(patch.into()).unwrap()),
            ..AdmissionResponse::allowed("u2".into())
        };
        let review: Value = serde_json::from_slice(&response.review_json()).unwrap();
        let answered = &review["response"];
        assert_eq!(answered["uid"], "u2");
        assert_eq!(answered["patchType"], "JSONPatch");
        assert_eq!(answered["warnings"], json!(["lumigo: \"quoted\""]));
        let decoded = STANDARD
            .decode(answered["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, patch.as_bytes());
    }
}
