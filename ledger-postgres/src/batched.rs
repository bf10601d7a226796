//! The two writes every task makes — its submission and its slave's result — gathered
//! into one statement per batch, as the SQLite engine's writer does: each is a commit of
//! its own otherwise, and a commit waits for a WAL flush. One batch of each kind is in
//! flight at a time; whatever callers queue meanwhile goes into the next, so an idle
//! master still writes one row per statement and a busy one many rows per flush. The
//! rows travel as one bound array per column (`unnest`). Each caller still learns its
//! own answer: its id, or what became of its result.
//!
//! Every other write stays one guarded statement of its own (they are rare), so the
//! races between masters sharing the database are decided exactly as before: by the
//! guards in each statement's `WHERE`.

use std::{collections::HashSet, time::Duration};

use ledger::{
    LedgerError, Outcome, ResultRecording, SlaveId, Submission, TaskId, TaskStatus, Timestamp,
    classify_unrecorded, outcome_columns,
};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use super::{tasks::task_row, unavailable};

/// Most rows in one statement: bounds its parameters' size and how long it holds the
/// counter rows it changes.
const MAX_BATCH: usize = 512;
/// What a caller hears if its task is missing from its batch's rows (not expected: the
/// statement stores every row it is not told to leave out).
pub(crate) const NOT_STORED: &str = "the task was not stored with its batch";

/// A task to store.
pub(crate) struct NewTask {
    expression: String,
    variables: String,
    delay_ms: i64,
    status: TaskStatus,
    slave: Option<SlaveId>,
    attempts: i64,
    /// Seconds from the database's `now()` to the assignment's deadline.
    deadline_s: Option<f64>,
    /// Stored only if no task is pending when the statement runs.
    unless_waiting: bool,
}

impl NewTask {
    pub(crate) fn new(
        task: Submission<'_>,
        assignment: Option<(SlaveId, Duration)>,
        unless_waiting: bool,
    ) -> Self {
        let (status, attempts, slave, deadline_s) = match assignment {
            Some((slave, deadline)) => (TaskStatus::InProgress, 1, Some(slave), Some(deadline.as_secs_f64())),
            None => (TaskStatus::Pending, 0, None, None),
        };
        Self {
            expression: task.expression.to_owned(),
            variables: task.variables_json(),
            delay_ms: task.stored_delay_ms(),
            status,
            slave,
            attempts,
            deadline_s,
            unless_waiting,
        }
    }
}

/// A slave's result to record.
pub(crate) struct NewResult {
    id: TaskId,
    slave: SlaveId,
    attempt: i64,
    status: TaskStatus,
    value: Option<f64>,
    error: Option<String>,
}

impl NewResult {
    pub(crate) fn new(id: TaskId, slave: SlaveId, attempt: i64, outcome: &Outcome) -> Self {
        let (status, value, error) = outcome_columns(outcome);
        Self { id, slave, attempt, status, value, error }
    }
}

type Reply<T> = oneshot::Sender<Result<T, LedgerError>>;

/// Where callers queue the two hot writes; the batching tasks end with the ledger.
#[derive(Clone)]
pub(crate) struct Batches {
    submissions: mpsc::UnboundedSender<(NewTask, Reply<Option<TaskId>>)>,
    results: mpsc::UnboundedSender<(NewResult, Reply<ResultRecording>)>,
}

impl Batches {
    /// Starts one batching task per kind of write on `pool`.
    pub(crate) fn start(pool: &PgPool) -> Self {
        let (submissions, queued_submissions) = mpsc::unbounded_channel();
        let (results, queued_results) = mpsc::unbounded_channel();
        tokio::spawn(each_batch(pool.clone(), queued_submissions, insert_tasks));
        tokio::spawn(each_batch(pool.clone(), queued_results, record_results));
        Self { submissions, results }
    }

    /// Stores `task` with the next batch of submissions; its id once committed, or
    /// `None` if it was to be stored only while no task waits and one did.
    pub(crate) async fn insert(&self, task: NewTask) -> Result<Option<TaskId>, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.submissions.send((task, reply)).map_err(|_| LedgerError::Closed)?;
        answer.await.map_err(|_| LedgerError::Closed)?
    }

    /// Records `result` with the next batch of results; what became of it.
    pub(crate) async fn record(&self, result: NewResult) -> Result<ResultRecording, LedgerError> {
        let (reply, answer) = oneshot::channel();
        self.results.send((result, reply)).map_err(|_| LedgerError::Closed)?;
        answer.await.map_err(|_| LedgerError::Closed)?
    }
}

