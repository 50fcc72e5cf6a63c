//! Messages: the search, a message's page (timeline, per-recipient results, headers,
//! attachments, a sandboxed preview of its HTML), cancel and retry now.
//!
//! Tenancy is the JSON API's: `Principal::sees()` for lookups, `chosen_tenant` for the
//! search's tenant filter, so an `admin` key's session finds its own tenant's messages
//! only and another tenant's message page is a 404.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, NaiveDateTime, Utc};
use mail_parser::{MimeHeaders, PartType};
use serde::Deserialize;
use uuid::Uuid;

use super::session::{Checked, Empty};
use super::{notice, page, see_other, Chrome, ConsoleError, ConsoleState, Session};
use crate::domain::{parse_connection_name, RecipientResult, Status};
use crate::store::console::{MessageSearch, RetryNow};
use crate::store::{EventRecord, ListFilter, MessageRecord, MessageSummary};

/// Rows per page of the search.
const PAGE: u32 = 50;

/// The search form; every field optional, empty fields ignored.
#[derive(Debug, Default, Deserialize)]
pub struct SearchForm {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub recipient: String,
    #[serde(default)]
    pub sender: String,
    #[serde(default)]
    pub subject: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub connection: String,
    #[serde(default)]
    pub tenant: String,
    /// `YYYY-MM-DDTHH:MM` (a `datetime-local` input, taken as UTC) or RFC 3339.
    #[serde(default)]
    pub since: String,
    #[serde(default)]
    pub until: String,
    #[serde(default)]
    pub cursor: String,
}

fn given(s: &str) -> Option<&str> {
    Some(s.trim()).filter(|s| !s.is_empty())
}

/// A time from the form: RFC 3339, or a `datetime-local` value in UTC.
pub(super) fn time(field: &str, value: &str) -> Result<Option<DateTime<Utc>>, ConsoleError> {
    let Some(value) = given(value) else {
        return Ok(None);
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(value) {
        return Ok(Some(t.with_timezone(&Utc)));
    }
    ["%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"]
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(value, f).ok())
        .map(|t| Some(t.and_utc()))
        .ok_or_else(|| ConsoleError::BadRequest(format!("{field}: {value:?} is not a time")))
}

