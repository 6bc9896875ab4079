//! A fake API server for the unit tests of the controller's decisions: a [`Client`] whose
//! requests a function of the test answers, every one recorded. Events are answered by
//! themselves (created as sent), so that a test scripts only what it decides on.

use std::sync::{Arc, Mutex};

use clap::{Args, FromArgMatches};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use kube::client::Body;
use kube::Client;
use lumigo_mutation::{inject, InjectionConfig, Operation, Outcome, WorkloadKind};
use serde_json::{json, Value};

use crate::cli::InjectionArgs;
use crate::delivery::{ClusterSupport, ImageVolumes};
use crate::reconciler::Context;
use crate::settings::ProtectedNamespaces;
use crate::tracing_watch::TracingWatch;

pub const OPERATOR_NAMESPACE: &str = "lumigo-system";

/// One request the operator sent.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: String,
    /// The JSON body; `Null` when there is none.
    pub body: Value,
}

impl Call {
    /// A query parameter's value, as sent.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value)
    }

    fn is_event(&self) -> bool {
        self.path.starts_with("/apis/events.k8s.io/")
    }

    async fn read(request: Request<Body>) -> Self {
        let (parts, body) = request.into_parts();
        let bytes = body
            .collect()
            .await
            .expect("a request body in memory")
            .to_bytes();
        Call {
            method: parts.method,
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().unwrap_or_default().to_owned(),
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        }
    }
}

/// How the fake API server answers a call.
pub enum Reply {
    Json(StatusCode, Value),
    /// No answer ever: the request hangs until the client gives up.
    Never,
}

pub fn ok(object: Value) -> Reply {
    Reply::Json(StatusCode::OK, object)
}

pub fn created(object: Value) -> Reply {
    Reply::Json(StatusCode::CREATED, object)
}

/// An error answered as the apiserver does: a `Status` with its code and reason.
pub fn failure(code: u16, reason: &str) -> Reply {
    let status = StatusCode::from_u16(code).expect("an HTTP status code");
    Reply::Json(
        status,
        json!({"apiVersion": "v1", "kind": "Status", "status": "Failure", "code": code,
            "reason": reason, "message": format!("{reason} (from the fake API server)")}),
    )
}

pub fn not_found() -> Reply {
    failure(404, "NotFound")
}

pub fn conflict() -> Reply {
    failure(409, "Conflict")
}

/// One page of a list; `next` is its continue token.
pub fn list(items: Vec<Value>, next: Option<&str>) -> Reply {
    ok(json!({"apiVersion": "v1", "kind": "List",
        "metadata": {"resourceVersion": "1", "continue": next.unwrap_or_default()},
        "items": items}))
}

/// The calls received, in order.
#[derive(Clone, Default)]
pub struct Calls(Arc<Mutex<Vec<Call>>>);

impl Calls {
    fn push(&self, call: Call) {
        self.0.lock().unwrap().push(call);
    }

    /// Every call but the event writes.
    pub fn all(&self) -> Vec<Call> {
        let calls = self.0.lock().unwrap();
        calls
            .iter()
            .filter(|call| !call.is_event())
            .cloned()
            .collect()
    }

    /// The event writes alone.
    pub fn events(&self) -> Vec<Call> {
        let calls = self.0.lock().unwrap();
        calls
            .iter()
            .filter(|call| call.is_event())
            .cloned()
            .collect()
    }

    pub fn with(&self, method: &Method, path: &str) -> Vec<Call> {
        self.all()
            .into_iter()
            .filter(|call| call.method == method && call.path == path)
            .collect()
    }

    /// Every call that writes, but the event writes.
    pub fn writes(&self) -> Vec<Call> {
        self.all()
            .into_iter()
            .filter(|call| call.method != Method::GET)
            .collect()
    }
}

/// A client whose every request `answer` answers, and the record of them.
pub fn serve(mut answer: impl FnMut(&Call) -> Reply + Send + 'static) -> (Client, Calls) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let calls = Calls::default();
    let recorded = calls.clone();
    tokio::spawn(async move {
        // Answers held back for ever stay here, so their requests keep waiting.
        let mut never_answered = Vec::new();
        while let Some((request, respond)) = handle.next_request().await {
            let call = Call::read(request).await;
            let reply = if call.is_event() {
                event_written(&call)
            } else {
                answer(&call)
            };
            recorded.push(call);
            match reply {
                Reply::Json(status, body) => {
                    let response = Response::builder()
                        .status(status)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap();
                    respond.send_response(response);
                }
                Reply::Never => never_answered.push(respond),
            }
        }
    });
    (Client::new(service, "default"), calls)
}

/// An event written as sent: a created Event, or a raised series on the one named.
fn event_written(call: &Call) -> Reply {
    let mut event = call.body.clone();
    if call.method == Method::POST {
        return created(event);
    }
    let name = call.path.rsplit('/').next().unwrap_or_default();
    event["apiVersion"] = json!("events.k8s.io/v1");
    event["kind"] = json!("Event");
    event["metadata"]["name"] = json!(name);
    ok(event)
}

/// The operator's context on `client`: its default settings, but a rollout that writes every
/// workload at once (the paced turns are tested with their own `Pacing`).
pub fn context(client: Client) -> Context {
    let arguments = [
        "test",
        "--rollout-max-in-progress=0",
        "--rollout-max-in-progress-cluster=0",
    ];
    let matches = InjectionArgs::augment_args(clap::Command::new("test"))
        .try_get_matches_from(arguments)
        .expect("the injection arguments all have defaults");
    let injection = InjectionArgs::from_arg_matches(&matches).unwrap();
    crate::run::context(
        client,
        &injection,
        ProtectedNamespaces::new(OPERATOR_NAMESPACE),
        None,
        None,
        TracingWatch::disabled(),
        ClusterSupport::fixed(ImageVolumes::Unsupported(
            "no node answers the fake API server".into(),
        )),
    )
}

pub fn injection_config() -> InjectionConfig {
    serde_json::from_value(json!({
        "injectorImage": "registry.example.com/autotrace:1",
        "tokenSecret": {"name": "lumigo-credentials", "key": "token"},
        "operatorVersion": env!("CARGO_PKG_VERSION")
    }))
    .unwrap()
}

/// A stored Deployment with one container, not injected.
pub fn deployment(namespace: &str, name: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"),
            "resourceVersion": "1", "generation": 1},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "node:22"}]}
            }
        }
    })
}

/// The same, injected with [`injection_config`].
pub fn injected_deployment(namespace: &str, name: &str) -> Value {
    let mut object = deployment(namespace, name);
    let outcome = inject(
        &mut object,
        WorkloadKind::Deployment,
        &injection_config(),
        Operation::Update,
    );
    assert!(matches!(outcome, Outcome::Changed(_)), "{outcome}");
    object
}