/// Runs `write` on everything queued, one batch at a time, until every sender is gone.
/// (Two batches of a kind in flight at once measured no faster: the database's CPU,
/// not its commit wait, is what a batch waits for.)
async fn each_batch<Row, Answer, Write>(
    pool: PgPool,
    mut queue: mpsc::UnboundedReceiver<(Row, Reply<Answer>)>,
    write: impl Fn(PgPool, Vec<(Row, Reply<Answer>)>) -> Write,
) where
    Write: Future<Output = ()>,
{
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        write(pool.clone(), std::mem::take(&mut batch)).await;
    }
}

/// Every caller of a failed statement hears why: nothing of the batch was stored.
fn fail_all<T>(error: sqlx::Error, replies: impl IntoIterator<Item = Reply<T>>) {
    let reason = match unavailable(error) {
        LedgerError::Closed => None,
        LedgerError::Unavailable(reason) => Some(reason),
        error => Some(error.to_string()),
    };
    for reply in replies {
        // A caller that went away (client hung up) needs no answer.
        let _ = reply.send(Err(reason.clone().map_or(LedgerError::Closed, LedgerError::Unavailable)));
    }
}

/// Stores every task of the batch in one statement and answers each caller with its id.
/// The ids are drawn from the table's sequence row by row in the batch's order, inside
/// the statement, so each caller's id is the one of its own row. A task to be stored
/// only while no task waits is left out if one is pending when the statement starts
/// (its caller hears `None`). The `submitted` events and the counts are written by
/// triggers.
async fn insert_tasks(pool: PgPool, batch: Vec<(NewTask, Reply<Option<TaskId>>)>) {
    let (tasks, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
    let delays: Vec<i64> = tasks.iter().map(|task| task.delay_ms).collect();
    let statuses: Vec<String> = tasks.iter().map(|task| task.status.as_str().to_owned()).collect();
    let slaves: Vec<Option<i64>> = tasks.iter().map(|task| task.slave.map(|slave| slave.0)).collect();
    let attempts: Vec<i64> = tasks.iter().map(|task| task.attempts).collect();
    let deadlines: Vec<Option<f64>> = tasks.iter().map(|task| task.deadline_s).collect();
    let unless_waiting: Vec<bool> = tasks.iter().map(|task| task.unless_waiting).collect();
    // The texts are moved into their columns, not copied.
    let (expressions, variables): (Vec<String>, Vec<String>) =
        tasks.into_iter().map(|task| (task.expression, task.variables)).unzip();
    let stored = sqlx::query!(
        r#"WITH waiting AS (SELECT EXISTS (SELECT 1 FROM tasks WHERE status = 'pending') AS any),
           input AS MATERIALIZED (
               SELECT nextval(pg_get_serial_sequence('tasks', 'id')) AS id, t.*
                 FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[], $6::int8[],
                             $7::float8[], $8::bool[])
                      WITH ORDINALITY AS t(expression, variables, delay_ms, status, slave_id, attempts,
                                           deadline_s, unless_waiting, n)
                CROSS JOIN waiting
                WHERE NOT (t.unless_waiting AND waiting.any)),
           inserted AS (
               INSERT INTO tasks (id, expression, variables, delay_ms, status, slave_id, attempts,
                                  assigned_at, deadline_at)
               OVERRIDING SYSTEM VALUE
               SELECT id, expression, variables, delay_ms, status, slave_id, attempts,
                      CASE WHEN slave_id IS NULL THEN NULL ELSE now() END,
                      now() + make_interval(secs => deadline_s)
                 FROM input
               RETURNING id)
           SELECT input.n AS "n!", input.id AS "id!: TaskId"
             FROM input JOIN inserted USING (id) ORDER BY input.n"#,
        &expressions,
        &variables,
        &delays,
        &statuses,
        &slaves as &[Option<i64>],
        &attempts,
        &deadlines as &[Option<f64>],
        &unless_waiting,
    )
    .fetch_all(&pool)
    .await;
    let rows = match stored {
        Ok(rows) => rows,
        Err(error) => return fail_all(error, replies),
    };
    // Ordinals count from 1, in the batch's order.
    let mut ids = vec![None; replies.len()];
    for row in rows {
        if let Some(slot) = usize::try_from(row.n - 1).ok().and_then(|index| ids.get_mut(index)) {
            *slot = Some(row.id);
        }
    }
    for ((reply, id), unless_waiting) in replies.into_iter().zip(ids).zip(unless_waiting) {
        let answer = match id {
            Some(id) => Ok(Some(id)),
            None if unless_waiting => Ok(None),
            None => Err(LedgerError::Unavailable(NOT_STORED.to_owned())),
        };
        let _ = reply.send(answer);
    }
}

