//! Connections: list, detail, verify (each step's reply), edit limits. Every action is
//! the JSON API's handler called with the session's key, so tenancy and validation
//! are the API's.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;

use super::session::{Checked, Empty};
use super::{notice, page, see_other, Chrome, ConsoleError, ConsoleState, Session};
use crate::api::connections::{ConnectionPatch, ConnectionView};
use crate::api::Payload;
use crate::smtp::VerifyReport;

#[derive(Template)]
#[template(path = "connections.html")]
struct ListPage {
    chrome: Chrome,
    connections: Vec<ConnectionView>,
}

impl ListPage {
    /// Whether the list has no row (`list.html`).
    fn empty(&self) -> bool {
        self.connections.is_empty()
    }
}

/// `GET /ui/connections`.
pub async fn list(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
) -> Result<Response, ConsoleError> {
    let Json(list) = crate::api::connections::list(
        State(state.app.clone()),
        Extension(session.principal.clone()),
    )
    .await?;
    page(&ListPage {
        chrome: Chrome::of(&session, "connections"),
        connections: list.connections,
    })
}

#[derive(Template)]
#[template(path = "connection.html")]
struct DetailPage {
    chrome: Chrome,
    notice: Option<&'static str>,
    c: ConnectionView,
    report: Option<VerifyReport>,
}

#[derive(Deserialize)]
pub struct Done {
    done: Option<String>,
}

async fn detail(
    state: &ConsoleState,
    session: &Session,
    name: String,
) -> Result<ConnectionView, ConsoleError> {
    let Json(c) = crate::api::connections::get(
        State(state.app.clone()),
        Extension(session.principal.clone()),
        Path(name),
    )
    .await?;
    Ok(c)
}

/// `GET /ui/connections/{name}`.
pub async fn show(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
    Path(name): Path<String>,
    Query(done): Query<Done>,
) -> Result<Response, ConsoleError> {
    let c = detail(&state, &session, name).await?;
    page(&DetailPage {
        chrome: Chrome::of(&session, "connections"),
        notice: notice(done.done.as_deref()),
        c,
        report: None,
    })
}

/// `POST /ui/connections/{name}/verify`: the page again, with each step's reply.
pub async fn verify(
    State(state): State<ConsoleState>,
    Path(name): Path<String>,
    checked: Checked<Empty>,
) -> Result<Response, ConsoleError> {
    let session = checked.session;
    let Json(report) = crate::api::connections::verify(
        State(state.app.clone()),
        Extension(session.principal.clone()),
        Path(name.clone()),
    )
    .await?;
    // The configured default connection is verifiable by an operator but has no row.
    let c = detail(&state, &session, name).await.ok();
    match c {
        Some(c) => page(&DetailPage {
            chrome: Chrome::of(&session, "connections"),
            notice: None,
            c,
            report: Some(report),
        }),
        None => page(&VerifyOnly {
            chrome: Chrome::of(&session, "connections"),
            report,
        }),
    }
}

#[derive(Template)]
#[template(path = "verify.html")]
struct VerifyOnly {
    chrome: Chrome,
    report: VerifyReport,
}

/// The limits form: empty rate means no limit.
#[derive(Deserialize)]
pub struct LimitsForm {
    max_connections: String,
    #[serde(default)]
    max_rate_per_second: String,
}

/// `POST /ui/connections/{name}/limits`: the API's PATCH with the two limits.
pub async fn limits(
    State(state): State<ConsoleState>,
    Path(name): Path<String>,
    checked: Checked<LimitsForm>,
) -> Result<Response, ConsoleError> {
    let form = checked.form;
    let max_connections = form.max_connections.trim().parse::<u16>().map_err(|_| {
        ConsoleError::BadRequest("max_connections: must be a whole number from 1 to 1000".into())
    })?;
    let rate = form.max_rate_per_second.trim();
    let max_rate_per_second = if rate.is_empty() {
        None
    } else {
        Some(rate.parse::<u32>().map_err(|_| {
            ConsoleError::BadRequest(
                "max_rate_per_second: must be a whole number of at least 1, or empty".into(),
            )
        })?)
    };
    let patch = ConnectionPatch {
        max_connections: Some(max_connections),
        max_rate_per_second: Some(max_rate_per_second),
        ..ConnectionPatch::default()
    };
    let _done = crate::api::connections::update(
        State(state.app.clone()),
        Extension(checked.session.principal.clone()),
        Path(name.clone()),
        Payload(patch, [0; 32]),
    )
    .await?;
    let encoded = percent_encoding::utf8_percent_encode(&name, percent_encoding::NON_ALPHANUMERIC);
    Ok(see_other(&format!("/ui/connections/{encoded}?done=saved")))
}
