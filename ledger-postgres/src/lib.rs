//! The PostgreSQL ledger engine (SPEC §11): the same ledger as `ledger-sqlite`, in a
//! database that several masters can share.
//!
//! Every write is one statement in its own transaction on a pooled connection, guarded
//! by what it expects to change (status, slave, attempt) and checked for what it
//! changed, so concurrent writers — this master's handlers, other masters — race safely
//! without locks held across round trips. The two writes every task makes (submission,
//! result) are gathered into one statement per batch, as SQLite's writer gathers them,
//! so a busy master commits many of them per WAL flush. `synchronous_commit` is forced
//! on: a 2xx means it is durable. Timestamps come from the database's clock (`now()`),
//! ids from sequences.
//!
//! - `tasks`  — statements about tasks.
//! - `batched` — the submissions and results of one moment, one statement each kind.
//! - `slaves` — statements about slaves.
//! - `masters` — the masters sharing the database (`GET /masters`).

use std::{str::FromStr, sync::Arc, time::Duration};

use ledger::{LedgerError, TaskId};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use tokio::sync::mpsc;

mod batched;
mod masters;
mod slaves;
mod tasks;

/// Connections per master: enough for concurrent handlers on a few cores; PostgreSQL's
/// default `max_connections` (100) leaves room for several masters.
const CONNECTIONS: u32 = 16;
/// How long a request waits for a connection before it hears 503 `ledger_unavailable`
/// (the database is down or every connection is stuck).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// The longest any one statement may run before the server cancels it.
const STATEMENT_TIMEOUT: &str = "10s";

/// The channel on which masters announce the tasks they ended (the payload: the
/// announcing session's name, a space, and task ids separated by commas).
const TASK_FINAL_CHANNEL: &str = "task_final";

/// Most task ids in one announcement (a NOTIFY payload must stay under 8000 bytes).
const MAX_IDS_PER_ANNOUNCEMENT: usize = 400;
/// How long the announcer gathers ends after the first before it sends them.
const ANNOUNCE_GATHER: Duration = Duration::from_millis(2);

/// Handle to a PostgreSQL ledger; cheap to clone.
#[derive(Clone)]
pub struct PgLedger {
    pool: PgPool,
    /// This ledger's sessions' `application_name`, unique per open: tells the task ends
    /// this master announced from those announced by others.
    session_name: Arc<str>,
    /// Ends waiting for the announcer.
    ends: mpsc::UnboundedSender<TaskId>,
    /// Submissions and results waiting for their batch's statement.
    batches: batched::Batches,
}

/// A task ended, as announced by the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskEnded {
    pub task: TaskId,
    /// Recorded through this ledger handle (this master) rather than another one.
    pub here: bool,
}

/// Hears the task ends that masters announce (LISTEN `task_final`).
pub struct TaskEnds {
    listener: PgListener,
    session_name: Arc<str>,
    heard: std::collections::VecDeque<TaskEnded>,
}

impl TaskEnds {
    /// The next announced end. A lost connection is an error; the next call dials again
    /// and listens anew (ends announced in between are not heard: callers re-read).
    pub async fn next(&mut self) -> Result<TaskEnded, LedgerError> {
        while self.heard.is_empty() {
            let notification = self.listener.recv().await.map_err(unavailable)?;
            // "<session name> <id>,<id>,..."
            let Some((session, ids)) = notification.payload().rsplit_once(' ') else { continue };
            let here = session == &*self.session_name;
            let ids = ids.split(',').filter_map(|id| id.parse().ok());
            self.heard.extend(ids.map(|id| TaskEnded { task: TaskId(id), here }));
        }
        self.heard.pop_front().ok_or(LedgerError::Closed)
    }
}

/// Sends the ends queued on `ends` as NOTIFYs on `task_final`, many ids each, until the
/// ledger is dropped. An announcement is a hint (listeners re-read anyway), so it is
/// committed without waiting for a WAL flush, and one that fails is dropped: that keeps
/// it from holding PostgreSQL's notify lock, which every notifying commit takes, for the
/// length of a flush.
async fn announce(pool: PgPool, session_name: Arc<str>, mut ends: mpsc::UnboundedReceiver<TaskId>) {
    let mut batch = Vec::with_capacity(MAX_IDS_PER_ANNOUNCEMENT);
    while let Some(first) = ends.recv().await {
        batch.push(first.0.to_string());
        let gathering = tokio::time::sleep(ANNOUNCE_GATHER);
        tokio::pin!(gathering);
        while batch.len() < MAX_IDS_PER_ANNOUNCEMENT {
            tokio::select! {
                next = ends.recv() => match next {
                    Some(id) => batch.push(id.0.to_string()),
                    None => break,
                },
                () = &mut gathering => break,
            }
        }
        let payload = format!("{session_name} {}", batch.join(","));
        batch.clear();
        if let Err(error) = notify(&pool, &payload).await {
            tracing::debug!(%error, "task ends not announced; listeners will re-read");
        }
    }
}

