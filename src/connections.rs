//! The directory of SMTP connections: the one declared in configuration plus those
//! stored in PostgreSQL (passwords decrypted here, and only here), cached briefly so
//! the hot path does not query for every message.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use uuid::Uuid;

use crate::crypto::Cipher;
use crate::domain::{ConnectionFields, FieldError, Mailbox, SmtpConnection};
use crate::store::{ConnectionRow, Store, StoreError};

/// How long a looked-up connection is reused before asking PostgreSQL again; also how
/// long an update takes to reach other processes.
const CACHE_TTL: Duration = Duration::from_secs(5);

/// Names remembered at most (found or not). Senders choose the names they ask for, so
/// the cache is bounded; the least used entries go first.
pub const CACHE_CAPACITY: u64 = 10_000;

/// A connection found by name, with whose it is.
#[derive(Clone)]
struct Found {
    connection: Arc<SmtpConnection>,
    /// The tenant that made it; `None` for the configured one, which is shared.
    owner: Option<Uuid>,
    /// Usable by every tenant (set by an operator).
    shared: bool,
}

impl Found {
    fn usable_by(&self, tenant: Uuid) -> bool {
        self.shared || self.owner.is_none_or(|owner| owner == tenant)
    }
}

/// Finds connections by name. Names are unique across the deployment.
pub struct Directory {
    store: Store,
    cipher: Cipher,
    configured: Option<Arc<SmtpConnection>>,
    cache: moka::sync::Cache<String, Option<Found>>,
}

impl Directory {
    pub fn new(
        store: Store,
        cipher: Cipher,
        configured: Option<&ConnectionFields>,
    ) -> anyhow::Result<Directory> {
        let configured = configured
            .map(|c| {
                c.clone().parse().map(Arc::new).map_err(|errors| {
                    anyhow::anyhow!("smtp.default: {}", FieldError::describe(&errors))
                })
            })
            .transpose()?;
        Ok(Directory {
            store,
            cipher,
            configured,
            cache: moka::sync::Cache::builder()
                .max_capacity(CACHE_CAPACITY)
                .time_to_live(CACHE_TTL)
                .build(),
        })
    }

    /// The name of the connection declared in configuration, if any.
    pub fn configured_name(&self) -> Option<&str> {
        self.configured.as_deref().map(|c| c.name.as_str())
    }

    pub fn cipher(&self) -> &Cipher {
        &self.cipher
    }

    /// The connection called `name`, whoever's it is (delivery: the send was allowed
    /// when it was accepted), or `None` when there is none.
    pub async fn get(&self, name: &str) -> Result<Option<Arc<SmtpConnection>>, StoreError> {
        Ok(self.find(name).await?.map(|f| f.connection))
    }

    /// The connection called `name` if `tenant` may send through it: its own, or a
    /// shared one (the configured connection is shared). Anyone else's is `None`, as
    /// if it did not exist.
    pub async fn usable_by(
        &self,
        name: &str,
        tenant: Uuid,
    ) -> Result<Option<Arc<SmtpConnection>>, StoreError> {
        Ok(self
            .find(name)
            .await?
            .filter(|f| f.usable_by(tenant))
            .map(|f| f.connection))
    }

    async fn find(&self, name: &str) -> Result<Option<Found>, StoreError> {
        if let Some(c) = self.configured.as_ref().filter(|c| c.name == name) {
            return Ok(Some(Found {
                connection: c.clone(),
                owner: None,
                shared: true,
            }));
        }
        if let Some(found) = self.cache.get(name) {
            return Ok(found);
        }
        let found = match self.store.get_connection(name).await? {
            Some(row) => Some(Found {
                connection: Arc::new(
                    self.from_row(&row)
                        .map_err(|e| StoreError::Internal(format!("{e:#}")))?,
                ),
                owner: Some(row.tenant_id),
                shared: row.shared,
            }),
            None => None,
        };
        self.cache.insert(name.to_owned(), found.clone());
        crate::metrics::cache_entries("connections", self.cache.entry_count());
        Ok(found)
    }

    /// Drops a cached entry (after this process changed the connection).
    pub fn forget(&self, name: &str) {
        self.cache.invalidate(name);
    }

    /// A stored row as a usable connection, its password decrypted.
    pub fn from_row(&self, row: &ConnectionRow) -> anyhow::Result<SmtpConnection> {
        let (password, credentials_error) = match row.password_enc.as_deref().map(|sealed| {
            let clear = self.cipher.decrypt(sealed, row.id.as_bytes())?;
            String::from_utf8(clear).map_err(|_| crate::crypto::CryptoError::Malformed)
        }) {
            None => (None, None),
            Some(Ok(clear)) => (Some(clear.into()), None),
            // Not an error of the lookup: sends are still accepted, and delivery
            // waits (without AUTH) until an operator fixes the key or the password.
            Some(Err(e)) => {
                tracing::error!(connection = %row.name, error = %e, "the stored password cannot be decrypted");
                (
                    None,
                    Some(format!(
                        "the stored password cannot be decrypted ({e}); check security.master_key or set the password again"
                    )),
                )
            }
        };
        Ok(SmtpConnection {
            name: row.name.clone(),
            host: row.host.clone(),
            port: u16::try_from(row.port).context("stored port")?,
            security: row.security,
            username: row.username.clone(),
            password,
            credentials_error,
            default_from: row
                .default_from
                .as_deref()
                .map(Mailbox::parse)
                .transpose()
                .context("stored default_from")?,
            max_connections: u16::try_from(row.max_connections).unwrap_or(u16::MAX),
            max_rate_per_second: row.max_rate_per_second.and_then(|r| u32::try_from(r).ok()),
            allow_plaintext_auth: row.allow_plaintext_auth,
            revision: row.updated_at.timestamp_micros(),
        })
    }
}
