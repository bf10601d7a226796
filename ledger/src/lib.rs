//! The ledger's interface (SPEC §6, §11): its domain types, the outcomes of its guarded
//! writes, its errors, and the [`Engine`] trait that each engine implements — SQLite in
//! `ledger-sqlite` (embedded, one master) and PostgreSQL in `ledger-postgres` (shared by
//! several masters). sqlx's compile-checked macros take one database per crate, hence a
//! crate per engine; what they share lives here, with the [`conformance`] suite that pins
//! every transition on both.

use std::{fmt, time::Duration};

use chrono::{SecondsFormat, Utc};
pub use common::protocol::{Outcome, Registration, Variables};
use serde::{Deserialize, Serialize};

pub mod conformance;

/// A task's id: integers from 1, increasing, never reused.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    sqlx::Type,
    utoipa::ToSchema,
)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct TaskId(pub i64);

/// A slave's id, kept across re-registrations under the same name.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    sqlx::Type,
    utoipa::ToSchema,
)]
#[sqlx(transparent)]
#[serde(transparent)]
pub struct SlaveId(pub i64);

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for SlaveId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a task is in its life (SPEC §3), and who moves it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Stored, no slave yet. Left by dispatch (→ InProgress) or by cancel.
    Pending,
    /// A slave holds it. Left by its result (→ Done/Failed), by the reaper or a
    /// re-registration (→ Pending, or Failed past max attempts) or by cancel.
    InProgress,
    /// Final: `result` is a finite number.
    Done,
    /// Final: `error` says why.
    Failed,
    /// Final: cancelled by a client.
    Cancelled,
}

impl TaskStatus {
    /// Every status, in life order (the order of `counts` in the API).
    pub const ALL: [TaskStatus; 5] =
        [Self::Pending, Self::InProgress, Self::Done, Self::Failed, Self::Cancelled];

    /// The status as stored and as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Whether nothing moves the task out of this status any more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }

    /// Parses the API's spelling.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == raw)
    }
}

/// A slave's state as dispatch sees it (SPEC §4 `GET /slaves`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema)]
#[sqlx(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum SlaveState {
    /// Heartbeating; offered tasks in position order.
    Up,
    /// Silent past the slave timeout; skipped until it heartbeats or registers again.
    Down,
    /// Finishing its tasks before leaving; skipped.
    Draining,
}

impl SlaveState {
    /// The state as stored and as written in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Draining => "draining",
        }
    }
}

/// An RFC 3339 UTC timestamp with milliseconds, as stored in the ledger
/// (`2026-11-25T10:46:31.123Z`): fixed width, so text order is time order.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, sqlx::Type, utoipa::ToSchema,
)]
#[sqlx(transparent)]
#[serde(transparent)]
#[schema(value_type = String, format = DateTime, example = "2026-11-25T10:46:31.123Z")]
pub struct Timestamp(pub String);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self(Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    /// The time `after` from now (deadlines).
    pub fn in_future(after: Duration) -> Self {
        let after = chrono::Duration::from_std(after).unwrap_or(chrono::Duration::MAX);
        let at = Utc::now().checked_add_signed(after).unwrap_or(chrono::DateTime::<Utc>::MAX_UTC);
        Self(at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }

    /// The time `before` ago.
    pub fn in_past(before: Duration) -> Self {
        let before = chrono::Duration::from_std(before).unwrap_or(chrono::Duration::MAX);
        let at = Utc::now().checked_sub_signed(before).unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        Self(at.to_rfc3339_opts(SecondsFormat::Millis, true))
    }
}

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
    /// Milliseconds since it was assigned, by the ledger's clock: how another master
    /// than the one that offered it tells an offer still in flight (SPEC §11).
    pub assigned_ms_ago: i64,
}

/// How many tasks the ledger has in progress on a slave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlaveLoad {
    pub slave_id: SlaveId,
    pub running: i64,
}

/// A master that runs (or ran) on this ledger (`GET /masters`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct MasterRow {
    pub id: i64,
    /// Where it serves its API (`--advertise-url`, or its bound address).
    pub url: String,
    pub started_at: Timestamp,
    pub last_seen_at: Timestamp,
    /// Refreshed its row within the master timeout and has not stopped.
    pub up: bool,
}

