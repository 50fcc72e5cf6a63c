//! An in-process HTTP receiver for postwire's signed webhooks.
//!
//! postwire signs its webhooks per the Standard Webhooks specification: the headers
//! `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`
//! (`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, several space-separated
//! during a secret rotation). The receiver checks those signatures with its own code,
//! written from the specification and not shared with postwire, so that a bug in
//! postwire's signer cannot be mirrored by the check that is meant to catch it.
//!
//! Tests can also make the receiver misbehave while it runs (answer an error status,
//! answer late, answer a huge body, or crash on every connection), and it records
//! every request it answers so tests can assert on what postwire sent.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use sha2::Sha256;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::AbortHandle;

type HmacSha256 = Hmac<Sha256>;

/// The path `url()` points at. Requests to other paths are answered and recorded
/// just the same (their path is in `WebhookRequest::path`), so a test that
/// configured the wrong URL sees what arrived instead of a bare timeout.
const PATH: &str = "/hook";

/// The Standard Webhooks specification's default tolerance: a timestamp further
/// than this from now is rejected, which bounds how long a captured request
/// can be replayed.
const TOLERANCE_SECS: i64 = 5 * 60;

/// The prefix of Standard Webhooks secrets; the rest is the base64 of the key.
const SECRET_PREFIX: &str = "whsec_";

/// One request the receiver got and answered (or was answering, if it was told
/// to answer late).
#[derive(Debug, Clone)]
pub struct WebhookRequest {
    /// The `webhook-id` header, empty when missing.
    pub id: String,
    /// The `webhook-timestamp` header as sent, empty when missing.
    pub timestamp: String,
    /// The space-separated entries of `webhook-signature`, as sent (`v1,<b64>`).
    pub signatures: Vec<String>,
    /// The raw body.
    pub body: Vec<u8>,
    /// The body parsed as JSON, `None` when it is not JSON.
    pub json: Option<serde_json::Value>,
    /// Whether the request carried all three headers, a timestamp within five
    /// minutes of now, and a `v1` signature made with one of the current secrets.
    pub verified: bool,
    /// The HTTP status the receiver answered.
    pub answered: u16,
    /// When the request arrived (before any delay).
    pub at: Instant,
    /// The request path, e.g. `/hook`.
    pub path: String,
    /// Every header, names in lower case, values lossily decoded.
    pub headers: Vec<(String, String)>,
}

impl WebhookRequest {
    /// The `type` field of the JSON body (e.g. `message.sent`), if any.
    pub fn event_type(&self) -> Option<&str> {
        self.json.as_ref()?.get("type")?.as_str()
    }

    /// The first value of a header, looked up case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn answered_2xx(&self) -> bool {
        (200..300).contains(&self.answered)
    }
}

/// State shared by the handle, the accept loop and every connection.
struct Shared {
    /// Decoded HMAC keys of the current secrets.
    keys: Mutex<Vec<Vec<u8>>>,
    status: AtomicU16,
    down: AtomicBool,
    delay: Mutex<Duration>,
    body_bytes: Mutex<Option<usize>>,
    received: Mutex<Vec<WebhookRequest>>,
    /// Woken on every recorded request, for `wait_for`.
    changed: Notify,
    /// Live connections, so that going down also breaks the keep-alive
    /// connections a client pooled while the receiver was up.
    connections: Mutex<Vec<AbortHandle>>,
    /// Requests being answered now, and the most there ever were at once.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    /// Connections that ended in an error: the client hung up before taking the
    /// whole answer (or mid-request).
    broken: AtomicUsize,
}

/// A running webhook receiver on 127.0.0.1 with an ephemeral port.
///
/// Clones share the same server; dropping the last clone shuts it down, so keep a
/// handle alive for as long as postwire may deliver to it.
#[derive(Clone)]
pub struct WebhookReceiver {
    inner: Arc<Inner>,
}

struct Inner {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.accept.abort();
        for connection in lock(&self.shared.connections).drain(..) {
            connection.abort();
        }
    }
}

