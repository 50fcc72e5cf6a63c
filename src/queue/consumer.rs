//! Consuming one queue with manual acks: the prefetch bounds the jobs in hand, each is
//! handled on its own task, the consumer reconnects after a broker failure, and on
//! shutdown it stops receiving, lets the jobs in hand finish within a grace, then
//! closes the channel so that RabbitMQ hands the rest to another consumer. Shared by
//! the delivery worker and the webhook dispatcher.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::Topology;
use crate::config::AmqpSettings;

/// A consumer of one queue of the topology.
pub struct Consumer {
    pub amqp: AmqpSettings,
    pub topology: Topology,
    /// The queue consumed.
    pub queue: String,
    /// Jobs in hand at once.
    pub prefetch: u16,
    /// The AMQP connection's name (shown in RabbitMQ's management UI).
    pub name: &'static str,
    /// How long jobs in hand may take to finish once shutdown is asked for.
    pub drain: Duration,
}

impl Consumer {
    /// Hands every job to `handle` (on its own task) until `shutdown`, reconnecting
    /// with a backoff after failures. `handle` must ack or nack its delivery.
    pub async fn run<H, F>(&self, shutdown: &CancellationToken, handle: H)
    where
        H: Fn(Delivery) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let slots = Arc::new(Semaphore::new(usize::from(self.prefetch.max(1))));
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            match self.consume(&slots, shutdown, &handle).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(queue = %self.queue, error = format!("{e:#}"), retry_in = ?backoff, "consumer stopped; reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn consume<H, F>(
        &self,
        slots: &Arc<Semaphore>,
        shutdown: &CancellationToken,
        handle: &H,
    ) -> anyhow::Result<()>
    where
        H: Fn(Delivery) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let conn = super::connect(&self.amqp, self.name).await?;
        let channel = conn.create_channel().await.context("opening a channel")?;
        self.topology.declare(&channel).await?;
        channel
            .basic_qos(self.prefetch.max(1), BasicQosOptions::default())
            .await
            .context("setting the prefetch")?;
        let mut consumer = channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming from {}", self.queue))?;
        tracing::info!(queue = %self.queue, prefetch = self.prefetch, "consuming");

        let result = loop {
            let next = tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                next = consumer.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => break Err(anyhow::Error::new(e).context("receiving from RabbitMQ")),
                None => break Err(anyhow::anyhow!("the RabbitMQ consumer was cancelled")),
            };
            let slot = slots
                .clone()
                .acquire_owned()
                .await
                .context("consumer slots closed")?;
            let handled = handle(delivery);
            tokio::spawn(async move {
                handled.await;
                drop(slot);
            });
        };

        // Stop receiving; jobs in hand keep the channel until they ack, then closing
        // it hands anything unacknowledged back to RabbitMQ.
        let _ = channel
            .basic_cancel(consumer.tag(), Default::default())
            .await;
        let all = u32::from(self.prefetch.max(1));
        let grace = if shutdown.is_cancelled() {
            self.drain
        } else {
            Duration::ZERO
        };
        match tokio::time::timeout(grace, slots.acquire_many(all)).await {
            Ok(Ok(permits)) => drop(permits),
            _ if shutdown.is_cancelled() => tracing::warn!(
                queue = %self.queue,
                "jobs still running after the shutdown grace; RabbitMQ will redeliver them"
            ),
            _ => {}
        }
        let _ = channel.close(200, "stopping".into()).await;
        let _ = conn.close(200, "stopping".into()).await;
        result
    }
}

/// Acks when the job's follow-up is durable, else requeues after a pause (so a broken
/// broker or database is not hammered). Both within `amqp.timeout`: on a broker that
/// hangs, the job is redelivered once the connection is known dead.
pub async fn settle(amqp: &AmqpSettings, delivery: &Delivery, follow_up: anyhow::Result<()>) {
    let settled = match follow_up {
        Ok(()) => {
            super::within(amqp, "acknowledging a job", async {
                Ok(delivery.ack(BasicAckOptions::default()).await?)
            })
            .await
        }
        Err(_) => {
            tokio::time::sleep(Duration::from_millis(500)).await;
            super::within(amqp, "requeueing a job", async {
                Ok(delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await?)
            })
            .await
        }
    };
    if let Err(e) = settled {
        tracing::warn!(
            error = format!("{e:#}"),
            "ack/nack failed; RabbitMQ will redeliver"
        );
    }
}
