//! Messages and their events.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::Row;
use uuid::Uuid;

use super::{status_of, Store};
use crate::domain::{RecipientResult, Recipients, SmtpReply, Status};

/// A message being accepted.
#[derive(Debug)]
pub struct NewMessageRow<'a> {
    pub id: Uuid,
    pub connection: &'a str,
    pub from_addr: &'a str,
    pub recipients: &'a Recipients,
    pub envelope_from: &'a str,
    pub envelope_to: &'a [String],
    pub subject: &'a str,
    pub message_id: &'a str,
    pub raw: &'a [u8],
    pub metadata: &'a std::collections::BTreeMap<String, String>,
    /// `SendAt`: the first attempt is not before this.
    pub send_at: Option<DateTime<Utc>>,
    /// `ExpiresAt`: failed as expired if not sent by then.
    pub expires_at: Option<DateTime<Utc>>,
    /// No job is published now: the message waits in PostgreSQL until `send_at`, and
    /// the reconciler publishes it then.
    pub held: bool,
}

/// A message as the status lookup shows it.
#[derive(Debug, Clone)]
pub struct MessageRecord {
    pub id: Uuid,
    pub status: Status,
    pub connection: String,
    pub from_addr: String,
    pub recipients: Recipients,
    pub subject: String,
    pub message_id: String,
    pub size: i32,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_reply: Option<SmtpReply>,
    pub last_error: Option<String>,
    pub recipient_results: Option<Vec<RecipientResult>>,
    pub metadata: serde_json::Value,
    pub send_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// One entry of a message's history.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub kind: String,
    pub at: DateTime<Utc>,
    pub attempt: Option<i32>,
    pub reply: Option<SmtpReply>,
    pub detail: Option<String>,
    pub recipients: Option<Vec<RecipientResult>>,
}

/// A message claimed by a worker for one attempt.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: Uuid,
    pub connection: String,
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    pub raw: Vec<u8>,
    /// 1 for the first attempt.
    pub attempt: i32,
    pub created_at: DateTime<Utc>,
    /// When the message first became due: its `SendAt`, else its acceptance.
    pub send_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The result of trying to claim a message.
#[derive(Debug)]
pub enum Claim {
    /// This worker now owns the attempt.
    Claimed(Claimed),
    /// Another worker, alive as far as PostgreSQL knows, is sending it right now.
    InProgress,
    /// Waiting, but not due before this time (a duplicate or early job).
    NotYet(DateTime<Utc>),
    /// Nothing to do: the message is terminal (or does not exist).
    Nothing(Option<Status>),
}

/// What became of a cancel request.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancel {
    /// Cancelled; the message's connection.
    Cancelled(String),
    NotFound,
    /// Too late: the message is in this state.
    Conflict(Status),
}

/// An `Idempotency-Key` to record with an accepted send.
#[derive(Debug)]
pub struct IdempotencyRecord<'a> {
    pub scope: &'a str,
    pub key: &'a str,
    pub request_hash: &'a [u8],
    /// The answer given to the first request, replayed to later ones.
    pub response: &'a serde_json::Value,
    pub ttl: std::time::Duration,
}

/// What became of an accept.
#[derive(Debug)]
pub enum Accept {
    Committed,
    /// The key was used before with the same body: this was its answer.
    Replay(serde_json::Value),
    /// The key was used before with a different body.
    KeyReused,
}

/// How an attempt ended, as it is recorded.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    /// The history entry for the new status: the status itself, or `expired`.
    pub event: &'static str,
    pub reply: Option<SmtpReply>,
    pub error: Option<String>,
    pub recipients: Vec<RecipientResult>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// False when nothing was sent (connection paused, message expired): the claim's
    /// attempt is given back and no `attempt` event is written.
    pub attempted: bool,
}

