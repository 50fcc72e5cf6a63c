//! The suppression list, per tenant (see `domain::suppression`). The claim reads it
//! with the message (`claims.rs`), so sending asks nothing more of PostgreSQL.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use super::Store;
use crate::domain::SmtpReply;

/// One suppressed address.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SuppressionRow {
    /// With its domain in lower case.
    pub address: String,
    /// `bounce` or `manual`.
    pub source: String,
    pub reason: String,
    pub reply: Option<Json<SmtpReply>>,
    pub message_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "address, source, reason, reply, message_id, created_at";

impl Store {
    /// Adds the addresses a delivery of `message` found bad (`(address key, reply)`),
    /// for `tenant` (a name, as the claim has it). An address already listed keeps
    /// its first entry.
    pub async fn suppress_bounced(
        &self,
        tenant: &str,
        message: Uuid,
        bounced: &[(String, SmtpReply)],
    ) -> Result<(), sqlx::Error> {
        let addresses: Vec<&str> = bounced.iter().map(|(a, _)| a.as_str()).collect();
        let reasons: Vec<String> = bounced.iter().map(|(_, r)| r.to_string()).collect();
        let replies: Vec<Json<&SmtpReply>> = bounced.iter().map(|(_, r)| Json(r)).collect();
        sqlx::query(
            "INSERT INTO suppressions (tenant_id, address, source, reason, reply, message_id)
             SELECT t.id, b.address, 'bounce', b.reason, b.reply, $2
               FROM tenants t, unnest($3::text[], $4::text[], $5::jsonb[]) AS b(address, reason, reply)
              WHERE t.name = $1
             ON CONFLICT (tenant_id, address) DO NOTHING",
        )
        .bind(tenant)
        .bind(message)
        .bind(&addresses)
        .bind(&reasons)
        .bind(&replies)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Adds an address by hand; false when it was listed already (it is left as is).
    pub async fn suppress(
        &self,
        tenant: Uuid,
        address: &str,
        reason: &str,
    ) -> Result<bool, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO suppressions (tenant_id, address, source, reason)
             VALUES ($1, $2, 'manual', $3)
             ON CONFLICT (tenant_id, address) DO NOTHING",
        )
        .bind(tenant)
        .bind(address)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// One listed address of `tenant`.
    pub async fn suppression(
        &self,
        tenant: Uuid,
        address: &str,
    ) -> Result<Option<SuppressionRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM suppressions WHERE tenant_id = $1 AND address = $2"
        ))
        .bind(tenant)
        .bind(address)
        .fetch_optional(&self.pool)
        .await
    }

    /// Up to `limit` listed addresses of `tenant` after `cursor` (an address), in
    /// address order: keyset pages.
    pub async fn list_suppressions(
        &self,
        tenant: Uuid,
        cursor: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SuppressionRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM suppressions
              WHERE tenant_id = $1 AND ($2::text IS NULL OR address > $2)
              ORDER BY address LIMIT $3"
        ))
        .bind(tenant)
        .bind(cursor)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Takes an address off `tenant`'s list (it may be mailed again); false when it
    /// was not listed.
    pub async fn unsuppress(&self, tenant: Uuid, address: &str) -> Result<bool, sqlx::Error> {
        let deleted = sqlx::query("DELETE FROM suppressions WHERE tenant_id = $1 AND address = $2")
            .bind(tenant)
            .bind(address)
            .execute(&self.pool)
            .await?;
        Ok(deleted.rows_affected() == 1)
    }
}
