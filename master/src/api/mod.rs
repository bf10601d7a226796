//! The master's HTTP API (SPEC §4): thin handlers that extract, parse, call the
//! cluster and map its answer. No SQL and no outgoing HTTP here.

mod errors;
mod health;
mod openapi;
mod slaves;
mod tasks;

use std::time::{Duration, Instant};

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use common::auth::require_token;
pub use errors::{ApiError, ErrorCode};
use serde::de::DeserializeOwned;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::{cluster::Cluster, metrics::Route};

/// Request bodies above this are refused with 413 (SPEC §8).
pub const BODY_LIMIT: usize = 64 * 1024;
/// Longest a request may take; long polls end well before it (`wait` ≤ 60 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(75);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub cluster: Cluster,
}

/// All routes of the master.
pub fn router(state: AppState) -> Router {
    let token = state.cluster.config().token.clone();
    // Slave↔master calls and admin calls need the cluster token (SPEC §8); the check is
    // a route_layer, so it runs before any extractor reads the body.
    let protected = Router::new()
        .route("/tasks/{id}/result", post(tasks::record_result))
        .route("/results", post(tasks::record_results))
        .route("/slaves", post(slaves::register))
        .route("/slaves/{id}", axum::routing::delete(slaves::deregister))
        .route("/slaves/{id}/heartbeat", post(slaves::heartbeat))
        .route_layer(middleware::from_fn_with_state(token.clone(), require_token));
    let cancel = Router::new()
        .route("/tasks/{id}", axum::routing::delete(tasks::cancel))
        .route_layer(middleware::from_fn_with_state(token, require_token));
    Router::new()
        .route("/", get(crate::dashboard::page))
        .route("/tasks", post(tasks::submit).get(tasks::list))
        .route("/get-tasks", get(tasks::list_alias))
        .route("/tasks/{id}", get(tasks::show))
        .route("/tasks/{id}/events", get(tasks::events))
        .route("/slaves", get(slaves::list))
        .route("/healthz", get(health::healthz))
        .route("/activity", get(health::activity))
        .route("/masters", get(health::masters))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(protected)
        .merge(cancel)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.clone(), track_request))
        .layer(middleware::from_fn(time_limit))
        // Added last = outermost: every event of a request sits in its span. A 5xx such
        // as full_capacity is an answer, not a failure; our real failures are logged by
        // `ApiError::internal`.
        .layer(TraceLayer::new_for_http().on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)))
        .with_state(state)
}

/// Ends a request that runs past [`REQUEST_TIMEOUT`] with a 503 in the error shape (so
/// graceful shutdown can never hang on one request).
async fn time_limit(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_elapsed) => {
            let message = format!("the request took longer than {} s", REQUEST_TIMEOUT.as_secs());
            ApiError::new(ErrorCode::Unavailable, message).into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route; see GET /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this route")
}

/// Records each request's latency by route template (never by raw path: bounded labels).
async fn track_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let response = next.run(request).await;
    let label = Route { method, route, status: response.status().as_u16() };
    state.cluster.metrics().request_seconds.get_or_create(&label).observe(started.elapsed().as_secs_f64());
    response
}

/// A JSON body read whatever its `Content-Type` (so `curl -d` works), with every
/// rejection in the API's error shape: 413 past the body limit, 400 otherwise.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state).await?;
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|error| ApiError::invalid(format!("request body is not valid JSON: {error}")))?;
        // serde would take `["2+2"]` for a struct (fields by position); we take objects only.
        if !value.is_object() {
            return Err(ApiError::invalid("request body must be a JSON object"));
        }
        T::deserialize(value)
            .map(Json)
            .map_err(|error| ApiError::invalid(format!("request body does not fit this route: {error}")))
    }
}

impl<T: serde::Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A path parameter whose rejection speaks the API's error shape.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct Path<T>(pub T);

/// Query parameters whose rejection speaks the API's error shape.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct Query<T>(pub T);
