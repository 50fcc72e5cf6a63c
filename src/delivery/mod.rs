//! The delivery pipeline: claim → send → decide → record → schedule. For one job, a
//! [`Deliverer`] claims the message in PostgreSQL (never before it is due, never one a
//! live worker holds), sends it through the SMTP pools (DATA only while this worker's
//! heartbeat is unbroken), turns the result into an outcome and a next step
//! ([`RetryPolicy`]), and records the outcome as the claimant of that attempt. The AMQP
//! consume loop ([`crate::worker`]) is an adapter over it.

mod decide;
mod liveness;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::batcher::{self, Batcher, DbResult};
use crate::config::{RetrySettings, WorkerSettings};
use crate::connections::Directory;
use crate::domain::{
    is_address_failure, suppression_key, Claim, Claimed, Outcome, RecipientResult,
};
use crate::queue::Job;
use crate::smtp::{Delivery, Mailer, Outgoing};
use crate::store::Store;
use tokio::sync::mpsc::error::TrySendError;

pub use decide::{Next, RetryPolicy};
pub(crate) use liveness::Liveness;

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

/// The most claims or outcomes written in one statement.
const MAX_BATCH: usize = 256;

/// Delivers messages for one worker process; shared by its delivery tasks.
pub struct Deliverer {
    store: Store,
    connections: Arc<Directory>,
    mailer: Mailer,
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

impl Deliverer {
    /// A deliverer claiming as worker `id`.
    pub fn new(
        id: Uuid,
        store: Store,
        connections: Arc<Directory>,
        mailer: Mailer,
        settings: WorkerSettings,
        retry: RetrySettings,
        webhooks: tokio::sync::mpsc::Sender<Vec<Uuid>>,
    ) -> Deliverer {
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
                let webhooks = webhooks.clone();
                async move {
                    let items: Vec<(Uuid, i32, &Outcome)> = batch
                        .iter()
                        .map(|(id, attempt, o)| (*id, *attempt, o))
                        .collect();
                    let result = store.record_outcomes(id, &items).await.map(|recorded| {
                        // Published by the worker; if it cannot keep up (the broker is
                        // down), the reconciler publishes them from PostgreSQL.
                        if !recorded.webhooks.is_empty() {
                            if let Err(e) = webhooks.try_send(recorded.webhooks) {
                                let n = match &e {
                                    TrySendError::Full(ids) | TrySendError::Closed(ids) => ids.len(),
                                };
                                tracing::warn!(webhooks = n, "webhook jobs not published (the broker is behind); the reconciler will");
                            }
                        }
                        items
                            .iter()
                            .map(|(id, ..)| recorded.messages.contains(id))
                            .collect()
                    });
                    batcher::each(result, items.len())
                }
            })
        };
        Deliverer {
            liveness: Liveness::new(&settings),
            store,
            connections,
            mailer,
            settings,
            policy: RetryPolicy::new(retry),
            in_flight: Mutex::new(HashSet::new()),
            claims,
            outcomes,
        }
    }

    /// This worker's heartbeat was recorded, and `alive` workers share the
    /// connections' session slots; what the workers recorded of throttling is read.
    pub(crate) async fn heartbeat_recorded(&self, alive: usize) {
        self.liveness.beat();
        self.mailer.heartbeat_recorded(alive);
        self.mailer.refresh_throttles().await;
    }

    /// Marks a message that cannot be processed at all (poison) as failed; its job may
    /// be dead-lettered only once this is written. The webhook deliveries written.
    pub async fn give_up(&self, id: Uuid, reason: &str) -> Result<Vec<Uuid>, sqlx::Error> {
        self.store.fail_unprocessable(id, reason).await
    }

    /// Says QUIT to every idle SMTP session (on shutdown).
    pub async fn close(&self) {
        self.mailer.close().await;
    }

    /// Processes one job: claims its message, sends it, records the outcome, and says
    /// what becomes of the job.
    pub async fn process(&self, job: Job, shutdown: &CancellationToken) -> Next {
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
        match self.attempt(&job, shutdown).await {
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

    async fn attempt(&self, job: &Job, shutdown: &CancellationToken) -> Result<Next, Trouble> {
        let id = job.id;
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
                return Ok(Next::Park(job.renewed().due_in(wait), wait));
            }
            Claim::NotYet(at) => {
                // Early (a duplicate job, or one republished): never attempted before
                // its time.
                let wait = (at - Utc::now()).to_std().unwrap_or_default();
                tracing::debug!(due = %at, "not due yet; parked");
                return Ok(Next::Park(job.renewed().due_at(at), wait));
            }
            Claim::Held => {
                tracing::info!(
                    "the tenant is disabled; the message waits in PostgreSQL until it is enabled"
                );
                return Ok(Next::Done);
            }
            Claim::Nothing(Some(status)) if !status.is_terminal() => {
                // Claimable by status but not by content: the stored message is gone.
                return Ok(Next::Dead(
                    job.renewed(),
                    "the stored message content is missing".to_owned(),
                ));
            }
            Claim::Nothing(status) => {
                tracing::info!(status = ?status.map(|s| s.as_str()), "nothing to deliver; skipped");
                return Ok(Next::Done);
            }
        };
        // Every later line about this message says whose it is.
        tracing::Span::current().record("tenant", claimed.tenant.as_str());
        // Suppressed recipients are left out; with none left, no session is opened.
        let suppressed: HashSet<&str> = claimed
            .suppressed
            .iter()
            .map(|s| s.address.as_str())
            .collect();
        let envelope_to: Vec<String> = claimed
            .envelope_to
            .iter()
            .filter(|to| !suppressed.contains(to.as_str()))
            .cloned()
            .collect();
        let (outcome, next) = if self.policy.expired(&claimed) {
            self.policy.expire(&claimed)
        } else if envelope_to.is_empty() {
            self.policy.suppress(&claimed)
        } else {
            tracing::debug!(connection = %claimed.connection, attempt = claimed.attempt, "sending");
            let started = std::time::Instant::now();
            let delivery = match self.connections.get(&claimed.connection).await {
                Ok(Some(connection)) => {
                    let may_start_data = || self.liveness.unbroken_since(ticket);
                    let message = Outgoing {
                        envelope_from: &claimed.envelope_from,
                        envelope_to: &envelope_to,
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
            let mut outcome = self.policy.decide(&claimed, delivery);
            outcome
                .0
                .recipients
                .extend(claimed.suppressed.iter().map(RecipientResult::suppressed));
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
        crate::metrics::message(&claimed.tenant, &claimed.connection, outcome.event);
        self.suppress_bounced(&claimed, &outcome).await;
        Ok(next)
    }

    /// Puts the recipients the server refused as bad addresses on the tenant's
    /// suppression list. Not waited out like the outcome: a list missing an entry
    /// costs one more refusal later, nothing more.
    async fn suppress_bounced(&self, claimed: &Claimed, outcome: &Outcome) {
        let bounced: Vec<_> = outcome
            .recipients
            .iter()
            .filter(|r| !r.accepted)
            .filter_map(|r| {
                let reply = r.reply.as_ref().filter(|reply| is_address_failure(reply))?;
                Some((suppression_key(&r.address), reply.clone()))
            })
            .collect();
        if bounced.is_empty() {
            return;
        }
        match self
            .store
            .suppress_bounced(&claimed.tenant, claimed.id, &bounced)
            .await
        {
            Ok(()) => {
                for (address, reply) in &bounced {
                    tracing::info!(address = %address, reply = %reply, "address refused as bad: suppressed");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not add refused addresses to the suppression list")
            }
        }
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
        // While PostgreSQL is unreachable, try again (100 ms doubling to 2 s) until it
        // answers or the process stops; any other error ends the attempt.
        let backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(Duration::from_secs(2))
            .without_max_times();
        let stop = shutdown.clone();
        let sleep = move |wait: Duration| {
            let stop = stop.clone();
            async move {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.cancelled() => {}
                }
            }
        };
        (|| self.outcomes.write((id, attempt, outcome.clone())))
            .retry(backoff)
            .sleep(sleep)
            .when(|e| crate::store::is_unavailable(e) && !shutdown.is_cancelled())
            .notify(|e, wait| {
                tracing::warn!(error = %e, retry_in = ?wait, "recording the outcome failed; retrying");
            })
            .await
            .map_err(|e| Trouble::database("recording the outcome", &e))
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
