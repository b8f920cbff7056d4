//! A fake LLM provider for tests: one HTTP server on port 0 speaking OpenAI's chat
//! completions (`POST /v1/chat/completions`), OpenAI's embeddings (`POST /v1/embeddings`:
//! float or base64 vectors, its 400 and 404 bodies) and Anthropic's Messages API
//! (`POST /v1/messages`) in their published wire formats — whole answers, server-sent
//! event streams with text and tool-call deltas, usage, stop reasons and error bodies —
//! and, on request, their failures: error statuses with Retry-After, a slow first byte,
//! an error after the first chunk, a stream cut without its end marker, malformed JSON.
//!
//! Each request takes the next scripted [`Behaviour`], or the default one; every
//! request received is kept for assertions (a budget refusal must leave none).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use helix_runtime::HelixConfig;
use helix_runtime::config::{LlmProviderConfig, Secret};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// Which wire a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    OpenAi,
    Anthropic,
}

#[derive(Debug, Clone)]
pub enum Behaviour {
    /// answers `text`; streamed as one chunk per word
    Reply { text: String, prompt_tokens: u64, completion_tokens: u64 },
    /// calls the tool `name` with `arguments` (JSON text); streamed in fragments
    ToolCall { id: String, name: String, arguments: String },
    /// answers the status with the wire's error body (and Retry-After seconds)
    Status { code: u16, retry_after: Option<u64> },
    /// waits before the response head, then behaves as `then`
    Slow { delay: Duration, then: Box<Behaviour> },
    /// streams one word, then the wire's error event (whole answers: a 500)
    ErrorAfterFirstChunk,
    /// streams one word, then ends the body without the end marker (whole answers:
    /// half a JSON body)
    CutMidway,
    /// a 200 whose body (or first stream event) is not JSON
    MalformedJson,
}

impl Behaviour {
    pub fn reply(text: &str) -> Self {
        Self::Reply { text: text.to_owned(), prompt_tokens: 11, completion_tokens: text.split(' ').count() as u64 }
    }

    pub fn status(code: u16) -> Self {
        Self::Status { code, retry_after: None }
    }
}

/// What the fake received.
#[derive(Debug, Clone)]
pub struct Received {
    pub wire: Wire,
    /// the route, e.g. `/v1/embeddings`
    pub path: &'static str,
    /// the key, from `Authorization: Bearer` or `x-api-key`
    pub key: Option<String>,
    pub body: Value,
}

struct Shared {
    script: Mutex<VecDeque<Behaviour>>,
    default: Mutex<Behaviour>,
    received: Mutex<Vec<Received>>,
}

pub struct FakeLlm {
    /// `http://127.0.0.1:<port>`
    pub url: String,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
}

impl FakeLlm {
    pub async fn start() -> anyhow::Result<Self> {
        let shared = Arc::new(Shared {
            script: Mutex::new(VecDeque::new()),
            default: Mutex::new(Behaviour::reply("Hello from the fake")),
            received: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .route("/v1/embeddings", post(embeddings))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        });
        Ok(Self { url, shared, shutdown })
    }

    /// The next requests' behaviours, in order.
    pub fn script(&self, behaviours: impl IntoIterator<Item = Behaviour>) {
        self.shared.script.lock().unwrap().extend(behaviours);
    }

    /// Forgets what is left of the script.
    pub fn clear_script(&self) {
        self.shared.script.lock().unwrap().clear();
    }

    /// What requests do once the script is used up.
    pub fn set_default(&self, behaviour: Behaviour) {
        *self.shared.default.lock().unwrap() = behaviour;
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.shared.received.lock().unwrap().len()
    }

