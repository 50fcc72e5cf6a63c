//! The registry of live workers, for taking over the attempts of dead ones.

use uuid::Uuid;

use super::Store;

impl Store {
    /// Records a worker as alive.
    pub async fn register_worker(&self, id: Uuid, host: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO workers (id, host) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
        )
        .bind(id)
        .bind(host)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Refreshes a worker's heartbeat (re-registering it if it was removed), extends
    /// its SMTP session leases by `lease_ttl`, and answers how many workers are alive
    /// (a heartbeat within `lease_ttl`), this one included.
    pub async fn heartbeat(
        &self,
        id: Uuid,
        host: &str,
        lease_ttl: std::time::Duration,
    ) -> Result<i64, sqlx::Error> {
        self.register_worker(id, host).await?;
        sqlx::query(
            "UPDATE smtp_session_leases SET expires_at = now() + make_interval(secs => $2)
              WHERE worker = $1",
        )
        .bind(id)
        .bind(lease_ttl.as_secs_f64())
        .execute(&self.pool)
        .await?;
        // Workers gone for a day are history.
        sqlx::query("DELETE FROM workers WHERE heartbeat_at < now() - interval '1 day'")
            .execute(&self.pool)
            .await?;
        sqlx::query_scalar(
            "SELECT count(*) FROM workers WHERE heartbeat_at > now() - make_interval(secs => $1)",
        )
        .bind(lease_ttl.as_secs_f64())
        .fetch_one(&self.pool)
        .await
    }

    /// Removes a worker that stops cleanly: its messages need no waiting period, and
    /// its session slots are free at once.
    pub async fn unregister_worker(&self, id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM smtp_session_leases WHERE worker = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
