//! The connector's *emailMessage* as it arrives, and its validation into a
//! [`NewMessage`](crate::domain::NewMessage).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::ApiError;
use crate::config::Limits;
use crate::domain::{
    parse_mailbox_list, Attachment, Body, CustomHeader, FieldError, Importance, Mailbox,
    NewMessage, Recipients, Subject, TransferEncoding,
};

const MAX_CUSTOM_HEADERS: usize = 50;
const MAX_METADATA: usize = 50;

/// The connector's `emailMessage`, as it arrives. Field names are the connector's;
/// lower-case spellings are accepted too. Unknown fields are refused so that a typo
/// (say `Bc`) cannot silently drop a recipient.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "To": "Ann <ann@example.com>; bob@example.com",
    "CC": "carl@example.org",
    "Subject": "Grüße",
    "Body": "<p>Hello <b>world</b></p>",
    "IsHtml": true,
    "Importance": "High"
}))]
pub struct EmailMessage {
    /// `;`-separated addresses with optional display names
    /// (`"Doe, John" <john@example.com>`). To, CC and Bcc together need at least one
    /// recipient (at most `limits.max_recipients`).
    #[serde(rename = "To", alias = "to")]
    #[schema(example = "Ann <ann@example.com>; bob@example.com")]
    pub to: Option<String>,
    /// `;`-separated addresses, like `To`.
    #[serde(rename = "CC", alias = "Cc", alias = "cc")]
    pub cc: Option<String>,
    /// `;`-separated addresses, like `To`; in the SMTP envelope only, never in a header.
    #[serde(rename = "Bcc", alias = "BCC", alias = "bcc")]
    pub bcc: Option<String>,
    /// The sender; defaults to the connection's `default_from`.
    #[serde(rename = "From", alias = "from")]
    #[schema(example = "Sender <sender@example.com>")]
    pub from: Option<String>,
    /// UTF-8 (RFC 2047-encoded on the wire).
    #[serde(rename = "Subject", alias = "subject")]
    pub subject: Option<String>,
    /// The text, or HTML when `IsHtml` (then sent with a generated text part).
    #[serde(rename = "Body", alias = "body")]
    pub body: Option<String>,
    /// Default false.
    #[serde(rename = "IsHtml", alias = "isHtml", alias = "is_html")]
    pub is_html: Option<bool>,
    /// Default `Normal`; any case is accepted. Sets `Importance`, `X-Priority` and
    /// `X-MSMail-Priority`.
    #[serde(rename = "Importance", alias = "importance")]
    #[schema(value_type = Option<Importance>)]
    pub importance: Option<String>,
    /// Files, or inline parts when they have a `ContentId` (at most
    /// `limits.max_attachments`).
    #[serde(rename = "Attachments", alias = "attachments")]
    pub attachments: Option<Vec<EmailAttachment>>,
    /// Extension: the SMTP connection to send through (name).
    #[serde(rename = "connection", alias = "Connection")]
    pub connection: Option<String>,
    /// Extension: `Reply-To` addresses, `;`-separated.
    #[serde(rename = "ReplyTo", alias = "replyTo")]
    pub reply_to: Option<String>,
    /// Extension: custom `X-` headers (at most 50), header name to value.
    #[serde(rename = "Headers", alias = "headers")]
    #[schema(schema_with = super::schemas::custom_headers)]
    pub headers: Option<BTreeMap<String, String>>,
    /// Extension: string pairs stored with the message and echoed by the lookup (at
    /// most 50; keys 1-64 bytes, values at most 1024 bytes).
    #[serde(rename = "Metadata", alias = "metadata")]
    #[schema(example = json!({"order": "1234"}))]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Extension: the first attempt is not before this time (RFC 3339, e.g.
    /// `2026-12-24T08:00:00Z`); a time in the past means now. At most 365 days ahead.
    #[serde(rename = "SendAt", alias = "sendAt")]
    #[schema(value_type = Option<DateTime<Utc>>, example = "2026-12-24T08:00:00Z")]
    pub send_at: Option<String>,
    /// Extension: if not sent by this time (RFC 3339), the message fails as
    /// `expired`. Must be after `SendAt` (or after now).
    #[serde(rename = "ExpiresAt", alias = "expiresAt")]
    #[schema(value_type = Option<DateTime<Utc>>, example = "2026-12-24T12:00:00Z")]
    pub expires_at: Option<String>,
}

