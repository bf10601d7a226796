//! The master's ledger: one of the two engines, picked by `--db` (SPEC §6, §11). An
//! enum rather than a generic keeps `Cluster` and the handlers free of type parameters;
//! each method hands the call to the engine, whose crate owns its SQL.

use std::{path::PathBuf, time::Duration};

pub use ledger::{
    AssignFrom, Cancellation, Counts, Cursor, Engine, HeldTask, LedgerError, MasterRow, Requeue,
    ResultRecording, SlaveDeletion, SlaveLoad, SlaveRow, Submission, TaskEvent, TaskFilter, TaskRow,
    outcome_columns,
};
use ledger::{Outcome, Registration};
use ledger_postgres::PgLedger;
pub use ledger_postgres::{TaskEnded, TaskEnds};
use ledger_sqlite::SqliteLedger;

use crate::{
    metrics::BatchStats,
    model::{NewTask, SlaveId, SlaveState, TaskId, Timestamp},
};

/// Most writes committed in one SQLite transaction, unless configured otherwise.
pub const DEFAULT_MAX_BATCH: usize = ledger_sqlite::DEFAULT_MAX_BATCH;

/// Where the ledger lives, from `--db`: a `postgres://` or `postgresql://` URL, or else
/// the path of a SQLite file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Sqlite(PathBuf),
    Postgres(String),
}

impl std::fmt::Display for Location {
    /// The path, or the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(path) => path.display().fmt(f),
            Self::Postgres(url) => f.write_str(&ledger_postgres::redacted(url)),
        }
    }
}

impl Location {
    pub fn parse(db: &str) -> Self {
        if db.starts_with("postgres://") || db.starts_with("postgresql://") {
            Self::Postgres(db.to_owned())
        } else {
            Self::Sqlite(db.into())
        }
    }
}

/// Handle to the ledger; cheap to clone.
#[derive(Clone)]
pub enum Ledger {
    Sqlite(SqliteLedger),
    Postgres(PgLedger),
}

/// Runs the same call on whichever engine this is.
macro_rules! on_engine {
    ($ledger:expr, $engine:ident => $call:expr) => {
        match $ledger {
            Ledger::Sqlite($engine) => $call,
            Ledger::Postgres($engine) => $call,
        }
    };
}

impl Ledger {
    /// Opens the ledger at `location`, applying migrations. On SQLite `max_batch` bounds
    /// the writes per group commit; `batches` is told of each commit.
    pub async fn open(
        location: &Location,
        batches: BatchStats,
        max_batch: usize,
    ) -> Result<Self, LedgerError> {
        Ok(match location {
            Location::Sqlite(path) => {
                let on_batch = Box::new(move |writes, took| batches.observe(writes, took));
                Self::Sqlite(SqliteLedger::open(path, on_batch, max_batch).await?)
            }
            Location::Postgres(url) => Self::Postgres(PgLedger::open(url).await?),
        })
    }

