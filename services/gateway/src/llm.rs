//! The LLM doors: OpenAI-compatible `/v1/chat/completions` and `/v1/models`,
//! Anthropic-compatible `/v1/messages`, the original system's `/api/generate` and
//! `/api/budget` — each translated to and from the llm-router's gRPC calls.
//!
//! Errors on `/v1/*` take the shape those clients parse: OpenAI's
//! `{"error": {"message", "type", "param", "code"}}` (which keeps our `code` and
//! `message`), and Anthropic's `{"type": "error", "error": {"type", "message"}}` on
//! `/v1/messages` (with our `code` beside). Streams are server-sent events exactly as
//! each API sends them; a call that fails before its first token is an HTTP error, one
//! that fails after it ends with an error event and without the end marker, so a
//! client never takes a cut answer for a whole one.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Instant;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use helix_core::{Error, ErrorKind};
use helix_proto::v1 as pb;
use pb::generate_stream_event::Event as StreamEvent;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::ApiKeyId;

fn key_id(key: Option<Extension<ApiKeyId>>) -> String {
    key.map(|Extension(ApiKeyId(id))| id).unwrap_or_default()
}

/// The router's own time on the call, from its response metadata.
const OVERHEAD: &str = "x-helix-router-overhead-us";
/// When a caller refused by a provider's request limit may come back, from the router.
const RETRY_AFTER: &str = "retry-after";

/// Which API's error shape an error takes.
#[derive(Clone, Copy)]
enum Dialect {
    OpenAi,
    Anthropic,
    Helix,
}

struct LlmError(Dialect, Error, Option<HeaderValue>);

impl LlmError {
    fn new(dialect: Dialect, error: Error) -> Self {
        Self(dialect, error, None)
    }

    /// A router error, with its Retry-After when a request limit refused the call.
    fn status(dialect: Dialect, status: tonic::Status) -> Self {
        let retry_after = status.metadata().get(RETRY_AFTER).and_then(|v| HeaderValue::from_bytes(v.as_bytes()).ok());
        Self(dialect, status.into(), retry_after)
    }
}

impl IntoResponse for LlmError {
    fn into_response(self) -> Response {
        let LlmError(dialect, error, retry_after) = self;
        let status = error.http_status();
        if status.is_server_error() {
            tracing::warn!(code = error.code(), message = error.message(), "llm request failed");
        }
        let body = match dialect {
            Dialect::OpenAi => openai_error(&error),
            Dialect::Anthropic => anthropic_error(&error),
            Dialect::Helix => json!({"error": {"code": error.code(), "message": error.message()}}),
        };
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(value) = retry_after {
            response.headers_mut().insert(http::header::RETRY_AFTER, value);
        }
        response
    }
}

fn openai_error(error: &Error) -> Value {
    let kind = match error.kind() {
        ErrorKind::Unauthenticated => "authentication_error",
        ErrorKind::PermissionDenied => "permission_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::BudgetExceeded => "insufficient_quota",
        ErrorKind::Internal | ErrorKind::Unavailable | ErrorKind::Timeout | ErrorKind::Unimplemented => "server_error",
        _ => "invalid_request_error",
    };
    json!({"error": {"message": error.message(), "type": kind, "param": null, "code": error.code()}})
}

fn anthropic_error(error: &Error) -> Value {
    let kind = match error.kind() {
        ErrorKind::Unauthenticated => "authentication_error",
        ErrorKind::PermissionDenied | ErrorKind::BudgetExceeded => "permission_error",
        ErrorKind::NotFound => "not_found_error",
        ErrorKind::RateLimited => "rate_limit_error",
        ErrorKind::PayloadTooLarge => "request_too_large",
        ErrorKind::Unavailable => "overloaded_error",
        ErrorKind::Internal | ErrorKind::Timeout | ErrorKind::Unimplemented => "api_error",
        _ => "invalid_request_error",
    };
    json!({"type": "error", "error": {"type": kind, "message": error.message(), "code": error.code()}})
}

type LlmResult<T> = Result<T, LlmError>;

