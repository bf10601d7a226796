//! Statements about tasks: submission, assignment, results, requeues, cancels, reads.

use std::time::Duration;

use common::protocol::Outcome;
use ledger::{
    AssignFrom, Cancellation, Counts, Cursor, HeldTask, LedgerError, Requeue, ResultRecording, SlaveId,
    Submission, TaskEvent, TaskFilter, TaskId, TaskRow, TaskStatus, Timestamp, lost_too_often,
};
use sqlx::SqliteConnection;

use tokio::sync::oneshot;

use super::{
    Job, SqliteLedger,
    batched::{NewTaskRow, ResultRow},
};

impl SqliteLedger {
    /// `insert_task` with an assignment unless tasks are pending. A SQLite ledger has
    /// one master, which knows when tasks may wait and checks so itself before it asks
    /// to insert; this reads the counts, then writes, as that check does.
    pub(crate) async fn insert_assigned_unless_waiting(
        &self,
        task: Submission<'_>,
        assignment: (SlaveId, Duration),
    ) -> Result<Option<TaskId>, LedgerError> {
        if self.counts().await?.pending > 0 {
            return Ok(None);
        }
        self.insert_task(task, Some(assignment)).await.map(Some)
    }

    /// Stores a new task: `pending`, or straight `in_progress` on `slave` at `attempt 1`
    /// when the submission already picked one (one write instead of two).
    pub(crate) async fn insert_task(
        &self,
        task: Submission<'_>,
        assignment: Option<(SlaveId, Duration)>,
    ) -> Result<TaskId, LedgerError> {
        let now = Timestamp::now();
        let (status, attempts, slave_id, assigned_at, deadline_at) = match assignment {
            Some((slave, deadline)) => (
                TaskStatus::InProgress,
                1,
                Some(slave),
                Some(now.clone()),
                Some(Timestamp::in_future(deadline)),
            ),
            None => (TaskStatus::Pending, 0, None, None, None),
        };
        let row = NewTaskRow {
            expression: task.expression.to_owned(),
            variables: task.variables_json(),
            delay_ms: task.stored_delay_ms(),
            status,
            slave_id,
            attempts,
            submitted_at: now,
            assigned_at,
            deadline_at,
        };
        let (reply, answer) = oneshot::channel();
        self.queue(Job::InsertTask(row, reply), answer).await
    }