    /// Whether other masters may share this ledger (PostgreSQL): then the master follows
    /// what they write (slaves, loads, task ends) instead of trusting its memory alone.
    pub fn is_shared(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    /// Listens for task ends announced by the database; `None` on SQLite, where this
    /// master records every end itself.
    pub async fn task_ends(&self) -> Option<Result<TaskEnds, LedgerError>> {
        match self {
            Self::Sqlite(_) => None,
            Self::Postgres(engine) => Some(engine.task_ends().await),
        }
    }

    /// Tells the other masters on a shared ledger that `task` ended here; nothing on
    /// SQLite.
    pub fn announce_end(&self, task: TaskId) {
        if let Self::Postgres(engine) = self {
            engine.announce_end(task);
        }
    }

    pub async fn probe_writable(&self) -> Result<(), LedgerError> {
        on_engine!(self, engine => engine.probe_writable().await)
    }

    pub async fn close(&self) {
        on_engine!(self, engine => engine.close().await)
    }

    pub async fn insert_task(
        &self,
        task: &NewTask,
        assignment: Option<(SlaveId, Duration)>,
    ) -> Result<TaskId, LedgerError> {
        let task =
            Submission { expression: &task.expression, variables: &task.variables, delay_ms: task.delay_ms };
        on_engine!(self, engine => engine.insert_task(task, assignment).await)
    }

    pub async fn insert_assigned_unless_waiting(
        &self,
        task: &NewTask,
        assignment: (SlaveId, Duration),
    ) -> Result<Option<TaskId>, LedgerError> {
        let task =
            Submission { expression: &task.expression, variables: &task.variables, delay_ms: task.delay_ms };
        on_engine!(self, engine => engine.insert_assigned_unless_waiting(task, assignment).await)
    }

    pub async fn delete_refused_task(&self, id: TaskId, slave: SlaveId) -> Result<bool, LedgerError> {
        on_engine!(self, engine => engine.delete_refused_task(id, slave).await)
    }

    pub async fn assign(
        &self,
        id: TaskId,
        from: AssignFrom,
        slave: SlaveId,
        attempt: i64,
        deadline: Duration,
    ) -> Result<bool, LedgerError> {
        on_engine!(self, engine => engine.assign(id, from, slave, attempt, deadline).await)
    }

    pub async fn unassign(
        &self,
        id: TaskId,
        slave: SlaveId,
        attempt: i64,
        attempts: i64,
    ) -> Result<(), LedgerError> {
        on_engine!(self, engine => engine.unassign(id, slave, attempt, attempts).await)
    }

    pub async fn record_result(
        &self,
        id: TaskId,
        slave: SlaveId,
        attempt: i64,
        outcome: Outcome,
    ) -> Result<ResultRecording, LedgerError> {
        on_engine!(self, engine => engine.record_result(id, slave, attempt, outcome).await)
    }

    pub async fn requeue_lost(
        &self,
        id: TaskId,
        slave: SlaveId,
        attempt: i64,
        max_attempts: i64,
        reason: String,
    ) -> Result<Requeue, LedgerError> {
        on_engine!(self, engine => engine.requeue_lost(id, slave, attempt, max_attempts, reason).await)
    }

    pub async fn cancel(&self, id: TaskId) -> Result<Cancellation, LedgerError> {
        on_engine!(self, engine => engine.cancel(id).await)
    }

    pub async fn task(&self, id: TaskId) -> Result<Option<TaskRow>, LedgerError> {
        on_engine!(self, engine => engine.task(id).await)
    }

    pub async fn tasks(&self, filter: TaskFilter) -> Result<Vec<TaskRow>, LedgerError> {
        on_engine!(self, engine => engine.tasks(filter).await)
    }

    pub async fn counts(&self) -> Result<Counts, LedgerError> {
        on_engine!(self, engine => engine.counts().await)
    }

    pub async fn oldest_pending(&self, limit: i64) -> Result<Vec<TaskRow>, LedgerError> {
        on_engine!(self, engine => engine.oldest_pending(limit).await)
    }

    pub async fn in_progress(&self) -> Result<Vec<HeldTask>, LedgerError> {
        on_engine!(self, engine => engine.in_progress().await)
    }

    pub async fn in_progress_on(&self, slave: SlaveId) -> Result<Vec<HeldTask>, LedgerError> {
        on_engine!(self, engine => engine.in_progress_on(slave).await)
    }

    pub async fn task_events(&self, id: TaskId) -> Result<Option<Vec<TaskEvent>>, LedgerError> {
        on_engine!(self, engine => engine.task_events(id).await)
    }

    pub async fn register_slave(&self, registration: Registration) -> Result<SlaveRow, LedgerError> {
        on_engine!(self, engine => engine.register_slave(registration).await)
    }

    pub async fn slaves(&self) -> Result<Vec<SlaveRow>, LedgerError> {
        on_engine!(self, engine => engine.slaves().await)
    }

    pub async fn slave_seen(&self, id: SlaveId, state: SlaveState) -> Result<Option<Timestamp>, LedgerError> {
        on_engine!(self, engine => engine.slave_seen(id, state).await)
    }

    pub async fn slave_down(&self, id: SlaveId) -> Result<bool, LedgerError> {
        on_engine!(self, engine => engine.slave_down(id).await)
    }

    pub async fn delete_slave(&self, id: SlaveId) -> Result<SlaveDeletion, LedgerError> {
        on_engine!(self, engine => engine.delete_slave(id).await)
    }

    pub async fn slave_loads(&self) -> Result<Vec<SlaveLoad>, LedgerError> {
        on_engine!(self, engine => engine.slave_loads().await)
    }

    pub async fn overdue(&self) -> Result<Vec<HeldTask>, LedgerError> {
        on_engine!(self, engine => engine.overdue().await)
    }

    pub async fn start_master(&self, url: &str) -> Result<i64, LedgerError> {
        on_engine!(self, engine => engine.start_master(url).await)
    }

    pub async fn touch_master(&self, id: i64) -> Result<bool, LedgerError> {
        on_engine!(self, engine => engine.touch_master(id).await)
    }

    pub async fn stop_master(&self, id: i64) -> Result<(), LedgerError> {
        on_engine!(self, engine => engine.stop_master(id).await)
    }

    pub async fn masters(&self, timeout: Duration) -> Result<Vec<MasterRow>, LedgerError> {
        on_engine!(self, engine => engine.masters(timeout).await)
    }
}
