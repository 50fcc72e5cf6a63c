//! The delivery worker: the AMQP adapter over the [`delivery`](crate::delivery)
//! pipeline. Consumes jobs with manual acks and a prefetch of `worker.concurrency`,
//! hands each to the [`Deliverer`], then does what it says with the job (ack, park in a
//! delay queue, dead-letter), and keeps this worker's heartbeat in PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::{AmqpSettings, RetrySettings, WorkerSettings};
use crate::connections::Directory;
use crate::delivery::{Deliverer, Next};
use crate::queue::{Job, Publisher, Topology};
use crate::smtp::{Mailer, SessionLeases};
use crate::store::Store;

/// One worker process's consumer; shared by its delivery tasks.
pub struct Worker {
    id: Uuid,
    host: String,
    store: Store,
    deliverer: Deliverer,
    publisher: Publisher,
    amqp: AmqpSettings,
    topology: Topology,
    settings: WorkerSettings,
}

impl Worker {
    pub fn new(
        store: Store,
        connections: Arc<Directory>,
        mailer: Mailer,
        amqp: AmqpSettings,
        settings: WorkerSettings,
        retry: RetrySettings,
    ) -> Worker {
        let topology = Topology::new(&amqp, &retry);
        let id = Uuid::now_v7();
        Worker {
            id,
            host: hostname(),
            deliverer: Deliverer::new(
                id,
                store.clone(),
                connections,
                // Sessions count against each connection's cap across all workers.
                mailer.with_session_leases(SessionLeases::new(
                    store.clone(),
                    id,
                    settings.presumed_dead_after,
                )),
                settings.clone(),
                retry,
            ),
            publisher: Publisher::new(amqp.clone(), topology.clone(), "postwire-worker"),
            store,
            amqp,
            topology,
            settings,
        }
    }

    /// Consumes until `shutdown` fires, reconnecting to RabbitMQ after failures. On
    /// shutdown, stops consuming, lets in-flight deliveries finish within
    /// `worker.shutdown_timeout`, then closes the channel so RabbitMQ hands whatever
    /// is left to another worker.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> anyhow::Result<()> {
        if let Err(e) = self.store.register_worker(self.id, &self.host).await {
            tracing::warn!(error = %e, "could not register the worker yet; heartbeats will retry");
        }
        let heartbeat = tokio::spawn(self.clone().heartbeats(shutdown.clone()));
        tracing::info!(worker_id = %self.id, "worker starting");

