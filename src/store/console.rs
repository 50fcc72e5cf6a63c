//! The SQL of the operator's console (`crate::console`) that the rest of the store does
//! not have: its sessions, the message search, the overview's figures, a message's
//! stored body, and "retry now". Everything else the console shows comes from the
//! same store functions the JSON API uses.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};
use uuid::Uuid;

use super::{ListFilter, MessageSummary, Store};
use crate::domain::Status;

/// A console session, as read on every request.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConsoleSessionRow {
    pub key_id: Uuid,
    /// The public part of the key, to read the key again with `find_api_key`.
    pub key_lookup: String,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

/// What the console's message search filters by: the listing's filters (tenant,
/// status, connection, time bounds, cursor, limit) and the console's own. Every filter
/// is optional; pages continue after `listing.before` (newest first, keyset on the
/// UUIDv7 id).
#[derive(Debug, Default, Clone)]
pub struct MessageSearch {
    pub listing: ListFilter,
    pub id: Option<Uuid>,
    /// A part of one envelope recipient, case-insensitive.
    pub recipient: Option<String>,
    /// A part of the From header, case-insensitive.
    pub sender: Option<String>,
    /// Words that must all appear in the subject, case-insensitive.
    pub subject_words: Vec<String>,
}

/// Events of one kind in one minute (the overview chart).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MinuteCount {
    /// Minutes ago, 0 for the current minute, up to 59.
    pub minutes_ago: i32,
    pub kind: String,
    pub count: i64,
}

/// A worker process and the attempts it has in flight.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WorkerRow {
    pub id: Uuid,
    pub host: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    pub in_flight: i64,
}

/// What became of a "retry now".
#[derive(Debug, PartialEq, Eq)]
pub enum RetryNow {
    /// Made due now; its job is to be published.
    Due,
    NotFound,
    /// Only a deferred (or still queued) message can be retried now.
    Conflict(Status),
}

/// `%`, `_` and `\` taken literally in a LIKE pattern.
fn like_escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('%');
    for c in s.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

