//! Prometheus metrics. Every name starts with `postwire_`; `connection` labels are the
//! SMTP connection names (bounded: operators create them).

use std::sync::OnceLock;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder once (several in-process apps, as in tests,
/// share it) and returns its handle for `/metrics`.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let seconds = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &seconds)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .clone()
}

/// The text exposition of every metric.
pub fn render() -> String {
    install().map(|h| h.render()).unwrap_or_default()
}

/// A message of `tenant` changed state: `accepted`, `sent`, `deferred`, `failed`,
/// `expired`, `cancelled`. Tenants are bounded too: operators make them.
pub fn message(tenant: &str, connection: &str, outcome: &'static str) {
    counter!(
        "postwire_messages_total",
        "tenant" => tenant.to_owned(),
        "connection" => connection.to_owned(),
        "outcome" => outcome
    )
    .increment(1);
}

/// A send refused with 429: the tenant is over its `max_rate_per_second`.
pub fn rate_limited(tenant: &str) {
    counter!("postwire_rate_limited_total", "tenant" => tenant.to_owned()).increment(1);
}

/// One SMTP attempt: its duration and the class of the server's final reply
/// (`2xx`, `4xx`, `5xx`, or `none` when the session broke first).
pub fn attempt(connection: &str, seconds: f64, reply_code: Option<u16>) {
    histogram!("postwire_smtp_attempt_duration_seconds", "connection" => connection.to_owned())
        .record(seconds);
    let class = match reply_code {
        Some(c) if (200..300).contains(&c) => "2xx",
        Some(c) if (400..500).contains(&c) => "4xx",
        Some(c) if (500..600).contains(&c) => "5xx",
        _ => "none",
    };
    counter!("postwire_smtp_replies_total", "connection" => connection.to_owned(), "class" => class)
        .increment(1);
}

/// A connection's server answered with a throttling reply.
pub fn throttle_reply(connection: &str) {
    counter!("postwire_smtp_throttle_replies_total", "connection" => connection.to_owned())
        .increment(1);
}

/// The limits a connection sends at: the fraction of its configured ones in effect
/// (1 when not throttled), and whether it is paused after a throttling reply.
pub fn connection_limits(connection: &str, fraction: f64, paused: bool) {
    gauge!("postwire_connection_limit_fraction", "connection" => connection.to_owned())
        .set(fraction);
    gauge!("postwire_connection_paused", "connection" => connection.to_owned()).set(if paused {
        1.0
    } else {
        0.0
    });
}

/// One try of a webhook delivery: `delivered`, `retrying`, `failed` (no retry left)
/// or `disabled` (the endpoint was disabled by it).
pub fn webhook_delivery(outcome: &'static str) {
    counter!("postwire_webhook_deliveries_total", "outcome" => outcome).increment(1);
}

/// Webhook deliveries waiting to be made, all endpoints together.
pub fn webhook_backlog(pending: i64) {
    gauge!("postwire_webhook_backlog").set(pending as f64);
}

/// Time from publish to RabbitMQ's confirm.
pub fn publish_confirm(seconds: f64) {
    histogram!("postwire_publish_confirm_seconds").record(seconds);
}

/// Messages committed but not (yet) confirmed by RabbitMQ.
pub fn outbox_backlog(count: i64) {
    gauge!("postwire_outbox_backlog").set(count as f64);
}

/// Deliveries this worker process is running now.
pub fn in_flight(delta: f64) {
    gauge!("postwire_deliveries_in_flight").increment(delta);
}

/// SMTP sessions of a connection's pool in this process.
pub fn pool_sessions(connection: &str, busy: usize, idle: usize) {
    gauge!("postwire_smtp_sessions", "connection" => connection.to_owned(), "state" => "busy")
        .set(busy as f64);
    gauge!("postwire_smtp_sessions", "connection" => connection.to_owned(), "state" => "idle")
        .set(idle as f64);
}

/// Ready messages in a RabbitMQ queue.
pub fn queue_depth(queue: &str, messages: u32) {
    gauge!("postwire_queue_messages", "queue" => queue.to_owned()).set(f64::from(messages));
}

/// Open HTTP connections of this API process.
pub fn http_connections(delta: f64) {
    gauge!("postwire_http_connections").increment(delta);
}

/// A request or connection refused to keep the process within its limits: `connections`
/// (server.max_connections), `body_budget` (server.max_body_bytes_in_flight) or
/// `body_timeout` (server.body_read_timeout).
pub fn http_refused(reason: &'static str) {
    counter!("postwire_http_refused_total", "reason" => reason).increment(1);
}

/// Entries of an in-process cache keyed by client input (`api_keys`, `connections`).
pub fn cache_entries(cache: &'static str, entries: u64) {
    gauge!("postwire_cache_entries", "cache" => cache).set(entries as f64);
}

/// A job republished by the reconciler: `waiting` (lost or never published),
/// `scheduled` (a held send fell due), `orphaned` (its worker died mid-attempt).
pub fn reconciled(reason: &'static str) {
    counter!("postwire_reconciled_total", "reason" => reason).increment(1);
}
