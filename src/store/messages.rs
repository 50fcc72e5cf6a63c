//! Messages and their events: accepting (with the idempotency key, in one
//! transaction), looking up, cancelling.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::Row;
use uuid::Uuid;

use super::Store;
use crate::domain::{RecipientResult, Recipients, SmtpReply, Status};

/// A message being accepted.
#[derive(Debug)]
pub struct NewMessageRow<'a> {
    pub id: Uuid,
    /// The tenant of the key that sent it.
    pub tenant_id: Uuid,
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
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRecord {
    pub id: Uuid,
    /// The name of the tenant whose message it is.
    pub tenant: String,
    pub status: Status,
    pub connection: String,
    pub from_addr: String,
    #[sqlx(json)]
    pub recipients: Recipients,
    pub subject: String,
    pub message_id: String,
    pub size: i32,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[sqlx(json(nullable))]
    pub last_reply: Option<SmtpReply>,
    pub last_error: Option<String>,
    #[sqlx(json(nullable))]
    pub recipient_results: Option<Vec<RecipientResult>>,
    pub metadata: serde_json::Value,
    pub send_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// One entry of a message's history.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EventRecord {
    pub kind: String,
    pub at: DateTime<Utc>,
    pub attempt: Option<i32>,
    #[sqlx(json(nullable))]
    pub reply: Option<SmtpReply>,
    pub detail: Option<String>,
    #[sqlx(json(nullable))]
    pub recipients: Option<Vec<RecipientResult>>,
}

/// What became of a cancel request.
#[derive(Debug, PartialEq, Eq)]
pub enum Cancel {
    /// Cancelled: the message's tenant and connection.
    /// Cancelled: the message's tenant and connection, and the webhook deliveries of
    /// its `message.cancelled` (to be published).
    Cancelled {
        tenant: String,
        connection: String,
        webhooks: Vec<Uuid>,
    },
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
    let tenants: Vec<Uuid> = messages.iter().map(|m| m.tenant_id).collect();
    let details: Vec<Option<String>> = messages.iter().map(accepted_detail).collect();
    sqlx::query(
        "WITH t AS (
            SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::text[],
                                 $6::jsonb[], $7::text[], $8::text[], $9::int4[], $10::bytea[],
                                 $11::jsonb[], $12::timestamptz[], $13::timestamptz[],
                                 $14::bool[], $15::text[], $16::uuid[])
                AS t(id, connection, from_addr, recipients, envelope_from, envelope_to,
                     subject, message_id, size, raw, metadata, send_at, expires_at, held,
                     detail, tenant_id)),
         m AS (
            INSERT INTO messages (id, status, connection, from_addr, recipients,
                envelope_from, envelope_to, subject, message_id, size, metadata,
                send_at, expires_at, held, next_attempt_at, tenant_id)
            SELECT t.id, 'queued', t.connection, t.from_addr, t.recipients, t.envelope_from,
                   ARRAY(SELECT jsonb_array_elements_text(t.envelope_to)),
                   t.subject, t.message_id, t.size, t.metadata,
                   t.send_at, t.expires_at, t.held, COALESCE(t.send_at, now()), t.tenant_id
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
    .bind(&tenants)
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

/// `$tenant` is the tenant whose messages the caller sees, NULL for every tenant's
/// (an operator): another tenant's message is as absent as one that never existed.
const MESSAGE_COLUMNS: &str =
    "id, (SELECT name FROM tenants t WHERE t.id = messages.tenant_id) AS tenant, status, connection, from_addr, recipients, subject, message_id, \
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

    /// The status of a message the caller sees, whatever it is (used to explain a
    /// refused cancel).
    pub async fn status(
        &self,
        id: Uuid,
        tenant: Option<Uuid>,
    ) -> Result<Option<Status>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT status FROM messages WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)",
        )
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
    }

    /// Cancels a message that has not been sent and is not being sent.
    pub async fn cancel(&self, id: Uuid, tenant: Option<Uuid>) -> Result<Cancel, sqlx::Error> {
        let cancelled: Option<(String, String, Vec<Uuid>)> = sqlx::query_as(&format!(
            "WITH upd AS (
                UPDATE messages SET status = 'cancelled', next_attempt_at = NULL, updated_at = now()
                 WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)
                   AND status IN ('queued', 'deferred')
             RETURNING id, connection, tenant_id, status, attempts, last_error),
             ev AS (INSERT INTO message_events (message_id, kind) SELECT id, 'cancelled' FROM upd),
             {}
             SELECT t.name, upd.connection,
                    ARRAY(SELECT id FROM hooks) AS webhooks
               FROM upd JOIN tenants t ON t.id = upd.tenant_id",
            super::webhooks::hooks_of("message.cancelled")
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await?;
        if let Some((tenant, connection, webhooks)) = cancelled {
            return Ok(Cancel::Cancelled {
                tenant,
                connection,
                webhooks,
            });
        }
        Ok(match self.status(id, tenant).await? {
            None => Cancel::NotFound,
            Some(status) => Cancel::Conflict(status),
        })
    }

    /// Messages by id (a webhook round's), whoever's.
    pub async fn get_messages(&self, ids: &[Uuid]) -> Result<Vec<MessageRecord>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await
    }

    /// One message by id, if the caller sees it.
    pub async fn get_message(
        &self,
        id: Uuid,
        tenant: Option<Uuid>,
    ) -> Result<Option<MessageRecord>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
              WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
    }

    /// A message's history, oldest first; `None` when the caller sees no such message.
    pub async fn events(
        &self,
        id: Uuid,
        tenant: Option<Uuid>,
    ) -> Result<Option<Vec<EventRecord>>, sqlx::Error> {
        let events: Vec<EventRecord> = sqlx::query_as(
            "SELECT e.kind, e.at, e.attempt, e.reply, e.detail, e.recipients
               FROM message_events e JOIN messages m ON m.id = e.message_id
              WHERE e.message_id = $1 AND ($2::uuid IS NULL OR m.tenant_id = $2)
              ORDER BY e.id",
        )
        .bind(id)
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        // Every message has an `accepted` event, so no rows means no message.
        Ok((!events.is_empty()).then_some(events))
    }
}