/// The XML form of [`EmailMessage`]: the same elements, with attachments wrapped as
/// `<Attachments><Attachment>…</Attachment></Attachments>` and headers and metadata as
/// `<Headers><Header name="X-Tag">value</Header></Headers>`.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(xml(name = "emailMessage"))]
pub struct EmailMessageXml {
    #[serde(rename = "@xmlns", default)]
    #[schema(ignore)]
    _xmlns: Option<String>,
    #[serde(rename = "To")]
    pub to: Option<String>,
    #[serde(rename = "CC")]
    pub cc: Option<String>,
    #[serde(rename = "Bcc")]
    pub bcc: Option<String>,
    #[serde(rename = "From")]
    pub from: Option<String>,
    #[serde(rename = "Subject")]
    pub subject: Option<String>,
    #[serde(rename = "Body")]
    pub body: Option<String>,
    #[serde(rename = "IsHtml")]
    pub is_html: Option<bool>,
    #[serde(rename = "Importance")]
    #[schema(value_type = Option<Importance>)]
    pub importance: Option<String>,
    /// `<Attachments><Attachment>…</Attachment></Attachments>`.
    #[serde(rename = "Attachments")]
    #[schema(
        value_type = Option<Vec<EmailAttachment>>,
        xml(name = "Attachment", wrapped(name = "Attachments"))
    )]
    pub attachments: Option<XmlList<EmailAttachment>>,
    #[serde(rename = "connection")]
    pub connection: Option<String>,
    #[serde(rename = "ReplyTo")]
    pub reply_to: Option<String>,
    /// `<Headers><Header name="X-Campaign">spring</Header></Headers>`.
    #[serde(rename = "Headers")]
    #[schema(
        value_type = Option<Vec<super::schemas::HeaderXml>>,
        xml(name = "Header", wrapped(name = "Headers"))
    )]
    pub headers: Option<XmlPairs>,
    /// `<Metadata><Item name="order">1234</Item></Metadata>`.
    #[serde(rename = "Metadata")]
    #[schema(
        value_type = Option<Vec<super::schemas::MetadataItemXml>>,
        xml(name = "Item", wrapped(name = "Metadata"))
    )]
    pub metadata: Option<XmlPairs>,
    #[serde(rename = "SendAt")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub send_at: Option<String>,
    #[serde(rename = "ExpiresAt")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<String>,
}

/// `<Attachments><Attachment>…</Attachment>…</Attachments>`.
#[derive(Debug, Default, Deserialize)]
pub struct XmlList<T> {
    #[serde(rename = "Attachment", default = "Vec::new")]
    pub items: Vec<T>,
}

/// `<Headers><Header name="X-A">1</Header>…</Headers>` (Metadata uses `<Item>`).
#[derive(Debug, Default, Deserialize)]
pub struct XmlPairs {
    #[serde(rename = "$value", default)]
    pub items: Vec<XmlPair>,
}

/// One named value.
#[derive(Debug, Deserialize)]
pub struct XmlPair {
    #[serde(rename = "@name")]
    pub name: String,
    #[serde(rename = "$text", default)]
    pub value: String,
}

impl From<EmailMessageXml> for EmailMessage {
    fn from(x: EmailMessageXml) -> EmailMessage {
        let pairs = |p: Option<XmlPairs>| {
            p.map(|p| p.items.into_iter().map(|i| (i.name, i.value)).collect())
        };
        EmailMessage {
            to: x.to,
            cc: x.cc,
            bcc: x.bcc,
            from: x.from,
            subject: x.subject,
            body: x.body,
            is_html: x.is_html,
            importance: x.importance,
            attachments: x.attachments.map(|a| a.items),
            connection: x.connection,
            reply_to: x.reply_to,
            headers: pairs(x.headers),
            metadata: pairs(x.metadata),
            send_at: x.send_at,
            expires_at: x.expires_at,
        }
    }
}