    /// Makes `config`'s provider `name` this fake, speaking `wire`: the catalogue's
    /// providers keep their protocol, another name becomes a custom endpoint.
    pub fn serve_as(&self, config: &mut HelixConfig, name: &str, wire: Wire) {
        let base_url = match wire {
            Wire::OpenAi => format!("{}/v1", self.url),
            Wire::Anthropic => self.url.clone(),
        };
        let protocol = match wire {
            Wire::OpenAi => "openai",
            Wire::Anthropic => "anthropic",
        };
        let known = ["openai", "anthropic", "google", "xai", "deepseek", "mistral", "together", "openrouter"];
        config.llm.providers.insert(
            name.to_owned(),
            LlmProviderConfig {
                base_url: Some(base_url),
                api_key: Some(Secret::new(format!("sk-test-{name}"))),
                protocol: (!known.contains(&name)).then(|| protocol.to_owned()),
                ..LlmProviderConfig::default()
            },
        );
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Short waits, so that retries and timeouts happen within a test's patience.
pub fn quick_retries(config: &mut HelixConfig) {
    config.llm.retry_base_ms = 5;
    config.llm.retry_max_ms = 50;
    config.llm.attempt_timeout_ms = 2_000;
    config.llm.stream_idle_timeout_ms = 2_000;
}

fn next(shared: &Shared, wire: Wire, path: &'static str, headers: &HeaderMap, body: &Bytes) -> (Behaviour, Value) {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let key = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::to_owned);
    shared.received.lock().unwrap().push(Received { wire, path, key, body: body.clone() });
    let scripted = shared.script.lock().unwrap().pop_front();
    (scripted.unwrap_or_else(|| shared.default.lock().unwrap().clone()), body)
}

async fn openai(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (behaviour, request) = next(&shared, Wire::OpenAi, "/v1/chat/completions", &headers, &body);
    respond(Wire::OpenAi, behaviour, request).await
}

async fn anthropic(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (behaviour, request) = next(&shared, Wire::Anthropic, "/v1/messages", &headers, &body);
    respond(Wire::Anthropic, behaviour, request).await
}

async fn respond(wire: Wire, mut behaviour: Behaviour, request: Value) -> Response {
    while let Behaviour::Slow { delay, then } = behaviour {
        tokio::time::sleep(delay).await;
        behaviour = *then;
    }
    let stream = request["stream"] == true;
    let model = request["model"].as_str().unwrap_or("fake-model").to_owned();
    let include_usage = request["stream_options"]["include_usage"] == true;
    match (&behaviour, stream) {
        (Behaviour::Status { code, retry_after }, _) => {
            let message = format!("fake failure {code}");
            let body = match wire {
                Wire::OpenAi => json!({"error": {"message": message, "type": "server_error", "code": null}}),
                Wire::Anthropic => {
                    json!({"type": "error", "error": {"type": anthropic_type(*code), "message": message}})
                }
            };
            let status = StatusCode::from_u16(*code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = (status, axum::Json(body)).into_response();
            if let Some(seconds) = retry_after {
                response.headers_mut().insert("retry-after", seconds.to_string().parse().unwrap());
            }
            response
        }
        (Behaviour::MalformedJson, false) => json_text("{\"id\": \"broken\", \"choices\": [ {"),
        (Behaviour::CutMidway, false) => {
            json_text("{\"id\": \"cut\", \"choices\": [{\"index\": 0, \"message\": {\"role\":")
        }
        (Behaviour::ErrorAfterFirstChunk, false) => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        (_, false) => axum::Json(whole(wire, &behaviour, &model)).into_response(),
        (_, true) => event_stream(events(wire, &behaviour, &model, include_usage)),
    }
}

/// OpenAI's error body.
fn openai_error(status: StatusCode, message: &str, code: Value) -> Response {
    let body = json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}});
    (status, axum::Json(body)).into_response()
}

