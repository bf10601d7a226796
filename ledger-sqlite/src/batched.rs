//! The two writes every task makes — its submission and its slave's result — stored
//! one statement per batch rather than one per write: the writer hands SQLite every
//! queued row of a kind as one bound JSON array, read back by `json_each`. Each trip to
//! sqlx's SQLite worker thread costs more than SQLite's own work on a row, so a batch
//! of N submissions costs one trip instead of N. Each caller still learns its own
//! answer: its id, or whether its result won.

use std::collections::HashSet;

use common::protocol::Outcome;
use ledger::{
    LedgerError, ResultRecording, SlaveId, TaskId, TaskStatus, Timestamp, classify_unrecorded,
    outcome_columns,
};
use serde::Serialize;
use sqlx::SqliteConnection;
use tokio::sync::oneshot;

/// A task to store, as one element of the insert's JSON array.
#[derive(Debug, Serialize)]
pub(crate) struct NewTaskRow {
    pub expression: String,
    /// The variables as stored: JSON text.
    pub variables: String,
    pub delay_ms: i64,
    pub status: TaskStatus,
    pub slave_id: Option<SlaveId>,
    pub attempts: i64,
    pub submitted_at: Timestamp,
    pub assigned_at: Option<Timestamp>,
    pub deadline_at: Option<Timestamp>,
}

/// A slave's result to record, as one element of the update's JSON array.
#[derive(Debug, Serialize)]
pub(crate) struct ResultRow {
    pub id: TaskId,
    pub slave_id: SlaveId,
    pub attempt: i64,
    pub status: TaskStatus,
    pub result: Option<f64>,
    pub error: Option<String>,
    pub finished_at: Timestamp,
}

impl ResultRow {
    pub fn new(id: TaskId, slave_id: SlaveId, attempt: i64, outcome: &Outcome) -> Self {
        let (status, result, error) = outcome_columns(outcome);
        Self { id, slave_id, attempt, status, result, error, finished_at: Timestamp::now() }
    }
}

/// Answers one caller once its batch has committed or not.
pub(crate) type Deliver = Box<dyn FnOnce(Result<(), String>) + Send>;

/// A caller waiting for its submission's id.
pub(crate) type InsertReply = oneshot::Sender<Result<TaskId, LedgerError>>;
/// A caller waiting to hear what became of its result.
pub(crate) type ResultReply = oneshot::Sender<Result<ResultRecording, LedgerError>>;

/// The answer a caller hears: its own value once the batch committed, the batch's
/// failure otherwise.
fn deliver<T: Send + 'static>(reply: oneshot::Sender<Result<T, LedgerError>>, value: T) -> Deliver {
    Box::new(move |committed| {
        // The caller may have gone (client hung up); the write stands regardless.
        let _ = reply.send(committed.map(|()| value).map_err(LedgerError::Unavailable));
    })
}

/// Stores every row in one statement and answers each caller with its id.
///
/// SQLite inserts the rows in `json_each`'s order (`ORDER BY key`), and AUTOINCREMENT
/// gives each one more than the largest id the table ever held: with this writer the
/// only one, the ids of one statement are consecutive, ending at `last_insert_rowid()`
/// (the `submitted` events its trigger writes do not change that). Reading them so,
/// rather than by `RETURNING`, spares one message from SQLite's worker thread per row.
pub(crate) async fn insert_tasks(
    conn: &mut SqliteConnection,
    rows: Vec<(NewTaskRow, InsertReply)>,
    deliveries: &mut Vec<Deliver>,
) -> Result<(), LedgerError> {
    let (rows, replies): (Vec<_>, Vec<_>) = rows.into_iter().unzip();
    let json = serde_json::to_string(&rows).map_err(|error| LedgerError::Unavailable(error.to_string()))?;
    let inserted = sqlx::query!(
        r#"INSERT INTO tasks (expression, variables, delay_ms, status, slave_id, attempts,
                              submitted_at, assigned_at, deadline_at)
           SELECT value ->> 'expression', value ->> 'variables', value ->> 'delay_ms', value ->> 'status',
                  value ->> 'slave_id', value ->> 'attempts', value ->> 'submitted_at',
                  value ->> 'assigned_at', value ->> 'deadline_at'
             FROM json_each(?1) ORDER BY key"#,
        json
    )
    .execute(&mut *conn)
    .await;
    let inserted = match inserted {
        Ok(inserted) => inserted,
        Err(error) => return Err(fail_all(error.into(), replies, deliveries)),
    };
    let count = i64::try_from(replies.len()).unwrap_or(i64::MAX);
    if inserted.rows_affected() != replies.len() as u64 {
        let message = format!("{} tasks were inserted for {count} submissions", inserted.rows_affected());
        return Err(fail_all(LedgerError::Unavailable(message), replies, deliveries));
    }
    let first = inserted.last_insert_rowid() - count + 1;
    deliveries.extend(replies.into_iter().zip(first..).map(|(reply, id)| deliver(reply, TaskId(id))));
    Ok(())
}

