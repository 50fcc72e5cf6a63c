//! Builds the RFC 5322 message once, when the message is accepted: the worker sends the
//! stored bytes, so every attempt (and any unavoidable duplicate) carries the same
//! Message-ID and the same content.
//!
//! Whatever the input, the result holds the wire invariant of [`wire`]: text parts
//! are CRLF-normalised by the domain types, headers cannot carry line breaks, and an
//! attachment or inline part goes out as 7bit only when its data already is clean
//! 7-bit text with CRLF line ends, base64 otherwise. The rendered bytes are checked
//! once more before they are handed back.

mod text;
pub mod wire;

pub use text::html_to_text;
pub use wire::WireViolation;

use base64::Engine;
use email_encoding::headers::quoted_string;
use email_encoding::headers::writer::EmailWriter;
use lettre::message::header::{ContentTransferEncoding, HeaderName, HeaderValue};
use lettre::message::{
    Attachment as MimeAttachment, Body as MimeBody, Mailbox as MimeMailbox, MultiPart, SinglePart,
};
use uuid::Uuid;

use crate::domain::{Mailbox, NewMessage};

/// A message ready for SMTP: the bytes after DATA and the envelope.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub raw: Vec<u8>,
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    /// The `Message-ID` header value, with angle brackets.
    pub message_id: String,
}

