//! Statements about tasks: submission, assignment, results, requeues, cancels, reads.
//! Statuses are bound as their text (`TaskStatus::as_str`); timestamps come from `now()`
//! and are read back through `rfc3339()`.

use std::time::Duration;

use ledger::{
    AssignFrom, Cancellation, Counts, Cursor, HeldTask, LedgerError, Outcome, Requeue, ResultRecording,
    SlaveId, Submission, TaskEvent, TaskFilter, TaskId, TaskRow, TaskStatus, Timestamp, lost_too_often,
};
use sqlx::PgExecutor;

use super::{
    PgLedger,
    batched::{NOT_STORED, NewResult, NewTask},
    unavailable,
};

fn seconds(duration: Duration) -> f64 {
    duration.as_secs_f64()
}

impl PgLedger {
    /// Stored with the next batch of submissions (`batched`).
    pub(crate) async fn insert_task(
        &self,
        task: Submission<'_>,
        assignment: Option<(SlaveId, Duration)>,
    ) -> Result<TaskId, LedgerError> {
        let stored = self.batches.insert(NewTask::new(task, assignment, false)).await?;
        stored.ok_or_else(|| LedgerError::Unavailable(NOT_STORED.to_owned()))
    }

    /// Stored with the next batch of submissions, unless a task is pending when that
    /// batch's statement runs (decided inside it).
    pub(crate) async fn insert_assigned_unless_waiting(
        &self,
        task: Submission<'_>,
        assignment: (SlaveId, Duration),
    ) -> Result<Option<TaskId>, LedgerError> {
        self.batches.insert(NewTask::new(task, Some(assignment), true)).await
    }

    pub(crate) async fn delete_refused_task(&self, id: TaskId, slave: SlaveId) -> Result<bool, LedgerError> {
        let deleted = sqlx::query!(
            "DELETE FROM tasks WHERE id = $1 AND status = 'in_progress' AND slave_id = $2 AND attempts = 1",
            id.0,
            slave.0,
        )
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(deleted.rows_affected() == 1)
    }

