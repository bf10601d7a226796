//! The ledger: every SQL statement of the master, and the only code that touches
//! master.db (SPEC §6).
//!
//! Reads go through a small pool of read-only connections; WAL lets them run beside
//! the writer. Every write goes through one writer task that owns the only write
//! connection and commits whatever writes are queued in one transaction (group
//! commit): one fsync answers many requests, no request ever meets `SQLITE_BUSY`, and
//! a write's future resolves only after its transaction is durable (`synchronous=FULL`).
//! A write that fails rolls back its whole batch, and every caller in it is told.
//!
//! - `tasks`  — statements about tasks (submission, assignment, results, requeues, reads).
//! - `slaves` — statements about slaves (registration, state, deletion).
//! - `writer` — the single writer task and its group commit.

use std::{path::Path, str::FromStr, sync::Arc, time::Duration};

use common::protocol::Variables;
use futures_util::future::BoxFuture;
use sqlx::{
    Connection, SqliteConnection,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

mod file;
mod slaves;
mod tasks;
mod writer;

pub use file::Fault;

use crate::model::{SlaveId, SlaveState, TaskId, TaskStatus, Timestamp};

/// Most writes committed in one transaction, unless configured otherwise.
pub const DEFAULT_MAX_BATCH: usize = 512;
/// Writes waiting for the writer before callers wait for room (back-pressure).
const QUEUE_DEPTH: usize = 8192;
/// Read connections: enough for concurrent API reads on a 2-core machine.
const READ_CONNECTIONS: u32 = 4;
/// A reader may briefly wait on a WAL checkpoint; it never surfaces as an error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// What can go wrong in the ledger. Database details stay in the log (see `api::errors`).
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("cannot open the ledger {path}: {detail}")]
    Open { path: String, detail: String },
    #[error("{path} failed its integrity check ({detail}); restore it from a backup or move it away")]
    Corrupt { path: String, detail: String },
    /// The ledger cannot take writes now (disk full or read-only, file deleted or
    /// replaced, commit failed): 503 `ledger_unavailable`, nothing half-done kept.
    #[error("the ledger is unavailable: {0}")]
    Unavailable(String),
    #[error("the ledger did not take the write (writer stopped or transaction failed to begin)")]
    Closed,
    #[error("stored variables of task {0} are not valid JSON: {1}")]
    BadVariables(TaskId, serde_json::Error),
}

type Deliver = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, (bool, Deliver)> + Send>;

/// Handle to the ledger; cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    reads: SqlitePool,
    jobs: mpsc::Sender<Job>,
    /// Cancelled by [`Ledger::close`]: the writer finishes what is queued and exits.
    closing: CancellationToken,
    /// Why writes fail now, as the writer last found (`None`: they commit).
    fault: Fault,
    writer: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

/// A task as stored, with its slave's name.
#[derive(Debug, Clone)]
pub struct TaskRow {
    pub id: TaskId,
    pub expression: String,
    pub variables: String,
    pub delay_ms: i64,
    pub status: TaskStatus,
    pub slave_id: Option<SlaveId>,
    pub slave_name: Option<String>,
    pub attempts: i64,
    pub result: Option<f64>,
    pub error: Option<String>,
    pub submitted_at: Timestamp,
    pub assigned_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

impl TaskRow {
    /// The stored variables, parsed.
    pub fn variables(&self) -> Result<Variables, LedgerError> {
        serde_json::from_str(&self.variables).map_err(|error| LedgerError::BadVariables(self.id, error))
    }
}

/// A slave as stored.
#[derive(Debug, Clone)]
pub struct SlaveRow {
    pub id: SlaveId,
    pub name: String,
    pub url: String,
    pub capacity: i64,
    pub position: i64,
    pub state: SlaveState,
    pub registered_at: Timestamp,
    pub last_seen_at: Timestamp,
    /// The process run that registered it last (`None`: it sent no instance).
    pub instance: Option<String>,
}

/// A task a slave holds, as the ledger knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldTask {
    pub id: TaskId,
    pub slave_id: SlaveId,
    pub attempts: i64,
    /// Its simulated work, which lengthens its deadline.
    pub delay_ms: i64,
}

/// Tasks by status, as in `GET /tasks` `counts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct Counts {
    pub pending: i64,
    pub in_progress: i64,
    pub done: i64,
    pub failed: i64,
    pub cancelled: i64,
}

/// Which page of tasks to list.
#[derive(Debug, Clone, Copy)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub after: TaskId,
    pub limit: i64,
}

/// How a result report was taken (SPEC §4 `POST /tasks/{id}/result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultRecording {
    /// Recorded now; the task is final.
    Recorded(TaskStatus),
    /// The same outcome was already recorded for this slave and attempt.
    Duplicate,
    /// The task was cancelled; the result is ignored.
    Cancelled,
    /// The report is for an attempt that is not the current one.
    StaleAttempt { current: i64 },
    /// This slave's attempt already has another outcome recorded (`recorded` status).
    ConflictingOutcome { recorded: TaskStatus },
    /// The current attempt belongs to another slave.
    OtherSlave,
    /// No such task.
    NotFound,
}

/// What became of a task lost on its slave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requeue {
    /// Back to pending under a new attempt.
    Pending { attempts: i64 },
    /// Out of attempts: failed.
    Failed,
    /// The task had already moved on (result recorded, cancelled, re-dispatched).
    NotHeld,
}

