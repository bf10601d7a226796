//! `/tasks`: submit, list, show (with long poll), cancel, and slaves' results (SPEC §4).

use std::time::Duration;

use axum::{
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use common::protocol::{
    MAX_RESULTS_PER_REPORT, ResultAnswer, ResultAnswers, ResultReport, ResultsReport, Variables,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{ApiError, AppState, ErrorCode, Json, Path, Query};
use crate::{
    dispatch::Submitted,
    ledger::{Cancellation, Counts, Cursor, ResultRecording, TaskEvent, TaskFilter, TaskRow},
    model::{NewTask, SlaveId, TaskId, TaskStatus, Timestamp},
};

/// Page size of `GET /tasks` when `limit` is not given.
const DEFAULT_LIMIT: i64 = 100;
/// Largest page of `GET /tasks`.
pub(super) const MAX_LIMIT: i64 = 1000;
/// Longest long poll of `GET /tasks/{id}?wait=`, in seconds.
pub(super) const MAX_WAIT_SECONDS: f64 = 60.0;
/// `message` of a queued submission.
const QUEUED_MESSAGE: &str = "All slaves are busy: task queued until one is available";

/// `POST /tasks` body.
// utoipa takes only literals in `#[schema(maximum = ...)]`: a unit test in `api::openapi`
// holds them equal to the constants the checks use.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"expression": "sqrt(x)*pi", "variables": {"x": 2.0}, "delay_ms": 0}))]
pub struct SubmitBody {
    /// A meval expression, 1..=10 000 characters after trimming; every variable bound.
    #[schema(example = "sqrt(x)*pi")]
    expression: String,
    #[serde(default)]
    #[schema(schema_with = variables_schema)]
    variables: Variables,
    /// Simulated work the slave adds before answering.
    #[serde(default)]
    #[schema(minimum = 0, maximum = 600000)]
    delay_ms: i64,
    /// Only a master's offer to a slave carries `task_id`: sent here, a master was taken
    /// for a slave (SPEC §8). Refused, so a loop of offers can never store anything.
    #[serde(default, rename = "task_id")]
    #[schema(ignore)]
    offered_task: Option<serde::de::IgnoredAny>,
}

/// `variables` of a submission, with the name rules of `NewTask::parse` (SPEC §3, §8);
/// built here because utoipa has no attribute for `propertyNames`.
fn variables_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
    let name = ObjectBuilder::new().schema_type(Type::String).pattern(Some("^[A-Za-z_][A-Za-z0-9_]{0,63}$"));
    let value = ObjectBuilder::new()
        .schema_type(Type::Number)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Double)));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("Variable bindings: name → finite number."))
        .property_names(Some(name))
        .additional_properties(Some(value))
        .max_properties(Some(100))
        .build()
}

/// `POST /tasks` answer 201: the first available slave took the task.
#[derive(Debug, Serialize, ToSchema)]
pub struct Assigned {
    pub id: TaskId,
    /// Always `in_progress`.
    pub status: TaskStatus,
    pub slave: SlaveRef,
    /// `Task successfully assigned to <slave name>`.
    pub message: String,
}

/// `POST /tasks` answer 202 (`--when-full queue`): stored as pending, runs when a slave frees.
#[derive(Debug, Serialize, ToSchema)]
pub struct Queued {
    pub id: TaskId,
    /// Always `pending`.
    pub status: TaskStatus,
    pub message: &'static str,
}

/// A slave as named inside a task.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SlaveRef {
    pub id: SlaveId,
    pub name: String,
}

/// A task as the API shows it (SPEC §4 `GET /tasks/{id}`).
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    pub id: TaskId,
    pub expression: String,
    #[schema(value_type = BTreeMap<String, f64>)]
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

