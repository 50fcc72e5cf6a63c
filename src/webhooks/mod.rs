//! Webhook delivery. A delivery is written in the same transaction as the status
//! change it tells of (so none is lost), its job published to RabbitMQ by whoever
//! wrote it, like mail: its own queue, and delay queues for the retries of
//! `webhooks.retry`; the reconciler publishes again what waits in PostgreSQL too long.
//! Worker processes consume the queue: each job's delivery is read back (settled ones
//! are dropped), signed per the Standard Webhooks specification, POSTed, its try
//! recorded, a retry parked, and only then is the job acknowledged (at least once:
//! receivers deduplicate on `webhook-id`, the same on every try).

mod target;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures_util::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use serde_json::value::RawValue;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::batcher::{self, BatchLimits, Batcher, DbResult};
use crate::config::{AmqpSettings, WebhookSettings};
use crate::crypto::Cipher;
use crate::domain::sign_webhook;
use crate::queue::{Consumer, Job, Lane, Publisher, Topology};
use crate::store::{DueWebhook, MessageRecord, Store, WebhookRow, WebhookTry};

/// At most this much of a response body is read: its content is not used, and an
/// endpoint must not make a worker hold megabytes.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Deliveries read, or tries recorded, in one statement at most, and how long a
/// batch waits for company: nobody waits on a webhook's next milliseconds, while each
/// statement has a fixed cost in PostgreSQL, which mail needs too.
const BATCH: BatchLimits = BatchLimits {
    count: 256,
    weight: usize::MAX,
    linger: Duration::from_millis(10),
};
/// How long an endpoint's row is reused for its deliveries.
const ENDPOINT_TTL: Duration = Duration::from_secs(1);
/// How often the backlog gauge is refreshed.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Turns a stored message into the JSON `data` of a webhook: the same fields as
/// `GET /v1/messages/{id}` (the API's view, handed in by whoever wires the process).
/// JSON text rather than a `serde_json::Value`: building that tree and dropping it
/// again, for every webhook, was a visible share of a worker's time.
pub type Render = fn(MessageRecord) -> serde_json::Result<Box<RawValue>>;

/// A webhook's body; `data` is already JSON.
#[derive(serde::Serialize)]
struct Event<'a> {
    r#type: &'a str,
    timestamp: chrono::DateTime<Utc>,
    data: &'a RawValue,
}

/// A delivery read back for its try: the delivery, its endpoint, its message (gone if
/// retention deleted it).
type Loaded = (DueWebhook, WebhookRow, Option<MessageRecord>);

/// One endpoint's share of this process: `per_endpoint_concurrency` requests at once,
/// and how long its answers take, so that a slow endpoint's deliveries step aside
/// instead of filling every slot of the process.
struct Endpoint {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    /// Moving average of its answers' durations, in microseconds.
    latency_us: AtomicUsize,
}

