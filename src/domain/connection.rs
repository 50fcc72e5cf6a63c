use serde::{Deserialize, Serialize};

/// How the SMTP session is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS; refuses to continue without it.
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
    /// No encryption: for local relays and test sinks only.
    None,
}

/// A secret (an SMTP password): never printed, never serialised.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The clear text, for the one place that needs it (AUTH, encryption).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A connection name: 1 to 64 of letters, digits, `.`, `_` and `-`.
pub fn parse_connection_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} is not a connection name (1-64 letters, digits, '.', '_' or '-')"
        ))
    }
}

/// A reusable SMTP connection: where and how to deliver, and as whom.
#[derive(Debug, Clone)]
pub struct SmtpConnection {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub default_from: Option<super::Mailbox>,
    /// Simultaneous SMTP sessions per worker process.
    pub max_connections: u16,
    /// Messages per second per worker process; `None` for no limit.
    pub max_rate_per_second: Option<u32>,
    /// Changes whenever the connection is updated, so pools can be rebuilt.
    pub revision: i64,
}