/// Records every result that its task's current attempt still waits for in one
/// guarded statement (in progress, on this slave, under this attempt); each of the
/// others — stale, duplicate, for another slave, a second report of a task in the same
/// batch — is read back and classified on its own, as a single report would be.
pub(crate) async fn record_results(
    conn: &mut SqliteConnection,
    reports: Vec<(ResultRow, ResultReply)>,
    deliveries: &mut Vec<Deliver>,
) -> Result<(), LedgerError> {
    // A task reported twice in one batch goes into the statement once: the first
    // report can win; the second is then classified against what the first recorded.
    let mut seen = HashSet::with_capacity(reports.len());
    let (first, again): (Vec<_>, Vec<_>) = reports.into_iter().partition(|(row, _)| seen.insert(row.id));
    let (rows, replies): (Vec<_>, Vec<_>) = first.into_iter().unzip();
    let json = serde_json::to_string(&rows).map_err(|error| LedgerError::Unavailable(error.to_string()))?;
    // `+t.status`: no index on status, so the plan is the JSON rows outside and one
    // primary-key lookup each (a unit test holds the plan to that).
    let updated = sqlx::query!(
        r#"UPDATE tasks AS t
              SET status = r.value ->> 'status', result = r.value ->> 'result', error = r.value ->> 'error',
                  finished_at = r.value ->> 'finished_at', deadline_at = NULL
             FROM json_each(?1) AS r
            WHERE t.id = r.value ->> 'id' AND +t.status = 'in_progress'
              AND t.slave_id = r.value ->> 'slave_id' AND t.attempts = r.value ->> 'attempt'"#,
        json
    )
    .execute(&mut *conn)
    .await;
    // Which rows won, without a `RETURNING` row each (one message from SQLite's worker
    // thread per row): all of them or none, as the count says, or else the newest
    // events, since the statement's trigger wrote one `done`/`failed` event per win.
    let recorded = match updated {
        Ok(updated) if updated.rows_affected() == rows.len() as u64 => {
            Ok(rows.iter().map(|row| row.id).collect())
        }
        Ok(updated) if updated.rows_affected() == 0 => Ok(HashSet::new()),
        Ok(updated) => last_recorded(conn, &rows, updated.rows_affected()).await,
        Err(error) => Err(error.into()),
    };
    let recorded: HashSet<TaskId> = match recorded {
        Ok(ids) => ids,
        Err(error) => {
            let replies = replies.into_iter().chain(again.into_iter().map(|(_, reply)| reply)).collect();
            return Err(fail_all(error, replies, deliveries));
        }
    };
    // The `done`/`failed` events are written by a trigger (migration 2).
    let unrecorded = rows.into_iter().zip(replies).filter_map(|(row, reply)| {
        if recorded.contains(&row.id) {
            deliveries.push(deliver(
                reply,
                ResultRecording::Recorded { status: row.status, finished_at: row.finished_at },
            ));
            None
        } else {
            Some((row, reply))
        }
    });
    let unrecorded: Vec<_> = unrecorded.chain(again).collect();
    for (row, reply) in unrecorded {
        match classify(conn, &row).await {
            Ok(recording) => deliveries.push(deliver(reply, recording)),
            Err(error) => return Err(fail_all(error, vec![reply], deliveries)),
        }
    }
    Ok(())
}