/// The body as JSON of `T`; a bad body is the dialect's 4xx.
fn parse<T: DeserializeOwned>(dialect: Dialect, headers: &HeaderMap, body: &Bytes) -> LlmResult<T> {
    let json = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"));
    // the original system's routes read bodies by the rule of our own (`error::Json`);
    // the OpenAI- and Anthropic-compatible ones as those APIs do: unknown fields pass
    let ours = matches!(dialect, Dialect::Helix);
    let empty_of_ours = ours && body.iter().all(u8::is_ascii_whitespace);
    if !(json || empty_of_ours) {
        let error = Error::new(
            ErrorKind::UnsupportedMediaType,
            "unsupported_media_type",
            "the body must be JSON with Content-Type: application/json",
        );
        return Err(LlmError::new(dialect, error));
    }
    if ours {
        return crate::error::decode(body).map_err(|e| LlmError::new(dialect, e));
    }
    serde_json::from_slice(body).map_err(|e| {
        let error = if e.is_syntax() || e.is_eof() {
            Error::invalid("malformed_json", format!("the body is not valid JSON: {e}"))
        } else {
            Error::new(ErrorKind::Unprocessable, "invalid_body", format!("the body does not fit: {e}"))
        };
        LlmError::new(dialect, error)
    })
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Headers telling which provider answered and what the router's own work took.
fn helix_headers(headers: &mut HeaderMap, provider: &str, model: &str, overhead: Option<&HeaderValue>) {
    if let Ok(value) = HeaderValue::from_str(provider) {
        headers.insert("x-helix-provider", value);
    }
    if let Ok(value) = HeaderValue::from_str(model) {
        headers.insert("x-helix-model", value);
    }
    if let Some(value) = overhead {
        headers.insert(OVERHEAD, value.clone());
    }
}

/// A stream from the router, opened: its overhead header, its first event and the rest,
/// and the provider and model that answered.
struct Opened {
    overhead: Option<HeaderValue>,
    first: pb::GenerateStreamEvent,
    events: tonic::Streaming<pb::GenerateStreamEvent>,
    provider: String,
    model: String,
}

/// Opens a generation stream and awaits its first event: the router answers only once
/// the first chunk is there, so provider and model are known before any byte is sent.
async fn open_stream(state: &AppState, request: pb::GenerateRequest, d: Dialect) -> Result<Opened, LlmError> {
    let response = state.llm().generate_stream(request).await.map_err(|s| LlmError::status(d, s))?;
    let overhead = overhead_of(response.metadata());
    let mut events = response.into_inner();
    let first = match events.next().await {
        Some(Ok(event)) => event,
        Some(Err(status)) => return Err(LlmError::status(d, status)),
        None => return Err(LlmError::new(d, Error::unavailable("the llm router ended the stream without an answer"))),
    };
    let (provider, model) = match &first.event {
        Some(StreamEvent::Chunk(c)) => (c.provider.clone(), c.model.clone()),
        Some(StreamEvent::Done(done)) => (done.provider.clone(), done.model.clone()),
        None => (String::new(), String::new()),
    };
    Ok(Opened { overhead, first, events, provider, model })
}

fn overhead_of(metadata: &tonic::metadata::MetadataMap) -> Option<HeaderValue> {
    metadata.get(OVERHEAD).and_then(|v| v.to_str().ok()).and_then(|v| HeaderValue::from_str(v).ok())
}

// ---------------------------------------------------------------- OpenAI

#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionInput {
    model: String,
    messages: Vec<OpenAiMessage>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stop: Option<Stop>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    response_format: Option<Value>,
    n: Option<u32>,
    user: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, ToSchema)]
struct OpenAiMessage {
    role: String,
    #[serde(default)]
    content: Value,
    name: Option<String>,
    tool_call_id: Option<String>,
    tool_calls: Option<Value>,
}

fn openai_to_pb(input: ChatCompletionInput) -> Result<pb::GenerateRequest, Error> {
    if input.n.is_some_and(|n| n != 1) {
        return Err(Error::invalid("unsupported_n", "only n = 1 is supported"));
    }
    if input.model.trim().is_empty() {
        return Err(Error::invalid("missing_model", "model must name a model: provider/model, an alias or auto"));
    }
    let mut messages = Vec::with_capacity(input.messages.len());
    for m in input.messages {
        let (content, content_parts_json) = match m.content {
            Value::Null => (String::new(), String::new()),
            Value::String(text) => (text, String::new()),
            parts @ Value::Array(_) => (String::new(), parts.to_string()),
            _ => return Err(Error::invalid("invalid_content", "content must be a string, an array of parts or null")),
        };
        messages.push(pb::ChatMessage {
            role: m.role,
            content,
            name: m.name.unwrap_or_default(),
            tool_call_id: m.tool_call_id.unwrap_or_default(),
            tool_calls_json: m.tool_calls.filter(|v| !v.is_null()).map(|v| v.to_string()).unwrap_or_default(),
            content_parts_json,
        });
    }
    Ok(pb::GenerateRequest {
        messages,
        model: input.model,
        max_tokens: input.max_completion_tokens.or(input.max_tokens),
        temperature: input.temperature,
        top_p: input.top_p,
        stop: match input.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        },
        tools_json: input.tools.filter(|t| !t.is_empty()).map(|t| Value::Array(t).to_string()).unwrap_or_default(),
        tool_choice_json: input.tool_choice.map(|v| v.to_string()).unwrap_or_default(),
        response_format_json: input.response_format.map(|v| v.to_string()).unwrap_or_default(),
        caller: input.user.unwrap_or_default(),
        ..Default::default()
    })
}

