//! Publishing with confirms over one shared channel, reopened after a broker failure.
//! Every publish, with its confirm, is bounded by `amqp.timeout`: a broker that hangs
//! (a partition, flow control) fails the publish, and the channel is dropped so that
//! the next publish connects afresh.

use anyhow::{anyhow, Context};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::{Job, Topology};
use crate::config::AmqpSettings;

/// The most webhook deliveries one job carries.
const WEBHOOKS_PER_JOB: usize = 64;

/// What a job is for: a message to deliver, or a webhook delivery to send. Each lane
/// has its own ready queue and delay tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Mail,
    Webhooks,
}

/// The outcome of [`Publisher::publish_all`].
#[derive(Debug, Default)]
pub struct Published {
    /// Confirmed by the broker.
    pub ok: Vec<Uuid>,
    /// Not confirmed: the job may or may not be queued.
    pub failed: Vec<(Uuid, anyhow::Error)>,
}

/// Publishes delivery jobs. Concurrent publishes share one confirm-mode channel, so
/// their confirms are pipelined rather than waited for one at a time.
pub struct Publisher {
    settings: AmqpSettings,
    topology: Topology,
    name: String,
    state: Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    pub fn new(settings: AmqpSettings, topology: Topology, name: &str) -> Publisher {
        Publisher {
            settings,
            topology,
            name: name.to_owned(),
            state: Mutex::new(None),
        }
    }

    /// The bound of one broker operation (`amqp.timeout`).
    pub fn timeout(&self) -> std::time::Duration {
        self.settings.timeout
    }

    /// Publishes the delivery job of message `id` and waits for the broker's confirm.
    /// An error means the job may not be queued: the outbox relay will publish it.
    pub async fn publish(&self, id: Uuid) -> anyhow::Result<()> {
        self.enqueue(&Job::new(id)).await
    }

    /// Publishes many jobs, their confirms pipelined on the one channel; which made it
    /// and which did not (with why).
    pub async fn publish_all(&self, jobs: &[Job]) -> Published {
        self.publish_all_in(Lane::Mail, jobs).await
    }

    /// Publishes the jobs of webhook deliveries `ids`, their confirms pipelined. What
    /// fails is logged, not retried: the deliveries are in PostgreSQL, and the
    /// reconciler publishes those that wait too long.
    pub async fn publish_webhooks(&self, ids: &[Uuid]) -> Published {
        let jobs: Vec<Job> = ids
            .chunks(WEBHOOKS_PER_JOB)
            .filter_map(Job::of_ids)
            .collect();
        let published = self.publish_all_in(Lane::Webhooks, &jobs).await;
        if let Some((id, e)) = published.failed.first() {
            tracing::warn!(webhook_id = %id, failed = published.failed.len(), error = format!("{e:#}"), "could not publish webhook jobs; the reconciler will");
        }
        published
    }

    /// [`Publisher::publish_all`] in a lane.
    pub async fn publish_all_in(&self, lane: Lane, jobs: &[Job]) -> Published {
        let results =
            futures_util::future::join_all(jobs.iter().map(|j| self.enqueue_in(lane, j))).await;
        let mut published = Published::default();
        for (job, result) in jobs.iter().zip(results) {
            match result {
                Ok(()) => published.ok.push(job.id),
                Err(e) => published.failed.push((job.id, e)),
            }
        }
        published
    }

    /// Publishes a job: to the work queue when it is due, else parked in the delay
    /// queue that fits the wait until it is.
    pub async fn enqueue(&self, job: &Job) -> anyhow::Result<()> {
        self.enqueue_in(Lane::Mail, job).await
    }

    /// [`Publisher::enqueue`] in a lane.
    pub async fn enqueue_in(&self, lane: Lane, job: &Job) -> anyhow::Result<()> {
        match job
            .due
            .and_then(|due| (due - chrono::Utc::now()).to_std().ok())
        {
            Some(wait) if !wait.is_zero() => self.park_in(lane, job, wait).await,
            _ => self.send(job, self.topology.ready(lane), None).await,
        }
    }

    /// Parks a job in the delay queue that fits `wait` (its `due` says when it is
    /// really due; the worker parks it again if it comes back early).
    pub async fn park(&self, job: &Job, wait: std::time::Duration) -> anyhow::Result<()> {
        self.park_in(Lane::Mail, job, wait).await
    }

    /// [`Publisher::park`] in a lane.
    pub async fn park_in(
        &self,
        lane: Lane,
        job: &Job,
        wait: std::time::Duration,
    ) -> anyhow::Result<()> {
        self.send(job, self.topology.tier_for(lane, wait), None)
            .await
    }

    /// Moves a job that cannot be processed to the dead-letter queue.
    pub async fn dead_letter(&self, job: &Job, reason: &str) -> anyhow::Result<()> {
        self.send(job, &self.topology.dead, Some(reason)).await
    }

