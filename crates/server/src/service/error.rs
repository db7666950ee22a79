//! The service core's one error type. The gRPC and REST edges each map [`ErrorKind`] in exactly one
//! function (`grpc::status` and `rest::error_response`).

use std::fmt;

/// What went wrong, as the edges need to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Missing or invalid credentials (401 / UNAUTHENTICATED).
    Unauthenticated,
    /// The caller sees the cluster but may not download the asset (403 / PERMISSION_DENIED).
    Forbidden,
    /// Unknown cluster, or one the caller may not see (404 / NOT_FOUND).
    NotFound,
    /// The request itself is invalid (400 / INVALID_ARGUMENT).
    BadRequest,
    /// Too many requests in flight (429 / RESOURCE_EXHAUSTED).
    TooManyRequests,
    /// The cluster's record is unusable, or the service is shutting down (503 / UNAVAILABLE).
    Unavailable,
    /// The call did not complete within `--request-timeout` (504 / DEADLINE_EXCEEDED).
    Timeout,
    /// A REST path exists but not for this HTTP method (405; gRPC has no such case).
    MethodNotAllowed,
    /// A bug or an unexpected failure (500 / INTERNAL); the client gets no detail.
    Internal,
}

impl ErrorKind {
    /// Every kind, for documents and tests that must cover them all.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::Unauthenticated,
        ErrorKind::Forbidden,
        ErrorKind::NotFound,
        ErrorKind::BadRequest,
        ErrorKind::TooManyRequests,
        ErrorKind::Unavailable,
        ErrorKind::Timeout,
        ErrorKind::MethodNotAllowed,
        ErrorKind::Internal,
    ];

    /// The Palette error code string (docs/api.md, "Errors").
    pub const fn palette_code(self) -> &'static str {
        match self {
            ErrorKind::Unauthenticated => "Unauthorized",
            ErrorKind::Forbidden => "OperationForbidden",
            ErrorKind::NotFound => "ResourceNotFound",
            ErrorKind::BadRequest => "BadRequest",
            ErrorKind::TooManyRequests => "TooManyRequests",
            ErrorKind::Unavailable => "ServiceUnavailable",
            ErrorKind::Timeout => "RequestTimeout",
            ErrorKind::MethodNotAllowed => "MethodNotAllowed",
            ErrorKind::Internal => "InternalError",
        }
    }
}

/// An error from the service core: a kind, a message safe to show the caller, and for denials the
/// policy's reason code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreError {
    kind: ErrorKind,
    message: String,
    reason: Option<&'static str>,
}

/// The Palette code a call's outcome is counted under (`OK` for success).
pub fn code_of<T>(result: &Result<T, CoreError>) -> &'static str {
    result
        .as_ref()
        .map_or_else(|e| e.kind().palette_code(), |_| "OK")
}

impl CoreError {
    /// A call that did not complete within `limit` (`--request-timeout`).
    pub fn timeout(limit: std::time::Duration) -> Self {
        CoreError::new(
            ErrorKind::Timeout,
            format!(
                "the call did not complete within {}",
                humantime::format_duration(limit)
            ),
        )
    }

    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CoreError {
            kind,
            message: message.into(),
            reason: None,
        }
    }

    pub fn unauthenticated() -> Self {
        CoreError::new(ErrorKind::Unauthenticated, "missing or invalid credentials")
    }

    pub fn not_found(uid: &str) -> Self {
        CoreError::new(ErrorKind::NotFound, format!("cluster {uid} not found"))
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        CoreError::new(ErrorKind::BadRequest, message)
    }

    pub fn forbidden(reason: &'static str, message: impl Into<String>) -> Self {
        CoreError {
            kind: ErrorKind::Forbidden,
            message: message.into(),
            reason: Some(reason),
        }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The policy's deny code, for denials.
    pub fn reason(&self) -> Option<&'static str> {
        self.reason
    }
}

impl fmt::Display for CoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.palette_code(), self.message)
    }
}

impl std::error::Error for CoreError {}
