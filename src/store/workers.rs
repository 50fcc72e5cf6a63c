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

    /// Refreshes a worker's heartbeat (re-registering it if it was removed).
    pub async fn heartbeat(&self, id: Uuid, host: &str) -> Result<(), sqlx::Error> {
        self.register_worker(id, host).await?;
        // Workers gone for a day are history.
        sqlx::query("DELETE FROM workers WHERE heartbeat_at < now() - interval '1 day'")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Removes a worker that stops cleanly: its messages need no waiting period.
    pub async fn unregister_worker(&self, id: Uuid) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM workers WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
