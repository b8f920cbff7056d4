//! How errors look on the wire: `{"error": {"code": "...", "message": "..."}}` with the
//! status that [`helix_core::Error`] decides. Request-parsing failures of axum are
//! turned into the same shape here, so no client ever sees a plain-text error; request
//! bodies are read by one rule ([`Json`]).

use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use helix_core::{Error, ErrorKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use utoipa::ToSchema;

/// An error as the REST API answers it.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        Self(error)
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        Self(Error::from(status))
    }
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `not_found`, `version_conflict`, `malformed_json`, ...
    pub code: String,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.0.http_status();
        if status.is_server_error() {
            tracing::warn!(code = self.0.code(), message = self.0.message(), "request failed");
        }
        let body =
            ErrorBody { error: ErrorDetail { code: self.0.code().to_owned(), message: self.0.message().to_owned() } };
        let mut response = (status, axum::Json(body)).into_response();
        if status == http::StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// A JSON request body, read by one rule on every route of ours (the OpenAI- and
/// Anthropic-compatible routes read theirs as those APIs do, `llm.rs`):
///
/// - an empty body, with or without `Content-Type: application/json`, is `{}`: an action
///   route whose body is optional (`POST /api/v1/jobs/{id}/retry`) answers an empty POST
///   as it answers `{}`, and a route with required fields names the first one missing;
/// - any other body must be `Content-Type: application/json` (415) and JSON (400
///   `malformed_json`);
/// - a field the route does not take is 422 `unknown_field` naming it, before any other
///   complaint about the body's shape, so nothing a client sends is silently dropped
///   (every body type is `deny_unknown_fields`); then a missing field or a value of the
///   wrong type is 422 `invalid_body` naming where.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json_type = is_json(req.headers());
        let body = axum::body::Bytes::from_request(req, state).await.map_err(|r| ApiError(body_rejection(r)))?;
        if !json_type && !is_blank(&body) {
            return Err(ApiError(Error::new(
                ErrorKind::UnsupportedMediaType,
                "unsupported_media_type",
                "the body must be JSON with Content-Type: application/json",
            )));
        }
        decode(&body).map(Self).map_err(ApiError)
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// `application/json`, or a `+json` type.
fn is_json(headers: &http::HeaderMap) -> bool {
    let Some(value) = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}

fn is_blank(body: &[u8]) -> bool {
    body.iter().all(u8::is_ascii_whitespace)
}

fn body_rejection(rejection: BytesRejection) -> Error {
    let message = rejection.body_text();
    if message.contains("length limit") {
        Error::new(
            ErrorKind::PayloadTooLarge,
            "payload_too_large",
            "the request body is larger than this server accepts",
        )
    } else {
        Error::invalid("invalid_body", message)
    }
}

/// A request body as `T` by the rule of [`Json`] (an empty body is `{}`, unknown fields
/// first), for handlers that read the body themselves.
pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, Error> {
    let body: &[u8] = if is_blank(body) { b"{}" } else { body };
    let mut de = serde_json::Deserializer::from_slice(body);
    let error = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(value) => match de.end() {
            Ok(()) => return Ok(value),
            Err(e) => return Err(Error::invalid("malformed_json", format!("the body is not valid JSON: {e}"))),
        },
        Err(error) => error,
    };
    if error.inner().is_syntax() || error.inner().is_eof() {
        return Err(Error::invalid("malformed_json", format!("the body is not valid JSON: {}", error.inner())));
    }
    if let Some(unknown) = unknown_field(&error) {
        return Err(unknown);
    }
    // the first complaint was another (a missing field, a value of the wrong type): an
    // unknown field elsewhere in the body is still named first. Each top-level field is
    // tried alone, so serde meets it before anything else.
    if let Ok(serde_json::Value::Object(fields)) = serde_json::from_slice::<serde_json::Value>(body) {
        for (name, value) in fields {
            let alone = serde_json::Value::Object([(name, value)].into_iter().collect());
            if let Err(e) = serde_path_to_error::deserialize::<_, T>(alone)
                && let Some(unknown) = unknown_field(&e)
            {
                return Err(unknown);
            }
        }
    }
    Err(Error::new(ErrorKind::Unprocessable, "invalid_body", format!("the body does not fit: {}", located(&error))))
}

/// The error's message without serde_json's "at line 1 column 9", after its path.
fn located<E: std::fmt::Display>(error: &serde_path_to_error::Error<E>) -> String {
    let message = without_position(&error.inner().to_string()).to_owned();
    match error.path().to_string().as_str() {
        "." => message,
        path => format!("{path}: {message}"),
    }
}

fn without_position(message: &str) -> &str {
    message.rfind(" at line ").map_or(message, |at| &message[..at])
}

/// 422 `unknown_field` when `error` is serde's "unknown field", naming the field by its
/// path in the body and the fields the route takes there.
fn unknown_field<E: std::fmt::Display>(error: &serde_path_to_error::Error<E>) -> Option<Error> {
    let message = error.inner().to_string();
    let rest = message.strip_prefix("unknown field `")?;
    let (name, rest) = rest.split_once('`')?;
    let expected = without_position(rest).trim_start_matches(", ");
    // the path ends at the object holding the field, or at the field itself
    let field = match error.path().to_string().as_str() {
        "." => name.to_owned(),
        p if p == name || p.ends_with(&format!(".{name}")) => p.to_owned(),
        p => format!("{p}.{name}"),
    };
    Some(Error::new(
        ErrorKind::Unprocessable,
        "unknown_field",
        format!("unknown field `{field}`: this route does not take it ({expected})"),
    ))
}

/// `axum::extract::Query` whose rejections are [`ApiError`]s.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|r: QueryRejection| ApiError(Error::invalid("invalid_query", r.body_text())))
    }
}

/// `axum::extract::Path` whose rejections are [`ApiError`]s.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Self(p.0))
            .map_err(|r: PathRejection| ApiError(Error::invalid("invalid_path", r.body_text())))
    }
}

pub async fn not_found() -> ApiError {
    ApiError(Error::new(ErrorKind::NotFound, "route_not_found", "no such route"))
}

pub async fn method_not_allowed() -> ApiError {
    ApiError(Error::new(ErrorKind::MethodNotAllowed, "method_not_allowed", "this route does not take that method"))
}

/// A server-sent event of a stream, or `event: error` with the error body when the
/// stream failed (or the event would not serialise).
pub fn sse_event(
    event: Result<Result<axum::response::sse::Event, axum::Error>, tonic::Status>,
) -> axum::response::sse::Event {
    use axum::response::sse::Event;
    match event {
        Ok(Ok(event)) => event,
        Ok(Err(_)) => Event::default().event("error").data("unserialisable progress"),
        Err(status) => {
            let error = Error::from(status);
            Event::default()
                .event("error")
                .json_data(serde_json::json!({"error": {"code": error.code(), "message": error.message()}}))
                .unwrap_or_else(|_| Event::default().event("error"))
        }
    }
}