impl WebhookReceiver {
    /// Starts the receiver: answering 200, no delay, up, and with no secrets (so
    /// nothing verifies until `set_secrets`).
    pub async fn start() -> WebhookReceiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the webhook receiver");
        let addr = listener.local_addr().expect("webhook receiver address");
        let shared = Arc::new(Shared {
            keys: Mutex::new(Vec::new()),
            status: AtomicU16::new(200),
            down: AtomicBool::new(false),
            delay: Mutex::new(Duration::ZERO),
            body_bytes: Mutex::new(None),
            received: Mutex::new(Vec::new()),
            changed: Notify::new(),
            connections: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            broken: AtomicUsize::new(0),
        });
        let accept_shared = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                if accept_shared.down.load(Ordering::SeqCst) {
                    // A crashed receiver: the connection is accepted (the kernel
                    // did that already) and closed before anything is said.
                    drop(stream);
                    continue;
                }
                let shared = accept_shared.clone();
                let task = tokio::spawn(async move {
                    let counted = shared.clone();
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    // Errors here are clients hanging up or the receiver going
                    // down mid-request: counted, for the tests that cause them.
                    if http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                        .is_err()
                    {
                        counted.broken.fetch_add(1, Ordering::SeqCst);
                    }
                });
                let mut connections = lock(&accept_shared.connections);
                connections.retain(|c| !c.is_finished());
                connections.push(task.abort_handle());
            }
        })
        .abort_handle();
        WebhookReceiver {
            inner: Arc::new(Inner {
                addr,
                shared,
                accept,
            }),
        }
    }

    /// The URL to configure as the webhook endpoint: `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}{PATH}", self.inner.addr)
    }

    /// The most requests the receiver was ever answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared().max_in_flight.load(Ordering::SeqCst)
    }

    /// Connections that ended in an error: a client that hung up before it had the
    /// whole answer (say, one that reads only the start of a huge body).
    pub fn broken_connections(&self) -> usize {
        self.shared().broken.load(Ordering::SeqCst)
    }

    /// The port the receiver listens on.
    pub fn port(&self) -> u16 {
        self.inner.addr.port()
    }

    /// Sets the `whsec_...` secrets a request may be signed with; a request verifies
    /// when any of its `v1` signatures matches any of them. Applies to requests
    /// arriving from now on. Panics on a secret that is not `whsec_` + base64, since
    /// that is a mistake in the test.
    pub fn set_secrets(&self, secrets: &[String]) {
        let keys = secrets
            .iter()
            .map(|s| decode_secret(s).unwrap_or_else(|e| panic!("webhook secret {s:?}: {e}")))
            .collect();
        *lock(&self.shared().keys) = keys;
    }

    /// The HTTP status answered from now on (default 200).
    pub fn answer(&self, status: u16) {
        assert!(
            StatusCode::from_u16(status).is_ok(),
            "{status} is not an HTTP status"
        );
        self.shared().status.store(status, Ordering::SeqCst);
    }

    /// While down, every connection is accepted and closed at once without an
    /// answer, like a receiver that crashed; going down also closes the open
    /// connections. Nothing is recorded while down.
    pub fn set_down(&self, down: bool) {
        self.shared().down.store(down, Ordering::SeqCst);
        if down {
            for connection in lock(&self.shared().connections).drain(..) {
                connection.abort();
            }
        }
    }

    /// Waits this long before answering each request from now on, for timeout
    /// tests (default zero). The request is recorded when it arrives.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.shared().delay) = delay;
    }

    /// Answers a body of `n` bytes from now on instead of the small default one, to
    /// test that the client caps how much of a response it reads; `None` restores
    /// the default.
    pub fn answer_with_body_bytes(&self, n: Option<usize>) {
        *lock(&self.shared().body_bytes) = n;
    }

    /// Every request recorded so far, in arrival order, whatever was answered.
    pub fn received(&self) -> Vec<WebhookRequest> {
        lock(&self.shared().received).clone()
    }

    /// The requests that verified and were answered 2xx: the events a real
    /// consumer would have accepted.
    pub fn verified_events(&self) -> Vec<WebhookRequest> {
        self.received()
            .into_iter()
            .filter(|r| r.verified && r.answered_2xx())
            .collect()
    }

    /// How many requests were recorded, whatever was answered.
    pub fn count(&self) -> usize {
        lock(&self.shared().received).len()
    }

    /// Waits until at least `n` requests were answered 2xx (verified or not) and
    /// returns those; panics after `timeout` with what arrived instead.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<WebhookRequest> {
        self.wait_until(n, timeout, "answered 2xx", WebhookRequest::answered_2xx)
            .await
    }

    /// Waits until at least `n` requests were recorded, whatever was answered, and
    /// returns them; panics after `timeout` with what arrived instead.
    pub async fn wait_for_requests(&self, n: usize, timeout: Duration) -> Vec<WebhookRequest> {
        self.wait_until(n, timeout, "recorded", |_| true).await
    }

    async fn wait_until(
        &self,
        n: usize,
        timeout: Duration,
        what: &str,
        counted: impl Fn(&WebhookRequest) -> bool,
    ) -> Vec<WebhookRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Created before checking, so a request recorded in between still wakes us.
            let changed = self.shared().changed.notified();
            let accepted: Vec<_> = self.received().into_iter().filter(|r| counted(r)).collect();
            if accepted.len() >= n {
                return accepted;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                panic!("{}", self.timeout_report(n, what, accepted.len(), timeout));
            }
        }
    }

    fn timeout_report(&self, n: usize, what: &str, accepted: usize, timeout: Duration) -> String {
        let received = self.received();
        let mut report = format!(
            "webhook receiver at {}: waited {timeout:?} for {n} request(s) {what}, \
             got {accepted} ({} recorded in all; down: {}, answering: {})",
            self.url(),
            received.len(),
            self.shared().down.load(Ordering::SeqCst),
            self.shared().status.load(Ordering::SeqCst),
        );
        for r in &received {
            let _ = write!(
                report,
                "\n  {:?} ago: {} id={:?} type={:?} verified={} answered={} timestamp={:?} signatures={:?}",
                r.at.elapsed(),
                r.path,
                r.id,
                r.event_type(),
                r.verified,
                r.answered,
                r.timestamp,
                r.signatures,
            );
        }
        report
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }
}

