//! RabbitMQ: the work queue. Durable queues, persistent messages, publisher confirms
//! on the way in, manual acknowledgements on the way out.

mod job;
mod publisher;

pub use job::Job;
pub use publisher::Publisher;

use std::time::Duration;

use anyhow::Context;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ConnectionProperties};

use crate::config::{AmqpSettings, QueueType, RetrySettings};

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
    queue_type: QueueType,
    expires: Option<Duration>,
}

impl Topology {
    pub fn new(settings: &AmqpSettings, retry: &RetrySettings) -> Topology {
        let prefix = &settings.queue_prefix;
        Topology {
            deliver: format!("{prefix}.deliver"),
            dead: format!("{prefix}.dead"),
            tiers: tier_delays(retry)
                .into_iter()
                .map(|d| (d, format!("{prefix}.delay.{}ms", d.as_millis())))
                .collect(),
            queue_type: settings.queue_type,
            expires: settings.queue_expires,
        }
    }

    /// The delay queue for a wait: the longest tier not longer than `wait`, so a job
    /// is never early; the remainder is waited out in further, shorter hops. Waits
    /// below the shortest tier use the shortest.
    pub fn tier_for(&self, wait: Duration) -> &str {
        self.tiers
            .iter()
            .rev()
            .find(|(d, _)| *d <= wait)
            .or(self.tiers.first())
            .map(|(_, name)| name.as_str())
            .unwrap_or(&self.deliver)
    }

    /// Declares every queue (idempotent; both roles do it at start and after a
    /// reconnect, so neither depends on the other having run first).
    pub async fn declare(&self, channel: &Channel) -> anyhow::Result<()> {
        channel
            .queue_declare(
                self.deliver.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                self.arguments(),
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
        for (delay, name) in &self.tiers {
            let mut args = self.arguments();
            let ttl = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString("".into()),
            );
            args.insert(
                "x-dead-letter-routing-key".into(),
                AMQPValue::LongString(self.deliver.as_str().into()),
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

    fn arguments(&self) -> FieldTable {
        // Shared by every queue: type and (tests only) expiry.
        let mut args = FieldTable::default();
        let queue_type = match self.queue_type {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        };
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(queue_type.into()),
        );
        if let Some(expires) = self.expires {
            let ms = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
            args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
        }
        args
    }
}

/// Opens an AMQP connection on the tokio runtime.
pub async fn connect(settings: &AmqpSettings, name: &str) -> anyhow::Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(&settings.url, properties)
        .await
        .with_context(|| {
            format!(
                "connecting to RabbitMQ at {}",
                crate::config::redact_url(&settings.url)
            )
        })
}