async fn notify(pool: &PgPool, payload: &str) -> Result<(), sqlx::Error> {
    // One statement, one implicit transaction: the local setting holds for its commit.
    sqlx::query!(
        r#"SELECT set_config('synchronous_commit', 'off', true) AS "set!", pg_notify($1, $2)::text AS "notified""#,
        TASK_FINAL_CHANNEL,
        payload
    )
    .fetch_one(pool)
    .await
    .map(drop)
}

impl PgLedger {
    /// Connects to `url` (`postgres://…` or `postgresql://…`) and applies the migrations
    /// (under sqlx's migration lock, so masters starting together apply them once).
    /// The pool reconnects by itself after the database comes back.
    pub async fn open(url: &str) -> Result<Self, LedgerError> {
        let shown = redacted(url);
        let session_name = format!("master {}", common::protocol::new_instance_id());
        let options = PgConnectOptions::from_str(url)
            .map_err(|error| LedgerError::Open { path: shown.clone(), detail: error.to_string() })?
            .application_name(&session_name)
            .options([("synchronous_commit", "on"), ("statement_timeout", STATEMENT_TIMEOUT)]);
        let pool = PgPoolOptions::new()
            .max_connections(CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // No ping before each use: it doubled the round trips of every statement. A
            // connection the server dropped (a restart) fails its next statement with an
            // I/O error, which answers 503 and closes it; the pool dials a new one.
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(|error| LedgerError::Open { path: shown.clone(), detail: error.to_string() })?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        let session_name: Arc<str> = session_name.into();
        let (ends, queued) = mpsc::unbounded_channel();
        tokio::spawn(announce(pool.clone(), session_name.clone(), queued));
        let batches = batched::Batches::start(&pool);
        Ok(Self { pool, session_name, ends, batches })
    }

    /// Announces that `task` ended here (recorded, failed or cancelled through this
    /// master), so long polls on the other masters wake; sent within milliseconds,
    /// together with the other ends of that moment.
    pub fn announce_end(&self, task: TaskId) {
        let _ = self.ends.send(task); // the announcer stops only with the runtime
    }

    /// Starts listening for task ends announced by the database (through any master).
    pub async fn task_ends(&self) -> Result<TaskEnds, LedgerError> {
        let mut listener = PgListener::connect_with(&self.pool).await.map_err(unavailable)?;
        listener.listen(TASK_FINAL_CHANNEL).await.map_err(unavailable)?;
        Ok(TaskEnds { listener, session_name: self.session_name.clone(), heard: Default::default() })
    }

    async fn close_all(&self) {
        self.pool.close().await
    }

    /// Commits a write that changes a row, so it proves the database takes writes.
    async fn probe(&self) -> Result<(), LedgerError> {
        let changed =
            sqlx::query!("UPDATE ledger_health SET probes = probes + 1, probed_at = now() WHERE id = 1")
                .execute(&self.pool)
                .await
                .map_err(unavailable)?;
        if changed.rows_affected() != 1 {
            return Err(LedgerError::Unavailable("the ledger_health row is missing".to_owned()));
        }
        Ok(())
    }
}

/// The URL without its password, for messages.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}

/// A database error that means the database, not the statement, is at fault — it is
/// down, restarting, unreachable, out of disk, a read-only standby, or the pool has no
/// connection to give — becomes `Unavailable` (503 `ledger_unavailable`). Each write is
/// one transaction, so a failed one left nothing half-done.
pub(crate) fn unavailable(error: sqlx::Error) -> LedgerError {
    let reason = match &error {
        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => {
            format!("the database connection failed: {error}")
        }
        sqlx::Error::PoolTimedOut => {
            format!("no database connection within {ACQUIRE_TIMEOUT:?}: the database is down or overloaded")
        }
        sqlx::Error::PoolClosed => return LedgerError::Closed,
        sqlx::Error::Database(database) => {
            let code = database.code().unwrap_or_default();
            // 08: connection exception; 53: insufficient resources (disk full, too many
            // connections); 57P0x: shutdown, crash, starting up; 58: system error;
            // 25006: a read-only standby; 40001/40P01: serialization failure, deadlock.
            let storage = code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code.starts_with("58")
                || code == "25006"
                || code == "40001"
                || code == "40P01";
            if !storage {
                return LedgerError::Database(error);
            }
            format!("the database refused the write ({code}): {}", database.message())
        }
        _ => return LedgerError::Database(error),
    };
    LedgerError::Unavailable(reason)
}

// Every engine method is an inherent method of [`PgLedger`] (in `tasks` and `slaves`,
// beside its SQL); this makes them the interface the master sees.
ledger::engine_by_inherent_methods!(PgLedger, probe: probe, close: close_all);
