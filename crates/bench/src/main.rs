//! `postwire-bench`: drives a running postwire over its public HTTP API and watches
//! PostgreSQL until everything it sent is delivered. Its own crate, so that the
//! server carries none of its dependencies (an HTTP client, progress bars).
//!
//! Phase 1 ([`load`]) sends messages with N concurrent clients and records each
//! accepted id and request latency. Phase 2 ([`observe`]) polls the `messages` table
//! until every accepted message is terminal and reads the database's own `created_at`
//! and `sent_at`. Meanwhile [`procfs`] samples memory and CPU of the processes under
//! test. [`report`] prints a table or JSON.

mod load;
mod observe;
mod pgwait;
mod procfs;
mod report;
mod stats;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use tokio::sync::watch;

use crate::procfs::{CpuSnapshot, CpuUsage, RssSampler};
use clap::Parser;
use load::{LoadOutcome, LoadPlan};
use observe::{Deliveries, StatusCounts};
use report::{CpuPhases, DbPhases, Delivery, ProcessPeak, Report, Sending};
use stats::{rate, Percentiles};

/// How messages are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// One message per `POST /v1/messages`.
    Single,
    /// `--batch-size` messages per `POST /v1/messages/batch`.
    Batch,
}

/// Load-tests a running postwire and reports throughput, latency and memory.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct BenchArgs {
    /// Base URL of the postwire API; repeat it for several API processes (as behind a
    /// load balancer): client `i` sends to URL `i mod n`.
    #[arg(long = "url", default_value = "http://127.0.0.1:8080")]
    pub urls: Vec<String>,
    /// PostgreSQL URL postwire writes to.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postwire"
    )]
    pub database_url: String,
    /// One message per request, or batches.
    #[arg(long, value_enum, default_value_t = Mode::Single)]
    pub mode: Mode,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,
    /// Messages per request in batch mode.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=500))]
    pub batch_size: u16,
    /// Bytes of each message's Body.
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub size: usize,
    /// Messages to send.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 20_000,
        conflicts_with = "duration"
    )]
    pub count: u64,
    /// Send for this many seconds instead of a fixed count.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<u64>,
    /// Recipient of every message.
    #[arg(long, default_value = "bench@example.com")]
    pub to: String,
    /// Sender of every message.
    #[arg(long, default_value = "sender@example.com")]
    pub from: String,
    /// Sent as `Authorization: Bearer <KEY>`.
    #[arg(long, value_name = "KEY")]
    pub api_key: Option<String>,
    /// An API process to measure (peak RSS, CPU); repeatable.
    #[arg(long = "api-pid", value_name = "PID")]
    pub api_pids: Vec<u32>,
    /// A worker process to measure (peak RSS, CPU); repeatable.
    #[arg(long = "worker-pid", value_name = "PID")]
    pub worker_pids: Vec<u32>,
    /// Print the results as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "PATH")]
    pub json_out: Option<PathBuf>,
    /// Seconds to wait, after sending, for every accepted message to be terminal.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub timeout: u64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(BenchArgs::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("postwire-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the benchmark and prints its report. Fails only when it cannot run at all (no