fn openai_usage(usage: Option<&pb::TokenUsage>, done: &pb::GenerateResponse) -> Value {
    let usage = usage.copied().unwrap_or_default();
    json!({
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": done.cached_prompt_tokens},
        "completion_tokens_details": {"reasoning_tokens": done.reasoning_tokens},
    })
}

fn parse_tool_calls(text: &str) -> Option<Value> {
    if text.is_empty() { None } else { serde_json::from_str(text).ok() }
}

/// OpenAI-compatible chat completions, streamed (`"stream": true`) or not.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "llm", request_body = ChatCompletionInput,
    responses((status = 200, description = "an OpenAI chat.completion, or text/event-stream of chat.completion.chunk ending in data: [DONE]"),
        (status = 402, description = "the budget refuses the call; no provider was called")),
    security(("bearer" = [])))]
pub async fn chat_completions(
    State(state): State<AppState>,
    key: Option<Extension<ApiKeyId>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match chat_completions_inner(state, key_id(key), &headers, &body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn chat_completions_inner(
    state: AppState,
    api_key_id: String,
    headers: &HeaderMap,
    body: &Bytes,
) -> LlmResult<Response> {
    let d = Dialect::OpenAi;
    let input: ChatCompletionInput = parse(d, headers, body)?;
    let stream = input.stream;
    let include_usage = input.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let mut request = openai_to_pb(input).map_err(|e| LlmError::new(d, e))?;
    request.api_key_id = api_key_id;
    let id = format!("chatcmpl-{}", uuid::Uuid::now_v7().simple());
    let created = unix_now();
    if !stream {
        let response = state.llm().generate(request).await.map_err(|s| LlmError::status(d, s))?;
        let overhead = overhead_of(response.metadata());
        let done = response.into_inner();
        let tool_calls = parse_tool_calls(&done.tool_calls_json);
        let mut message = json!({"role": "assistant", "content": done.content, "refusal": null});
        if let Some(calls) = tool_calls {
            if done.content.is_empty() {
                message["content"] = Value::Null;
            }
            message["tool_calls"] = calls;
        }
        let model = format!("{}/{}", done.provider, done.model);
        let body = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": done.finish_reason}],
            "usage": openai_usage(done.usage.as_ref(), &done),
            "system_fingerprint": null,
        });
        let mut response = axum::Json(body).into_response();
        helix_headers(response.headers_mut(), &done.provider, &done.model, overhead.as_ref());
        return Ok(response);
    }
    let Opened { overhead, first, events, provider, model } = open_stream(&state, request, d).await?;
    let relay = OpenAiRelay {
        id,
        created,
        model: format!("{provider}/{model}"),
        include_usage,
        started: false,
        pending: VecDeque::new(),
    };
    let events = futures::stream::iter([Ok(first)]).chain(events);
    let sse = relay_stream(events, relay);
    let mut response = Sse::new(sse).into_response();
    helix_headers(response.headers_mut(), &provider, &model, overhead.as_ref());
    Ok(response)
}

/// Turns router events into an API's server-sent events.
trait Relay: Send + 'static {
    fn on_event(&mut self, event: pb::GenerateStreamEvent);
    fn on_error(&mut self, error: Error);
    fn pending(&mut self) -> &mut VecDeque<Event>;
}

