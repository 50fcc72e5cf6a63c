//! Claims and outcomes: the delivery pipeline's writes. A worker claims a message for
//! one attempt and records how it ended; only the claimant of that attempt can.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::Row;
use uuid::Uuid;

use super::webhooks::WEBHOOK_TYPE_OF_EVENT;
use super::Store;
use crate::domain::{Claim, Claimed, Outcome, RecipientResult, SmtpReply, Status};

/// What [`Store::record_outcomes`] wrote.
#[derive(Debug, Default)]
pub struct Recorded {
    /// The messages whose outcome was recorded (their claimant still held them).
    pub messages: Vec<Uuid>,
    /// The webhook deliveries of their new statuses, to be published.
    pub webhooks: Vec<Uuid>,
}

impl Store {
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
        let rows = sqlx::query_as::<_, Claimed>(
            "WITH locked AS MATERIALIZED (
                SELECT id FROM messages WHERE id = ANY($1) ORDER BY id FOR UPDATE)
             UPDATE messages m
                SET status = 'sending', attempts = m.attempts + 1, claimed_at = now(),
                    claimed_by = $2, updated_at = now()
               FROM locked
              WHERE m.id = locked.id
                AND EXISTS (SELECT 1 FROM message_bodies b WHERE b.message_id = m.id)
                -- a disabled tenant's mail waits
                AND NOT EXISTS (SELECT 1 FROM tenants t
                                 WHERE t.id = m.tenant_id AND t.disabled_at IS NOT NULL)
                AND ((m.status IN ('queued', 'deferred')
                      AND (m.next_attempt_at IS NULL OR m.next_attempt_at <= now()))
                     -- this worker's own claim whose outcome was never recorded
                     OR (m.status = 'sending' AND m.claimed_by = $2)
                     OR (m.status = 'sending' AND NOT EXISTS (
                           SELECT 1 FROM workers w
                            WHERE w.id = m.claimed_by
                              AND w.heartbeat_at > now() - make_interval(secs => $3))))
          RETURNING m.id, (SELECT name FROM tenants t WHERE t.id = m.tenant_id) AS tenant,
                    m.connection, m.envelope_from, m.envelope_to, m.attempts, m.created_at,
                    m.send_at, m.expires_at,
                    (SELECT raw FROM message_bodies b WHERE b.message_id = m.id) AS raw,
                    -- recipients on the tenant's suppression list (compared with the
                    -- domain in lower case, as domain::suppression_key keeps them)
                    (SELECT coalesce(json_agg(json_build_object(
                                'address', e, 'since', s.created_at, 'reason', s.reason)),
                            '[]'::json)
                       FROM unnest(m.envelope_to) e
                       JOIN suppressions s
                         ON s.tenant_id = m.tenant_id
                        AND s.address = substring(e FROM '^(.*)@') || '@'
                                        || lower(substring(e FROM '@([^@]*)$'))) AS suppressed",
        )
        .bind(ids)
        .bind(worker)
        .bind(presumed_dead_after.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        let mut claimed: HashMap<Uuid, Claimed> = rows.into_iter().map(|c| (c.id, c)).collect();
        // Whatever was not claimable is explained by its status (a second statement,
        // only for duplicates and stragglers).
        let unclaimed: Vec<Uuid> = ids
            .iter()
            .filter(|id| !claimed.contains_key(id))
            .copied()
            .collect();
        let mut statuses = HashMap::new();
        if !unclaimed.is_empty() {
            let rows: Vec<(Uuid, Status, Option<DateTime<Utc>>, bool)> = sqlx::query_as(
                "SELECT id, status,
                        CASE WHEN next_attempt_at > now() THEN next_attempt_at END AS not_before,
                        EXISTS (SELECT 1 FROM tenants t
                                 WHERE t.id = messages.tenant_id AND t.disabled_at IS NOT NULL)
                   FROM messages WHERE id = ANY($1)",
            )
            .bind(&unclaimed)
            .fetch_all(&self.pool)
            .await?;
            for (id, status, not_before, held) in rows {
                statuses.insert(id, (status, not_before, held));
            }
        }
        Ok(ids
            .iter()
            .map(|id| match claimed.remove(id) {
                Some(c) => Claim::Claimed(c),
                // A second request for the same id in one batch: the first one has it.
                None if !unclaimed.contains(id) => Claim::InProgress,
                None => match statuses.get(id) {
                    Some((status, _, true)) if !status.is_terminal() => Claim::Held,
                    Some((Status::Sending, ..)) => Claim::InProgress,
                    Some((status, Some(at), _)) if !status.is_terminal() => Claim::NotYet(*at),
                    other => Claim::Nothing(other.map(|(status, ..)| *status)),
                },
            })
            .collect())
    }

    /// Records the ends of attempts by `worker`: each message's new state, an
    /// `attempt` event with the reply (when something was attempted) and an event for
    /// the new status, for any number of messages in one statement. Only the
    /// claimant of that very attempt can record it (the message still `sending`,
    /// claimed by `worker`, at that attempt number): a worker that was presumed dead
    /// and taken over never overwrites its successor's outcome. Returns the ids whose
    /// outcome was recorded, and the webhook deliveries written with them.
    pub async fn record_outcomes(
        &self,
        worker: Uuid,
        items: &[(Uuid, i32, &Outcome)],
    ) -> Result<Recorded, sqlx::Error> {
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
        let rows = sqlx::query(&format!(
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
             RETURNING m.id, m.tenant_id, m.attempts),
             ev AS (
                INSERT INTO message_events (message_id, kind, attempt, reply, detail, recipients)
                SELECT t.id, 'attempt', t.attempt, t.reply, t.error, t.recipients
                  FROM t JOIN upd ON upd.id = t.id WHERE t.attempted
                UNION ALL
                SELECT t.id, t.event, CASE WHEN t.attempted THEN t.attempt END, NULL, t.detail, NULL
                  FROM t JOIN upd ON upd.id = t.id),
             -- the webhooks of the new statuses, for every endpoint subscribed
             hooks AS (
                INSERT INTO webhook_deliveries (endpoint_id, message_id, type, status, attempts,
                                                reply, error, recipients, next_attempt)
                SELECT e.id, t.id, k.type, t.status, upd.attempts, t.reply, t.error,
                       t.recipients, t.next_at
                  FROM t JOIN upd ON upd.id = t.id
                 CROSS JOIN LATERAL (
                       SELECT {WEBHOOK_TYPE_OF_EVENT} AS type
                       UNION ALL
                       SELECT 'message.recipient_failed'
                        WHERE t.status = 'sent' AND EXISTS (
                              SELECT 1 FROM jsonb_array_elements(t.recipients) r
                               WHERE NOT (r->>'accepted')::boolean
                                 AND (r->'reply'->>'code')::int >= 500)) k
                  JOIN webhook_endpoints e
                    ON e.tenant_id = upd.tenant_id AND e.disabled_at IS NULL
                   AND k.type = ANY(e.events)
                 WHERE k.type IS NOT NULL
             RETURNING id)
             SELECT id, false AS webhook FROM upd
             UNION ALL SELECT id, true FROM hooks"
        ))
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
        .await?;
        let mut recorded = Recorded::default();
        for row in rows {
            let id = row.try_get("id")?;
            if row.try_get("webhook")? {
                recorded.webhooks.push(id);
            } else {
                recorded.messages.push(id);
            }
        }
        Ok(recorded)
    }

    /// Marks a message that cannot be processed at all (poison) as failed; the webhook
    /// deliveries of its `message.failed`.
    pub async fn fail_unprocessable(
        &self,
        id: Uuid,
        reason: &str,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar(&format!(
            "WITH upd AS (
                UPDATE messages SET status = 'failed', last_error = $2, next_attempt_at = NULL,
                       claimed_at = NULL, claimed_by = NULL, updated_at = now()
                 WHERE id = $1 AND status NOT IN ('sent', 'failed', 'cancelled')
             RETURNING id, tenant_id, status, attempts, last_error),
             ev AS (INSERT INTO message_events (message_id, kind, detail)
                    SELECT id, 'failed', $2 FROM upd),
             {}
             SELECT id FROM hooks",
            super::webhooks::hooks_of("message.failed")
        ))
        .bind(id)
        .bind(reason)
        .fetch_all(&self.pool)
        .await
    }
}
