//! What PostgreSQL's sessions were doing during the run, sampled from
//! `pg_stat_activity`. CPU time is not the only thing a database runs out of: commits
//! wait for the WAL to reach the disk, and statements wait for each other's locks.
//! Those waits do not show in the CPU figures, so a phase that is "not CPU-bound" needs
//! this to say what it waited for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::postgres::PgPool;
use sqlx::Row;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// One look at the database's active sessions: how many were in each state.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    states: Vec<(String, u64)>,
}

/// Samples `pg_stat_activity` in the background until [`WaitSampler::finish`].
pub struct WaitSampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// The samples of a run, to be summarised per phase.
pub struct Samples(Vec<Sample>);

/// What the database's active sessions did over a phase.
#[derive(Debug, Clone, Serialize)]
pub struct DbActivity {
    /// Active sessions of the database per sample, on average.
    pub active_avg: f64,
    /// Share of the active session-samples in each state, largest first: `running`
    /// (no wait event) or `Type:Event` as `pg_stat_activity` names the wait.
    pub states: Vec<StateShare>,
}

/// One state's share of a phase's active session-samples.
#[derive(Debug, Clone, Serialize)]
pub struct StateShare {
    pub state: String,
    pub pct: f64,
}

impl WaitSampler {
    /// Starts sampling the database `pool` is connected to, every `every`.
    pub fn start(pool: PgPool, every: Duration) -> WaitSampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop, mut stopped) = watch::channel(false);
        let into = Arc::clone(&samples);
        let task = tokio::spawn(async move {
            loop {
                // A failed look is a missing sample, not a failed benchmark.
                if let Ok(states) = look(&pool).await {
                    if let Ok(mut samples) = into.lock() {
                        samples.push(Sample {
                            at: Instant::now(),
                            states,
                        });
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => return,
                }
            }
        });
        WaitSampler {
            samples,
            stop,
            task,
        }
    }

    /// Stops sampling and hands over what was seen.
    pub async fn finish(self) -> Samples {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        let samples = self.samples.lock().map(|s| s.clone()).unwrap_or_default();
        Samples(samples)
    }
}

async fn look(pool: &PgPool) -> sqlx::Result<Vec<(String, u64)>> {
    let rows = sqlx::query(
        "SELECT coalesce(wait_event_type || ':' || wait_event, 'running') AS state,
                count(*) AS n
           FROM pg_stat_activity
          WHERE datname = current_database() AND state = 'active'
            AND pid <> pg_backend_pid()
          GROUP BY 1",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| Ok((r.try_get("state")?, r.try_get::<i64, _>("n")? as u64)))
        .collect()
}

impl Samples {
    /// The activity over samples taken from `from` up to `to`; `None` without samples.
    pub fn between(&self, from: Instant, to: Instant) -> Option<DbActivity> {
        let phase: Vec<&Sample> = self
            .0
            .iter()
            .filter(|s| s.at >= from && s.at <= to)
            .collect();
        if phase.is_empty() {
            return None;
        }
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        for sample in &phase {
            for (state, n) in &sample.states {
                *totals.entry(state.as_str()).or_default() += n;
            }
        }
        let active: u64 = totals.values().sum();
        let mut states: Vec<StateShare> = totals
            .into_iter()
            .map(|(state, n)| StateShare {
                state: state.to_owned(),
                pct: n as f64 * 100.0 / active.max(1) as f64,
            })
            .collect();
        states.sort_by(|a, b| b.pct.total_cmp(&a.pct));
        Some(DbActivity {
            active_avg: active as f64 / phase.len() as f64,
            states,
        })
    }
}

impl DbActivity {
    /// The largest share spent waiting rather than running, if any.
    pub fn top_wait(&self) -> Option<&StateShare> {
        self.states.iter().find(|s| s.state != "running")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, states: &[(&str, u64)]) -> Sample {
        Sample {
            at,
            states: states.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
        }
    }

    #[test]
    fn a_phase_is_summarised_from_its_own_samples_only() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let samples = Samples(vec![
            sample(at(0), &[("running", 1)]),
            sample(at(100), &[("running", 1), ("LWLock:WALWrite", 2)]),
            sample(at(200), &[("IO:WALSync", 1)]),
            // after the phase
            sample(at(300), &[("Lock:transactionid", 9)]),
        ]);
        let phase = samples.between(at(0), at(250)).unwrap();
        assert_eq!(phase.active_avg, 5.0 / 3.0);
        let shares: Vec<(&str, f64)> = phase
            .states
            .iter()
            .map(|s| (s.state.as_str(), s.pct))
            .collect();
        // Ties keep name order: LWLock before running.
        assert_eq!(
            shares,
            [
                ("LWLock:WALWrite", 40.0),
                ("running", 40.0),
                ("IO:WALSync", 20.0)
            ]
        );
        assert_eq!(phase.top_wait().unwrap().state, "LWLock:WALWrite");
        assert!(samples.between(at(400), at(500)).is_none());
    }
}
