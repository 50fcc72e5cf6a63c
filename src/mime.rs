//! Builds the RFC 5322 message once, when the message is accepted: the worker sends the
//! stored bytes, so every attempt (and any unavoidable duplicate) carries the same
//! Message-ID and the same content.

use base64::Engine;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{
    Attachment as MimeAttachment, Mailbox as MimeMailbox, MultiPart, SinglePart,
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
}

/// Renders `message` with `from` as the sender (the message's own or the connection's
/// default). `id` is the postwire message id; `fallback_domain` names the Message-ID
/// domain when the sender's domain is not ASCII.
pub fn render(
    id: Uuid,
    message: &NewMessage,
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
        .subject(message.subject.as_str())
        .message_id(Some(message_id.clone()))
        .raw_header(raw_header("X-Postwire-Id", id.to_string()));
    for m in &message.recipients.to {
        builder = builder.to(mime_mailbox(m, "To")?);
    }
    for m in &message.recipients.cc {
        builder = builder.cc(mime_mailbox(m, "CC")?);
    }
    for m in &message.reply_to {
        builder = builder.reply_to(mime_mailbox(m, "ReplyTo")?);
    }
    for h in &message.headers {
        let name = HeaderName::new_from_ascii(h.name.clone())
            .map_err(|_| RenderError::Header(h.name.clone()))?;
        builder = builder.raw_header(custom_header(name, &h.value));
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
fn body_tree(message: &NewMessage) -> Part {
    let body = message.body.as_str();
    let content = if message.is_html {
        Part::Multi(
            MultiPart::alternative()
                .singlepart(SinglePart::plain(html_to_text(body)))
                .singlepart(SinglePart::html(body.to_owned())),
        )
    } else {
        Part::Single(SinglePart::plain(body.to_owned()))
    };

    let (inline, attached): (Vec<_>, Vec<_>) = message
        .attachments
        .iter()
        .partition(|a| a.content_id.is_some());

    let content = if inline.is_empty() {
        content
    } else {
        let related = inline
            .iter()
            .fold(content.into_multipart(MultiPart::related()), |mp, a| {
                let cid = a.content_id.clone().unwrap_or_default();
                let part = match &a.file_name {
                    Some(name) => MimeAttachment::new_inline_with_name(cid, name.clone()),
                    None => MimeAttachment::new_inline(cid),
                };
                mp.singlepart(part.body(a.data.clone(), a.content_type.clone()))
            });
        Part::Multi(related)
    };

    if attached.is_empty() {
        return content;
    }
    let mixed = attached
        .iter()
        .fold(content.into_multipart(MultiPart::mixed()), |mp, a| {
            let name = a
                .file_name
                .clone()
                .unwrap_or_else(|| "attachment".to_owned());
            mp.singlepart(MimeAttachment::new(name).body(a.data.clone(), a.content_type.clone()))
        });
    Part::Multi(mixed)
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

/// A custom header value. lettre folds at spaces; a run of more than 900 characters
/// without one could not be folded under 998, so such values go out as RFC 2047
/// encoded words, which may be split anywhere.
fn custom_header(name: HeaderName, value: &str) -> HeaderValue {
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

/// A readable plain-text version of an HTML body for the text/plain alternative.
pub fn html_to_text(html: &str) -> String {
    let mut out = String::with_capacity(html.len());
    let mut rest = html;
    while let Some(lt) = rest.find('<') {
        out.push_str(&decode_entities(&rest[..lt]));
        let after = &rest[lt..];
        let Some(gt) = after.find('>') else {
            out.push_str(&decode_entities(after));
            rest = "";
            break;
        };
        let tag = after[1..gt].trim().to_ascii_lowercase();
        let name: String = tag
            .trim_start_matches('/')
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        rest = &after[gt + 1..];
        match name.as_str() {
            "style" | "script" | "head" if !tag.starts_with('/') => {
                let close = format!("</{name}");
                rest = match rest.to_ascii_lowercase().find(&close) {
                    Some(i) => rest[i..].find('>').map_or("", |j| &rest[i + j + 1..]),
                    None => "",
                };
            }
            "br" => out.push_str("\r\n"),
            "p" | "div" | "tr" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" | "ul" | "ol"
            | "table" | "blockquote"
                if tag.starts_with('/') =>
            {
                out.push_str("\r\n")
            }
            "li" if !tag.starts_with('/') => out.push_str("\r\n- "),
            _ => {}
        }
    }
    out.push_str(&decode_entities(rest));
    // Collapse the blank lines that markup indentation leaves behind.
    let mut text = String::with_capacity(out.len());
    let mut blank = 0;
    for line in out.split("\r\n").map(|l| l.trim_end()) {
        if line.trim().is_empty() {
            blank += 1;
            if blank > 1 {
                continue;
            }
        } else {
            blank = 0;
        }
        text.push_str(line.trim_start_matches(['\n', '\r']));
        text.push_str("\r\n");
    }
    text.trim().to_owned()
}

fn decode_entities(s: &str) -> String {
    if !s.contains('&') {
        return s.replace(['\r', '\n'], " ");
    }
    s.replace(['\r', '\n'], " ")
        .replace("&nbsp;", " ")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_becomes_readable_text() {
        let text = html_to_text(
            "<html><head><style>p{color:red}</style></head><body><p>Hello&nbsp;<b>Ann</b></p>\
             <ul><li>one</li><li>two &amp; three</li></ul>Bye<br>now</body></html>",
        );
        assert_eq!(
            text,
            "Hello Ann\r\n\r\n- one\r\n- two & three\r\nBye\r\nnow"
        );
    }

    #[test]
    fn content_types_are_checked_by_the_parser() {
        assert!(lettre::message::header::ContentType::parse("image/png").is_ok());
    }
}