/// Where a task is expected to be when it is assigned (the guard of [`Ledger::assign`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AssignFrom {
    /// Pending with this many attempts (the dispatcher read it so).
    Pending { attempts: i64 },
    /// In progress on this slave under the same attempt, which refused the offer.
    Slave { slave: SlaveId },
}

/// What deleting a slave found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlaveDeletion {
    Deleted,
    NotFound,
    /// Tasks are (again) in progress on it: requeue them first.
    StillHoldsTasks,
}

/// What a cancel found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancellation {
    /// Cancelled now; `slave` held it (under `attempt`) and should be told to drop it.
    Cancelled {
        slave: Option<SlaveId>,
        attempt: i64,
    },
    /// Already final; nothing changed.
    AlreadyFinal(TaskStatus),
    NotFound,
}

impl Ledger {
    /// Opens (creating if missing) the ledger at `path`: refuses a file that fails
    /// `PRAGMA quick_check`, applies migrations, starts the writer.
    /// `max_batch` bounds the writes per commit (1 turns group commit off, for comparison).
    pub async fn open(
        path: &Path,
        batches: crate::metrics::BatchStats,
        max_batch: usize,
    ) -> Result<Self, LedgerError> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let shown = path.display().to_string();
        let mut writer = SqliteConnection::connect_with(&options).await.map_err(|error| {
            let detail = error.to_string();
            if is_corruption(&error) {
                LedgerError::Corrupt { path: shown.clone(), detail }
            } else {
                LedgerError::Open { path: shown.clone(), detail }
            }
        })?;
        let verdict: String = sqlx::query_scalar("PRAGMA quick_check")
            .fetch_one(&mut writer)
            .await
            .map_err(|error| LedgerError::Corrupt { path: shown.clone(), detail: error.to_string() })?;
        if verdict != "ok" {
            return Err(LedgerError::Corrupt { path: shown, detail: verdict });
        }
        sqlx::migrate!("../migrations").run(&mut writer).await?;
        let reads = SqlitePoolOptions::new()
            .max_connections(READ_CONNECTIONS)
            .connect_with(options.read_only(true))
            .await?;
        let identity = file::Identity::of(path)
            .map_err(|error| LedgerError::Open { path: shown.clone(), detail: error.to_string() })?;
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let closing = CancellationToken::new();
        let fault = Fault::default();
        let writer = tokio::spawn(writer::write_loop(writer::Writer {
            conn: writer,
            jobs: queue,
            stats: batches,
            max_batch: max_batch.max(1),
            closing: closing.clone(),
            identity,
            fault: fault.clone(),
        }));
        Ok(Self { reads, jobs, closing, fault, writer: Arc::new(tokio::sync::Mutex::new(Some(writer))) })
    }

    /// Commits every queued write, then closes all connections, so SQLite checkpoints
    /// the WAL into the file and removes it. Later writes fail with `Closed`.
    pub async fn close(&self) {
        // Readers first: only the last connection to close checkpoints and removes the
        // WAL, and a read-only one cannot, so the writer must be last.
        self.reads.close().await;
        self.closing.cancel();
        if let Some(writer) = self.writer.lock().await.take() {
            let _ = writer.await;
        }
    }

    /// Runs `job` on the write connection in the next batch; resolves once committed.
    async fn write<T, F>(&self, job: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, LedgerError>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            Box::pin(async move {
                let outcome = job(conn).await;
                let succeeded = outcome.is_ok();
                let deliver: Deliver = Box::new(move |committed| {
                    // The caller may have gone (client hung up); the write stands regardless.
                    // The write's own error first; otherwise whether its batch committed.
                    let outcome = outcome.map_err(file::storage_fault_to_unavailable);
                    let _ = reply.send(
                        outcome.and_then(|value| committed.map(|()| value).map_err(LedgerError::Unavailable)),
                    );
                });
                (succeeded, deliver)
            })
        });
        // A writer that dropped the job (the file was deleted, a batch could not begin)
        // left the reason in `fault`.
        let dropped = || match self.fault.get() {
            Some(reason) => LedgerError::Unavailable(reason),
            None => LedgerError::Closed,
        };
        self.jobs.send(job).await.map_err(|_| dropped())?;
        answer.await.map_err(|_| dropped())?
    }

    /// `GET /healthz`: a write that really reaches the disk (a counter that changes on
    /// every probe, committed with fsync) through the same writer as every other write,
    /// which also checks that the path still names the file it opened. `Err` says why not.
    pub async fn probe_writable(&self) -> Result<(), LedgerError> {
        let now = Timestamp::now();
        self.write(move |conn| {
            Box::pin(async move {
                let changed = sqlx::query!(
                    "UPDATE ledger_health SET probes = probes + 1, probed_at = ?1 WHERE id = 1",
                    now
                )
                .execute(&mut *conn)
                .await?;
                if changed.rows_affected() != 1 {
                    return Err(LedgerError::Unavailable("the ledger_health row is missing".to_owned()));
                }
                Ok(())
            })
        })
        .await
    }
}

/// Whether SQLite said the file is damaged or not a database at all (SQLITE_CORRUPT,
/// SQLITE_NOTADB), as opposed to a file that cannot be opened (permissions, path).
fn is_corruption(error: &sqlx::Error) -> bool {
    const SQLITE_CORRUPT: &str = "11";
    const SQLITE_NOTADB: &str = "26";
    let code = error.as_database_error().and_then(|e| e.code());
    matches!(code.as_deref(), Some(SQLITE_CORRUPT | SQLITE_NOTADB))
}