/// One entry of a task's history (`task_events`), with its slave's name if it still
/// exists.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEvent {
    pub id: i64,
    pub at: Timestamp,
    /// `submitted`, `assigned`, `unassigned`, `requeued`, `done`, `failed`, `cancelled`.
    pub kind: String,
    pub slave_id: Option<SlaveId>,
    pub slave_name: Option<String>,
    /// Why, in words (a requeue's reason, a failure's error, the attempt assigned).
    pub detail: Option<String>,
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
    /// Only tasks last assigned to this slave.
    pub slave: Option<SlaveId>,
    pub page: Cursor,
    pub limit: i64,
}

/// Where a page of tasks starts, and which way it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cursor {
    /// Oldest first, ids above this one.
    After(TaskId),
    /// Newest first, ids below this one.
    Before(TaskId),
}

/// How a result report was taken (SPEC §4 `POST /tasks/{id}/result`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResultRecording {
    /// Recorded now; the task is final with `status`, finished at `finished_at` as stored
    /// (so a long poll can answer with the final row without reading it back).
    Recorded { status: TaskStatus, finished_at: Timestamp },
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

impl ResultRecording {
    /// The status the task ended with, if this report was the one recorded.
    pub fn recorded_status(&self) -> Option<TaskStatus> {
        match self {
            Self::Recorded { status, .. } => Some(*status),
            _ => None,
        }
    }
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

/// A new task as the ledger stores it (already checked by the master, SPEC §3).
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    pub expression: &'a str,
    pub variables: &'a Variables,
    pub delay_ms: u64,
}

impl Submission<'_> {
    /// The variables as stored: a JSON object.
    pub fn variables_json(&self) -> String {
        serde_json::to_string(self.variables).unwrap_or_else(|_| "{}".to_owned())
    }

    /// The delay as stored.
    pub fn stored_delay_ms(&self) -> i64 {
        i64::try_from(self.delay_ms).unwrap_or(i64::MAX)
    }
}

/// The columns a reported outcome sets: `done` with a finite value, otherwise `failed`
/// with the reason in words (SPEC §3: `done` always has a finite result).
pub fn outcome_columns(outcome: &Outcome) -> (TaskStatus, Option<f64>, Option<String>) {
    match outcome {
        Outcome::Value(value) if value.is_finite() => (TaskStatus::Done, Some(*value), None),
        Outcome::Value(value) => (TaskStatus::Failed, None, Some(format!("result is {value}"))),
        Outcome::Error(error) => (TaskStatus::Failed, None, Some(error.clone())),
    }
}

/// The reason a task fails once its slave was lost `attempt` times.
pub fn lost_too_often(attempt: i64, reason: &str) -> String {
    format!("slave lost {attempt} times; last: {reason}")
}

/// What every engine does. Each write is guarded by what it expects to change (status,
/// slave, attempt) and reports whether it changed it, so that when writers race —
/// two dispatchers, a result against a requeue, a cancel against a result — exactly one
/// wins and the others are told. A write's future resolves only once it is durable.
#[allow(async_fn_in_trait)] // engines are used through concrete types, whose futures are Send
pub trait Engine {
    /// A write that really commits (`GET /healthz`, readiness and watchdog). `Err` says why not.
    async fn probe_writable(&self) -> Result<(), LedgerError>;
    /// Commits what is queued and closes every connection. Later writes fail with `Closed`.
    async fn close(&self);

