//! API keys: `pw_<lookup>_<secret>`. The lookup part finds the stored row; only a
//! SHA-256 of the secret part (256 random bits) is stored, compared in constant time.

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use base64::Engine;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

use crate::store::{ApiKeyRow, NewApiKey, Store};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Send messages.
    Send,
    /// Look messages up.
    Read,
    /// Manage the tenant's connections.
    Admin,
    /// Operate the deployment: every tenant's messages and connections, tenants
    /// themselves, shared connections. Implies `read` and `admin` across tenants.
    Operator,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Send => "send",
            Scope::Read => "read",
            Scope::Admin => "admin",
            Scope::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "send" => Ok(Scope::Send),
            "read" => Ok(Scope::Read),
            "admin" => Ok(Scope::Admin),
            "operator" => Ok(Scope::Operator),
            other => Err(format!(
                "unknown scope {other:?} (send, read, admin, operator)"
            )),
        }
    }
}

/// The caller of a request, once its key is verified.
#[derive(Debug, Clone)]
pub struct Principal {
    pub key_id: Uuid,
    pub name: String,
    /// The tenant the key belongs to: everything it sends is the tenant's.
    pub tenant_id: Uuid,
    pub tenant: String,
    /// The tenant is disabled: the key is refused (403).
    pub tenant_disabled: bool,
    /// The tenant's sends per second (per API process), if limited.
    pub max_rate_per_second: Option<u32>,
    /// The domains the tenant's From and Reply-To may use; `None` for any.
    pub allowed_from_domains: Option<Vec<String>>,
    pub scopes: Vec<Scope>,
    pub default_connection: Option<String>,
}

impl Principal {
    /// Whether the key may use a route that needs `scope`: `operator` covers `read`
    /// and `admin` (across tenants), never `send`.
    pub fn allows(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
            || (matches!(scope, Scope::Read | Scope::Admin) && self.is_operator())
    }

    pub fn is_operator(&self) -> bool {
        self.scopes.contains(&Scope::Operator)
    }

    /// The tenant whose data the key sees: its own, or every tenant (`None`) for an
    /// operator.
    pub fn sees(&self) -> Option<uuid::Uuid> {
        (!self.is_operator()).then_some(self.tenant_id)
    }
}

/// A newly created key: the full text is shown once and never stored.
pub struct NewKey {
    pub id: Uuid,
    pub key: String,
}

/// Creates and stores a key.
pub async fn create(
    store: &Store,
    tenant_id: Uuid,
    name: &str,
    scopes: &[Scope],
    default_connection: Option<&str>,
) -> Result<NewKey, sqlx::Error> {
    let mut lookup = [0u8; 6];
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut lookup);
    OsRng.fill_bytes(&mut secret);
    let lookup = lookup
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let id = Uuid::now_v7();
    store
        .insert_api_key(&NewApiKey {
            id,
            tenant_id,
            name,
            lookup: &lookup,
            secret_hash: Sha256::digest(secret.as_bytes()).to_vec(),
            scopes: scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            default_connection,
        })
        .await?;
    Ok(NewKey {
        id,
        key: format!("pw_{lookup}_{secret}"),
    })
}

/// Splits a presented key into its lookup and secret parts.
pub fn split(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix("pw_")?;
    let (lookup, secret) = rest.split_once('_')?;
    // Only the shape a key can have reaches the database.
    let lookup_ok = lookup.len() == 12 && lookup.bytes().all(|b| b.is_ascii_hexdigit());
    (lookup_ok && !secret.is_empty() && secret.len() <= 64).then_some((lookup, secret))
}

/// Checks a presented secret against a stored key, in constant time.
pub fn verify(row: &ApiKeyRow, secret: &str) -> bool {
    let presented = Sha256::digest(secret.as_bytes());
    row.secret_hash
        .as_slice()
        .ct_eq(presented.as_slice())
        .into()
}

/// A stored key as a principal (scopes it does not know are ignored).
pub fn principal(row: &ApiKeyRow) -> Principal {
    Principal {
        key_id: row.id,
        name: row.name.clone(),
        tenant_id: row.tenant_id,
        tenant: row.tenant.clone(),
        tenant_disabled: row.tenant_disabled,
        max_rate_per_second: row
            .tenant_max_rate_per_second
            .and_then(|r| u32::try_from(r).ok()),
        allowed_from_domains: row.tenant_allowed_from_domains.clone(),
        scopes: row.scopes.iter().filter_map(|s| s.parse().ok()).collect(),
        default_connection: row.default_connection.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_split_into_lookup_and_secret() {
        assert_eq!(
            split("pw_0123456789ab_c2VjcmV0"),
            Some(("0123456789ab", "c2VjcmV0"))
        );
        assert_eq!(split("pw_short_x"), None);
        assert_eq!(split("Bearer pw_0123456789ab_x"), None);
        assert_eq!(split("0123456789ab_x"), None);
    }

    #[test]
    fn only_the_right_secret_verifies() {
        let row = ApiKeyRow {
            id: Uuid::nil(),
            tenant_id: Uuid::nil(),
            tenant: "default".into(),
            tenant_disabled: false,
            tenant_max_rate_per_second: None,
            tenant_allowed_from_domains: None,
            name: "t".into(),
            lookup: "0123456789ab".into(),
            secret_hash: Sha256::digest(b"right").to_vec(),
            scopes: vec!["send".into()],
            default_connection: None,
            created_at: chrono::Utc::now(),
            revoked_at: None,
        };
        assert!(verify(&row, "right"));
        assert!(!verify(&row, "wrong"));
        assert!(!verify(&row, ""));
    }
}
