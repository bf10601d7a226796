//! `master bench` flags (the master's CLI embeds them as its `bench` subcommand).

use std::time::Duration;

use clap::{Args, ValueEnum};

/// `--when-full` of the local master under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WhenFull {
    /// 503 `full_capacity`, nothing stored.
    Reject,
    /// 202 pending, run when a slot frees.
    Queue,
}

/// What `master bench` measures (SPEC §10; BENCHMARKS.md has one command for each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Many trivial tasks through a bounded window of unfinished tasks: tasks/s end to end.
    Throughput,
    /// Sequential round trips, submit then long poll until done: latency percentiles.
    Latency,
    /// 1 s tasks on two slaves of capacity 1 in queue mode: makespan and tasks per slave.
    Sleepy,
    /// A ledger of many finished tasks: read latency, start-up time, file size.
    Ledger,
    /// Open loop: `--clients` keep-alive clients submit as fast as they can for
    /// `--duration` in queue mode; the master's RSS during the flood and after it drains.
    Flood,
}

/// `master bench` flags. Defaults that depend on the workload are `None` here.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub workload: Workload,
    /// Drive this running master (loopback only) instead of starting a local cluster; a
    /// comma-separated list spreads the clients over several masters on one ledger.
    #[arg(long, env = "MASTER_URL")]
    pub master: Option<String>,
    /// Masters of the local cluster, sharing the `--db` PostgreSQL database (more than
    /// one needs a `postgres://` --db and runs the slaves as processes given every
    /// master); the clients are spread over them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=16))]
    pub masters: u8,
    /// Tasks to run [default: throughput 20000, latency 1000, sleepy 20, ledger 1000000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub tasks: Option<u64>,
    /// Most tasks submitted and not yet seen finished at once (throughput, ledger build).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub concurrency: u32,
    /// Capacity of each local slave [default: sleepy 1, otherwise 256].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub capacity: Option<u32>,
    /// `--when-full` of the local master [default: queue].
    #[arg(long, value_enum)]
    pub when_full: Option<WhenFull>,
    /// Run the two local slaves as `slave` processes (so their RSS is measured) instead
    /// of inside the master process.
    #[arg(long)]
    pub slave_processes: bool,
    /// Ledger of the local master: a SQLite file, kept afterwards (a ledger workload
    /// reuses the finished tasks it already holds), or a `postgres://` URL of an empty
    /// database [default: a temporary SQLite file].
    #[arg(long)]
    pub db: Option<String>,
    /// Read requests timed by the ledger workload, per kind.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub samples: u64,
    /// Give up (exit non-zero) past this total time [default: ledger 2h, otherwise 10m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub deadline: Option<Duration>,
    /// Keep-alive clients of the flood workload, each submitting back to back.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub clients: u32,
    /// How long the flood workload submits (then it waits for the queue to drain).
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// `--worker-threads` of the local master [default: one per core].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: Option<u16>,
    /// Also draw the run's latency distribution and its completions over time into this
    /// SVG file (throughput, latency, sleepy).
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<std::path::PathBuf>,
    /// Print one JSON object instead of a table (and no progress bar).
    #[arg(long)]
    pub json: bool,
}
