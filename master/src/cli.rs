//! The command line (SPEC §9): `master serve` and the client subcommands. Every flag
//! has a long name, an env fallback and a help line.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use common::logging::LogFormat;

use crate::config::{self, ServeConfig, WhenFull};

/// Master of the math task cluster: keeps the task ledger and delegates to slaves.
#[derive(Debug, Parser)]
#[command(version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, env = "MASTER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the master (and, with --local-slaves, slaves beside it).
    Serve(ServeArgs),
    /// Submit an expression.
    Submit(SubmitArgs),
    /// List tasks, oldest first.
    Tasks(TasksArgs),
    /// Show one task.
    Task(ShowArgs),
    /// Cancel a pending or in-progress task.
    Cancel(TaskArgs),
    /// List slaves in registration order.
    Slaves(ClientArgs),
    /// List the masters sharing the ledger, and whether each is up.
    Masters(ClientArgs),
    /// Print a shell completion script, e.g. `master completions bash > /etc/bash_completion.d/master`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Drive a cluster (by default a fresh local one) and print throughput and latency.
    Bench(master_bench::BenchArgs),
}

/// `master serve` flags.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address the API listens on (port 0 picks a free port).
    #[arg(long, env = "MASTER_LISTEN", default_value = config::DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// URL other masters, slaves and people reach this master at, as `GET /masters`
    /// lists it [default: http:// and the bound address].
    #[arg(long, env = "MASTER_ADVERTISE_URL")]
    pub advertise_url: Option<String>,
    /// The ledger: a SQLite file path (created if missing), or a `postgres://` /
    /// `postgresql://` URL of a PostgreSQL 15+ database (SPEC §11).
    #[arg(long, env = "MASTER_DB", default_value = config::DEFAULT_DB)]
    pub db: String,
    /// Shared cluster secret, required as `Authorization: Bearer` on slave and admin calls.
    /// Prefer the environment or --token-file: a flag's value shows in `ps`.
    #[arg(long, env = "CLUSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the cluster secret (e.g. a systemd credential, `%d/cluster-token`).
    #[arg(long, env = "CLUSTER_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Allow a non-loopback listen address without a token.
    #[arg(long, env = "MASTER_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    pub insecure: bool,
    /// What a submission gets when every slave is busy.
    #[arg(long, env = "MASTER_WHEN_FULL", value_enum, default_value_t = WhenFull::Reject)]
    pub when_full: WhenFull,
    /// Most pending tasks in queue mode; past it submissions get 503 queue_full.
    #[arg(long, env = "MASTER_QUEUE_LIMIT", default_value_t = config::DEFAULT_QUEUE_LIMIT, value_parser = clap::value_parser!(i64).range(1..))]
    pub queue_limit: i64,
    /// Time a slave has to answer an offer before it is skipped and marked suspect.
    #[arg(long, env = "MASTER_OFFER_TIMEOUT", default_value_t = config::DEFAULT_OFFER_TIMEOUT.into())]
    pub offer_timeout: humantime::Duration,
    /// Silence after which a slave is down and its tasks are re-dispatched.
    #[arg(long, env = "MASTER_SLAVE_TIMEOUT", default_value_t = config::DEFAULT_SLAVE_TIMEOUT.into())]
    pub slave_timeout: humantime::Duration,
    /// Heartbeat interval of the local slaves (and the grace for offers in flight).
    #[arg(long, env = "MASTER_HEARTBEAT_INTERVAL", default_value_t = config::DEFAULT_HEARTBEAT_INTERVAL.into())]
    pub heartbeat_interval: humantime::Duration,
    /// Base deadline of an in-progress task (its delay_ms is added); past it the task is lost.
    #[arg(long, env = "MASTER_TASK_TIMEOUT", default_value_t = config::DEFAULT_TASK_TIMEOUT.into())]
    pub task_timeout: humantime::Duration,
    /// Offers a task may lose (slave died, deadline passed) before it fails.
    #[arg(long, env = "MASTER_MAX_ATTEMPTS", default_value_t = config::DEFAULT_MAX_ATTEMPTS, value_parser = clap::value_parser!(i64).range(1..=100))]
    pub max_attempts: i64,
    /// Start this many slaves in this process on loopback, registered as slave-1, slave-2, ...
    #[arg(long, env = "MASTER_LOCAL_SLAVES", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub local_slaves: u16,
    /// Most ledger writes committed in one transaction (group commit); 1 commits each
    /// write alone, for comparing in benchmarks.
    #[arg(long, env = "MASTER_LEDGER_MAX_BATCH", default_value_t = crate::ledger::DEFAULT_MAX_BATCH as u16, value_parser = clap::value_parser!(u16).range(1..=4096))]
    pub ledger_max_batch: u16,
    /// Threads of the async runtime [default: one per core].
    #[arg(long, env = "MASTER_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: Option<u16>,
    /// Capacity of each local slave.
    #[arg(long, env = "MASTER_LOCAL_SLAVE_CAPACITY", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub local_slave_capacity: u32,
}