/// Sends webhook deliveries from the webhook queue.
pub struct Dispatcher {
    store: Store,
    cipher: Arc<Cipher>,
    settings: WebhookSettings,
    amqp: AmqpSettings,
    client: reqwest::Client,
    render: Render,
    publisher: Publisher,
    consumer: Consumer,
    endpoints: Mutex<HashMap<Uuid, Arc<Endpoint>>>,
    /// Deliveries read back together.
    loads: Batcher<Uuid, DbResult<Option<Loaded>>>,
    /// Tries recorded together.
    tries: Batcher<(Uuid, Uuid, WebhookTry), DbResult<()>>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        cipher: Arc<Cipher>,
        settings: WebhookSettings,
        amqp: AmqpSettings,
        topology: Topology,
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
        let loads = {
            let store = store.clone();
            // Endpoints change rarely and are read for every delivery. A copy is used
            // only while the endpoint's `updated_at` (read with each delivery, as is
            // whether it is disabled) is the copy's, so a new URL or secret is seen
            // at once; only its health (`failing_since`) may be a second old.
            let endpoints = moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(ENDPOINT_TTL)
                .build();
            Batcher::start_weighted(
                BATCH,
                |_| 0,
                2,
                move |ids: Vec<Uuid>| {
                    let store = store.clone();
                    let endpoints = endpoints.clone();
                    async move {
                        let n = ids.len();
                        batcher::each(load(&store, &endpoints, &ids).await, n)
                    }
                },
            )
        };
        let tries = {
            let store = store.clone();
            Batcher::start_weighted(
                BATCH,
                |_| 0,
                1,
                move |tries: Vec<(Uuid, Uuid, WebhookTry)>| {
                    let store = store.clone();
                    async move {
                        batcher::write_or_isolate(tries, |tries| {
                            let store = store.clone();
                            async move { store.record_webhook_tries(&tries).await }
                        })
                        .await
                    }
                },
            )
        };
        Ok(Dispatcher {
            client: client
                .build()
                .map_err(|e| anyhow::anyhow!("webhook HTTP client: {e}"))?,
            publisher: Publisher::new(amqp.clone(), topology.clone(), "postwire-webhooks"),
            consumer: Consumer {
                amqp: amqp.clone(),
                queue: topology.webhooks.clone(),
                topology,
                prefetch: settings.concurrency,
                name: "postwire-webhooks",
                drain: settings.timeout,
            },
            store,
            cipher,
            settings,
            amqp,
            render,
            endpoints: Mutex::new(HashMap::new()),
            loads,
            tries,
        })
    }

    /// Delivers until `shutdown`, then lets the requests in flight finish (within
    /// `webhooks.timeout`). Does nothing when `webhooks.concurrency` is 0.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        if self.settings.concurrency == 0 {
            return Ok(());
        }
        let backlog = tokio::spawn(self.clone().count_backlog(shutdown.clone()));
        let dispatcher = self.clone();
        self.consumer
            .run(&shutdown, move |delivery| {
                let dispatcher = dispatcher.clone();
                async move { dispatcher.handle(delivery).await }
            })
            .await;
        backlog.abort();
        self.publisher.close().await;
        Ok(())
    }

    /// Sets the backlog gauge every few seconds (a count, so not on every try).
    async fn count_backlog(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(BACKLOG_EVERY);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Ok(pending) = self.store.pending_webhooks().await {
                crate::metrics::webhook_backlog(pending);
            }
        }
    }

    /// Handles one job (one or more deliveries, sent side by side); acknowledged once
    /// every try is recorded and every retry parked, requeued when one cannot be
    /// written (its deliveries already settled are then dropped when it comes back).
    async fn handle(&self, delivery: AmqpDelivery) {
        let follow_up = match Job::decode(&delivery.data, &delivery.properties) {
            Ok(job) => match job.due.and_then(|due| (due - Utc::now()).to_std().ok()) {
                Some(wait) if !wait.is_zero() => self.park(&job, wait).await,
                _ => {
                    let each = job.ids().map(|id| {
                        let span = tracing::info_span!(
                            "webhook",
                            webhook_id = %id,
                            message_id = tracing::field::Empty
                        );
                        self.process(Job::new(id)).instrument(span)
                    });
                    futures_util::future::join_all(each)
                        .await
                        .into_iter()
                        .collect::<anyhow::Result<()>>()
                }
            },
            Err(reason) => {
                // Nothing to do with it: the reconciler works from PostgreSQL.
                tracing::error!(reason = %reason, "undecodable webhook job; dropped");
                Ok(())
            }
        };
        if let Err(e) = &follow_up {
            tracing::warn!(error = format!("{e:#}"), "webhook job requeued");
        }
        crate::queue::settle(&self.amqp, &delivery, follow_up).await;
    }

    /// One delivery's try.
    async fn process(&self, job: Job) -> anyhow::Result<()> {
        let loaded = self
            .loads
            .write(job.id)
            .await
            .map_err(|e| anyhow::anyhow!("reading the webhook delivery: {e}"))?;
        // Delivered, failed, deleted with its endpoint, or the endpoint disabled.
        let Some((due, endpoint, message)) = loaded else {
            tracing::debug!("webhook job without a pending delivery; dropped");
            return Ok(());
        };
        tracing::Span::current().record("message_id", tracing::field::display(due.message_id));
        if let Ok(wait) = (due.due_at - Utc::now()).to_std() {
            // Rescheduled since this job was published (a duplicate from the
            // reconciler, say): the retry's own job comes then.
            if wait > Duration::from_secs(1) {
                return self.park(&job.due_at(due.due_at), wait).await;
            }
        }
        let share = self.endpoint(endpoint.id);
        let permit = match share.slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                if let Some(wait) = self.step_aside(&share) {
                    tracing::debug!(endpoint = %endpoint.id, wait = ?wait, "endpoint busy; the delivery waits in a delay queue");
                    return self.park(&job.renewed().due_in(wait), wait).await;
                }
                share.waiting.fetch_add(1, Ordering::Relaxed);
                let permit = share.slots.clone().acquire_owned().await;
                share.waiting.fetch_sub(1, Ordering::Relaxed);
                permit.map_err(|_| anyhow::anyhow!("endpoint slots closed"))?
            }
        };
        let started = Instant::now();
        let answer = self.post(&due, &endpoint, message).await;
        let took = started.elapsed();
        // The slot is the endpoint's: recording the try is not its business.
        drop(permit);
        share.observe(took);
        let outcome = self.judge(&due, &endpoint, answer, took);
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
            endpoint = %endpoint.id,
            event = %due.event_type,
            status = ?outcome.http_status,
            error = ?outcome.error,
            result,
            "webhook"
        );
        let retry_in = outcome.retry_in;
        // Not recorded: the job comes back and the try is made again (at least once).
        self.tries
            .write((due.id, endpoint.id, outcome))
            .await
            .map_err(|e| anyhow::anyhow!("recording the webhook try: {e}"))?;
        if let Some(wait) = retry_in {
            // The retry is due in PostgreSQL: if its job cannot be parked now, the
            // reconciler publishes it, so the job is acknowledged either way.
            if let Err(e) = self.park(&job.renewed().due_in(wait), wait).await {
                tracing::warn!(
                    error = format!("{e:#}"),
                    "could not park the webhook retry; the reconciler will publish it"
                );
            }
        }
        Ok(())
    }

    async fn park(&self, job: &Job, wait: Duration) -> anyhow::Result<()> {
        self.publisher.park_in(Lane::Webhooks, job, wait).await
    }

    /// When every slot of an endpoint is taken and the deliveries already waiting for
    /// one would take longer than `webhooks.timeout` to get theirs, this one steps
    /// aside for the shortest retry wait (no try counted), leaving the process's
    /// other slots to other endpoints.
    fn step_aside(&self, share: &Endpoint) -> Option<Duration> {
        let waiting = share.waiting.load(Ordering::Relaxed) + 1;
        let latency = Duration::from_micros(share.latency_us.load(Ordering::Relaxed) as u64);
        let per_slot = self.settings.per_endpoint_concurrency.max(1) as u32;
        let expected = latency * u32::try_from(waiting).unwrap_or(u32::MAX) / per_slot;
        if expected <= self.settings.timeout {
            return None;
        }
        Some(
            self.settings
                .retry
                .first()
                .copied()
                .unwrap_or(self.settings.timeout),
        )
    }

    fn endpoint(&self, id: Uuid) -> Arc<Endpoint> {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|e| e.into_inner());
        endpoints
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Endpoint {
                    slots: Arc::new(Semaphore::new(
                        self.settings.per_endpoint_concurrency.max(1),
                    )),
                    waiting: AtomicUsize::new(0),
                    latency_us: AtomicUsize::new(0),
                })
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
                (self.render)(m)?
            }
            // Deleted since (retention): what the delivery itself knows.
            None => serde_json::value::to_raw_value(
                &serde_json::json!({"id": due.message_id, "status": due.status}),
            )?,
        };
        Ok(serde_json::to_vec(&Event {
            r#type: &due.event_type,
            timestamp: due.occurred_at,
            data: &data,
        })?)
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

