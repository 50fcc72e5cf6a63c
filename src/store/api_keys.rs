//! API keys: only a hash of each key's secret is stored.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Store;

/// An API key as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// The tenant's name, read with the key.
    pub tenant: String,
    /// The tenant is disabled, read with the key.
    pub tenant_disabled: bool,
    /// The tenant's send rate limit, read with the key.
    pub tenant_max_rate_per_second: Option<i32>,
    /// The tenant's sender domains, read with the key.
    pub tenant_allowed_from_domains: Option<Vec<String>>,
    pub name: String,
    /// The public part of the key, shown in listings.
    pub lookup: String,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<String>,
    pub default_connection: Option<String>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A key to store: what `postwire keys create` decides (the rest is the database's).
#[derive(Debug)]
pub struct NewApiKey<'a> {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: &'a str,
    pub lookup: &'a str,
    pub secret_hash: Vec<u8>,
    pub scopes: Vec<String>,
    pub default_connection: Option<&'a str>,
}

const KEY_COLUMNS: &str = "k.id, k.tenant_id, t.name AS tenant, \
     t.disabled_at IS NOT NULL AS tenant_disabled, \
     t.max_rate_per_second AS tenant_max_rate_per_second, \
     t.allowed_from_domains AS tenant_allowed_from_domains, k.name, k.lookup, k.secret_hash, k.scopes, \
     k.default_connection, k.created_at, k.revoked_at";

impl Store {
    pub async fn insert_api_key(&self, key: &NewApiKey<'_>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO api_keys (id, name, lookup, secret_hash, scopes, default_connection, tenant_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(key.id)
        .bind(key.name)
        .bind(key.lookup)
        .bind(&key.secret_hash)
        .bind(&key.scopes)
        .bind(key.default_connection)
        .bind(key.tenant_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The key with this public part, revoked or not.
    pub async fn find_api_key(&self, lookup: &str) -> Result<Option<ApiKeyRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
              WHERE k.lookup = $1"
        ))
        .bind(lookup)
        .fetch_optional(&self.pool)
        .await
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {KEY_COLUMNS} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
              ORDER BY k.created_at"
        ))
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
