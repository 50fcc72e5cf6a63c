//! API keys: only a hash of each key's secret is stored.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Store;

/// An API key as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub name: String,
    /// The public part of the key, shown in listings.
    pub lookup: String,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<String>,
    pub default_connection: Option<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Store {
    pub async fn insert_api_key(&self, key: &ApiKeyRow) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO api_keys (id, name, lookup, secret_hash, scopes, default_connection)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(key.id)
        .bind(&key.name)
        .bind(&key.lookup)
        .bind(&key.secret_hash)
        .bind(&key.scopes)
        .bind(&key.default_connection)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The key with this public part, revoked or not.
    pub async fn find_api_key(&self, lookup: &str) -> Result<Option<ApiKeyRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, name, lookup, secret_hash, scopes, default_connection, created_at, revoked_at
               FROM api_keys WHERE lookup = $1",
        )
        .bind(lookup)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
        sqlx::query_as(
            "SELECT id, name, lookup, secret_hash, scopes, default_connection, created_at, revoked_at
               FROM api_keys ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Revokes the keys with this id, public part or name; returns how many.
    pub async fn revoke_api_key(&self, which: &str) -> Result<u64, sqlx::Error> {
        Ok(sqlx::query(
            "UPDATE api_keys SET revoked_at = now()
              WHERE revoked_at IS NULL AND (id::text = $1 OR lookup = $1 OR name = $1)",
        )
        .bind(which)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}