fn relay_stream<R: Relay>(
    events: impl Stream<Item = Result<pb::GenerateStreamEvent, tonic::Status>> + Send + Unpin + 'static,
    relay: R,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    futures::stream::unfold((events, relay, false), |(mut events, mut relay, mut ended)| async move {
        loop {
            if let Some(event) = relay.pending().pop_front() {
                return Some((Ok(event), (events, relay, ended)));
            }
            if ended {
                return None;
            }
            match events.next().await {
                Some(Ok(event)) => relay.on_event(event),
                Some(Err(status)) => {
                    ended = true;
                    relay.on_error(status.into());
                }
                None => ended = true,
            }
        }
    })
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

struct OpenAiRelay {
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
    started: bool,
    pending: VecDeque<Event>,
}

impl OpenAiRelay {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Value {
        let mut chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
            "system_fingerprint": null,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if self.include_usage {
            chunk["usage"] = Value::Null;
        }
        chunk
    }

    fn start(&mut self) {
        if !self.started {
            self.started = true;
            let first = self.chunk(json!({"role": "assistant", "content": ""}), None);
            self.pending.push_back(data(&first));
        }
    }
}

impl Relay for OpenAiRelay {
    fn on_event(&mut self, event: pb::GenerateStreamEvent) {
        self.start();
        match event.event {
            Some(StreamEvent::Chunk(chunk)) => {
                if !chunk.delta.is_empty() {
                    let c = self.chunk(json!({"content": chunk.delta}), None);
                    self.pending.push_back(data(&c));
                }
                if let Some(calls) = parse_tool_calls(&chunk.tool_calls_delta_json) {
                    let c = self.chunk(json!({"tool_calls": calls}), None);
                    self.pending.push_back(data(&c));
                }
            }
            Some(StreamEvent::Done(done)) => {
                let last = self.chunk(json!({}), Some(&done.finish_reason));
                self.pending.push_back(data(&last));
                if self.include_usage {
                    let usage = json!({
                        "id": self.id, "object": "chat.completion.chunk", "created": self.created,
                        "model": self.model, "system_fingerprint": null, "choices": [],
                        "usage": openai_usage(done.usage.as_ref(), &done),
                    });
                    self.pending.push_back(data(&usage));
                }
                self.pending.push_back(Event::default().data("[DONE]"));
            }
            None => {}
        }
    }

    fn on_error(&mut self, error: Error) {
        // OpenAI's clients raise on a chunk carrying "error"; no [DONE] follows
        self.pending.push_back(data(&openai_error(&error)));
    }

    fn pending(&mut self) -> &mut VecDeque<Event> {
        &mut self.pending
    }
}

/// The models the router can reach, OpenAI's list shape.
#[utoipa::path(get, path = "/v1/models", tag = "llm",
    responses((status = 200, description = "{\"object\": \"list\", \"data\": [{\"id\", \"object\": \"model\", \"owned_by\"}]}")),
    security(("bearer" = [])))]
pub async fn models(State(state): State<AppState>) -> Response {
    let request = pb::ListModelsRequest::default();
    match state.llm().list_models(request).await {
        Ok(response) => {
            let data: Vec<Value> = response
                .into_inner()
                .models
                .into_iter()
                .map(|m| json!({"id": m.id, "object": "model", "created": 0, "owned_by": m.provider}))
                .collect();
            axum::Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(status) => LlmError::status(Dialect::OpenAi, status).into_response(),
    }
}

// ---------------------------------------------------------------- Anthropic

#[derive(Debug, Deserialize, ToSchema)]
pub struct MessagesInput {
    model: String,
    max_tokens: u32,
    messages: Vec<AnthropicMessage>,
    #[serde(default)]
    system: Value,
    stop_sequences: Option<Vec<String>>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    #[serde(default)]
    stream: bool,
    tools: Option<Vec<AnthropicTool>>,
    tool_choice: Option<Value>,
}

#[derive(Debug, Deserialize, ToSchema)]
struct AnthropicMessage {
    role: String,
    content: Value,
}

#[derive(Debug, Deserialize, ToSchema)]
struct AnthropicTool {
    name: String,
    description: Option<String>,
    input_schema: Value,
}

fn block_text(content: &Value) -> String {
    match content {
        Value::String(text) => text.clone(),
        Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str()).collect::<Vec<_>>().join("\n"),
        _ => String::new(),
    }
}

