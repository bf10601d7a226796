//! Validated configuration of `master serve` (SPEC §7, §8, §9).

use std::{net::SocketAddr, time::Duration};

use common::auth::Token;

use crate::ledger::Location;

/// Default address of the API.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// Default ledger file.
pub const DEFAULT_DB: &str = "master.db";
/// How long an offer may go unanswered before the slave is skipped and marked suspect.
pub const DEFAULT_OFFER_TIMEOUT: Duration = Duration::from_secs(2);
/// Silence after which a slave is `down` and its tasks re-dispatched.
pub const DEFAULT_SLAVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat interval the master expects (and gives its local slaves).
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Base deadline of an in-progress task; its `delay_ms` is added.
pub const DEFAULT_TASK_TIMEOUT: Duration = Duration::from_secs(60);
/// How often a master refreshes its row in `masters` (`GET /masters`).
pub const MASTER_REFRESH: Duration = Duration::from_secs(1);
/// A master whose row is older than this is shown down.
pub const MASTER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a master on a shared ledger re-reads the slaves and their loads, so a
/// slot freed or a heartbeat taken through another master is seen within a second.
pub const LEDGER_FOLLOW_PERIOD: Duration = Duration::from_millis(250);
/// How often a long poll on a shared ledger re-reads its task, in case the database's
/// announcement of its end was lost (a listener reconnecting).
pub const LONG_POLL_REREAD: Duration = Duration::from_secs(1);
/// Offers a task may lose before it fails.
pub const DEFAULT_MAX_ATTEMPTS: i64 = 3;
/// Pending tasks allowed in queue mode.
pub const DEFAULT_QUEUE_LIMIT: i64 = 100_000;

/// What a submission meets when every slave is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WhenFull {
    /// 503 `full_capacity`, nothing stored (the original demo).
    Reject,
    /// 202 `pending`; the task runs when a slave frees (bounded by the queue limit).
    Queue,
}

/// Everything the running master needs, checked once at start.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// The URL others reach this master's API at (`GET /masters`); the bound address if unset.
    pub advertise_url: Option<String>,
    pub db: Location,
    pub token: Token,
    pub when_full: WhenFull,
    pub queue_limit: i64,
    pub offer_timeout: Duration,
    pub slave_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub task_timeout: Duration,
    pub max_attempts: i64,
    pub local_slaves: usize,
    pub local_slave_capacity: usize,
    /// Most ledger writes per commit; 1 turns group commit off.
    pub ledger_max_batch: usize,
}

impl ServeConfig {
    /// Defaults for everything but where to listen and store (tests and embedding).
    pub fn new(listen: SocketAddr, db: Location) -> Self {
        Self {
            listen,
            advertise_url: None,
            db,
            token: Token::default(),
            when_full: WhenFull::Reject,
            queue_limit: DEFAULT_QUEUE_LIMIT,
            offer_timeout: DEFAULT_OFFER_TIMEOUT,
            slave_timeout: DEFAULT_SLAVE_TIMEOUT,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            task_timeout: DEFAULT_TASK_TIMEOUT,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            local_slaves: 0,
            local_slave_capacity: 1,
            ledger_max_batch: crate::ledger::DEFAULT_MAX_BATCH,
        }
    }

    /// The refusal of SPEC §8: a non-loopback address needs a token or `--insecure`.
    pub fn check_exposure(&self, insecure: bool) -> Result<(), String> {
        if !self.listen.ip().is_loopback() && !self.token.is_set() && !insecure {
            return Err(format!(
                "refusing to listen on non-loopback address {} without a token: \
                 set --token/CLUSTER_TOKEN or pass --insecure",
                self.listen
            ));
        }
        Ok(())
    }

    /// The deadline of a task with `delay_ms` of simulated work, from now.
    pub fn task_deadline(&self, delay_ms: u64) -> Duration {
        self.task_timeout + Duration::from_millis(delay_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_public_address_needs_a_token_or_insecure() {
        let config = ServeConfig::new("0.0.0.0:8080".parse().unwrap(), Location::parse("m.db"));
        assert!(config.check_exposure(false).unwrap_err().contains("--token"));
        assert!(config.check_exposure(true).is_ok());
        let with_token = ServeConfig { token: Token::new(Some("t".into())), ..config };
        assert!(with_token.check_exposure(false).is_ok());
    }

    #[test]
    fn loopback_needs_nothing() {
        let config = ServeConfig::new("127.0.0.1:0".parse().unwrap(), Location::parse("m.db"));
        assert!(config.check_exposure(false).is_ok());
    }
}
