//! `/slaves`: registration, heartbeats, listing, deregistration (SPEC §4).

use axum::{extract::State, http::StatusCode, response::IntoResponse};
use common::protocol::{Heartbeat, Registered, Registration};
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState, ErrorCode, Json, Path};
use crate::{
    model::SlaveId,
    slaves::{SlaveView, Touch},
};

/// Most task ids a heartbeat may list.
const MAX_HEARTBEAT_IDS: usize = 100_000;

/// Register a slave, or re-register a known name: it keeps its id and place in the order.
#[utoipa::path(
    post,
    path = "/slaves",
    operation_id = "register_slave",
    tag = "slaves",
    request_body = Registration,
    security(("cluster_token" = [])),
    responses(
        (status = 201, description = "Registered: the slave's id and its place in the order", body = Registered),
        (status = 400, description = "`invalid_request`: a bad body, name, url (also: one that does not answer \
            `GET /availability` as a slave, such as a master's) or capacity", body = ApiError),
        (status = 401, description = "`unauthorized`: the master has a token and the request does not carry it",
            body = ApiError, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 409, description = "`name_in_use`: the name's slave is up in another live process", body = ApiError),
        (status = 413, description = "`payload_too_large`: body over 64 KiB", body = ApiError),
        (status = 500, description = "`internal`: the master log has details", body = ApiError),
    ),
)]
pub async fn register(
    State(state): State<AppState>,
    Json(registration): Json<Registration>,
) -> Result<impl IntoResponse, ApiError> {
    let row = state.cluster.register(registration).await?;
    Ok((StatusCode::CREATED, Json(Registered { id: row.id.0, position: row.position })))
}

/// `GET /slaves` answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct SlaveList {
    /// In registration order.
    pub slaves: Vec<SlaveView>,
}

/// Every registered slave in registration order, with its state and load.
#[utoipa::path(
    get,
    path = "/slaves",
    operation_id = "list_slaves",
    tag = "slaves",
    responses((status = 200, description = "The slaves in registration order", body = SlaveList)),
)]
pub async fn list(State(state): State<AppState>) -> Json<SlaveList> {
    Json(SlaveList { slaves: state.cluster.slaves().views() })
}

/// `POST /slaves/{id}/heartbeat` answer 200.
#[derive(Debug, Serialize, ToSchema)]
pub struct HeartbeatAck {
    /// Always `true`.
    pub ok: bool,
}

/// A slave's heartbeat: the tasks it still holds. 404 means the master forgot it: register again.
#[utoipa::path(
    post,
    path = "/slaves/{id}/heartbeat",
    operation_id = "heartbeat",
    tag = "slaves",
    params(("id" = i64, Path, description = "Slave id")),
    request_body = Heartbeat,
    security(("cluster_token" = [])),
    responses(
        (status = 200, description = "Taken", body = HeartbeatAck),
        (status = 400, description = "`invalid_request`: a bad id or body", body = ApiError),
        (status = 401, description = "`unauthorized`: the master has a token and the request does not carry it",
            body = ApiError, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "`not_found`: the slave is not registered; register again", body = ApiError),
        (status = 409, description = "`name_in_use`: another process registered under this slave's name \
            since; this one is superseded", body = ApiError),
        (status = 413, description = "`payload_too_large`: body over 64 KiB", body = ApiError),
        (status = 500, description = "`internal`: the master log has details", body = ApiError),
    ),
)]
pub async fn heartbeat(
    State(state): State<AppState>,
    Path(id): Path<i64>,
    Json(heartbeat): Json<Heartbeat>,
) -> Result<Json<HeartbeatAck>, ApiError> {
    if heartbeat.running.len() > MAX_HEARTBEAT_IDS {
        return Err(ApiError::invalid(format!("a heartbeat lists at most {MAX_HEARTBEAT_IDS} tasks")));
    }
    match state.cluster.heartbeat(SlaveId(id), &heartbeat).await? {
        Touch::Taken(..) => Ok(Json(HeartbeatAck { ok: true })),
        Touch::Unknown => Err(slave_not_found(id)),
        Touch::Superseded => Err(ApiError::new(
            ErrorCode::NameInUse,
            format!("slave {id} was registered again by another process; this one was superseded"),
        )),
    }
}

/// Deregister a slave; the tasks it held go back to pending and are dispatched again.
#[utoipa::path(
    delete,
    path = "/slaves/{id}",
    operation_id = "deregister_slave",
    tag = "slaves",
    params(("id" = i64, Path, description = "Slave id")),
    security(("cluster_token" = [])),
    responses(
        (status = 204, description = "Deregistered"),
        (status = 400, description = "`invalid_request`: a bad id", body = ApiError),
        (status = 401, description = "`unauthorized`: the master has a token and the request does not carry it",
            body = ApiError, headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 404, description = "`not_found`: the slave is not registered", body = ApiError),
        (status = 500, description = "`internal`: the master log has details", body = ApiError),
    ),
)]
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