/// Submit a task: offered to the slaves in registration order; the first available one takes it.
#[utoipa::path(
    post,
    path = "/tasks",
    operation_id = "submit_task",
    tag = "tasks",
    request_body = SubmitBody,
    responses(
        (status = 201, description = "A slave took the task", body = Assigned),
        (status = 202, description = "Every slave is busy and the master runs with `--when-full queue`: \
            stored as pending", body = Queued),
        (status = 400, description = "`invalid_expression` (blank, too long, syntax, unknown variable or \
            function, arity) or `invalid_request` (body shape, variables, delay_ms); nothing stored",
            body = ApiError),
        (status = 413, description = "`payload_too_large`: body over 64 KiB", body = ApiError),
        (status = 500, description = "`internal`: the master log has details", body = ApiError),
        (status = 503, description = "`full_capacity` (every slave busy), `no_slaves` (none up), \
            `queue_full` or `shutting_down`; nothing stored", body = ApiError,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    ),
)]
pub async fn submit(
    State(state): State<AppState>,
    Json(body): Json<SubmitBody>,
) -> Result<Response, ApiError> {
    if body.offered_task.is_some() {
        return Err(ApiError::invalid(
            "this is a master: it takes submissions, not a slave's task offers (`task_id` is not a submission field)",
        ));
    }
    let task = NewTask::parse(&body.expression, body.variables, body.delay_ms).map_err(|invalid| {
        let code = if invalid.is_about_expression() {
            ErrorCode::InvalidExpression
        } else {
            ErrorCode::InvalidRequest
        };
        ApiError::new(code, invalid.to_string())
    })?;
    let answer = match state.cluster.submit(task).await? {
        Submitted::Assigned { id, slave } => {
            let message = format!("Task successfully assigned to {}", slave.name);
            let slave = SlaveRef { id: slave.id, name: slave.name.clone() };
            let assigned = Assigned { id, status: TaskStatus::InProgress, slave, message };
            (StatusCode::CREATED, Json(assigned)).into_response()
        }
        Submitted::Queued { id } => {
            let queued = Queued { id, status: TaskStatus::Pending, message: QUEUED_MESSAGE };
            (StatusCode::ACCEPTED, Json(queued)).into_response()
        }
    };
    Ok(answer)
}

/// `GET /tasks` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Only tasks in this status (empty: every status).
    #[param(value_type = Option<TaskStatus>)]
    status: Option<String>,
    /// Page size, 1..=1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
    /// Oldest first (the default), only tasks with a larger id: the `next` cursor of the
    /// previous page.
    after: Option<i64>,
    /// Newest first, only tasks with a smaller id: the `next` cursor of the previous
    /// page when listing newest first. Not with `after`.
    before: Option<i64>,
    /// `oldest` (default) or `newest`: which end the list starts from (`before` implies
    /// `newest`).
    #[param(value_type = Option<String>, example = "newest")]
    order: Option<String>,
    /// Only tasks last assigned to the slave with this id.
    slave: Option<i64>,
}

/// `GET /tasks` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskList {
    pub tasks: Vec<TaskView>,
    pub counts: Counts,
    pub next: Option<TaskId>,
}

/// List tasks, oldest or newest first, by status and by slave, with the counts by status
/// and a cursor to the next page.
#[utoipa::path(
    get,
    path = "/tasks",
    operation_id = "list_tasks",
    tag = "tasks",
    params(ListParams),
    responses(
        (status = 200, description = "One page of tasks", body = TaskList),
        (status = 400, description = "`invalid_request`: a bad `status`, `limit`, `after`, `before`, `order` or `slave`", body = ApiError),
        (status = 500, description = "`internal`: the master log has details", body = ApiError),
    ),
)]
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
    let newest = match params.order.as_deref() {
        None | Some("") => params.before.is_some(),
        Some("newest") => true,
        Some("oldest") if params.before.is_none() => false,
        Some("oldest") => {
            return Err(ApiError::invalid("`before` lists newest first; use `after` with order=oldest"));
        }
        Some(other) => {
            return Err(ApiError::invalid(format!("order must be oldest or newest; got `{other}`")));
        }
    };
    let page = match (params.after, params.before) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("give `after` or `before`, not both")),
        (Some(_), None) if newest => {
            return Err(ApiError::invalid("`after` lists oldest first; use `before` with order=newest"));
        }
        (after, None) if !newest => Cursor::After(TaskId(after.unwrap_or(0))),
        (_, before) => Cursor::Before(TaskId(before.unwrap_or(i64::MAX))),
    };
    let slave = params.slave.map(SlaveId);
    let ledger = state.cluster.ledger();
    let rows = ledger.tasks(TaskFilter { status, slave, page, limit }).await?;
    let next = if rows.len() as i64 == limit { rows.last().map(|row| row.id) } else { None };
    let tasks = rows.into_iter().map(TaskView::try_from).collect::<Result<_, _>>()?;
    Ok(Json(TaskList { tasks, counts: ledger.counts().await?, next }))
}