/// The connector's attachment.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "FileName": "hello.txt",
    "ContentData": "SGVsbG8h",
    "ContentType": "text/plain",
    "ContentTransferEncoding": "base64"
}), xml(name = "Attachment"))]
pub struct EmailAttachment {
    /// The file name shown to the recipient (at most 255 characters).
    #[serde(rename = "FileName", alias = "fileName")]
    pub file_name: Option<String>,
    /// Makes the part inline (`multipart/related`); reference it from the HTML body
    /// as `cid:<ContentId>`.
    #[serde(rename = "ContentId", alias = "contentId")]
    pub content_id: Option<String>,
    /// The content: base64 (may be wrapped in lines) or literal text, as
    /// `ContentTransferEncoding` says (at most `limits.max_attachment_bytes` decoded).
    #[serde(rename = "ContentData", alias = "contentData")]
    #[schema(value_type = String, required = true)]
    pub content_data: Option<String>,
    /// A MIME type, e.g. `image/png` or `text/plain; charset=utf-8`.
    #[serde(rename = "ContentType", alias = "contentType")]
    #[schema(value_type = String, required = true, min_length = 1, example = "image/png")]
    pub content_type: Option<String>,
    /// How `ContentData` is encoded; any case is accepted.
    #[serde(rename = "ContentTransferEncoding", alias = "contentTransferEncoding")]
    #[schema(value_type = super::schemas::ContentTransferEncoding, required = true)]
    pub content_transfer_encoding: Option<String>,
}

/// Collects every field error of a request, so the client sees them all at once.
#[derive(Default)]
struct Errors {
    list: Vec<FieldError>,
    /// Some error is a size limit (413) rather than a malformed value (400).
    too_large: bool,
}

impl Errors {
    fn check<T, E: std::fmt::Display>(&mut self, field: &str, result: Result<T, E>) -> Option<T> {
        result
            .map_err(|e| self.list.push(FieldError::new(field, e)))
            .ok()
    }

    fn required<T>(&mut self, field: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.list.push(FieldError::new(field, "is required"));
        }
        value
    }

    fn over_limit(&mut self, field: &str, message: String) {
        self.too_large = true;
        self.list.push(FieldError::new(field, message));
    }

    fn into_result<T>(self, value: impl FnOnce() -> T) -> Result<T, ApiError> {
        if self.list.is_empty() {
            return Ok(value());
        }
        // 413 only when every problem is a size limit: a malformed field is the thing
        // to fix first.
        let status = if self.too_large && self.list.iter().all(|e| e.message.contains("limit")) {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        Err(ApiError::Invalid {
            status,
            errors: self.list,
        })
    }
}

impl EmailMessage {
    /// Bytes of content (body and attachment data) as they arrived: how much work
    /// validating and rendering this message is.
    pub fn content_len(&self) -> usize {
        let attachments: usize = self
            .attachments
            .iter()
            .flatten()
            .map(|a| a.content_data.as_ref().map_or(0, String::len))
            .sum();
        self.body.as_ref().map_or(0, String::len) + attachments
    }

    /// Turns the request into a validated message, reporting every bad field at once.
    /// Size limits give 413, anything else 400.
    pub fn into_domain(self, limits: &Limits) -> Result<NewMessage, ApiError> {
        let mut errors = Errors::default();
        let list = |errors: &mut Errors, field: &str, value: Option<String>| {
            value
                .and_then(|v| errors.check(field, parse_mailbox_list(&v)))
                .unwrap_or_default()
        };
        let recipients = Recipients {
            to: list(&mut errors, "To", self.to),
            cc: list(&mut errors, "CC", self.cc),
            bcc: list(&mut errors, "Bcc", self.bcc),
        };
        let count = recipients.count();
        if count == 0 && errors.list.is_empty() {
            errors.list.push(FieldError::new(
                "To",
                "at least one recipient (To, CC or Bcc) is required",
            ));
        } else if count > limits.max_recipients {
            errors.list.push(FieldError::new(
                "To",
                format!(
                    "too many recipients: {count} in To, CC and Bcc (at most {})",
                    limits.max_recipients
                ),
            ));
        }

        let from = match self.from.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(f) => errors.check("From", Mailbox::parse(f)),
        };
        let subject = errors.check(
            "Subject",
            Subject::parse(self.subject.as_deref().unwrap_or_default()),
        );
        let body_len = self.body.as_ref().map_or(0, String::len);
        // The rendered message is never smaller than its body: a body over the
        // message limit is refused before any work is spent on it.
        let body = if body_len > limits.max_message_bytes {
            errors.over_limit(
                "Body",
                format!(
                    "the body is {body_len} bytes, over the limit of {} for a whole message",
                    limits.max_message_bytes
                ),
            );
            None
        } else {
            errors.check(
                "Body",
                Body::parse(self.body.as_deref().unwrap_or_default()),
            )
        };
        let importance = match self.importance.as_deref() {
            None => Some(Importance::Normal),
            Some(i) => errors.check("Importance", i.parse::<Importance>()),
        };