fn anthropic_to_pb(input: MessagesInput) -> Result<pb::GenerateRequest, Error> {
    if input.max_tokens == 0 {
        return Err(Error::invalid("invalid_max_tokens", "max_tokens must be at least 1"));
    }
    let mut messages = Vec::with_capacity(input.messages.len() + 1);
    let system = block_text(&input.system);
    if !system.is_empty() {
        messages.push(pb::ChatMessage { role: "system".into(), content: system, ..Default::default() });
    }
    for m in input.messages {
        if !matches!(m.role.as_str(), "user" | "assistant") {
            return Err(Error::invalid("invalid_role", format!("role {:?} is not user or assistant", m.role)));
        }
        let blocks = match m.content {
            Value::String(text) => vec![json!({"type": "text", "text": text})],
            Value::Array(blocks) => blocks,
            _ => return Err(Error::invalid("invalid_content", "content must be a string or an array of blocks")),
        };
        if m.role == "assistant" {
            let text = blocks.iter().filter(|b| b["type"] == "text").filter_map(|b| b["text"].as_str());
            let calls: Vec<Value> = blocks
                .iter()
                .filter(|b| b["type"] == "tool_use")
                .map(|b| {
                    json!({"id": b["id"], "type": "function",
                        "function": {"name": b["name"], "arguments": b["input"].to_string()}})
                })
                .collect();
            messages.push(pb::ChatMessage {
                role: "assistant".into(),
                content: text.collect::<Vec<_>>().join(""),
                tool_calls_json: if calls.is_empty() { String::new() } else { Value::Array(calls).to_string() },
                ..Default::default()
            });
            continue;
        }
        // tool results answer the previous assistant turn: they come first, as tool messages
        let mut parts = Vec::new();
        for block in blocks {
            match block["type"].as_str() {
                Some("tool_result") => messages.push(pb::ChatMessage {
                    role: "tool".into(),
                    content: block_text(&block["content"]),
                    tool_call_id: block["tool_use_id"].as_str().unwrap_or_default().to_owned(),
                    ..Default::default()
                }),
                Some("text") => parts.push(json!({"type": "text", "text": block["text"]})),
                Some("image") => {
                    let source = &block["source"];
                    let url = match source["type"].as_str() {
                        Some("base64") => format!(
                            "data:{};base64,{}",
                            source["media_type"].as_str().unwrap_or("image/png"),
                            source["data"].as_str().unwrap_or_default()
                        ),
                        _ => source["url"].as_str().unwrap_or_default().to_owned(),
                    };
                    parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
                }
                _ => {}
            }
        }
        if parts.is_empty() {
            continue;
        }
        let plain = parts.iter().all(|p| p["type"] == "text");
        messages.push(if plain {
            let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
            pb::ChatMessage { role: "user".into(), content: text.join("\n"), ..Default::default() }
        } else {
            pb::ChatMessage {
                role: "user".into(),
                content_parts_json: Value::Array(parts).to_string(),
                ..Default::default()
            }
        });
    }
    let tools: Vec<Value> = input
        .tools
        .unwrap_or_default()
        .into_iter()
        .map(|t| {
            json!({"type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.input_schema}})
        })
        .collect();
    let tool_choice = input.tool_choice.and_then(|c| match c["type"].as_str() {
        Some("auto") => Some(json!("auto")),
        Some("any") => Some(json!("required")),
        Some("none") => Some(json!("none")),
        Some("tool") => Some(json!({"type": "function", "function": {"name": c["name"]}})),
        _ => None,
    });
    Ok(pb::GenerateRequest {
        messages,
        model: input.model,
        max_tokens: Some(input.max_tokens),
        temperature: input.temperature,
        top_p: input.top_p,
        stop: input.stop_sequences.unwrap_or_default(),
        tools_json: if tools.is_empty() { String::new() } else { Value::Array(tools).to_string() },
        tool_choice_json: tool_choice.map(|v| v.to_string()).unwrap_or_default(),
        ..Default::default()
    })
}

fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

fn anthropic_usage(done: &pb::GenerateResponse) -> Value {
    let usage = done.usage.unwrap_or_default();
    json!({
        "input_tokens": usage.prompt_tokens.saturating_sub(done.cached_prompt_tokens),
        "output_tokens": usage.completion_tokens,
        "cache_read_input_tokens": done.cached_prompt_tokens,
    })
}

/// Anthropic-compatible Messages API, streamed or not, over any provider.
#[utoipa::path(post, path = "/v1/messages", tag = "llm", request_body = MessagesInput,
    responses((status = 200, description = "an Anthropic message, or its text/event-stream (message_start ... message_stop)")),
    security(("bearer" = [])))]
