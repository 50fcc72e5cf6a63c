//! Publishing with confirms over one shared channel, reopened after a broker failure.

use anyhow::{anyhow, Context};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::Confirmation;
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::{Job, Topology};
use crate::config::AmqpSettings;

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

    /// Publishes the delivery job of message `id` and waits for the broker's confirm.
    /// An error means the job may not be queued: the outbox relay will publish it.
    pub async fn publish(&self, id: Uuid) -> anyhow::Result<()> {
        self.send(&Job::new(id), &self.topology.deliver, None).await
    }

    /// Parks a job in the delay queue that fits `wait` (its `due` says when it is
    /// really due; the worker parks it again if it comes back early).
    pub async fn park(&self, job: &Job, wait: std::time::Duration) -> anyhow::Result<()> {
        self.send(job, self.topology.tier_for(wait), None).await
    }

    /// Moves a job that cannot be processed to the dead-letter queue.
    pub async fn dead_letter(&self, job: &Job, reason: &str) -> anyhow::Result<()> {
        self.send(job, &self.topology.dead, Some(reason)).await
    }

    /// Publishes raw bytes to the dead-letter queue (a job that did not even decode).
    pub async fn dead_letter_raw(&self, body: &[u8], reason: &str) -> anyhow::Result<()> {
        let channel = self.channel().await?;
        let properties = Job::new(Uuid::nil()).properties(Some(reason));
        let result = self
            .publish_on(&channel, &self.topology.dead, body, properties)
            .await;
        self.forget_if_broken(&channel, &result).await;
        result
    }

    async fn send(&self, job: &Job, queue: &str, reason: Option<&str>) -> anyhow::Result<()> {
        let channel = self.channel().await?;
        let result = self
            .publish_on(&channel, queue, &job.body(), job.properties(reason))
            .await;
        self.forget_if_broken(&channel, &result).await;
        result
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

    /// Ready messages in the work and dead-letter queues.
    pub async fn queue_depths(&self) -> anyhow::Result<Vec<(String, u32)>> {
        let channel = self.channel().await?;
        let mut depths = Vec::new();
        for queue in [&self.topology.deliver, &self.topology.dead] {
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
            let _ = conn.close(200, "shutting down".into()).await;
        }
    }
}