/// Inserts messages and their `accepted` events in one statement, however many.
async fn insert_messages(
    conn: &mut sqlx::PgConnection,
    messages: &[NewMessageRow<'_>],
) -> Result<(), sqlx::Error> {
    let ids: Vec<Uuid> = messages.iter().map(|m| m.id).collect();
    let connections: Vec<&str> = messages.iter().map(|m| m.connection).collect();
    let from_addrs: Vec<&str> = messages.iter().map(|m| m.from_addr).collect();
    let recipients: Vec<Json<&Recipients>> = messages.iter().map(|m| Json(m.recipients)).collect();
    let envelope_from: Vec<&str> = messages.iter().map(|m| m.envelope_from).collect();
    // Arrays of arrays must be rectangular in PostgreSQL: envelopes travel as JSON.
    let envelope_to: Vec<Json<&[String]>> = messages.iter().map(|m| Json(m.envelope_to)).collect();
    let subjects: Vec<&str> = messages.iter().map(|m| m.subject).collect();
    let message_ids: Vec<&str> = messages.iter().map(|m| m.message_id).collect();
    let sizes: Vec<i32> = messages
        .iter()
        .map(|m| i32::try_from(m.raw.len()).unwrap_or(i32::MAX))
        .collect();
    let raws: Vec<&[u8]> = messages.iter().map(|m| m.raw).collect();
    let metadata: Vec<Json<_>> = messages.iter().map(|m| Json(m.metadata)).collect();
    let send_at: Vec<Option<DateTime<Utc>>> = messages.iter().map(|m| m.send_at).collect();
    let expires_at: Vec<Option<DateTime<Utc>>> = messages.iter().map(|m| m.expires_at).collect();
    let held: Vec<bool> = messages.iter().map(|m| m.held).collect();
    let details: Vec<Option<String>> = messages.iter().map(accepted_detail).collect();
    sqlx::query(
        "WITH t AS (
            SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::text[],
                                 $6::jsonb[], $7::text[], $8::text[], $9::int4[], $10::bytea[],
                                 $11::jsonb[], $12::timestamptz[], $13::timestamptz[],
                                 $14::bool[], $15::text[])
                AS t(id, connection, from_addr, recipients, envelope_from, envelope_to,
                     subject, message_id, size, raw, metadata, send_at, expires_at, held,
                     detail)),
         m AS (
            INSERT INTO messages (id, status, connection, from_addr, recipients,
                envelope_from, envelope_to, subject, message_id, size, metadata,
                send_at, expires_at, held, next_attempt_at)
            SELECT t.id, 'queued', t.connection, t.from_addr, t.recipients, t.envelope_from,
                   ARRAY(SELECT jsonb_array_elements_text(t.envelope_to)),
                   t.subject, t.message_id, t.size, t.metadata,
                   t.send_at, t.expires_at, t.held, COALESCE(t.send_at, now())
              FROM t
            RETURNING id, held),
         b AS (INSERT INTO message_bodies (message_id, raw) SELECT t.id, t.raw FROM t JOIN m ON m.id = t.id),
         o AS (INSERT INTO outbox (message_id) SELECT id FROM m WHERE NOT m.held)
         INSERT INTO message_events (message_id, kind, detail)
         SELECT t.id, 'accepted', t.detail FROM t JOIN m ON m.id = t.id",
    )
    .bind(&ids)
    .bind(&connections)
    .bind(&from_addrs)
    .bind(&recipients)
    .bind(&envelope_from)
    .bind(&envelope_to)
    .bind(&subjects)
    .bind(&message_ids)
    .bind(&sizes)
    .bind(&raws)
    .bind(&metadata)
    .bind(&send_at)
    .bind(&expires_at)
    .bind(&held)
    .bind(&details)
    .execute(conn)
    .await?;
    Ok(())
}

