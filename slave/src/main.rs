//! `slave`: serve offers from the master (SPEC §5, §9).

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use clap::Parser;
use common::{auth::Token, logging::LogFormat};
use slave::SlaveConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A slave of the math task cluster: evaluates expressions the master offers.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Base URL of the master, or a comma-separated list of masters sharing one ledger:
    /// calls go to the one that answered last and fail over in order (SPEC §11).
    #[arg(long, env = "SLAVE_MASTER", default_value = "http://127.0.0.1:8080")]
    master: String,
    /// Unique name; a restarted slave keeps its place in the order under the same name.
    #[arg(long, env = "SLAVE_NAME")]
    name: String,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "SLAVE_LISTEN", default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// URL the master uses to reach this slave [default: http://<bound address>].
    #[arg(long, env = "SLAVE_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// Tasks run at once.
    #[arg(long, env = "SLAVE_CAPACITY", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    capacity: u32,
    /// Shared cluster secret, sent and required as `Authorization: Bearer`. Prefer the
    /// environment or --token-file: a flag's value shows in `ps`.
    #[arg(long, env = "CLUSTER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the cluster secret (e.g. a systemd credential, `%d/cluster-token`).
    #[arg(long, env = "CLUSTER_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<std::path::PathBuf>,
    /// Time between heartbeats to the master.
    #[arg(long, env = "SLAVE_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Time running tasks get to finish after SIGTERM before they are handed back.
    #[arg(long, env = "SLAVE_SHUTDOWN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    shutdown_grace: Duration,
    /// Longest a request may take, body included; slower clients get 503 and are cut off.
    #[arg(long, env = "SLAVE_REQUEST_TIMEOUT", default_value = "75s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Log format on stderr.
    #[arg(long, env = "SLAVE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Allow a non-loopback listen address without a token (SPEC §8).
    #[arg(long, env = "SLAVE_INSECURE", value_parser = clap::builder::BoolishValueParser::new())]
    insecure: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::logging::init(cli.log_format);
    let token = Token::from_flag_or_file(cli.token, cli.token_file.as_deref()).map_err(anyhow::Error::msg)?;
    if !cli.listen.ip().is_loopback() && !token.is_set() && !cli.insecure {
        anyhow::bail!(
            "refusing to listen on non-loopback address {} without a token: set --token/CLUSTER_TOKEN or pass --insecure",
            cli.listen
        );
    }
    let listener =
        TcpListener::bind(cli.listen).await.with_context(|| format!("cannot listen on {}", cli.listen))?;
    println!("listening on http://{}", listener.local_addr()?);
    let config = SlaveConfig {
        name: cli.name,
        master_url: cli.master,
        advertise_url: cli.advertise_url,
        capacity: cli.capacity as usize,
        token,
        heartbeat_interval: cli.heartbeat_interval,
        shutdown_grace: cli.shutdown_grace,
        request_timeout: cli.request_timeout,
    };
    // Under systemd (Type=notify): ready once bound; registration goes on in the
    // background and is retried until the master takes it. No-op outside systemd.
    if let Err(error) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(%error, "could not tell systemd the slave is ready");
    }
    let stop = CancellationToken::new();
    tokio::spawn(common::serve::cancel_on_signal(stop.clone()));
    slave::run(listener, config, stop).await
}