/// The tasks of `rows` the statement just run recorded, `count` of them: the tasks of
/// the newest `count` events, as its trigger writes one per recorded result and only
/// this writer writes. Anything else found is an error (the batch then fails).
async fn last_recorded(
    conn: &mut SqliteConnection,
    rows: &[ResultRow],
    count: u64,
) -> Result<HashSet<TaskId>, LedgerError> {
    let limit = i64::try_from(count).unwrap_or(i64::MAX);
    let ids = sqlx::query_scalar!(
        r#"SELECT task_id AS "task_id!: TaskId" FROM task_events ORDER BY id DESC LIMIT ?1"#,
        limit
    )
    .fetch_all(&mut *conn)
    .await?;
    let reported: HashSet<TaskId> = rows.iter().map(|row| row.id).collect();
    let recorded: HashSet<TaskId> = ids.into_iter().collect();
    if recorded.len() as u64 != count || !recorded.is_subset(&reported) {
        let message = format!("{count} results were recorded, but the newest events name other tasks");
        return Err(LedgerError::Unavailable(message));
    }
    Ok(recorded)
}

/// What a result that changed nothing meant, from the task as it is now.
async fn classify(conn: &mut SqliteConnection, row: &ResultRow) -> Result<ResultRecording, LedgerError> {
    let Some(current) = super::tasks::task_row(conn, row.id).await? else {
        return Ok(ResultRecording::NotFound);
    };
    Ok(classify_unrecorded(&current, row.slave_id, row.attempt, row.status, row.result, row.error.as_deref()))
}

/// A batched statement failed: each of its callers hears why (as `Unavailable`, since
/// the whole batch is rolled back), and the writer hears the error itself.
fn fail_all<T: Send + 'static>(
    error: LedgerError,
    replies: Vec<oneshot::Sender<Result<T, LedgerError>>>,
    deliveries: &mut Vec<Deliver>,
) -> LedgerError {
    let error = super::file::storage_fault_to_unavailable(error);
    let reason = error.to_string();
    for reply in replies {
        let reason = reason.clone();
        deliveries.push(Box::new(move |_rolled_back| {
            let _ = reply.send(Err(LedgerError::Unavailable(reason)));
        }));
    }
    error
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    /// The batched result update must look each reported task up by primary key, not
    /// scan the in-progress tasks once per report.
    #[tokio::test]
    async fn recording_results_looks_each_task_up_by_primary_key() {
        let dir = tempfile::tempdir().unwrap();
        let ledger =
            crate::SqliteLedger::open(&dir.path().join("master.db"), Box::new(|_, _| {}), 8).await.unwrap();
        ledger::Engine::close(&ledger).await;
        let url = format!("sqlite://{}", dir.path().join("master.db").display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let plan: Vec<(i64, i64, i64, String)> = sqlx::query_as(
            "EXPLAIN QUERY PLAN
             UPDATE tasks AS t SET status = r.value ->> 'status', deadline_at = NULL
               FROM json_each(?1) AS r
              WHERE t.id = r.value ->> 'id' AND +t.status = 'in_progress'
                AND t.slave_id = r.value ->> 'slave_id' AND t.attempts = r.value ->> 'attempt'",
        )
        .bind("[]")
        .fetch_all(&mut conn)
        .await
        .unwrap();
        let plan: Vec<String> = plan.into_iter().map(|(_, _, _, detail)| detail).collect();
        assert_eq!(plan.len(), 2, "{plan:?}");
        assert!(plan[0].starts_with("SCAN r VIRTUAL TABLE"), "{plan:?}");
        assert!(plan[1].contains("USING INTEGER PRIMARY KEY"), "{plan:?}");
    }
}