/// The vector the fake gives `text`: deterministic, `dim` values in -1..1, unit length.
pub fn fake_vector(text: &str, dim: usize) -> Vec<f32> {
    let mut state =
        text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut v: Vec<f32> = (0..dim)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// The dimension of the fake's vectors when a request names none.
pub const FAKE_EMBEDDING_DIM: usize = 8;

/// OpenAI's `POST /v1/embeddings`: `input` a string or an array of strings, one
/// prompt token per word; the request errors OpenAI answers with its bodies.
async fn embeddings(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (mut behaviour, request) = next(&shared, Wire::OpenAi, "/v1/embeddings", &headers, &body);
    while let Behaviour::Slow { delay, then } = behaviour {
        tokio::time::sleep(delay).await;
        behaviour = *then;
    }
    match behaviour {
        Behaviour::Status { code, retry_after } => {
            let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut response = openai_error(status, &format!("fake failure {code}"), Value::Null);
            if let Some(seconds) = retry_after {
                response.headers_mut().insert("retry-after", seconds.to_string().parse().unwrap());
            }
            return response;
        }
        Behaviour::MalformedJson | Behaviour::CutMidway => return json_text("{\"object\": \"list\", \"data\": ["),
        _ => {}
    }
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    if request.get("model").is_none() {
        return openai_error(StatusCode::BAD_REQUEST, "you must provide a model parameter", Value::Null);
    }
    if !model.contains("embedding") {
        let message = format!("The model `{model}` does not exist or you do not have access to it.");
        return openai_error(StatusCode::NOT_FOUND, &message, json!("model_not_found"));
    }
    let invalid = || {
        openai_error(
            StatusCode::BAD_REQUEST,
            "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference.",
            Value::Null,
        )
    };
    let inputs: Vec<String> = match &request["input"] {
        Value::Null => return openai_error(StatusCode::BAD_REQUEST, "'input' is a required property", Value::Null),
        Value::String(text) => vec![text.clone()],
        Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.as_str().is_some_and(|t| !t.is_empty())) => {
            items.iter().filter_map(|i| i.as_str().map(str::to_owned)).collect()
        }
        _ => return invalid(),
    };
    if inputs.iter().any(String::is_empty) {
        return invalid();
    }
    let base64 = match request["encoding_format"].as_str() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            let message = format!("Invalid value: '{other}'. Supported values are: 'float' and 'base64'.");
            return openai_error(StatusCode::BAD_REQUEST, &message, json!("invalid_value"));
        }
    };
    let dim = request["dimensions"].as_u64().map_or(FAKE_EMBEDDING_DIM, |d| d as usize);
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let vector = fake_vector(text, dim);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|v| v.to_le_bytes()).collect();
                json!(base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.split_whitespace().count()).sum();
    axum::Json(json!({"object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
    .into_response()
}

fn anthropic_type(code: u16) -> &'static str {
    match code {
        429 => "rate_limit_error",
        529 => "overloaded_error",
        400 => "invalid_request_error",
        401 => "authentication_error",
        404 => "not_found_error",
        _ => "api_error",
    }
}

fn json_text(text: &'static str) -> Response {
    ([("content-type", "application/json")], text).into_response()
}

fn event_stream(events: Vec<String>) -> Response {
    let body = Body::from_stream(futures::stream::iter(events.into_iter().map(Ok::<_, Infallible>)));
    ([("content-type", "text/event-stream"), ("cache-control", "no-cache")], body).into_response()
}

fn whole(wire: Wire, behaviour: &Behaviour, model: &str) -> Value {
    match (wire, behaviour) {
        (Wire::OpenAi, Behaviour::ToolCall { id, name, arguments }) => json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
                "tool_calls": [{"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
                "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 20, "completion_tokens": 7, "total_tokens": 27},
        }),
        (Wire::OpenAi, Behaviour::Reply { text, prompt_tokens, completion_tokens }) => json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "created": 1, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens},
        }),
        (Wire::Anthropic, Behaviour::ToolCall { id, name, arguments }) => json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "tool_use", "id": id, "name": name,
                "input": serde_json::from_str::<Value>(arguments).unwrap_or(json!({}))}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 20, "output_tokens": 7},
        }),
        (Wire::Anthropic, Behaviour::Reply { text, prompt_tokens, completion_tokens }) => json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
        }),
        _ => json!({}),
    }
}

/// The words of `text`, each with the space before it, as a model streams them.
fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, word) in text.split(' ').enumerate() {
        out.push(if i == 0 { word.to_owned() } else { format!(" {word}") });
    }
    out
}

