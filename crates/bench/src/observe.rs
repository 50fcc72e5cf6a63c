//! Phase 2: watch PostgreSQL until every accepted message is terminal, then read what
//! the database recorded about them (final statuses, `created_at`, `sent_at`).
//!
//! Progress is polled over the run's time window (`created_at >= start`, one aggregate
//! per poll); the exact figures are read once, by id, in chunks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;
use tokio::sync::watch;
use uuid::Uuid;

/// Statuses after which nothing more happens to a message.
pub const TERMINAL: [&str; 3] = ["sent", "failed", "cancelled"];

/// Ids per `= ANY($1)` query.
const CHUNK: usize = 10_000;

/// How often the database is polled. Each poll counts every message of the run (about
/// 50 ms of a PostgreSQL backend at 40,000 messages, measured), so polling twice a
/// second took some 7 % of PostgreSQL's time from the service measured. The rates are
/// computed from the timestamps PostgreSQL recorded, not from when a poll saw them, so
/// a slower poll delays only the end of the wait.
const POLL_EVERY: Duration = Duration::from_secs(2);

/// Connects to the database postwire writes to.
pub async fn connect(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(3)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .context("connecting to the database (--database-url)")
}

/// The database's clock now: the run's start, comparable with `created_at` and
/// `sent_at` which the database stamps itself.
pub async fn database_now(pool: &PgPool) -> anyhow::Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar("SELECT now()").fetch_one(pool).await?)
}

/// Terminal and sent messages created since `start`.
async fn window_counts(pool: &PgPool, start: DateTime<Utc>) -> sqlx::Result<(u64, u64)> {
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE status = ANY($2)) AS terminal,
                count(*) FILTER (WHERE status = 'sent') AS sent
           FROM messages WHERE created_at >= $1",
    )
    .bind(start)
    .bind(&TERMINAL[..])
    .fetch_one(pool)
    .await?;
    let terminal: i64 = row.try_get("terminal")?;
    let sent: i64 = row.try_get("sent")?;
    Ok((terminal as u64, sent as u64))
}

/// Keeps `delivered` at the number of messages sent since `start` (its length at the
/// number accepted so far, read from `accepted`) until told to stop. Runs during
/// sending, so the second bar moves while the first does.
pub async fn show_progress(
    pool: PgPool,
    start: DateTime<Utc>,
    accepted: ProgressBar,
    delivered: ProgressBar,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Ok((_, sent)) = window_counts(&pool, start).await {
            delivered.set_length(accepted.position().max(sent));
            delivered.set_position(sent);
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL_EVERY) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Final statuses of a set of messages.
#[derive(Debug, Default, Clone)]
pub struct StatusCounts {
    pub by_status: BTreeMap<String, u64>,
}

impl StatusCounts {
    /// Messages in a terminal status.
    pub fn terminal(&self) -> u64 {
        TERMINAL.iter().filter_map(|s| self.by_status.get(*s)).sum()
    }

    /// Messages sent.
    pub fn sent(&self) -> u64 {
        self.by_status.get("sent").copied().unwrap_or(0)
    }

    /// Messages found at all.
    pub fn found(&self) -> u64 {
        self.by_status.values().sum()
    }
}

/// Statuses of exactly these messages.
pub async fn status_counts(pool: &PgPool, ids: &[Uuid]) -> sqlx::Result<StatusCounts> {
    let mut counts = StatusCounts::default();
    for chunk in ids.chunks(CHUNK) {
        let rows = sqlx::query(
            "SELECT status, count(*) AS n FROM messages WHERE id = ANY($1) GROUP BY status",
        )
        .bind(chunk)
        .fetch_all(pool)
        .await?;
        for row in rows {
            let status: String = row.try_get("status")?;
            let n: i64 = row.try_get("n")?;
            *counts.by_status.entry(status).or_default() += n as u64;
        }
    }
    Ok(counts)
}

/// How the wait ended.
#[derive(Debug)]
pub struct Drained {
    /// Statuses when the wait ended: all terminal unless `timeout` passed.
    pub counts: StatusCounts,
}

/// Waits until all of `ids` are terminal or `timeout` has passed, moving `delivered`.
/// The cheap window count decides when to look; the count by id decides.
pub async fn wait_terminal(
    pool: &PgPool,
    start: DateTime<Utc>,
    ids: &[Uuid],
    timeout: Duration,
    delivered: &ProgressBar,
) -> anyhow::Result<Drained> {
    let expected = ids.len() as u64;
    delivered.set_length(expected);
    let deadline = Instant::now() + timeout;
    loop {
        let (terminal, sent) = window_counts(pool, start)
            .await
            .context("polling message statuses")?;
        delivered.set_position(sent.min(expected));
        let out_of_time = Instant::now() >= deadline;
        // Other producers' messages would also be in the window, so a full window is
        // only a hint; the ids decide.
        if terminal >= expected || out_of_time {
            let counts = status_counts(pool, ids)
                .await
                .context("counting statuses")?;
            if counts.terminal() >= expected || out_of_time {
                return Ok(Drained { counts });
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// When the sent messages were delivered, per the database.
#[derive(Debug, Default)]
pub struct Deliveries {
    /// `sent_at - created_at` of each sent message, in milliseconds.
    pub end_to_end_ms: Vec<f64>,
    /// Seconds from the run's start to the last `sent_at`.
    pub last_sent_after_s: Option<f64>,
}

/// Reads the delivery times of the sent messages among `ids`.
pub async fn deliveries(
    pool: &PgPool,
    start: DateTime<Utc>,
    ids: &[Uuid],
) -> anyhow::Result<Deliveries> {
    let mut out = Deliveries::default();
    for chunk in ids.chunks(CHUNK) {
        let rows = sqlx::query(
            "SELECT EXTRACT(EPOCH FROM (sent_at - created_at))::float8 * 1000 AS e2e_ms,
                    EXTRACT(EPOCH FROM (sent_at - $2))::float8 AS after_s
               FROM messages
              WHERE id = ANY($1) AND status = 'sent' AND sent_at IS NOT NULL",
        )
        .bind(chunk)
        .bind(start)
        .fetch_all(pool)
        .await
        .context("reading delivery times")?;
        for row in rows {
            out.end_to_end_ms.push(row.try_get("e2e_ms")?);
            let after: f64 = row.try_get("after_s")?;
            out.last_sent_after_s = Some(out.last_sent_after_s.map_or(after, |a| a.max(after)));
        }
    }
    Ok(out)
}
