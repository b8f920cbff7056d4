//! How errors look on the wire: `{"error": {"code": "...", "message": "..."}}` with the
//! status that [`helix_core::Error`] decides. Request-parsing failures of axum are
//! turned into the same shape here, so no client ever sees a plain-text error.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
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

/// `axum::Json` whose rejections are [`ApiError`]s.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(ApiError(json_rejection(rejection))),
        }
    }
}

/// `Option<Json<T>>`: no body (no `Content-Type`) is `None`, any body must be JSON.
impl<T: DeserializeOwned, S: Send + Sync> axum::extract::OptionalFromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Option<Self>, Self::Rejection> {
        if !req.headers().contains_key(axum::http::header::CONTENT_TYPE) {
            return Ok(None);
        }
        <Self as FromRequest<S>>::from_request(req, state).await.map(Some)
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

fn json_rejection(rejection: JsonRejection) -> Error {
    let message = rejection.body_text();
    match rejection {
        JsonRejection::MissingJsonContentType(_) => Error::new(
            ErrorKind::UnsupportedMediaType,
            "unsupported_media_type",
            "the body must be JSON with Content-Type: application/json",
        ),
        JsonRejection::JsonSyntaxError(_) => Error::invalid("malformed_json", message),
        JsonRejection::JsonDataError(_) => Error::new(ErrorKind::Unprocessable, "invalid_body", message),
        JsonRejection::BytesRejection(_) if message.contains("length limit") => Error::new(
            ErrorKind::PayloadTooLarge,
            "payload_too_large",
            "the request body is larger than this server accepts",
        ),
        _ => Error::invalid("invalid_body", message),
    }
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
