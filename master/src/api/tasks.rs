//! `/tasks`: submit, list, show (with long poll), cancel, and slaves' results (SPEC §4).

use std::time::Duration;

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use serde::{Deserialize, Serialize};
use serde_json::json;
use slave::protocol::{ResultReport, Variables};

use super::{ApiError, AppState, ErrorCode, Json, Path, Query};
use crate::{
    dispatch::Submitted,
    ledger::{Cancellation, Counts, ResultRecording, TaskFilter, TaskRow},
    model::{NewTask, SlaveId, TaskId, TaskStatus, Timestamp},
};

/// Page size of `GET /tasks` when `limit` is not given.
const DEFAULT_LIMIT: i64 = 100;
/// Largest page of `GET /tasks`.
const MAX_LIMIT: i64 = 1000;
/// Longest long poll of `GET /tasks/{id}?wait=`, in seconds.
const MAX_WAIT_SECONDS: f64 = 60.0;

/// `POST /tasks` body.
#[derive(Debug, Deserialize)]
pub struct SubmitBody {
    expression: String,
    #[serde(default)]
    variables: Variables,
    #[serde(default)]
    delay_ms: i64,
}

/// A slave as named inside a task.
#[derive(Debug, Clone, Serialize)]
pub struct SlaveRef {
    pub id: SlaveId,
    pub name: String,
}

/// A task as the API shows it (SPEC §4 `GET /tasks/{id}`).
#[derive(Debug, Serialize)]
pub struct TaskView {
    pub id: TaskId,
    pub expression: String,
    pub variables: Variables,
    pub delay_ms: i64,
    pub status: TaskStatus,
    pub result: Option<f64>,
    pub error: Option<String>,
    pub slave: Option<SlaveRef>,
    pub attempts: i64,
    pub submitted_at: Timestamp,
    pub assigned_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
}

impl TryFrom<TaskRow> for TaskView {
    type Error = ApiError;

    fn try_from(row: TaskRow) -> Result<Self, ApiError> {
        let variables = row.variables()?;
        let slave = row.slave_id.zip(row.slave_name).map(|(id, name)| SlaveRef { id, name });
        Ok(Self {
            id: row.id,
            expression: row.expression,
            variables,
            delay_ms: row.delay_ms,
            status: row.status,
            result: row.result,
            error: row.error,
            slave,
            attempts: row.attempts,
            submitted_at: row.submitted_at,
            assigned_at: row.assigned_at,
            finished_at: row.finished_at,
        })
    }
}

pub async fn submit(
    State(state): State<AppState>,
    Json(body): Json<SubmitBody>,
) -> Result<impl IntoResponse, ApiError> {
    let task = NewTask::parse(&body.expression, body.variables, body.delay_ms).map_err(|invalid| {
        let code = if invalid.is_about_expression() {
            ErrorCode::InvalidExpression
        } else {
            ErrorCode::InvalidRequest
        };
        ApiError::new(code, invalid.to_string())
    })?;
    let answer = match state.cluster.submit(task).await? {
        Submitted::Assigned { id, slave } => (
            StatusCode::CREATED,
            Json(json!({
                "id": id,
                "status": TaskStatus::InProgress,
                "slave": SlaveRef { id: slave.id, name: slave.name.clone() },
                "message": format!("Task successfully assigned to {}", slave.name),
            })),
        ),
        Submitted::Queued { id } => (
            StatusCode::ACCEPTED,
            Json(json!({
                "id": id,
                "status": TaskStatus::Pending,
                "message": "All slaves are busy: task queued until one is available",
            })),
        ),
    };
    Ok(answer)
}

/// `GET /tasks` query.
#[derive(Debug, Deserialize)]
pub struct ListParams {
    status: Option<String>,
    limit: Option<i64>,
    after: Option<i64>,
}

/// `GET /tasks` answer.
#[derive(Debug, Serialize)]
pub struct TaskList {
    pub tasks: Vec<TaskView>,
    pub counts: Counts,
    pub next: Option<TaskId>,
}

pub async fn list(
    State(state): State<AppState>,
    Query(params): Query<ListParams>,
) -> Result<Json<TaskList>, ApiError> {
    let status = match params.status.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(TaskStatus::parse(raw).ok_or_else(|| {
            ApiError::invalid(format!(
                "status must be one of pending, in_progress, done, failed, cancelled; got `{raw}`"
            ))
        })?),
    };
    let limit = params.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be between 1 and {MAX_LIMIT}, got {limit}")));
    }
    let after = TaskId(params.after.unwrap_or(0));
    let ledger = state.cluster.ledger();
    let rows = ledger.tasks(TaskFilter { status, after, limit }).await?;
    let next = if rows.len() as i64 == limit { rows.last().map(|row| row.id) } else { None };
    let tasks = rows.into_iter().map(TaskView::try_from).collect::<Result<_, _>>()?;
    Ok(Json(TaskList { tasks, counts: ledger.counts().await?, next }))
}

/// `GET /tasks/{id}` query.
#[derive(Debug, Deserialize)]
pub struct ShowParams {
    wait: Option<f64>,
}

pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Query(params): Query<ShowParams>,
) -> Result<Json<TaskView>, ApiError> {
    let wait = params.wait.unwrap_or(0.0);
    if !(0.0..=MAX_WAIT_SECONDS).contains(&wait) {
        return Err(ApiError::invalid(format!("wait must be between 0 and {MAX_WAIT_SECONDS} seconds")));
    }
    let task = state.cluster.task_when_final(TaskId(id), Duration::from_secs_f64(wait)).await?;
    let task = task.ok_or_else(|| ApiError::task_not_found(id))?;
    Ok(Json(TaskView::try_from(task)?))
}

pub async fn cancel(State(state): State<AppState>, Path(id): Path<i64>) -> Result<Json<TaskView>, ApiError> {
    let task_id = TaskId(id);
    match state.cluster.cancel(task_id).await? {
        Cancellation::Cancelled { .. } => {}
        Cancellation::AlreadyFinal(status) => {
            return Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "task {id} is already {}; only pending or in-progress tasks can be cancelled",
                    status.as_str()
                ),
            ));
        }
        Cancellation::NotFound => return Err(ApiError::task_not_found(id)),
    }
    let task = state.cluster.ledger().task(task_id).await?.ok_or_else(|| ApiError::task_not_found(id))?;
    Ok(Json(TaskView::try_from(task)?))
}

pub async fn record_result(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(report): Json<ResultReport>,
) -> Result<impl IntoResponse, ApiError> {
    let (slave, attempt) = (report.slave_id, report.attempt);
    match state.cluster.record_result(TaskId(id), report).await? {
        ResultRecording::Recorded(status) => Ok(Json(json!({ "recorded": true, "status": status }))),
        ResultRecording::Duplicate => Ok(Json(json!({ "recorded": false, "reason": "duplicate" }))),
        ResultRecording::Cancelled => {
            Ok(Json(json!({ "recorded": false, "status": TaskStatus::Cancelled, "reason": "cancelled" })))
        }
        ResultRecording::StaleAttempt { current } => Err(ApiError::new(
            ErrorCode::StaleAttempt,
            format!("attempt {attempt} of task {id} is stale: the current attempt is {current}"),
        )),
        ResultRecording::OtherSlave => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("task {id} attempt {attempt} is not assigned to slave {slave}"),
        )),
        ResultRecording::NotFound => Err(ApiError::task_not_found(id)),
    }
}
