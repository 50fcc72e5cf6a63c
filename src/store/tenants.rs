//! Tenants: made and changed by operators.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Store;

/// A tenant as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantRow {
    pub id: Uuid,
    pub name: String,
    /// Sends per second accepted from the tenant's keys, per API process.
    pub max_rate_per_second: Option<i32>,
    /// Domains its From (and Reply-To) may use; `None` for any.
    pub allowed_from_domains: Option<Vec<String>>,
    /// When it was disabled: its keys are refused and its mail waits.
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, name, max_rate_per_second, allowed_from_domains, disabled_at, created_at, updated_at";

impl Store {
    /// Creates a tenant; `false` when the name is taken.
    pub async fn insert_tenant(&self, t: &TenantRow) -> Result<bool, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO tenants (id, name, max_rate_per_second, allowed_from_domains)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(t.id)
        .bind(&t.name)
        .bind(t.max_rate_per_second)
        .bind(&t.allowed_from_domains)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    pub async fn tenant_by_name(&self, name: &str) -> Result<Option<TenantRow>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM tenants WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
    }

    pub async fn list_tenants(&self) -> Result<Vec<TenantRow>, sqlx::Error> {
        sqlx::query_as(&format!("SELECT {COLUMNS} FROM tenants ORDER BY name"))
            .fetch_all(&self.pool)
            .await
    }

    /// Replaces a tenant's limits and its disabled state (the caller merged the change).
    pub async fn update_tenant(&self, t: &TenantRow) -> Result<bool, sqlx::Error> {
        let updated = sqlx::query(
            "UPDATE tenants
                SET max_rate_per_second = $2, allowed_from_domains = $3, disabled_at = $4,
                    updated_at = clock_timestamp()
              WHERE id = $1",
        )
        .bind(t.id)
        .bind(t.max_rate_per_second)
        .bind(&t.allowed_from_domains)
        .bind(t.disabled_at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }
}
