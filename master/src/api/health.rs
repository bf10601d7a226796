//! Liveness and metrics.

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::IntoResponse,
};
use serde_json::json;

use super::{ApiError, AppState, ErrorCode, Json};

/// 200 when a write to the ledger commits (SPEC §4), 503 otherwise.
pub async fn healthz(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    if state.cluster.ledger().is_writable().await {
        Ok(Json(json!({"status": "ok"})))
    } else {
        Err(ApiError::new(ErrorCode::Unavailable, "the ledger is not writable"))
    }
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let body = state.cluster.render_metrics();
    (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body)
}