/// Why a validated message still could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{field}: the address {address:?} is not accepted by the MIME builder")]
    Address {
        field: &'static str,
        address: String,
    },
    #[error("Headers.{0}: not a valid header name")]
    Header(String),
    #[error("the message could not be built: {0}")]
    Build(#[from] lettre::error::Error),
    /// A bug: some input reached the wire unencoded. Nothing may be stored or sent.
    #[error("the rendered message breaks the SMTP wire invariant: {0}")]
    Wire(#[from] WireViolation),
}

/// Renders `message` with `from` as the sender (the message's own or the connection's
/// default). `id` is the postwire message id; `fallback_domain` names the Message-ID
/// domain when the sender's domain is not ASCII. The body and the attachments are
/// moved into the MIME parts (they can be tens of megabytes and are needed once);
/// the message keeps everything else.
pub fn render(
    id: Uuid,
    message: &mut NewMessage,
    from: &Mailbox,
    fallback_domain: &str,
) -> Result<Rendered, RenderError> {
    let domain = from.address.domain();
    let id_domain = if domain.is_ascii() {
        domain
    } else {
        fallback_domain
    };
    let message_id = format!("<{}@{}>", id.simple(), id_domain);

    let mut builder = lettre::Message::builder()
        .from(mime_mailbox(from, "From")?)
        .raw_header(unstructured(
            HeaderName::new_from_ascii_str("Subject"),
            message.subject.as_str(),
        ))
        .message_id(Some(message_id.clone()))
        .raw_header(raw_header("X-Postwire-Id", id.to_string()));
    for (header, field, list) in [
        ("To", "To", &message.recipients.to),
        ("Cc", "CC", &message.recipients.cc),
        ("Reply-To", "ReplyTo", &message.reply_to),
    ] {
        if !list.is_empty() {
            builder = builder.raw_header(mailbox_list(header, field, list)?);
        }
    }
    for h in &message.headers {
        let name = HeaderName::new_from_ascii(h.name.clone())
            .map_err(|_| RenderError::Header(h.name.clone()))?;
        builder = builder.raw_header(unstructured(name, &h.value));
    }
    let importance = message.importance;
    builder = builder
        .raw_header(raw_header(
            "Importance",
            importance.importance_header().to_owned(),
        ))
        .raw_header(raw_header(
            "X-Priority",
            importance.x_priority_header().to_owned(),
        ))
        .raw_header(raw_header(
            "X-MSMail-Priority",
            importance.ms_mail_priority_header().to_owned(),
        ));

    let envelope_to: Vec<lettre::Address> = message
        .recipients
        .envelope()
        .into_iter()
        .map(|a| lettre_address(a.as_str(), "To"))
        .collect::<Result<_, _>>()?;
    let envelope_from = lettre_address(from.address.as_str(), "From")?;
    let envelope = lettre::address::Envelope::new(Some(envelope_from), envelope_to)
        .map_err(RenderError::Build)?;
    // Bcc recipients live only in this envelope, never in a header.
    let builder = builder.envelope(envelope.clone());
    let (built, single) = match body_tree(message) {
        Part::Single(part) => (builder.singlepart(part)?, true),
        Part::Multi(parts) => (builder.multipart(parts)?, false),
    };
    let mut raw = built.formatted();
    // lettre closes every part with a CRLF of its own, which inside a multipart
    // belongs to the next boundary; as the whole body it would add an empty line to a
    // text that already ends with a line break.
    if single && raw.ends_with(b"\r\n\r\n") {
        raw.truncate(raw.len() - 2);
    }
    wire::check(&raw)?;

    Ok(Rendered {
        raw,
        envelope_from: from.address.to_string(),
        envelope_to: envelope.to().iter().map(ToString::to_string).collect(),
        message_id,
    })
}

/// multipart/mixed { multipart/related { multipart/alternative { text, html }, inline… },
/// attachments… }, with each level present only when needed: a plain-text message
/// without attachments is a single text/plain part.
fn body_tree(message: &mut NewMessage) -> Part {
    let body = std::mem::take(&mut message.body).into_string();
    let content = if message.is_html {
        Part::Multi(
            MultiPart::alternative()
                .singlepart(SinglePart::plain(html_to_text(&body)))
                .singlepart(SinglePart::html(body)),
        )
    } else {
        Part::Single(SinglePart::plain(body))
    };

    let (inline, attached): (Vec<_>, Vec<_>) = std::mem::take(&mut message.attachments)
        .into_iter()
        .partition(|a| a.content_id.is_some());

    let content = if inline.is_empty() {
        content
    } else {
        let related =
            inline
                .into_iter()
                .fold(content.into_multipart(MultiPart::related()), |mp, a| {
                    let cid = a.content_id.unwrap_or_default();
                    let part = match a.file_name {
                        Some(name) => MimeAttachment::new_inline_with_name(cid, name),
                        None => MimeAttachment::new_inline(cid),
                    };
                    mp.singlepart(part.body(part_body(a.data), a.content_type))
                });
        Part::Multi(related)
    };

    if attached.is_empty() {
        return content;
    }
    let mixed = attached
        .into_iter()
        .fold(content.into_multipart(MultiPart::mixed()), |mp, a| {
            let name = a.file_name.unwrap_or_else(|| "attachment".to_owned());
            mp.singlepart(MimeAttachment::new(name).body(part_body(a.data), a.content_type))
        });
    Part::Multi(mixed)
}

/// The encoded body of an attachment or inline part. lettre would pick 7bit for short
/// ASCII data without normalising its line ends, so a bare LF followed by `.` would
/// reach the wire as is; here 7bit is kept only for data that already holds the wire
/// invariant, and everything else is base64, which decodes to exactly the input.
fn part_body(data: Vec<u8>) -> MimeBody {
    if data.is_ascii() && wire::check(&data).is_ok() {
        MimeBody::dangerous_pre_encoded(data, ContentTransferEncoding::SevenBit)
    } else {
        MimeBody::new_with_encoding(data, ContentTransferEncoding::Base64)
            .unwrap_or_else(|_| unreachable!("any data can be base64-encoded"))
    }
}

/// A MIME body: one part, or several.
enum Part {
    Single(SinglePart),
    Multi(MultiPart),
}

impl Part {
    fn into_multipart(self, builder: lettre::message::MultiPartBuilder) -> MultiPart {
        match self {
            Part::Single(sp) => builder.singlepart(sp),
            Part::Multi(mp) => builder.multipart(mp),
        }
    }
}

/// An address list header with one mailbox per line. lettre writes a list on a single
/// line, never folded: a hundred recipients with long display names made a To line of
/// 27 kB, over RFC 5322's 998 octets. Each mailbox is encoded as lettre would encode it
/// (quoted or RFC 2047 display name), and the lines are folded after each comma.
fn mailbox_list(
    header: &'static str,
    field: &'static str,
    list: &[Mailbox],
) -> Result<HeaderValue, RenderError> {
    use std::fmt::Write as _;

    let mut raw = Vec::with_capacity(list.len());
    let mut encoded = String::new();
    for (i, m) in list.iter().enumerate() {
        let address = lettre_address(m.address.as_str(), field)?;
        raw.push(MimeMailbox::new(m.name.clone(), address.clone()).to_string());
        let line_start = if i == 0 {
            header.len() + 2
        } else {
            encoded.push_str(",\r\n ");
            1
        };
        let mut w = EmailWriter::new(&mut encoded, line_start, 0, false);
        let written = match &m.name {
            Some(name) => quoted_string::encode(name, &mut w)
                .and_then(|()| {
                    w.space();
                    w.write_char('<')
                })
                .and_then(|()| w.write_str(address.as_ref()))
                .and_then(|()| w.write_char('>')),
            None => w.write_str(address.as_ref()),
        };
        written.map_err(|_| RenderError::Address {
            field,
            address: m.address.to_string(),
        })?;
    }
    Ok(HeaderValue::dangerous_new_pre_encoded(
        HeaderName::new_from_ascii_str(header),
        raw.join(", "),
        encoded,
    ))
}

fn mime_mailbox(m: &Mailbox, field: &'static str) -> Result<MimeMailbox, RenderError> {
    Ok(MimeMailbox::new(
        m.name.clone(),
        lettre_address(m.address.as_str(), field)?,
    ))
}

fn lettre_address(address: &str, field: &'static str) -> Result<lettre::Address, RenderError> {
    address.parse().map_err(|_| RenderError::Address {
        field,
        address: address.to_owned(),
    })
}

/// An unstructured header value (Subject, custom headers). lettre folds at spaces; a
/// run of more than 900 characters without one could not be folded under 998, so such
/// values go out as RFC 2047 encoded words, which may be split anywhere.
fn unstructured(name: HeaderName, value: &str) -> HeaderValue {
    let unfoldable = value.split([' ', '\t']).any(|word| word.len() > 900);
    if !unfoldable {
        return HeaderValue::new(name, value.to_owned());
    }
    let mut encoded = String::new();
    let mut chunk_start = 0;
    let mut chunks = Vec::new();
    for (i, c) in value.char_indices() {
        if i + c.len_utf8() - chunk_start > 45 {
            chunks.push(&value[chunk_start..i]);
            chunk_start = i;
        }
    }
    chunks.push(&value[chunk_start..]);
    for (n, chunk) in chunks.iter().enumerate() {
        if n > 0 {
            encoded.push_str("\r\n ");
        }
        encoded.push_str("=?utf-8?b?");
        encoded.push_str(&base64::engine::general_purpose::STANDARD.encode(chunk.as_bytes()));
        encoded.push_str("?=");
    }
    HeaderValue::dangerous_new_pre_encoded(name, value.to_owned(), encoded)
}

fn raw_header(name: &'static str, value: String) -> HeaderValue {
    HeaderValue::new(HeaderName::new_from_ascii_str(name), value)
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_types_are_checked_by_the_parser() {
        assert!(lettre::message::header::ContentType::parse("image/png").is_ok());
    }
}
