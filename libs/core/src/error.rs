//! The one error type that crosses service boundaries.
//!
//! An error has a kind (which decides the HTTP status and the gRPC code) and a stable,
//! machine-readable `code` string that clients match on. This module is the only place
//! that maps errors to HTTP statuses and to gRPC statuses, and back.

use std::borrow::Cow;

use http::StatusCode;
use tonic::Code;

/// gRPC metadata entry carrying [`Error::code`] across a service boundary.
pub const ERROR_CODE_METADATA: &str = "x-helix-error-code";

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The code of every [`ErrorKind::BudgetExceeded`] error.
pub const BUDGET_EXCEEDED: &str = "budget_exceeded";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed: bad syntax, a bad id, an invalid field value.
    InvalidArgument,
    /// The request is well-formed JSON of the wrong shape: a missing field, a wrong type.
    Unprocessable,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    /// The write lost a race: a stale version, an id that already exists.
    Conflict,
    /// The target is not in a state that allows the operation: a job that is not
    /// failed cannot be retried, a worker whose lease lapsed cannot complete the job.
    FailedPrecondition,
    PayloadTooLarge,
    UnsupportedMediaType,
    MethodNotAllowed,
    RateLimited,
    /// A spending cap refuses the call (HTTP 402); nothing was sent upstream.
    BudgetExceeded,
    Unimplemented,
    /// A dependency (database, bus, another service) cannot be reached right now.
    Unavailable,
    Timeout,
    Internal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    kind: ErrorKind,
    code: Cow<'static, str>,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self { kind, code: code.into(), message: message.into() }
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, code, message)
    }

    pub fn not_found(what: &str, id: impl std::fmt::Display) -> Self {
        Self::new(ErrorKind::NotFound, "not_found", format!("{what} {id} not found"))
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, code, message)
    }

    pub fn failed_precondition(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::FailedPrecondition, code, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, "unavailable", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, "internal", message)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn code(&self) -> &str {
        &self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn http_status(&self) -> StatusCode {
        match self.kind {
            ErrorKind::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorKind::Unprocessable => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorKind::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorKind::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorKind::NotFound => StatusCode::NOT_FOUND,
            ErrorKind::Conflict | ErrorKind::FailedPrecondition => StatusCode::CONFLICT,
            ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorKind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorKind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::BudgetExceeded => StatusCode::PAYMENT_REQUIRED,
            ErrorKind::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorKind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn grpc_code(&self) -> Code {
        match self.kind {
            ErrorKind::InvalidArgument
            | ErrorKind::Unprocessable
            | ErrorKind::UnsupportedMediaType
            | ErrorKind::MethodNotAllowed => Code::InvalidArgument,
            ErrorKind::PayloadTooLarge => Code::OutOfRange,
            ErrorKind::Unauthenticated => Code::Unauthenticated,
            ErrorKind::PermissionDenied => Code::PermissionDenied,
            ErrorKind::NotFound => Code::NotFound,
            ErrorKind::Conflict => Code::Aborted,
            ErrorKind::FailedPrecondition => Code::FailedPrecondition,
            ErrorKind::RateLimited | ErrorKind::BudgetExceeded => Code::ResourceExhausted,
            ErrorKind::Unimplemented => Code::Unimplemented,
            ErrorKind::Unavailable => Code::Unavailable,
            ErrorKind::Timeout => Code::DeadlineExceeded,
            ErrorKind::Internal => Code::Internal,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let mut status = tonic::Status::new(error.grpc_code(), error.message);
        if let Ok(value) = error.code.parse() {
            status.metadata_mut().insert(ERROR_CODE_METADATA, value);
        }
        status
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let kind = match status.code() {
            Code::InvalidArgument => ErrorKind::InvalidArgument,
            Code::FailedPrecondition => ErrorKind::FailedPrecondition,
            Code::OutOfRange => ErrorKind::PayloadTooLarge,
            Code::Unauthenticated => ErrorKind::Unauthenticated,
            Code::PermissionDenied => ErrorKind::PermissionDenied,
            Code::NotFound => ErrorKind::NotFound,
            Code::Aborted | Code::AlreadyExists => ErrorKind::Conflict,
            Code::ResourceExhausted => ErrorKind::RateLimited,
            Code::Unimplemented => ErrorKind::Unimplemented,
            Code::Unavailable | Code::Cancelled => ErrorKind::Unavailable,
            Code::DeadlineExceeded => ErrorKind::Timeout,
            Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => ErrorKind::Internal,
        };
        let code = status
            .metadata()
            .get(ERROR_CODE_METADATA)
            .and_then(|value| value.to_str().ok())
            .map(|code| Cow::Owned(code.to_owned()))
            .unwrap_or_else(|| Cow::Borrowed(default_code(kind)));
        // two kinds share RESOURCE_EXHAUSTED; the stable code tells them apart
        let kind = match (kind, code.as_ref()) {
            (ErrorKind::RateLimited, BUDGET_EXCEEDED) => ErrorKind::BudgetExceeded,
            _ => kind,
        };
        Self { kind, code, message: status.message().to_owned() }
    }
}

fn default_code(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidArgument => "invalid_argument",
        ErrorKind::Unprocessable => "unprocessable",
        ErrorKind::Unauthenticated => "unauthenticated",
        ErrorKind::PermissionDenied => "permission_denied",
        ErrorKind::NotFound => "not_found",
        ErrorKind::Conflict => "conflict",
        ErrorKind::FailedPrecondition => "failed_precondition",
        ErrorKind::PayloadTooLarge => "payload_too_large",
        ErrorKind::UnsupportedMediaType => "unsupported_media_type",
        ErrorKind::MethodNotAllowed => "method_not_allowed",
        ErrorKind::RateLimited => "rate_limited",
        ErrorKind::BudgetExceeded => BUDGET_EXCEEDED,
        ErrorKind::Unimplemented => "unimplemented",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Timeout => "timeout",
        ErrorKind::Internal => "internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_grpc_round_trip() {
        let cases = [
            (Error::invalid("invalid_id", "bad id"), StatusCode::BAD_REQUEST),
            (Error::not_found("node", "x"), StatusCode::NOT_FOUND),
            (Error::conflict("version_conflict", "stale"), StatusCode::CONFLICT),
            (Error::failed_precondition("lease_lost", "not yours"), StatusCode::CONFLICT),
            (Error::unavailable("db down"), StatusCode::SERVICE_UNAVAILABLE),
            (Error::internal("boom"), StatusCode::INTERNAL_SERVER_ERROR),
            (Error::new(ErrorKind::BudgetExceeded, BUDGET_EXCEEDED, "cap"), StatusCode::PAYMENT_REQUIRED),
            (Error::new(ErrorKind::RateLimited, "rate_limited", "slow down"), StatusCode::TOO_MANY_REQUESTS),
        ];
        for (error, http) in cases {
            let back = Error::from(tonic::Status::from(error.clone()));
            assert_eq!(back.kind(), error.kind());
            assert_eq!(back.code(), error.code());
            assert_eq!(back.message(), error.message());
            assert_eq!(back.http_status(), http);
        }
    }
}
