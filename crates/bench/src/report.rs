//! The results: one serialisable [`Report`], printed as a table or as JSON, and the
//! bottleneck hint derived from where the CPU time went.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::pgwait::DbActivity;
use super::procfs::CpuUsage;
use super::stats::Percentiles;

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Start of the run (database clock), RFC 3339.
    pub started_at: String,
    pub url: String,
    pub mode: String,
    pub concurrency: usize,
    /// Messages per request (1 in single mode).
    pub batch_size: usize,
    pub body_bytes: usize,
    pub sending: Sending,
    pub delivery: Delivery,
    pub processes: Vec<ProcessPeak>,
    pub cpu: CpuPhases,
    /// What PostgreSQL's sessions were doing, sampled.
    pub db: DbPhases,
    pub bottleneck: String,
}

/// Phase 1: HTTP.
#[derive(Debug, Serialize)]
pub struct Sending {
    pub requests: u64,
    /// Messages offered to the API.
    pub offered: u64,
    /// Messages answered with 202.
    pub accepted: u64,
    /// Wall time of the sending phase.
    pub seconds: f64,
    pub accepted_per_sec: f64,
    /// Round trip of each accepted request.
    pub request_latency_ms: Option<Percentiles>,
    /// Failed requests by kind.
    pub errors: BTreeMap<String, u64>,
}

/// Phase 2: what the database recorded about the accepted messages.
#[derive(Debug, Serialize)]
pub struct Delivery {
    pub sent: u64,
    /// From the run's start to the last `sent_at`.
    pub seconds: Option<f64>,
    /// `sent` / `seconds`.
    pub delivered_per_sec: f64,
    /// `sent_at - created_at` of each sent message.
    pub end_to_end_ms: Option<Percentiles>,
    /// Accepted messages by status at the end of the wait.
    pub final_status: BTreeMap<String, u64>,
    /// Accepted messages not terminal when the wait ended (0 unless it timed out).
    pub not_terminal: u64,
    /// From the run's start until all were seen terminal (polled, so up to ~0.5 s late).
    pub wait_seconds: f64,
}

/// Peak memory of one observed process.
#[derive(Debug, Serialize)]
pub struct ProcessPeak {
    pub role: String,
    pub pid: u32,
    /// Larger of the sampled `VmRSS` and the final `VmHWM`; `None` if never readable.
    pub peak_rss_mib: Option<f64>,
}

/// CPU use while sending and while draining the queue after sending.
#[derive(Debug, Serialize)]
pub struct CpuPhases {
    pub sending: CpuUsage,
    /// `None` when draining took under a second.
    pub draining: Option<CpuUsage>,
}

/// PostgreSQL's activity while sending and while draining (`None`: no samples).
#[derive(Debug, Serialize)]
pub struct DbPhases {
    pub sending: Option<DbActivity>,
    pub draining: Option<DbActivity>,
}

/// A wait taking at least this share of PostgreSQL's active time is named in the hint.
const NOTABLE_WAIT_PCT: f64 = 20.0;

/// Machine busier than this (% of all CPUs) counts as CPU-bound.
const SATURATED_PCT: f64 = 85.0;

/// A one-line guess at what limited the run, from where the CPU time went and what
/// PostgreSQL waited for.
pub fn bottleneck_hint(
    cpu: &CpuPhases,
    db: &DbPhases,
    accepted_per_sec: f64,
    delivered_per_sec: f64,
    errors: u64,
) -> String {
    let phase = |name: &str, u: &CpuUsage, db: Option<&DbActivity>| {
        let verdict = if u.machine_busy_pct >= SATURATED_PCT {
            "CPU-bound"
        } else {
            "not CPU-bound (latency/concurrency-limited)"
        };
        let mut line = format!(
            "{name}: {verdict}, {:.0}% of {} CPUs busy [{}]",
            u.machine_busy_pct,
            u.cpus,
            top_processes(u, 4)
        );
        if let Some(wait) = db
            .and_then(DbActivity::top_wait)
            .filter(|w| w.pct >= NOTABLE_WAIT_PCT)
        {
            let _ = write!(
                line,
                ", PostgreSQL sessions waiting on {} {:.0}% of their active time",
                wait.state, wait.pct
            );
        }
        line
    };
    let mut hint = phase("sending", &cpu.sending, db.sending.as_ref());
    if let Some(draining) = &cpu.draining {
        hint.push_str("; ");
        hint.push_str(&phase("draining", draining, db.draining.as_ref()));
    }
    if delivered_per_sec > 0.0 && delivered_per_sec < 0.8 * accepted_per_sec {
        hint.push_str("; delivery slower than acceptance: the queue grew while sending");
    }
    if errors > 0 {
        hint.push_str(&format!("; {errors} failed requests"));
    }
    hint
}

fn ms(p: &Option<Percentiles>) -> String {
    match p {
        Some(p) => format!(
            "p50 {:.1} ms   p95 {:.1} ms   p99 {:.1} ms   max {:.1} ms",
            p.p50, p.p95, p.p99, p.max
        ),
        None => "-".to_owned(),
    }
}

fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".to_owned();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn db_line(a: &Option<DbActivity>) -> String {
    match a {
        None => "-".to_owned(),
        Some(a) => format!(
            "{:.1} sessions active on average; {}",
            a.active_avg,
            percents(a.states.iter().map(|s| (s.state.as_str(), s.pct)), 5)
        ),
    }
}

fn cpu_line(u: &CpuUsage) -> String {
    format!(
        "{:.0}% of {} CPUs busy; {}",
        u.machine_busy_pct,
        u.cpus,
        top_processes(u, 6)
    )
}

/// The `n` largest CPU consumers as "name 12%, …".
fn top_processes(u: &CpuUsage, n: usize) -> String {
    percents(u.top.iter().map(|p| (p.name.as_str(), p.cpu_pct)), n)
}

/// The first `n` of `(name, percent)` as "name 12%, …".
fn percents<'a>(items: impl Iterator<Item = (&'a str, f64)>, n: usize) -> String {
    items
        .take(n)
        .map(|(name, pct)| format!("{name} {pct:.0}%"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    /// The report as a table for people.
    pub fn to_table(&self) -> String {
        let s = &self.sending;
        let d = &self.delivery;
        let mut t = String::new();
        let per = if self.mode == "batch" {
            format!(", {} per request", self.batch_size)
        } else {
            String::new()
        };
        let _ = writeln!(
            t,
            "postwire bench: {} mode{per}, {} clients, {}-byte bodies, {} (started {})",
            self.mode, self.concurrency, self.body_bytes, self.url, self.started_at
        );
        let rows: Vec<(&str, String)> = vec![
            (
                "accepted",
                format!(
                    "{} of {} in {:.2} s = {:.0} accepted/s ({} requests)",
                    s.accepted, s.offered, s.seconds, s.accepted_per_sec, s.requests
                ),
            ),
            ("request latency", ms(&s.request_latency_ms)),
            ("errors", counts(&s.errors)),
            (
                "delivered",
                match d.seconds {
                    Some(secs) => format!(
                        "{} sent, last after {:.2} s = {:.0} delivered/s",
                        d.sent, secs, d.delivered_per_sec
                    ),
                    None => format!("{} sent", d.sent),
                },
            ),
            ("end-to-end", ms(&d.end_to_end_ms)),
            (
                "final status",
                if d.not_terminal > 0 {
                    format!(
                        "{} ({} not terminal after the timeout)",
                        counts(&d.final_status),
                        d.not_terminal
                    )
                } else {
                    counts(&d.final_status)
                },
            ),
            (
                "peak RSS",
                if self.processes.is_empty() {
                    "- (no --api-pid/--worker-pid)".to_owned()
                } else {
                    self.processes
                        .iter()
                        .map(|p| match p.peak_rss_mib {
                            Some(m) => format!("{} {}: {m:.1} MiB", p.role, p.pid),
                            None => format!("{} {}: ?", p.role, p.pid),
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                },
            ),
            ("CPU sending", cpu_line(&self.cpu.sending)),
            (
                "CPU draining",
                self.cpu
                    .draining
                    .as_ref()
                    .map_or("- (under a second)".to_owned(), cpu_line),
            ),
            ("db sending", db_line(&self.db.sending)),
            ("db draining", db_line(&self.db.draining)),
            ("bottleneck hint", self.bottleneck.clone()),
        ];
        for (name, value) in rows {
            let _ = writeln!(t, "  {name:<16} {value}");
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgwait::StateShare;
    use crate::procfs::ProcessCpu;

    fn usage(busy: f64, top: &[(&str, f64)]) -> CpuUsage {
        CpuUsage {
            cpus: 2,
            machine_busy_pct: busy,
            top: top
                .iter()
                .map(|(n, p)| ProcessCpu {
                    name: n.to_string(),
                    cpu_pct: *p,
                })
                .collect(),
        }
    }

    #[test]
    fn hint_names_the_saturated_phase_and_its_top_consumers() {
        let cpu = CpuPhases {
            sending: usage(97.0, &[("postgres", 90.0), ("postwire api", 60.0)]),
            draining: Some(usage(40.0, &[("postwire worker", 50.0)])),
        };
        let db = DbPhases {
            sending: None,
            draining: Some(DbActivity {
                active_avg: 1.5,
                states: vec![
                    StateShare {
                        state: "running".to_owned(),
                        pct: 55.0,
                    },
                    StateShare {
                        state: "IO:WALSync".to_owned(),
                        pct: 30.0,
                    },
                    StateShare {
                        state: "Lock:tuple".to_owned(),
                        pct: 15.0,
                    },
                ],
            }),
        };
        let hint = bottleneck_hint(&cpu, &db, 2000.0, 1000.0, 3);
        assert!(hint.starts_with("sending: CPU-bound, 97% of 2 CPUs busy [postgres 90%"));
        assert!(hint.contains("draining: not CPU-bound"));
        assert!(hint.contains("waiting on IO:WALSync 30%"), "{hint}");
        assert!(
            !hint.contains("Lock:tuple"),
            "small waits are not named: {hint}"
        );
        assert!(hint.contains("queue grew"));
        assert!(hint.ends_with("3 failed requests"));
    }
}