/// Records every result of the batch that its task's current attempt still waits for
/// (in progress, on this slave, under this attempt) in one guarded statement; each of
/// the others — stale, duplicate, for another slave, unknown, a second report of a task
/// in the same batch — is read back and classified on its own, as a single report is.
/// The `done`/`failed` events and the counts are written by triggers.
async fn record_results(pool: PgPool, batch: Vec<(NewResult, Reply<ResultRecording>)>) {
    // A task reported twice in one batch goes into the statement once: the first
    // report can win; the second is then classified against what the first recorded.
    let mut seen = HashSet::with_capacity(batch.len());
    let (first, again): (Vec<_>, Vec<_>) = batch.into_iter().partition(|(result, _)| seen.insert(result.id));
    let ids: Vec<i64> = first.iter().map(|(result, _)| result.id.0).collect();
    let slaves: Vec<i64> = first.iter().map(|(result, _)| result.slave.0).collect();
    let attempts: Vec<i64> = first.iter().map(|(result, _)| result.attempt).collect();
    let statuses: Vec<String> = first.iter().map(|(result, _)| result.status.as_str().to_owned()).collect();
    let values: Vec<Option<f64>> = first.iter().map(|(result, _)| result.value).collect();
    let errors: Vec<Option<String>> = first.iter().map(|(result, _)| result.error.clone()).collect();
    let recorded = sqlx::query!(
        r#"UPDATE tasks AS t
              SET status = r.status, result = r.value, error = r.error, finished_at = now(),
                  deadline_at = NULL
             FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::text[], $5::float8[], $6::text[])
                  AS r(id, slave_id, attempt, status, value, error)
            WHERE t.id = r.id AND t.status = 'in_progress' AND t.slave_id = r.slave_id
              AND t.attempts = r.attempt
        RETURNING t.id AS "id!: TaskId", rfc3339(t.finished_at) AS "finished_at!: Timestamp""#,
        &ids,
        &slaves,
        &attempts,
        &statuses,
        &values as &[Option<f64>],
        &errors as &[Option<String>],
    )
    .fetch_all(&pool)
    .await;
    let recorded: std::collections::HashMap<TaskId, Timestamp> = match recorded {
        Ok(rows) => rows.into_iter().map(|row| (row.id, row.finished_at)).collect(),
        Err(error) => {
            fail_all(error, first.into_iter().chain(again).map(|(_, reply)| reply));
            return;
        }
    };
    let mut unrecorded = Vec::new();
    for (result, reply) in first {
        match recorded.get(&result.id) {
            Some(finished_at) => {
                let recording =
                    ResultRecording::Recorded { status: result.status, finished_at: finished_at.clone() };
                let _ = reply.send(Ok(recording));
            }
            None => unrecorded.push((result, reply)),
        }
    }
    for (result, reply) in unrecorded.into_iter().chain(again) {
        let _ = reply.send(classify(&pool, &result).await);
    }
}

/// What a result that changed nothing meant, from the task as it is now.
async fn classify(pool: &PgPool, result: &NewResult) -> Result<ResultRecording, LedgerError> {
    let Some(current) = task_row(pool, result.id).await? else { return Ok(ResultRecording::NotFound) };
    Ok(classify_unrecorded(
        &current,
        result.slave,
        result.attempt,
        result.status,
        result.value,
        result.error.as_deref(),
    ))
}
