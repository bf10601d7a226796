//! The ledger: every SQL statement of the master, and the only code that touches
//! master.db (SPEC §6).
//!
//! Reads go through a small pool of read-only connections; WAL lets them run beside
//! the writer. Every write goes through one writer task that owns the only write
//! connection and commits whatever writes are queued in one transaction (group
//! commit): one fsync answers many requests, no request ever meets `SQLITE_BUSY`, and
//! a write's future resolves only after its transaction is durable (`synchronous=FULL`).
//! Each write runs inside its own savepoint, so one failing write never undoes another.

use std::{path::Path, str::FromStr, sync::Arc, time::Duration};

use futures_util::future::BoxFuture;
use slave::protocol::{Outcome, Registration, Variables};
use sqlx::{
    Connection, SqliteConnection,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous},
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::model::{NewTask, SlaveId, SlaveState, TaskId, TaskStatus, Timestamp};

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
    #[error("commit failed: {0}")]
    CommitFailed(String),
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
}

/// A task a slave holds, as the ledger knows it.
#[derive(Debug, Clone, PartialEq)]
pub struct HeldTask {
    pub id: TaskId,
    pub slave_id: SlaveId,
    pub attempts: i64,
    pub assigned_at: Timestamp,
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
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let closing = CancellationToken::new();
        let writer = tokio::spawn(write_loop(writer, queue, batches, max_batch.max(1), closing.clone()));
        Ok(Self { reads, jobs, closing, writer: Arc::new(tokio::sync::Mutex::new(Some(writer))) })
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
                    let _ = reply.send(
                        outcome
                            .and_then(|value| committed.map(|()| value).map_err(LedgerError::CommitFailed)),
                    );
                });
                (succeeded, deliver)
            })
        });
        self.jobs.send(job).await.map_err(|_| LedgerError::Closed)?;
        answer.await.map_err(|_| LedgerError::Closed)?
    }

    /// Whether a write commits: `GET /healthz`.
    pub async fn is_writable(&self) -> bool {
        self.write(|conn| {
            Box::pin(async move {
                sqlx::query!("UPDATE task_counts SET n = n WHERE status = 'pending'")
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
        })
        .await
        .is_ok()
    }

    // ----- tasks -------------------------------------------------------------------

    /// Stores a new task: `pending`, or straight `in_progress` on `slave` at `attempt 1`
    /// when the submission already picked one (one write instead of two).
    pub async fn insert_task(
        &self,
        task: &NewTask,
        assignment: Option<(SlaveId, Timestamp)>,
    ) -> Result<TaskId, LedgerError> {
        let expression = task.expression.clone();
        let variables = serde_json::to_string(&task.variables).unwrap_or_else(|_| "{}".to_owned());
        let delay_ms = i64::try_from(task.delay_ms).unwrap_or(i64::MAX);
        let now = Timestamp::now();
        self.write(move |conn| {
            Box::pin(async move {
                let (status, attempts, slave, deadline) = match &assignment {
                    Some((slave, deadline)) => {
                        (TaskStatus::InProgress, 1, Some(*slave), Some(deadline.clone()))
                    }
                    None => (TaskStatus::Pending, 0, None, None),
                };
                let assigned_at = slave.map(|_| now.clone());
                let id = sqlx::query_scalar!(
                    r#"INSERT INTO tasks (expression, variables, delay_ms, status, slave_id, attempts,
                                          submitted_at, assigned_at, deadline_at)
                       VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                       RETURNING id AS "id: TaskId""#,
                    expression,
                    variables,
                    delay_ms,
                    status,
                    slave,
                    attempts,
                    now,
                    assigned_at,
                    deadline,
                )
                .fetch_one(&mut *conn)
                .await?;
                // The `submitted` event is written by a trigger (migration 2).
                Ok(id)
            })
        })
        .await
    }

    /// Removes a task that was stored for a submission every slave then refused, so
    /// "full capacity" leaves nothing behind (SPEC §4); its events go with it (cascade).
    /// Its id is never reused. Guarded: false if the task moved on meanwhile (requeued
    /// and taken by the dispatcher), and then it stays.
    pub async fn delete_refused_task(&self, id: TaskId, slave: SlaveId) -> Result<bool, LedgerError> {
        self.write(move |conn| {
            Box::pin(async move {
                let deleted = sqlx::query!(
                    "DELETE FROM tasks WHERE id = ?1 AND status = 'in_progress' AND slave_id = ?2 AND attempts = 1",
                    id,
                    slave,
                )
                .execute(&mut *conn)
                .await?;
                Ok(deleted.rows_affected() == 1)
            })
        })
        .await
    }

    /// Assigns a task to `slave` under `attempt`, before the offer is sent (so a result
    /// can never arrive for an assignment not yet on disk). Guarded by where the task is
    /// expected to be (`from`): false if anything moved it meanwhile (cancelled,
    /// requeued, taken by another dispatch), and then the caller must leave it alone.
    pub async fn assign(
        &self,
        id: TaskId,
        from: AssignFrom,
        slave: SlaveId,
        attempt: i64,
        deadline: Timestamp,
    ) -> Result<bool, LedgerError> {
        let now = Timestamp::now();
        self.write(move |conn| {
            Box::pin(async move {
                let outcome = match from {
                    AssignFrom::Pending { attempts } => {
                        sqlx::query!(
                            "UPDATE tasks SET status = 'in_progress', slave_id = ?1, attempts = ?2,
                                              assigned_at = ?3, deadline_at = ?4
                              WHERE id = ?5 AND status = 'pending' AND attempts = ?6",
                            slave,
                            attempt,
                            now,
                            deadline,
                            id,
                            attempts,
                        )
                        .execute(&mut *conn)
                        .await?
                    }
                    AssignFrom::Slave { slave: previous } => {
                        sqlx::query!(
                            "UPDATE tasks SET status = 'in_progress', slave_id = ?1, attempts = ?2,
                                              assigned_at = ?3, deadline_at = ?4
                              WHERE id = ?5 AND status = 'in_progress' AND slave_id = ?6 AND attempts = ?2",
                            slave,
                            attempt,
                            now,
                            deadline,
                            id,
                            previous,
                        )
                        .execute(&mut *conn)
                        .await?
                    }
                };
                let assigned = outcome.rows_affected() == 1;
                if assigned {
                    let detail = format!("attempt {attempt}");
                    insert_event(conn, id, &now, "assigned", Some(slave), Some(&detail)).await?;
                }
                Ok(assigned)
            })
        })
        .await
    }

    /// Puts a task whose offers were all refused back to `pending` with its attempts
    /// as they were before (`attempts` counts accepted offers only).
    pub async fn unassign(
        &self,
        id: TaskId,
        slave: SlaveId,
        attempt: i64,
        attempts: i64,
    ) -> Result<(), LedgerError> {
        let now = Timestamp::now();
        self.write(move |conn| {
            Box::pin(async move {
                let unassigned = sqlx::query!(
                    "UPDATE tasks SET status = 'pending', slave_id = NULL, attempts = ?1,
                                      assigned_at = NULL, deadline_at = NULL
                      WHERE id = ?2 AND status = 'in_progress' AND slave_id = ?3 AND attempts = ?4",
                    attempts,
                    id,
                    slave,
                    attempt,
                )
                .execute(&mut *conn)
                .await?
                .rows_affected()
                    == 1;
                if unassigned {
                    insert_event(
                        conn,
                        id,
                        &now,
                        "unassigned",
                        Some(slave),
                        Some("no slave accepted the offer"),
                    )
                    .await?;
                }
                Ok(())
            })
        })
        .await
    }

    /// Records a slave's result exactly once (SPEC §4, §7): only the current attempt's
    /// slave moves an in-progress task to `done`/`failed`; anything else is classified.
    pub async fn record_result(
        &self,
        id: TaskId,
        slave: SlaveId,
        attempt: i64,
        outcome: Outcome,
    ) -> Result<ResultRecording, LedgerError> {
        let now = Timestamp::now();
        self.write(move |conn| {
            Box::pin(async move {
                let (status, value, error) = match &outcome {
                    Outcome::Value(value) if value.is_finite() => (TaskStatus::Done, Some(*value), None),
                    Outcome::Value(value) => (TaskStatus::Failed, None, Some(format!("result is {value}"))),
                    Outcome::Error(error) => (TaskStatus::Failed, None, Some(error.clone())),
                };
                let recorded = sqlx::query!(
                    "UPDATE tasks SET status = ?1, result = ?2, error = ?3, finished_at = ?4, deadline_at = NULL
                      WHERE id = ?5 AND status = 'in_progress' AND slave_id = ?6 AND attempts = ?7",
                    status,
                    value,
                    error,
                    now,
                    id,
                    slave,
                    attempt,
                )
                .execute(&mut *conn)
                .await?
                .rows_affected()
                    == 1;
                if recorded {
                    // The `done`/`failed` event is written by a trigger (migration 2).
                    return Ok(ResultRecording::Recorded(status));
                }
                let Some(current) = task_row(conn, id).await? else { return Ok(ResultRecording::NotFound) };
                Ok(classify_unrecorded(&current, slave, attempt, status, value, error.as_deref()))
            })
        })
        .await
    }

    /// A task was lost on `slave` (silent, restarted, deregistered, past its deadline):
    /// back to `pending` with `attempts + 1`, or `failed` once `max_attempts` offers
    /// were lost (SPEC §7). Guarded, so a result recorded meanwhile wins.
    pub async fn requeue_lost(
        &self,
        id: TaskId,
        slave: SlaveId,
        attempt: i64,
        max_attempts: i64,
        reason: String,
    ) -> Result<Requeue, LedgerError> {
        let now = Timestamp::now();
        self.write(move |conn| {
            Box::pin(async move {
                if attempt >= max_attempts {
                    let error = format!("slave lost {attempt} times; last: {reason}");
                    let failed = sqlx::query!(
                        "UPDATE tasks SET status = 'failed', error = ?1, finished_at = ?2, deadline_at = NULL
                          WHERE id = ?3 AND status = 'in_progress' AND slave_id = ?4 AND attempts = ?5",
                        error,
                        now,
                        id,
                        slave,
                        attempt,
                    )
                    .execute(&mut *conn)
                    .await?
                    .rows_affected()
                        == 1;
                    if !failed {
                        return Ok(Requeue::NotHeld);
                    }
                    // The `failed` event, with the reason from `error`, comes from a trigger.
                    return Ok(Requeue::Failed);
                }
                let requeued = sqlx::query!(
                    "UPDATE tasks SET status = 'pending', slave_id = NULL, attempts = attempts + 1,
                                      assigned_at = NULL, deadline_at = NULL
                      WHERE id = ?1 AND status = 'in_progress' AND slave_id = ?2 AND attempts = ?3",
                    id,
                    slave,
                    attempt,
                )
                .execute(&mut *conn)
                .await?
                .rows_affected()
                    == 1;
                if !requeued {
                    return Ok(Requeue::NotHeld);
                }
                insert_event(conn, id, &now, "requeued", Some(slave), Some(&reason)).await?;
                Ok(Requeue::Pending { attempts: attempt + 1 })
            })
        })
        .await
    }

    /// Cancels a pending or in-progress task.
    pub async fn cancel(&self, id: TaskId) -> Result<Cancellation, LedgerError> {
        let now = Timestamp::now();
        self.write(move |conn| {
            Box::pin(async move {
                let Some(current) = task_row(conn, id).await? else { return Ok(Cancellation::NotFound) };
                if current.status.is_final() {
                    return Ok(Cancellation::AlreadyFinal(current.status));
                }
                sqlx::query!(
                    "UPDATE tasks SET status = 'cancelled', finished_at = ?1, deadline_at = NULL
                      WHERE id = ?2 AND status IN ('pending', 'in_progress')",
                    now,
                    id,
                )
                .execute(&mut *conn)
                .await?;
                let slave = current.slave_id.filter(|_| current.status == TaskStatus::InProgress);
                insert_event(conn, id, &now, "cancelled", slave, None).await?;
                Ok(Cancellation::Cancelled { slave, attempt: current.attempts })
            })
        })
        .await
    }

    /// One task, or `None`.
    pub async fn task(&self, id: TaskId) -> Result<Option<TaskRow>, LedgerError> {
        let mut conn = self.reads.acquire().await?;
        task_row(&mut conn, id).await
    }

    /// A page of tasks, oldest first.
    pub async fn tasks(&self, filter: TaskFilter) -> Result<Vec<TaskRow>, LedgerError> {
        // Two statements rather than `?1 IS NULL OR status = ?1`, so each gets the index
        // that fits it: (status, id) with a filter, the primary key without.
        let rows = match filter.status {
            Some(status) => {
                sqlx::query_as!(
                    TaskRow,
                    r#"SELECT t.id AS "id!: TaskId", t.expression, t.variables, t.delay_ms,
                              t.status AS "status: TaskStatus", t.slave_id AS "slave_id: SlaveId",
                              s.name AS "slave_name?", t.attempts, t.result, t.error,
                              t.submitted_at AS "submitted_at: Timestamp",
                              t.assigned_at AS "assigned_at: Timestamp",
                              t.finished_at AS "finished_at: Timestamp"
                         FROM tasks t LEFT JOIN slaves s ON s.id = t.slave_id
                        WHERE t.status = ?1 AND t.id > ?2
                        ORDER BY t.id LIMIT ?3"#,
                    status,
                    filter.after,
                    filter.limit,
                )
                .fetch_all(&self.reads)
                .await?
            }
            None => {
                sqlx::query_as!(
                    TaskRow,
                    r#"SELECT t.id AS "id!: TaskId", t.expression, t.variables, t.delay_ms,
                              t.status AS "status: TaskStatus", t.slave_id AS "slave_id: SlaveId",
                              s.name AS "slave_name?", t.attempts, t.result, t.error,
                              t.submitted_at AS "submitted_at: Timestamp",
                              t.assigned_at AS "assigned_at: Timestamp",
                              t.finished_at AS "finished_at: Timestamp"
                         FROM tasks t LEFT JOIN slaves s ON s.id = t.slave_id
                        WHERE t.id > ?1
                        ORDER BY t.id LIMIT ?2"#,
                    filter.after,
                    filter.limit,
                )
                .fetch_all(&self.reads)
                .await?
            }
        };
        Ok(rows)
    }

    /// Tasks by status, from the trigger-maintained counters (no table scan).
    pub async fn counts(&self) -> Result<Counts, LedgerError> {
        let rows = sqlx::query!(r#"SELECT status AS "status!: TaskStatus", n FROM task_counts"#)
            .fetch_all(&self.reads)
            .await?;
        let mut counts = Counts::default();
        for row in rows {
            let slot = match row.status {
                TaskStatus::Pending => &mut counts.pending,
                TaskStatus::InProgress => &mut counts.in_progress,
                TaskStatus::Done => &mut counts.done,
                TaskStatus::Failed => &mut counts.failed,
                TaskStatus::Cancelled => &mut counts.cancelled,
            };
            *slot = row.n;
        }
        Ok(counts)
    }

    /// The oldest pending tasks, for the dispatcher.
    pub async fn oldest_pending(&self, limit: i64) -> Result<Vec<TaskRow>, LedgerError> {
        self.tasks(TaskFilter { status: Some(TaskStatus::Pending), after: TaskId(0), limit }).await
    }

    /// Every in-progress task, with its slave and attempt (start-up and reconciliation).
    pub async fn in_progress(&self) -> Result<Vec<HeldTask>, LedgerError> {
        Ok(sqlx::query_as!(
            HeldTask,
            r#"SELECT id AS "id!: TaskId", slave_id AS "slave_id!: SlaveId", attempts,
                      assigned_at AS "assigned_at!: Timestamp"
                 FROM tasks WHERE status = 'in_progress' AND slave_id IS NOT NULL ORDER BY id"#
        )
        .fetch_all(&self.reads)
        .await?)
    }

    /// In-progress tasks held by `slave`.
    pub async fn in_progress_on(&self, slave: SlaveId) -> Result<Vec<HeldTask>, LedgerError> {
        Ok(sqlx::query_as!(
            HeldTask,
            r#"SELECT id AS "id!: TaskId", slave_id AS "slave_id!: SlaveId", attempts,
                      assigned_at AS "assigned_at!: Timestamp"
                 FROM tasks WHERE status = 'in_progress' AND slave_id = ?1 ORDER BY id"#,
            slave
        )
        .fetch_all(&self.reads)
        .await?)
    }

    /// In-progress tasks whose deadline has passed.
    pub async fn overdue(&self, now: &Timestamp) -> Result<Vec<HeldTask>, LedgerError> {
        Ok(sqlx::query_as!(
            HeldTask,
            r#"SELECT id AS "id!: TaskId", slave_id AS "slave_id!: SlaveId", attempts,
                      assigned_at AS "assigned_at!: Timestamp"
                 FROM tasks WHERE status = 'in_progress' AND slave_id IS NOT NULL AND deadline_at < ?1
                ORDER BY id"#,
            now
        )
        .fetch_all(&self.reads)
        .await?)
    }

    // ----- slaves ------------------------------------------------------------------

    /// Registers a slave, or re-registers a known name keeping its id and position and
    /// updating url and capacity (SPEC §4). The slave is `up` afterwards.
    pub async fn register_slave(&self, registration: Registration) -> Result<SlaveRow, LedgerError> {
        let now = Timestamp::now();
        self.write(move |conn| {
            Box::pin(async move {
                let capacity = i64::from(registration.capacity);
                Ok(sqlx::query_as!(
                    SlaveRow,
                    r#"INSERT INTO slaves (name, url, capacity, position, state, registered_at, last_seen_at)
                       VALUES (?1, ?2, ?3, (SELECT COALESCE(MAX(position), 0) + 1 FROM slaves), 'up', ?4, ?4)
                       ON CONFLICT (name) DO UPDATE
                          SET url = excluded.url, capacity = excluded.capacity,
                              state = 'up', last_seen_at = excluded.last_seen_at
                       RETURNING id AS "id!: SlaveId", name, url, capacity, position,
                                 state AS "state: SlaveState",
                                 registered_at AS "registered_at: Timestamp",
                                 last_seen_at AS "last_seen_at: Timestamp""#,
                    registration.name,
                    registration.url,
                    capacity,
                    now,
                )
                .fetch_one(&mut *conn)
                .await?)
            })
        })
        .await
    }

    /// Every slave in registration order.
    pub async fn slaves(&self) -> Result<Vec<SlaveRow>, LedgerError> {
        Ok(sqlx::query_as!(
            SlaveRow,
            r#"SELECT id AS "id!: SlaveId", name, url, capacity, position,
                      state AS "state: SlaveState",
                      registered_at AS "registered_at: Timestamp",
                      last_seen_at AS "last_seen_at: Timestamp"
                 FROM slaves ORDER BY position"#
        )
        .fetch_all(&self.reads)
        .await?)
    }

    /// Stores a slave's state and when it was last heard from.
    pub async fn update_slave(
        &self,
        id: SlaveId,
        state: SlaveState,
        last_seen_at: Timestamp,
    ) -> Result<bool, LedgerError> {
        self.write(move |conn| {
            Box::pin(async move {
                let updated = sqlx::query!(
                    "UPDATE slaves SET state = ?1, last_seen_at = ?2 WHERE id = ?3",
                    state,
                    last_seen_at,
                    id,
                )
                .execute(&mut *conn)
                .await?;
                Ok(updated.rows_affected() == 1)
            })
        })
        .await
    }

    /// Forgets a slave, unless a task is in progress on it: an offer made before the
    /// slave left the registry may have been assigned after its tasks were requeued.
    pub async fn delete_slave(&self, id: SlaveId) -> Result<SlaveDeletion, LedgerError> {
        self.write(move |conn| {
            Box::pin(async move {
                let deleted = sqlx::query!(
                    "DELETE FROM slaves WHERE id = ?1
                        AND NOT EXISTS (SELECT 1 FROM tasks WHERE status = 'in_progress' AND slave_id = ?1)",
                    id
                )
                .execute(&mut *conn)
                .await?;
                if deleted.rows_affected() == 1 {
                    return Ok(SlaveDeletion::Deleted);
                }
                let known = sqlx::query_scalar!("SELECT COUNT(*) FROM slaves WHERE id = ?1", id)
                    .fetch_one(&mut *conn)
                    .await?;
                Ok(if known == 0 { SlaveDeletion::NotFound } else { SlaveDeletion::StillHoldsTasks })
            })
        })
        .await
    }

    /// Gives every in-progress task at least until `at` (master start): time the master
    /// was down must not count against a task whose slave kept working (SPEC §7).
    pub async fn extend_deadlines(&self, at: Timestamp) -> Result<(), LedgerError> {
        self.write(move |conn| {
            Box::pin(async move {
                sqlx::query!(
                    "UPDATE tasks SET deadline_at = ?1 WHERE status = 'in_progress' AND deadline_at < ?1",
                    at
                )
                .execute(&mut *conn)
                .await?;
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

/// Why a report that changed nothing changed nothing.
fn classify_unrecorded(
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
    } else {
        ResultRecording::StaleAttempt { current: current.attempts }
    }
}

async fn task_row(conn: &mut SqliteConnection, id: TaskId) -> Result<Option<TaskRow>, LedgerError> {
    Ok(sqlx::query_as!(
        TaskRow,
        r#"SELECT t.id AS "id!: TaskId", t.expression, t.variables, t.delay_ms,
                  t.status AS "status: TaskStatus", t.slave_id AS "slave_id: SlaveId",
                  s.name AS "slave_name?", t.attempts, t.result, t.error,
                  t.submitted_at AS "submitted_at: Timestamp",
                  t.assigned_at AS "assigned_at: Timestamp",
                  t.finished_at AS "finished_at: Timestamp"
             FROM tasks t LEFT JOIN slaves s ON s.id = t.slave_id
            WHERE t.id = ?1"#,
        id
    )
    .fetch_optional(&mut *conn)
    .await?)
}

async fn insert_event(
    conn: &mut SqliteConnection,
    task: TaskId,
    at: &Timestamp,
    kind: &str,
    slave: Option<SlaveId>,
    detail: Option<&str>,
) -> Result<(), LedgerError> {
    sqlx::query!(
        "INSERT INTO task_events (task_id, at, kind, slave_id, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        task,
        at,
        kind,
        slave,
        detail,
    )
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The writer: takes every queued write (up to `max_batch`), runs them in one
/// transaction, commits once, then answers each caller. If any write of a batch fails,
/// the whole batch is rolled back and every caller hears so: no caller is ever told a
/// write committed that did not, and no half-done write is kept. (Per-write savepoints
/// would isolate failures, at two more round trips to SQLite's worker thread per write;
/// writes fail only when the disk or the database does, so that price bought nothing.)
async fn write_loop(
    mut conn: SqliteConnection,
    mut jobs: mpsc::Receiver<Job>,
    stats: crate::metrics::BatchStats,
    max_batch: usize,
    closing: CancellationToken,
) {
    let mut batch = Vec::with_capacity(max_batch);
    let mut closing_seen = false;
    loop {
        let received = tokio::select! {
            received = jobs.recv_many(&mut batch, max_batch) => received,
            () = closing.cancelled(), if !closing_seen => {
                // No new writes from now on; those already queued still run below.
                closing_seen = true;
                jobs.close();
                continue;
            }
        };
        if received == 0 {
            break;
        }
        let started = std::time::Instant::now();
        let size = batch.len();
        let (deliveries, failed) = run_batch(&mut conn, &mut batch).await;
        let committed = if failed {
            let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
            Err("another write of the same batch failed; the batch was rolled back".to_owned())
        } else {
            match sqlx::query("COMMIT").execute(&mut conn).await {
                Ok(_) => Ok(()),
                Err(error) => {
                    tracing::error!(%error, "ledger commit failed; the batch is lost and its callers told");
                    let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                    Err(error.to_string())
                }
            }
        };
        stats.observe(size, started.elapsed());
        for deliver in deliveries {
            deliver(committed.clone());
        }
    }
    // The queue is closed and drained: every write has been answered. Closing the
    // connection lets SQLite checkpoint and remove the WAL.
    let _ = conn.close().await;
}

/// Runs a batch inside `BEGIN IMMEDIATE`; true in the second place if a write failed
/// (the rest of the batch is then dropped, which answers those callers `Closed`).
async fn run_batch(conn: &mut SqliteConnection, batch: &mut Vec<Job>) -> (Vec<Deliver>, bool) {
    let mut deliveries = Vec::with_capacity(batch.len());
    if let Err(error) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
        tracing::error!(%error, "cannot begin a ledger transaction");
        // Running the jobs now would autocommit them one by one behind their callers'
        // backs; dropping them answers each caller `LedgerError::Closed` instead.
        batch.clear();
        return (deliveries, true);
    }
    for job in batch.drain(..) {
        let (succeeded, deliver) = job(conn).await;
        deliveries.push(deliver);
        if !succeeded {
            return (deliveries, true); // dropping the drain drops the jobs left
        }
    }
    (deliveries, false)
}