    /// Stores a new task: `pending`, or straight `in_progress` on a slave at attempt 1
    /// (with that deadline) when the submission already picked one.
    async fn insert_task(
        &self,
        task: Submission<'_>,
        assignment: Option<(SlaveId, Duration)>,
    ) -> Result<TaskId, LedgerError>;
    /// Stores a new task straight `in_progress` on a slave, as `insert_task` with an
    /// assignment does, unless tasks are pending: then it stores nothing and answers
    /// `None`, so that a new task never overtakes one already waiting. On a ledger that
    /// other masters share, the database decides that in the same statement, instead of
    /// a read of the counts before every submission.
    async fn insert_assigned_unless_waiting(
        &self,
        task: Submission<'_>,
        assignment: (SlaveId, Duration),
    ) -> Result<Option<TaskId>, LedgerError>;
    /// Removes a task stored for a submission every slave then refused ("full capacity"
    /// leaves nothing, SPEC §4). False if it moved on meanwhile, and then it stays.
    async fn delete_refused_task(&self, id: TaskId, slave: SlaveId) -> Result<bool, LedgerError>;
    /// Assigns a task to `slave` under `attempt` before the offer is sent. False if
    /// anything moved it from where `from` says it was.
    async fn assign(
        &self,
        id: TaskId,
        from: AssignFrom,
        slave: SlaveId,
        attempt: i64,
        deadline: Duration,
    ) -> Result<bool, LedgerError>;
    /// Back to `pending` with `attempts` as before, after every slave refused the offer.
    async fn unassign(
        &self,
        id: TaskId,
        slave: SlaveId,
        attempt: i64,
        attempts: i64,
    ) -> Result<(), LedgerError>;
    /// Records a slave's result exactly once; anything else is classified.
    async fn record_result(
        &self,
        id: TaskId,
        slave: SlaveId,
        attempt: i64,
        outcome: Outcome,
    ) -> Result<ResultRecording, LedgerError>;
    /// A task lost on `slave`: back to `pending` with `attempts + 1`, or `failed` once
    /// `max_attempts` offers were lost.
    async fn requeue_lost(
        &self,
        id: TaskId,
        slave: SlaveId,
        attempt: i64,
        max_attempts: i64,
        reason: String,
    ) -> Result<Requeue, LedgerError>;
    /// Cancels a pending or in-progress task.
    async fn cancel(&self, id: TaskId) -> Result<Cancellation, LedgerError>;

    /// One task, or `None`.
    async fn task(&self, id: TaskId) -> Result<Option<TaskRow>, LedgerError>;
    /// A page of tasks, oldest first.
    async fn tasks(&self, filter: TaskFilter) -> Result<Vec<TaskRow>, LedgerError>;
    /// Tasks by status, without counting every row.
    async fn counts(&self) -> Result<Counts, LedgerError>;
    /// The oldest pending tasks, for the dispatcher.
    async fn oldest_pending(&self, limit: i64) -> Result<Vec<TaskRow>, LedgerError> {
        let page = Cursor::After(TaskId(0));
        self.tasks(TaskFilter { status: Some(TaskStatus::Pending), slave: None, page, limit }).await
    }
    /// Every in-progress task with its slave and attempt.
    async fn in_progress(&self) -> Result<Vec<HeldTask>, LedgerError>;
    /// In-progress tasks held by `slave`.
    async fn in_progress_on(&self, slave: SlaveId) -> Result<Vec<HeldTask>, LedgerError>;
    /// A task's history, oldest first; `None` when there is no such task.
    async fn task_events(&self, id: TaskId) -> Result<Option<Vec<TaskEvent>>, LedgerError>;

    /// Registers a slave, or re-registers a known name keeping its id and position.
    async fn register_slave(&self, registration: Registration) -> Result<SlaveRow, LedgerError>;
    /// Every slave in registration order.
    async fn slaves(&self) -> Result<Vec<SlaveRow>, LedgerError>;
    /// A slave was heard from: stores its state (`up` or `draining`) and `last_seen_at`
    /// = now by the ledger's clock, and returns that; `None` if there is no such slave.
    async fn slave_seen(&self, id: SlaveId, state: SlaveState) -> Result<Option<Timestamp>, LedgerError>;
    /// A slave went silent: `down`, its `last_seen_at` kept. False if there is no such slave.
    async fn slave_down(&self, id: SlaveId) -> Result<bool, LedgerError>;
    /// Forgets a slave, unless a task is in progress on it.
    async fn delete_slave(&self, id: SlaveId) -> Result<SlaveDeletion, LedgerError>;
    /// In-progress tasks per slave (slaves with none are left out).
    async fn slave_loads(&self) -> Result<Vec<SlaveLoad>, LedgerError>;
    /// In-progress tasks past their stored deadline, by the ledger's clock.
    async fn overdue(&self) -> Result<Vec<HeldTask>, LedgerError>;