/// database, bad arguments); failed requests and undelivered messages are results,
/// not errors.
async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let pool = observe::connect(&args.database_url).await?;
    let plan = LoadPlan {
        urls: args.urls.clone(),
        mode: args.mode,
        concurrency: args.concurrency.into(),
        batch_size: args.batch_size.into(),
        body_bytes: args.size,
        count: args.count,
        duration: args.duration.map(Duration::from_secs),
        to: args.to.clone(),
        from: args.from.clone(),
        api_key: args.api_key.clone(),
    };

    let bars = MultiProgress::new();
    let accepted_bar = bars.add(bar(
        plan.duration.is_none().then_some(plan.count),
        "accepted ",
    ));
    let delivered_bar = bars.add(bar(Some(0), "delivered"));

    let pids: Vec<u32> = args
        .api_pids
        .iter()
        .chain(&args.worker_pids)
        .copied()
        .collect();
    let rss = RssSampler::start(pids, Duration::from_millis(200));
    let waits = pgwait::WaitSampler::start(pool.clone(), Duration::from_millis(250));
    let start_db = observe::database_now(&pool).await?;
    let start = Instant::now();
    let cpu_start = CpuSnapshot::take();

    // Phase 1, with the delivered bar moving alongside.
    let (stop_progress, stopped) = watch::channel(false);
    let progress = tokio::spawn(observe::show_progress(
        pool.clone(),
        start_db,
        accepted_bar.clone(),
        delivered_bar.clone(),
        stopped,
    ));
    let load = load::send_all(&plan, accepted_bar.clone()).await;
    let _ = stop_progress.send(true);
    let _ = progress.await;
    let load = load?;
    accepted_bar.finish();
    let cpu_sent = CpuSnapshot::take();
    let sent_at = Instant::now();

    // Phase 2.
    let drained = observe::wait_terminal(
        &pool,
        start_db,
        &load.ids,
        Duration::from_secs(args.timeout),
        &delivered_bar,
    )
    .await?;
    delivered_bar.finish();
    let wait_seconds = start.elapsed().as_secs_f64();
    let cpu_end = CpuSnapshot::take();
    let drained_at = Instant::now();
    let draining_long = sent_at.elapsed() >= Duration::from_secs(1);
    let peaks = rss.finish().await;
    let waits = waits.finish().await;
    let db = DbPhases {
        sending: waits.between(start, sent_at),
        draining: draining_long
            .then(|| waits.between(sent_at, drained_at))
            .flatten(),
    };
    let deliveries = observe::deliveries(&pool, start_db, &load.ids).await?;
    let _ = bars.clear();

    let labels = Labels {
        api: args.api_pids.iter().copied().collect(),
        workers: args.worker_pids.iter().copied().collect(),
        me: std::process::id(),
    };
    let usage = |a: &CpuSnapshot, b: &CpuSnapshot| CpuUsage::between(a, b, |p| labels.of(p));
    let cpu = CpuPhases {
        sending: usage(&cpu_start, &cpu_sent),
        draining: draining_long.then(|| usage(&cpu_sent, &cpu_end)),
    };
    let report = summarise(
        &args,
        &plan,
        Observed {
            start_db,
            load,
            counts: drained.counts,
            deliveries,
            wait_seconds,
            peaks,
            cpu,
            db,
        },
    );

    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, format!("{json}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if args.json {
        println!("{json}");
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

/// Everything one run measured, before it is summarised.
struct Observed {
    start_db: DateTime<Utc>,
    load: LoadOutcome,
    /// Final statuses of the accepted messages.
    counts: StatusCounts,
    deliveries: Deliveries,
    wait_seconds: f64,
    /// Peak RSS in KiB by pid.
    peaks: HashMap<u32, u64>,
    cpu: CpuPhases,
    db: DbPhases,
}

/// Turns the measurements into the report's figures.
fn summarise(args: &BenchArgs, plan: &LoadPlan, observed: Observed) -> Report {
    let Observed {
        start_db,
        mut load,
        counts,
        mut deliveries,
        wait_seconds,
        peaks,
        cpu,
        db,
    } = observed;
    let accepted = load.ids.len() as u64;
    let sent = counts.sent();
    let accepted_per_sec = rate(accepted, load.elapsed.as_secs_f64());
    let delivered_per_sec = deliveries
        .last_sent_after_s
        .map_or(0.0, |secs| rate(sent, secs));
    let errors: u64 = load.errors.values().sum();
    let mut final_status = counts.by_status.clone();
    let missing = accepted.saturating_sub(counts.found());
    if missing > 0 {
        final_status.insert("(not found)".to_owned(), missing);
    }
    let processes = args
        .api_pids
        .iter()
        .map(|p| ("api", *p))
        .chain(args.worker_pids.iter().map(|p| ("worker", *p)))
        .map(|(role, pid)| ProcessPeak {
            role: role.to_owned(),
            pid,
            peak_rss_mib: peaks
                .get(&pid)
                .map(|kib| (*kib as f64 / 1024.0 * 10.0).round() / 10.0),
        })
        .collect();
    Report {
        started_at: start_db.to_rfc3339(),
        url: plan.urls.join(" "),
        mode: match plan.mode {
            Mode::Single => "single",
            Mode::Batch => "batch",
        }
        .to_owned(),
        concurrency: plan.concurrency,
        batch_size: match plan.mode {
            Mode::Single => 1,
            Mode::Batch => plan.batch_size,
        },
        body_bytes: plan.body_bytes,
        bottleneck: report::bottleneck_hint(&cpu, &db, accepted_per_sec, delivered_per_sec, errors),
        sending: Sending {
            requests: load.requests,
            offered: load.offered,
            accepted,
            seconds: load.elapsed.as_secs_f64(),
            accepted_per_sec,
            request_latency_ms: Percentiles::of(&mut load.latencies_ms),
            errors: load.errors,
        },
        delivery: Delivery {
            sent,
            seconds: deliveries.last_sent_after_s,
            delivered_per_sec,
            end_to_end_ms: Percentiles::of(&mut deliveries.end_to_end_ms),
            final_status,
            not_terminal: accepted.saturating_sub(counts.terminal()),
            wait_seconds,
        },
        processes,
        cpu,
        db,
    }
}

/// Names of the processes under test in the CPU figures.
struct Labels {
    api: HashSet<u32>,
    workers: HashSet<u32>,
    me: u32,
}

impl Labels {
    /// The role of `pid`, or `None` to group it under its command name.
    fn of(&self, pid: u32) -> Option<String> {
        if self.api.contains(&pid) {
            Some("postwire api".to_owned())
        } else if self.workers.contains(&pid) {
            Some("postwire worker".to_owned())
        } else if pid == self.me {
            Some("bench".to_owned())
        } else {
            None
        }
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn bar(len: Option<u64>, name: &'static str) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{prefix} {wide_bar} {human_pos}/{human_len} {per_sec} {elapsed_precise}",
    )
    .expect("valid template");
    let bar = match len {
        Some(len) => ProgressBar::new(len),
        None => ProgressBar::no_length(),
    };
    bar.with_style(style).with_prefix(name)
}