    /// Removes a task that was stored for a submission every slave then refused, so
    /// "full capacity" leaves nothing behind (SPEC §4); its events go with it (cascade).
    /// Its id is never reused. Guarded: false if the task moved on meanwhile (requeued
    /// and taken by the dispatcher), and then it stays.
    pub(crate) async fn delete_refused_task(&self, id: TaskId, slave: SlaveId) -> Result<bool, LedgerError> {
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
    pub(crate) async fn assign(
        &self,
        id: TaskId,
        from: AssignFrom,
        slave: SlaveId,
        attempt: i64,
        deadline: Duration,
    ) -> Result<bool, LedgerError> {
        let now = Timestamp::now();
        let deadline = Timestamp::in_future(deadline);
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
    pub(crate) async fn unassign(
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
    pub(crate) async fn record_result(
        &self,
        id: TaskId,
        slave: SlaveId,
        attempt: i64,
        outcome: Outcome,
    ) -> Result<ResultRecording, LedgerError> {
        let (reply, answer) = oneshot::channel();
        let row = ResultRow::new(id, slave, attempt, &outcome);
        self.queue(Job::RecordResult(row, reply), answer).await
    }

    /// A task was lost on `slave` (silent, restarted, deregistered, past its deadline):
    /// back to `pending` with `attempts + 1`, or `failed` once `max_attempts` offers
    /// were lost (SPEC §7). Guarded, so a result recorded meanwhile wins.
    pub(crate) async fn requeue_lost(
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
                    let error = lost_too_often(attempt, &reason);
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
    pub(crate) async fn cancel(&self, id: TaskId) -> Result<Cancellation, LedgerError> {
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
    pub(crate) async fn task(&self, id: TaskId) -> Result<Option<TaskRow>, LedgerError> {
        let mut conn = self.reads.acquire().await?;
        task_row(&mut conn, id).await
    }

    /// A page of tasks, oldest first.
    pub(crate) async fn tasks(&self, filter: TaskFilter) -> Result<Vec<TaskRow>, LedgerError> {
        // One statement per (status filter, direction) rather than `status = ? OR ? IS
        // NULL`, so each runs on the index that fits it — (status, id) with a status, the
        // primary key without — scanned either way. The slave filter is checked on the
        // rows that index yields.
        let slave = filter.slave.map(|slave| slave.0);
        let rows = match (filter.status, filter.page) {
            (Some(status), Cursor::After(after)) => {
                sqlx::query_as!(
                    TaskRow,
                    r#"SELECT t.id AS "id!: TaskId", t.expression, t.variables, t.delay_ms,
                              t.status AS "status: TaskStatus", t.slave_id AS "slave_id: SlaveId",
                              s.name AS "slave_name?", t.attempts, t.result, t.error,
                              t.submitted_at AS "submitted_at: Timestamp",
                              t.assigned_at AS "assigned_at: Timestamp",
                              t.finished_at AS "finished_at: Timestamp"
                         FROM tasks t LEFT JOIN slaves s ON s.id = t.slave_id
                        WHERE t.status = ?1 AND t.id > ?2 AND (?3 IS NULL OR t.slave_id = ?3)
                        ORDER BY t.id LIMIT ?4"#,
                    status,
                    after,
                    slave,
                    filter.limit,
                )
                .fetch_all(&self.reads)
                .await?
            }
            (Some(status), Cursor::Before(before)) => {
                sqlx::query_as!(
                    TaskRow,
                    r#"SELECT t.id AS "id!: TaskId", t.expression, t.variables, t.delay_ms,
                              t.status AS "status: TaskStatus", t.slave_id AS "slave_id: SlaveId",
                              s.name AS "slave_name?", t.attempts, t.result, t.error,
                              t.submitted_at AS "submitted_at: Timestamp",
                              t.assigned_at AS "assigned_at: Timestamp",
                              t.finished_at AS "finished_at: Timestamp"
                         FROM tasks t LEFT JOIN slaves s ON s.id = t.slave_id
                        WHERE t.status = ?1 AND t.id < ?2 AND (?3 IS NULL OR t.slave_id = ?3)
                        ORDER BY t.id DESC LIMIT ?4"#,
                    status,
                    before,
                    slave,
                    filter.limit,
                )
                .fetch_all(&self.reads)
                .await?
            }
            (None, Cursor::After(after)) => {
                sqlx::query_as!(
                    TaskRow,
                    r#"SELECT t.id AS "id!: TaskId", t.expression, t.variables, t.delay_ms,
                              t.status AS "status: TaskStatus", t.slave_id AS "slave_id: SlaveId",
                              s.name AS "slave_name?", t.attempts, t.result, t.error,
                              t.submitted_at AS "submitted_at: Timestamp",
                              t.assigned_at AS "assigned_at: Timestamp",
                              t.finished_at AS "finished_at: Timestamp"
                         FROM tasks t LEFT JOIN slaves s ON s.id = t.slave_id
                        WHERE t.id > ?1 AND (?2 IS NULL OR t.slave_id = ?2)
                        ORDER BY t.id LIMIT ?3"#,
                    after,
                    slave,
                    filter.limit,
                )
                .fetch_all(&self.reads)
                .await?
            }
            (None, Cursor::Before(before)) => {
                sqlx::query_as!(
                    TaskRow,
                    r#"SELECT t.id AS "id!: TaskId", t.expression, t.variables, t.delay_ms,
                              t.status AS "status: TaskStatus", t.slave_id AS "slave_id: SlaveId",
                              s.name AS "slave_name?", t.attempts, t.result, t.error,
                              t.submitted_at AS "submitted_at: Timestamp",
                              t.assigned_at AS "assigned_at: Timestamp",
                              t.finished_at AS "finished_at: Timestamp"
                         FROM tasks t LEFT JOIN slaves s ON s.id = t.slave_id
                        WHERE t.id < ?1 AND (?2 IS NULL OR t.slave_id = ?2)
                        ORDER BY t.id DESC LIMIT ?3"#,
                    before,
                    slave,
                    filter.limit,
                )
                .fetch_all(&self.reads)
                .await?
            }
        };
        Ok(rows)
    }

    /// Tasks by status, from the trigger-maintained counters (no table scan).
    pub(crate) async fn counts(&self) -> Result<Counts, LedgerError> {
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

    /// Every in-progress task, with its slave and attempt (start-up and reconciliation).
    pub(crate) async fn in_progress(&self) -> Result<Vec<HeldTask>, LedgerError> {
        let now = Timestamp::now();
        Ok(sqlx::query_as!(
            HeldTask,
            r#"SELECT id AS "id!: TaskId", slave_id AS "slave_id!: SlaveId", attempts, delay_ms,
                      COALESCE(CAST((julianday(?1) - julianday(assigned_at)) * 86400000 AS INTEGER), 0)
                          AS "assigned_ms_ago!: i64"
                 FROM tasks WHERE status = 'in_progress' AND slave_id IS NOT NULL ORDER BY id"#,
            now
        )
        .fetch_all(&self.reads)
        .await?)
    }

    /// A task's history, oldest first (one read transaction, so the existence check and
    /// the events agree); `None` when there is no such task.
    pub(crate) async fn task_events(&self, id: TaskId) -> Result<Option<Vec<TaskEvent>>, LedgerError> {
        let mut read = self.reads.begin().await?;
        let known =
            sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM tasks WHERE id = ?1) AS "known!: bool""#, id)
                .fetch_one(&mut *read)
                .await?;
        if !known {
            return Ok(None);
        }
        let events = sqlx::query_as!(
            TaskEvent,
            r#"SELECT e.id AS "id!", e.at AS "at: Timestamp", e.kind, e.slave_id AS "slave_id: SlaveId",
                      s.name AS "slave_name?", e.detail
                 FROM task_events e LEFT JOIN slaves s ON s.id = e.slave_id
                WHERE e.task_id = ?1 ORDER BY e.id"#,
            id
        )
        .fetch_all(&mut *read)
        .await?;
        Ok(Some(events))
    }

    /// In-progress tasks held by `slave`.
    pub(crate) async fn in_progress_on(&self, slave: SlaveId) -> Result<Vec<HeldTask>, LedgerError> {
        let now = Timestamp::now();
        Ok(sqlx::query_as!(
            HeldTask,
            r#"SELECT id AS "id!: TaskId", slave_id AS "slave_id!: SlaveId", attempts, delay_ms,
                      COALESCE(CAST((julianday(?2) - julianday(assigned_at)) * 86400000 AS INTEGER), 0)
                          AS "assigned_ms_ago!: i64"
                 FROM tasks WHERE status = 'in_progress' AND slave_id = ?1 ORDER BY id"#,
            slave,
            now
        )
        .fetch_all(&self.reads)
        .await?)
    }

    /// In-progress tasks whose stored deadline has passed (timestamps sort as text).
    pub(crate) async fn overdue(&self) -> Result<Vec<HeldTask>, LedgerError> {
        let now = Timestamp::now();
        Ok(sqlx::query_as!(
            HeldTask,
            r#"SELECT id AS "id!: TaskId", slave_id AS "slave_id!: SlaveId", attempts, delay_ms,
                      COALESCE(CAST((julianday(?1) - julianday(assigned_at)) * 86400000 AS INTEGER), 0)
                          AS "assigned_ms_ago!: i64"
                 FROM tasks
                WHERE status = 'in_progress' AND slave_id IS NOT NULL AND deadline_at < ?1
                ORDER BY id"#,
            now
        )
        .fetch_all(&self.reads)
        .await?)
    }
}

pub(crate) async fn task_row(
    conn: &mut SqliteConnection,
    id: TaskId,
) -> Result<Option<TaskRow>, LedgerError> {
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