impl Endpoint {
    /// Folds one answer's duration into the moving average (weight 1/8).
    fn observe(&self, took: Duration) {
        let took = usize::try_from(took.as_micros()).unwrap_or(usize::MAX);
        let _ = self
            .latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
                Some(if avg == 0 {
                    took
                } else {
                    avg - avg / 8 + took / 8
                })
            });
    }
}

/// Reads back the deliveries of a batch of jobs, each with its endpoint (cached in
/// `endpoints`) and message: `None` for one that is no longer pending. Two queries for
/// the batch, three when an endpoint is not cached.
async fn load(
    store: &Store,
    endpoints: &moka::sync::Cache<Uuid, WebhookRow>,
    ids: &[Uuid],
) -> Result<Vec<Option<Loaded>>, sqlx::Error> {
    let due = store.pending_webhooks_by_id(ids).await?;
    // This batch's endpoints, taken out of the cache once: an entry expiring
    // between two looks must not lose a delivery.
    let mut batch_endpoints: HashMap<Uuid, WebhookRow> = HashMap::new();
    for d in &due {
        if let Some(e) = endpoints
            .get(&d.endpoint_id)
            .filter(|e| e.updated_at == d.endpoint_updated_at)
        {
            batch_endpoints.insert(e.id, e);
        }
    }
    let missing = distinct(
        due.iter()
            .map(|d| d.endpoint_id)
            .filter(|id| !batch_endpoints.contains_key(id)),
    );
    if !missing.is_empty() {
        for endpoint in store.webhooks_by_id(&missing).await? {
            endpoints.insert(endpoint.id, endpoint.clone());
            batch_endpoints.insert(endpoint.id, endpoint);
        }
    }
    let message_ids = distinct(due.iter().map(|d| d.message_id));
    let messages: HashMap<Uuid, MessageRecord> = store
        .get_messages(&message_ids)
        .await?
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
    let mut due: HashMap<Uuid, DueWebhook> = due.into_iter().map(|d| (d.id, d)).collect();
    Ok(ids
        .iter()
        .map(|id| {
            // A job twice in one batch: the first one takes it.
            let d = due.remove(id)?;
            let endpoint = batch_endpoints.get(&d.endpoint_id)?.clone();
            let message = messages.get(&d.message_id).cloned();
            Some((d, endpoint, message))
        })
        .collect())
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
