//! Operator commands: API keys and master key rotation.

use anyhow::Context;
use clap::Subcommand;

use crate::config::Settings;
use crate::keys::{self, Scope};
use crate::store::Store;

/// `postwire keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; it is printed once and only its hash is stored.
    Create {
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// Comma-separated: send, read, admin.
        #[arg(long, value_delimiter = ',', default_value = "send,read")]
        scopes: Vec<String>,
        /// Connection used by this key's sends that name none.
        #[arg(long)]
        default_connection: Option<String>,
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
        } => {
            let scopes = scopes
                .iter()
                .map(|s| s.parse::<Scope>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()
                .context("--scopes")?;
            let key = keys::create(&store, &name, &scopes, default_connection.as_deref())
                .await
                .context("storing the key")?;
            println!("{}", key.key);
            eprintln!(
                "created API key {name:?} ({}); store it now: it is not shown again",
                key.id
            );
        }
        KeysCommand::List => {
            for k in store.list_api_keys().await? {
                println!(
                    "{}  pw_{}_…  {:<20} scopes={:<16} default_connection={:<10} {}",
                    k.id,
                    k.lookup,
                    k.name,
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
