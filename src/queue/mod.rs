//! RabbitMQ: the work queue. Durable queues, persistent messages, publisher confirms
//! on the way in, manual acknowledgements on the way out.

mod consumer;
mod job;
mod publisher;

pub use consumer::{settle, Consumer};
pub use job::Job;
pub use publisher::{Lane, Published, Publisher};

use std::time::Duration;

use anyhow::Context;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};

use crate::config::{AmqpSettings, QueueType, RetrySettings, Settings};

/// How often a quorum ready queue hands out one job before giving up on it.
const DELIVERY_LIMIT: i64 = 1000;

/// The delays of the tiers: initial, initial*factor, ... up to max_delay, then the
/// halves of `initial` down to ~1/16 of it so that jittered remainders are waited out
/// precisely enough.
fn tier_delays(retry: &RetrySettings) -> Vec<Duration> {
    let mut delays = Vec::new();
    let mut d = retry.initial;
    for _ in 0..4 {
        d /= 2;
        if d >= Duration::from_millis(10) {
            delays.push(d);
        }
    }
    delays.reverse();
    let mut d = retry.initial;
    while d < retry.max_delay && delays.len() < 40 {
        delays.push(d);
        let next = d.mul_f32(retry.factor.max(1.01));
        d = Duration::from_millis(next.as_millis() as u64);
    }
    delays.push(retry.max_delay);
    delays.dedup();
    delays
}

/// The names of postwire's queues.
#[derive(Debug, Clone)]
pub struct Topology {
    /// Messages ready for delivery.
    pub deliver: String,
    /// Jobs that could not be processed at all (poison), kept for inspection.
    pub dead: String,
    /// Delay queues, shortest first: each holds jobs for its TTL, then dead-letters
    /// them back to `deliver`. One queue per delay, because a per-message TTL in a
    /// shared queue only expires at the head and would block shorter waits.
    pub tiers: Vec<(Duration, String)>,
    /// Webhook deliveries ready to be sent (the job's id is the delivery's).
    pub webhooks: String,
    /// The webhook retry waits, one delay queue each, dead-lettering back to
    /// `webhooks`.
    pub webhook_tiers: Vec<(Duration, String)>,
    queue_type: QueueType,
    expires: Option<Duration>,
}

impl Topology {
    /// The queues the settings describe.
    pub fn of(settings: &Settings) -> Topology {
        Topology::new(&settings.amqp, &settings.retry, &settings.webhooks.retry)
    }

    /// The queues of a deployment: mail retried on `retry`, webhooks on
    /// `webhook_retry` (`webhooks.retry`).
    pub fn new(
        settings: &AmqpSettings,
        retry: &RetrySettings,
        webhook_retry: &[Duration],
    ) -> Topology {
        let prefix = &settings.queue_prefix;
        let mut webhook_delays = webhook_retry.to_vec();
        webhook_delays.sort();
        webhook_delays.dedup();
        webhook_delays.retain(|d| !d.is_zero());
        Topology {
            deliver: format!("{prefix}.deliver"),
            dead: format!("{prefix}.dead"),
            tiers: tier_delays(retry)
                .into_iter()
                .map(|d| (d, format!("{prefix}.delay.{}ms", d.as_millis())))
                .collect(),
            webhooks: format!("{prefix}.webhooks"),
            webhook_tiers: webhook_delays
                .into_iter()
                .map(|d| (d, format!("{prefix}.webhooks.delay.{}ms", d.as_millis())))
                .collect(),
            queue_type: settings.queue_type(),
            expires: settings.queue_expires,
        }
    }

    /// The delay queue for a wait: the longest tier not longer than `wait`, so a job
    /// is never early; the remainder is waited out in further, shorter hops. Waits
    /// below the shortest tier use the shortest.
    pub fn tier_for(&self, lane: Lane, wait: Duration) -> &str {
        let (tiers, ready) = match lane {
            Lane::Mail => (&self.tiers, &self.deliver),
            Lane::Webhooks => (&self.webhook_tiers, &self.webhooks),
        };
        tiers
            .iter()
            .rev()
            .find(|(d, _)| *d <= wait)
            .or(tiers.first())
            .map(|(_, name)| name.as_str())
            .unwrap_or(ready)
    }

    /// The queue a lane's due jobs wait in.
    pub fn ready(&self, lane: Lane) -> &str {
        match lane {
            Lane::Mail => &self.deliver,
            Lane::Webhooks => &self.webhooks,
        }
    }

