//! Connections' throttling state (see `domain::Throttle`).

use chrono::{DateTime, Utc};

use super::Store;
use crate::domain::{SmtpReply, Throttle};

#[derive(sqlx::FromRow)]
struct ThrottleRow {
    connection: String,
    fraction: f64,
    paused_until: DateTime<Utc>,
    last_code: i32,
    last_enhanced: Option<String>,
    last_text: String,
    last_at: DateTime<Utc>,
    replies: i64,
}

impl ThrottleRow {
    fn into_pair(self) -> (String, Throttle) {
        let throttle = Throttle {
            fraction: self.fraction,
            paused_until: self.paused_until,
            last_reply: SmtpReply {
                code: u16::try_from(self.last_code).unwrap_or(0),
                enhanced: self.last_enhanced,
                text: self.last_text,
            },
            last_at: self.last_at,
            replies: self.replies,
        };
        (self.connection, throttle)
    }
}

const COLUMNS: &str =
    "connection, fraction, paused_until, last_code, last_enhanced, last_text, last_at, replies";

impl Store {
    /// Applies a throttling reply to `connection`'s state: `step` gets the state
    /// before (if any) and returns the state after, which is stored. Workers seeing
    /// replies at the same moment take turns, so each sees the other's step.
    pub async fn step_down_throttle(
        &self,
        connection: &str,
        step: impl FnOnce(Option<Throttle>) -> Throttle,
    ) -> Result<Throttle, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // The row may not exist yet, so the lock is on the name.
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('connection_throttles'), hashtext($1))")
            .bind(connection)
            .execute(&mut *tx)
            .await?;
        let before: Option<ThrottleRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM connection_throttles WHERE connection = $1"
        ))
        .bind(connection)
        .fetch_optional(&mut *tx)
        .await?;
        let after = step(before.map(|row| row.into_pair().1));
        sqlx::query(
            "INSERT INTO connection_throttles
                    (connection, fraction, paused_until, last_code, last_enhanced, last_text,
                     last_at, replies)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (connection) DO UPDATE
                SET fraction = EXCLUDED.fraction, paused_until = EXCLUDED.paused_until,
                    last_code = EXCLUDED.last_code, last_enhanced = EXCLUDED.last_enhanced,
                    last_text = EXCLUDED.last_text, last_at = EXCLUDED.last_at,
                    replies = EXCLUDED.replies",
        )
        .bind(connection)
        .bind(after.fraction)
        .bind(after.paused_until)
        .bind(i32::from(after.last_reply.code))
        .bind(after.last_reply.enhanced.as_deref())
        .bind(&after.last_reply.text)
        .bind(after.last_at)
        .bind(after.replies)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(after)
    }

    /// Every connection's throttling state (one row per connection ever throttled).
    pub async fn throttles(&self) -> Result<Vec<(String, Throttle)>, sqlx::Error> {
        let rows: Vec<ThrottleRow> =
            sqlx::query_as(&format!("SELECT {COLUMNS} FROM connection_throttles"))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(ThrottleRow::into_pair).collect())
    }

    /// One connection's throttling state, if it was ever throttled.
    pub async fn throttle(&self, connection: &str) -> Result<Option<Throttle>, sqlx::Error> {
        let row: Option<ThrottleRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM connection_throttles WHERE connection = $1"
        ))
        .bind(connection)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.into_pair().1))
    }
}
