//! Operator commands: tenants, API keys and master key rotation.

use anyhow::Context;
use clap::Subcommand;

use crate::config::Settings;
use crate::domain::{parse_sender_domains, parse_tenant_name, parse_tenant_rate, DEFAULT_TENANT};
use crate::keys::{self, Scope};
use crate::store::{Store, TenantRow};

/// `postwire tenants ...`
#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant: a producing application with its own keys, connections and mail.
    Create {
        name: String,
        /// Sends per second accepted from its keys (per API process); unset: no limit.
        #[arg(long)]
        max_rate_per_second: Option<u32>,
        /// Comma-separated domains its From and Reply-To may use; unset: any.
        #[arg(long, value_delimiter = ',')]
        allowed_from_domains: Option<Vec<String>>,
    },
    /// List tenants.
    List,
    /// Change a tenant's limits.
    Update {
        name: String,
        #[arg(long, conflicts_with = "no_rate_limit")]
        max_rate_per_second: Option<u32>,
        /// Remove the rate limit.
        #[arg(long)]
        no_rate_limit: bool,
        #[arg(long, value_delimiter = ',', conflicts_with = "any_from_domain")]
        allowed_from_domains: Option<Vec<String>>,
        /// Allow any sender domain.
        #[arg(long)]
        any_from_domain: bool,
    },
    /// Disable a tenant: its keys get 403 and its queued mail waits.
    Disable { name: String },
    /// Enable a disabled tenant again.
    Enable { name: String },
}

/// `postwire keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once and only its hash is stored.
    Create {
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// Comma-separated: send, read, admin, operator.
        #[arg(long, value_delimiter = ',', default_value = "send,read")]
        scopes: Vec<String>,
        /// Connection used by this key's sends that name none.
        #[arg(long)]
        default_connection: Option<String>,
        /// The tenant the key belongs to.
        #[arg(long, default_value = DEFAULT_TENANT)]
        tenant: String,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id, public part or name.
    Revoke { key: String },
}

/// `postwire connections ...`
#[derive(Debug, Subcommand)]
pub enum ConnectionsCommand {
    /// Re-encrypt every stored password under the current security.master_key (after
    /// moving the old key to security.previous_master_keys).
    Rekey,
}

async fn store(settings: &Settings) -> anyhow::Result<Store> {
    let store = Store::connect_lazy(&settings.database)?;
    store.migrate().await?;
    Ok(store)
}