/// Records one request and answers it as currently configured.
async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    if shared.down.load(Ordering::SeqCst) {
        // A request on a connection that raced with going down: an error makes
        // hyper close the connection without answering, as a crash would.
        return Err(std::io::Error::other("webhook receiver is down"));
    }
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) => return Err(std::io::Error::other(e)),
    };
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
            (name.as_str().to_owned(), value)
        })
        .collect();
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let id = header("webhook-id");
    let timestamp = header("webhook-timestamp");
    let signature = header("webhook-signature");
    let verified = match (&id, &timestamp, &signature) {
        (Some(id), Some(timestamp), Some(signature)) => {
            let keys = lock(&shared.keys).clone();
            verify(&keys, id, timestamp, signature, &body, unix_now())
        }
        _ => false,
    };
    let status = shared.status.load(Ordering::SeqCst);
    let delay = *lock(&shared.delay);
    let body_bytes = *lock(&shared.body_bytes);
    lock(&shared.received).push(WebhookRequest {
        id: id.unwrap_or_default(),
        timestamp: timestamp.unwrap_or_default(),
        signatures: signature
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        json: serde_json::from_slice(&body).ok(),
        body,
        verified,
        answered: status,
        at,
        path: parts.uri.path().to_owned(),
        headers,
    });
    shared.changed.notify_waiters();

    let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
    let content = match body_bytes {
        Some(n) => Bytes::from(vec![b'x'; n]),
        None if (200..300).contains(&status) => Bytes::from_static(b"ok\n"),
        None => Bytes::from_static(b"error\n"),
    };
    let mut response = Response::new(Full::new(content));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    Ok(response)
}

/// Whether any `v1,` entry of the `webhook-signature` header is the HMAC of
/// `{id}.{timestamp}.{body}` under one of `keys`, with the timestamp within the
/// tolerance of `now` (Unix seconds).
fn verify(
    keys: &[Vec<u8>],
    id: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
) -> bool {
    let Ok(ts) = timestamp.parse::<i64>() else {
        return false;
    };
    if (now - ts).abs() > TOLERANCE_SECS {
        return false;
    }
    let expected: Vec<Vec<u8>> = signature
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .collect();
    keys.iter().any(|key| {
        expected.iter().any(|sig| {
            // `verify_slice` compares in constant time, so a timing side channel
            // cannot reveal how much of a forged signature was right.
            mac(key, id, timestamp, body).verify_slice(sig).is_ok()
        })
    })
}

