//! The outbox relay: a message is committed before it is published, so a publish that
//! failed (broker down) or never happened (process killed in between) is repaired
//! here by publishing again from PostgreSQL. RabbitMQ down means late, not lost.

use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::batcher::Batcher;
use crate::config::OutboxSettings;
use crate::queue::{Job, Publisher};
use crate::store::Store;

/// Relays until `shutdown`; also forgets expired idempotency keys.
pub async fn run(
    store: Store,
    publisher: Arc<Publisher>,
    settings: OutboxSettings,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u64 = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        observe(&store, &publisher).await;
        match relay_once(&store, &publisher, &settings).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                relayed = n,
                "outbox: published messages whose publish was not confirmed"
            ),
            Err(e) => tracing::warn!(error = format!("{e:#}"), "outbox relay round failed"),
        }
        rounds += 1;
        if rounds % 300 == 1 {
            match store.purge_idempotency_keys().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(purged = n, "expired idempotency keys removed"),
                Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
            }
        }
    }
}

/// Updates the backlog and queue depth gauges.
async fn observe(store: &Store, publisher: &Publisher) {
    if let Ok(backlog) = store.count_unpublished().await {
        crate::metrics::outbox_backlog(backlog);
    }
    if let Ok(depths) = publisher.queue_depths().await {
        for (queue, messages) in depths {
            crate::metrics::queue_depth(&queue, messages);
        }
    }
}

/// One round: leases a batch of unpublished messages, publishes them (confirms
/// pipelined) outside any transaction, and marks the confirmed ones published.
/// Returns how many were published.
pub async fn relay_once(
    store: &Store,
    publisher: &Publisher,
    settings: &OutboxSettings,
) -> anyhow::Result<usize> {
    // Held long enough for the round's publishes, each bounded by amqp.timeout; a
    // relay that dies mid-round lets them go when the lease runs out.
    let lease = publisher.timeout() * 2;
    let leased = store
        .lease_unpublished(settings.grace, lease, settings.batch)
        .await
        .context("finding unpublished messages")?;
    if leased.is_empty() {
        return Ok(0);
    }
    let jobs: Vec<Job> = leased
        .iter()
        .map(|(id, tenant)| Job::new(*id).of_tenant(tenant))
        .collect();
    let published = publisher.publish_all(&jobs).await;
    if let Some((_, e)) = published.failed.first() {
        tracing::warn!(
            error = format!("{e:#}"),
            unpublished = published.failed.len(),
            "outbox: RabbitMQ still refuses publishes"
        );
        let failed: Vec<Uuid> = published.failed.iter().map(|(id, _)| *id).collect();
        store
            .release_leases(&failed)
            .await
            .context("releasing failed publishes")?;
    }
    store
        .mark_published(&published.ok)
        .await
        .context("marking messages published")?;
    Ok(published.ok.len())
}

/// Records "RabbitMQ confirmed this publish" for many messages with one UPDATE: the
/// hot path hands ids to a background task instead of paying a round trip each. A
/// mark lost in a crash only makes the relay publish that message again, which the
/// worker's claim makes harmless.
#[derive(Clone)]
pub struct PublishedMarks {
    marks: Batcher<Vec<Uuid>, ()>,
}

impl PublishedMarks {
    /// Starts the background writer.
    pub fn start(store: Store) -> PublishedMarks {
        let marks = Batcher::start(64, 1, move |batches: Vec<Vec<Uuid>>| {
            let store = store.clone();
            async move {
                let n = batches.len();
                let ids: Vec<Uuid> = batches.into_iter().flatten().collect();
                if let Err(e) = store.mark_published(&ids).await {
                    tracing::warn!(error = %e, count = ids.len(), "could not record publishes; the relay may publish them again");
                }
                vec![(); n]
            }
        });
        PublishedMarks { marks }
    }

    /// Queues ids to be marked published.
    pub async fn mark(&self, ids: Vec<Uuid>) {
        if ids.is_empty() {
            return;
        }
        if !self.marks.submit(ids).await {
            tracing::warn!("the publish recorder has stopped");
        }
    }
}
