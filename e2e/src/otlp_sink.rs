//! An OTLP/HTTP receiver standing in for Lumigo's endpoint: the telemetry proxy forwards to it, and
//! tests and the demo read what arrived — the span names, each span's resource attributes (what
//! k8sattributes and the tracers set) and the `Authorization` header the proxy passed on.
//!
//! It runs on a thread and runtime of its own, so one sink can serve every test of a binary
//! (each `#[tokio::test]` has its own runtime, which a server bound to it would not outlive).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;

use crate::error::{Error, IoContext, Result};

/// One span as the sink received it.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub name: String,
    /// Resource attributes with their values as text (`service.name`, `k8s.pod.name`, ...).
    pub resource: BTreeMap<String, String>,
    /// The request's `Authorization` header: the tracer's, forwarded by the proxy.
    pub authorization: Option<String>,
    pub received_at: SystemTime,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.resource.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    log_records: usize,
}

pub struct OtlpSink {
    address: SocketAddr,
    received: Arc<Mutex<Received>>,
    // Dropping the sender stops the server thread's runtime.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl OtlpSink {
    /// Listens on `ip` (e.g. the node's address, which pods reach) on a free port.
    pub fn start(ip: IpAddr) -> Result<Self> {
        let listener = std::net::TcpListener::bind((ip, 0))
            .context(|| format!("binding the OTLP sink on {ip}"))?;
        listener
            .set_nonblocking(true)
            .context(|| "configuring the OTLP sink's socket".into())?;
        let address = listener
            .local_addr()
            .context(|| "reading the OTLP sink's address".into())?;
        let received = Arc::new(Mutex::new(Received::default()));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = received.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context(|| "building the OTLP sink's runtime".into())?;
        std::thread::Builder::new()
            .name("otlp-sink".into())
            .spawn(move || runtime.block_on(serve(listener, state, stopped)))
            .context(|| "starting the OTLP sink's thread".into())?;
        Ok(Self {
            address,
            received,
            _stop: stop,
        })
    }

    /// The base URL an OTLP/HTTP exporter is given (`/v1/traces` and `/v1/logs` are appended).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.lock().spans.clone()
    }

    pub fn log_records(&self) -> usize {
        self.lock().log_records
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        // A panic while holding the lock cannot leave the vector half-written.
        self.received
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

async fn serve(
    listener: std::net::TcpListener,
    received: Arc<Mutex<Received>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // E.g. out of file descriptors: let some connections finish first.
                Err(_) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let received = received.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let received = received.clone();
                async move { Ok::<_, Infallible>(handle(request, &received).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn handle(request: Request<Incoming>, received: &Mutex<Received>) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let header = |name: &str| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = header("authorization");
    let gzip = header("content-encoding").as_deref() == Some("gzip");
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return reply(StatusCode::BAD_REQUEST),
    };
    let Ok(body) = decode_body(&body, gzip) else {
        return reply(StatusCode::BAD_REQUEST);
    };
    let mut received = received
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match path.as_str() {
        "/v1/traces" => match ExportTraceServiceRequest::decode(body.as_slice()) {
            Ok(export) => received.spans.extend(spans_of(export, authorization)),
            Err(_) => return reply(StatusCode::BAD_REQUEST),
        },
        "/v1/logs" => match ExportLogsServiceRequest::decode(body.as_slice()) {
            Ok(export) => {
                received.log_records += export
                    .resource_logs
                    .iter()
                    .flat_map(|resource| &resource.scope_logs)
                    .map(|scope| scope.log_records.len())
                    .sum::<usize>();
            }
            Err(_) => return reply(StatusCode::BAD_REQUEST),
        },
        _ => return reply(StatusCode::NOT_FOUND),
    }
    reply(StatusCode::OK)
}

fn decode_body(body: &[u8], gzip: bool) -> Result<Vec<u8>> {
    if !gzip {
        return Ok(body.to_vec());
    }
    let mut plain = Vec::new();
    flate2::read::GzDecoder::new(body)
        .read_to_end(&mut plain)
        .map_err(|error| Error::Io {
            what: "decompressing an OTLP request".into(),
            source: error,
        })?;
    Ok(plain)
}

fn spans_of(export: ExportTraceServiceRequest, authorization: Option<String>) -> Vec<ReceivedSpan> {
    let received_at = SystemTime::now();
    let mut spans = Vec::new();
    for resource_spans in export.resource_spans {
        let resource: BTreeMap<String, String> = resource_spans
            .resource
            .map(|resource| resource.attributes.iter().map(attribute_text).collect())
            .unwrap_or_default();
        for span in resource_spans
            .scope_spans
            .into_iter()
            .flat_map(|scope| scope.spans)
        {
            spans.push(ReceivedSpan {
                name: span.name,
                resource: resource.clone(),
                authorization: authorization.clone(),
                received_at,
            });
        }
    }
    spans
}

fn attribute_text(attribute: &KeyValue) -> (String, String) {
    let value = match attribute
        .value
        .as_ref()
        .and_then(|value| value.value.as_ref())
    {
        Some(AnyValue::StringValue(text)) => text.clone(),
        Some(AnyValue::IntValue(number)) => number.to_string(),
        Some(AnyValue::BoolValue(flag)) => flag.to_string(),
        Some(AnyValue::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    };
    (attribute.key.clone(), value)
}

fn reply(status: StatusCode) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}