/// The `accepted` event's detail: the schedule, when the send has one.
fn accepted_detail(m: &NewMessageRow<'_>) -> Option<String> {
    let parts: Vec<String> = [
        m.send_at
            .map(|t| format!("scheduled for {}", t.to_rfc3339())),
        m.expires_at
            .map(|t| format!("expires at {}", t.to_rfc3339())),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

const MESSAGE_COLUMNS: &str =
    "id, status, connection, from_addr, recipients, subject, message_id, \
     size, attempts, next_attempt_at, last_reply, last_error, recipient_results, metadata, \
     send_at, expires_at, created_at, updated_at, sent_at";

impl Store {
    /// Commits accepted messages with their `accepted` events, and the idempotency key
    /// when there is one, all or nothing. A key seen before is answered from its record
    /// instead; a concurrent first use waits for the other request's transaction.
    pub async fn accept(
        &self,
        messages: &[NewMessageRow<'_>],
        idempotency: Option<&IdempotencyRecord<'_>>,
    ) -> Result<Accept, sqlx::Error> {
        let Some(key) = idempotency else {
            // One statement is atomic by itself: no transaction round trips needed.
            let mut conn = self.pool.acquire().await?;
            insert_messages(&mut conn, messages).await?;
            return Ok(Accept::Committed);
        };
        let mut tx = self.pool.begin().await?;
        {
            sqlx::query(
                "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2 AND expires_at <= now()",
            )
            .bind(key.scope)
            .bind(key.key)
            .execute(&mut *tx)
            .await?;
            let inserted = sqlx::query(
                "INSERT INTO idempotency_keys (scope, key, request_hash, response, expires_at)
                 VALUES ($1, $2, $3, $4, now() + make_interval(secs => $5))
                 ON CONFLICT (scope, key) DO NOTHING",
            )
            .bind(key.scope)
            .bind(key.key)
            .bind(key.request_hash)
            .bind(key.response)
            .bind(key.ttl.as_secs_f64())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                let row = sqlx::query(
                    "SELECT request_hash, response FROM idempotency_keys WHERE scope = $1 AND key = $2",
                )
                .bind(key.scope)
                .bind(key.key)
                .fetch_one(&mut *tx)
                .await?;
                let hash: Vec<u8> = row.try_get("request_hash")?;
                return Ok(if hash == key.request_hash {
                    Accept::Replay(row.try_get("response")?)
                } else {
                    Accept::KeyReused
                });
            }
        }
        insert_messages(&mut tx, messages).await?;
        tx.commit().await?;
        Ok(Accept::Committed)
    }

    /// Records that RabbitMQ confirmed the publish of these messages, so the outbox
    /// relay leaves them alone.
    pub async fn mark_published(&self, ids: &[Uuid]) -> Result<(), sqlx::Error> {
        Store::mark_published_with(&self.pool, ids).await
    }

    /// [`Store::mark_published`] on a given connection or transaction (the relay's).
    pub async fn mark_published_with<'e>(
        executor: impl sqlx::PgExecutor<'e>,
        ids: &[Uuid],
    ) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM outbox WHERE message_id = ANY($1)")
            .bind(ids)
            .execute(executor)
            .await?;
        Ok(())
    }

    /// Claims messages for an attempt by `worker`, answering one [`Claim`] per id, in
    /// order. A `queued` or `deferred` message can be claimed once it is due (never
    /// before its `next_attempt_at`), and so can one left in `sending` by a worker
    /// that stopped heartbeating `presumed_dead_after` ago (it crashed mid-attempt).
    /// Anything else is reported, not claimed, so a duplicate or early queue delivery
    /// finds nothing to do now.
    ///
    /// One statement for all of them: concurrent deliveries share the commit. Rows
    /// are locked in id order, as [`Store::record_outcomes`] does, so two workers'
    /// batches can never deadlock on each other.
    pub async fn claim(
        &self,
        ids: &[Uuid],
        worker: Uuid,
        presumed_dead_after: std::time::Duration,
    ) -> Result<Vec<Claim>, sqlx::Error> {
        let rows = sqlx::query(
            "WITH locked AS MATERIALIZED (
                SELECT id FROM messages WHERE id = ANY($1) ORDER BY id FOR UPDATE)
             UPDATE messages m
                SET status = 'sending', attempts = m.attempts + 1, claimed_at = now(),
                    claimed_by = $2, updated_at = now()
               FROM locked
              WHERE m.id = locked.id
                AND EXISTS (SELECT 1 FROM message_bodies b WHERE b.message_id = m.id)
                AND ((m.status IN ('queued', 'deferred')
                      AND (m.next_attempt_at IS NULL OR m.next_attempt_at <= now()))
                     -- this worker's own claim whose outcome was never recorded
                     OR (m.status = 'sending' AND m.claimed_by = $2)
                     OR (m.status = 'sending' AND NOT EXISTS (
                           SELECT 1 FROM workers w
                            WHERE w.id = m.claimed_by
                              AND w.heartbeat_at > now() - make_interval(secs => $3))))
          RETURNING m.id, m.connection, m.envelope_from, m.envelope_to, m.attempts, m.created_at,
                    m.send_at, m.expires_at,
                    (SELECT raw FROM message_bodies b WHERE b.message_id = m.id) AS raw",
        )
        .bind(ids)
        .bind(worker)
        .bind(presumed_dead_after.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        let mut claimed = HashMap::with_capacity(rows.len());
        for r in rows {
            let id: Uuid = r.try_get("id")?;
            claimed.insert(
                id,
                Claimed {
                    id,
                    connection: r.try_get("connection")?,
                    envelope_from: r.try_get("envelope_from")?,
                    envelope_to: r.try_get("envelope_to")?,
                    raw: r.try_get("raw")?,
                    attempt: r.try_get("attempts")?,
                    created_at: r.try_get("created_at")?,
                    send_at: r.try_get("send_at")?,
                    expires_at: r.try_get("expires_at")?,
                },
            );
        }
        // Whatever was not claimable is explained by its status (a second statement,
        // only for duplicates and stragglers).
        let unclaimed: Vec<Uuid> = ids
            .iter()
            .filter(|id| !claimed.contains_key(id))
            .copied()
            .collect();
        let mut statuses = HashMap::new();
        if !unclaimed.is_empty() {
            let rows = sqlx::query(
                "SELECT id, status,
                        CASE WHEN next_attempt_at > now() THEN next_attempt_at END AS not_before
                   FROM messages WHERE id = ANY($1)",
            )
            .bind(&unclaimed)
            .fetch_all(&self.pool)
            .await?;
            for r in rows {
                let not_before: Option<DateTime<Utc>> = r.try_get("not_before")?;
                statuses.insert(r.try_get::<Uuid, _>("id")?, (status_of(&r)?, not_before));
            }
        }
        Ok(ids
            .iter()
            .map(|id| match claimed.remove(id) {
                Some(c) => Claim::Claimed(c),
                // A second request for the same id in one batch: the first one has it.
                None if !unclaimed.contains(id) => Claim::InProgress,
                None => match statuses.get(id) {
                    Some((Status::Sending, _)) => Claim::InProgress,
                    Some((status, Some(at))) if !status.is_terminal() => Claim::NotYet(*at),
                    other => Claim::Nothing(other.map(|(status, _)| *status)),
                },
            })
            .collect())
    }

    /// The status of a message, whatever it is (used to explain a refused cancel).
    pub async fn status(&self, id: Uuid) -> Result<Option<Status>, sqlx::Error> {
        sqlx::query("SELECT status FROM messages WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| status_of(&r))
            .transpose()
    }

    /// Records the ends of attempts by `worker`: each message's new state, an
    /// `attempt` event with the reply (when something was attempted) and an event for
    /// the new status, for any number of messages in one statement. Only the
    /// claimant of that very attempt can record it (the message still `sending`,
    /// claimed by `worker`, at that attempt number): a worker that was presumed dead
    /// and taken over never overwrites its successor's outcome. Returns the ids whose
    /// outcome was recorded.
    pub async fn record_outcomes(
        &self,
        worker: Uuid,
        items: &[(Uuid, i32, &Outcome)],
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        let detail = |o: &Outcome| match (o.next_attempt_at, &o.error) {
            (Some(t), Some(e)) => Some(format!("next attempt at {}: {e}", t.to_rfc3339())),
            (Some(t), None) => Some(format!("next attempt at {}", t.to_rfc3339())),
            (None, e) => e.clone(),
        };
        let ids: Vec<Uuid> = items.iter().map(|i| i.0).collect();
        let attempts: Vec<i32> = items.iter().map(|i| i.1).collect();
        let statuses: Vec<&str> = items.iter().map(|i| i.2.status.as_str()).collect();
        let replies: Vec<Option<Json<&SmtpReply>>> =
            items.iter().map(|i| i.2.reply.as_ref().map(Json)).collect();
        let errors: Vec<Option<&str>> = items.iter().map(|i| i.2.error.as_deref()).collect();
        let recipients: Vec<Option<Json<&Vec<RecipientResult>>>> = items
            .iter()
            .map(|i| (!i.2.recipients.is_empty()).then_some(Json(&i.2.recipients)))
            .collect();
        let next: Vec<Option<DateTime<Utc>>> = items.iter().map(|i| i.2.next_attempt_at).collect();
        let details: Vec<Option<String>> = items.iter().map(|i| detail(i.2)).collect();
        let attempted: Vec<bool> = items.iter().map(|i| i.2.attempted).collect();
        let events: Vec<&str> = items.iter().map(|i| i.2.event).collect();
        sqlx::query(
            "WITH t AS (
                SELECT * FROM UNNEST($1::uuid[], $2::int4[], $3::text[], $4::jsonb[], $5::text[],
                                     $6::jsonb[], $7::timestamptz[], $8::text[], $9::bool[], $10::text[])
                    AS t(id, attempt, status, reply, error, recipients, next_at, detail, attempted, event)),
             -- rows locked in id order, as claims lock them: no deadlock between batches
             locked AS MATERIALIZED (
                SELECT id FROM messages WHERE id = ANY($1) ORDER BY id FOR UPDATE),
             upd AS (
                UPDATE messages m
                   SET status = t.status, last_reply = COALESCE(t.reply, m.last_reply),
                       last_error = t.error, recipient_results = COALESCE(t.recipients, m.recipient_results),
                       next_attempt_at = t.next_at, claimed_at = NULL, claimed_by = NULL,
                       updated_at = now(),
                       attempts = m.attempts - CASE WHEN t.attempted THEN 0 ELSE 1 END,
                       sent_at = CASE WHEN t.status = 'sent' THEN now() ELSE m.sent_at END
                  FROM t JOIN locked ON locked.id = t.id
                 WHERE m.id = t.id AND m.status = 'sending'
                   AND m.claimed_by = $11 AND m.attempts = t.attempt
             RETURNING m.id),
             ev AS (
                INSERT INTO message_events (message_id, kind, attempt, reply, detail, recipients)
                SELECT t.id, 'attempt', t.attempt, t.reply, t.error, t.recipients
                  FROM t JOIN upd ON upd.id = t.id WHERE t.attempted
                UNION ALL
                SELECT t.id, t.event, CASE WHEN t.attempted THEN t.attempt END, NULL, t.detail, NULL
                  FROM t JOIN upd ON upd.id = t.id)
             SELECT id FROM upd",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&statuses)
        .bind(&replies)
        .bind(&errors)
        .bind(&recipients)
        .bind(&next)
        .bind(&details)
        .bind(&attempted)
        .bind(&events)
        .bind(worker)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get("id"))
        .collect()
    }

    /// Cancels a message that has not been sent and is not being sent.
    pub async fn cancel(&self, id: Uuid) -> Result<Cancel, sqlx::Error> {
        let cancelled: Option<String> = sqlx::query_scalar(
            "WITH upd AS (
                UPDATE messages SET status = 'cancelled', next_attempt_at = NULL, updated_at = now()
                 WHERE id = $1 AND status IN ('queued', 'deferred')
             RETURNING id, connection),
             ev AS (INSERT INTO message_events (message_id, kind) SELECT id, 'cancelled' FROM upd)
             SELECT connection FROM upd",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(connection) = cancelled {
            return Ok(Cancel::Cancelled(connection));
        }
        Ok(match self.status(id).await? {
            None => Cancel::NotFound,
            Some(status) => Cancel::Conflict(status),
        })
    }

    /// Marks a message that cannot be processed at all (poison) as failed.
    pub async fn fail_unprocessable(&self, id: Uuid, reason: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "WITH upd AS (
                UPDATE messages SET status = 'failed', last_error = $2, next_attempt_at = NULL,
                       claimed_at = NULL, claimed_by = NULL, updated_at = now()
                 WHERE id = $1 AND status NOT IN ('sent', 'failed', 'cancelled')
             RETURNING id)
             INSERT INTO message_events (message_id, kind, detail) SELECT id, 'failed', $2 FROM upd",
        )
        .bind(id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One message by id.
    pub async fn get_message(&self, id: Uuid) -> Result<Option<MessageRecord>, sqlx::Error> {
        let row = sqlx::query(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| message_from_row(&r)).transpose()
    }

    /// A message's history, oldest first; `None` when the message does not exist.
    pub async fn events(&self, id: Uuid) -> Result<Option<Vec<EventRecord>>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT kind, at, attempt, reply, detail, recipients
               FROM message_events WHERE message_id = $1 ORDER BY id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        if rows.is_empty() {
            // Every message has an `accepted` event, so no rows means no message.
            return Ok(None);
        }
        rows.iter()
            .map(|r| {
                Ok(EventRecord {
                    kind: r.try_get("kind")?,
                    at: r.try_get("at")?,
                    attempt: r.try_get("attempt")?,
                    reply: r
                        .try_get::<Option<Json<SmtpReply>>, _>("reply")?
                        .map(|j| j.0),
                    detail: r.try_get("detail")?,
                    recipients: r
                        .try_get::<Option<Json<Vec<RecipientResult>>>, _>("recipients")?
                        .map(|j| j.0),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map(Some)
    }
}

fn message_from_row(r: &sqlx::postgres::PgRow) -> Result<MessageRecord, sqlx::Error> {
    Ok(MessageRecord {
        id: r.try_get("id")?,
        status: status_of(r)?,
        connection: r.try_get("connection")?,
        from_addr: r.try_get("from_addr")?,
        recipients: r.try_get::<Json<Recipients>, _>("recipients")?.0,
        subject: r.try_get("subject")?,
        message_id: r.try_get("message_id")?,
        size: r.try_get("size")?,
        attempts: r.try_get("attempts")?,
        next_attempt_at: r.try_get("next_attempt_at")?,
        last_reply: r
            .try_get::<Option<Json<SmtpReply>>, _>("last_reply")?
            .map(|j| j.0),
        last_error: r.try_get("last_error")?,
        recipient_results: r
            .try_get::<Option<Json<Vec<RecipientResult>>>, _>("recipient_results")?
            .map(|j| j.0),
        metadata: r.try_get("metadata")?,
        send_at: r.try_get("send_at")?,
        expires_at: r.try_get("expires_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        sent_at: r.try_get("sent_at")?,
    })
}
