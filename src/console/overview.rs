//! The overview: the last hour's accepted / sent / deferred / failed per minute (from
//! PostgreSQL, so every API process draws the same chart), queue depths, live workers,
//! and the connections with their sessions, limits and throttle state.

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use axum::Extension;

use super::broker::Depth;
use super::{page, Chrome, ConsoleError, ConsoleState, Session};
use crate::api::connections::ConnectionView;
use crate::store::console::WorkerRow;

/// The series of the chart, in drawing order.
const SERIES: [&str; 4] = ["accepted", "sent", "deferred", "failed"];
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 160.0;

/// One line of the chart: an SVG polyline's points and the hour's total.
pub struct Series {
    pub kind: &'static str,
    pub points: String,
    pub total: i64,
}

pub struct ConnectionLine {
    pub view: ConnectionView,
    pub open_sessions: i64,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    chrome: Chrome,
    series: Vec<Series>,
    peak: i64,
    depths: Vec<Depth>,
    depths_error: Option<String>,
    workers: Vec<WorkerRow>,
    connections: Vec<ConnectionLine>,
}

/// Polylines of per-minute counts: `counts[kind][59 - minutes_ago]`, oldest left.
fn chart(rows: &[crate::store::console::MinuteCount]) -> (Vec<Series>, i64) {
    let mut counts = [[0i64; 60]; 4];
    for row in rows {
        if let (Some(s), Ok(ago)) = (
            SERIES.iter().position(|k| *k == row.kind),
            usize::try_from(row.minutes_ago),
        ) {
            if ago < 60 {
                counts[s][59 - ago] += row.count;
            }
        }
    }
    let peak = counts.iter().flatten().copied().max().unwrap_or(0).max(1);
    let series = SERIES
        .iter()
        .zip(counts.iter())
        .map(|(kind, minutes)| Series {
            kind,
            total: minutes.iter().sum(),
            points: minutes
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let x = i as f64 * WIDTH / 59.0;
                    let y = HEIGHT - 4.0 - (*n as f64 / peak as f64) * (HEIGHT - 8.0);
                    format!("{x:.1},{y:.1}")
                })
                .collect::<Vec<_>>()
                .join(" "),
        })
        .collect();
    (series, peak)
}

/// `GET /ui`.
pub async fn show(
    State(state): State<ConsoleState>,
    Extension(session): Extension<Session>,
) -> Result<Response, ConsoleError> {
    let store = &state.app.store;
    let sees = session.principal.sees();
    let (series, peak) = chart(&store.events_last_hour(sees).await?);
    let (depths, depths_error) = match state.broker.depths().await {
        Ok(d) => (d, None),
        Err(e) => (Vec::new(), Some(format!("{e:#}"))),
    };
    let workers = store
        .live_workers(state.app.settings.worker.presumed_dead_after * 2)
        .await?;
    // The API's own listing: the same tenancy, limits and throttle state.
    let axum::Json(list) = crate::api::connections::list(
        State(state.app.clone()),
        Extension(session.principal.clone()),
    )
    .await?;
    let sessions: std::collections::HashMap<String, i64> =
        store.open_sessions().await?.into_iter().collect();
    let connections = list
        .connections
        .into_iter()
        .map(|view| ConnectionLine {
            open_sessions: sessions.get(&view.name).copied().unwrap_or(0),
            view,
        })
        .collect();
    page(&OverviewPage {
        chrome: Chrome::of(&session, "overview"),
        series,
        peak,
        depths,
        depths_error,
        workers,
        connections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::console::MinuteCount;

    #[test]
    fn the_chart_puts_the_current_minute_on_the_right() {
        let rows = vec![
            MinuteCount {
                minutes_ago: 0,
                kind: "sent".into(),
                count: 4,
            },
            MinuteCount {
                minutes_ago: 59,
                kind: "accepted".into(),
                count: 2,
            },
        ];
        let (series, peak) = chart(&rows);
        assert_eq!(peak, 4);
        assert_eq!(series[1].total, 4);
        assert!(series[1].points.ends_with("600.0,4.0"));
        assert!(series[0].points.starts_with("0.0,80.0"));
    }
}
