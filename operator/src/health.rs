//! The operator's plain-HTTP endpoints: `/metrics` for Prometheus, `/healthz` (the process
//! answers) and `/readyz` (it has started its work).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

#[derive(Clone)]
pub struct Probes {
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
}

pub async fn serve(address: SocketAddr, probes: Probes) -> Result<()> {
    let router = Router::new()
        .route(
            "/metrics",
            get(|State(p): State<Probes>| async move { p.metrics.encode() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(p): State<Probes>| async move {
                if p.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .with_state(probes);
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(Error::Serve)?;
    axum::serve(listener, router).await.map_err(Error::Serve)
}
