//! Email addresses and mailboxes (`"Ann" <ann@example.com>`), strict enough that nothing
//! parsed here can smuggle a header, an SMTP parameter or a second address.

use std::fmt;

use super::text::{check_header_text_max, is_invisible};

const MAX_LOCAL_PART: usize = 64;
const MAX_DOMAIN: usize = 253;
const MAX_LABEL: usize = 63;
/// Longest display name, in bytes.
const MAX_NAME: usize = 256;

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("is empty")]
    Empty,
    #[error("{0:?} is not an email address (expected local@domain)")]
    Malformed(String),
    #[error("{0:?}: quoted local parts are not accepted")]
    Quoted(String),
    #[error("{0:?}: the local part must not start with '-'")]
    LeadingDash(String),
    #[error("{0:?}: the local part is longer than 64 characters")]
    LocalTooLong(String),
    #[error("{0:?}: the domain is longer than 253 characters")]
    DomainTooLong(String),
    #[error("{0:?}: invalid domain")]
    BadDomain(String),
    #[error("{0:?}: invalid character {1:?} in the local part")]
    BadLocalChar(String, char),
    #[error("{0:?}: unexpected text after '>'")]
    TrailingData(String),
    #[error("{0:?}: missing '>'")]
    Unclosed(String),
    #[error("display name {0}")]
    BadName(super::HeaderTextError),
}

/// An addr-spec `local@domain`: dot-atom local part (UTF-8 allowed for SMTPUTF8), a host
/// name domain, no quoting, comments or whitespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EmailAddress(String);

impl EmailAddress {
    /// Parses an addr-spec.
    pub fn parse(input: &str) -> Result<EmailAddress, AddressError> {
        let s = input;
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if s.starts_with('"') {
            return Err(AddressError::Quoted(s.to_owned()));
        }
        let Some(at) = s.rfind('@') else {
            return Err(AddressError::Malformed(s.to_owned()));
        };
        let (local, domain) = (&s[..at], &s[at + 1..]);
        if local.is_empty() || domain.is_empty() {
            return Err(AddressError::Malformed(s.to_owned()));
        }
        if local.starts_with('-') {
            return Err(AddressError::LeadingDash(s.to_owned()));
        }
        if local.chars().count() > MAX_LOCAL_PART {
            return Err(AddressError::LocalTooLong(s.to_owned()));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(AddressError::Malformed(s.to_owned()));
        }
        if let Some(c) = local.chars().find(|&c| !is_atext(c)) {
            return Err(AddressError::BadLocalChar(s.to_owned(), c));
        }
        if domain.len() > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong(s.to_owned()));
        }
        if !is_domain(domain) {
            return Err(AddressError::BadDomain(s.to_owned()));
        }
        Ok(EmailAddress(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The part after the `@`.
    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or_default()
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for EmailAddress {
    type Error = AddressError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        EmailAddress::parse(&s)
    }
}

impl From<EmailAddress> for String {
    fn from(a: EmailAddress) -> String {
        a.0
    }
}

/// RFC 5322 atext, plus non-ASCII letters (RFC 6531), minus anything invisible.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || "!#$%&'*+-/=?^_`{|}~.".contains(c)
        || (!c.is_ascii() && !c.is_control() && !c.is_whitespace() && !is_invisible(c))
}

/// A host name: dot-separated labels of letters, digits and inner hyphens (non-ASCII
/// letters allowed for IDNs), at least two labels.
fn is_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    labels.len() >= 2
        && labels.iter().all(|label| {
            !label.is_empty()
                && label.len() <= MAX_LABEL
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| {
                    c.is_ascii_alphanumeric()
                        || c == '-'
                        || (!c.is_ascii() && c.is_alphanumeric() && !is_invisible(c))
                })
        })
}

/// An address with an optional display name: `Ann <ann@example.com>`,
/// `"Doe, John" <john@example.com>` or a bare `ann@example.com`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: EmailAddress,
}