/// `GET /get-tasks`: the original demo's name for `GET /tasks`.
#[utoipa::path(
    get,
    path = "/get-tasks",
    operation_id = "get_tasks",
    tag = "tasks",
    params(ListParams),
    responses(
        (status = 200, description = "One page of tasks", body = TaskList),
        (status = 400, description = "`invalid_request`: a bad `status`, `limit`, `after`, `before`, `order` or `slave`", body = ApiError),
        (status = 500, description = "`internal`: the master log has details", body = ApiError),
    ),
)]
pub async fn list_alias(
    state: State<AppState>,
    params: Query<ListParams>,
) -> Result<Json<TaskList>, ApiError> {
    list(state, params).await
}

/// `GET /tasks/{id}` query.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ShowParams {
    /// Long poll: answer once the task is final or after this many seconds (0..=60).
    #[param(minimum = 0, maximum = 60)]
    wait: Option<f64>,
}

/// One task; with `?wait=` it long-polls until the task is final or the time is up.
#[utoipa::path(
    get,
    path = "/tasks/{id}",
    operation_id = "show_task",
    tag = "tasks",
    params(("id" = i64, Path, description = "Task id"), ShowParams),
    responses(
        (status = 200, description = "The task", body = TaskView),
        (status = 400, description = "`invalid_request`: a bad id or `wait`", body = ApiError),
        (status = 404, description = "`not_found`: no such task", body = ApiError),
        (status = 500, description = "`internal`: the master log has details", body = ApiError),
    ),
)]
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

/// One entry of a task's history.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    /// Increasing: the order things happened in.
    pub id: i64,
    pub at: Timestamp,
    /// `submitted` (with a slave: assigned to it at once, attempt 1), `assigned`,
    /// `unassigned` (no slave took the offer), `requeued`, `done`, `failed`, `cancelled`.
    #[schema(example = "requeued")]
    pub kind: String,
    /// The slave it concerns, while that slave is registered.
    pub slave: Option<SlaveRef>,
    /// Why, in words: the attempt assigned, a requeue's reason, a failure's error.
    pub detail: Option<String>,
}

impl From<TaskEvent> for EventView {
    fn from(event: TaskEvent) -> Self {
        let slave = event.slave_id.zip(event.slave_name).map(|(id, name)| SlaveRef { id, name });
        Self { id: event.id, at: event.at, kind: event.kind, slave, detail: event.detail }
    }
}

/// `GET /tasks/{id}/events` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskEvents {
    pub task_id: TaskId,
    /// Oldest first.
    pub events: Vec<EventView>,
}

/// A task's whole story from the ledger's `task_events`: every state change, in order.
#[utoipa::path(
    get,
    path = "/tasks/{id}/events",
    operation_id = "task_events",
    tag = "tasks",
    params(("id" = i64, Path, description = "Task id")),
    responses(
        (status = 200, description = "The task's events, oldest first", body = TaskEvents),
        (status = 400, description = "`invalid_request`: a bad id", body = ApiError),
        (status = 404, description = "`not_found`: no such task", body = ApiError),
        (status = 503, description = "`ledger_unavailable`: the ledger cannot be read now", body = ApiError,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    ),
)]
pub async fn events(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<Json<TaskEvents>, ApiError> {
    let events =
        state.cluster.ledger().task_events(TaskId(id)).await?.ok_or_else(|| ApiError::task_not_found(id))?;
    Ok(Json(TaskEvents { task_id: TaskId(id), events: events.into_iter().map(EventView::from).collect() }))
}

/// Cancel a pending or in-progress task; the slave holding it is told to drop it.
#[utoipa::path(
    delete,
    path = "/tasks/{id}",
    operation_id = "cancel_task",
    tag = "tasks",
    params(("id" = i64, Path, description = "Task id")),
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Cancelled: the task as it is now", body = TaskView),
        (status = 400, description = "`invalid_request`: a bad id", body = ApiError),
        (status = 401, description = "`unauthorized`: the master has a token and the request does not carry it",
            body = ApiError, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "`not_found`: no such task", body = ApiError),
        (status = 409, description = "`conflict`: the task is already done, failed or cancelled", body = ApiError),
        (status = 500, description = "`internal`: the master log has details", body = ApiError),
    ),
)]
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

/// `POST /tasks/{id}/result` answer 200.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultAck {
    /// Whether this report was recorded now.
    pub recorded: bool,
    /// The task's status: final once recorded, `cancelled` when it was cancelled; absent for a duplicate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    /// Why the report was not recorded; absent when it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<NotRecorded>,
}

/// Why a result report changed nothing.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotRecorded {
    /// The same outcome of this attempt was already recorded.
    Duplicate,
    /// The task was cancelled; the result is ignored.
    Cancelled,
}

