//! The outbox (messages committed but not yet confirmed published to RabbitMQ) and
//! the idempotency keys' expiry: the accept pipeline's bookkeeping.

use std::time::Duration;

use uuid::Uuid;

use super::Store;

impl Store {
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

    /// Leases up to `limit` messages committed more than `grace` ago whose publish
    /// RabbitMQ never confirmed, oldest first, for `lease`: two relays never take the
    /// same ones, and the relay publishes outside any transaction. A message whose
    /// publish fails again is taken again when its lease runs out. Each comes with its
    /// tenant's name.
    pub async fn lease_unpublished(
        &self,
        grace: Duration,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<(Uuid, String)>, sqlx::Error> {
        sqlx::query_as(
            "UPDATE outbox o SET leased_until = now() + make_interval(secs => $2)
               FROM (SELECT message_id FROM outbox
                      WHERE created_at < now() - make_interval(secs => $1)
                        AND (leased_until IS NULL OR leased_until < now())
                      ORDER BY created_at
                      LIMIT $3
                        FOR UPDATE SKIP LOCKED) due
              WHERE o.message_id = due.message_id
             RETURNING o.message_id,
                       (SELECT t.name FROM messages m JOIN tenants t ON t.id = m.tenant_id
                         WHERE m.id = o.message_id)",
        )
        .bind(grace.as_secs_f64())
        .bind(lease.as_secs_f64())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
    }

    /// Gives leased messages back at once (their publish failed; the next round may
    /// try again without waiting for the lease to run out).
    pub async fn release_leases(&self, ids: &[Uuid]) -> Result<(), sqlx::Error> {
        sqlx::query("UPDATE outbox SET leased_until = NULL WHERE message_id = ANY($1)")
            .bind(ids)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// How many committed messages RabbitMQ has not confirmed (the outbox backlog).
    pub async fn count_unpublished(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.pool)
            .await
    }

    /// Forgets idempotency keys past their time.
    pub async fn purge_idempotency_keys(&self) -> Result<u64, sqlx::Error> {
        Ok(
            sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= now()")
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}
