//! A send request after validation.

use base64::Engine;

use super::text::{check_header_text, check_header_text_max, HeaderTextError};

/// Longest Subject, in bytes: far beyond any real one, short enough that listings and
/// headers stay cheap.
pub const MAX_SUBJECT: usize = 4000;

/// Longest attachment `ContentType`, in bytes (RFC 4288 names are at most 127 per
/// part; the rest is room for parameters). A header line must stay under 998 octets.
const MAX_CONTENT_TYPE: usize = 255;
use super::{Importance, Mailbox};

/// A subject line: any UTF-8 text that cannot break out of its header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subject(String);

impl Subject {
    pub fn parse(s: &str) -> Result<Subject, HeaderTextError> {
        check_header_text_max(s, MAX_SUBJECT)?;
        Ok(Subject(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A message body with every line ending normalised to CRLF, so that no bare CR or LF
/// can reach the SMTP peer and be read as an end of data (SMTP smuggling).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Body(String);

impl Body {
    /// Normalises line endings; refuses NUL, which no mail system passes through intact.
    pub fn parse(s: &str) -> Result<Body, &'static str> {
        if s.contains('\0') {
            return Err("must not contain NUL");
        }
        Ok(Body(normalize_crlf(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Turns bare CR, bare LF and CRLF into CRLF.
pub(crate) fn normalize_crlf(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 32);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\r\n");
            }
            '\n' => out.push_str("\r\n"),
            c => out.push(c),
        }
    }
    out
}

/// The connector's `ContentTransferEncoding` of `ContentData`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferEncoding {
    /// `ContentData` is base64.
    Base64,
    /// `ContentData` is the literal content.
    None,
}

impl std::str::FromStr for TransferEncoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "base64" => Ok(TransferEncoding::Base64),
            "none" => Ok(TransferEncoding::None),
            _ => Err(format!("must be base64 or none, not {s:?}")),
        }
    }
}

impl TransferEncoding {
    /// Decodes `ContentData`. Base64 may be wrapped in lines (MIME style).
    pub fn decode(self, data: &str) -> Result<Vec<u8>, String> {
        match self {
            TransferEncoding::None => Ok(data.as_bytes().to_vec()),
            TransferEncoding::Base64 => {
                let decode = |b64: &[u8]| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .map_err(|e| format!("is not valid base64: {e}"))
                };
                // A copy without line breaks only when there are some: the data can
                // be tens of megabytes.
                if data.bytes().any(|b| b.is_ascii_whitespace()) {
                    let compact: Vec<u8> =
                        data.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
                    decode(&compact)
                } else {
                    decode(data.as_bytes())
                }
            }
        }
    }
}

/// An attachment, or an inline part when it has a content id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub file_name: Option<String>,
    /// Without angle brackets; referenced from HTML as `cid:<content_id>`.
    pub content_id: Option<String>,
    /// A parsed and re-serialised MIME type, e.g. `image/png`.
    pub content_type: lettre::message::header::ContentType,
    pub data: Vec<u8>,
}

impl Attachment {
    /// Checks a file name: header-safe text, at most 255 characters.
    pub fn parse_file_name(s: &str) -> Result<String, String> {
        check_header_text(s).map_err(|e| e.to_string())?;
        if s.chars().count() > 255 {
            return Err("must be at most 255 characters".to_owned());
        }
        Ok(s.to_owned())
    }

    /// Checks a content id: `<id>` or `id`, with `id` an RFC 5322 msg-id like
    /// `part1@example.com` or a simple token.
    pub fn parse_content_id(s: &str) -> Result<String, String> {
        let id = s.trim();
        let id = id
            .strip_prefix('<')
            .and_then(|i| i.strip_suffix('>'))
            .unwrap_or(id);
        let ok = !id.is_empty()
            && id.len() <= 250
            && id
                .chars()
                .all(|c| c.is_ascii_graphic() && !"<>()[]\\,;:\"".contains(c));
        if ok {
            Ok(id.to_owned())
        } else {
            Err(format!(
                "{s:?} is not a valid content id (printable ASCII without spaces, <>()[]\\,;:\")"
            ))
        }
    }