    pub(crate) async fn assign(
        &self,
        id: TaskId,
        from: AssignFrom,
        slave: SlaveId,
        attempt: i64,
        deadline: Duration,
    ) -> Result<bool, LedgerError> {
        // One statement changes the task and writes its event, or does neither.
        let detail = format!("attempt {attempt}");
        let (expected_status, expected_slave, expected_attempts) = match from {
            AssignFrom::Pending { attempts } => (TaskStatus::Pending, None, attempts),
            AssignFrom::Slave { slave: previous } => (TaskStatus::InProgress, Some(previous.0), attempt),
        };
        let assigned = sqlx::query!(
            r#"WITH assigned AS (
                   UPDATE tasks SET status = 'in_progress', slave_id = $1, attempts = $2,
                                    assigned_at = now(), deadline_at = now() + make_interval(secs => $3::float8)
                    WHERE id = $4 AND status = $5 AND slave_id IS NOT DISTINCT FROM $6 AND attempts = $7
                   RETURNING id)
               INSERT INTO task_events (task_id, kind, slave_id, detail)
               SELECT id, 'assigned', $1, $8 FROM assigned"#,
            slave.0,
            attempt,
            seconds(deadline),
            id.0,
            expected_status.as_str(),
            expected_slave,
            expected_attempts,
            detail,
        )
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(assigned.rows_affected() == 1)
    }

    pub(crate) async fn unassign(
        &self,
        id: TaskId,
        slave: SlaveId,
        attempt: i64,
        attempts: i64,
    ) -> Result<(), LedgerError> {
        sqlx::query!(
            r#"WITH unassigned AS (
                   UPDATE tasks SET status = 'pending', slave_id = NULL, attempts = $1,
                                    assigned_at = NULL, deadline_at = NULL
                    WHERE id = $2 AND status = 'in_progress' AND slave_id = $3 AND attempts = $4
                   RETURNING id)
               INSERT INTO task_events (task_id, kind, slave_id, detail)
               SELECT id, 'unassigned', $3, 'no slave accepted the offer' FROM unassigned"#,
            attempts,
            id.0,
            slave.0,
            attempt,
        )
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        Ok(())
    }

    /// Recorded with the next batch of results (`batched`).
    pub(crate) async fn record_result(
        &self,
        id: TaskId,
        slave: SlaveId,
        attempt: i64,
        outcome: Outcome,
    ) -> Result<ResultRecording, LedgerError> {
        self.batches.record(NewResult::new(id, slave, attempt, &outcome)).await
    }

    pub(crate) async fn requeue_lost(
        &self,
        id: TaskId,
        slave: SlaveId,
        attempt: i64,
        max_attempts: i64,
        reason: String,
    ) -> Result<Requeue, LedgerError> {
        if attempt >= max_attempts {
            // The `failed` event, with the reason from `error`, comes from a trigger.
            let failed = sqlx::query!(
                "UPDATE tasks SET status = 'failed', error = $1, finished_at = now(), deadline_at = NULL
                  WHERE id = $2 AND status = 'in_progress' AND slave_id = $3 AND attempts = $4",
                lost_too_often(attempt, &reason),
                id.0,
                slave.0,
                attempt,
            )
            .execute(&self.pool)
            .await
            .map_err(unavailable)?
            .rows_affected()
                == 1;
            return Ok(if failed { Requeue::Failed } else { Requeue::NotHeld });
        }
        let requeued = sqlx::query!(
            r#"WITH requeued AS (
                   UPDATE tasks SET status = 'pending', slave_id = NULL, attempts = attempts + 1,
                                    assigned_at = NULL, deadline_at = NULL
                    WHERE id = $1 AND status = 'in_progress' AND slave_id = $2 AND attempts = $3
                   RETURNING id)
               INSERT INTO task_events (task_id, kind, slave_id, detail)
               SELECT id, 'requeued', $2, $4 FROM requeued"#,
            id.0,
            slave.0,
            attempt,
            reason,
        )
        .execute(&self.pool)
        .await
        .map_err(unavailable)?
        .rows_affected()
            == 1;
        Ok(if requeued { Requeue::Pending { attempts: attempt + 1 } } else { Requeue::NotHeld })
    }

    pub(crate) async fn cancel(&self, id: TaskId) -> Result<Cancellation, LedgerError> {
        // A pending task never has a slave (every way back to pending clears it), so the
        // slave left on the cancelled row is the one that held it in progress.
        let cancelled = sqlx::query!(
            r#"WITH cancelled AS (
                   UPDATE tasks SET status = 'cancelled', finished_at = now(), deadline_at = NULL
                    WHERE id = $1 AND status IN ('pending', 'in_progress')
                   RETURNING id, slave_id, attempts, finished_at)
               INSERT INTO task_events (task_id, at, kind, slave_id)
               SELECT id, finished_at, 'cancelled', slave_id FROM cancelled
               RETURNING slave_id, (SELECT attempts FROM cancelled) AS "attempts!""#,
            id.0,
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(unavailable)?;
        if let Some(row) = cancelled {
            return Ok(Cancellation::Cancelled { slave: row.slave_id.map(SlaveId), attempt: row.attempts });
        }
        // Nothing changed: the task is missing or final, and final stays final.
        Ok(match task_row(&self.pool, id).await? {
            None => Cancellation::NotFound,
            Some(current) => Cancellation::AlreadyFinal(current.status),
        })
    }

    pub(crate) async fn task(&self, id: TaskId) -> Result<Option<TaskRow>, LedgerError> {
        task_row(&self.pool, id).await
    }

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
                              t.status AS "status!: TaskStatus", t.slave_id AS "slave_id: SlaveId",
                              s.name AS "slave_name?", t.attempts, t.result, t.error,
                              rfc3339(t.submitted_at) AS "submitted_at!: Timestamp",
                              rfc3339(t.assigned_at) AS "assigned_at: Timestamp",
                              rfc3339(t.finished_at) AS "finished_at: Timestamp"
                         FROM tasks t LEFT JOIN slaves s ON s.id = t.slave_id
                        WHERE t.status = $1 AND t.id > $2 AND ($3::bigint IS NULL OR t.slave_id = $3)
                        ORDER BY t.id LIMIT $4"#,
                    status.as_str(),
                    after.0,
                    slave,
                    filter.limit,
                )
                .fetch_all(&self.pool)
                .await
            }
            (Some(status), Cursor::Before(before)) => {
                sqlx::query_as!(
                    TaskRow,
                    r#"SELECT t.id AS "id!: TaskId", t.expression, t.variables, t.delay_ms,
                              t.status AS "status!: TaskStatus", t.slave_id AS "slave_id: SlaveId",
                              s.name AS "slave_name?", t.attempts, t.result, t.error,
                              rfc3339(t.submitted_at) AS "submitted_at!: Timestamp",
                              rfc3339(t.assigned_at) AS "assigned_at: Timestamp",
                              rfc3339(t.finished_at) AS "finished_at: Timestamp"
                         FROM tasks t LEFT JOIN slaves s ON s.id = t.slave_id
                        WHERE t.status = $1 AND t.id < $2 AND ($3::bigint IS NULL OR t.slave_id = $3)
                        ORDER BY t.id DESC LIMIT $4"#,
                    status.as_str(),
                    before.0,
                    slave,
                    filter.limit,
                )
                .fetch_all(&self.pool)
                .await
            }
            (None, Cursor::After(after)) => {
                sqlx::query_as!(
                    TaskRow,
                    r#"SELECT t.id AS "id!: TaskId", t.expression, t.variables, t.delay_ms,
                              t.status AS "status!: TaskStatus", t.slave_id AS "slave_id: SlaveId",
                              s.name AS "slave_name?", t.attempts, t.result, t.error,
                              rfc3339(t.submitted_at) AS "submitted_at!: Timestamp",
                              rfc3339(t.assigned_at) AS "assigned_at: Timestamp",
                              rfc3339(t.finished_at) AS "finished_at: Timestamp"
                         FROM tasks t LEFT JOIN slaves s ON s.id = t.slave_id
                        WHERE t.id > $1 AND ($2::bigint IS NULL OR t.slave_id = $2)
                        ORDER BY t.id LIMIT $3"#,
                    after.0,
                    slave,
                    filter.limit,
                )
                .fetch_all(&self.pool)
                .await
            }
            (None, Cursor::Before(before)) => {
                sqlx::query_as!(
                    TaskRow,
                    r#"SELECT t.id AS "id!: TaskId", t.expression, t.variables, t.delay_ms,
                              t.status AS "status!: TaskStatus", t.slave_id AS "slave_id: SlaveId",
                              s.name AS "slave_name?", t.attempts, t.result, t.error,
                              rfc3339(t.submitted_at) AS "submitted_at!: Timestamp",
                              rfc3339(t.assigned_at) AS "assigned_at: Timestamp",
                              rfc3339(t.finished_at) AS "finished_at: Timestamp"
                         FROM tasks t LEFT JOIN slaves s ON s.id = t.slave_id
                        WHERE t.id < $1 AND ($2::bigint IS NULL OR t.slave_id = $2)
                        ORDER BY t.id DESC LIMIT $3"#,
                    before.0,
                    slave,
                    filter.limit,
                )
                .fetch_all(&self.pool)
                .await
            }
        };
        rows.map_err(unavailable)
    }

    pub(crate) async fn counts(&self) -> Result<Counts, LedgerError> {
        let rows = sqlx::query!(
            r#"SELECT status AS "status!: TaskStatus", SUM(n)::bigint AS "n!" FROM task_counts GROUP BY status"#
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
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

    pub(crate) async fn in_progress(&self) -> Result<Vec<HeldTask>, LedgerError> {
        sqlx::query_as!(
            HeldTask,
            r#"SELECT id AS "id!: TaskId", slave_id AS "slave_id!: SlaveId", attempts, delay_ms,
                      COALESCE(milliseconds_since(assigned_at), 0) AS "assigned_ms_ago!"
                 FROM tasks WHERE status = 'in_progress' AND slave_id IS NOT NULL ORDER BY id"#
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)
    }

    /// A task's history, oldest first; `None` when there is no such task. One
    /// statement, so the existence check and the events are one snapshot.
    pub(crate) async fn task_events(&self, id: TaskId) -> Result<Option<Vec<TaskEvent>>, LedgerError> {
        let rows = sqlx::query!(
            r#"SELECT e.id AS "id?", rfc3339(e.at) AS "at?: Timestamp", e.kind AS "kind?",
                      e.slave_id AS "slave_id?: SlaveId", s.name AS "slave_name?", e.detail AS "detail?"
                 FROM tasks t
                 LEFT JOIN task_events e ON e.task_id = t.id
                 LEFT JOIN slaves s ON s.id = e.slave_id
                WHERE t.id = $1 ORDER BY e.id"#,
            id.0
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)?;
        if rows.is_empty() {
            return Ok(None);
        }
        // A task without events yet comes back as one row of NULLs.
        let events = rows
            .into_iter()
            .filter_map(|row| {
                Some(TaskEvent {
                    id: row.id?,
                    at: row.at?,
                    kind: row.kind?,
                    slave_id: row.slave_id,
                    slave_name: row.slave_name,
                    detail: row.detail,
                })
            })
            .collect();
        Ok(Some(events))
    }

    pub(crate) async fn in_progress_on(&self, slave: SlaveId) -> Result<Vec<HeldTask>, LedgerError> {
        sqlx::query_as!(
            HeldTask,
            r#"SELECT id AS "id!: TaskId", slave_id AS "slave_id!: SlaveId", attempts, delay_ms,
                      COALESCE(milliseconds_since(assigned_at), 0) AS "assigned_ms_ago!"
                 FROM tasks WHERE status = 'in_progress' AND slave_id = $1 ORDER BY id"#,
            slave.0
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)
    }

    /// In-progress tasks past their deadline by the database's clock, the one clock
    /// every master shares: how a task offered through a master that died is reaped.
    pub(crate) async fn overdue(&self) -> Result<Vec<HeldTask>, LedgerError> {
        sqlx::query_as!(
            HeldTask,
            r#"SELECT id AS "id!: TaskId", slave_id AS "slave_id!: SlaveId", attempts, delay_ms,
                      COALESCE(milliseconds_since(assigned_at), 0) AS "assigned_ms_ago!"
                 FROM tasks
                WHERE status = 'in_progress' AND slave_id IS NOT NULL AND deadline_at < now()
                ORDER BY id"#
        )
        .fetch_all(&self.pool)
        .await
        .map_err(unavailable)
    }
}

pub(crate) async fn task_row(
    executor: impl PgExecutor<'_>,
    id: TaskId,
) -> Result<Option<TaskRow>, LedgerError> {
    sqlx::query_as!(
        TaskRow,
        r#"SELECT t.id AS "id!: TaskId", t.expression, t.variables, t.delay_ms,
                  t.status AS "status!: TaskStatus", t.slave_id AS "slave_id: SlaveId",
                  s.name AS "slave_name?", t.attempts, t.result, t.error,
                  rfc3339(t.submitted_at) AS "submitted_at!: Timestamp",
                  rfc3339(t.assigned_at) AS "assigned_at: Timestamp",
                  rfc3339(t.finished_at) AS "finished_at: Timestamp"
             FROM tasks t LEFT JOIN slaves s ON s.id = t.slave_id
            WHERE t.id = $1"#,
        id.0
    )
    .fetch_optional(executor)
    .await
    .map_err(unavailable)
}