/// Runs a `keys` command, printing to stdout.
pub async fn keys(settings: &Settings, command: KeysCommand) -> anyhow::Result<()> {
    let store = store(settings).await?;
    match command {
        KeysCommand::Create {
            name,
            scopes,
            default_connection,
            tenant,
        } => {
            let tenant = find_tenant(&store, &tenant).await?;
            let scopes = scopes
                .iter()
                .map(|s| s.parse::<Scope>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()
                .context("--scopes")?;
            let key = keys::create(
                &store,
                tenant.id,
                &name,
                &scopes,
                default_connection.as_deref(),
            )
            .await
            .context("storing the key")?;
            println!("{}", key.key);
            eprintln!(
                "created API key {name:?} ({}) of tenant {:?}; store it now: it is not shown again",
                key.id, tenant.name
            );
        }
        KeysCommand::List => {
            for k in store.list_api_keys().await? {
                println!(
                    "{}  pw_{}_…  {:<20} tenant={:<12} scopes={:<16} default_connection={:<10} {}",
                    k.id,
                    k.lookup,
                    k.name,
                    k.tenant,
                    k.scopes.join(","),
                    k.default_connection.as_deref().unwrap_or("-"),
                    match k.revoked_at {
                        Some(at) => format!("revoked {}", at.to_rfc3339()),
                        None => "active".to_owned(),
                    }
                );
            }
        }
        KeysCommand::Revoke { key } => {
            let lookup = keys::split(&key).map(|(l, _)| l.to_owned()).unwrap_or(key);
            match store.revoke_api_key(&lookup).await? {
                0 => anyhow::bail!("no active key matches {lookup:?}"),
                n => eprintln!("revoked {n} key(s)"),
            }
        }
    }
    Ok(())
}

async fn find_tenant(store: &Store, name: &str) -> anyhow::Result<TenantRow> {
    store
        .tenant_by_name(name)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no tenant named {name:?} (postwire tenants list)"))
}

fn rate(n: u32) -> anyhow::Result<i32> {
    parse_tenant_rate(n).map_err(|e| anyhow::anyhow!("--max-rate-per-second: {e}"))
}

/// Runs a `tenants` command, printing to stdout.
pub async fn tenants(settings: &Settings, command: TenantsCommand) -> anyhow::Result<()> {
    let store = store(settings).await?;
    match command {
        TenantsCommand::Create {
            name,
            max_rate_per_second,
            allowed_from_domains,
        } => {
            let name = parse_tenant_name(&name).map_err(anyhow::Error::msg)?;
            let now = chrono::Utc::now();
            let tenant = TenantRow {
                id: uuid::Uuid::now_v7(),
                name,
                max_rate_per_second: max_rate_per_second.map(rate).transpose()?,
                allowed_from_domains: allowed_from_domains
                    .map(|d| parse_sender_domains(&d))
                    .transpose()
                    .map_err(|e| anyhow::anyhow!("--allowed-from-domains: {e}"))?,
                disabled_at: None,
                created_at: now,
                updated_at: now,
            };
            anyhow::ensure!(
                store.insert_tenant(&tenant).await?,
                "a tenant named {:?} already exists",
                tenant.name
            );
            println!("{}", tenant.id);
            eprintln!("created tenant {:?}", tenant.name);
        }
        TenantsCommand::List => {
            for t in store.list_tenants().await? {
                println!(
                    "{}  {:<20} rate={:<8} from_domains={:<30} {}",
                    t.id,
                    t.name,
                    t.max_rate_per_second
                        .map_or_else(|| "-".to_owned(), |r| format!("{r}/s")),
                    t.allowed_from_domains
                        .as_ref()
                        .map_or_else(|| "any".to_owned(), |d| d.join(",")),
                    match t.disabled_at {
                        Some(at) => format!("disabled {}", at.to_rfc3339()),
                        None => "enabled".to_owned(),
                    }
                );
            }
        }
        TenantsCommand::Update {
            name,
            max_rate_per_second,
            no_rate_limit,
            allowed_from_domains,
            any_from_domain,
        } => {
            let mut tenant = find_tenant(&store, &name).await?;
            if let Some(r) = max_rate_per_second {
                tenant.max_rate_per_second = Some(rate(r)?);
            }
            if no_rate_limit {
                tenant.max_rate_per_second = None;
            }
            if let Some(d) = allowed_from_domains {
                tenant.allowed_from_domains = Some(
                    parse_sender_domains(&d)
                        .map_err(|e| anyhow::anyhow!("--allowed-from-domains: {e}"))?,
                );
            }
            if any_from_domain {
                tenant.allowed_from_domains = None;
            }
            store.update_tenant(&tenant).await?;
            eprintln!("updated tenant {name:?}");
        }
        TenantsCommand::Disable { name } => {
            let mut tenant = find_tenant(&store, &name).await?;
            tenant.disabled_at = tenant.disabled_at.or_else(|| Some(chrono::Utc::now()));
            store.update_tenant(&tenant).await?;
            eprintln!(
                "disabled tenant {name:?}: its keys are refused within security.api_key_cache"
            );
        }
        TenantsCommand::Enable { name } => {
            let mut tenant = find_tenant(&store, &name).await?;
            tenant.disabled_at = None;
            store.update_tenant(&tenant).await?;
            eprintln!("enabled tenant {name:?}");
        }
    }
    Ok(())
}

/// Runs a `connections` command.
pub async fn connections(settings: &Settings, command: ConnectionsCommand) -> anyhow::Result<()> {
    let store = store(settings).await?;
    match command {
        ConnectionsCommand::Rekey => {
            let cipher = settings.cipher()?;
            let changed = store
                .reencrypt_passwords(|id, sealed| {
                    if !cipher.is_stale(sealed) {
                        return Ok(None);
                    }
                    let clear = cipher
                        .decrypt(sealed, id.as_bytes())
                        .with_context(|| format!("decrypting the password of connection {id}"))?;
                    // Rewritten in the current format: bound to its connection.
                    Ok(Some(cipher.encrypt(&clear, id.as_bytes())))
                })
                .await?;
            eprintln!(
                "re-encrypted {changed} password(s) under the current master key, each bound to its connection"
            );
        }
    }
    Ok(())
}
