//! `master bench WORKLOAD` (the `master-bench` crate): a load generator that drives a real cluster through the
//! public HTTP API only (SPEC §4, §10). BENCHMARKS.md has the command of each workload
//! and the figures measured with it.
//!
//! - `args`       — the command line (`BenchArgs`), embedded by the master's CLI.
//! - `cluster`    — the cluster under load: a local one started from the real binaries
//!   (master child, optionally slave children; peak RSS from `/proc`), or `--master URL`.
//! - `api`        — the HTTP calls the workloads make: one keep-alive pool, and a
//!   connection of its own per submitting worker.
//! - `throughput` — the closed-loop engine: a bounded window of unfinished tasks, with
//!   completion read back from the ledger (`throughput` workload, ledger build).
//! - `rounds`     — one-at-a-time round trips (`latency`) and the `sleepy` makespan.
//! - `ledger_scale` — a ledger of many finished tasks: reads, start-up, file size.
//! - `flood`      — the open loop: many keep-alive clients at full speed, and the
//!   master's memory during and after it.
//! - `probe`      — CPU of each process and the ledger writer's figures during a phase.
//! - `stats`      — percentiles, the expression generator, a seeded random source.
//! - `report`     — the summary table or the one JSON object.
//!
//! Every loop is bounded by a count and by the total `--deadline`; only loopback
//! addresses are ever targets.

mod api;
mod args;
mod cluster;
mod flood;
mod ledger_scale;
mod plot;
mod probe;
mod report;
mod rounds;
mod stats;
mod throughput;

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use indicatif::{ProgressBar, ProgressStyle};

use self::cluster::{Cluster, LocalSpec};
pub use self::{report::Report, stats::Percentiles};
pub use crate::args::{BenchArgs, WhenFull, Workload};

/// Longest single HTTP request (long polls ask for at most [`LONG_POLL`]).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest single long poll of `GET /tasks/{id}?wait=`.
const LONG_POLL: Duration = Duration::from_secs(30);
/// Default total deadline of a run, and of a ledger run (whose build is long).
const DEFAULT_DEADLINE: Duration = Duration::from_secs(10 * 60);
const DEFAULT_LEDGER_DEADLINE: Duration = Duration::from_secs(2 * 60 * 60);
/// Default slave capacity: large, so the cluster, not a slot count, bounds throughput.
const DEFAULT_CAPACITY: u32 = 256;

/// Why a bench run failed (the process then exits non-zero).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("the cluster did not start: {0}")]
    Start(String),
    #[error("not a bench target: {0}")]
    Target(String),
    #[error("HTTP request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("HTTP request failed: {0}")]
    Connection(String),
    #[error("{call} answered {status}: {body}")]
    Api { call: &'static str, status: u16, body: String },
    #[error("the workload did not complete: {0}")]
    Incomplete(String),
}

/// Everything a workload gets.
pub struct Run {
    pub workload: Workload,
    pub tasks: u64,
    pub concurrency: usize,
    pub samples: u64,
    /// The whole run ends by then, finished or not.
    pub deadline: Instant,
    pub progress: ProgressBar,
}

impl Run {
    /// Time left before the deadline.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// Fails once the deadline has passed.
    pub fn check_deadline(&self, doing: &str) -> Result<(), BenchError> {
        if Instant::now() >= self.deadline {
            return Err(BenchError::Incomplete(format!("the --deadline passed while {doing}")));
        }
        Ok(())
    }

    /// Starts a progress phase of `len` steps named `what`.
    pub fn phase(&self, what: &str, len: u64) {
        self.progress.set_length(len);
        self.progress.set_position(0);
        self.progress.set_message(what.to_owned());
        self.progress.reset_eta();
    }
}

/// Runs `master bench`: starts or reaches the cluster, runs the workload, prints the
/// report, stops what it started. An `Err` (exit ≠ 0) when the cluster did not start or
/// the workload did not complete (lost tasks, errors, deadline).
pub async fn run(args: BenchArgs) -> Result<(), BenchError> {
    let workload = args.workload;
    let total = args.deadline.unwrap_or(match workload {
        Workload::Ledger => DEFAULT_LEDGER_DEADLINE,
        _ => DEFAULT_DEADLINE,
    });
    let run = Run {
        workload,
        tasks: args.tasks.unwrap_or(match workload {
            Workload::Throughput => 20_000,
            Workload::Latency => 1_000,
            Workload::Sleepy => 20,
            Workload::Ledger => 1_000_000,
            // The flood is bounded by --duration; this bounds it by count too.
            Workload::Flood => 10_000_000,
        }),
        concurrency: args.concurrency as usize,
        samples: args.samples,
        deadline: Instant::now() + total,
        progress: progress_bar(args.json),
    };
    let cluster = match &args.master {
        Some(url) => Cluster::existing(url, REQUEST_TIMEOUT).await?,
        None => {
            let spec = LocalSpec {
                capacity: args.capacity.unwrap_or(match workload {
                    Workload::Sleepy => 1,
                    _ => DEFAULT_CAPACITY,
                }),
                when_full: args.when_full.unwrap_or(WhenFull::Queue),
                slave_processes: args.slave_processes || args.masters > 1,
                masters: usize::from(args.masters),
                db: args.db.clone(),
                worker_threads: args.worker_threads,
            };
            Cluster::start(spec, REQUEST_TIMEOUT).await?
        }
    };
    let (cluster, outcome) = match workload {
        Workload::Throughput => throughput::workload(cluster, &run).await,
        Workload::Latency => rounds::latency(cluster, &run).await,
        Workload::Sleepy => rounds::sleepy(cluster, &run).await,
        Workload::Ledger => ledger_scale::workload(cluster, &run).await,
        Workload::Flood => {
            let flood = flood::Flood { clients: args.clients as usize, duration: args.duration };
            flood::workload(cluster, &run, flood).await
        }
    };
    run.progress.finish_and_clear();
    let stopped = cluster.stop().await;
    let report = outcome?;
    report.print(args.json);
    stopped?;
    if let Some(path) = &args.plot {
        write_plot(path, &report)?;
    }
    report.verdict()
}

/// Writes the run's picture (`--plot`); a workload that kept no samples says so.
fn write_plot(path: &std::path::Path, report: &Report) -> Result<(), BenchError> {
    let title = format!("master bench {} — {}", report.workload, report.cluster);
    let throughput = report.throughput_per_s.map_or_else(String::new, |rate| format!("{rate:.0} tasks/s, "));
    let figures = format!("{} tasks, {throughput}{} lost", report.ok + report.failed, report.lost);
    let Some(svg) = plot::svg(&title, &figures, &report.timeline) else {
        return Err(BenchError::Incomplete(format!(
            "--plot: the {} workload keeps no samples to draw",
            report.workload
        )));
    };
    std::fs::write(path, svg)
        .map_err(|error| BenchError::Incomplete(format!("--plot: cannot write {}: {error}", path.display())))
}

/// A bar on stderr when stdout is a terminal and no JSON was asked for; hidden otherwise.
fn progress_bar(json: bool) -> ProgressBar {
    if json || !std::io::stdout().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{msg:>12} [{elapsed_precise}] {wide_bar} {pos}/{len} ({per_sec}, eta {eta})",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar
}