pub async fn messages(
    State(state): State<AppState>,
    key: Option<Extension<ApiKeyId>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match messages_inner(state, key_id(key), &headers, &body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn messages_inner(state: AppState, api_key_id: String, headers: &HeaderMap, body: &Bytes) -> LlmResult<Response> {
    let d = Dialect::Anthropic;
    let input: MessagesInput = parse(d, headers, body)?;
    let stream = input.stream;
    let mut request = anthropic_to_pb(input).map_err(|e| LlmError::new(d, e))?;
    request.api_key_id = api_key_id;
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    if !stream {
        let response = state.llm().generate(request).await.map_err(|s| LlmError::status(d, s))?;
        let overhead = overhead_of(response.metadata());
        let done = response.into_inner();
        let mut content = Vec::new();
        if !done.content.is_empty() {
            content.push(json!({"type": "text", "text": done.content}));
        }
        for call in parse_tool_calls(&done.tool_calls_json).and_then(|v| v.as_array().cloned()).unwrap_or_default() {
            let input: Value = call["function"]["arguments"]
                .as_str()
                .and_then(|a| serde_json::from_str(a).ok())
                .unwrap_or_else(|| json!({}));
            content
                .push(json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": input}));
        }
        let body = json!({
            "id": id, "type": "message", "role": "assistant", "model": format!("{}/{}", done.provider, done.model),
            "content": content, "stop_reason": stop_reason(&done.finish_reason), "stop_sequence": null,
            "usage": anthropic_usage(&done),
        });
        let mut response = axum::Json(body).into_response();
        helix_headers(response.headers_mut(), &done.provider, &done.model, overhead.as_ref());
        return Ok(response);
    }
    let Opened { overhead, first, events, provider, model } = open_stream(&state, request, d).await?;
    let mut relay = AnthropicRelay { block: None, next_index: 0, pending: VecDeque::new() };
    let start = json!({"type": "message_start", "message": {
        "id": id, "type": "message", "role": "assistant", "model": format!("{provider}/{model}"),
        "content": [], "stop_reason": null, "stop_sequence": null,
        "usage": {"input_tokens": 0, "output_tokens": 0}}});
    relay.emit("message_start", &start);
    let events = futures::stream::iter([Ok(first)]).chain(events);
    let mut response = Sse::new(relay_stream(events, relay)).into_response();
    helix_headers(response.headers_mut(), &provider, &model, overhead.as_ref());
    Ok(response)
}

#[derive(PartialEq)]
enum Block {
    Text,
    /// the tool call index of the router's deltas
    Tool(u64),
}

struct AnthropicRelay {
    /// the open content block and its index
    block: Option<(Block, u32)>,
    next_index: u32,
    pending: VecDeque<Event>,
}

impl AnthropicRelay {
    fn emit(&mut self, name: &str, value: &Value) {
        self.pending.push_back(Event::default().event(name).data(value.to_string()));
    }

    fn close(&mut self) {
        if let Some((_, index)) = self.block.take() {
            self.emit("content_block_stop", &json!({"type": "content_block_stop", "index": index}));
        }
    }

    fn open(&mut self, block: Block, start: Value) -> u32 {
        self.close();
        let index = self.next_index;
        self.next_index += 1;
        self.block = Some((block, index));
        self.emit(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": start}),
        );
        index
    }
}

impl Relay for AnthropicRelay {
    fn on_event(&mut self, event: pb::GenerateStreamEvent) {
        match event.event {
            Some(StreamEvent::Chunk(chunk)) => {
                if !chunk.delta.is_empty() {
                    let index = match &self.block {
                        Some((Block::Text, index)) => *index,
                        _ => self.open(Block::Text, json!({"type": "text", "text": ""})),
                    };
                    let delta = json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": chunk.delta}});
                    self.emit("content_block_delta", &delta);
                }
                let calls = parse_tool_calls(&chunk.tool_calls_delta_json).and_then(|v| v.as_array().cloned());
                for call in calls.unwrap_or_default() {
                    let tool = call["index"].as_u64().unwrap_or(0);
                    let index = match &self.block {
                        Some((Block::Tool(open), index)) if *open == tool => *index,
                        _ => self.open(
                            Block::Tool(tool),
                            json!({"type": "tool_use", "id": call["id"], "name": call["function"]["name"], "input": {}}),
                        ),
                    };
                    let arguments = call["function"]["arguments"].as_str().unwrap_or_default();
                    if !arguments.is_empty() {
                        let delta = json!({"type": "content_block_delta", "index": index,
                            "delta": {"type": "input_json_delta", "partial_json": arguments}});
                        self.emit("content_block_delta", &delta);
                    }
                }
            }
            Some(StreamEvent::Done(done)) => {
                self.close();
                let delta = json!({"type": "message_delta",
                    "delta": {"stop_reason": stop_reason(&done.finish_reason), "stop_sequence": null},
                    "usage": anthropic_usage(&done)});
                self.emit("message_delta", &delta);
                self.emit("message_stop", &json!({"type": "message_stop"}));
            }
            None => {}
        }
    }

    fn on_error(&mut self, error: Error) {
        self.emit("error", &anthropic_error(&error));
    }

    fn pending(&mut self) -> &mut VecDeque<Event> {
        &mut self.pending
    }
}

// ---------------------------------------------------------------- OpenAI embeddings

#[derive(Debug, Deserialize, ToSchema)]
pub struct EmbeddingsInput {
    /// empty takes the configured embedding model (`llm.embedding_model`)
    #[serde(default)]
    model: String,
    input: Value,
    encoding_format: Option<String>,
    dimensions: Option<u32>,
    user: Option<String>,
}

/// The most inputs one call may carry (OpenAI's own limit).
const MAX_EMBED_INPUTS: usize = 2048;

fn embed_inputs(input: Value) -> Result<Vec<String>, Error> {
    let shape = || Error::invalid("invalid_input", "input must be a string or an array of strings");
    let inputs = match input {
        Value::String(text) => vec![text],
        Value::Array(items) => {
            // a token array, or an array of them
            if !items.is_empty() && (items.iter().all(Value::is_number) || items.iter().all(Value::is_array)) {
                return Err(Error::invalid(
                    "unsupported_input",
                    "token arrays are not supported: input must be a string or an array of strings",
                ));
            }
            items
                .into_iter()
                .map(|v| if let Value::String(text) = v { Ok(text) } else { Err(shape()) })
                .collect::<Result<_, _>>()?
        }
        _ => return Err(shape()),
    };
    if inputs.len() > MAX_EMBED_INPUTS {
        return Err(Error::invalid("too_many_inputs", format!("input holds more than {MAX_EMBED_INPUTS} texts")));
    }
    Ok(inputs)
}

/// OpenAI-compatible embeddings: `input` a string or an array of strings,
/// `encoding_format` float (default) or base64 (little-endian f32), routed, limited and
/// paid for like chat.
#[utoipa::path(post, path = "/v1/embeddings", tag = "llm", request_body = EmbeddingsInput,
    responses((status = 200, description = "an OpenAI embeddings list: {\"object\": \"list\", \"data\": [{\"object\": \"embedding\", \"index\", \"embedding\"}], \"model\", \"usage\"}"),
        (status = 402, description = "the budget refuses the call; no provider was called"),
        (status = 429, description = "over the provider's request limit; Retry-After tells when to come back")),
    security(("bearer" = [])))]
pub async fn embeddings(
    State(state): State<AppState>,
    key: Option<Extension<ApiKeyId>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let d = Dialect::OpenAi;
    let result = async {
        let input: EmbeddingsInput = parse(d, &headers, &body)?;
        let base64 = match input.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => {
                let message = format!("encoding_format {other:?} is not float or base64");
                return Err(LlmError::new(d, Error::invalid("invalid_encoding_format", message)));
            }
        };
        let inputs = embed_inputs(input.input).map_err(|e| LlmError::new(d, e))?;
        let request = pb::EmbedRequest {
            inputs,
            model: input.model,
            dimensions: input.dimensions,
            caller: input.user.unwrap_or_default(),
            api_key_id: key_id(key),
            ..Default::default()
        };
        let response = state.llm().embed(request).await.map_err(|s| LlmError::status(d, s))?;
        let overhead = overhead_of(response.metadata());
        let done = response.into_inner();
        let data: Vec<Value> = done
            .embeddings
            .iter()
            .map(|e| {
                let embedding = if base64 {
                    let bytes: Vec<u8> = e.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    Value::String(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes))
                } else {
                    json!(e.values)
                };
                json!({"object": "embedding", "index": e.index, "embedding": embedding})
            })
            .collect();
        let usage = done.usage.unwrap_or_default();
        let body = json!({
            "object": "list", "data": data, "model": format!("{}/{}", done.provider, done.model),
            "usage": {"prompt_tokens": usage.prompt_tokens, "total_tokens": usage.total_tokens},
        });
        let mut response = axum::Json(body).into_response();
        helix_headers(response.headers_mut(), &done.provider, &done.model, overhead.as_ref());
        Ok::<_, LlmError>(response)
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

// ---------------------------------------------------------------- the original system's routes

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GenerateInput {
    prompt: Option<String>,
    #[serde(default)]
    messages: Vec<OpenAiMessage>,
    system: Option<String>,
    model: Option<String>,
    provider: Option<String>,
    max_tokens: Option<u32>,
    temperature: Option<f64>,
    task_type: Option<String>,
    complexity: Option<String>,
    namespace: Option<String>,
}

/// The original system's generation route: `{"prompt"}` in, the answer with its
/// provider, usage and cost out.
#[utoipa::path(post, path = "/api/generate", tag = "llm", request_body = GenerateInput,
    responses((status = 200, description = "{\"content\", \"response\", \"provider\", \"model\", \"usage\", \"cost_usd\", \"latency_ms\"}"),
        (status = 402, description = "the budget refuses the call")),
    security(("bearer" = [])))]