        let slots = Arc::new(Semaphore::new(usize::from(self.settings.concurrency)));
        let mut backoff = Duration::from_millis(200);
        while !shutdown.is_cancelled() {
            match self.consume(&slots, &shutdown).await {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), retry_in = ?backoff, "consumer stopped; reconnecting");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        heartbeat.abort();
        self.deliverer.close().await;
        self.publisher.close().await;
        if let Err(e) = self.store.unregister_worker(self.id).await {
            tracing::warn!(error = %e, "could not unregister the worker");
        }
        tracing::info!(worker_id = %self.id, "worker stopped");
        Ok(())
    }

    async fn heartbeats(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.settings.heartbeat_interval);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            match self
                .store
                .heartbeat(self.id, &self.host, self.settings.presumed_dead_after)
                .await
            {
                Ok(alive) => {
                    self.deliverer
                        .heartbeat_recorded(usize::try_from(alive).unwrap_or(1))
                        .await
                }
                Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
            }
        }
    }

    async fn consume(
        self: &Arc<Self>,
        slots: &Arc<Semaphore>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let conn = crate::queue::connect(&self.amqp, "postwire-worker").await?;
        let channel = conn.create_channel().await.context("opening a channel")?;
        self.topology.declare(&channel).await?;
        channel
            .basic_qos(self.settings.concurrency, BasicQosOptions::default())
            .await
            .context("setting the prefetch")?;
        let mut consumer = channel
            .basic_consume(
                self.topology.deliver.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("consuming from {}", self.topology.deliver))?;
        tracing::info!(queue = %self.topology.deliver, concurrency = self.settings.concurrency, "worker consuming");

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
                .context("worker slots closed")?;
            let worker = self.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                worker.handle(delivery, &shutdown).await;
                drop(slot);
            });
        };

        // Stop receiving; in-flight deliveries keep the channel until they ack, then
        // closing it hands anything unacknowledged back to RabbitMQ.
        let _ = channel
            .basic_cancel(consumer.tag(), Default::default())
            .await;
        let all = u32::from(self.settings.concurrency);
        let grace = if shutdown.is_cancelled() {
            self.settings.shutdown_timeout
        } else {
            Duration::ZERO
        };
        match tokio::time::timeout(grace, slots.acquire_many(all)).await {
            Ok(Ok(permits)) => drop(permits),
            _ if shutdown.is_cancelled() => tracing::warn!(
                "deliveries still running after worker.shutdown_timeout; RabbitMQ will redeliver them"
            ),
            _ => {}
        }
        let _ = channel.close(200, "worker stopping".into()).await;
        let _ = conn.close(200, "worker stopping".into()).await;
        result
    }

    /// Handles one queue message. It is acknowledged only once its consequence is
    /// durable: the outcome recorded, the message found terminal, or the retry parked
    /// with a confirm. Anything else requeues it.
    async fn handle(&self, delivery: AmqpDelivery, shutdown: &CancellationToken) {
        let job = match Job::decode(&delivery.data, &delivery.properties) {
            Ok(job) => job,
            Err(reason) => {
                tracing::error!(reason = %reason, "undecodable delivery job; dead-lettered");
                let parked = self
                    .publisher
                    .dead_letter_raw(&delivery.data, &reason)
                    .await;
                self.settle(&delivery, parked).await;
                return;
            }
        };
        let span =
            tracing::info_span!("deliver", message_id = %job.id, tenant = tracing::field::Empty);
        // From the job until the claim reads it from PostgreSQL (jobs published
        // before tenants existed carry none).
        if let Some(tenant) = &job.tenant {
            span.record("tenant", tenant.as_str());
        }
        let next = self
            .deliverer
            .process(job, shutdown)
            .instrument(span.clone())
            .await;
        let settled = match next {
            Next::Done => Ok(()),
            Next::Park(job, wait) => {
                tracing::debug!(parent: &span, wait = ?wait, "parked");
                self.publisher.park(&job, wait).await
            }
            Next::Dead(job, reason) => {
                // Acknowledged only once the message is failed for good: if that
                // cannot be written now, the job comes back.
                match self.deliverer.give_up(job.id, &reason).await {
                    Ok(()) => {
                        tracing::error!(parent: &span, reason = %reason, "cannot be processed; dead-lettered and failed");
                        self.publisher.dead_letter(&job, &reason).await
                    }
                    Err(e) => Err(anyhow::Error::new(e).context("marking the message failed")),
                }
            }
        };
        if let Err(e) = &settled {
            tracing::warn!(parent: &span, error = format!("{e:#}"), "could not queue the follow-up; requeued");
        }
        self.settle(&delivery, settled).await;
    }

    /// Acks when the follow-up is durable, else requeues after a pause (so a broken
    /// broker or database is not hammered). Both within `amqp.timeout`: on a broker
    /// that hangs, the job is redelivered once the connection is known dead.
    async fn settle(&self, delivery: &AmqpDelivery, follow_up: anyhow::Result<()>) {
        let settled = match follow_up {
            Ok(()) => {
                crate::queue::within(&self.amqp, "acknowledging a job", async {
                    Ok(delivery.ack(BasicAckOptions::default()).await?)
                })
                .await
            }
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(500)).await;
                crate::queue::within(&self.amqp, "requeueing a job", async {
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
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
