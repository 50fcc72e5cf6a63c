//! The reconciler: PostgreSQL is the record, and RabbitMQ can always be rebuilt from
//! it. Every `reconcile.interval`, one process (a transaction-scoped advisory lock)
//! finds the non-terminal messages that have no job to count on and publishes one:
//!
//! - queued or deferred, due more than `reconcile.grace` ago, and not claimed: the job
//!   was lost (a purged queue, a lost node, a restored broker) or never published;
//! - scheduled beyond the delay queues and now due (`held`);
//! - being sent by a worker that stopped heartbeating `worker.presumed_dead_after` ago.
//!
//! Each message is republished at most once per grace. A duplicate job is harmless by
//! design: a job whose message is not claimable (sent, being sent, not yet due) does
//! nothing. A lost queue therefore delays mail by at most grace + interval.
//!
//! Webhook deliveries likewise: one pending and due more than `reconcile.grace` ago
//! has lost its job (or never had one published) and gets a new one.
//!
//! Right after an outage every heartbeat is old, and live workers would look dead: the
//! reconciler takes over `sending` messages only once it has reached PostgreSQL
//! without a break for `presumed_dead_after`, time for live workers to heartbeat
//! again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::ReconcileSettings;
use crate::queue::{Job, Publisher};
use crate::store::{Overdue, ReconcileQuery, Store};

/// Runs passes until `shutdown`.
pub async fn run(
    store: Store,
    publisher: Arc<Publisher>,
    settings: ReconcileSettings,
    presumed_dead_after: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reachable_since: Option<Instant> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let query = ReconcileQuery {
            grace: settings.grace,
            presumed_dead_after,
            orphans: reachable_since.is_some_and(|t| t.elapsed() >= presumed_dead_after),
            limit: settings.batch,
        };
        match store.reconcile(&query).await {
            Ok(found) => {
                reachable_since.get_or_insert_with(Instant::now);
                if let Some(found) = found.filter(|f| !f.is_empty()) {
                    republish(&store, &publisher, found).await;
                }
            }
            Err(e) => {
                reachable_since = None;
                tracing::warn!(error = %e, "reconciler pass failed; PostgreSQL unavailable?");
                continue;
            }
        }
        match store
            .overdue_webhooks(settings.grace, i64::from(settings.batch))
            .await
        {
            Ok(ids) if !ids.is_empty() => {
                let published = publisher.publish_webhooks(&ids).await;
                for id in &published.ok {
                    crate::metrics::reconciled("webhook");
                    tracing::info!(webhook_id = %id, "reconciler: webhook job republished");
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reconciler: could not look for overdue webhooks"),
        }
    }
}

/// Publishes a job for each message found; a failed publish is retried by a later
/// pass (the message was marked, so after one grace).
async fn republish(store: &Store, publisher: &Publisher, found: Vec<(Uuid, String, Overdue)>) {
    let jobs: Vec<Job> = found
        .iter()
        .map(|(id, tenant, _)| Job::new(*id).of_tenant(tenant))
        .collect();
    let published = publisher.publish_all(&jobs).await;
    let found: HashMap<Uuid, (String, Overdue)> = found
        .into_iter()
        .map(|(id, tenant, reason)| (id, (tenant, reason)))
        .collect();
    for id in &published.ok {
        let (tenant, reason) = &found[id];
        crate::metrics::reconciled(reason.as_str());
        tracing::info!(message_id = %id, tenant = %tenant, reason = reason.as_str(), "reconciler: job republished");
    }
    for (id, e) in &published.failed {
        let (tenant, reason) = &found[id];
        tracing::warn!(message_id = %id, tenant = %tenant, reason = reason.as_str(), error = format!("{e:#}"), "reconciler: republishing failed; a later pass retries");
    }
    // A message that also waited in the outbox needs no second publish from there.
    if let Err(e) = store.mark_published(&published.ok).await {
        tracing::warn!(error = %e, "reconciler: could not clear outbox rows");
    }
}