    /// Publishes raw bytes to the dead-letter queue (a job that did not even decode).
    pub async fn dead_letter_raw(&self, body: &[u8], reason: &str) -> anyhow::Result<()> {
        let properties = Job::new(Uuid::nil()).properties(Some(reason));
        self.publish_within(&self.topology.dead, body, properties)
            .await
    }

    async fn send(&self, job: &Job, queue: &str, reason: Option<&str>) -> anyhow::Result<()> {
        self.publish_within(queue, &job.body(), job.properties(reason))
            .await
    }

    /// One publish and its confirm within `amqp.timeout`.
    async fn publish_within(
        &self,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        let channel = super::within(&self.settings, "opening a channel", self.channel()).await?;
        let published = self.publish_on(&channel, queue, body, properties);
        let result = match tokio::time::timeout(self.settings.timeout, published).await {
            Ok(result) => result,
            Err(_) => {
                // No confirm: the broker hangs. Whatever this channel still owes,
                // a fresh connection is the way forward.
                self.forget(&channel).await;
                return Err(anyhow!(
                    "publishing to {queue}: no confirm from RabbitMQ within {:?} (amqp.timeout)",
                    self.settings.timeout
                ));
            }
        };
        self.forget_if_broken(&channel, &result).await;
        result
    }

    /// Drops `channel` (and its connection) if it is still the current one.
    async fn forget(&self, channel: &Channel) {
        let mut state = self.state.lock().await;
        if state
            .as_ref()
            .is_some_and(|(_, ch)| ch.id() == channel.id())
        {
            if let Some((conn, _)) = state.take() {
                // Closing a hung connection may hang too: not on this task.
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        std::time::Duration::from_secs(1),
                        conn.close(200, "no answer".into()),
                    )
                    .await;
                });
            }
        }
    }

    async fn forget_if_broken(&self, channel: &Channel, result: &anyhow::Result<()>) {
        if result.is_err() && !channel.status().connected() {
            // Drop the dead channel so the next publish reconnects.
            let mut state = self.state.lock().await;
            if state
                .as_ref()
                .is_some_and(|(_, ch)| ch.id() == channel.id())
            {
                *state = None;
            }
        }
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        queue: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> anyhow::Result<()> {
        let started = std::time::Instant::now();
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .context("publishing to RabbitMQ")?
            .await
            .context("waiting for RabbitMQ's publisher confirm")?;
        crate::metrics::publish_confirm(started.elapsed().as_secs_f64());
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => Err(anyhow!(
                "RabbitMQ returned the message: queue {queue} does not exist"
            )),
            Confirmation::Nack(_) => Err(anyhow!("RabbitMQ refused the message (nack)")),
            Confirmation::NotRequested => Err(anyhow!("the channel is not in confirm mode")),
        }
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        let mut state = self.state.lock().await;
        if let Some((conn, channel)) = state.as_ref() {
            if conn.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        *state = None;
        let conn = super::connect(&self.settings, &self.name).await?;
        let channel = conn.create_channel().await.context("opening a channel")?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        self.topology.declare(&channel).await?;
        *state = Some((conn, channel.clone()));
        Ok(channel)
    }

    /// Ready messages in the work, dead-letter and webhook queues.
    pub async fn queue_depths(&self) -> anyhow::Result<Vec<(String, u32)>> {
        super::within(&self.settings, "inspecting the queues", self.depths()).await
    }

    async fn depths(&self) -> anyhow::Result<Vec<(String, u32)>> {
        let channel = self.channel().await?;
        let mut depths = Vec::new();
        for queue in [
            &self.topology.deliver,
            &self.topology.dead,
            &self.topology.webhooks,
        ] {
            let declared = channel
                .queue_declare(
                    queue.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await
                .with_context(|| format!("inspecting queue {queue}"))?;
            depths.push((queue.clone(), declared.message_count()));
        }
        Ok(depths)
    }

    /// True when the broker answers a request on the publishing channel within two
    /// seconds (readiness: a connection that merely looks open is not enough).
    pub async fn ping(&self) -> bool {
        let probe = async {
            let channel = self.channel().await?;
            let probed = channel
                .queue_declare(
                    self.topology.deliver.as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    Default::default(),
                )
                .await;
            let result = probed.map(drop).map_err(anyhow::Error::from);
            self.forget_if_broken(&channel, &result).await;
            result
        };
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), probe).await,
            Ok(Ok(()))
        )
    }

    /// Closes the connection (on shutdown).
    pub async fn close(&self) {
        if let Some((conn, _)) = self.state.lock().await.take() {
            let _ = tokio::time::timeout(
                self.settings.timeout,
                conn.close(200, "shutting down".into()),
            )
            .await;
        }
    }
}