impl Store {
    /// Stores a new session of key `key_id` for `ttl`.
    pub async fn insert_console_session(
        &self,
        token_hash: &[u8],
        key_id: Uuid,
        key_lookup: &str,
        csrf: &str,
        ttl: std::time::Duration,
    ) -> Result<(), sqlx::Error> {
        // Expired sessions go whenever a new one comes.
        sqlx::query("DELETE FROM console_sessions WHERE expires_at < now()")
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (token_hash, key_id, key_lookup, csrf, expires_at)
             VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))",
        )
        .bind(token_hash)
        .bind(key_id)
        .bind(key_lookup)
        .bind(csrf)
        .bind(ttl.as_secs_f64())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The unexpired session with this token hash.
    pub async fn console_session(
        &self,
        token_hash: &[u8],
    ) -> Result<Option<ConsoleSessionRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT key_id, key_lookup, csrf, expires_at FROM console_sessions
              WHERE token_hash = $1 AND expires_at > now()",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await
    }

    /// Ends a session (sign out).
    pub async fn delete_console_session(&self, token_hash: &[u8]) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM console_sessions WHERE token_hash = $1")
            .bind(token_hash)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The console's message search: newest first, `limit` at most.
    pub async fn search_messages(
        &self,
        s: &MessageSearch,
    ) -> Result<Vec<MessageSummary>, sqlx::Error> {
        let mut q = QueryBuilder::<Postgres>::new(
            "SELECT id, (SELECT name FROM tenants t WHERE t.id = messages.tenant_id) AS tenant,
                    status, connection, from_addr, subject, attempts, created_at, updated_at, sent_at
               FROM messages WHERE true",
        );
        Self::push_filter(&mut q, &s.listing);
        if let Some(id) = s.id {
            q.push(" AND id = ").push_bind(id);
        }
        if let Some(recipient) = &s.recipient {
            q.push(" AND EXISTS (SELECT 1 FROM unnest(envelope_to) r WHERE r ILIKE ")
                .push_bind(like_escaped(recipient))
                .push(")");
        }
        if let Some(sender) = &s.sender {
            q.push(" AND from_addr ILIKE ")
                .push_bind(like_escaped(sender));
        }
        for word in &s.subject_words {
            q.push(" AND subject ILIKE ").push_bind(like_escaped(word));
        }
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(s.listing.limit));
        q.build_query_as().fetch_all(&self.pool).await
    }

    /// Accepted, attempted, sent, deferred and failed events per minute over the
    /// last hour, of one tenant (`Some`) or all: from PostgreSQL, so every API
    /// process draws the same chart.
    pub async fn events_last_hour(
        &self,
        tenant: Option<Uuid>,
    ) -> Result<Vec<MinuteCount>, sqlx::Error> {
        sqlx::query_as(
            "SELECT (floor(extract(epoch FROM (date_trunc('minute', now()) - date_trunc('minute', e.at))) / 60))::int4
                        AS minutes_ago,
                    e.kind, count(*) AS count
               FROM message_events e
              WHERE e.at >= date_trunc('minute', now()) - interval '59 minutes'
                AND e.kind IN ('accepted', 'sent', 'deferred', 'failed')
                AND ($1::uuid IS NULL OR EXISTS (
                        SELECT 1 FROM messages m WHERE m.id = e.message_id AND m.tenant_id = $1))
              GROUP BY 1, 2",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
    }

    /// Workers with a heartbeat in the last `window`, and their attempts in flight.
    pub async fn live_workers(
        &self,
        window: std::time::Duration,
    ) -> Result<Vec<WorkerRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT w.id, w.host, w.started_at, w.heartbeat_at,
                    (SELECT count(*) FROM messages m
                      WHERE m.status = 'sending' AND m.claimed_by = w.id) AS in_flight
               FROM workers w
              WHERE w.heartbeat_at > now() - make_interval(secs => $1)
              ORDER BY w.started_at",
        )
        .bind(window.as_secs_f64())
        .fetch_all(&self.pool)
        .await
    }

    /// SMTP sessions open now, per connection (their leases).
    pub async fn open_sessions(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        sqlx::query_as(
            "SELECT connection, count(*) FROM smtp_session_leases
              WHERE expires_at > now() GROUP BY connection",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// The rendered message as stored (`None`: no such message for this caller, or
    /// its content was purged by retention).
    pub async fn message_body(
        &self,
        id: Uuid,
        tenant: Option<Uuid>,
    ) -> Result<Option<Vec<u8>>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT b.raw FROM message_bodies b JOIN messages m ON m.id = b.message_id
              WHERE b.message_id = $1 AND ($2::uuid IS NULL OR m.tenant_id = $2)",
        )
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
    }

    /// Retry now: a deferred (or queued) message is made due at once; the caller
    /// publishes its job. The claim never runs before `next_attempt_at`, so the job
    /// still parked in a delay queue finds the message sent, or claims it, whichever
    /// comes first: one attempt either way.
    pub async fn retry_now(&self, id: Uuid, tenant: Option<Uuid>) -> Result<RetryNow, sqlx::Error> {
        let updated = sqlx::query(
            "UPDATE messages SET next_attempt_at = now(), held = false, updated_at = now()
              WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)
                AND status IN ('deferred', 'queued')",
        )
        .bind(id)
        .bind(tenant)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if updated == 1 {
            return Ok(RetryNow::Due);
        }
        Ok(match self.status(id, tenant).await? {
            None => RetryNow::NotFound,
            Some(status) => RetryNow::Conflict(status),
        })
    }

    /// The suppressed addresses of `tenant` containing `part` (case-insensitive), in
    /// address order, `limit` at most.
    pub async fn search_suppressions(
        &self,
        tenant: Uuid,
        part: &str,
        limit: i64,
    ) -> Result<Vec<super::SuppressionRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT address, source, reason, reply, message_id, created_at FROM suppressions
              WHERE tenant_id = $1 AND address ILIKE $2 ORDER BY address LIMIT $3",
        )
        .bind(tenant)
        .bind(like_escaped(part))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// A failed message taken back from the dead-letter queue: queued again, due
    /// now, with a `requeued` event naming `by` (the operator's key) in its history,
    /// written by the same statement. `false` when the message is not failed.
    pub async fn requeue_dead(&self, id: Uuid, by: &str) -> Result<bool, sqlx::Error> {
        Ok(sqlx::query(
            "WITH upd AS (
                UPDATE messages SET status = 'queued', next_attempt_at = now(), held = false,
                       last_error = NULL, updated_at = now()
                 WHERE id = $1 AND status = 'failed'
             RETURNING id)
             INSERT INTO message_events (message_id, kind, detail)
             SELECT id, 'requeued', $2 FROM upd",
        )
        .bind(id)
        .bind(format!("taken back from the dead-letter queue by {by}"))
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_take_wildcards_literally() {
        assert_eq!(like_escaped("a_b%c\\"), "%a\\_b\\%c\\\\%");
    }
}
