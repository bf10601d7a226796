//! The SQLite ledger engine (SPEC §6): every SQLite statement of the master, and the
//! only code that touches master.db. The embedded default: one file, one master.
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
//! - `masters` — the master that runs on the file records itself (`GET /masters`).
//! - `writer` — the single writer task and its group commit.

use std::{path::Path, str::FromStr, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use sqlx::{
    Connection, SqliteConnection,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::{mpsc, oneshot};

use batched::Deliver;
use tokio_util::sync::CancellationToken;

mod batched;
mod file;
mod masters;
mod slaves;
mod tasks;
mod writer;

pub use file::Fault;
use ledger::{LedgerError, Timestamp};

/// Most writes committed in one transaction, unless configured otherwise.
pub const DEFAULT_MAX_BATCH: usize = 512;
/// Writes waiting for the writer before callers wait for room (back-pressure).
const QUEUE_DEPTH: usize = 8192;
/// Read connections: enough for concurrent API reads on a 2-core machine.
const READ_CONNECTIONS: u32 = 4;
/// A reader may briefly wait on a WAL checkpoint; it never surfaces as an error.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A write the writer runs as its own statements; true if they succeeded.
type StatementsJob =
    Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, (bool, Deliver)> + Send>;

/// A write queued for the writer.
enum Job {
    /// A submission: all of a batch's are one statement.
    InsertTask(batched::NewTaskRow, batched::InsertReply),
    /// A slave's result: all of a batch's are one statement.
    RecordResult(batched::ResultRow, batched::ResultReply),
    /// Any other write.
    Statements(StatementsJob),
}

/// Told the size and duration of every committed batch (for metrics).
pub type OnBatch = Box<dyn Fn(usize, Duration) + Send + Sync>;

/// Handle to a SQLite ledger; cheap to clone.
#[derive(Clone)]
pub struct SqliteLedger {
    reads: SqlitePool,
    jobs: mpsc::Sender<Job>,
    /// Cancelled by [`Ledger::close`]: the writer finishes what is queued and exits.
    closing: CancellationToken,
    /// Why writes fail now, as the writer last found (`None`: they commit).
    fault: Fault,
    writer: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
    /// The file, locked (`flock`) while this ledger is open: one master per file.
    lock: Arc<std::sync::Mutex<Option<std::fs::File>>>,
}

/// Opens (creating) the file at `path` and takes an exclusive `flock` on it, so a
/// second master on the same file is refused with words rather than sharing it: the
/// group-commit writer and the in-memory registry assume they are alone (SPEC §11).
/// SQLite's own locks are POSIX record locks, which `flock` does not touch, so
/// `sqlite3` and other readers still open the file.
fn lock_for_one_master(path: &Path) -> Result<std::fs::File, String> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|error| error.to_string())?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err("another master is running on this file: SQLite takes one master; for several, \
             share a PostgreSQL database (README \"Scaling out\")"
                .to_owned())
        }
        Err(std::fs::TryLockError::Error(error)) => Err(format!("cannot lock the file: {error}")),
    }
}

impl SqliteLedger {
    /// Opens (creating if missing) the ledger at `path`: refuses a file that fails
    /// `PRAGMA quick_check`, applies migrations, starts the writer.
    /// `max_batch` bounds the writes per commit (1 turns group commit off, for comparison).
    pub async fn open(path: &Path, on_batch: OnBatch, max_batch: usize) -> Result<Self, LedgerError> {
        let options = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let shown = path.display().to_string();
        let lock =
            lock_for_one_master(path).map_err(|detail| LedgerError::Open { path: shown.clone(), detail })?;
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
            // No ping before each use: a round trip to the connection's worker thread
            // for a file that cannot go away underneath it (a read that fails says so).
            .test_before_acquire(false)
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
            on_batch,
            max_batch: max_batch.max(1),
            closing: closing.clone(),
            identity,
            fault: fault.clone(),
        }));
        Ok(Self {
            reads,
            jobs,
            closing,
            fault,
            writer: Arc::new(tokio::sync::Mutex::new(Some(writer))),
            lock: Arc::new(std::sync::Mutex::new(Some(lock))),
        })
    }

    /// Commits every queued write, then closes all connections, so SQLite checkpoints
    /// the WAL into the file and removes it. Later writes fail with `Closed`.
    async fn close_all(&self) {
        // Readers first: only the last connection to close checkpoints and removes the
        // WAL, and a read-only one cannot, so the writer must be last.
        self.reads.close().await;
        self.closing.cancel();
        if let Some(writer) = self.writer.lock().await.take() {
            let _ = writer.await;
        }
        // Closed: another master may open the file now.
        drop(self.lock.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take());
    }

    /// Runs `job` on the write connection in the next batch; resolves once committed.
    async fn write<T, F>(&self, job: F) -> Result<T, LedgerError>
    where
        T: Send + 'static,
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<T, LedgerError>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: StatementsJob = Box::new(move |conn| {
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
        self.queue(Job::Statements(job), answer).await
    }

    /// Queues `job` for the writer and waits for its answer on `answer`.
    async fn queue<T>(
        &self,
        job: Job,
        answer: oneshot::Receiver<Result<T, LedgerError>>,
    ) -> Result<T, LedgerError> {
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
    async fn probe(&self) -> Result<(), LedgerError> {
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

// Every engine method is an inherent method of [`SqliteLedger`] (in `tasks` and `slaves`,
// beside its SQL); this makes them the interface the master sees.
ledger::engine_by_inherent_methods!(SqliteLedger, probe: probe, close: close_all);