/// A slave reports how a task it holds ended; recorded exactly once.
#[utoipa::path(
    post,
    path = "/tasks/{id}/result",
    operation_id = "record_result",
    tag = "slaves",
    params(("id" = i64, Path, description = "Task id")),
    request_body = ResultReport,
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Recorded now, a duplicate of the recorded outcome, or the task was \
            cancelled", body = ResultAck),
        (status = 400, description = "`invalid_request`: a bad id or body", body = ApiError),
        (status = 401, description = "`unauthorized`: the master has a token and the request does not carry it",
            body = ApiError, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "`forbidden`: the attempt is held by another slave", body = ApiError),
        (status = 404, description = "`not_found`: no such task", body = ApiError),
        (status = 409, description = "`stale_attempt`: not the task's current attempt; `conflict`: this \
            attempt already has a different outcome recorded", body = ApiError),
        (status = 413, description = "`payload_too_large`: body over 64 KiB", body = ApiError),
        (status = 500, description = "`internal`: the master log has details", body = ApiError),
    ),
)]
pub async fn record_result(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(report): Json<ResultReport>,
) -> Result<Json<ResultAck>, ApiError> {
    answer_result(&state, id, report).await.map(Json)
}

/// A slave reports several results in one request; each is recorded exactly once, or
/// refused, on its own.
#[utoipa::path(
    post,
    path = "/results",
    operation_id = "record_results",
    tag = "slaves",
    request_body = ResultsReport,
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "One answer per result, in the order sent: the status and body that \
            `POST /tasks/{id}/result` would have answered for it", body = ResultAnswers),
        (status = 400, description = "`invalid_request`: a bad body, no results, or more than 1 000", body = ApiError),
        (status = 401, description = "`unauthorized`: the master has a token and the request does not carry it",
            body = ApiError, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 413, description = "`payload_too_large`: body over 64 KiB", body = ApiError),
    ),
)]
pub async fn record_results(
    State(state): State<AppState>,
    Json(report): Json<ResultsReport>,
) -> Result<Json<ResultAnswers>, ApiError> {
    let count = report.results.len();
    if count == 0 || count > MAX_RESULTS_PER_REPORT {
        return Err(ApiError::invalid(format!(
            "a report carries 1 to {MAX_RESULTS_PER_REPORT} results, not {count}"
        )));
    }
    let slave_id = report.slave_id;
    // All at once: on SQLite they meet in one writer batch, and one statement.
    let answers = report.results.into_iter().map(|result| {
        let state = &state;
        async move {
            let single = ResultReport { slave_id, attempt: result.attempt, outcome: result.outcome };
            let (status, body) = match answer_result(state, result.task_id, single).await {
                Ok(ack) => (StatusCode::OK, serde_json::to_value(ack)),
                Err(error) => (error.code.status(), serde_json::to_value(error)),
            };
            ResultAnswer { task_id: result.task_id, status: status.as_u16(), body: body.unwrap_or_default() }
        }
    });
    let results = futures_util::future::join_all(answers).await;
    Ok(Json(ResultAnswers { results }))
}

/// Records one result and says what that meant, as `POST /tasks/{id}/result` answers.
async fn answer_result(state: &AppState, id: i64, report: ResultReport) -> Result<ResultAck, ApiError> {
    let (slave, attempt) = (report.slave_id, report.attempt);
    match state.cluster.record_result(TaskId(id), report).await? {
        ResultRecording::Recorded { status, .. } => {
            Ok(ResultAck { recorded: true, status: Some(status), reason: None })
        }
        ResultRecording::Duplicate => {
            Ok(ResultAck { recorded: false, status: None, reason: Some(NotRecorded::Duplicate) })
        }
        ResultRecording::Cancelled => Ok(ResultAck {
            recorded: false,
            status: Some(TaskStatus::Cancelled),
            reason: Some(NotRecorded::Cancelled),
        }),
        ResultRecording::StaleAttempt { current } => Err(ApiError::new(
            ErrorCode::StaleAttempt,
            format!("attempt {attempt} of task {id} is stale: the current attempt is {current}"),
        )),
        ResultRecording::ConflictingOutcome { recorded } => Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "attempt {attempt} of task {id} already has a different outcome recorded (the task is {}); \
                 a result is recorded once",
                recorded.as_str()
            ),
        )),
        ResultRecording::OtherSlave => Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("task {id} attempt {attempt} is not assigned to slave {slave}"),
        )),
        ResultRecording::NotFound => Err(ApiError::task_not_found(id)),
    }
}
