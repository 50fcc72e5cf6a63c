//! The reconciler's queries: which non-terminal messages have no job they can count
//! on, found on an index and marked so that each is republished at most once per
//! grace period.

use std::time::Duration;

use sqlx::Row;
use uuid::Uuid;

use super::Store;

/// The advisory lock that makes one reconciler pass run at a time per database.
const RECONCILER_LOCK: i64 = 0x706f_7374_7769_7265; // "postwire"

/// Why a message needs a new job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overdue {
    /// A scheduled send that waited in PostgreSQL has fallen due.
    Scheduled,
    /// Queued or deferred, due more than the grace ago, and not claimed: its job was
    /// lost (purged queue, lost broker node) or never published.
    Waiting,
    /// Being sent by a worker that has stopped heartbeating.
    Orphaned,
}

impl Overdue {
    pub fn as_str(self) -> &'static str {
        match self {
            Overdue::Scheduled => "scheduled",
            Overdue::Waiting => "waiting",
            Overdue::Orphaned => "orphaned",
        }
    }
}

/// What one reconciler pass looks for.
#[derive(Debug, Clone, Copy)]
pub struct ReconcileQuery {
    /// How late a job may be before it is presumed lost.
    pub grace: Duration,
    /// A worker silent this long is presumed dead.
    pub presumed_dead_after: Duration,
    /// Whether to take over `sending` messages of silent workers (not right after an
    /// outage, when every heartbeat is old).
    pub orphans: bool,
    /// Most messages in one pass.
    pub limit: u32,
}

impl Store {
    /// One reconciler pass: under a transaction-scoped advisory lock (another process
    /// already on it means `None`), finds the messages that need a job and marks them
    /// reconciled. Publishing is the caller's, outside the transaction; a message
    /// whose publish fails is found again after `grace`.
    pub async fn reconcile(
        &self,
        q: &ReconcileQuery,
    ) -> Result<Option<Vec<(Uuid, String, Overdue)>>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(RECONCILER_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(None);
        }
        let rows = sqlx::query(
            "WITH waiting AS (
                SELECT id, CASE WHEN held THEN 'scheduled' ELSE 'waiting' END AS reason
                  FROM messages
                 WHERE status IN ('queued', 'deferred')
                   AND (next_attempt_at <= now() - make_interval(secs => $1)
                        OR (held AND next_attempt_at <= now()))
                   AND (reconciled_at IS NULL OR reconciled_at < now() - make_interval(secs => $1))
                   -- a disabled tenant's mail waits until it is enabled again
                   AND NOT EXISTS (SELECT 1 FROM tenants t
                                    WHERE t.id = messages.tenant_id AND t.disabled_at IS NOT NULL)
                 ORDER BY next_attempt_at
                 LIMIT $3
                   FOR UPDATE SKIP LOCKED),
             orphaned AS (
                SELECT m.id, 'orphaned' AS reason
                  FROM messages m
                 WHERE $4 AND m.status = 'sending'
                   AND m.claimed_at < now() - make_interval(secs => $2)
                   AND NOT EXISTS (
                        SELECT 1 FROM workers w
                         WHERE w.id = m.claimed_by
                           AND w.heartbeat_at > now() - make_interval(secs => $2))
                   AND (m.reconciled_at IS NULL
                        OR m.reconciled_at < now() - make_interval(secs => $1))
                 LIMIT $3
                   FOR UPDATE SKIP LOCKED),
             found AS (SELECT * FROM waiting UNION ALL SELECT * FROM orphaned)
             UPDATE messages m SET reconciled_at = now(), held = false
               FROM found WHERE m.id = found.id
             RETURNING m.id, found.reason,
                       (SELECT t.name FROM tenants t WHERE t.id = m.tenant_id) AS tenant",
        )
        .bind(q.grace.as_secs_f64())
        .bind(q.presumed_dead_after.as_secs_f64())
        .bind(i64::from(q.limit))
        .bind(q.orphans)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| {
                let reason = match r.try_get::<&str, _>("reason")? {
                    "scheduled" => Overdue::Scheduled,
                    "orphaned" => Overdue::Orphaned,
                    _ => Overdue::Waiting,
                };
                Ok((r.try_get("id")?, r.try_get("tenant")?, reason))
            })
            .collect::<Result<_, sqlx::Error>>()
            .map(Some)
    }
}
