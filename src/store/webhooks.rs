//! Webhook endpoints and deliveries. Deliveries are written by the statements that
//! change a message's status (`claims.rs`, `messages.rs`: see [`WEBHOOK_TYPE_OF_EVENT`]
//! and [`hooks_of`]), published to RabbitMQ by whoever wrote them, and read back and
//! settled by the dispatcher (`crate::webhooks`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Store;
use crate::domain::{RecipientResult, SmtpReply};

/// The webhook type of a message event (`message_events.kind`, with whether an
/// attempt was made as `attempted`): SQL shared by the statements that write both.
pub(super) const WEBHOOK_TYPE_OF_EVENT: &str = "CASE event
        WHEN 'sent' THEN 'message.sent'
        WHEN 'failed' THEN 'message.failed'
        WHEN 'expired' THEN 'message.expired'
        WHEN 'suppressed' THEN 'message.suppressed'
        WHEN 'cancelled' THEN 'message.cancelled'
        WHEN 'deferred' THEN CASE WHEN attempted THEN 'message.deferred' END
     END";

/// A `hooks` CTE writing a delivery of webhook type `kind` for every endpoint of the
/// message's tenant subscribed to it, from a CTE `upd` returning the changed message's
/// `id, tenant_id, status, attempts, last_error`; it returns the deliveries' ids.
pub(super) fn hooks_of(kind: &'static str) -> String {
    format!(
        "hooks AS (
            INSERT INTO webhook_deliveries (endpoint_id, message_id, type, status, attempts, error)
            SELECT e.id, upd.id, '{kind}', upd.status, upd.attempts, upd.last_error
              FROM upd JOIN webhook_endpoints e
                ON e.tenant_id = upd.tenant_id AND e.disabled_at IS NULL
               AND '{kind}' = ANY(e.events)
         RETURNING id)"
    )
}

/// A stored endpoint.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    pub secret_enc: Vec<u8>,
    pub previous_secret_enc: Option<Vec<u8>>,
    pub previous_until: Option<DateTime<Utc>>,
    pub failing_since: Option<DateTime<Utc>>,
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ENDPOINT_COLUMNS: &str = "id, tenant_id, url, events, description, secret_enc,
    previous_secret_enc, previous_until, failing_since, disabled_at, disabled_reason,
    created_at, updated_at";

/// A pending delivery, with what its payload is made of.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueWebhook {
    /// The `webhook-id`: the same on every try.
    pub id: Uuid,
    pub endpoint_id: Uuid,
    pub message_id: Uuid,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub occurred_at: DateTime<Utc>,
    pub status: String,
    pub attempts: i32,
    #[sqlx(json(nullable))]
    pub reply: Option<SmtpReply>,
    pub error: Option<String>,
    #[sqlx(json(nullable))]
    pub recipients: Option<Vec<RecipientResult>>,
    pub next_attempt: Option<DateTime<Utc>>,
    /// Tries made before this one.
    pub tries: i32,
    /// Not to be tried before then (a retry's job may come back early).
    pub due_at: DateTime<Utc>,
    /// When its endpoint was last changed (a cached copy older than that is stale).
    pub endpoint_updated_at: DateTime<Utc>,
}

/// How one try of a delivery ended.
#[derive(Debug, Clone)]
pub struct WebhookTry {
    pub http_status: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
    pub succeeded: bool,
    /// When to try again; `None`: no more tries (delivered, or given up).
    pub retry_in: Option<Duration>,
    /// The endpoint is to be disabled, and why (410 Gone, or failing too long).
    pub disable: Option<String>,
}

/// One try, as `GET /v1/webhooks/{id}/attempts` lists it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookAttemptRow {
    pub id: i64,
    pub delivery_id: Uuid,
    pub message_id: Uuid,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub at: DateTime<Utc>,
    pub http_status: Option<i32>,
    pub error: Option<String>,
    pub duration_ms: i32,
    pub succeeded: bool,
}

impl Store {
    pub async fn insert_webhook(&self, w: &WebhookRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, tenant_id, url, events, description, secret_enc)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(w.id)
        .bind(w.tenant_id)
        .bind(&w.url)
        .bind(&w.events)
        .bind(&w.description)
        .bind(&w.secret_enc)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The endpoints `tenant` sees (`None`: every tenant's), oldest first.
    pub async fn list_webhooks(
        &self,
        tenant: Option<Uuid>,
    ) -> Result<Vec<WebhookRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
              WHERE $1::uuid IS NULL OR tenant_id = $1 ORDER BY id"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
    }

