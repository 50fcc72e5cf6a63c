//! The delivery worker: the AMQP adapter over the [`delivery`](crate::delivery)
//! pipeline. Consumes jobs with manual acks and a prefetch of `worker.concurrency`,
//! hands each to the [`Deliverer`], then does what it says with the job (ack, park in a
//! delay queue, dead-letter), and keeps this worker's heartbeat in PostgreSQL.

use std::sync::Arc;

use lapin::message::Delivery as AmqpDelivery;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::config::{AmqpSettings, RetrySettings, WorkerSettings};
use crate::connections::Directory;
use crate::delivery::{Deliverer, Next};
use crate::queue::{Consumer, Job, Publisher, Topology};
use crate::smtp::{Mailer, SessionLeases};
use crate::store::Store;

/// Webhook deliveries written with outcomes, waiting to be published; when this many
/// batches wait (the broker is down), further ones are left to the reconciler.
const WEBHOOK_BACKLOG: usize = 1024;
/// Publishes of webhook jobs awaiting their confirms at once.
const ANNOUNCERS: usize = 8;

/// One worker process's consumer; shared by its delivery tasks.
pub struct Worker {
    id: Uuid,
    host: String,
    store: Store,
    deliverer: Deliverer,
    publisher: Arc<Publisher>,
    amqp: AmqpSettings,
    consumer: Consumer,
    settings: WorkerSettings,
    /// Webhook deliveries written by the outcomes, to publish.
    webhooks: std::sync::Mutex<Option<mpsc::Receiver<Vec<Uuid>>>>,
}

impl Worker {
    pub fn new(
        store: Store,
        connections: Arc<Directory>,
        mailer: Mailer,
        amqp: AmqpSettings,
        settings: WorkerSettings,
        retry: RetrySettings,
        topology: Topology,
    ) -> Worker {
        let id = Uuid::now_v7();
        let (webhooks, written) = mpsc::channel(WEBHOOK_BACKLOG);
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
                webhooks,
            ),
            publisher: Arc::new(Publisher::new(
                amqp.clone(),
                topology.clone(),
                "postwire-worker",
            )),
            consumer: Consumer {
                amqp: amqp.clone(),
                queue: topology.deliver.clone(),
                topology,
                prefetch: settings.concurrency,
                name: "postwire-worker",
                drain: settings.shutdown_timeout,
            },
            store,
            amqp,
            settings,
            webhooks: std::sync::Mutex::new(Some(written)),
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

        let consumed = CancellationToken::new();
        let announcer = self
            .webhooks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .map(|written| {
                tokio::spawn(announce(self.publisher.clone(), written, consumed.clone()))
            });
        let worker = self.clone();
        let token = shutdown.clone();
        self.consumer
            .run(&shutdown, move |delivery| {
                let worker = worker.clone();
                let token = token.clone();
                async move { worker.handle(delivery, &token).await }
            })
            .await;
        // The deliveries' last outcomes are recorded: their webhooks go out too.
        consumed.cancel();
        if let Some(announcer) = announcer {
            let _ = tokio::time::timeout(self.amqp.timeout * 2, announcer).await;
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
                    Ok(webhooks) => {
                        self.publisher.publish_webhooks(&webhooks).await;
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

    async fn settle(&self, delivery: &AmqpDelivery, follow_up: anyhow::Result<()>) {
        crate::queue::settle(&self.amqp, delivery, follow_up).await;
    }
}

/// Publishes the jobs of the webhook deliveries that outcomes wrote: whatever has
/// been written while earlier publishes wait for their confirms goes out together, a
/// few publishes at a time. Stops once `consumed` is cancelled and what was written by
/// then is published.
async fn announce(
    publisher: Arc<Publisher>,
    mut written: mpsc::Receiver<Vec<Uuid>>,
    consumed: CancellationToken,
) {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(ANNOUNCERS));
    let mut batches = Vec::new();
    loop {
        let received = tokio::select! {
            n = written.recv_many(&mut batches, 64) => n,
            () = consumed.cancelled() => {
                while let Ok(ids) = written.try_recv() {
                    batches.push(ids);
                }
                let ids: Vec<Uuid> = batches.drain(..).flatten().collect();
                publisher.publish_webhooks(&ids).await;
                let _ = in_flight.acquire_many(ANNOUNCERS as u32).await;
                return;
            }
        };
        if received == 0 {
            return;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let ids: Vec<Uuid> = batches.drain(..).flatten().collect();
        let publisher = publisher.clone();
        tokio::spawn(async move {
            publisher.publish_webhooks(&ids).await;
            drop(permit);
        });
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