    /// Parses a MIME type such as `image/png` or `text/plain; charset=utf-8`.
    pub fn parse_content_type(s: &str) -> Result<lettre::message::header::ContentType, String> {
        check_header_text_max(s, MAX_CONTENT_TYPE).map_err(|e| e.to_string())?;
        lettre::message::header::ContentType::parse(s.trim())
            .map_err(|_| format!("{s:?} is not a MIME type (expected type/subtype)"))
    }
}

/// The recipients of a message, as the headers show them (Bcc never appears there).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Recipients {
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub bcc: Vec<Mailbox>,
}

impl Recipients {
    pub fn count(&self) -> usize {
        self.to.len() + self.cc.len() + self.bcc.len()
    }

    /// Envelope recipients: every address once, in To, CC, Bcc order.
    pub fn envelope(&self) -> Vec<&super::EmailAddress> {
        let mut seen = std::collections::HashSet::new();
        self.to
            .iter()
            .chain(&self.cc)
            .chain(&self.bcc)
            .map(|m| &m.address)
            .filter(|a| seen.insert(a.as_str().to_ascii_lowercase()))
            .collect()
    }
}

/// A validated send: everything the MIME builder needs, nothing left to check.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The sender; when absent the connection's default sender is used.
    pub from: Option<Mailbox>,
    pub recipients: Recipients,
    pub subject: Subject,
    pub body: Body,
    pub is_html: bool,
    pub importance: Importance,
    pub attachments: Vec<Attachment>,
    /// The SMTP connection asked for by name; `None` means the default one.
    pub connection: Option<String>,
    pub reply_to: Vec<Mailbox>,
    pub headers: Vec<CustomHeader>,
    /// Stored with the message and echoed by the lookup; never sent.
    pub metadata: std::collections::BTreeMap<String, String>,
    /// The first attempt is not before this (always in the future; `None` is now).
    pub send_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Failed as expired if not sent by then (after `send_at`).
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A custom header: an `X-` name and a header-safe value (folded when long).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CustomHeader {
    pub name: String,
    pub value: String,
}

impl CustomHeader {
    pub fn parse(name: &str, value: &str) -> Result<CustomHeader, String> {
        // ASCII checked before slicing: a multi-byte character must not be cut.
        let name_ok = name.len() > 2
            && name.len() <= 76
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && name[..2].eq_ignore_ascii_case("x-");
        if !name_ok {
            return Err(format!(
                "{name:?} is not allowed: custom headers are X- names of letters, digits and '-'"
            ));
        }
        check_header_text(value).map_err(|e| e.to_string())?;
        if value.len() > 4000 {
            return Err("the value is longer than 4000 bytes".to_owned());
        }
        Ok(CustomHeader {
            name: name.to_owned(),
            value: value.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_header_names_are_x_names_even_with_multibyte_input() {
        assert!(CustomHeader::parse("X-Tag", "v").is_ok());
        for bad in ["Té", "é-x", "X-é", "Bcc", "X-", "X-a b"] {
            assert!(CustomHeader::parse(bad, "v").is_err(), "{bad}");
        }
    }

    #[test]
    fn line_endings_become_crlf() {
        assert_eq!(
            normalize_crlf("a\nb\rc\r\nd\n\r"),
            "a\r\nb\r\nc\r\nd\r\n\r\n"
        );
        assert_eq!(Body::parse("x\n.\ny").unwrap().as_str(), "x\r\n.\r\ny");
        assert!(Body::parse("a\0b").is_err());
    }

    #[test]
    fn transfer_encodings_decode_and_refuse_garbage() {
        assert_eq!(
            TransferEncoding::Base64.decode("aGVs\nbG8=").unwrap(),
            b"hello"
        );
        assert!(TransferEncoding::Base64.decode("not base64!").is_err());
        assert_eq!(TransferEncoding::None.decode("plain").unwrap(), b"plain");
        assert!("quoted-printable".parse::<TransferEncoding>().is_err());
        assert_eq!(
            "BASE64".parse::<TransferEncoding>(),
            Ok(TransferEncoding::Base64)
        );
    }

    #[test]
    fn content_ids_lose_their_brackets() {
        assert_eq!(Attachment::parse_content_id("<logo@x>").unwrap(), "logo@x");
        assert!(Attachment::parse_content_id("a b").is_err());
        assert!(Attachment::parse_content_id("a\r\nb").is_err());
    }
}
