//! Stored SMTP connections. The password column holds ciphertext only.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::Store;
use crate::domain::{ConnectionFields, Security, SmtpConnection};

/// A connection as stored.
#[derive(Clone, sqlx::FromRow)]
pub struct ConnectionRow {
    pub id: Uuid,
    /// The tenant that made it; others may use it only when it is `shared`.
    pub tenant_id: Uuid,
    /// That tenant's name.
    pub tenant: String,
    /// Usable by every tenant's sends (set by an operator).
    pub shared: bool,
    pub name: String,
    pub host: String,
    pub port: i32,
    pub security: Security,
    pub username: Option<String>,
    /// AES-256-GCM ciphertext of the password.
    pub password_enc: Option<Vec<u8>>,
    pub default_from: Option<String>,
    pub max_connections: i32,
    pub max_rate_per_second: Option<i32>,
    /// AUTH may go over an unencrypted session to a host other than loopback.
    pub allow_plaintext_auth: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for ConnectionRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionRow")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("username", &self.username)
            .field("has_password", &self.password_enc.is_some())
            .finish_non_exhaustive()
    }
}

impl ConnectionRow {
    /// The row for a checked connection; `password_enc` is its sealed password.
    pub fn new(
        id: Uuid,
        (tenant_id, tenant): (Uuid, &str),
        c: &SmtpConnection,
        password_enc: Option<Vec<u8>>,
    ) -> ConnectionRow {
        let now = Utc::now();
        ConnectionRow {
            id,
            tenant_id,
            tenant: tenant.to_owned(),
            shared: false,
            name: c.name.clone(),
            host: c.host.clone(),
            port: i32::from(c.port),
            security: c.security,
            username: c.username.clone(),
            password_enc,
            default_from: c.default_from.as_ref().map(|m| m.to_display()),
            max_connections: i32::from(c.max_connections),
            max_rate_per_second: c
                .max_rate_per_second
                .map(|r| i32::try_from(r).unwrap_or(i32::MAX)),
            allow_plaintext_auth: c.allow_plaintext_auth,
            created_at: now,
            updated_at: now,
        }
    }

    /// The stored settings as fields to patch and check again (without the password).
    pub fn fields(&self) -> ConnectionFields {
        ConnectionFields {
            name: self.name.clone(),
            host: self.host.clone(),
            port: u16::try_from(self.port).unwrap_or(0),
            security: self.security,
            username: self.username.clone(),
            password: None,
            default_from: self.default_from.clone(),
            max_connections: Some(u16::try_from(self.max_connections).unwrap_or(0)),
            max_rate_per_second: self.max_rate_per_second.and_then(|r| u32::try_from(r).ok()),
            allow_plaintext_auth: self.allow_plaintext_auth,
        }
    }
}

/// What became of a delete.
#[derive(Debug, PartialEq, Eq)]
pub enum DeleteConnection {
    Deleted,
    NotFound,
    /// Messages still wait to be sent through it.
    InUse(i64),
}

const COLUMNS: &str =
    "id, tenant_id, (SELECT t.name FROM tenants t WHERE t.id = tenant_id) AS tenant, shared, name, host, port, security, username, password_enc, default_from, \
     max_connections, max_rate_per_second, allow_plaintext_auth, created_at, updated_at";

impl Store {
    /// Creates a connection; `false` when the name is taken.
    pub async fn insert_connection(&self, c: &ConnectionRow) -> Result<bool, sqlx::Error> {
        let inserted = sqlx::query(
            "INSERT INTO smtp_connections (id, name, host, port, security, username, password_enc,
                 default_from, max_connections, max_rate_per_second, allow_plaintext_auth,
                 tenant_id, shared)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(c.id)
        .bind(&c.name)
        .bind(&c.host)
        .bind(c.port)
        .bind(c.security)
        .bind(&c.username)
        .bind(&c.password_enc)
        .bind(&c.default_from)
        .bind(c.max_connections)
        .bind(c.max_rate_per_second)
        .bind(c.allow_plaintext_auth)
        .bind(c.tenant_id)
        .bind(c.shared)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// Replaces a connection's settings (the caller merged the patch).
    pub async fn update_connection(&self, c: &ConnectionRow) -> Result<bool, sqlx::Error> {
        let updated = sqlx::query(
            "UPDATE smtp_connections
                SET host = $2, port = $3, security = $4, username = $5, password_enc = $6,
                    default_from = $7, max_connections = $8, max_rate_per_second = $9,
                    allow_plaintext_auth = $10, shared = $11, updated_at = clock_timestamp()
              WHERE name = $1",
        )
        .bind(&c.name)
        .bind(&c.host)
        .bind(c.port)
        .bind(c.security)
        .bind(&c.username)
        .bind(&c.password_enc)
        .bind(&c.default_from)
        .bind(c.max_connections)
        .bind(c.max_rate_per_second)
        .bind(c.allow_plaintext_auth)
        .bind(c.shared)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    pub async fn get_connection(&self, name: &str) -> Result<Option<ConnectionRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM smtp_connections WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await
    }

    /// The connections of `tenant`, or every tenant's (`None`, for operators).
    pub async fn list_connections(
        &self,
        tenant: Option<Uuid>,
    ) -> Result<Vec<ConnectionRow>, sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM smtp_connections
              WHERE $1::uuid IS NULL OR tenant_id = $1 ORDER BY name"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
    }

    /// Deletes a connection of `tenant` (any tenant's for `None`); refuses while
    /// messages wait on it unless `force`.
    pub async fn delete_connection(
        &self,
        name: &str,
        tenant: Option<Uuid>,
        force: bool,
    ) -> Result<DeleteConnection, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let exists: Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM smtp_connections
              WHERE name = $1 AND ($2::uuid IS NULL OR tenant_id = $2) FOR UPDATE",
        )
        .bind(name)
        .bind(tenant)
        .fetch_optional(&mut *tx)
        .await?;
        if exists.is_none() {
            return Ok(DeleteConnection::NotFound);
        }
        if !force {
            let pending: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM messages
                  WHERE connection = $1 AND status IN ('queued', 'deferred', 'sending')",
            )
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
            if pending > 0 {
                return Ok(DeleteConnection::InUse(pending));
            }
        }
        sqlx::query("DELETE FROM smtp_connections WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        // A connection created later under the name starts unthrottled.
        sqlx::query("DELETE FROM connection_throttles WHERE connection = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(DeleteConnection::Deleted)
    }

    /// Re-encrypts every stored password with `reencrypt`, given the connection's id
    /// and the stored value (master key rotation, format upgrade).
    pub async fn reencrypt_passwords(
        &self,
        reencrypt: impl Fn(Uuid, &[u8]) -> anyhow::Result<Option<Vec<u8>>>,
    ) -> anyhow::Result<usize> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(Uuid, Vec<u8>)> = sqlx::query_as(
            "SELECT id, password_enc FROM smtp_connections WHERE password_enc IS NOT NULL FOR UPDATE",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut changed = 0;
        for (id, sealed) in rows {
            if let Some(new) = reencrypt(id, &sealed)? {
                sqlx::query("UPDATE smtp_connections SET password_enc = $2, updated_at = clock_timestamp() WHERE id = $1")
                    .bind(id)
                    .bind(new)
                    .execute(&mut *tx)
                    .await?;
                changed += 1;
            }
        }
        tx.commit().await?;
        Ok(changed)
    }
}
