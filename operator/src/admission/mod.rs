//! The built-in admission webhook: AdmissionReview v1 over HTTPS, answered by the Lumigo policy
//! module in wasmtime the way Kubewarden's policy-server runs it (compiled once, a fresh instance
//! per request, an epoch deadline), with the settings of the namespace's `Lumigo` resource from
//! the watch cache. It never denies: no settings, a failure or a timeout all admit the object
//! unchanged, the latter two with a warning.
//!
//! Wiring: `AdmissionServer::bind(options, lumigo_cache(client), operator_settings, client)`,
//! then `run()`. Every replica serves, from its own cache: the webhook needs no leadership.

mod certificates;
pub mod compile;
mod configuration;
mod events;
mod limits;
mod review;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::Store;
use kube::Client;
use lumigo_policy_host::EngineOptions;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

pub use configuration::{webhook_configuration, WebhookTarget, MUTATE_PATH, WEBHOOK_NAME};
pub use limits::AdmissionLimits;

use crate::crd::Lumigo;
use crate::metrics::Metrics;
use crate::settings::{OperatorSettings, ProtectedNamespaces};
use certificates::CertificateManager;
use events::EventSink;
use limits::{ByteBudget, ConnectionGate};
use review::{Evaluator, Reviewer};

/// A client that does not finish its TLS handshake in this time is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("admission certificate: {0}")]
    Certificate(String),
    #[error("generating the admission certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("loading the policy module: {0}")]
    Module(#[from] lumigo_policy_host::Error),
    #[error("reading the policy module {}: {source}", path.display())]
    ReadModule {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("listening on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("the Lumigo resource cache was dropped before its first listing")]
    CacheNotReady,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub struct AdmissionOptions {
    pub listen: SocketAddr,
    /// The policy module (`lumigo-policy.wasm`), the same one Kubewarden runs.
    pub module: Vec<u8>,
    /// Where the module is compiled: the operator has a child process of its own executable do
    /// it.
    pub compiler: compile::PolicyCompiler,
    pub tls: TlsOptions,
    /// How long one evaluation may run before the module is interrupted.
    pub deadline: Duration,
    /// Evaluations running at once (at most
    /// `lumigo_policy_host::PolicyEngine::MAX_CONCURRENT_CALLS`); more wait, up to `deadline`, for
    /// a slot. The number of cores is a good value: evaluations are CPU-bound.
    pub max_concurrent_evaluations: usize,
    /// Who the admission events say recorded them.
    pub reporter: Reporter,
    /// Where dropped admission events and refused requests are counted.
    pub metrics: Arc<Metrics>,
    pub limits: AdmissionLimits,
    /// Namespaces admission never injects into, whatever their resources say.
    pub protected: ProtectedNamespaces,
}

/// The serving certificate: where it is kept, whom it names, and the configuration that must trust
/// it.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    pub secret_namespace: String,
    pub secret_name: String,
    /// The MutatingWebhookConfiguration whose caBundle is kept current; `None` serves without one
    /// (a webhook host nothing registers, e.g. in a test).
    pub webhook_configuration: Option<String>,
    /// DNS names or IP addresses the certificate is issued for.
    pub hosts: Vec<String>,
    pub lifetime: Duration,
    /// How often the certificate is checked for renewal (renewed with a third of its lifetime
    /// left).
    pub check_interval: Duration,
    /// After a renewal, how long the new CA is published before the new certificate is served, for
    /// the apiserver to pick the caBundle up.
    pub rotation_grace: Duration,
}

impl TlsOptions {
    /// For a webhook reached through the Service `service` in `namespace`.
    pub fn for_service(
        service: &str,
        namespace: &str,
        secret_name: &str,
        webhook_configuration: &str,
    ) -> Self {
        let hosts = vec![
            service.to_owned(),
            format!("{service}.{namespace}"),
            format!("{service}.{namespace}.svc"),
            format!("{service}.{namespace}.svc.cluster.local"),
        ];
        TlsOptions {
            hosts,
            webhook_configuration: Some(webhook_configuration.into()),
            ..Self::defaults(namespace, secret_name)
        }
    }

    /// For a webhook reached at `https://127.0.0.1:PORT`, as tests and the benchmark serve it.
    pub fn for_loopback(
        namespace: &str,
        secret_name: &str,
        webhook_configuration: Option<&str>,
    ) -> Self {
        TlsOptions {
            hosts: vec!["127.0.0.1".into()],
            webhook_configuration: webhook_configuration.map(str::to_owned),
            ..Self::defaults(namespace, secret_name)
        }
    }

    fn defaults(namespace: &str, secret_name: &str) -> Self {
        TlsOptions {
            secret_namespace: namespace.into(),
            secret_name: secret_name.into(),
            webhook_configuration: None,
            hosts: Vec::new(),
            lifetime: Duration::from_secs(365 * 24 * 3600),
            check_interval: Duration::from_secs(3600),
            rotation_grace: Duration::from_secs(10),
        }
    }
}

/// The webhook, bound and with its certificate, before it serves.
pub struct AdmissionServer {
    listener: TcpListener,
    acceptor: TlsAcceptor,
    reviewer: Arc<Reviewer>,
    limits: AdmissionLimits,
    metrics: Arc<Metrics>,
    certificates: CertificateManager,
    record_events: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>,
}

impl AdmissionServer {
    /// Compiles the module, loads or issues the certificate, waits for the `Lumigo` cache's first
    /// listing (answering before it would skip namespaces that have a resource), and binds.
    pub async fn bind(
        options: AdmissionOptions,
        lumigos: Store<Lumigo>,
        operator: OperatorSettings,
        client: Client,
    ) -> Result<Self> {
        let engine_options = EngineOptions {
            tick: (options.deadline / 20)
                .clamp(Duration::from_millis(1), Duration::from_millis(10)),
            deadline: options.deadline,
        };
        let (module, compiler) = (options.module, options.compiler);
        // Compiling takes seconds of CPU, and waiting for the compiler process blocks: not on a
        // runtime thread.
        let engine = tokio::task::spawn_blocking(move || {
            compile::engine(&module, &compiler, engine_options)
        })
        .await
        .expect("compiling the policy module does not panic")?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let certificates =
            CertificateManager::start(options.tls, client.clone(), provider.clone()).await?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(certificates.resolver());
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];

        lumigos
            .wait_until_ready()
            .await
            .map_err(|_| Error::CacheNotReady)?;
        let (events, record_events) =
            EventSink::start(client, options.reporter, options.metrics.clone());
        let reviewer = Reviewer {
            evaluator: Evaluator::new(engine, options.max_concurrent_evaluations, options.deadline),
            lumigos,
            operator,
            protected: options.protected,
            events,
            budget: ByteBudget::new(&options.limits),
            metrics: options.metrics.clone(),
        };
        let listener = TcpListener::bind(options.listen)
            .await
            .map_err(|source| Error::Listen {
                address: options.listen,
                source,
            })?;
        Ok(AdmissionServer {
            listener,
            acceptor: TlsAcceptor::from(Arc::new(tls)),
            reviewer: Arc::new(reviewer),
            limits: options.limits,
            metrics: options.metrics,
            certificates,
            record_events: Box::pin(record_events),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until dropped; connections, certificate renewal and event recording stop with it.
    pub async fn run(self) -> Result<()> {
        let AdmissionServer {
            listener,
            acceptor,
            reviewer,
            limits,
            metrics,
            certificates,
            record_events,
        } = self;
        let gate = ConnectionGate::new(&limits);
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout);
        let mut tasks = JoinSet::new();
        tasks.spawn(certificates.run());
        tasks.spawn(record_events);
        tracing::info!(address = ?listener.local_addr().ok(), "admission webhook listening");
        loop {
            while tasks.try_join_next().is_some() {}
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pass, rather than spin.
                    tracing::warn!(%error, "accepting an admission connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let slot = match gate.enter(peer.ip()) {
                Ok(slot) => slot,
                Err(refused) => {
                    // Closed at once: the client learns now, not after a timeout.
                    metrics.admission_refused(refused.limit());
                    tracing::debug!(%peer, limit = refused.limit(), "admission connection refused");
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, reviewer, http) = (acceptor.clone(), reviewer.clone(), http.clone());
            tasks.spawn(async move {
                let _slot = slot;
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(error)) => return tracing::debug!(%error, %peer, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                };
                let service =
                    hyper::service::service_fn(move |request| answer(reviewer.clone(), request));
                if let Err(error) = http.serve_connection(TokioIo::new(tls), service).await {
                    tracing::debug!(%error, %peer, "admission connection ended with an error");
                }
            });
        }
    }
}

/// A cache of every `Lumigo` resource, fed by a watch through `client` on the current runtime.
pub fn lumigo_cache(client: Client) -> Store<Lumigo> {
    use futures::StreamExt;
    use kube::runtime::{reflector, watcher, WatchStreamExt};
    let (store, writer) = reflector::store();
    let stream = reflector(
        writer,
        watcher(kube::Api::<Lumigo>::all(client), watcher::Config::default()),
    )
    .default_backoff();
    tokio::spawn(stream.for_each(|_| async {}));
    store
}

async fn answer(
    reviewer: Arc<Reviewer>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.method() != Method::POST || request.uri().path() != MUTATE_PATH {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            format!("only POST {MUTATE_PATH} is served"),
        ));
    }
    let declared = hyper::body::Body::size_hint(request.body()).exact();
    let body = match reviewer.budget.read(declared, request.into_body()).await {
        Ok(body) => body,
        Err(refused) => {
            reviewer.metrics.admission_refused(refused.limit());
            // Counted, not logged at warn: a client flooding the webhook would flood the log. The
            // object is admitted unchanged, and the rollout injects it when it sees it.
            tracing::debug!(error = %refused, "admission request refused");
            let status = match refused {
                limits::BodyRefused::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
                limits::BodyRefused::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
                limits::BodyRefused::Slow(_) => StatusCode::REQUEST_TIMEOUT,
                limits::BodyRefused::Unreadable(_) => StatusCode::BAD_REQUEST,
            };
            return Ok(plain(status, refused.to_string()));
        }
    };
    Ok(match reviewer.review(&body.bytes).await {
        Ok(response) => {
            let json = response.review_json();
            Response::builder()
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(json)))
                .expect("a static header is valid")
        }
        Err(review::Unanswerable(message)) => plain(StatusCode::BAD_REQUEST, message),
    })
}

fn plain(status: StatusCode, message: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message)));
    *response.status_mut() = status;
    response
}