pub async fn generate(
    State(state): State<AppState>,
    key: Option<Extension<ApiKeyId>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let d = Dialect::Helix;
    let result = async {
        let input: GenerateInput = parse(d, &headers, &body)?;
        let chat = ChatCompletionInput {
            model: input.model.unwrap_or_else(|| "auto".to_owned()),
            messages: input.messages,
            stream: false,
            stream_options: None,
            max_tokens: input.max_tokens,
            max_completion_tokens: None,
            temperature: input.temperature,
            top_p: None,
            stop: None,
            tools: None,
            tool_choice: None,
            response_format: None,
            n: None,
            user: None,
        };
        let mut request = openai_to_pb(chat).map_err(|e| LlmError::new(d, e))?;
        request.prompt = input.prompt.unwrap_or_default();
        request.system = input.system.unwrap_or_default();
        request.providers = input.provider.into_iter().collect();
        request.task_type = input.task_type.unwrap_or_default();
        request.complexity = input.complexity.unwrap_or_default();
        request.namespace = input.namespace.unwrap_or_default();
        request.api_key_id = key_id(key);
        let started = Instant::now();
        let response = state.llm().generate(request).await.map_err(|s| LlmError::status(d, s))?;
        let overhead = overhead_of(response.metadata());
        let done = response.into_inner();
        let usage = done.usage.unwrap_or_default();
        let routing = done.routing.clone().unwrap_or_default();
        let body = json!({
            "content": done.content, "response": done.content, "provider": done.provider, "model": done.model,
            "finish_reason": done.finish_reason,
            "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens},
            "cost_usd": usage.cost_usd, "latency_ms": started.elapsed().as_millis() as u64,
            "fell_back": routing.fell_back, "downgraded": routing.downgraded,
        });
        let mut response = axum::Json(body).into_response();
        helix_headers(response.headers_mut(), &done.provider, &done.model, overhead.as_ref());
        Ok::<_, LlmError>(response)
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// The cost and budget dashboard: today's spend against the daily cap, by provider,
/// and the last days.
#[utoipa::path(get, path = "/api/budget", tag = "llm",
    responses((status = 200, description = "daily_limit_usd, spent_today_usd, remaining_usd, action, exceeded, providers, history")),
    security(("bearer" = [])))]
