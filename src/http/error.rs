//! The one client-facing error of the HTTP routes: `{"error": "...", "code": "..."}` with a 4xx
//! for client mistakes and an opaque 503 for storage trouble (details go to the log, not to the
//! client), and how the engine's and the limiter's refusals map to it.

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::engine::{LoginError, Unavailable};
use crate::limits::{Limit, Limited, Refused};
use crate::protocol::{ErrorBody, ErrorCode};

/// A client-facing error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: ErrorCode,
    message: String,
    /// `Retry-After`, in seconds.
    retry_after: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after: None }
    }
    /// The same error with `Retry-After: secs`: the client should ask again then.
    pub(crate) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
    pub(crate) fn user_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, ErrorCode::UserNotFound, "user not found")
    }
}

impl From<Unavailable> for ApiError {
    fn from(e: Unavailable) -> Self {
        tracing::warn!(error = %e, "request failed: storage unavailable");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable, "service unavailable, retry later")
    }
}

impl From<LoginError> for ApiError {
    fn from(e: LoginError) -> Self {
        let (limited, message) = match e {
            LoginError::TooManyUnused { retry_after } => (
                Limited { limit: Limit::UnusedRegistrations, retry_after },
                "too many registrations from this address were never used; retry later",
            ),
            LoginError::DirectoryShare => (
                Limited { limit: Limit::Registrations, retry_after: Duration::from_secs(3600) },
                "this network has registered too many users lately; retry later",
            ),
            LoginError::Unavailable(e) => return e.into(),
        };
        limited.limit.refused();
        let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, message);
        error.retry_after = Some(limited.retry_after_secs());
        error
    }
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Limited(limited) => {
                let mut error =
                    Self::new(StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, "too many requests; retry later");
                error.retry_after = Some(limited.retry_after_secs());
                error
            }
            Refused::Unavailable(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, Json(ErrorBody { error: self.message, code: Some(self.code.into()) })).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}
