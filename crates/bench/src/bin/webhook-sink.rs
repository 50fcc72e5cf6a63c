//! `postwire-webhook-sink ADDR`: answers every HTTP request with 204 and counts them,
//! so that `scripts/bench.sh --webhook` measures postwire's side of webhooks rather
//! than a slow receiver on the same machine. The count is printed on SIGTERM/SIGINT
//! and written to the file named by `--count-file` every second.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:18099".to_owned());
    let count_file = match (args.next().as_deref(), args.next()) {
        (Some("--count-file"), Some(path)) => Some(path),
        _ => None,
    };
    let listener = TcpListener::bind(&address).await?;
    let count = Arc::new(AtomicU64::new(0));
    if let Some(path) = count_file {
        let count = Arc::clone(&count);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = std::fs::write(&path, count.load(Ordering::Relaxed).to_string());
            }
        });
    }
    loop {
        let (stream, _) = listener.accept().await?;
        let count = Arc::clone(&count);
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let count = Arc::clone(&count);
                async move {
                    // Read the body whole, as a receiver would before verifying it.
                    let _ = request.into_body().collect().await;
                    count.fetch_add(1, Ordering::Relaxed);
                    let mut response = Response::new(Empty::<Bytes>::new());
                    *response.status_mut() = StatusCode::NO_CONTENT;
                    Ok::<_, Infallible>(response)
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