impl ServeArgs {
    /// The validated configuration, or the refusal naming the flag at fault.
    pub fn into_config(self) -> Result<ServeConfig, String> {
        let insecure = self.insecure;
        let config = ServeConfig {
            listen: self.listen,
            advertise_url: self.advertise_url,
            db: crate::ledger::Location::parse(&self.db),
            token: common::auth::Token::from_flag_or_file(self.token, self.token_file.as_deref())?,
            when_full: self.when_full,
            queue_limit: self.queue_limit,
            offer_timeout: self.offer_timeout.into(),
            slave_timeout: self.slave_timeout.into(),
            heartbeat_interval: self.heartbeat_interval.into(),
            task_timeout: self.task_timeout.into(),
            max_attempts: self.max_attempts,
            local_slaves: usize::from(self.local_slaves),
            local_slave_capacity: self.local_slave_capacity as usize,
            ledger_max_batch: usize::from(self.ledger_max_batch),
        };
        config.check_exposure(insecure)?;
        if config.slave_timeout <= config.heartbeat_interval {
            return Err("--slave-timeout must be longer than --heartbeat-interval".to_owned());
        }
        Ok(config)
    }
}

/// Where the client subcommands find the master.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Base URL of the master, or a comma-separated list of masters sharing one ledger
    /// (the next is tried when one cannot be reached).
    #[arg(long, env = "MASTER_URL", default_value = "http://127.0.0.1:8080")]
    pub master: String,
    /// Cluster token, sent as `Authorization: Bearer` (needed for cancel when set).
    #[arg(long, env = "CLUSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the cluster token.
    #[arg(long, env = "CLUSTER_TOKEN_FILE", conflicts_with = "token")]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `master submit` flags.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The expression, e.g. "2+3*4" or "sqrt(x)*pi".
    pub expression: String,
    /// A variable binding NAME=NUMBER; repeat for more.
    #[arg(long = "var", value_name = "NAME=NUMBER", value_parser = parse_var)]
    pub vars: Vec<(String, f64)>,
    /// Simulated extra work on the slave, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: i64,
    /// Wait until the task is finished and print its result.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

fn parse_var(raw: &str) -> Result<(String, f64), String> {
    let (name, value) = raw.split_once('=').ok_or_else(|| format!("`{raw}` is not NAME=NUMBER"))?;
    let value: f64 = value.trim().parse().map_err(|_| format!("`{value}` is not a number"))?;
    Ok((name.trim().to_owned(), value))
}

/// `master tasks` flags.
#[derive(Debug, Args)]
pub struct TasksArgs {
    /// Only tasks in this status (pending, in_progress, done, failed, cancelled).
    #[arg(long)]
    pub status: Option<String>,
    /// Most tasks to show.
    #[arg(long, default_value_t = 100)]
    pub limit: i64,
    /// Only tasks with an id above this.
    #[arg(long)]
    pub after: Option<i64>,
    /// Redraw the table every `--interval` until interrupted.
    #[arg(long)]
    pub watch: bool,
    /// Time between redraws with `--watch`.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `master task ID`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Task id.
    pub id: i64,
    /// Also print the task's history (`GET /tasks/{id}/events`): every state change.
    #[arg(long)]
    pub events: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `master cancel ID`.
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// Task id.
    pub id: i64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn vars_are_name_equals_number() {
        assert_eq!(parse_var("x=2").unwrap(), ("x".to_owned(), 2.0));
        assert!(parse_var("x").is_err());
        assert!(parse_var("x=two").is_err());
    }
}
