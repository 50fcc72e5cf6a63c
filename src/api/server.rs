//! Serving HTTP/1.1 with bounded resources: at most `server.max_connections` open
//! connections (one more is answered 503 and closed), request headers within
//! `server.header_read_timeout` (slow-header clients and idle keep-alive connections
//! are cut off), and a graceful drain on shutdown.
//!
//! HTTP/1.1 only: protocol detection for cleartext HTTP/2 (hyper-util's `auto`) waits
//! for the client's first bytes without any time limit, so a client that connects and
//! sends nothing would hold a connection slot for ever. Producers reach postwire over
//! HTTP/1.1 (a load balancer terminates HTTP/2 and TLS in front of it).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::ServerSettings;

/// Serves `router` on `listener` until `shutdown`, then stops accepting and lets the
/// requests in flight finish for up to `settings.shutdown_timeout`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &ServerSettings,
    shutdown: CancellationToken,
) {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually out of file descriptors: wait for some to be freed
                    // rather than spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            crate::metrics::http_refused("connections");
            tokio::spawn(refuse(stream));
            continue;
        };
        crate::metrics::http_connections(1.0);
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
            crate::metrics::http_connections(-1.0);
            drop(slot);
        });
    }
    // New connections are refused from here on.
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(settings.shutdown_timeout) => {
            tracing::warn!("HTTP requests still running after server.shutdown_timeout; closing");
        }
    }
}

/// Answers a connection over the limit with 503 and closes it. Whatever the client
/// already sent is read first (briefly), so that the close does not reset the
/// connection before the client has read the answer.
async fn refuse(mut stream: TcpStream) {
    const BODY: &str = r#"{"type":"urn:postwire:problem:busy","title":"Too many connections","status":503,"detail":"the server has as many open connections as it takes (server.max_connections); retry shortly"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{BODY}",
        BODY.len()
    );
    let mut scratch = [0u8; 8192];
    let _ = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut scratch)).await;
    let written = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
    if matches!(written, Ok(Ok(()))) {
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while matches!(stream.read(&mut scratch).await, Ok(n) if n > 0) {}
        })
        .await;
    }
}
