//! A tenant: one producing application served by the deployment. It owns API keys,
//! SMTP connections and messages; its keys see nothing of other tenants.

/// The tenant of everything made before tenants existed, and of keys created without
/// `--tenant`.
pub const DEFAULT_TENANT: &str = "default";

/// The id of [`DEFAULT_TENANT`], fixed by the migration that made tenants.
pub const DEFAULT_TENANT_ID: uuid::Uuid = uuid::Uuid::from_u128(1);

/// A tenant name: 1 to 64 of letters, digits, `.`, `_` and `-`.
pub fn parse_tenant_name(name: &str) -> Result<String, String> {
    super::connection::parse_name(name).map_err(|_| {
        format!("{name:?} is not a tenant name (1-64 letters, digits, '.', '_' or '-')")
    })
}

/// A tenant's `max_rate_per_second`: 1 or more.
pub fn parse_tenant_rate(rate: u32) -> Result<i32, String> {
    i32::try_from(rate)
        .ok()
        .filter(|r| *r > 0)
        .ok_or_else(|| format!("{rate} is not a rate (1 to {})", i32::MAX))
}

/// Sender domains, lower-cased: each a DNS name of letters, digits, `-` and `.`.
pub fn parse_sender_domains(domains: &[String]) -> Result<Vec<String>, String> {
    domains
        .iter()
        .map(|d| {
            let d = d.trim().trim_end_matches('.').to_ascii_lowercase();
            let ok = !d.is_empty()
                && d.len() <= 253
                && d.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && !label.starts_with('-')
                        && !label.ends_with('-')
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if ok {
                Ok(d)
            } else {
                Err(format!("{d:?} is not a domain name"))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_domains_are_lower_cased_and_checked() {
        assert_eq!(
            parse_sender_domains(&["Example.COM".into(), "mail.example.org.".into()]),
            Ok(vec![
                "example.com".to_owned(),
                "mail.example.org".to_owned()
            ])
        );
        for bad in ["", "exa mple.com", "-x.com", "a..b", "x@y.com"] {
            assert!(parse_sender_domains(&[bad.to_owned()]).is_err(), "{bad}");
        }
        assert!(parse_tenant_name("acme-1").is_ok());
        assert!(parse_tenant_name("acme corp").is_err());
    }
}