    /// One endpoint, if `tenant` sees it.
    pub async fn get_webhook(
        &self,
        id: Uuid,
        tenant: Option<Uuid>,
    ) -> Result<Option<WebhookRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
              WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)"
        ))
        .bind(id)
        .bind(tenant)
        .fetch_optional(&self.pool)
        .await
    }

    /// Endpoints by id, for the dispatcher.
    pub async fn webhooks_by_id(&self, ids: &[Uuid]) -> Result<Vec<WebhookRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await
    }

    /// Saves an endpoint's URL, events, description, secrets and disabled state. A
    /// disabled endpoint's pending deliveries fail with it.
    pub async fn update_webhook(&self, w: &WebhookRow) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE webhook_endpoints
                SET url = $2, events = $3, description = $4, secret_enc = $5,
                    previous_secret_enc = $6, previous_until = $7, disabled_at = $8,
                    disabled_reason = $9, failing_since = $10, updated_at = now()
              WHERE id = $1",
        )
        .bind(w.id)
        .bind(&w.url)
        .bind(&w.events)
        .bind(&w.description)
        .bind(&w.secret_enc)
        .bind(&w.previous_secret_enc)
        .bind(w.previous_until)
        .bind(w.disabled_at)
        .bind(&w.disabled_reason)
        .bind(w.failing_since)
        .execute(&mut *tx)
        .await?;
        if w.disabled_at.is_some() {
            fail_pending(&mut tx, w.id, "the endpoint is disabled").await?;
        }
        tx.commit().await
    }

    /// Deletes an endpoint with its deliveries and their tries; false when `tenant`
    /// sees none such.
    pub async fn delete_webhook(
        &self,
        id: Uuid,
        tenant: Option<Uuid>,
    ) -> Result<bool, sqlx::Error> {
        // No foreign keys lead here (each would cost a query per delivery written),
        // so the rows go with their endpoint explicitly. A delivery written by a
        // transaction that saw the endpoint just before this one is left behind
        // without it: never sent (it is read with its endpoint), purged by retention.
        let deleted: i64 = sqlx::query_scalar(
            "WITH e AS (
                DELETE FROM webhook_endpoints
                 WHERE id = $1 AND ($2::uuid IS NULL OR tenant_id = $2)
             RETURNING id),
             d AS (DELETE FROM webhook_deliveries WHERE endpoint_id IN (SELECT id FROM e)),
             a AS (DELETE FROM webhook_attempts WHERE endpoint_id IN (SELECT id FROM e))
             SELECT count(*) FROM e",
        )
        .bind(id)
        .bind(tenant)
        .fetch_one(&self.pool)
        .await?;
        Ok(deleted == 1)
    }

    /// Retention: up to `batch` deliveries that occurred before `cutoff` and are
    /// settled (or whose endpoint is gone), and up to `batch` tries made before it;
    /// how many rows went.
    pub async fn purge_old_webhooks(
        &self,
        cutoff: DateTime<Utc>,
        batch: i64,
    ) -> Result<u64, sqlx::Error> {
        let purged: i64 = sqlx::query_scalar(
            "WITH d AS (
                DELETE FROM webhook_deliveries WHERE id IN (
                    SELECT d.id FROM webhook_deliveries d
                     WHERE d.occurred_at < $1
                       AND (d.state <> 'pending' OR NOT EXISTS (
                            SELECT 1 FROM webhook_endpoints e WHERE e.id = d.endpoint_id))
                     LIMIT $2 FOR UPDATE SKIP LOCKED)
             RETURNING 1),
             a AS (
                DELETE FROM webhook_attempts WHERE id IN (
                    SELECT id FROM webhook_attempts WHERE at < $1 LIMIT $2)
             RETURNING 1)
             SELECT (SELECT count(*) FROM d) + (SELECT count(*) FROM a)",
        )
        .bind(cutoff)
        .bind(batch)
        .fetch_one(&self.pool)
        .await?;
        Ok(u64::try_from(purged).unwrap_or(0))
    }

    /// The deliveries among `ids` still pending, of endpoints not disabled: what the
    /// dispatcher's jobs stand for (a job whose delivery is settled or gone is
    /// dropped).
    pub async fn pending_webhooks_by_id(
        &self,
        ids: &[Uuid],
    ) -> Result<Vec<DueWebhook>, sqlx::Error> {
        sqlx::query_as(
            // The rows by primary key first: left to itself, the planner (its
            // statistics behind a table that grows by thousands a second) combined
            // the endpoint and pending indexes instead, reading every delivery of the
            // endpoint (28 ms a batch, measured).
            "WITH d AS MATERIALIZED (SELECT * FROM webhook_deliveries WHERE id = ANY($1))
             SELECT d.id, d.endpoint_id, d.message_id, d.type, d.occurred_at, d.status,
                    d.attempts, d.reply, d.error, d.recipients, d.next_attempt, d.tries, d.due_at,
                    e.updated_at AS endpoint_updated_at
               FROM d JOIN webhook_endpoints e ON e.id = d.endpoint_id
              WHERE d.state = 'pending' AND e.disabled_at IS NULL",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
    }

    /// Pending deliveries due more than `grace` ago and not republished within it: their
    /// job was lost (a purged queue, a lost node) or never published. Marked, so that
    /// each is republished at most once per grace.
    pub async fn overdue_webhooks(
        &self,
        grace: Duration,
        limit: i64,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "UPDATE webhook_deliveries d SET reconciled_at = now()
              WHERE d.id IN (
                    SELECT d2.id FROM webhook_deliveries d2
                      JOIN webhook_endpoints e ON e.id = d2.endpoint_id
                     WHERE d2.state = 'pending'
                       AND d2.due_at <= now() - make_interval(secs => $1)
                       AND (d2.reconciled_at IS NULL
                            OR d2.reconciled_at < now() - make_interval(secs => $1))
                       AND e.disabled_at IS NULL
                     ORDER BY d2.due_at LIMIT $2
                       FOR UPDATE OF d2 SKIP LOCKED)
          RETURNING d.id",
        )
        .bind(grace.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Records the tries of a batch, `(delivery, endpoint, outcome)`, in one statement:
    /// the attempts and new states of the deliveries still pending, and the endpoints'
    /// health (written only when it changes: every try touching the endpoint's row
    /// would make concurrent tries wait for each other); then, in a transaction, the
    /// endpoints to disable.
    pub async fn record_webhook_tries(
        &self,
        tries: &[(Uuid, Uuid, WebhookTry)],
    ) -> Result<(), sqlx::Error> {
        let ids: Vec<Uuid> = tries.iter().map(|t| t.0).collect();
        let endpoints: Vec<Uuid> = tries.iter().map(|t| t.1).collect();
        let statuses: Vec<Option<i32>> = tries
            .iter()
            .map(|t| t.2.http_status.map(i32::from))
            .collect();
        let errors: Vec<Option<&str>> = tries.iter().map(|t| t.2.error.as_deref()).collect();
        let millis: Vec<i32> = tries
            .iter()
            .map(|t| i32::try_from(t.2.duration.as_millis()).unwrap_or(i32::MAX))
            .collect();
        let succeeded: Vec<bool> = tries.iter().map(|t| t.2.succeeded).collect();
        let states: Vec<&str> = tries
            .iter()
            .map(|t| match (t.2.succeeded, t.2.retry_in) {
                (true, _) => "delivered",
                (false, Some(_)) => "pending",
                (false, None) => "failed",
            })
            .collect();
        let retry_secs: Vec<f64> = tries
            .iter()
            .map(|t| t.2.retry_in.unwrap_or_default().as_secs_f64())
            .collect();
        // The endpoints' health in the same statement: set when a try failed and it
        // was healthy, cleared when one succeeded and it was failing (for one
        // endpoint, at most one of the two matches its row).
        sqlx::query(
            "WITH t AS (
                SELECT * FROM UNNEST($1::uuid[], $2::uuid[], $3::int4[], $4::text[], $5::int4[],
                                     $6::bool[], $7::text[], $8::float8[])
                    AS t(id, endpoint, status, error, millis, succeeded, state, retry)),
             settled AS (
                UPDATE webhook_deliveries d
                   SET state = t.state, tries = d.tries + 1, last_status = t.status,
                       last_error = t.error, due_at = now() + make_interval(secs => t.retry),
                       delivered_at = CASE WHEN t.state = 'delivered' THEN now() END
                  FROM t WHERE d.id = t.id
                   -- a late try (its worker frozen, its job taken over and settled
                   -- meanwhile, or the endpoint disabled) changes nothing
                   AND d.state = 'pending'
             RETURNING d.id),
             failing AS (
                UPDATE webhook_endpoints SET failing_since = now()
                 WHERE id IN (SELECT endpoint FROM t WHERE NOT succeeded) AND failing_since IS NULL),
             healthy AS (
                UPDATE webhook_endpoints SET failing_since = NULL
                 WHERE id IN (SELECT endpoint FROM t WHERE succeeded) AND failing_since IS NOT NULL)
             -- only for deliveries still there (deleted with their endpoint meanwhile: no
             -- foreign key stops the row)
             INSERT INTO webhook_attempts (delivery_id, endpoint_id, http_status, error, duration_ms, succeeded)
             SELECT t.id, t.endpoint, t.status, t.error, t.millis, t.succeeded
               FROM t JOIN settled ON settled.id = t.id",
        )
        .bind(&ids)
        .bind(&endpoints)
        .bind(&statuses)
        .bind(&errors)
        .bind(&millis)
        .bind(&succeeded)
        .bind(&states)
        .bind(&retry_secs)
        .execute(&self.pool)
        .await?;
        if tries.iter().all(|t| t.2.disable.is_none()) {
            return Ok(());
        }
        // Rare: endpoints to disable (410, or failing too long), with their pending
        // deliveries.
        let mut tx = self.pool.begin().await?;
        for (_, endpoint, outcome) in tries {
            let Some(reason) = &outcome.disable else {
                continue;
            };
            sqlx::query(
                "UPDATE webhook_endpoints SET disabled_at = now(), disabled_reason = $2, updated_at = now()
                  WHERE id = $1 AND disabled_at IS NULL",
            )
            .bind(endpoint)
            .bind(reason)
            .execute(&mut *tx)
            .await?;
            fail_pending(&mut tx, *endpoint, reason).await?;
        }
        tx.commit().await
    }

    /// An endpoint's tries, newest first: all, or only the failed (`Some(false)`) or
    /// succeeded ones, since a time, before a cursor (an attempt id).
    pub async fn list_webhook_attempts(
        &self,
        endpoint: Uuid,
        succeeded: Option<bool>,
        since: Option<DateTime<Utc>>,
        before: Option<i64>,
        limit: i64,
    ) -> Result<Vec<WebhookAttemptRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT a.id, a.delivery_id, d.message_id, d.type, a.at, a.http_status, a.error,
                    a.duration_ms, a.succeeded
               FROM webhook_attempts a JOIN webhook_deliveries d ON d.id = a.delivery_id
              WHERE a.endpoint_id = $1
                AND ($2::bool IS NULL OR a.succeeded = $2)
                AND ($3::timestamptz IS NULL OR a.at >= $3)
                AND ($4::bigint IS NULL OR a.id < $4)
              ORDER BY a.id DESC LIMIT $5",
        )
        .bind(endpoint)
        .bind(succeeded)
        .bind(since)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Makes the failed deliveries of `endpoint` that occurred since `since` due again
    /// (with a fresh retry schedule); their ids, to be published.
    pub async fn recover_webhooks(
        &self,
        endpoint: Uuid,
        since: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "UPDATE webhook_deliveries
                SET state = 'pending', tries = 0, due_at = now(), reconciled_at = NULL
              WHERE endpoint_id = $1 AND state = 'failed' AND occurred_at >= $2
          RETURNING id",
        )
        .bind(endpoint)
        .bind(since)
        .fetch_all(&self.pool)
        .await
    }

    /// Deliveries waiting to be made (for the queue-depth metric).
    pub async fn pending_webhooks(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE state = 'pending'")
            .fetch_one(&self.pool)
            .await
    }
}

async fn fail_pending(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    endpoint: Uuid,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_deliveries SET state = 'failed', last_error = $2
          WHERE endpoint_id = $1 AND state = 'pending'",
    )
    .bind(endpoint)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