/// Signs like a Standard Webhooks sender: `v1,<base64 HMAC-SHA256 of
/// "{id}.{timestamp}.{body}">` keyed with the base64-decoded part of `secret` after
/// `whsec_`. For tests that need an expected signature; panics on a malformed secret.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = decode_secret(secret).unwrap_or_else(|e| panic!("webhook secret {secret:?}: {e}"));
    let tag = mac(&key, id, &timestamp.to_string(), body)
        .finalize()
        .into_bytes();
    format!("v1,{}", STANDARD.encode(tag))
}

fn mac(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn decode_secret(secret: &str) -> Result<Vec<u8>, String> {
    let b64 = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| format!("does not start with {SECRET_PREFIX}"))?;
    STANDARD.decode(b64).map_err(|e| e.to_string())
}

fn unix_now() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_secs()).expect("seconds fit in i64")
}

/// Locks even after a panicking test poisoned the mutex: the data stays usable for
/// the report, and one failed assertion should not cascade into others.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector published with the Standard Webhooks specification and in
    /// Svix's libraries.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SIGNATURE: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    const OTHER_SECRET: &str = "whsec_c2VjcmV0LWtleS1mb3ItdGVzdHMtb25seQ==";
    const EVENT: &str =
        r#"{"type":"message.sent","timestamp":"2024-01-01T00:00:00Z","data":{"message_id":"m1"}}"#;

    #[test]
    fn webhook_sign_matches_the_published_test_vector() {
        assert_eq!(sign(SECRET, ID, TIMESTAMP, BODY), SIGNATURE);
    }

    #[test]
    fn webhook_verify_checks_the_vector_and_the_tolerance() {
        let keys = vec![decode_secret(SECRET).unwrap()];
        let ts = TIMESTAMP.to_string();
        let check = |id: &str, ts: &str, sig: &str, body: &[u8], now: i64| {
            verify(&keys, id, ts, sig, body, now)
        };
        assert!(check(ID, &ts, SIGNATURE, BODY, TIMESTAMP));
        assert!(check(ID, &ts, SIGNATURE, BODY, TIMESTAMP + TOLERANCE_SECS));
        assert!(check(ID, &ts, SIGNATURE, BODY, TIMESTAMP - TOLERANCE_SECS));
        assert!(!check(
            ID,
            &ts,
            SIGNATURE,
            BODY,
            TIMESTAMP + TOLERANCE_SECS + 1
        ));
        assert!(!check(
            ID,
            &ts,
            SIGNATURE,
            BODY,
            TIMESTAMP - TOLERANCE_SECS - 1
        ));
        assert!(!check(ID, &ts, SIGNATURE, b"{}", TIMESTAMP));
        assert!(!check("msg_other", &ts, SIGNATURE, BODY, TIMESTAMP));
        assert!(!check(ID, &ts, "v2,whatever", BODY, TIMESTAMP));
        assert!(!check(ID, "not-a-number", SIGNATURE, BODY, TIMESTAMP));
        let rotated = format!("v1,bm90LWl0 {SIGNATURE}");
        assert!(check(ID, &ts, &rotated, BODY, TIMESTAMP));
        assert!(!verify(&[], ID, &ts, SIGNATURE, BODY, TIMESTAMP));
    }

    async fn post(
        client: &reqwest::Client,
        receiver: &WebhookReceiver,
        id: &str,
        timestamp: i64,
        signature: &str,
    ) -> reqwest::Result<reqwest::Response> {
        client
            .post(receiver.url())
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .header("content-type", "application/json")
            .body(EVENT)
            .send()
            .await
    }

    #[tokio::test]
    async fn webhook_receiver_round_trip() {
        let receiver = WebhookReceiver::start().await;
        receiver.set_secrets(&[SECRET.to_owned()]);
        assert_eq!(
            receiver.url(),
            format!("http://127.0.0.1:{}/hook", receiver.port())
        );
        let client = reqwest::Client::new();
        let now = unix_now();

        // Signed correctly, now.
        let good = sign(SECRET, "msg_1", now, EVENT.as_bytes());
        let response = post(&client, &receiver, "msg_1", now, &good).await.unwrap();
        assert_eq!(response.status(), 200);

        // Signed with another secret.
        let bad = sign(OTHER_SECRET, "msg_2", now, EVENT.as_bytes());
        post(&client, &receiver, "msg_2", now, &bad).await.unwrap();

        // A rotation: the first signature is stale, the second matches.
        let rotated = format!("{bad} {}", sign(SECRET, "msg_3", now, EVENT.as_bytes()));
        post(&client, &receiver, "msg_3", now, &rotated)
            .await
            .unwrap();

        // Correct signature, but too old.
        let old = now - TOLERANCE_SECS - 10;
        let stale = sign(SECRET, "msg_4", old, EVENT.as_bytes());
        post(&client, &receiver, "msg_4", old, &stale)
            .await
            .unwrap();

        let got = receiver.wait_for(4, Duration::from_secs(5)).await;
        let verified: Vec<_> = got.iter().map(|r| (r.id.as_str(), r.verified)).collect();
        assert_eq!(
            verified,
            [
                ("msg_1", true),
                ("msg_2", false),
                ("msg_3", true),
                ("msg_4", false)
            ]
        );
        assert_eq!(got[0].event_type(), Some("message.sent"));
        assert_eq!(got[0].body, EVENT.as_bytes());
        assert_eq!(got[0].path, "/hook");
        assert_eq!(got[0].header("Content-Type"), Some("application/json"));
        assert_eq!(got[2].signatures.len(), 2);
        let events: Vec<_> = receiver
            .verified_events()
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(events, ["msg_1", "msg_3"]);

        // A missing header never verifies, even with a valid signature.
        client
            .post(receiver.url())
            .header("webhook-id", "msg_1")
            .header("webhook-signature", &good)
            .body(EVENT)
            .send()
            .await
            .unwrap();
        assert!(!receiver.received()[4].verified);

        // An error status is answered and recorded, but not counted by wait_for.
        receiver.answer(500);
        let response = post(&client, &receiver, "msg_1", now, &good).await.unwrap();
        assert_eq!(response.status(), 500);
        let last = receiver.received().pop().unwrap();
        assert_eq!((last.answered, last.verified), (500, true));
        assert_eq!(receiver.count(), 6);
        assert_eq!(receiver.wait_for(1, Duration::ZERO).await.len(), 5);
        assert_eq!(receiver.verified_events().len(), 2);

        // Down: the same client, with a pooled connection, gets a connection error
        // and nothing is recorded.
        receiver.answer(200);
        receiver.set_down(true);
        let error = post(&client, &receiver, "msg_5", now, &good)
            .await
            .unwrap_err();
        assert!(error.is_connect() || error.is_request(), "{error:?}");
        let fresh = reqwest::Client::new();
        post(&fresh, &receiver, "msg_5", now, &good)
            .await
            .unwrap_err();
        assert_eq!(receiver.count(), 6);

        // Up again.
        receiver.set_down(false);
        let response = post(&client, &receiver, "msg_5", now, &good).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(receiver.count(), 7);
    }

    #[tokio::test]
    async fn webhook_receiver_delay_and_large_body() {
        let receiver = WebhookReceiver::start().await;
        let client = reqwest::Client::new();

        receiver.set_delay(Duration::from_secs(5));
        let error = client
            .post(receiver.url())
            .body(EVENT)
            .timeout(Duration::from_millis(200))
            .send()
            .await
            .unwrap_err();
        assert!(error.is_timeout(), "{error:?}");
        // Recorded on arrival, before the delay.
        assert_eq!(receiver.count(), 1);
        assert!(!receiver.received()[0].verified, "no secrets set");

        receiver.set_delay(Duration::ZERO);
        receiver.answer_with_body_bytes(Some(100 * 1024));
        let response = client
            .post(receiver.url())
            .body(EVENT)
            .send()
            .await
            .unwrap();
        assert_eq!(response.bytes().await.unwrap().len(), 100 * 1024);
    }

    #[tokio::test]
    #[should_panic(expected = "waited")]
    async fn webhook_wait_for_reports_on_timeout() {
        let receiver = WebhookReceiver::start().await;
        receiver.answer(503);
        reqwest::Client::new()
            .post(receiver.url())
            .body(EVENT)
            .send()
            .await
            .unwrap();
        receiver.wait_for(1, Duration::from_millis(100)).await;
    }
}