    /// Records a master starting to serve at `url` (and drops rows unseen for a day);
    /// its id.
    async fn start_master(&self, url: &str) -> Result<i64, LedgerError>;
    /// The master is alive: refreshes its `last_seen_at`. False if its row is gone.
    async fn touch_master(&self, id: i64) -> Result<bool, LedgerError>;
    /// The master stopped cleanly: it shows as down at once.
    async fn stop_master(&self, id: i64) -> Result<(), LedgerError>;
    /// Every recorded master, oldest first; `up` if seen within `timeout` and not stopped.
    async fn masters(&self, timeout: Duration) -> Result<Vec<MasterRow>, LedgerError>;
}

/// Implements [`Engine`] for an engine type whose inherent methods carry the trait's
/// names and signatures (each beside its SQL, in files by topic), plus the two named
/// here for the probe and the close. The trait stays the one list of what an engine does.
#[macro_export]
macro_rules! engine_by_inherent_methods {
    ($engine:ty, probe: $probe:ident, close: $close:ident) => {
        impl $crate::Engine for $engine {
            async fn probe_writable(&self) -> Result<(), $crate::LedgerError> {
                self.$probe().await
            }
            async fn close(&self) {
                self.$close().await
            }
            async fn insert_task(
                &self,
                task: $crate::Submission<'_>,
                assignment: Option<($crate::SlaveId, std::time::Duration)>,
            ) -> Result<$crate::TaskId, $crate::LedgerError> {
                Self::insert_task(self, task, assignment).await
            }
            async fn insert_assigned_unless_waiting(
                &self,
                task: $crate::Submission<'_>,
                assignment: ($crate::SlaveId, std::time::Duration),
            ) -> Result<Option<$crate::TaskId>, $crate::LedgerError> {
                Self::insert_assigned_unless_waiting(self, task, assignment).await
            }
            async fn delete_refused_task(
                &self,
                id: $crate::TaskId,
                slave: $crate::SlaveId,
            ) -> Result<bool, $crate::LedgerError> {
                Self::delete_refused_task(self, id, slave).await
            }
            async fn assign(
                &self,
                id: $crate::TaskId,
                from: $crate::AssignFrom,
                slave: $crate::SlaveId,
                attempt: i64,
                deadline: std::time::Duration,
            ) -> Result<bool, $crate::LedgerError> {
                Self::assign(self, id, from, slave, attempt, deadline).await
            }
            async fn unassign(
                &self,
                id: $crate::TaskId,
                slave: $crate::SlaveId,
                attempt: i64,
                attempts: i64,
            ) -> Result<(), $crate::LedgerError> {
                Self::unassign(self, id, slave, attempt, attempts).await
            }
            async fn record_result(
                &self,
                id: $crate::TaskId,
                slave: $crate::SlaveId,
                attempt: i64,
                outcome: $crate::Outcome,
            ) -> Result<$crate::ResultRecording, $crate::LedgerError> {
                Self::record_result(self, id, slave, attempt, outcome).await
            }
            async fn requeue_lost(
                &self,
                id: $crate::TaskId,
                slave: $crate::SlaveId,
                attempt: i64,
                max_attempts: i64,
                reason: String,
            ) -> Result<$crate::Requeue, $crate::LedgerError> {
                Self::requeue_lost(self, id, slave, attempt, max_attempts, reason).await
            }
            async fn cancel(&self, id: $crate::TaskId) -> Result<$crate::Cancellation, $crate::LedgerError> {
                Self::cancel(self, id).await
            }
            async fn task(&self, id: $crate::TaskId) -> Result<Option<$crate::TaskRow>, $crate::LedgerError> {
                Self::task(self, id).await
            }
            async fn tasks(
                &self,
                filter: $crate::TaskFilter,
            ) -> Result<Vec<$crate::TaskRow>, $crate::LedgerError> {
                Self::tasks(self, filter).await
            }
            async fn counts(&self) -> Result<$crate::Counts, $crate::LedgerError> {
                Self::counts(self).await
            }
            async fn in_progress(&self) -> Result<Vec<$crate::HeldTask>, $crate::LedgerError> {
                Self::in_progress(self).await
            }
            async fn in_progress_on(
                &self,
                slave: $crate::SlaveId,
            ) -> Result<Vec<$crate::HeldTask>, $crate::LedgerError> {
                Self::in_progress_on(self, slave).await
            }
            async fn task_events(
                &self,
                id: $crate::TaskId,
            ) -> Result<Option<Vec<$crate::TaskEvent>>, $crate::LedgerError> {
                Self::task_events(self, id).await
            }
            async fn register_slave(
                &self,
                registration: $crate::Registration,
            ) -> Result<$crate::SlaveRow, $crate::LedgerError> {
                Self::register_slave(self, registration).await
            }
            async fn slaves(&self) -> Result<Vec<$crate::SlaveRow>, $crate::LedgerError> {
                Self::slaves(self).await
            }
            async fn slave_seen(
                &self,
                id: $crate::SlaveId,
                state: $crate::SlaveState,
            ) -> Result<Option<$crate::Timestamp>, $crate::LedgerError> {
                Self::slave_seen(self, id, state).await
            }
            async fn slave_down(&self, id: $crate::SlaveId) -> Result<bool, $crate::LedgerError> {
                Self::slave_down(self, id).await
            }
            async fn delete_slave(
                &self,
                id: $crate::SlaveId,
            ) -> Result<$crate::SlaveDeletion, $crate::LedgerError> {
                Self::delete_slave(self, id).await
            }
            async fn slave_loads(&self) -> Result<Vec<$crate::SlaveLoad>, $crate::LedgerError> {
                Self::slave_loads(self).await
            }
            async fn overdue(&self) -> Result<Vec<$crate::HeldTask>, $crate::LedgerError> {
                Self::overdue(self).await
            }
            async fn start_master(&self, url: &str) -> Result<i64, $crate::LedgerError> {
                Self::start_master(self, url).await
            }
            async fn touch_master(&self, id: i64) -> Result<bool, $crate::LedgerError> {
                Self::touch_master(self, id).await
            }
            async fn stop_master(&self, id: i64) -> Result<(), $crate::LedgerError> {
                Self::stop_master(self, id).await
            }
            async fn masters(
                &self,
                timeout: std::time::Duration,
            ) -> Result<Vec<$crate::MasterRow>, $crate::LedgerError> {
                Self::masters(self, timeout).await
            }
        }
    };
}

