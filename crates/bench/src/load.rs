//! Phase 1: send messages with N concurrent HTTP clients and record, for every accepted
//! request, the message ids and the round-trip latency.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use indicatif::ProgressBar;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use reqwest::StatusCode;
use serde::Deserialize;
use uuid::Uuid;

use super::Mode;

/// What to send, how and how much.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Base URLs of the API processes, e.g. `http://127.0.0.1:8080`; the clients are
    /// spread over them evenly.
    pub urls: Vec<String>,
    pub mode: Mode,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Messages per request in batch mode.
    pub batch_size: usize,
    /// Bytes of each message's `Body`.
    pub body_bytes: usize,
    /// Stop after this many messages…
    pub count: u64,
    /// …or after this long, when set.
    pub duration: Option<Duration>,
    pub to: String,
    pub from: String,
    /// Sent as `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
}

/// What phase 1 observed.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    /// Ids of accepted messages, in no particular order.
    pub ids: Vec<Uuid>,
    /// Round trip of each accepted request, in milliseconds.
    pub latencies_ms: Vec<f64>,
    /// Failed requests by kind (`HTTP 503`, `connect`, …).
    pub errors: BTreeMap<String, u64>,
    /// Requests made.
    pub requests: u64,
    /// Messages offered to the API (accepted or not).
    pub offered: u64,
    /// From the first request to the last response.
    pub elapsed: Duration,
}

/// Runs phase 1, advancing `accepted` by every accepted message.
pub async fn send_all(plan: &LoadPlan, accepted: ProgressBar) -> anyhow::Result<LoadOutcome> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.concurrency)
        .tcp_nodelay(true)
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .context("building the HTTP client")?;
    let auth = plan
        .api_key
        .as_deref()
        .map(|k| HeaderValue::from_str(&format!("Bearer {k}")))
        .transpose()
        .context("--api-key is not a valid header value")?;
    let per_request = match plan.mode {
        Mode::Single => 1,
        Mode::Batch => plan.batch_size.max(1),
    };
    let message = message_json(&plan.to, &plan.from, plan.body_bytes)?;
    // The body is serialised once; the clients share it.
    let full_body = request_body(plan.mode, &message, per_request);
    let started = Instant::now();
    let shared = Arc::new(Shared {
        client,
        endpoints: plan
            .urls
            .iter()
            .map(|url| {
                let base = url.trim_end_matches('/');
                match plan.mode {
                    Mode::Single => format!("{base}/v1/messages"),
                    Mode::Batch => format!("{base}/v1/messages/batch"),
                }
            })
            .collect(),
        auth,
        message,
        mode: plan.mode,
        per_request: per_request as u64,
        full_body,
        next: AtomicU64::new(0),
        limit: plan.duration.map_or(plan.count, |_| u64::MAX),
        deadline: plan.duration.map(|d| started + d),
        accepted,
    });

    let clients: Vec<_> = (0..plan.concurrency.max(1))
        .map(|i| tokio::spawn(client_loop(shared.clone(), i)))
        .collect();
    let mut outcome = LoadOutcome::default();
    for client in clients {
        let part = client.await.context("a sending task failed")?;
        outcome.ids.extend(part.ids);
        outcome.latencies_ms.extend(part.latencies_ms);
        for (kind, n) in part.errors {
            *outcome.errors.entry(kind).or_default() += n;
        }
        outcome.requests += part.requests;
        outcome.offered += part.offered;
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

/// State every client task reads.
struct Shared {
    client: reqwest::Client,
    /// The send endpoint of each API process.
    endpoints: Vec<String>,
    auth: Option<HeaderValue>,
    /// One message, serialised.
    message: String,
    mode: Mode,
    per_request: u64,
    /// The body of a full request.
    full_body: Bytes,
    /// Messages claimed so far, by all clients.
    next: AtomicU64,
    /// Messages to send in all (`u64::MAX` when sending for a duration).
    limit: u64,
    deadline: Option<Instant>,
    accepted: ProgressBar,
}

impl Shared {
    /// Claims the next request's messages: how many, or `None` when done.
    fn claim(&self) -> Option<u64> {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return None;
        }
        let first = self.next.fetch_add(self.per_request, Ordering::Relaxed);
        (first < self.limit).then(|| self.per_request.min(self.limit - first))
    }
}

/// The request body carrying `n` copies of `message`.
fn request_body(mode: Mode, message: &str, n: usize) -> Bytes {
    match mode {
        Mode::Single => Bytes::from(message.to_owned()),
        Mode::Batch => {
            let mut body = String::with_capacity(16 + n * (message.len() + 1));
            body.push_str("{\"messages\":[");
            for i in 0..n {
                if i > 0 {
                    body.push(',');
                }
                body.push_str(message);
            }
            body.push_str("]}");
            Bytes::from(body)
        }
    }
}

