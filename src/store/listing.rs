//! The operators' message listing (keyset pagination) and retention.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder, Row};
use uuid::Uuid;

use super::Store;
use crate::domain::Status;

/// Filters of `GET /v1/messages`.
#[derive(Debug, Default, Clone)]
pub struct ListFilter {
    /// Only this tenant's messages; `None` for every tenant's (operators).
    pub tenant: Option<Uuid>,
    pub status: Option<Status>,
    pub connection: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
    /// Continue after this id (exclusive): the last id of the previous page.
    pub before: Option<Uuid>,
    pub limit: u32,
}

/// One line of the listing.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageSummary {
    pub id: Uuid,
    /// The name of the message's tenant.
    pub tenant: String,
    pub status: Status,
    pub connection: String,
    pub from_addr: String,
    pub subject: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// The smallest UUIDv7 of a millisecond: ids are time-ordered, so time bounds become
/// id bounds and every filter runs on an (x, id) index.
fn v7_floor(t: DateTime<Utc>) -> Uuid {
    let ms = u64::try_from(t.timestamp_millis()).unwrap_or(0);
    Uuid::from_u128(u128::from(ms) << 80)
}

impl Store {
    /// Newest first, `limit` at most; stable under inserts because pages continue from
    /// an id, not an offset.
    pub async fn list_messages(&self, f: &ListFilter) -> Result<Vec<MessageSummary>, sqlx::Error> {
        let mut q = QueryBuilder::<Postgres>::new(
            "SELECT id, (SELECT name FROM tenants t WHERE t.id = messages.tenant_id) AS tenant,
                    status, connection, from_addr, subject, attempts, created_at, updated_at, sent_at
               FROM messages WHERE true",
        );
        Self::push_filter(&mut q, f);
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(f.limit));
        q.build_query_as().fetch_all(&self.pool).await
    }

    /// The plan PostgreSQL picks for a listing (for tests and operators).
    pub async fn explain_list(&self, f: &ListFilter) -> Result<String, sqlx::Error> {
        let mut q = QueryBuilder::<Postgres>::new("EXPLAIN SELECT id FROM messages WHERE true");
        Self::push_filter(&mut q, f);
        q.push(" ORDER BY id DESC LIMIT ")
            .push_bind(i64::from(f.limit));
        let rows = q.build().fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .filter_map(|r| r.try_get::<String, _>(0).ok())
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// The listing's filters as `AND` clauses, shared with the console's search.
    pub(super) fn push_filter(q: &mut QueryBuilder<'_, Postgres>, f: &ListFilter) {
        if let Some(tenant) = f.tenant {
            q.push(" AND tenant_id = ").push_bind(tenant);
        }
        if let Some(status) = f.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(connection) = &f.connection {
            q.push(" AND connection = ").push_bind(connection.clone());
        }
        if let Some(since) = f.since {
            q.push(" AND id >= ").push_bind(v7_floor(since));
        }
        if let Some(until) = f.until {
            q.push(" AND id < ").push_bind(v7_floor(until));
        }
        if let Some(before) = f.before {
            q.push(" AND id < ").push_bind(before);
        }
    }

    /// Retention: drops the content of up to `batch` terminal messages created before
    /// `cutoff` (or, with `delete_rows`, the messages and their events). Small batches
    /// with SKIP LOCKED, so sends are never blocked behind it.
    pub async fn purge_old(
        &self,
        cutoff: DateTime<Utc>,
        delete_rows: bool,
        batch: i64,
    ) -> Result<u64, sqlx::Error> {
        // Ids are UUIDv7: "created before the cutoff" is an id range on the primary key.
        let sql = if delete_rows {
            "DELETE FROM messages WHERE id IN (
                SELECT id FROM messages
                 WHERE id < $1 AND status IN ('sent', 'failed', 'cancelled')
                 LIMIT $2 FOR UPDATE SKIP LOCKED)"
        } else {
            "DELETE FROM message_bodies WHERE message_id IN (
                SELECT b.message_id FROM message_bodies b JOIN messages m ON m.id = b.message_id
                 WHERE b.message_id < $1 AND m.status IN ('sent', 'failed', 'cancelled')
                 LIMIT $2 FOR UPDATE OF b SKIP LOCKED)"
        };
        Ok(sqlx::query(sql)
            .bind(v7_floor(cutoff))
            .bind(batch)
            .execute(&self.pool)
            .await?
            .rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bounds_become_uuid_v7_bounds() {
        let t = Utc::now();
        let id = Uuid::now_v7();
        assert!(v7_floor(t - chrono::Duration::seconds(1)) < id);
        assert!(v7_floor(t + chrono::Duration::seconds(1)) > id);
    }
}
