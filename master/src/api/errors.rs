//! The API's error shape (SPEC §4): `{"error": "<code>", "message": "<words>"}`, one
//! table of codes with their status, `Retry-After` on every 503.

use axum::{
    Json,
    extract::rejection::{BytesRejection, PathRejection, QueryRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::{cluster::RegisterError, dispatch::SubmitError, ledger::LedgerError};

/// Seconds a client should wait before retrying a 503.
const RETRY_AFTER_SECONDS: &str = "1";

/// Every error code the API answers with. The body spells it through serde
/// (`rename_all`); [`ErrorCode::as_str`] gives the same words for metric labels and a
/// test holds the two together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    InvalidExpression,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    StaleAttempt,
    NameInUse,
    PayloadTooLarge,
    FullCapacity,
    NoSlaves,
    QueueFull,
    ShuttingDown,
    Unavailable,
    LedgerUnavailable,
    Internal,
}

impl ErrorCode {
    /// Every code, for the test that holds serde and `as_str` together.
    pub const ALL: [Self; 17] = [
        Self::InvalidRequest,
        Self::InvalidExpression,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::Conflict,
        Self::StaleAttempt,
        Self::NameInUse,
        Self::PayloadTooLarge,
        Self::FullCapacity,
        Self::NoSlaves,
        Self::QueueFull,
        Self::ShuttingDown,
        Self::Unavailable,
        Self::LedgerUnavailable,
        Self::Internal,
    ];

    /// The one place a status is chosen for an error.
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest | Self::InvalidExpression => StatusCode::BAD_REQUEST,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict | Self::StaleAttempt | Self::NameInUse => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::FullCapacity
            | Self::NoSlaves
            | Self::QueueFull
            | Self::ShuttingDown
            | Self::Unavailable
            | Self::LedgerUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The code as written in the body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidExpression => "invalid_expression",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict => "conflict",
            Self::StaleAttempt => "stale_attempt",
            Self::NameInUse => "name_in_use",
            Self::PayloadTooLarge => "payload_too_large",
            Self::FullCapacity => "full_capacity",
            Self::NoSlaves => "no_slaves",
            Self::QueueFull => "queue_full",
            Self::ShuttingDown => "shutting_down",
            Self::Unavailable => "unavailable",
            Self::LedgerUnavailable => "ledger_unavailable",
            Self::Internal => "internal",
        }
    }
}

/// An error answer, written as it is serialized: `{"error": "<code>", "message": "<words>"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ApiError {
    #[serde(rename = "error")]
    pub code: ErrorCode,
    /// What went wrong, in words.
    pub message: String,
}

impl ApiError {
    /// An error with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// Our own failure: logged once here (inside the request span), generic to the client.
    pub fn internal(source: impl std::fmt::Display) -> Self {
        tracing::error!(error = %source, "request failed");
        Self::new(ErrorCode::Internal, "internal error; the master log has details")
    }

    /// Bad input of the request's shape.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// A missing task.
    pub fn task_not_found(id: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::NotFound, format!("task {id} not found"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        let mut response = (status, Json(self)).into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS));
        }
        response
    }
}

impl From<LedgerError> for ApiError {
    fn from(error: LedgerError) -> Self {
        match error {
            LedgerError::Unavailable(_) | LedgerError::Closed => {
                tracing::warn!(%error, "write refused: ledger unavailable");
                Self::new(ErrorCode::LedgerUnavailable, error.to_string())
            }
            other => Self::internal(other),
        }
    }
}

impl ErrorCode {
    /// The code a refused submission answers with; also the `reason` label of
    /// `master_tasks_rejected_total`, so the two never disagree.
    pub fn of_submit_error(error: &SubmitError) -> Self {
        match error {
            SubmitError::Ledger(LedgerError::Unavailable(_) | LedgerError::Closed) => Self::LedgerUnavailable,
            SubmitError::Ledger(_) => Self::Internal,
            SubmitError::FullCapacity => Self::FullCapacity,
            SubmitError::NoSlaves | SubmitError::Unreachable(_) => Self::NoSlaves,
            SubmitError::QueueFull(_) => Self::QueueFull,
            SubmitError::ShuttingDown => Self::ShuttingDown,
        }
    }
}

impl From<SubmitError> for ApiError {
    fn from(error: SubmitError) -> Self {
        let code = ErrorCode::of_submit_error(&error);
        match error {
            SubmitError::Ledger(error) => error.into(),
            refused => Self::new(code, refused.to_string()),
        }
    }
}

impl From<RegisterError> for ApiError {
    fn from(error: RegisterError) -> Self {
        match error {
            RegisterError::Ledger(error) => error.into(),
            RegisterError::NameInUse(_) => Self::new(ErrorCode::NameInUse, error.to_string()),
            other => Self::invalid(other.to_string()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(ErrorCode::PayloadTooLarge, "request body is larger than 64 KiB")
        } else {
            Self::invalid(rejection.body_text())
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::invalid(rejection.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::invalid(rejection.body_text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_503_carries_retry_after() {
        for code in [
            ErrorCode::FullCapacity,
            ErrorCode::NoSlaves,
            ErrorCode::QueueFull,
            ErrorCode::ShuttingDown,
            ErrorCode::LedgerUnavailable,
        ] {
            let response = ApiError::new(code, "x").into_response();
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        }
    }

    #[test]
    fn codes_are_written_in_snake_case_the_same_in_bodies_and_labels() {
        assert_eq!(ErrorCode::FullCapacity.as_str(), "full_capacity");
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str(), "{code:?}");
        }
    }
}
