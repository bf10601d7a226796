//! Liveness and metrics.

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, ErrorCode, Json};

/// `GET /healthz` answer 200.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// 200 when a write to the ledger commits (SPEC §4), 503 otherwise.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    responses(
        (status = 200, description = "The ledger is writable", body = Health),
        (status = 503, description = "`unavailable`: the ledger is not writable", body = ApiError,
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying"))),
    ),
)]
pub async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    if state.cluster.ledger().is_writable().await {
        Ok(Json(Health { status: "ok" }))
    } else {
        Err(ApiError::new(ErrorCode::Unavailable, "the ledger is not writable"))
    }
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