pub async fn budget(State(state): State<AppState>) -> Response {
    match state.llm().get_budget(pb::GetBudgetRequest { history_days: 7 }).await {
        Ok(response) => axum::Json(budget_json(response.into_inner())).into_response(),
        Err(status) => LlmError::status(Dialect::Helix, status).into_response(),
    }
}

pub fn rfc3339(t: Option<helix_proto::Timestamp>) -> Option<String> {
    t.and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)).map(|t| t.to_rfc3339())
}

/// The budget as `/api/budget` and `/api/v1/llm/budget` show it.
pub fn budget_json(b: pb::BudgetStatus) -> Value {
    let providers: Vec<Value> = b
        .providers
        .iter()
        .map(|p| {
            json!({"provider": p.provider, "spent_today_usd": p.spent_today_usd,
                "requests_today": p.requests_today, "tokens_today": p.tokens_today})
        })
        .collect();
    let history: Vec<Value> =
        b.history.iter().map(|d| json!({"date": d.date, "cost_usd": d.cost_usd, "requests": d.requests})).collect();
    let keys: Vec<Value> = b
        .keys
        .iter()
        .map(|k| {
            json!({"api_key_id": k.api_key_id, "daily_limit_usd": k.daily_limit_usd,
                "spent_today_usd": k.spent_today_usd, "requests_today": k.requests_today, "exceeded": k.exceeded})
        })
        .collect();
    json!({
        "daily_limit_usd": b.daily_limit_usd, "spent_today_usd": b.spent_today_usd,
        "remaining_usd": b.remaining_usd, "action": b.action, "exceeded": b.exceeded,
        "day_start": rfc3339(b.day_start), "resets_at": rfc3339(b.resets_at),
        "providers": providers, "history": history, "keys": keys,
    })
}
