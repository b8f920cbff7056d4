//! What the OpenAPI document says about answers no handler writes itself: the layers in
//! front of every route (keys, scopes, per-key limits, the body limit, load shedding,
//! deadlines) and the extractors' rejections. One [`utoipa::Modify`] adds them to every
//! operation they apply to, so a handler's annotation lists only its own outcomes and
//! the document still names every status a route can answer (schemathesis checks that
//! every status answered is documented: `hx/tests/e2e/schema.rs`). The same pass gives
//! server-sent events their per-event schema and success answers the `RateLimit-*`
//! headers.

use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, Type};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response, ResponseBuilder};

/// Adds the shared responses (as `components.responses`, referenced by status) to every
/// operation they apply to; an operation that documents a status itself keeps its own.
pub struct SharedResponses;

/// (component name, status, description, headers) of each shared answer.
const SHARED: [(&str, &str, &str, &[&str]); 9] = [
    ("BadRequest", "400", "malformed JSON, or a query or path parameter that does not parse", &[]),
    ("Unauthorized", "401", "no API key, or one that is malformed, unknown, revoked or expired", &["WWW-Authenticate"]),
    ("Forbidden", "403", "the key lacks the scope this route needs, or the namespace is not its own", &[]),
    ("PayloadTooLarge", "413", "the body is larger than `gateway.max_body_bytes`", &[]),
    ("UnsupportedMediaType", "415", "a body that is not `Content-Type: application/json`", &[]),
    (
        "Unprocessable",
        "422",
        "JSON of the wrong shape: `unknown_field` for a field the route does not take (named, and checked \
         first), `invalid_body` for a missing field or a value of the wrong type",
        &[],
    ),
    (
        "TooManyRequests",
        "429",
        "the key's request rate limit is spent; retry after `Retry-After` seconds",
        &["Retry-After", RATE_LIMIT_HEADERS[0], RATE_LIMIT_HEADERS[1], RATE_LIMIT_HEADERS[2]],
    ),
    (
        "Unavailable",
        "503",
        "the gateway sheds load, or a service it needs is unreachable; retry after `Retry-After` seconds when sent",
        &["Retry-After"],
    ),
    ("Timeout", "504", "the service answering did not answer within the deadline", &[]),
];

/// Sent with every answer to a key that has a request rate limit (`ratelimit.rs`).
const RATE_LIMIT_HEADERS: [&str; 3] = ["RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"];

impl utoipa::Modify for SharedResponses {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, _, description, headers) in SHARED {
            components.responses.insert(name.to_owned(), RefOr::T(error_response(description, headers)));
        }
        components.schemas.insert(SSE_EVENT.to_owned(), RefOr::T(sse_event()));
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
                &mut item.head,
                &mut item.options,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                let secured = is_secured(operation);
                for (status, response) in operation.responses.responses.iter_mut() {
                    let RefOr::T(response) = response else { continue };
                    if let Some(stream) = response.content.get_mut("text/event-stream") {
                        stream.schema = Some(RefOr::Ref(Ref::from_schema_name(SSE_EVENT)));
                    }
                    // a key with a request rate limit learns where it stands from every answer
                    if secured && status.starts_with('2') {
                        for name in RATE_LIMIT_HEADERS {
                            response.headers.insert(name.to_owned(), header(name));
                        }
                    }
                }
                for status in applicable(operation) {
                    let Some((name, ..)) = SHARED.iter().find(|(_, s, ..)| *s == status) else { continue };
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert_with(|| RefOr::Ref(Ref::from_response_name(*name)));
                }
            }
        }
    }
}

/// The schema of one server-sent event: in OpenAPI 3.1 the schema of a
/// `text/event-stream` describes each event, not the stream.
const SSE_EVENT: &str = "SseEvent";

fn sse_event() -> Schema {
    let text = |description: &str| ObjectBuilder::new().schema_type(Type::String).description(Some(description));
    ObjectBuilder::new()
        .description(Some(
            "One server-sent event: `progress`, whose data is the JSON the operation names, or `error`, \
             whose data is an ErrorBody and which ends the stream",
        ))
        .property("event", ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["progress", "error"])))
        .required("event")
        .property("data", text("JSON"))
        .required("data")
        .property("id", text("the event's sequence, where the stream has one: `Last-Event-ID` resumes after it"))
        .build()
        .into()
}

/// The shared statuses `operation` can answer.
fn applicable(operation: &Operation) -> Vec<&'static str> {
    // load shedding and the deadline to the response head are in front of every route
    let mut statuses = vec!["503", "504"];
    if is_secured(operation) {
        statuses.extend(["401", "403", "429"]);
    }
    let parameters = operation.parameters.as_deref().unwrap_or_default();
    if operation.request_body.is_some()
        || parameters.iter().any(|p| matches!(p.parameter_in, ParameterIn::Query | ParameterIn::Path))
    {
        statuses.push("400");
    }
    if operation.request_body.is_some() {
        statuses.extend(["413", "415", "422"]);
    }
    statuses
}

/// Whether the operation is behind the key check: every route but /health, /ready and
/// the pairing confirmation, whose `security(())` is one empty requirement.
fn is_secured(operation: &Operation) -> bool {
    let requirements = operation.security.as_deref().unwrap_or_default();
    requirements.iter().any(|r| serde_json::to_value(r).is_ok_and(|v| v.as_object().is_some_and(|o| !o.is_empty())))
}

fn error_response(description: &str, headers: &[&str]) -> Response {
    let mut response = ResponseBuilder::new()
        .description(description)
        .content("application/json", Content::new(Some(Ref::from_schema_name("ErrorBody"))));
    for name in headers {
        response = response.header(*name, header(name));
    }
    response.build()
}

fn header(name: &str) -> Header {
    let (kind, description) = match name {
        "WWW-Authenticate" => (Type::String, "`Bearer`"),
        "Retry-After" => (Type::Integer, "seconds until a retry can succeed"),
        "RateLimit-Limit" => (Type::Integer, "requests per minute the key may make"),
        "RateLimit-Remaining" => (Type::Integer, "requests left in this window"),
        "RateLimit-Reset" => {
            (Type::Integer, "seconds until a request is admitted again (after a 429) or the allowance is full")
        }
        _ => (Type::String, ""),
    };
    HeaderBuilder::new().schema(Object::with_type(kind)).description(Some(description)).build()
}