fn events(wire: Wire, behaviour: &Behaviour, model: &str, include_usage: bool) -> Vec<String> {
    match wire {
        Wire::OpenAi => openai_events(behaviour, model, include_usage),
        Wire::Anthropic => anthropic_events(behaviour, model),
    }
}

fn openai_events(behaviour: &Behaviour, model: &str, include_usage: bool) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        if include_usage {
            c["usage"] = Value::Null;
        }
        format!("data: {c}\n\n")
    };
    let mut out = vec![chunk(json!({"role": "assistant", "content": ""}), Value::Null)];
    let (prompt, completion, finish) = match behaviour {
        Behaviour::Reply { text, prompt_tokens, completion_tokens } => {
            out.extend(words(text).into_iter().map(|w| chunk(json!({"content": w}), Value::Null)));
            (*prompt_tokens, *completion_tokens, "stop")
        }
        Behaviour::ToolCall { id, name, arguments } => {
            out.push(chunk(
                json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
                    "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            ));
            for piece in thirds(arguments) {
                out.push(chunk(json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}), Value::Null));
            }
            (20, 7, "tool_calls")
        }
        Behaviour::ErrorAfterFirstChunk => {
            out.push(chunk(json!({"content": "Partial"}), Value::Null));
            out.push(format!(
                "data: {}\n\n",
                json!({"error": {"message": "fake failure mid-stream", "type": "server_error"}})
            ));
            return out;
        }
        Behaviour::CutMidway => {
            out.push(chunk(json!({"content": "Partial"}), Value::Null));
            return out;
        }
        Behaviour::MalformedJson => return vec!["data: {\"choices\": [{\"delta\": \n\n".to_owned()],
        Behaviour::Status { .. } | Behaviour::Slow { .. } => return out,
    };
    out.push(chunk(json!({}), json!(finish)));
    if include_usage {
        let usage = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}});
        out.push(format!("data: {usage}\n\n"));
    }
    out.push("data: [DONE]\n\n".to_owned());
    out
}

fn thirds(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let step = chars.len().div_ceil(3).max(1);
    chars.chunks(step).map(|c| c.iter().collect()).collect()
}

fn anthropic_events(behaviour: &Behaviour, model: &str) -> Vec<String> {
    let event = |name: &str, data: Value| format!("event: {name}\ndata: {data}\n\n");
    let prompt = match behaviour {
        Behaviour::Reply { prompt_tokens, .. } => *prompt_tokens,
        _ => 20,
    };
    let mut out = vec![
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant",
                "content": [], "model": model, "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": prompt, "output_tokens": 1}}}),
        ),
        event("ping", json!({"type": "ping"})),
    ];
    let text_start = json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}});
    let text_delta =
        |t: &str| json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": t}});
    let (completion, stop) = match behaviour {
        Behaviour::Reply { text, completion_tokens, .. } => {
            out.push(event("content_block_start", text_start));
            out.extend(words(text).iter().map(|w| event("content_block_delta", text_delta(w.as_str()))));
            out.push(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
            (*completion_tokens, "end_turn")
        }
        Behaviour::ToolCall { id, name, arguments } => {
            out.push(event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
            ));
            for piece in thirds(arguments) {
                out.push(event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}),
                ));
            }
            out.push(event("content_block_stop", json!({"type": "content_block_stop", "index": 0})));
            (7, "tool_use")
        }
        Behaviour::ErrorAfterFirstChunk => {
            out.push(event("content_block_start", text_start));
            out.push(event("content_block_delta", text_delta("Partial")));
            out.push(event(
                "error",
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ));
            return out;
        }
        Behaviour::CutMidway => {
            out.push(event("content_block_start", text_start));
            out.push(event("content_block_delta", text_delta("Partial")));
            return out;
        }
        Behaviour::MalformedJson => {
            return vec!["event: message_start\ndata: {\"type\": \"message_start\", \n\n".into()];
        }
        Behaviour::Status { .. } | Behaviour::Slow { .. } => return out,
    };
    out.push(event(
        "message_delta",
        json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": {"output_tokens": completion}}),
    ));
    out.push(event("message_stop", json!({"type": "message_stop"})));
    out
}
