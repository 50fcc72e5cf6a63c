//! Queries of the outbox relay.

use std::time::Duration;

use uuid::Uuid;

use super::Store;

impl Store {
    /// Messages committed more than `grace` ago whose publish RabbitMQ never
    /// confirmed, oldest first, locked (SKIP LOCKED) in `tx` so that two relays never
    /// take the same ones.
    pub async fn lock_unpublished(
        tx: &mut sqlx::PgConnection,
        grace: Duration,
        limit: u32,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT message_id FROM outbox
              WHERE created_at < now() - make_interval(secs => $1)
              ORDER BY created_at
              LIMIT $2
              FOR UPDATE SKIP LOCKED",
        )
        .bind(grace.as_secs_f64())
        .bind(i64::from(limit))
        .fetch_all(tx)
        .await
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
