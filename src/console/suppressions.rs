//! Suppressions: search, add, remove; the tenant's list (an operator picks the tenant).
//! Adding and removing are the JSON API's handlers.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::{Extension, Json};
use serde::Deserialize;

use super::session::Checked;
use super::{notice, page, see_other, Chrome, ConsoleError, ConsoleState, Session};
use crate::api::suppressions::{NewSuppression, SuppressionQuery, SuppressionView, TenantQuery};
use crate::api::Payload;

#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    tenant: String,
    #[serde(default)]
    cursor: String,
    done: Option<String>,
}

#[derive(Template)]
#[template(path = "suppressions.html")]
struct ListPage {
    chrome: Chrome,
    notice: Option<&'static str>,
    q: String,
    tenant: String,
    rows: Vec<SuppressionView>,
    next: Option<String>,
}

impl ListPage {
    /// Whether the list has no row (`list.html`).
    fn empty(&self) -> bool {
        self.rows.is_empty()
    }
}

fn tenant(name: &str) -> Option<String> {
    Some(name.trim().to_owned()).filter(|t| !t.is_empty())
}

/// `GET /ui/suppressions?q=&tenant=&cursor=`.
pub async fn list(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
    Query(query): Query<ListQuery>,
) -> Result<Response, ConsoleError> {
    let caller = &session.principal;
    let (rows, next) = if query.q.trim().is_empty() {
        let Json(list) = crate::api::suppressions::list(
            State(state.app.clone()),
            Extension(caller.clone()),
            crate::api::Query(SuppressionQuery {
                tenant: tenant(&query.tenant),
                limit: Some(100),
                cursor: tenant(&query.cursor),
            }),
        )
        .await?;
        (list.suppressions, list.next_cursor)
    } else {
        // The same tenant choice as the API's list.
        let chosen = crate::api::messages::chosen_tenant(&state.app, caller, tenant(&query.tenant))
            .await?
            .unwrap_or(caller.tenant_id);
        let rows = state
            .app
            .store
            .search_suppressions(chosen, query.q.trim(), 100)
            .await?;
        (rows.into_iter().map(SuppressionView::from).collect(), None)
    };
    page(&ListPage {
        chrome: Chrome::of(&session, "suppressions"),
        notice: notice(query.done.as_deref()),
        q: query.q,
        tenant: query.tenant,
        rows,
        next,
    })
}

#[derive(Deserialize)]
pub struct AddForm {
    address: String,
    reason: String,
    #[serde(default)]
    tenant: String,
}

fn back(tenant: &str, done: &str) -> Response {
    let query =
        serde_urlencoded::to_string([("tenant", tenant), ("done", done)]).unwrap_or_default();
    see_other(&format!("/ui/suppressions?{query}"))
}

/// `POST /ui/suppressions`.
pub async fn add(
    State(state): State<ConsoleState>,
    checked: Checked<AddForm>,
) -> Result<Response, ConsoleError> {
    let form = checked.form;
    crate::api::suppressions::add(
        State(state.app.clone()),
        Extension(checked.session.principal.clone()),
        crate::api::Query(TenantQuery {
            tenant: tenant(&form.tenant),
        }),
        Payload(
            NewSuppression {
                address: form.address,
                reason: form.reason,
            },
            [0; 32],
        ),
    )
    .await?;
    Ok(back(&form.tenant, "added"))
}

#[derive(Deserialize)]
pub struct RemoveForm {
    address: String,
    #[serde(default)]
    tenant: String,
}

/// `POST /ui/suppressions/remove`.
pub async fn remove(
    State(state): State<ConsoleState>,
    checked: Checked<RemoveForm>,
) -> Result<Response, ConsoleError> {
    let form = checked.form;
    crate::api::suppressions::delete(
        State(state.app.clone()),
        Extension(checked.session.principal.clone()),
        Path(form.address),
        crate::api::Query(TenantQuery {
            tenant: tenant(&form.tenant),
        }),
    )
    .await?;
    Ok(back(&form.tenant, "removed"))
}