        let items = self.attachments.unwrap_or_default();
        if items.len() > limits.max_attachments {
            errors.over_limit(
                "Attachments",
                format!(
                    "{} attachments, over the limit of {}",
                    items.len(),
                    limits.max_attachments
                ),
            );
        }
        let attachments: Vec<Attachment> = items
            .into_iter()
            .enumerate()
            .filter_map(|(i, a)| parse_attachment(&mut errors, i, a, limits))
            .collect();

        let reply_to = self
            .reply_to
            .and_then(|r| errors.check("ReplyTo", parse_mailbox_list(&r)))
            .unwrap_or_default();
        let mut headers = Vec::new();
        for (name, value) in self.headers.unwrap_or_default() {
            let field = format!("Headers.{}", printable(&name));
            if let Some(header) = errors.check(&field, CustomHeader::parse(&name, &value)) {
                headers.push(header);
            }
        }
        if headers.len() > MAX_CUSTOM_HEADERS {
            errors.list.push(FieldError::new(
                "Headers",
                format!("at most {MAX_CUSTOM_HEADERS} headers"),
            ));
        }
        let metadata = self.metadata.unwrap_or_default();
        if metadata.len() > MAX_METADATA {
            errors.list.push(FieldError::new(
                "Metadata",
                format!("at most {MAX_METADATA} entries"),
            ));
        }
        for (k, v) in &metadata {
            if let Err(e) = check_metadata(k, v) {
                errors
                    .list
                    .push(FieldError::new(format!("Metadata.{}", printable(k)), e));
            }
        }
        let (send_at, expires_at) = schedule(&mut errors, self.send_at, self.expires_at);
        let connection = self.connection.filter(|c| !c.trim().is_empty());
        errors.into_result(|| NewMessage {
            from,
            recipients,
            subject: subject.unwrap_or_default(),
            body: body.unwrap_or_default(),
            is_html: self.is_html.unwrap_or(false),
            importance: importance.unwrap_or_default(),
            attachments,
            connection,
            reply_to,
            headers,
            metadata,
            send_at,
            expires_at,
        })
    }
}

/// The furthest ahead a send can be scheduled.
const MAX_SCHEDULE_DAYS: i64 = 365;

/// `SendAt` and `ExpiresAt`: RFC 3339 times; a `SendAt` in the past means now (`None`),
/// and `ExpiresAt` must fall after the first attempt can.
fn schedule(
    errors: &mut Errors,
    send_at: Option<String>,
    expires_at: Option<String>,
) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let parse = |errors: &mut Errors, field: &str, value: Option<String>| {
        let value = value.filter(|v| !v.trim().is_empty())?;
        errors.check(
            field,
            DateTime::parse_from_rfc3339(value.trim())
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    format!("{value:?} is not an RFC 3339 time (e.g. 2026-12-24T08:00:00Z)")
                }),
        )
    };
    let now = Utc::now();
    let send_at = parse(errors, "SendAt", send_at).filter(|t| *t > now);
    if send_at.is_some_and(|t| t > now + chrono::Duration::days(MAX_SCHEDULE_DAYS)) {
        errors.list.push(FieldError::new(
            "SendAt",
            format!("must be at most {MAX_SCHEDULE_DAYS} days ahead"),
        ));
    }
    let expires_at = parse(errors, "ExpiresAt", expires_at);
    if let Some(expires) = expires_at {
        let first = send_at.unwrap_or(now);
        if expires <= first {
            let after = if send_at.is_some() { "SendAt" } else { "now" };
            errors.list.push(FieldError::new(
                "ExpiresAt",
                format!("must be after {after} ({})", first.to_rfc3339()),
            ));
        }
    }
    (send_at, expires_at)
}

