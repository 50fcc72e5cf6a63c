//! The delivery worker: consumes jobs from RabbitMQ, claims each message in PostgreSQL,
//! sends it through the SMTP pools, records the outcome, and parks retries in the
//! delay queues.

mod decide;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use futures_util::StreamExt;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::Uuid;

use crate::batcher::{self, Batcher, DbResult};
use crate::config::{AmqpSettings, RetrySettings, WorkerSettings};
use crate::connections::Directory;
use crate::queue::{Job, Publisher, Topology};
use crate::smtp::{Delivery, Mailer, Outgoing};
use crate::store::{Claim, Outcome, Store};

pub use decide::{Next, RetryPolicy};

/// Processing failures a job may have before it is dead-lettered and its message
/// failed. Only failures of the job itself count: an unavailable PostgreSQL or
/// RabbitMQ, however long, never makes a job poison.
const MAX_PROCESSING_FAILURES: u32 = 8;

/// How long a job waits before it is tried again while PostgreSQL is unavailable.
const UNAVAILABLE_WAIT: Duration = Duration::from_secs(2);

/// Why processing a job did not reach an outcome.
#[derive(Debug)]
enum Trouble {
    /// PostgreSQL cannot be reached (or is overloaded): wait and try again; never
    /// counts towards dead-lettering.
    Unavailable(String),
    /// Anything else: counts towards dead-lettering.
    Failed(anyhow::Error),
}

impl Trouble {
    fn database(what: &str, e: &sqlx::Error) -> Trouble {
        if crate::store::is_unavailable(e) {
            Trouble::Unavailable(format!("{what}: {e}"))
        } else {
            Trouble::Failed(anyhow::anyhow!("{what}: {e}"))
        }
    }
}

/// This worker's view of its own heartbeat. Other workers presume it dead once its
/// heartbeat is `presumed_dead_after` old; it stops starting DATA one heartbeat
/// interval before that, and a delivery that began before a gap in its heartbeat never
/// starts DATA at all, even when the heartbeat has resumed since: a successor may be
/// sending that message already.
struct Liveness {
    last_beat: Mutex<std::time::Instant>,
    /// Bumped by every heartbeat that follows a gap.
    epoch: std::sync::atomic::AtomicU64,
    limit: Duration,
}

impl Liveness {
    fn new(settings: &WorkerSettings) -> Liveness {
        let presumed = settings.presumed_dead_after;
        Liveness {
            last_beat: Mutex::new(std::time::Instant::now()),
            epoch: std::sync::atomic::AtomicU64::new(0),
            limit: presumed
                .saturating_sub(settings.heartbeat_interval)
                .max(presumed / 2),
        }
    }

