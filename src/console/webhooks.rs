//! Webhooks: the endpoints, an endpoint's attempts, and the recover button. Read and
//! changed only through the JSON API's handlers (webhook delivery's internals are
//! its own business).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;

use super::session::Checked;
use super::{notice, page, see_other, Chrome, ConsoleError, ConsoleState, Session};
use crate::api::webhooks::{AttemptQuery, AttemptView, Recover, WebhookView};
use crate::api::Payload;

#[derive(Template)]
#[template(path = "webhooks.html")]
struct ListPage {
    chrome: Chrome,
    webhooks: Vec<WebhookView>,
}

impl ListPage {
    /// Whether the list has no row (`list.html`).
    fn empty(&self) -> bool {
        self.webhooks.is_empty()
    }
}

/// `GET /ui/webhooks`.
pub async fn list(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
) -> Result<Response, ConsoleError> {
    let Json(list) = crate::api::webhooks::list(
        State(state.app.clone()),
        Extension(session.principal.clone()),
    )
    .await?;
    page(&ListPage {
        chrome: Chrome::of(&session, "webhooks"),
        webhooks: list.webhooks,
    })
}

#[derive(Template)]
#[template(path = "webhook.html")]
struct DetailPage {
    chrome: Chrome,
    notice: Option<&'static str>,
    w: WebhookView,
    attempts: Vec<AttemptView>,
    next: Option<String>,
    /// The recover form's default: a day ago.
    since: String,
}

impl DetailPage {
    /// Whether the list has no row (`list.html`).
    fn empty(&self) -> bool {
        self.attempts.is_empty()
    }
}

#[derive(Deserialize)]
pub struct DetailQuery {
    cursor: Option<String>,
    done: Option<String>,
}

/// `GET /ui/webhooks/{id}`: the endpoint and its attempts, newest first.
pub async fn show(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
    Path(id): Path<String>,
    Query(q): Query<DetailQuery>,
) -> Result<Response, ConsoleError> {
    let Json(w) = crate::api::webhooks::get(
        State(state.app.clone()),
        Extension(session.principal.clone()),
        Path(id.clone()),
    )
    .await?;
    let Json(attempts) = crate::api::webhooks::attempts(
        State(state.app.clone()),
        Extension(session.principal.clone()),
        Path(id),
        crate::api::Query(AttemptQuery {
            status: None,
            since: None,
            limit: Some(100),
            cursor: q.cursor.filter(|c| !c.is_empty()),
        }),
    )
    .await?;
    page(&DetailPage {
        chrome: Chrome::of(&session, "webhooks"),
        notice: notice(q.done.as_deref()),
        w,
        attempts: attempts.attempts,
        next: attempts.next_cursor,
        since: (chrono::Utc::now() - chrono::Duration::days(1))
            .format("%Y-%m-%dT%H:%M")
            .to_string(),
    })
}

#[derive(Deserialize)]
pub struct RecoverForm {
    /// `datetime-local` (UTC) or RFC 3339.
    since: String,
}

/// `POST /ui/webhooks/{id}/recover`: the API's recover from `since`.
pub async fn recover(
    State(state): State<ConsoleState>,
    Path(id): Path<String>,
    checked: Checked<RecoverForm>,
) -> Result<Response, ConsoleError> {
    let since = super::messages::time("since", &checked.form.since)?
        .ok_or_else(|| ConsoleError::BadRequest("since: say from when".into()))?;
    let _done = crate::api::webhooks::recover(
        State(state.app.clone()),
        Extension(checked.session.principal.clone()),
        Path(id.clone()),
        Payload(
            Recover {
                since: since.to_rfc3339(),
            },
            [0; 32],
        ),
    )
    .await?;
    let id = uuid::Uuid::parse_str(&id).map_err(|_| ConsoleError::NotFound)?;
    Ok(see_other(&format!("/ui/webhooks/{id}?done=recovered")))
}