/// A client-chosen key as it can appear in a field path: control characters shown as
/// `\u{..}` escapes, so that a problem document never carries them.
fn printable(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A metadata entry: the key 1-64 bytes of printable text, the value at most 1024
/// bytes without NUL (PostgreSQL's jsonb refuses `\u0000`, and one refused value must
/// not fail the other messages written with it).
fn check_metadata(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > 64 || value.len() > 1024 {
        return Err("keys are 1-64 bytes, values at most 1024 bytes".to_owned());
    }
    crate::domain::check_header_text(key).map_err(|e| format!("the key {e}"))?;
    if value.contains('\0') {
        return Err("the value must not contain NUL".to_owned());
    }
    Ok(())
}

fn parse_attachment(
    errors: &mut Errors,
    i: usize,
    a: EmailAttachment,
    limits: &Limits,
) -> Option<Attachment> {
    let field = |name: &str| format!("Attachments[{i}].{name}");
    let non_empty = |v: Option<String>| v.filter(|v| !v.trim().is_empty());

    let data = errors.required(&field("ContentData"), a.content_data);
    let content_type = errors
        .required(&field("ContentType"), non_empty(a.content_type))
        .and_then(|t| errors.check(&field("ContentType"), Attachment::parse_content_type(&t)));
    let encoding = errors
        .required(
            &field("ContentTransferEncoding"),
            non_empty(a.content_transfer_encoding),
        )
        .and_then(|e| {
            errors.check(
                &field("ContentTransferEncoding"),
                e.parse::<TransferEncoding>(),
            )
        });
    let file_name = non_empty(a.file_name)
        .map(|n| errors.check(&field("FileName"), Attachment::parse_file_name(&n)));
    let content_id = non_empty(a.content_id)
        .map(|c| errors.check(&field("ContentId"), Attachment::parse_content_id(&c)));
    let bytes = match (data, encoding) {
        (Some(data), Some(encoding)) => errors.check(&field("ContentData"), encoding.decode(&data)),
        _ => None,
    }?;
    if bytes.len() > limits.max_attachment_bytes {
        errors.over_limit(
            &field("ContentData"),
            format!(
                "the attachment is {} bytes, over the limit of {}",
                bytes.len(),
                limits.max_attachment_bytes
            ),
        );
        return None;
    }
    // Outer `Some` with inner `None`: given but invalid (already reported).
    if matches!(file_name, Some(None)) || matches!(content_id, Some(None)) {
        return None;
    }
    Some(Attachment {
        file_name: file_name.flatten(),
        content_id: content_id.flatten(),
        content_type: content_type?,
        data: bytes,
    })
}

#[cfg(test)]
mod tests {
    use base64::Engine;
    use proptest::prelude::*;

    use super::*;
    use crate::mime::RenderError;

    fn limits() -> Limits {
        Limits {
            max_recipients: 100,
            max_attachments: 50,
            max_attachment_bytes: 1 << 20,
            max_message_bytes: 1 << 24,
            batch_max: 500,
        }
    }

    /// Pieces an attacker strings together: every line end alone and in smuggling
    /// shapes, dots, NUL, long unbroken runs, non-ASCII, encoded-word look-alikes,
    /// quoting and separators.
    fn piece(header_safe: bool) -> BoxedStrategy<String> {
        let mut pieces = vec![
            ".",
            " ",
            "\t",
            "é",
            "📬",
            "\u{2028}",
            "=?utf-8?b?",
            "?=",
            "=",
            "<",
            ">",
            "\"",
            ";",
            ",",
            "\\",
            "MAIL FROM:<e@x.com>",
            "--boundary",
            "Content-Type: text/html",
        ];
        if !header_safe {
            pieces.extend([
                "\r",
                "\n",
                "\r\n",
                "\r\n.\r\n",
                "\n.\n",
                "\r.\r",
                "\n.\r\n",
                "\0",
            ]);
        }
        let fixed = prop::sample::select(pieces).prop_map(str::to_owned);
        prop_oneof![
            4 => fixed,
            2 => "[a-zA-Z0-9]{1,12}",
            1 => (990usize..1010).prop_map(|n| "x".repeat(n)),
            1 => (70usize..80).prop_map(|n| "é".repeat(n)),
        ]
        .boxed()
    }

    fn text(header_safe: bool, max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(piece(header_safe), 0..max).prop_map(|p| p.concat())
    }

    fn attachment(data: String, content_id: Option<&str>, encoding: &str) -> EmailAttachment {
        let content_data = match encoding {
            "base64" => base64::engine::general_purpose::STANDARD.encode(data.as_bytes()),
            _ => data,
        };
        EmailAttachment {
            file_name: Some("f.txt".to_owned()),
            content_id: content_id.map(str::to_owned),
            content_data: Some(content_data),
            content_type: Some("text/plain".to_owned()),
            content_transfer_encoding: Some(encoding.to_owned()),
        }
    }

    fn render(request: EmailMessage) -> Result<(), String> {
        let Ok(mut message) = request.into_domain(&limits()) else {
            // Refused at the edge: nothing is rendered, stored or sent.
            return Ok(());
        };
        let from = Mailbox::parse("Sender <sender@example.com>").unwrap();
        match crate::mime::render(uuid::Uuid::nil(), &mut message, &from, "postwire.test") {
            Err(RenderError::Wire(violation)) => Err(violation.to_string()),
            _ => Ok(()),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The wire check in `mime::render` (500, nothing stored) cannot be reached:
        /// whatever passes the edge renders wire-clean.
        #[test]
        fn whatever_passes_validation_renders_wire_clean(
            subject in text(true, 30),
            name in text(true, 10),
            header in text(true, 30),
            file_name in text(true, 10),
            body in text(false, 60),
            literal in text(false, 60),
            binary in prop::collection::vec(any::<u8>(), 0..2000),
            is_html in any::<bool>(),
            importance in prop::sample::select(vec!["High", "low", "NORMAL"]),
            recipients in 1usize..100,
        ) {
            let mut headers = BTreeMap::new();
            headers.insert("X-Tag".to_owned(), header.clone());
            let binary = EmailAttachment {
                file_name: Some(file_name),
                content_data: Some(base64::engine::general_purpose::STANDARD.encode(&binary)),
                content_type: Some("application/octet-stream".to_owned()),
                content_transfer_encoding: Some("base64".to_owned()),
                ..Default::default()
            };
            let request = EmailMessage {
                to: Some(
                    (0..recipients)
                        .map(|i| format!("\"{}\" <ann{i}@example.com>", name.replace(['"', '\\'], "")))
                        .collect::<Vec<_>>()
                        .join("; "),
                ),
                cc: Some(format!("{} <carl@example.net>", name.replace(['"', '\\', '<', '>', ';', ','], ""))),
                reply_to: Some("help@example.com".to_owned()),
                subject: Some(subject),
                body: Some(body.replace('\0', "")),
                is_html: Some(is_html),
                importance: Some(importance.to_owned()),
                headers: Some(headers),
                attachments: Some(vec![
                    attachment(literal.replace('\0', ""), None, "none"),
                    attachment(literal.clone(), Some("part@example.com"), "base64"),
                    binary,
                ]),
                ..Default::default()
            };
            prop_assert_eq!(render(request), Ok(()));
        }

        /// Every field hostile at once: the edge refuses what it must, and nothing it
        /// lets through breaks the wire invariant.
        #[test]
        fn hostile_text_in_every_field_never_breaks_the_wire(
            subject in text(false, 20),
            name in text(false, 8),
            header in text(false, 20),
            body in text(false, 40),
        ) {
            let mut headers = BTreeMap::new();
            headers.insert("X-Tag".to_owned(), header);
            let request = EmailMessage {
                to: Some(format!("\"{name}\" <ann@example.com>")),
                from: Some(format!("{name} <s@example.com>")),
                subject: Some(subject),
                body: Some(body.clone()),
                is_html: Some(true),
                headers: Some(headers),
                attachments: Some(vec![attachment(body, None, "none")]),
                ..Default::default()
            };
            prop_assert_eq!(render(request), Ok(()));
        }
    }

    /// lettre writes address lists on one line; they are folded one mailbox a line.
    #[test]
    fn a_hundred_recipients_with_long_names_fold_under_998_octets() {
        for name in ["n".repeat(250), "é".repeat(120), "a b ".repeat(60)] {
            let to: Vec<String> = (0..100)
                .map(|i| format!("\"{name}\" <user{i}@example.com>"))
                .collect();
            let request = EmailMessage {
                to: Some(to.join("; ")),
                reply_to: Some(to[..10].join("; ")),
                ..Default::default()
            };
            let mut message = request.into_domain(&limits()).expect("valid");
            let from = Mailbox::parse(&format!("\"{name}\" <s@example.com>")).unwrap();
            let rendered = crate::mime::render(uuid::Uuid::nil(), &mut message, &from, "x.test");
            assert!(rendered.is_ok(), "{:?}", rendered.err());
        }
    }

    #[test]
    fn the_wire_check_stops_a_message_that_would_smuggle() {
        // What the check in mime::render guards against, had an encoder let it by.
        let raw = b"Subject: x\r\n\r\nok\n.\r\nMAIL FROM:<evil@x.com>\r\n";
        assert!(crate::mime::wire::check(raw).is_err());
    }
}
