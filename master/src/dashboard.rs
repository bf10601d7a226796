//! The dashboard at `GET /` (SPEC §9): one self-contained page, compiled into the binary.
//!
//! Plain HTML, CSS and JS with no build step and nothing fetched from elsewhere, so it
//! works offline. The page polls `GET /slaves` and `GET /tasks` about once a second and
//! submits through `POST /tasks`; it inserts everything it shows as text, never as HTML.

use axum::{
    http::header,
    response::{Html, IntoResponse},
};

/// The page, embedded at compile time.
const PAGE: &str = include_str!("dashboard.html");

/// The page may load nothing but itself and talk to nothing but this master.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; img-src data:; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// `GET /`: the dashboard page as `text/html; charset=utf-8`.
#[utoipa::path(
    get,
    path = "/",
    operation_id = "dashboard",
    tag = "operations",
    responses((status = 200, description = "The dashboard: slaves, tasks and a submit form", body = String,
        content_type = "text/html")),
)]
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Html(PAGE),
    )
}