/// Why a result report that changed nothing changed nothing, from the task as it is now.
pub fn classify_unrecorded(
    current: &TaskRow,
    slave: SlaveId,
    attempt: i64,
    status: TaskStatus,
    value: Option<f64>,
    error: Option<&str>,
) -> ResultRecording {
    if current.status == TaskStatus::Cancelled {
        return ResultRecording::Cancelled;
    }
    if attempt != current.attempts {
        return ResultRecording::StaleAttempt { current: current.attempts };
    }
    if current.slave_id != Some(slave) {
        return ResultRecording::OtherSlave;
    }
    let same_outcome =
        current.status == status && current.result == value && current.error.as_deref() == error;
    if same_outcome {
        ResultRecording::Duplicate
    } else if current.status.is_final() {
        ResultRecording::ConflictingOutcome { recorded: current.status }
    } else {
        ResultRecording::StaleAttempt { current: current.attempts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_sort_as_text() {
        let earlier = Timestamp::in_past(Duration::from_secs(1));
        let later = Timestamp::in_future(Duration::from_secs(1));
        assert!(earlier < Timestamp::now() && Timestamp::now() < later);
        assert!(Timestamp::now().0.ends_with('Z'));
    }

    #[test]
    fn states_and_statuses_read_back_as_written() {
        for status in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(status.as_str()), Some(status));
        }
        for (state, stored) in
            [(SlaveState::Up, "up"), (SlaveState::Down, "down"), (SlaveState::Draining, "draining")]
        {
            assert_eq!(serde_json::to_value(state).unwrap(), stored, "the API and the ledger spell it alike");
            assert_eq!(state.as_str(), stored);
        }
    }
}