/// One client: claim, send, record, until there is nothing left to claim.
async fn client_loop(shared: Arc<Shared>, client: usize) -> LoadOutcome {
    let mut out = LoadOutcome::default();
    let endpoint = &shared.endpoints[client % shared.endpoints.len().max(1)];
    // Only the last request of a counted run may be short; its body is built then.
    while let Some(n) = shared.claim() {
        let body = if n == shared.per_request {
            shared.full_body.clone()
        } else {
            request_body(shared.mode, &shared.message, n as usize)
        };
        out.requests += 1;
        out.offered += n;
        let started = Instant::now();
        match send_one(&shared, endpoint, body).await {
            Ok(ids) => {
                out.latencies_ms
                    .push(started.elapsed().as_secs_f64() * 1000.0);
                shared.accepted.inc(ids.len() as u64);
                out.ids.extend(ids);
            }
            Err(kind) => {
                let transport = !kind.starts_with("HTTP");
                *out.errors.entry(kind).or_default() += 1;
                if transport {
                    // Do not spin against a port nobody listens on.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    out
}

/// The answer to a single send.
#[derive(Deserialize)]
struct Accepted {
    id: Uuid,
}

/// The answer to a batch: one entry per message, in request order.
#[derive(Deserialize)]
struct BatchAccepted {
    messages: Vec<BatchItem>,
}

#[derive(Deserialize)]
struct BatchItem {
    id: Option<Uuid>,
}

/// Sends one request; the accepted ids, or the kind of failure.
async fn send_one(shared: &Shared, endpoint: &str, body: Bytes) -> Result<Vec<Uuid>, String> {
    let mut request = shared
        .client
        .post(endpoint)
        .header(CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(auth) = &shared.auth {
        request = request.header(AUTHORIZATION, auth.clone());
    }
    let response = request.send().await.map_err(|e| error_kind(&e))?;
    let status = response.status();
    let bytes = response.bytes().await.map_err(|e| error_kind(&e))?;
    if status != StatusCode::ACCEPTED {
        return Err(format!("HTTP {}", status.as_u16()));
    }
    match shared.mode {
        Mode::Single => serde_json::from_slice::<Accepted>(&bytes)
            .map(|a| vec![a.id])
            .map_err(|_| "unreadable 202 body".to_owned()),
        Mode::Batch => {
            let batch = serde_json::from_slice::<BatchAccepted>(&bytes)
                .map_err(|_| "unreadable 202 body".to_owned())?;
            Ok(batch.messages.into_iter().filter_map(|m| m.id).collect())
        }
    }
}

/// A short name for a transport failure.
fn error_kind(e: &reqwest::Error) -> String {
    if e.is_connect() {
        "connect".to_owned()
    } else if e.is_timeout() {
        "timeout".to_owned()
    } else if e.is_body() || e.is_decode() {
        "response body".to_owned()
    } else {
        "request".to_owned()
    }
}

/// The JSON of one benchmark message whose `Body` is `body_bytes` long: 76-character
/// lines of filler text, like a plain-text mail.
pub fn message_json(to: &str, from: &str, body_bytes: usize) -> anyhow::Result<String> {
    let message = serde_json::json!({
        "To": to,
        "From": from,
        "Subject": "postwire bench",
        "Body": filler(body_bytes),
    });
    serde_json::to_string(&message).context("serialising the message")
}

/// `n` bytes of printable ASCII broken into lines of at most 76 characters.
fn filler(n: usize) -> String {
    const TEXT: &[u8] =
        b"The quick brown fox jumps over the lazy dog; postwire bench filler text. ";
    let mut body = Vec::with_capacity(n);
    let mut column = 0;
    let mut i = 0;
    while body.len() < n {
        if column == 76 {
            body.push(b'\n');
            column = 0;
        } else {
            body.push(TEXT[i % TEXT.len()]);
            i += 1;
            column += 1;
        }
    }
    String::from_utf8(body).expect("ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_has_the_exact_size_and_short_lines() {
        for n in [0, 1, 76, 77, 78, 1024, 10_000] {
            let text = filler(n);
            assert_eq!(text.len(), n);
            assert!(text.lines().all(|l| l.len() <= 76));
        }
    }

    #[test]
    fn batch_body_is_a_messages_array() {
        let body = request_body(Mode::Batch, r#"{"To":"a@example.com"}"#, 3);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["messages"].as_array().unwrap().len(), 3);
        assert_eq!(v["messages"][2]["To"], "a@example.com");
        assert_eq!(&request_body(Mode::Single, "{}", 1)[..], b"{}");
    }

    #[test]
    fn message_json_carries_the_fields() {
        let json = message_json("a@example.com", "b@example.com", 100).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["To"], "a@example.com");
        assert_eq!(v["From"], "b@example.com");
        assert_eq!(v["Body"].as_str().unwrap().len(), 100);
    }
}
