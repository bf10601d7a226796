//! The slave's HTTP API (SPEC §5). Offers (one, or several in one `POST /offers`) and
//! drops need the cluster token; the availability probe is public, like a health check.

use axum::{
    Json, Router,
    extract::{Path, Query, State, rejection::JsonRejection},
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};

use common::{
    auth::require_token,
    eval,
    protocol::{Availability, ErrorBody, MAX_OFFERS_PER_REQUEST, Offer, OfferAnswers, Offers, Outcome},
};

use crate::{SlaveState, metrics::Outcome as MetricOutcome, slots::Reservation};

/// Request bodies above this are refused with 413 (SPEC §8).
pub const BODY_LIMIT: usize = 64 * 1024;

/// The slave's routes.
pub fn router(state: SlaveState) -> Router {
    let protected = Router::new()
        .route("/tasks", post(offer))
        .route("/offers", post(offers))
        .route("/tasks/{id}", delete(drop_task))
        // route_layer: the token is checked before any extractor reads the body.
        .route_layer(middleware::from_fn_with_state(state.token.clone(), require_token));
    Router::new()
        .route("/availability", get(availability))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .merge(protected)
        .layer(axum::extract::DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state.request_timeout, time_limit))
        .with_state(state)
}

/// Ends a request that runs past the request timeout (a body trickled a byte a second
/// holds a connection forever otherwise) with a 503 in the error shape; the connection
/// is closed after it, since the rest of the body was never read.
async fn time_limit(
    State(limit): State<std::time::Duration>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_elapsed) => {
            let message = format!("the request took longer than {limit:?}");
            error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
        }
    }
}

async fn availability(State(state): State<SlaveState>) -> Json<Availability> {
    let slots = &state.slots;
    let availability = Availability::new(slots.is_available(), slots.running(), slots.capacity());
    Json(Availability { instance: Some(state.instance.to_string()), ..availability })
}

/// Prometheus text format.
async fn metrics(State(state): State<SlaveState>) -> Response {
    let running = i64::try_from(state.slots.running()).unwrap_or(i64::MAX);
    state.metrics.running.set(running);
    let content_type = [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")];
    (content_type, state.metrics.render()).into_response()
}

/// "Are you available?" and the assignment in one step: 202 with the slot reserved, or 409.
async fn offer(State(state): State<SlaveState>, body: Result<Json<Offer>, JsonRejection>) -> Response {
    let Json(offer) = match body {
        Ok(body) => body,
        Err(rejection) => return error(rejection.status(), "invalid_request", rejection.body_text()),
    };
    state.metrics.offer_requests.inc();
    let answer = take_offer(&state, offer);
    let status = if answer.available { StatusCode::ACCEPTED } else { StatusCode::CONFLICT };
    (status, Json(answer)).into_response()
}

/// Several offers in one request, taken in the order sent while there is room: each
/// answered as [`offer`] would answer it, in one 200 list.
async fn offers(State(state): State<SlaveState>, body: Result<Json<Offers>, JsonRejection>) -> Response {
    let Json(Offers { offers }) = match body {
        Ok(body) => body,
        Err(rejection) => return error(rejection.status(), "invalid_request", rejection.body_text()),
    };
    if !(1..=MAX_OFFERS_PER_REQUEST).contains(&offers.len()) {
        let message = format!("{} offers; one request carries 1 to {MAX_OFFERS_PER_REQUEST}", offers.len());
        return error(StatusCode::BAD_REQUEST, "invalid_request", message);
    }
    state.metrics.offer_requests.inc();
    let answers = offers.into_iter().map(|offer| take_offer(&state, offer)).collect();
    Json(OfferAnswers { answers }).into_response()
}

/// Reserves a slot for `offer` and starts it, or says the slave is full.
fn take_offer(state: &SlaveState, offer: Offer) -> Availability {
    let capacity = state.slots.capacity();
    let (reservation, cancel) = state.slots.reserve(offer.task_id, offer.attempt);
    let answer = if matches!(reservation, Reservation::Full { .. }) { "refused" } else { "accepted" };
    state.metrics.offers.get_or_create(&MetricOutcome { outcome: answer }).inc();
    match reservation {
        Reservation::Reserved { running } => {
            tracing::debug!(task_id = offer.task_id, attempt = offer.attempt, "offer accepted");
            let run_state = state.clone();
            state.runs.spawn(async move { run(run_state, offer, cancel).await });
            Availability::new(true, running, capacity)
        }
        Reservation::AlreadyHeld { running } => Availability::new(true, running, capacity),
        Reservation::Full { running } => Availability::new(false, running, capacity),
    }
}

/// Runs one task: the simulated work, the evaluation, then the report to the master.
#[tracing::instrument(name = "run", skip_all, fields(task_id = offer.task_id, attempt = offer.attempt))]
async fn run(state: SlaveState, offer: Offer, cancel: tokio_util::sync::CancellationToken) {
    let delay = std::time::Duration::from_millis(offer.delay_ms);
    if !delay.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = cancel.cancelled() => return,
        }
    }
    let started = std::time::Instant::now();
    let outcome = match eval::evaluate(&offer.expression, &offer.variables) {
        Ok(value) => Outcome::Value(value),
        Err(error) => Outcome::Error(error.to_string()),
    };
    state.metrics.eval_seconds.observe(started.elapsed().as_secs_f64());
    let kind = if matches!(outcome, Outcome::Value(_)) { "value" } else { "error" };
    state.metrics.tasks_finished.get_or_create(&MetricOutcome { outcome: kind }).inc();
    state.slots.finish_running(offer.task_id, offer.attempt);
    tokio::select! {
        () = state.reporter.deliver_result(offer.task_id, offer.attempt, outcome) => {}
        () = cancel.cancelled() => {}
    }
    state.slots.release(offer.task_id, offer.attempt);
}

/// `DELETE /tasks/{id}` query: the attempt to drop; without it, whatever is held.
#[derive(Debug, serde::Deserialize)]
struct DropParams {
    attempt: Option<i64>,
}

/// The master cancelled the task (or gave up on an attempt): stop it and forget it.
async fn drop_task(
    State(state): State<SlaveState>,
    Path(id): Path<i64>,
    Query(params): Query<DropParams>,
) -> Response {
    if state.slots.drop_task(id, params.attempt) {
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, "not_found", format!("task {id} is not held by this slave"))
    }
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(ErrorBody { error: code.to_owned(), message })).into_response()
}