impl Mailbox {
    /// Parses one mailbox.
    pub fn parse(input: &str) -> Result<Mailbox, AddressError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        let Some(open) = find_unquoted(s, '<') else {
            if s.contains('>') {
                return Err(AddressError::Malformed(s.to_owned()));
            }
            return Ok(Mailbox {
                name: None,
                address: EmailAddress::parse(s)?,
            });
        };
        let rest = &s[open + 1..];
        let Some(close) = rest.find('>') else {
            return Err(AddressError::Unclosed(s.to_owned()));
        };
        if !rest[close + 1..].trim().is_empty() {
            return Err(AddressError::TrailingData(s.to_owned()));
        }
        let address = EmailAddress::parse(rest[..close].trim())?;
        let name = unquote_name(s[..open].trim());
        check_header_text_max(&name, MAX_NAME).map_err(AddressError::BadName)?;
        Ok(Mailbox {
            name: (!name.is_empty()).then_some(name),
            address,
        })
    }

    /// Formats the mailbox for display and storage (`Name <addr>`); the MIME builder does
    /// the RFC 2047 encoding itself.
    pub fn to_display(&self) -> String {
        match &self.name {
            Some(name) => format!("{name} <{}>", self.address),
            None => self.address.to_string(),
        }
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_display())
    }
}

/// Parses the connector's recipient list: mailboxes separated by `;` (or `,`), where
/// separators inside a quoted display name do not count. Empty items are ignored.
pub fn parse_mailbox_list(input: &str) -> Result<Vec<Mailbox>, AddressError> {
    split_unquoted(input)
        .into_iter()
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(Mailbox::parse)
        .collect()
}

fn split_unquoted(s: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ';' | ',' if !quoted => {
                items.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items.push(&s[start..]);
    items
}

fn find_unquoted(s: &str, needle: char) -> Option<usize> {
    let (mut quoted, mut escaped) = (false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == needle && !quoted => return Some(i),
            _ => {}
        }
    }
    None
}

fn unquote_name(name: &str) -> String {
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                if c == '\\' {
                    if let Some(next) = chars.next() {
                        out.push(next);
                    }
                } else {
                    out.push(c);
                }
            }
            out
        }
        None => name.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_named_mailboxes_parse() {
        let m = Mailbox::parse("\"Doe, John\" <john@example.com>").unwrap();
        assert_eq!(m.name.as_deref(), Some("Doe, John"));
        assert_eq!(m.address.as_str(), "john@example.com");
        let m = Mailbox::parse("Ann Smith <ann@example.com>").unwrap();
        assert_eq!(m.name.as_deref(), Some("Ann Smith"));
        let m = Mailbox::parse("  bob@example.com ").unwrap();
        assert_eq!(m.name, None);
        let m = Mailbox::parse("Jürgen <jürgen@bücher.de>").unwrap();
        assert_eq!(m.address.domain(), "bücher.de");
    }

    #[test]
    fn address_tricks_are_refused() {
        for bad in [
            "\"a@b\"@c.com",
            "u@a.com(x)evil.com",
            "-oQ/tmp/x@example.com",
            "a b@example.com",
            "a@example",
            "a@-example.com",
            "a..b@example.com",
            ".a@example.com",
            "a@exa_mple.com",
            "zero\u{200B}width@example.com",
            "a@example.com\r\nBcc: x@y.com",
            "a\0@example.com",
            "noat.example.com",
            "@example.com",
            "a@",
        ] {
            assert!(Mailbox::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(matches!(
            Mailbox::parse("Ann <a@example.com> x@evil.com"),
            Err(AddressError::TrailingData(_))
        ));
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(matches!(
            Mailbox::parse(&long_local),
            Err(AddressError::LocalTooLong(_))
        ));
        let long_domain = format!("a@{}.com", vec!["b".repeat(60); 5].join("."));
        assert!(Mailbox::parse(&long_domain).is_err());
        assert!(Mailbox::parse("Evil\r\nBcc: x <a@example.com>").is_err());
    }

    #[test]
    fn recipient_lists_split_on_semicolons_outside_quotes() {
        let list =
            parse_mailbox_list("a@x.com; \"Doe; John\" <john@y.com>;; b@z.com, c@z.com").unwrap();
        let addrs: Vec<&str> = list.iter().map(|m| m.address.as_str()).collect();
        assert_eq!(addrs, ["a@x.com", "john@y.com", "b@z.com", "c@z.com"]);
        assert_eq!(list[1].name.as_deref(), Some("Doe; John"));
        assert!(parse_mailbox_list("a@x.com;bad").is_err());
    }
}
