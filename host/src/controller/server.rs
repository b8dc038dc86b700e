//! `/metrics`, `/healthz` and `/readyz` over plain HTTP.

use super::metrics::Metrics;
use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether the controller is ready: it leads (or runs without leader
/// election) and its caches are filled. Set by [`super::run`].
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Mark ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Binds the metrics and health address: a controller that cannot serve its
/// health checks must say so at start, not run on unobserved.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot serve /metrics, /healthz and /readyz on {addr}"))?;
    // The address bound (a port 0 asked for is one the system chose).
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
    Ok(listener)
}

/// Serve until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics, readiness: Readiness) -> anyhow::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let (metrics, readiness) = (metrics.clone(), readiness.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let (status, body) = match request.uri().path() {
                    "/metrics" => (200, metrics.render()),
                    "/healthz" => (200, "ok".to_string()),
                    "/readyz" if readiness.get() => (200, "ok".to_string()),
                    "/readyz" => (503, "not ready".to_string()),
                    _ => (404, "not found".to_string()),
                };
                let response = hyper::Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::from(body)));
                std::future::ready(response)
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}