    /// A heartbeat was recorded.
    fn beat(&self) {
        if let Ok(mut last) = self.last_beat.lock() {
            if last.elapsed() >= self.limit {
                self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            *last = std::time::Instant::now();
        }
    }

    /// Taken when a delivery starts.
    fn ticket(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// True while no gap in the heartbeat happened since `ticket` was taken.
    fn unbroken_since(&self, ticket: u64) -> bool {
        let fresh = self
            .last_beat
            .lock()
            .is_ok_and(|last| last.elapsed() < self.limit);
        fresh && self.ticket() == ticket
    }
}

/// Everything a worker needs; shared by its delivery tasks.
pub struct Worker {
    id: Uuid,
    host: String,
    store: Store,
    connections: Arc<Directory>,
    mailer: Mailer,
    publisher: Publisher,
    amqp: AmqpSettings,
    topology: Topology,
    settings: WorkerSettings,
    policy: RetryPolicy,
    /// Messages this process is attempting right now.
    in_flight: Mutex<HashSet<Uuid>>,
    /// Claims of concurrent deliveries, written together.
    claims: Batcher<Uuid, DbResult<Claim>>,
    /// Outcomes of concurrent deliveries, written together; true when recorded (this
    /// worker still held the claim).
    outcomes: Batcher<(Uuid, i32, Outcome), DbResult<bool>>,
    liveness: Liveness,
}

/// The most claims or outcomes written in one statement.
const MAX_BATCH: usize = 256;

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
        let liveness = Liveness::new(&settings);
        let claims = {
            let store = store.clone();
            let presumed_dead_after = settings.presumed_dead_after;
            Batcher::start(MAX_BATCH, 1, move |ids: Vec<Uuid>| {
                let store = store.clone();
                async move {
                    let claims = store.claim(&ids, id, presumed_dead_after).await;
                    batcher::each(claims, ids.len())
                }
            })
        };
        let outcomes = {
            let store = store.clone();
            Batcher::start(MAX_BATCH, 1, move |batch: Vec<(Uuid, i32, Outcome)>| {
                let store = store.clone();
                async move {
                    let items: Vec<(Uuid, i32, &Outcome)> = batch
                        .iter()
                        .map(|(id, attempt, o)| (*id, *attempt, o))
                        .collect();
                    let result = store.record_outcomes(id, &items).await.map(|recorded| {
                        items.iter().map(|(id, ..)| recorded.contains(id)).collect()
                    });
                    batcher::each(result, items.len())
                }
            })
        };
        Worker {
            id,
            host: hostname(),
            publisher: Publisher::new(amqp.clone(), topology.clone(), "postwire-worker"),
            store,
            connections,
            mailer,
            amqp,
            topology,
            settings,
            policy: RetryPolicy::new(retry),
            in_flight: Mutex::new(HashSet::new()),
            claims,
            outcomes,
            liveness,
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
        self.mailer.close().await;
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
            match self.store.heartbeat(self.id, &self.host).await {
                Ok(()) => self.liveness.beat(),
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
        let span = tracing::info_span!("deliver", message_id = %job.id);
        let next = self.process(job, shutdown).instrument(span.clone()).await;
        let settled = match next {
            Next::Done => Ok(()),
            Next::Park(job, wait) => {
                tracing::debug!(parent: &span, wait = ?wait, "parked");
                self.publisher.park(&job, wait).await
            }
            Next::Dead(job, reason) => {
                // Acknowledged only once the message is failed for good: if that
                // cannot be written now, the job comes back.
                match self.store.fail_unprocessable(job.id, &reason).await {
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

    async fn process(&self, job: Job, shutdown: &CancellationToken) -> Next {
        if let Some(wait) = job.due.and_then(|due| (due - Utc::now()).to_std().ok()) {
            if !wait.is_zero() {
                return Next::Park(job, wait);
            }
        }
        let Some(_guard) = InFlight::enter(&self.in_flight, job.id) else {
            // A duplicate job for a message this process is sending right now.
            return Next::Park(
                job.due_in(self.settings.presumed_dead_after),
                self.settings.presumed_dead_after,
            );
        };
        match self.attempt(job.id, shutdown).await {
            Ok(next) => next,
            Err(Trouble::Unavailable(reason)) => {
                tracing::warn!(error = %reason, retry_in = ?UNAVAILABLE_WAIT, "PostgreSQL unavailable; the job waits (not counted as a failure)");
                Next::Park(job.due_in(UNAVAILABLE_WAIT), UNAVAILABLE_WAIT)
            }
            Err(Trouble::Failed(e)) => {
                let failures = job.failures + 1;
                let reason = format!("{e:#}");
                if failures >= MAX_PROCESSING_FAILURES {
                    return Next::Dead(job, format!("failed {failures} times: {reason}"));
                }
                let wait = Duration::from_millis(250) * 2u32.pow(failures.min(8));
                tracing::warn!(error = %reason, failures, retry_in = ?wait, "processing failed");
                Next::Park(
                    Job {
                        failures,
                        ..job.due_in(wait)
                    },
                    wait,
                )
            }
        }
    }

    async fn attempt(&self, id: Uuid, shutdown: &CancellationToken) -> Result<Next, Trouble> {
        let ticket = self.liveness.ticket();
        let claim = self
            .claims
            .write(id)
            .await
            .map_err(|e| Trouble::database("claiming the message", &e))?;
        let claimed = match claim {
            Claim::Claimed(c) => c,
            Claim::InProgress => {
                // Another live worker has it, or a crashed one that is not yet
                // presumed dead: look again later rather than drop the job.
                let wait = self.settings.presumed_dead_after;
                tracing::info!(recheck_in = ?wait, "being sent by another worker; will check again");
                return Ok(Next::Park(Job::new(id).due_in(wait), wait));
            }
            Claim::NotYet(at) => {
                // Early (a duplicate job, or one republished): never attempted before
                // its time.
                let wait = (at - Utc::now()).to_std().unwrap_or_default();
                tracing::debug!(due = %at, "not due yet; parked");
                return Ok(Next::Park(Job::new(id).due_at(at), wait));
            }
            Claim::Nothing(Some(status)) if !status.is_terminal() => {
                // Claimable by status but not by content: the stored message is gone.
                return Ok(Next::Dead(
                    Job::new(id),
                    "the stored message content is missing".to_owned(),
                ));
            }
            Claim::Nothing(status) => {
                tracing::info!(status = ?status.map(|s| s.as_str()), "nothing to deliver; skipped");
                return Ok(Next::Done);
            }
        };
        let (outcome, next) = if self.policy.expired(&claimed) {
            self.policy.expire(&claimed)
        } else {
            tracing::debug!(connection = %claimed.connection, attempt = claimed.attempt, "sending");
            let started = std::time::Instant::now();
            let delivery = match self.connections.get(&claimed.connection).await {
                Ok(Some(connection)) => {
                    let may_start_data = || self.liveness.unbroken_since(ticket);
                    let message = Outgoing {
                        envelope_from: &claimed.envelope_from,
                        envelope_to: &claimed.envelope_to,
                        raw: &claimed.raw,
                        may_start_data: &may_start_data,
                    };
                    self.mailer.send(&connection, &message).await
                }
                Ok(None) => Delivery::Rejected {
                    reply: None,
                    error: format!(
                        "the SMTP connection {:?} no longer exists",
                        claimed.connection
                    ),
                    recipients: Vec::new(),
                },
                // PostgreSQL or the master key failing is not the message's fault:
                // nothing was sent, no attempt is spent.
                Err(e) => Delivery::Withheld {
                    error: format!("{e:#}"),
                },
            };
            let outcome = self.policy.decide(&claimed, delivery);
            if outcome.0.attempted {
                let code = outcome.0.reply.as_ref().map(|r| r.code);
                crate::metrics::attempt(&claimed.connection, started.elapsed().as_secs_f64(), code);
            }
            outcome
        };
        log_outcome(&claimed.connection, claimed.attempt, &outcome);
        if !self.record(id, claimed.attempt, &outcome, shutdown).await? {
            tracing::warn!(
                attempt = claimed.attempt,
                "this attempt was taken over by another worker (this one was presumed dead); its outcome is not recorded"
            );
            return Ok(Next::Done);
        }
        crate::metrics::message(&claimed.connection, outcome.event);
        Ok(next)
    }

    /// Records an outcome; false when this worker no longer holds the claim. An
    /// unavailable database is waited out for as long as it takes (until shutdown):
    /// after an SMTP 250, an outcome not recorded means the message is sent again.
    async fn record(
        &self,
        id: Uuid,
        attempt: i32,
        outcome: &Outcome,
        shutdown: &CancellationToken,
    ) -> Result<bool, Trouble> {
        let mut wait = Duration::from_millis(100);
        loop {
            match self.outcomes.write((id, attempt, outcome.clone())).await {
                Ok(recorded) => return Ok(recorded),
                Err(e) if crate::store::is_unavailable(&e) && !shutdown.is_cancelled() => {
                    tracing::warn!(error = %e, retry_in = ?wait, "recording the outcome failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = shutdown.cancelled() => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(2));
                }
                Err(e) => return Err(Trouble::database("recording the outcome", &e)),
            }
        }
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

fn log_outcome(connection: &str, attempt: i32, outcome: &Outcome) {
    let reply = outcome.reply.as_ref().map(ToString::to_string);
    match outcome.status {
        crate::domain::Status::Sent => tracing::info!(connection, attempt, reply, "sent"),
        status => tracing::warn!(
            connection,
            attempt,
            status = %status,
            reply,
            error = outcome.error.as_deref().unwrap_or(""),
            next_attempt_at = ?outcome.next_attempt_at,
            "not sent"
        ),
    }
}

/// Marks a message as being attempted by this process for as long as it lives.
struct InFlight<'a> {
    set: &'a Mutex<HashSet<Uuid>>,
    id: Uuid,
}

impl<'a> InFlight<'a> {
    fn enter(set: &'a Mutex<HashSet<Uuid>>, id: Uuid) -> Option<InFlight<'a>> {
        let inserted = set.lock().ok()?.insert(id);
        if !inserted {
            // Not a guard: dropping one would remove the other attempt's entry.
            return None;
        }
        crate::metrics::in_flight(1.0);
        Some(InFlight { set, id })
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut set) = self.set.lock() {
            set.remove(&self.id);
        }
        crate::metrics::in_flight(-1.0);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn liveness(limit_ms: u64) -> Liveness {
        Liveness {
            last_beat: Mutex::new(std::time::Instant::now()),
            epoch: std::sync::atomic::AtomicU64::new(0),
            limit: Duration::from_millis(limit_ms),
        }
    }

    #[test]
    fn data_starts_only_while_the_heartbeat_has_been_unbroken_since_the_claim() {
        let l = liveness(40);
        let ticket = l.ticket();
        assert!(l.unbroken_since(ticket));
        // The heartbeat goes quiet past the limit: no DATA.
        std::thread::sleep(Duration::from_millis(60));
        assert!(!l.unbroken_since(ticket));
        // It resumes: a delivery claimed before the gap still may not start DATA (a
        // successor may have it), one claimed after may.
        l.beat();
        assert!(!l.unbroken_since(ticket));
        assert!(l.unbroken_since(l.ticket()));
    }

    #[test]
    fn regular_heartbeats_keep_the_same_epoch() {
        let l = liveness(1000);
        let ticket = l.ticket();
        for _ in 0..3 {
            l.beat();
        }
        assert!(l.unbroken_since(ticket));
    }
}
