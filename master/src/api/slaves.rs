//! `/slaves`: registration, heartbeats, listing, deregistration (SPEC §4).

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use serde_json::json;
use slave::protocol::{Heartbeat, Registered, Registration};

use super::{ApiError, AppState, ErrorCode, Json, Path};
use crate::model::SlaveId;

/// Most task ids a heartbeat may list.
const MAX_HEARTBEAT_IDS: usize = 100_000;

pub async fn register(
    State(state): State<AppState>,
    Json(registration): Json<Registration>,
) -> Result<impl IntoResponse, ApiError> {
    let row = state.cluster.register(registration).await?;
    Ok((StatusCode::CREATED, Json(Registered { id: row.id.0, position: row.position })))
}

pub async fn list(State(state): State<AppState>) -> impl IntoResponse {
    Json(json!({ "slaves": state.cluster.slaves().views() }))
}

pub async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(heartbeat): Json<Heartbeat>,
) -> Result<impl IntoResponse, ApiError> {
    if heartbeat.running.len() > MAX_HEARTBEAT_IDS {
        return Err(ApiError::invalid(format!("a heartbeat lists at most {MAX_HEARTBEAT_IDS} tasks")));
    }
    if state.cluster.heartbeat(SlaveId(id), &heartbeat).await? {
        Ok(Json(json!({ "ok": true })))
    } else {
        Err(slave_not_found(id))
    }
}

pub async fn deregister(
    State(state): State<AppState>,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, ApiError> {
    if state.cluster.deregister(SlaveId(id)).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(slave_not_found(id))
    }
}

fn slave_not_found(id: i64) -> ApiError {
    ApiError::new(ErrorCode::NotFound, format!("slave {id} is not registered; register again"))
}