    /// Declares every queue (idempotent; both roles do it at start and after a
    /// reconnect, so neither depends on the other having run first).
    pub async fn declare(&self, channel: &Channel) -> anyhow::Result<()> {
        let mut deliver = self.ready_arguments();
        if self.queue_type == QueueType::Quorum {
            // A mail job that reaches the delivery limit moves to the dead-letter
            // queue (at least once) instead of vanishing; its message, still waiting
            // in PostgreSQL, is republished by the reconciler.
            deliver.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            deliver.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(self.dead.as_str().into()),
            );
        }
        channel
            .queue_declare(
                self.deliver.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                deliver,
            )
            .await
            .with_context(|| format!("declaring queue {}", self.deliver))?;
        channel
            .queue_declare(
                self.dead.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                self.arguments(),
            )
            .await
            .with_context(|| format!("declaring queue {}", self.dead))?;
        // A webhook job that reaches the delivery limit is dropped, and the
        // reconciler publishes it again from PostgreSQL.
        let webhooks = self.ready_arguments();
        channel
            .queue_declare(
                self.webhooks.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                webhooks,
            )
            .await
            .with_context(|| format!("declaring queue {}", self.webhooks))?;
        self.declare_tiers(channel, &self.tiers, &self.deliver)
            .await?;
        self.declare_tiers(channel, &self.webhook_tiers, &self.webhooks)
            .await
    }

    /// Delay queues: each holds a job for its TTL, then dead-letters it to `target`.
    async fn declare_tiers(
        &self,
        channel: &Channel,
        tiers: &[(Duration, String)],
        target: &str,
    ) -> anyhow::Result<()> {
        for (delay, name) in tiers {
            let mut args = self.arguments();
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(target.into()),
            );
            channel
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..QueueDeclareOptions::default()
                    },
                    args,
                )
                .await
                .with_context(|| format!("declaring delay queue {name}"))?;
        }
        Ok(())
    }

    /// The arguments of a lane's ready queue (mail's work queue, the webhook
    /// queue): those of every queue and, on a quorum queue, the delivery limit.
    fn ready_arguments(&self) -> FieldTable {
        let mut args = self.arguments();
        if self.queue_type == QueueType::Quorum {
            // RabbitMQ 4 gives quorum queues a delivery limit of 20 and then drops
            // (or dead-letters) the job. A job is requeued only while something is
            // unavailable, so the limit is high.
            args.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
        }
        args
    }

    fn arguments(&self) -> FieldTable {
        // Shared by every queue: type and (tests only) expiry.
        let mut args = FieldTable::default();
        let queue_type = self.queue_type.as_str();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(queue_type.into()),
        );
        if let Some(expires) = self.expires {
            let ms = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
        }
        if self.queue_type == QueueType::Quorum {
            // Dead-lettering (a delay tier's expiry back to the work queue) at least
            // once: the job is removed only when the target queue has it. This needs
            // publishes refused, not old jobs dropped, should a queue ever fill up.
            args.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
        }
        args
    }
}

/// The node a connection tries first: the one after the node tried first last time, so
/// that a reconnect after a node's failure starts elsewhere, and the processes of a
/// deployment spread over the nodes.
static NEXT_NODE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Opens an AMQP connection to the first node of `amqp.urls` (or `amqp.url`) that
/// answers, each within `amqp.timeout`. The error names every node's failure.
pub async fn connect(settings: &AmqpSettings, name: &str) -> anyhow::Result<Connection> {
    let addresses = settings.addresses();
    let first = NEXT_NODE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut failures = Vec::new();
    for i in 0..addresses.len() {
        let url = addresses[(first + i) % addresses.len()];
        match connect_to(settings, url, name).await {
            Ok(connection) => {
                if addresses.len() > 1 {
                    tracing::info!(node = %crate::config::redact_url(url), connection = name, "connected to RabbitMQ");
                }
                return Ok(connection);
            }
            Err(e) => failures.push(format!("{e:#}")),
        }
    }
    anyhow::bail!("{}", failures.join("; "))
}

/// Opens an AMQP connection to one node on the tokio runtime, with heartbeats (unless
/// the URL sets its own) and within `amqp.timeout`: a broker that accepts the TCP
/// connection and then says nothing is an error, not a hang.
async fn connect_to(settings: &AmqpSettings, url: &str, name: &str) -> anyhow::Result<Connection> {
    let redacted = crate::config::redact_url(url);
    let mut uri: lapin::uri::AMQPUri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("{redacted} is not an AMQP URL: {e}"))?;
    let query = &mut uri.query;
    query.heartbeat = query
        .heartbeat
        .or_else(|| u16::try_from(settings.heartbeat.as_secs().max(1)).ok());
    query.connection_timeout = query
        .connection_timeout
        .or_else(|| u64::try_from(settings.timeout.as_millis()).ok());
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let connecting = Connection::connect_uri(uri, properties);
    match tokio::time::timeout(settings.timeout, connecting).await {
        Ok(connected) => connected.with_context(|| format!("connecting to RabbitMQ at {redacted}")),
        Err(_) => anyhow::bail!(
            "connecting to RabbitMQ at {redacted}: no answer within {:?} (amqp.timeout)",
            settings.timeout
        ),
    }
}

/// Bounds a broker operation by `amqp.timeout`.
pub async fn within<T>(
    settings: &AmqpSettings,
    what: &str,
    operation: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(settings.timeout, operation)
        .await
        .unwrap_or_else(|_| {
            Err(anyhow::anyhow!(
                "{what}: RabbitMQ did not answer within {:?} (amqp.timeout)",
                settings.timeout
            ))
        })
}
