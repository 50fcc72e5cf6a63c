//! PostgreSQL: the system of record. All SQL lives in this module.

mod api_keys;
mod claims;
mod connections;
pub mod console;
mod leases;
mod listing;
mod messages;
mod outbox;
mod reconcile;
mod suppressions;
mod tenants;
mod throttles;
mod webhooks;
mod workers;

pub use api_keys::{ApiKeyRow, NewApiKey};
pub use claims::Recorded;
pub use connections::{ConnectionRow, DeleteConnection};
pub use listing::{ListFilter, MessageSummary};
pub use messages::{Accept, Cancel, EventRecord, IdempotencyRecord, MessageRecord, NewMessageRow};
pub use reconcile::{Overdue, ReconcileQuery};
pub use suppressions::SuppressionRow;
pub use tenants::TenantRow;
pub use webhooks::{DueWebhook, WebhookAttemptRow, WebhookRow, WebhookTry};

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::config::DatabaseSettings;

/// The embedded migrations of `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Opens the pool lazily: the process starts even while PostgreSQL is down, and
    /// requests then get 503 instead of the process crashing.
    pub fn connect_lazy(settings: &DatabaseSettings) -> anyhow::Result<Store> {
        let options: PgConnectOptions = settings
            .url
            .parse()
            .context("database.url is not a valid PostgreSQL URL")?;
        let pool = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .idle_timeout(Some(Duration::from_secs(300)))
            .connect_lazy_with(options);
        Ok(Store { pool })
    }

    /// Wraps an existing pool (tests).
    pub fn from_pool(pool: PgPool) -> Store {
        Store { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .context("applying database migrations")
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.pool).await.is_ok()
    }
}

/// What went wrong at the store boundary, by class: callers decide on the class
/// (the API: 503, 409, 404 or 500), never on the driver's error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Unreachable, overloaded or a transient conflict (deadlock, serialization):
    /// worth retrying.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// A unique or exclusion constraint refused the write.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A row that had to exist does not.
    #[error("not found")]
    NotFound,
    /// Anything else: a bug, a refused value, a decode failure.
    #[error("database error: {0}")]
    Internal(String),
}

impl From<&sqlx::Error> for StoreError {
    fn from(e: &sqlx::Error) -> StoreError {
        if is_unavailable(e) {
            return StoreError::Unavailable(e.to_string());
        }
        match e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Database(db)
                if db.code().is_some_and(|c| c == "23505" || c == "23P01") =>
            {
                StoreError::Conflict(db.message().to_owned())
            }
            other => StoreError::Internal(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        StoreError::from(&e)
    }
}

impl From<std::sync::Arc<sqlx::Error>> for StoreError {
    fn from(e: std::sync::Arc<sqlx::Error>) -> StoreError {
        StoreError::from(e.as_ref())
    }
}

/// True for errors that mean "the database is unreachable, overloaded or hit a
/// transient conflict" rather than a bug: worth retrying, and the API answers those
/// with 503 and `Retry-After`.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            // Class 08 (connection exception), 40 (transaction rollback: deadlock,
            // serialization failure), 53 (insufficient resources), 57P (operator
            // intervention: shutdown, crash recovery).
            db.code().is_some_and(|c| {
                ["08", "40", "53", "57P"]
                    .iter()
                    .any(|class| c.starts_with(class))
            })
        }
        _ => false,
    }
}
