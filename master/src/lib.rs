//! The master: a task ledger (SQLite, or PostgreSQL shared by several masters) that
//! delegates math-expression tasks to slaves.
//!
//! - `model`    — ids, statuses, and the parsed inputs (`NewTask`, `SlaveUrl`).
//! - `ledger`   — every SQL statement and the single group-committing writer; the only
//!   code that touches master.db (SPEC §6).
//! - `slaves`   — the registry: slaves in position order with their free capacity.
//! - `dispatch` — submission and offers to slaves in registration order (SPEC §5).
//! - `cluster`  — results, cancels, registration, heartbeats, the reaper (SPEC §7).
//! - `timers`   — deadlines and offer times of in-progress tasks, on monotonic time.
//! - `api`      — thin axum handlers: parse, call, map the error (SPEC §4).
//! - `dashboard` — the live page at `GET /` (SPEC §9), embedded in the binary.
//! - `config`   — validated `master serve` settings; `cli` — the command line;
//!   `client` — the client subcommands (the load generator is the `master-bench` crate);
//!   `metrics` — Prometheus.

pub mod activity;
pub mod api;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod dispatch;
pub mod ledger;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod slave_calls;
pub mod slaves;
pub mod timers;
pub mod waiters;

use std::{io, net::SocketAddr, sync::Arc};

use common::protocol::Registration;
use slave::SlaveConfig;
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{cluster::Cluster, config::ServeConfig, ledger::Ledger, metrics::Metrics};

/// Why the master could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error("cannot register local slave {name}: {reason}")]
    LocalSlave { name: String, reason: String },
}

/// A master with its listener bound and its ledger open, ready to run.
pub struct Master {
    listener: TcpListener,
    cluster: Cluster,
    /// Listeners of the local slaves (`--local-slaves`), registered in order already.
    local_slaves: Vec<(SlaveConfig, TcpListener)>,
}

impl Master {
    /// Opens the ledger (migrating, refusing a corrupt file), binds the API address
    /// (port 0 allowed) and registers any local slaves in order.
    pub async fn build(config: ServeConfig) -> Result<Self, MasterError> {
        let metrics = Metrics::new();
        let ledger = Ledger::open(&config.db, metrics.batches.clone(), config.ledger_max_batch).await?;
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|source| MasterError::Bind { addr: config.listen, source })?;
        let master_url = format!("http://{}", listener.local_addr()?);
        let config = Arc::new(config);
        let http = slave::reporter::http_client().map_err(io::Error::other)?;
        let cluster = Cluster::start(ledger, config.clone(), metrics, http).await?;
        cluster.record_master(config.advertise_url.as_deref().unwrap_or(&master_url)).await?;
        let mut local_slaves = Vec::with_capacity(config.local_slaves);
        for number in 1..=config.local_slaves {
            let name = format!("slave-{number}");
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let url = format!("http://{}", listener.local_addr()?);
            // Registered here, one after the other, so the order is slave-1, slave-2, ...
            // whichever slave task happens to start first.
            let capacity = u32::try_from(config.local_slave_capacity).unwrap_or(u32::MAX);
            let registration =
                Registration { name: name.clone(), url: url.clone(), capacity, instance: None };
            cluster
                .register_local(registration)
                .await
                .map_err(|error| MasterError::LocalSlave { name: name.clone(), reason: error.to_string() })?;
            let slave_config = SlaveConfig {
                name,
                master_url: master_url.clone(),
                advertise_url: Some(url),
                capacity: config.local_slave_capacity,
                token: config.token.clone(),
                heartbeat_interval: config.heartbeat_interval,
                shutdown_grace: slave::DEFAULT_SHUTDOWN_GRACE,
                request_timeout: slave::DEFAULT_REQUEST_TIMEOUT,
            };
            local_slaves.push((slave_config, listener));
        }
        Ok(Self { listener, cluster, local_slaves })
    }

    /// The ledger (for the readiness and watchdog checks of `master serve`).
    pub fn ledger(&self) -> Ledger {
        self.cluster.ledger().clone()
    }

    /// The bound API address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Names and URLs of the local slaves.
    pub fn local_slaves(&self) -> Vec<(String, String)> {
        self.local_slaves
            .iter()
            .map(|(config, _)| (config.name.clone(), config.advertise_url.clone().unwrap_or_default()))
            .collect()
    }

    /// Serves until `stop` is cancelled, then shuts down gracefully (SPEC §7): refuses
    /// new submissions, lets local slaves finish and report, stops the dispatcher and
    /// reaper at a safe point, lets open requests finish, and returns.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> Result<(), MasterError> {
        let Self { listener, cluster, local_slaves } = self;
        let loops = TaskTracker::new();
        loops.spawn(cluster.clone().dispatcher(stop.child_token()));
        loops.spawn(cluster.clone().reaper(stop.child_token()));
        loops.spawn(cluster.clone().follow_ledger(stop.child_token()));
        loops.spawn(memory::trim_periodically(stop.child_token()));
        let slaves_stop = CancellationToken::new();
        let slaves = TaskTracker::new();
        for (config, listener) in local_slaves {
            let name = config.name.clone();
            let slave_stop = slaves_stop.clone();
            slaves.spawn(async move {
                if let Err(error) = slave::run(listener, config, slave_stop).await {
                    tracing::error!(slave = %name, %error, "local slave stopped with an error");
                }
            });
        }
        let serving = CancellationToken::new();
        let app = api::router(api::AppState { cluster: cluster.clone() });
        let server = tokio::spawn(common::serve::serve(listener, app, serving.clone()));

        stop.cancelled().await;
        tracing::info!("shutting down: no new submissions");
        cluster.stop_accepting();
        slaves_stop.cancel();
        slaves.close();
        slaves.wait().await;
        loops.close();
        loops.wait().await;
        serving.cancel();
        server.await.map_err(io::Error::other)??;
        cluster.ledger().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}
