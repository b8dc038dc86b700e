//! `/metrics`, `/healthz` and `/readyz` over plain HTTP.

use super::metrics::Metrics;
use anyhow::Context;
use http_body_util::Full;
use hyper::body::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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

/// How long a connection to this server may stay open, and take to send its request's head:
/// anything on the pod network can reach it, and a client that opens connections and sends
/// nothing must not hold them (and their file descriptors) for good.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// How long to wait before accepting again after a failed accept (no file descriptor free).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serve until the task is dropped. A failed accept (no file descriptor free, say) is logged
/// and tried again: the health checks must not stop for good over it.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Metrics, readiness: Readiness) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection to /metrics, /healthz, /readyz");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
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
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(io, service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, connection).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended"),
                Err(_) => tracing::debug!("metrics connection closed: open too long"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_and_the_health_checks_go_on() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let server = tokio::spawn(serve(listener, Metrics::new().unwrap(), Readiness::default()));
        let mut idle = tokio::net::TcpStream::connect(address).await.unwrap();
        let mut healthz = tokio::net::TcpStream::connect(address).await.unwrap();
        healthz
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        healthz.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(CONNECTION_TIMEOUT * 2, idle.read(&mut byte))
            .await
            .expect("a connection that sends nothing is closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        server.abort();
    }
}
