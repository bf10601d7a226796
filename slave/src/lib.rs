//! The slave: takes offers from the master, evaluates them, reports the results.
//!
//! - `slots`    — the tasks this slave holds and the capacity they occupy.
//! - `metrics`  — Prometheus metrics at `GET /metrics`.
//! - `server`   — HTTP: `POST /tasks` (offer), `GET /availability`, `DELETE /tasks/{id}`.
//! - `reporter` — calls to the master: register, heartbeat, result with backoff.
//!
//! The wire types, evaluation, auth, serving and logging it shares with the master
//! live in the `common` crate.

pub mod metrics;
pub mod reporter;
pub mod server;
pub mod slots;

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use common::{auth::Token, protocol, serve};

use crate::{metrics::SlaveMetrics, reporter::Reporter, slots::Slots};

/// Default time between heartbeats (SPEC §7).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Default time a stopping slave gives its running tasks before handing them back.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Default longest request, as on the master.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(75);

/// Everything a slave needs to run, validated.
#[derive(Debug, Clone)]
pub struct SlaveConfig {
    /// Unique name; re-registering under it keeps the slave's place in the order.
    pub name: String,
    /// Base URL of the master, e.g. `http://127.0.0.1:8080`.
    pub master_url: String,
    /// URL the master should use to reach this slave; derived from the bound address if unset.
    pub advertise_url: Option<String>,
    /// Tasks run at once.
    pub capacity: usize,
    pub token: Token,
    pub heartbeat_interval: Duration,
    pub shutdown_grace: Duration,
    /// Longest a request may take, body included (SPEC §8: a client that trickles
    /// its body is cut off).
    pub request_timeout: Duration,
}

/// Shared handles of one running slave.
#[derive(Clone)]
pub struct SlaveState {
    pub slots: Arc<Slots>,
    pub reporter: Reporter,
    pub token: Token,
    /// Every task run, so shutdown can wait for them.
    pub runs: TaskTracker,
    pub metrics: SlaveMetrics,
    /// Id of this run of the process, shown by `GET /availability` and sent with
    /// registrations and heartbeats.
    pub instance: Arc<str>,
    /// Longest a request may take.
    pub request_timeout: Duration,
}

/// Serves on `listener`, registers with the master and heartbeats until `stop` is
/// cancelled; then refuses offers, gives running tasks `shutdown_grace` to finish and
/// report, hands back the rest with a last heartbeat, and returns.
pub async fn run(listener: TcpListener, config: SlaveConfig, stop: CancellationToken) -> anyhow::Result<()> {
    let advertised = match &config.advertise_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => format!("http://{}", listener.local_addr()?),
    };
    let slots = Arc::new(Slots::new(config.capacity));
    let metrics = SlaveMetrics::new(config.capacity);
    let instance: Arc<str> = protocol::new_instance_id().into();
    let reporter = Reporter::new(&config, advertised, instance.to_string(), slots.clone(), metrics.clone())?;
    let state = SlaveState {
        slots: slots.clone(),
        reporter: reporter.clone(),
        token: config.token.clone(),
        runs: TaskTracker::new(),
        metrics,
        instance,
        request_timeout: config.request_timeout,
    };

    let serving = CancellationToken::new();
    let server = tokio::spawn(serve::serve(listener, server::router(state.clone()), serving.clone()));
    let heartbeats = CancellationToken::new();
    let liveness =
        tokio::spawn(reporter.clone().keep_registered(config.heartbeat_interval, heartbeats.clone()));

    stop.cancelled().await;
    slots.stop_accepting();
    tracing::info!(held = slots.held_ids().len(), "stopping: no new offers; finishing held tasks");
    reporter.send_heartbeat_now().await;
    if tokio::time::timeout(config.shutdown_grace, slots.wait_until_empty()).await.is_err() {
        let handed_back = slots.abandon_all();
        tracing::warn!(?handed_back, "shutdown grace over; handing tasks back to the master");
    }
    heartbeats.cancel();
    let _ = liveness.await;
    // A last heartbeat that lists what is still held (nothing, after abandon_all) lets
    // the master re-dispatch at once instead of waiting for the slave timeout.
    reporter.send_heartbeat_now().await;
    state.runs.close();
    state.runs.wait().await;
    serving.cancel();
    server.await??;
    Ok(())
}
