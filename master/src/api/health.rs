//! Liveness and metrics.

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, ErrorCode, Json};
use crate::{activity::ActivityView, ledger::MasterRow};

/// `GET /healthz` answer 200.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// 200 when a write to the ledger really commits now and the ledger file is still the
/// one opened (SPEC §4), 503 `ledger_unavailable` with the reason otherwise.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The ledger is writable", body = Health),
        (status = 503, description = "`ledger_unavailable`: the ledger is not writable (disk full or \
            read-only, file deleted or replaced); the message says why", body = ApiError,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    ),
)]
pub async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    match state.cluster.ledger().probe_writable().await {
        Ok(()) => Ok(Json(Health { status: "ok" })),
        Err(error) => Err(ApiError::new(ErrorCode::LedgerUnavailable, error.to_string())),
    }
}

/// Tasks finished per second and their offer→result round trips (p50, p99) over the
/// last five minutes, from this master's memory: what the dashboard's charts draw.
#[utoipa::path(
    get,
    path = "/activity",
    operation_id = "activity",
    tag = "operations",
    responses((status = 200, description = "The last five minutes, oldest second first", body = ActivityView)),
)]
pub async fn activity(State(state): State<AppState>) -> Json<ActivityView> {
    Json(state.cluster.activity().view())
}

/// Prometheus text format.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "operations",
    responses((status = 200, description = "Prometheus text exposition format", body = String,
        content_type = "text/plain")),
)]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.cluster.render_metrics().await;
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}

/// `GET /masters` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct MasterList {
    /// Every master recorded on this ledger in the last day, oldest first.
    pub masters: Vec<MasterRow>,
    /// The id of the master that answered.
    pub this: Option<i64>,
}

/// The masters that share this ledger (SPEC §11): each records itself at start and
/// refreshes its row every second; `up` when refreshed within 5 s and not stopped. On
/// SQLite there is one at a time.
#[utoipa::path(
    get,
    path = "/masters",
    operation_id = "list_masters",
    tag = "operations",
    responses(
        (status = 200, description = "The masters, oldest first", body = MasterList),
        (status = 503, description = "`ledger_unavailable`: the ledger cannot be read", body = ApiError,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    ),
)]
pub async fn masters(State(state): State<AppState>) -> Result<Json<MasterList>, ApiError> {
    let masters = state.cluster.masters().await?;
    Ok(Json(MasterList { masters, this: state.cluster.master_id() }))
}
