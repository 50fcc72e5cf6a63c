//! Webhook delivery: takes due deliveries from PostgreSQL (written in the same
//! transaction as the status change they tell of, so none is lost), signs them per
//! the Standard Webhooks specification and POSTs them, retrying on
//! `webhooks.retry`. Every process runs it; `SKIP LOCKED` and a lease on each taken
//! delivery keep two processes from sending the same one at once, and a process that
//! dies holding one leaves it to be taken again when the lease ends (at least once:
//! receivers deduplicate on `webhook-id`).

mod target;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::WebhookSettings;
use crate::crypto::Cipher;
use crate::domain::sign_webhook;
use crate::store::{DueWebhook, MessageRecord, Store, WebhookRow, WebhookTry};

/// At most this much of a response body is read: its content is not used, and an
/// endpoint must not make a worker hold megabytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Deliveries taken per round.
const BATCH: i64 = 64;
/// How often the backlog gauge is refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Turns a stored message into the `data` of a webhook: the same fields as
/// `GET /v1/messages/{id}` (the API's view, handed in by whoever wires the process).
pub type Render = fn(MessageRecord) -> serde_json::Value;

/// Sends due webhook deliveries.
pub struct Dispatcher {
    store: Store,
    cipher: Arc<Cipher>,
    settings: WebhookSettings,
    client: reqwest::Client,
    render: Render,
    /// Requests in flight per endpoint.
    in_flight: Mutex<HashMap<Uuid, Arc<Semaphore>>>,
    /// When the backlog was last counted.
    counted: Mutex<Option<Instant>>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        cipher: Arc<Cipher>,
        settings: WebhookSettings,
        render: Render,
    ) -> anyhow::Result<Dispatcher> {
        let mut client = reqwest::Client::builder()
            // A redirect could lead anywhere, the internal network included.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .connect_timeout(settings.timeout)
            .user_agent(concat!("postwire-webhooks/", env!("CARGO_PKG_VERSION")))
            .no_proxy();
        if !settings.allow_private_targets {
            client = client.dns_resolver(Arc::new(target::PublicOnly));
        }
        Ok(Dispatcher {
            client: client
                .build()
                .map_err(|e| anyhow::anyhow!("webhook HTTP client: {e}"))?,
            store,
            cipher,
            settings,
            render,
            in_flight: Mutex::new(HashMap::new()),
            counted: Mutex::new(None),
        })
    }

    /// Delivers until `shutdown`: a round whenever deliveries are due, a pause of
    /// `webhooks.poll_interval` when none are.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            let taken = match self.round().await {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!(error = %e, "webhook round failed; trying again");
                    0
                }
            };
            if taken < BATCH as usize {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(self.settings.poll_interval) => {}
                }
            } else if shutdown.is_cancelled() {
                return Ok(());
            }
        }
    }

    /// Takes what is due and sends it; how many were taken.
    async fn round(&self) -> Result<usize, sqlx::Error> {
        // Held for longer than one try can take, so that no other process takes it
        // while this one still might send it.
        let lease = self.settings.timeout * 2 + Duration::from_secs(5);
        let due = self.store.take_due_webhooks(BATCH, lease).await?;
        self.count_backlog().await;
        if due.is_empty() {
            return Ok(0);
        }
        let ids = distinct(due.iter().map(|d| d.endpoint_id));
        let endpoints: HashMap<Uuid, WebhookRow> = self
            .store
            .webhooks_by_id(&ids)
            .await?
            .into_iter()
            .map(|e| (e.id, e))
            .collect();
        // The messages the events tell of, in one query for the round.
        let message_ids = distinct(due.iter().map(|d| d.message_id));
        let messages: HashMap<Uuid, MessageRecord> = self
            .store
            .get_messages(&message_ids)
            .await?
            .into_iter()
            .map(|m| (m.id, m))
            .collect();
        let taken = due.len();
        let sends = due.into_iter().filter_map(|d| {
            let endpoint = endpoints.get(&d.endpoint_id)?;
            let message = messages.get(&d.message_id).cloned();
            Some(self.deliver(d, endpoint, message))
        });
        let tries = futures_util::future::join_all(sends).await;
        if let Err(e) = self.store.record_webhook_tries(&tries).await {
            // The leases run out and the deliveries are tried again: at least once.
            tracing::warn!(error = %e, deliveries = tries.len(), "could not record webhook tries");
        }
        Ok(taken)
    }

    /// Sets the backlog gauge, at most every few seconds: a count over a long backlog
    /// is not free, and it is only a gauge.
    async fn count_backlog(&self) {
        {
            let mut last = self.counted.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|at| at.elapsed() < BACKLOG_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        if let Ok(pending) = self.store.pending_webhooks().await {
            crate::metrics::webhook_backlog(pending);
        }
    }

    /// One try of one delivery: `(delivery, endpoint, outcome)`, to be recorded.
    async fn deliver(
        &self,
        due: DueWebhook,
        endpoint: &WebhookRow,
        message: Option<MessageRecord>,
    ) -> (Uuid, Uuid, WebhookTry) {
        let slot = self.slot(endpoint.id);
        let _permit = slot.acquire().await;
        let started = Instant::now();
        let answer = self.post(&due, endpoint, message).await;
        let outcome = self.judge(&due, endpoint, answer, started.elapsed());
        let result = if outcome.succeeded {
            "delivered"
        } else if outcome.disable.is_some() {
            "disabled"
        } else if outcome.retry_in.is_some() {
            "retrying"
        } else {
            "failed"
        };
        crate::metrics::webhook_delivery(result);
        tracing::info!(
            message_id = %due.message_id,
            webhook_id = %due.id,
            endpoint = %endpoint.id,
            event = %due.event_type,
            status = ?outcome.http_status,
            error = ?outcome.error,
            result,
            "webhook"
        );
        (due.id, endpoint.id, outcome)
    }

    fn slot(&self, endpoint: Uuid) -> Arc<Semaphore> {
        let mut slots = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        slots
            .entry(endpoint)
            .or_insert_with(|| {
                Arc::new(Semaphore::new(
                    self.settings.per_endpoint_concurrency.max(1),
                ))
            })
            .clone()
    }

    /// Sends the request: the endpoint's HTTP status, or why there was none.
    async fn post(
        &self,
        due: &DueWebhook,
        endpoint: &WebhookRow,
        message: Option<MessageRecord>,
    ) -> Result<u16, String> {
        let url = url::Url::parse(&endpoint.url).map_err(|e| format!("bad URL: {e}"))?;
        if !self.settings.allow_private_targets {
            if let Some(why) = target::refuse_literal(&url) {
                return Err(why);
            }
        }
        let body = self.body(due, message).map_err(|e| format!("{e:#}"))?;
        let timestamp = Utc::now().timestamp();
        let id = due.id.to_string();
        let signature = self
            .secrets(endpoint)?
            .iter()
            .map(|secret| sign_webhook(secret, &id, timestamp, &body))
            .collect::<Vec<_>>()
            .join(" ");
        let response = self
            .client
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await
            .map_err(|e| describe(&e))?;
        let status = response.status().as_u16();
        // Read (a bounded part of) the body, so that the connection can be reused.
        let mut stream = response.bytes_stream();
        let mut read = 0;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    read += bytes.len();
                    if read >= MAX_RESPONSE_BYTES {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        Ok(status)
    }

    /// The secrets that sign now: the current one, and the one before a rotation
    /// within `webhooks.rotation_overlap`.
    fn secrets(&self, endpoint: &WebhookRow) -> Result<Vec<String>, String> {
        let open = |sealed: &[u8]| {
            self.cipher
                .decrypt(sealed, endpoint.id.as_bytes())
                .ok()
                .and_then(|plain| String::from_utf8(plain).ok())
                .ok_or_else(|| "the signing secret cannot be decrypted (master key?)".to_owned())
        };
        let mut secrets = vec![open(&endpoint.secret_enc)?];
        if let (Some(previous), Some(until)) =
            (&endpoint.previous_secret_enc, endpoint.previous_until)
        {
            if until > Utc::now() {
                secrets.push(open(previous)?);
            }
        }
        Ok(secrets)
    }

    /// `{"type", "timestamp", "data"}`: `data` is the message as `GET` shows it, with
    /// its state as it was at the event.
    fn body(&self, due: &DueWebhook, message: Option<MessageRecord>) -> anyhow::Result<Vec<u8>> {
        let data = match message {
            Some(mut m) => {
                if let Ok(status) = due.status.parse() {
                    m.status = status;
                }
                m.attempts = due.attempts;
                if due.reply.is_some() {
                    m.last_reply = due.reply.clone();
                }
                m.last_error = due.error.clone();
                if due.recipients.is_some() {
                    m.recipient_results = due.recipients.clone();
                }
                m.next_attempt_at = due.next_attempt;
                m.updated_at = due.occurred_at;
                (self.render)(m)
            }
            // Deleted since (retention): what the delivery itself knows.
            None => serde_json::json!({"id": due.message_id, "status": due.status}),
        };
        let body = serde_json::json!({
            "type": due.event_type,
            "timestamp": due.occurred_at,
            "data": data,
        });
        Ok(serde_json::to_vec(&body)?)
    }

    /// What a try's answer means for the delivery and the endpoint.
    fn judge(
        &self,
        due: &DueWebhook,
        endpoint: &WebhookRow,
        answer: Result<u16, String>,
        duration: Duration,
    ) -> WebhookTry {
        let (http_status, error) = match &answer {
            Ok(status) => (Some(*status), None),
            Err(e) => (None, Some(e.clone())),
        };
        let succeeded = matches!(answer, Ok(200..=299));
        let mut outcome = WebhookTry {
            http_status,
            error: error
                .or_else(|| (!succeeded).then(|| format!("HTTP {}", http_status.unwrap_or(0)))),
            duration,
            succeeded,
            retry_in: None,
            disable: None,
        };
        if succeeded {
            outcome.error = None;
            return outcome;
        }
        if answer == Ok(410) {
            outcome.disable = Some("the endpoint answered 410 Gone".to_owned());
            return outcome;
        }
        let failing_for = endpoint
            .failing_since
            .and_then(|since| (Utc::now() - since).to_std().ok());
        if failing_for.is_some_and(|f| f >= self.settings.disable_after) {
            outcome.disable = Some(format!(
                "failing without a success since {} (webhooks.disable_after: {})",
                endpoint
                    .failing_since
                    .map(|t| t.to_rfc3339())
                    .unwrap_or_default(),
                humantime::format_duration(self.settings.disable_after)
            ));
            return outcome;
        }
        outcome.retry_in = usize::try_from(due.tries)
            .ok()
            .and_then(|tries| self.settings.retry.get(tries).copied());
        outcome
    }
}

/// The ids, each once.
fn distinct(ids: impl Iterator<Item = Uuid>) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = ids.collect();
    ids.sort();
    ids.dedup();
    ids
}

/// A request error with its causes (connect refused, DNS refused by the guard...).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
