//! The dead-letter queue: jobs that could not be processed at all, with the reason
//! the worker gave; requeue one (its message is queued again and due now) or discard
//! it (its message stays failed). Operators only: the queue is the deployment's.

use askama::Template;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::Extension;
use serde::Deserialize;
use uuid::Uuid;

use super::broker::{DeadJob, DEAD_LETTER_PAGE};
use super::session::Checked;
use super::{notice, page, see_other, Chrome, ConsoleError, ConsoleState, Session};

#[derive(Template)]
#[template(path = "dead_letters.html")]
struct ListPage {
    chrome: Chrome,
    notice: Option<&'static str>,
    jobs: Vec<DeadJob>,
    error: Option<String>,
    page_size: usize,
}

impl ListPage {
    /// Whether the list has no row (`list.html`).
    fn empty(&self) -> bool {
        self.jobs.is_empty()
    }
}

fn operator_only(session: &Session) -> Result<(), ConsoleError> {
    if session.principal.is_operator() {
        Ok(())
    } else {
        Err(ConsoleError::Forbidden(
            "the dead-letter queue is the deployment's: an operator key is needed".into(),
        ))
    }
}

#[derive(Deserialize)]
pub struct Done {
    done: Option<String>,
}

/// `GET /ui/dead-letters`.
pub async fn list(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
    Query(done): Query<Done>,
) -> Result<Response, ConsoleError> {
    operator_only(&session)?;
    let (jobs, error) = match state.broker.dead_letters().await {
        Ok(jobs) => (jobs, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    page(&ListPage {
        chrome: Chrome::of(&session, "dead-letters"),
        notice: notice(done.done.as_deref()),
        jobs,
        error,
        page_size: DEAD_LETTER_PAGE,
    })
}

#[derive(Deserialize)]
pub struct JobForm {
    message_id: Uuid,
}

/// `POST /ui/dead-letters/requeue`: the message is queued again, due now, and its job
/// published to the work queue; then the dead letter is taken out.
pub async fn requeue(
    State(state): State<ConsoleState>,
    checked: Checked<JobForm>,
) -> Result<Response, ConsoleError> {
    operator_only(&checked.session)?;
    let id = checked.form.message_id;
    let app = state.app.clone();
    let by = checked.session.principal.name.clone();
    let requeued = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noted = requeued.clone();
    let taken = state
        .broker
        .take_dead_letter(id, || async move {
            // A message no longer failed (requeued or delivered since) is not queued
            // again: its dead letter is stale and only removed.
            if app.store.requeue_dead(id, &by).await? {
                app.publisher.publish(id).await?;
                noted.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(())
        })
        .await
        .map_err(|e| ConsoleError::Unavailable(format!("{e:#}")))?;
    if !taken {
        return Err(ConsoleError::NotFound);
    }
    if !requeued.load(std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(message_id = %id, key = %checked.session.principal.name, "stale dead letter removed");
        return Ok(see_other("/ui/dead-letters?done=stale"));
    }
    tracing::info!(message_id = %id, key = %checked.session.principal.name, "dead letter requeued");
    Ok(see_other("/ui/dead-letters?done=requeued"))
}

/// `POST /ui/dead-letters/discard`: the dead letter is dropped; its message stays
/// failed.
pub async fn discard(
    State(state): State<ConsoleState>,
    checked: Checked<JobForm>,
) -> Result<Response, ConsoleError> {
    operator_only(&checked.session)?;
    let id = checked.form.message_id;
    let taken = state
        .broker
        .take_dead_letter(id, || async { Ok(()) })
        .await
        .map_err(|e| ConsoleError::Unavailable(format!("{e:#}")))?;
    if !taken {
        return Err(ConsoleError::NotFound);
    }
    tracing::info!(message_id = %id, key = %checked.session.principal.name, "dead letter discarded");
    Ok(see_other("/ui/dead-letters?done=discarded"))
}