#[derive(Template)]
#[template(path = "messages.html")]
struct SearchPage {
    chrome: Chrome,
    form: SearchForm,
    statuses: [&'static str; 6],
    rows: Vec<MessageSummary>,
    searched: bool,
    next: Option<String>,
}

impl SearchPage {
    /// Whether the list has no row (`list.html`).
    fn empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The query string of the next page: this search's fields and the cursor.
    fn next_query(&self, cursor: &str) -> String {
        let f = &self.form;
        serde_urlencoded::to_string([
            ("id", f.id.as_str()),
            ("recipient", &f.recipient),
            ("sender", &f.sender),
            ("subject", &f.subject),
            ("status", &f.status),
            ("connection", &f.connection),
            ("tenant", &f.tenant),
            ("since", &f.since),
            ("until", &f.until),
            ("cursor", cursor),
        ])
        .unwrap_or_default()
    }
}

/// `GET /ui/messages?recipient=&sender=&subject=&status=&connection=&tenant=&since=&until=&cursor=`.
pub async fn search(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
    Query(form): Query<SearchForm>,
) -> Result<Response, ConsoleError> {
    let caller = &session.principal;
    let tenant = crate::api::messages::chosen_tenant(
        &state.app,
        caller,
        given(&form.tenant).map(str::to_owned),
    )
    .await?;
    let bad = |field: &str, e: String| ConsoleError::BadRequest(format!("{field}: {e}"));
    // The id first, so a bad form names the same field as before.
    let id = given(&form.id)
        .map(|id| Uuid::parse_str(id).map_err(|_| bad("id", "is not a message id".into())))
        .transpose()?;
    let search = MessageSearch {
        listing: ListFilter {
            tenant,
            status: given(&form.status)
                .map(|s| {
                    s.parse::<Status>()
                        .map_err(|e| bad("status", e.to_string()))
                })
                .transpose()?,
            connection: given(&form.connection)
                .map(|c| parse_connection_name(c).map_err(|e| bad("connection", e.to_string())))
                .transpose()?,
            since: time("since", &form.since)?,
            until: time("until", &form.until)?,
            before: given(&form.cursor)
                .map(|c| Uuid::parse_str(c).map_err(|_| bad("cursor", "is not a cursor".into())))
                .transpose()?,
            limit: PAGE,
        },
        id,
        recipient: given(&form.recipient).map(str::to_owned),
        sender: given(&form.sender).map(str::to_owned),
        subject_words: form
            .subject
            .split_whitespace()
            .take(8)
            .map(str::to_owned)
            .collect(),
    };
    let rows = state.app.store.search_messages(&search).await?;
    let next = (rows.len() == PAGE as usize)
        .then(|| rows.last().map(|m| m.id.to_string()))
        .flatten();
    let searched = [
        &form.id,
        &form.recipient,
        &form.sender,
        &form.subject,
        &form.status,
        &form.connection,
        &form.tenant,
        &form.since,
        &form.until,
    ]
    .iter()
    .any(|f| given(f).is_some());
    page(&SearchPage {
        chrome: Chrome::of(&session, "messages"),
        form,
        statuses: [
            "queued",
            "sending",
            "deferred",
            "sent",
            "failed",
            "cancelled",
        ],
        rows,
        searched,
        next,
    })
}

/// A part of the stored message that is an attachment.
pub struct Attachment {
    pub name: String,
    pub content_type: String,
    pub bytes: usize,
    pub inline: bool,
}

/// What the stored message holds besides the record.
#[derive(Default)]
pub struct Content {
    pub headers: Vec<(String, String)>,
    pub attachments: Vec<Attachment>,
    pub has_html: bool,
    pub text: Option<String>,
    /// Retention dropped the content.
    pub purged: bool,
}

/// The parts of a stored message the page shows.
fn content(raw: Option<&[u8]>) -> Content {
    let Some(raw) = raw else {
        return Content {
            purged: true,
            ..Content::default()
        };
    };
    let Some(message) = mail_parser::MessageParser::default().parse(raw) else {
        return Content::default();
    };
    Content {
        headers: message
            .headers_raw()
            .map(|(name, value)| (name.to_owned(), value.trim().to_owned()))
            .collect(),
        attachments: message
            .attachments()
            .map(|part| Attachment {
                name: part.attachment_name().unwrap_or("(no name)").to_owned(),
                content_type: part
                    .content_type()
                    .map(|c| match &c.c_subtype {
                        Some(sub) => format!("{}/{}", c.c_type, sub),
                        None => c.c_type.to_string(),
                    })
                    .unwrap_or_default(),
                bytes: part.contents().len(),
                inline: part.content_id().is_some(),
            })
            .collect(),
        has_html: message
            .parts
            .iter()
            .any(|p| matches!(p.body, PartType::Html(_))),
        text: message.parts.iter().find_map(|p| match &p.body {
            PartType::Text(t) => Some(t.chars().take(20_000).collect()),
            _ => None,
        }),
        purged: false,
    }
}

#[derive(Template)]
#[template(path = "message.html")]
struct MessagePage {
    chrome: Chrome,
    notice: Option<&'static str>,
    m: MessageRecord,
    events: Vec<EventRecord>,
    recipients: Vec<RecipientResult>,
    content: Content,
    cancellable: bool,
    retriable: bool,
}

#[derive(Deserialize)]
pub struct Done {
    done: Option<String>,
}

fn parse_id(id: &str) -> Result<Uuid, ConsoleError> {
    Uuid::parse_str(id).map_err(|_| ConsoleError::NotFound)
}

/// `GET /ui/messages/{id}`: 404 for a message the key does not see.
pub async fn show(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Query(done): Query<Done>,
) -> Result<Response, ConsoleError> {
    let id = parse_id(&id)?;
    let sees = session.principal.sees();
    let store = &state.app.store;
    let m = store
        .get_message(id, sees)
        .await?
        .ok_or(ConsoleError::NotFound)?;
    let events = store.events(id, sees).await?.unwrap_or_default();
    let raw = store.message_body(id, sees).await?;
    let content = content(raw.as_deref());
    page(&MessagePage {
        chrome: Chrome::of(&session, "messages"),
        notice: notice(done.done.as_deref()),
        cancellable: matches!(m.status, Status::Queued | Status::Deferred),
        retriable: matches!(m.status, Status::Queued | Status::Deferred),
        recipients: m.recipient_results.clone().unwrap_or_default(),
        m,
        events,
        content,
    })
}

/// The preview's policy: a sandbox (no scripts, no forms, its own opaque origin),
/// nothing loaded from anywhere but `data:` images and the part's own styles.
pub const PREVIEW_CSP: &str = "sandbox; default-src 'none'; img-src data:; \
     style-src 'unsafe-inline'; frame-ancestors 'self'";

/// `GET /ui/messages/{id}/preview`: the HTML part alone, for the page's
/// `<iframe sandbox>`.
pub async fn preview(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
) -> Result<Response, ConsoleError> {
    let id = parse_id(&id)?;
    let raw = state
        .app
        .store
        .message_body(id, session.principal.sees())
        .await?
        .ok_or(ConsoleError::NotFound)?;
    let message = mail_parser::MessageParser::default()
        .parse(&raw)
        .ok_or(ConsoleError::NotFound)?;
    let html = message
        .parts
        .iter()
        .find_map(|p| match &p.body {
            PartType::Html(h) => Some(h.to_string()),
            _ => None,
        })
        .ok_or(ConsoleError::NotFound)?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, PREVIEW_CSP),
            (header::X_FRAME_OPTIONS, "SAMEORIGIN"),
        ],
        html,
    )
        .into_response())
}

/// `POST /ui/messages/{id}/cancel`: the API's cancel (same tenancy, same 409).
pub async fn cancel(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    checked: Checked<Empty>,
) -> Result<Response, ConsoleError> {
    parse_id(&id)?;
    let _done = crate::api::messages::cancel(
        State(state.app.clone()),
        Extension(checked.session.principal.clone()),
        Path(id.clone()),
    )
    .await?;
    Ok(see_other(&format!("/ui/messages/{id}?done=cancelled")))
}

/// `POST /ui/messages/{id}/retry`: a deferred message is attempted at once.
pub async fn retry(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    checked: Checked<Empty>,
) -> Result<Response, ConsoleError> {
    let id = parse_id(&id)?;
    let caller = &checked.session.principal;
    match state.app.store.retry_now(id, caller.sees()).await? {
        RetryNow::Due => {}
        RetryNow::NotFound => return Err(ConsoleError::NotFound),
        RetryNow::Conflict(status) => {
            return Err(ConsoleError::Conflict(format!(
                "the message is {status}: only a queued or deferred message can be retried"
            )))
        }
    }
    // Published now; if the broker is down, the reconciler publishes the overdue
    // message later.
    if let Err(e) = state.app.publisher.publish(id).await {
        tracing::warn!(message_id = %id, error = %format!("{e:#}"), "retry now: publish failed; the reconciler will publish it");
    }
    tracing::info!(message_id = %id, key = %caller.name, "retry now from the console");
    Ok(see_other(&format!("/ui/messages/{id}?done=retried")))
}
