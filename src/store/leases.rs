//! Session leases: which worker holds which of a connection's session slots.

use std::time::Duration;

use uuid::Uuid;

use super::Store;

impl Store {
    /// Takes a free slot (`0..cap`) of `connection` for `worker` until `ttl` from now,
    /// or `None` when `cap` live leases are held. A lapsed lease (its worker stopped
    /// renewing) counts as free. Two workers racing for one slot: one gets it, the
    /// other `None` (and tries again later). Leases on slots beyond `cap` (taken
    /// before the cap came down, as a throttled connection's does) count too, so the
    /// cap holds as their sessions close.
    pub async fn acquire_session_lease(
        &self,
        connection: &str,
        cap: u16,
        worker: Uuid,
        ttl: Duration,
    ) -> Result<Option<i32>, sqlx::Error> {
        sqlx::query_scalar(
            "INSERT INTO smtp_session_leases (connection, slot, worker, expires_at)
             SELECT $1, s, $3, now() + make_interval(secs => $4)
               FROM generate_series(0, $2 - 1) s
              WHERE NOT EXISTS (SELECT 1 FROM smtp_session_leases l
                                 WHERE l.connection = $1 AND l.slot = s AND l.expires_at > now())
                AND (SELECT count(*) FROM smtp_session_leases l
                      WHERE l.connection = $1 AND l.expires_at > now()) < $2
              ORDER BY s
              LIMIT 1
             ON CONFLICT (connection, slot) DO UPDATE
                SET worker = EXCLUDED.worker, expires_at = EXCLUDED.expires_at
              WHERE smtp_session_leases.expires_at <= now()
             RETURNING slot",
        )
        .bind(connection)
        .bind(i32::from(cap))
        .bind(worker)
        .bind(ttl.as_secs_f64())
        .fetch_optional(&self.pool)
        .await
    }

    /// Gives a slot back (the session closed).
    pub async fn release_session_lease(
        &self,
        connection: &str,
        slot: i32,
        worker: Uuid,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "DELETE FROM smtp_session_leases WHERE connection = $1 AND slot = $2 AND worker = $3",
        )
        .bind(connection)
        .bind(slot)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
