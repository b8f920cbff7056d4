//! A fake LLM provider for tests: one HTTP server on port 0 speaking, in their
//! published wire formats, OpenAI's chat completions (`POST /v1/chat/completions`) and
//! embeddings (`POST /v1/embeddings`: float or base64 vectors, its 400 and 404 bodies),
//! Anthropic's Messages API (`POST /v1/messages`), Google's Gemini API
//! (`POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent?alt=sse`,
//! `:batchEmbedContents`), Ollama's (`POST /api/chat` with newline-delimited JSON
//! streams, `POST /api/embed`), Cohere's v2 (`POST /v2/chat` with typed events,
//! `POST /v2/embed`) and AWS Bedrock's Converse API (`POST /model/{id}/converse`,
//! `/converse-stream` in AWS's binary event-stream encoding; `/invoke` for its Titan and
//! Cohere embedding models) — whole answers, streams with text and tool-call deltas,
//! usage, stop reasons and error bodies — and, on request, their failures: error statuses
//! with Retry-After, a slow first byte, an error after the first chunk, a stream cut
//! without its end marker, malformed JSON.
//!
//! Each request takes the next scripted [`Behaviour`], or the default one; every
//! request received is kept for assertions (a budget refusal must leave none). Once told
//! the key it expects ([`FakeLlm::require_key`]), it refuses any other as the provider
//! does: the status and error body of a wrong key on each wire.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
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
    Gemini,
    Ollama,
    Cohere,
    Bedrock,
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
    /// the route, e.g. `/v1/embeddings`, `/v1beta/models/gemini-2.5-flash:generateContent`
    pub path: String,
    /// the key, from `Authorization: Bearer`, `x-api-key`, `x-goog-api-key`, or the
    /// access key id of a SigV4 `Authorization`
    pub key: Option<String>,
    pub body: Value,
}

struct Shared {
    script: Mutex<VecDeque<Behaviour>>,
    default: Mutex<Behaviour>,
    received: Mutex<Vec<Received>>,
    /// the only key accepted, once set; any other is refused as the provider would
    required_key: Mutex<Option<String>>,
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
            required_key: Mutex::new(None),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/v1/messages", post(anthropic))
            .route("/v1/embeddings", post(embeddings))
            .route("/v1beta/models/{target}", post(gemini))
            .route("/api/chat", post(ollama))
            .route("/api/embed", post(ollama_embed))
            .route("/v2/chat", post(cohere))
            .route("/v2/embed", post(cohere_embed))
            .route("/model/{model}/{action}", post(bedrock))
            .layer(axum::middleware::from_fn_with_state(shared.clone(), check_key))
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

    /// Accepts only `key` from now on (Ollama's wire, which has no keys, excepted): a
    /// request with another key, or none, is recorded and refused with the wire's
    /// wrong-key answer.
    pub fn require_key(&self, key: impl Into<String>) {
        *self.shared.required_key.lock().unwrap() = Some(key.into());
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.shared.received.lock().unwrap().len()
    }

    /// Drops what the fake has kept of the requests so far: a benchmark that measures
    /// the memory of the process the fake runs in must not count the fake's own record.
    pub fn forget_received(&self) {
        self.shared.received.lock().unwrap().clear();
    }

    /// Makes `config`'s provider `name` this fake, speaking `wire`: the catalogue's
    /// providers keep their protocol, another name becomes a custom endpoint.
    pub fn serve_as(&self, config: &mut HelixConfig, name: &str, wire: Wire) {
        let base_url = match wire {
            Wire::OpenAi => format!("{}/v1", self.url),
            Wire::Anthropic | Wire::Gemini | Wire::Ollama | Wire::Cohere | Wire::Bedrock => self.url.clone(),
        };
        let protocol = match wire {
            Wire::OpenAi => "openai",
            Wire::Anthropic => "anthropic",
            Wire::Gemini => "gemini",
            Wire::Ollama => "ollama",
            Wire::Cohere => "cohere",
            Wire::Bedrock => "bedrock",
        };
        let known = [
            "openai",
            "anthropic",
            "google",
            "xai",
            "deepseek",
            "mistral",
            "together",
            "openrouter",
            "ollama",
            "cohere",
            "bedrock",
        ];
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

/// The key a request carries: `Authorization: Bearer`, `x-api-key`, `x-goog-api-key`,
/// or the access key id of a SigV4 `Authorization`.
fn presented_key(headers: &HeaderMap) -> Option<String> {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .or_else(|| headers.get("x-goog-api-key").and_then(|v| v.to_str().ok()))
        .or_else(|| {
            let signed = headers.get("authorization")?.to_str().ok()?.strip_prefix("AWS4-HMAC-SHA256 Credential=")?;
            signed.split('/').next()
        })
        .map(str::to_owned)
}

/// The wire of a route of the fake.
fn wire_of(path: &str) -> Wire {
    match path {
        "/v1/messages" => Wire::Anthropic,
        p if p.starts_with("/v1beta/") => Wire::Gemini,
        p if p.starts_with("/api/") => Wire::Ollama,
        p if p.starts_with("/v2/") => Wire::Cohere,
        p if p.starts_with("/model/") => Wire::Bedrock,
        _ => Wire::OpenAi,
    }
}

/// Refuses a request without the required key (when one is set) as the provider does,
/// after recording it.
async fn check_key(State(shared): State<Arc<Shared>>, request: axum::extract::Request, next: Next) -> Response {
    let required = shared.required_key.lock().unwrap().clone();
    let path = request.uri().path().to_owned();
    let wire = wire_of(&path);
    let key = presented_key(request.headers());
    match required {
        Some(required) if wire != Wire::Ollama && key.as_deref() != Some(required.as_str()) => {
            let body = axum::body::to_bytes(request.into_body(), usize::MAX).await.unwrap_or_default();
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            shared.received.lock().unwrap().push(Received { wire, path, key, body });
            wrong_key(wire)
        }
        _ => next.run(request).await,
    }
}

/// What each provider answers a wrong or missing key with (never echoing the key).
fn wrong_key(wire: Wire) -> Response {
    let (status, body) = match wire {
        Wire::OpenAi => (
            StatusCode::UNAUTHORIZED,
            json!({"error": {"message": "Incorrect API key provided. You can find your API key at \
                https://platform.openai.com/account/api-keys.", "type": "invalid_request_error", "param": null,
                "code": "invalid_api_key"}}),
        ),
        Wire::Anthropic => (
            StatusCode::UNAUTHORIZED,
            json!({"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}),
        ),
        Wire::Gemini => (
            StatusCode::BAD_REQUEST,
            json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID", "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"}}]}}),
        ),
        Wire::Cohere => (StatusCode::UNAUTHORIZED, json!({"id": "fake-error", "message": "invalid api token"})),
        Wire::Bedrock => {
            let body = json!({"message": "The security token included in the request is invalid."});
            let mut response = (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
            response.headers_mut().insert("x-amzn-errortype", "UnrecognizedClientException".parse().unwrap());
            return response;
        }
        Wire::Ollama => (StatusCode::UNAUTHORIZED, json!({"error": "unauthorized"})),
    };
    (status, axum::Json(body)).into_response()
}

fn next(shared: &Shared, wire: Wire, path: &str, headers: &HeaderMap, body: &Bytes) -> (Behaviour, Value) {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let key = presented_key(headers);
    shared.received.lock().unwrap().push(Received { wire, path: path.to_owned(), key, body: body.clone() });
    let scripted = shared.script.lock().unwrap().pop_front();
    (scripted.unwrap_or_else(|| shared.default.lock().unwrap().clone()), body)
}

async fn openai(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (behaviour, request) = next(&shared, Wire::OpenAi, "/v1/chat/completions", &headers, &body);
    let stream = request["stream"] == true;
    respond(Wire::OpenAi, behaviour, request, stream).await
}

async fn anthropic(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (behaviour, request) = next(&shared, Wire::Anthropic, "/v1/messages", &headers, &body);
    let stream = request["stream"] == true;
    respond(Wire::Anthropic, behaviour, request, stream).await
}

/// Gemini's `models/{model}:{method}`: the model is in the path, streaming is the
/// method (`streamGenerateContent`, with `alt=sse` for server-sent events).
async fn gemini(
    State(shared): State<Arc<Shared>>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/v1beta/models/{target}");
    let (behaviour, mut request) = next(&shared, Wire::Gemini, &path, &headers, &body);
    let Some((model, method)) = target.split_once(':') else {
        return gemini_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Requested entity was not found.");
    };
    request["model"] = model.into();
    match method {
        "generateContent" => respond(Wire::Gemini, behaviour, request, false).await,
        "streamGenerateContent" => respond(Wire::Gemini, behaviour, request, true).await,
        "batchEmbedContents" => {
            let texts = request["requests"].as_array().map(|requests| {
                requests.iter().filter_map(|r| r["content"]["parts"][0]["text"].as_str().map(str::to_owned)).collect()
            });
            let dim = request["requests"][0]["outputDimensionality"].as_u64();
            native_embeddings(Wire::Gemini, behaviour, model, texts.unwrap_or_default(), dim).await
        }
        _ => gemini_error(StatusCode::NOT_FOUND, "NOT_FOUND", "Requested entity was not found."),
    }
}

/// Ollama streams unless the request says `"stream": false`.
async fn ollama(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (behaviour, request) = next(&shared, Wire::Ollama, "/api/chat", &headers, &body);
    let stream = request["stream"] != false;
    respond(Wire::Ollama, behaviour, request, stream).await
}

async fn ollama_embed(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (behaviour, request) = next(&shared, Wire::Ollama, "/api/embed", &headers, &body);
    let texts = match &request["input"] {
        Value::String(text) => vec![text.clone()],
        other => other.as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned)).collect(),
    };
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    native_embeddings(Wire::Ollama, behaviour, &model, texts, request["dimensions"].as_u64()).await
}

async fn cohere(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (behaviour, request) = next(&shared, Wire::Cohere, "/v2/chat", &headers, &body);
    let stream = request["stream"] == true;
    respond(Wire::Cohere, behaviour, request, stream).await
}

async fn cohere_embed(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let (behaviour, request) = next(&shared, Wire::Cohere, "/v2/embed", &headers, &body);
    let texts = request["texts"].as_array().into_iter().flatten().filter_map(|t| t.as_str().map(str::to_owned));
    let model = request["model"].as_str().unwrap_or_default().to_owned();
    native_embeddings(Wire::Cohere, behaviour, &model, texts.collect(), request["output_dimension"].as_u64()).await
}

/// Bedrock's `converse` (whole) and `converse-stream`; the model id is the path's
/// (percent-decoded) segment.
async fn bedrock(
    State(shared): State<Arc<Shared>>,
    Path((model, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/model/{model}/{action}");
    let (behaviour, mut request) = next(&shared, Wire::Bedrock, &path, &headers, &body);
    request["model"] = model.into();
    match action.as_str() {
        "converse" => respond(Wire::Bedrock, behaviour, request, false).await,
        "converse-stream" => respond(Wire::Bedrock, behaviour, request, true).await,
        "invoke" => bedrock_invoke(behaviour, &request).await,
        _ => status_response(Wire::Bedrock, 404, None),
    }
}

/// Bedrock's `InvokeModel` for its embedding models: Titan's `{"inputText"}` (V2's
/// `dimensions` 256, 512 or 1024, default 1024) and Cohere Embed's `{"texts"}` (at most
/// 96; `output_dimension`, default 1024); the input tokens, one a word, also in the
/// `x-amzn-bedrock-input-token-count` header as Bedrock reports them. Anything else is
/// a ValidationException.
async fn bedrock_invoke(behaviour: Behaviour, request: &Value) -> Response {
    match slow(behaviour).await {
        Behaviour::Status { code, retry_after } => return status_response(Wire::Bedrock, code, retry_after),
        Behaviour::MalformedJson | Behaviour::CutMidway => return json_text("{\"embedding\": ["),
        _ => {}
    }
    let model = request["model"].as_str().unwrap_or_default();
    let words = |text: &str| text.split_whitespace().count();
    let invalid = || status_response(Wire::Bedrock, 400, None);
    let (body, tokens) = if model.contains("titan-embed") {
        let Some(text) = request["inputText"].as_str().filter(|t| !t.is_empty()) else { return invalid() };
        let dim = match request["dimensions"].as_u64() {
            None => 1024,
            Some(dim @ (256 | 512 | 1024)) => dim as usize,
            Some(_) => return invalid(),
        };
        let vector = fake_vector(text, dim);
        let body =
            json!({"embedding": vector, "inputTextTokenCount": words(text), "embeddingsByType": {"float": vector}});
        (body, words(text))
    } else if model.contains("cohere.embed") {
        let texts: Vec<&str> = request["texts"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if texts.is_empty() || texts.len() > 96 {
            return invalid();
        }
        let dim = request["output_dimension"].as_u64().map_or(1024, |d| d as usize);
        let vectors: Vec<Vec<f32>> = texts.iter().map(|t| fake_vector(t, dim)).collect();
        let body = json!({"id": "fake-embed", "embeddings": {"float": vectors}, "texts": texts,
            "response_type": "embeddings_by_type"});
        (body, texts.iter().map(|t| words(t)).sum())
    } else {
        return invalid();
    };
    let mut response = axum::Json(body).into_response();
    response.headers_mut().insert("x-amzn-bedrock-input-token-count", tokens.into());
    response
}

/// Gemini's error body: `{"error": {"code", "message", "status"}}`.
fn gemini_error(status: StatusCode, name: &str, message: &str) -> Response {
    let body = json!({"error": {"code": status.as_u16(), "message": message, "status": name}});
    (status, axum::Json(body)).into_response()
}

/// The error body each wire answers a failed status with.
fn error_body(wire: Wire, code: u16) -> Value {
    let message = format!("fake failure {code}");
    match wire {
        Wire::OpenAi => json!({"error": {"message": message, "type": "server_error", "code": null}}),
        Wire::Anthropic => json!({"type": "error", "error": {"type": anthropic_type(code), "message": message}}),
        Wire::Gemini => {
            let status = match code {
                429 => "RESOURCE_EXHAUSTED",
                400 => "INVALID_ARGUMENT",
                403 => "PERMISSION_DENIED",
                404 => "NOT_FOUND",
                503 => "UNAVAILABLE",
                _ => "INTERNAL",
            };
            json!({"error": {"code": code, "message": message, "status": status}})
        }
        Wire::Ollama => json!({"error": message}),
        Wire::Cohere => json!({"id": "fake-error", "message": message}),
        Wire::Bedrock => json!({"message": message}),
    }
}

fn status_response(wire: Wire, code: u16, retry_after: Option<u64>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, axum::Json(error_body(wire, code))).into_response();
    if wire == Wire::Bedrock {
        let kind = match code {
            429 => "ThrottlingException",
            400 => "ValidationException",
            503 => "ServiceUnavailableException",
            _ => "InternalServerException",
        };
        response.headers_mut().insert("x-amzn-errortype", kind.parse().unwrap());
    }
    if let Some(seconds) = retry_after {
        response.headers_mut().insert("retry-after", seconds.to_string().parse().unwrap());
    }
    response
}

async fn slow(mut behaviour: Behaviour) -> Behaviour {
    while let Behaviour::Slow { delay, then } = behaviour {
        tokio::time::sleep(delay).await;
        behaviour = *then;
    }
    behaviour
}

async fn respond(wire: Wire, behaviour: Behaviour, request: Value, stream: bool) -> Response {
    let behaviour = slow(behaviour).await;
    let model = request["model"].as_str().unwrap_or("fake-model").to_owned();
    let include_usage = request["stream_options"]["include_usage"] == true;
    match (&behaviour, stream) {
        (Behaviour::Status { code, retry_after }, _) => status_response(wire, *code, *retry_after),
        (Behaviour::MalformedJson, false) => json_text("{\"id\": \"broken\", \"choices\": [ {"),
        (Behaviour::CutMidway, false) => {
            json_text("{\"id\": \"cut\", \"choices\": [{\"index\": 0, \"message\": {\"role\":")
        }
        (Behaviour::ErrorAfterFirstChunk, false) => (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response(),
        (_, false) => axum::Json(whole(wire, &behaviour, &model)).into_response(),
        (_, true) if wire == Wire::Bedrock => {
            let frames = bedrock_frames(&behaviour);
            let body = Body::from_stream(futures::stream::iter(frames.into_iter().map(Ok::<_, Infallible>)));
            ([("content-type", "application/vnd.amazon.eventstream")], body).into_response()
        }
        (_, true) if wire == Wire::Ollama => {
            let lines = ollama_lines(&behaviour, &model);
            let body = Body::from_stream(futures::stream::iter(lines.into_iter().map(Ok::<_, Infallible>)));
            ([("content-type", "application/x-ndjson")], body).into_response()
        }
        (_, true) => event_stream(events(wire, &behaviour, &model, include_usage)),
    }
}

/// Embeddings in Gemini's, Ollama's or Cohere's shape: the fake's vectors, one token a
/// word; a model without "embed" in its name is not found.
async fn native_embeddings(
    wire: Wire,
    behaviour: Behaviour,
    model: &str,
    texts: Vec<String>,
    dim: Option<u64>,
) -> Response {
    match slow(behaviour).await {
        Behaviour::Status { code, retry_after } => return status_response(wire, code, retry_after),
        Behaviour::MalformedJson | Behaviour::CutMidway => return json_text("{\"embeddings\": ["),
        _ => {}
    }
    if !model.contains("embed") {
        return status_response(wire, 404, None);
    }
    if texts.is_empty() {
        return status_response(wire, 400, None);
    }
    let dim = dim.map_or(FAKE_EMBEDDING_DIM, |d| d as usize);
    let vectors: Vec<Vec<f32>> = texts.iter().map(|t| fake_vector(t, dim)).collect();
    let tokens: usize = texts.iter().map(|t| t.split_whitespace().count()).sum();
    let body = match wire {
        Wire::Gemini => json!({"embeddings": vectors.iter().map(|v| json!({"values": v})).collect::<Vec<_>>()}),
        Wire::Ollama => json!({"model": model, "embeddings": vectors, "total_duration": 14143917,
            "load_duration": 1019500, "prompt_eval_count": tokens}),
        _ => json!({"id": "fake-embed", "embeddings": {"float": vectors}, "texts": texts,
            "meta": {"api_version": {"version": "2"}, "billed_units": {"input_tokens": tokens}},
            "response_type": "embeddings_by_type"}),
    };
    axum::Json(body).into_response()
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
    let (behaviour, request) = next(&shared, Wire::OpenAi, "/v1/embeddings", &headers, &body);
    match slow(behaviour).await {
        Behaviour::Status { code, retry_after } => return status_response(Wire::OpenAi, code, retry_after),
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
        (Wire::Gemini, Behaviour::Reply { text, prompt_tokens, completion_tokens }) => {
            gemini_chunk(json!([{"text": text}]), Some("STOP"), Some((*prompt_tokens, *completion_tokens)), model)
        }
        // Gemini's function calls come whole, and without an id on most models
        (Wire::Gemini, Behaviour::ToolCall { name, arguments, .. }) => gemini_chunk(
            json!([{"functionCall": {"name": name, "args": serde_json::from_str::<Value>(arguments).unwrap_or(json!({}))}}]),
            Some("STOP"),
            Some((20, 7)),
            model,
        ),
        (Wire::Ollama, Behaviour::Reply { text, prompt_tokens, completion_tokens }) => ollama_line(
            model,
            json!({"role": "assistant", "content": text}),
            Some((*prompt_tokens, *completion_tokens)),
        ),
        (Wire::Ollama, Behaviour::ToolCall { name, arguments, .. }) => ollama_line(
            model,
            json!({"role": "assistant", "content": "", "tool_calls": [{"function": {"name": name,
                "arguments": serde_json::from_str::<Value>(arguments).unwrap_or(json!({}))}}]}),
            Some((20, 7)),
        ),
        (Wire::Cohere, Behaviour::Reply { text, prompt_tokens, completion_tokens }) => json!({
            "id": "fake-chat", "finish_reason": "COMPLETE",
            "message": {"role": "assistant", "content": [{"type": "text", "text": text}]},
            "usage": cohere_usage(*prompt_tokens, *completion_tokens),
        }),
        (Wire::Bedrock, Behaviour::Reply { text, prompt_tokens, completion_tokens }) => json!({
            "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": prompt_tokens, "outputTokens": completion_tokens,
                "totalTokens": prompt_tokens + completion_tokens},
            "metrics": {"latencyMs": 42},
        }),
        (Wire::Bedrock, Behaviour::ToolCall { id, name, arguments }) => json!({
            "output": {"message": {"role": "assistant", "content": [{"toolUse": {"toolUseId": id, "name": name,
                "input": serde_json::from_str::<Value>(arguments).unwrap_or(json!({}))}}]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 20, "outputTokens": 7, "totalTokens": 27},
            "metrics": {"latencyMs": 42},
        }),
        (Wire::Cohere, Behaviour::ToolCall { id, name, arguments }) => json!({
            "id": "fake-chat", "finish_reason": "TOOL_CALL",
            "message": {"role": "assistant", "tool_plan": "I will look it up.",
                "tool_calls": [{"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}]},
            "usage": cohere_usage(20, 7),
        }),
        _ => json!({}),
    }
}

/// A `GenerateContentResponse`: one candidate with `parts`, its finish reason once
/// there is one, the usage so far.
fn gemini_chunk(parts: Value, finish: Option<&str>, usage: Option<(u64, u64)>, model: &str) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if let Some(reason) = finish {
        candidate["finishReason"] = reason.into();
    }
    let mut chunk = json!({"candidates": [candidate], "modelVersion": model, "responseId": "fake-response"});
    if let Some((prompt, output)) = usage {
        chunk["usageMetadata"] =
            json!({"promptTokenCount": prompt, "candidatesTokenCount": output, "totalTokenCount": prompt + output});
    }
    chunk
}

/// One object of Ollama's `/api/chat`; with counts it is the last (`done: true`).
fn ollama_line(model: &str, message: Value, counts: Option<(u64, u64)>) -> Value {
    let mut line = json!({"model": model, "created_at": "2026-12-04T12:00:00.000000Z", "message": message,
        "done": counts.is_some()});
    if let Some((prompt, output)) = counts {
        line["done_reason"] = "stop".into();
        line["total_duration"] = 4_883_583_458_u64.into();
        line["load_duration"] = 1_334_875_u64.into();
        line["prompt_eval_count"] = prompt.into();
        line["prompt_eval_duration"] = 342_546_000_u64.into();
        line["eval_count"] = output.into();
        line["eval_duration"] = 4_535_599_000_u64.into();
    }
    line
}

fn cohere_usage(prompt: u64, output: u64) -> Value {
    json!({"billed_units": {"input_tokens": prompt, "output_tokens": output},
        "tokens": {"input_tokens": prompt + 60, "output_tokens": output}})
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
        Wire::Gemini => gemini_events(behaviour, model),
        Wire::Cohere => cohere_events(behaviour),
        // not server-sent events: see `ollama_lines` and `bedrock_frames`
        Wire::Ollama | Wire::Bedrock => Vec::new(),
    }
}

/// `converse-stream`: AWS event-stream messages, each named by its `:event-type`
/// header; complete at `messageStop`, usage in the `metadata` after it.
fn bedrock_frames(behaviour: &Behaviour) -> Vec<Vec<u8>> {
    let event = |name: &str, payload: Value| {
        aws_event_message(
            &[(":event-type", name), (":content-type", "application/json"), (":message-type", "event")],
            payload.to_string().as_bytes(),
        )
    };
    let text = |t: &str| event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": t}}));
    let end = |stop: &str, (prompt, output): (u64, u64)| {
        [
            event("messageStop", json!({"stopReason": stop})),
            event(
                "metadata",
                json!({"usage": {"inputTokens": prompt, "outputTokens": output, "totalTokens": prompt + output},
                    "metrics": {"latencyMs": 42}}),
            ),
        ]
    };
    let mut out = vec![event("messageStart", json!({"role": "assistant"}))];
    match behaviour {
        Behaviour::Reply { text: answer, prompt_tokens, completion_tokens } => {
            out.extend(words(answer).iter().map(|w| text(w)));
            out.push(event("contentBlockStop", json!({"contentBlockIndex": 0})));
            out.extend(end("end_turn", (*prompt_tokens, *completion_tokens)));
        }
        Behaviour::ToolCall { id, name, arguments } => {
            out.push(event(
                "contentBlockStart",
                json!({"contentBlockIndex": 0, "start": {"toolUse": {"toolUseId": id, "name": name}}}),
            ));
            for piece in thirds(arguments) {
                out.push(event(
                    "contentBlockDelta",
                    json!({"contentBlockIndex": 0, "delta": {"toolUse": {"input": piece}}}),
                ));
            }
            out.push(event("contentBlockStop", json!({"contentBlockIndex": 0})));
            out.extend(end("tool_use", (20, 7)));
        }
        Behaviour::ErrorAfterFirstChunk => {
            out.push(text("Partial"));
            out.push(aws_event_message(
                &[
                    (":exception-type", "modelStreamErrorException"),
                    (":content-type", "application/json"),
                    (":message-type", "exception"),
                ],
                br#"{"message":"The model stream failed."}"#,
            ));
        }
        Behaviour::CutMidway => out.push(text("Partial")),
        // a well-framed message whose payload is not JSON
        Behaviour::MalformedJson => return vec![aws_event_message(&[(":event-type", "messageStart")], b"{\"role\": ")],
        Behaviour::Status { .. } | Behaviour::Slow { .. } => {}
    }
    out
}

/// One message of AWS's event-stream encoding: total length, headers length and
/// their CRC32 (the prelude), string headers (name length, name, type 7, value length,
/// value), the payload, the CRC32 of all before it; big-endian.
fn aws_event_message(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut encoded = Vec::new();
    for (name, value) in headers {
        encoded.push(name.len() as u8);
        encoded.extend_from_slice(name.as_bytes());
        encoded.push(7);
        encoded.extend_from_slice(&(value.len() as u16).to_be_bytes());
        encoded.extend_from_slice(value.as_bytes());
    }
    let total = (12 + encoded.len() + payload.len() + 4) as u32;
    let mut message = total.to_be_bytes().to_vec();
    message.extend_from_slice(&(encoded.len() as u32).to_be_bytes());
    message.extend_from_slice(&crc32(&message).to_be_bytes());
    message.extend_from_slice(&encoded);
    message.extend_from_slice(payload);
    message.extend_from_slice(&crc32(&message).to_be_bytes());
    message
}

/// CRC-32 (IEEE 802.3, reflected polynomial 0xEDB88320), bit by bit: written here from
/// the definition so that the fake does not share the router's implementation.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for byte in bytes {
        crc ^= u32::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// `streamGenerateContent?alt=sse`: each event a whole response with the next piece;
/// the last carries `finishReason` (there is no other end marker).
fn gemini_events(behaviour: &Behaviour, model: &str) -> Vec<String> {
    let event = |chunk: Value| format!("data: {chunk}\r\n\r\n");
    let partial = || event(gemini_chunk(json!([{"text": "Partial"}]), None, Some((20, 1)), model));
    match behaviour {
        Behaviour::Reply { text, prompt_tokens, completion_tokens } => {
            let words = words(text);
            let last = words.len() - 1;
            words
                .into_iter()
                .enumerate()
                .map(|(i, w)| {
                    let done = i == last;
                    let usage = (*prompt_tokens, if done { *completion_tokens } else { i as u64 + 1 });
                    event(gemini_chunk(json!([{"text": w}]), done.then_some("STOP"), Some(usage), model))
                })
                .collect()
        }
        Behaviour::ToolCall { .. } => vec![event(whole(Wire::Gemini, behaviour, model))],
        Behaviour::ErrorAfterFirstChunk => vec![
            partial(),
            event(json!({"error": {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}})),
        ],
        Behaviour::CutMidway => vec![partial()],
        Behaviour::MalformedJson => vec!["data: {\"candidates\": [{\"content\": \r\n\r\n".to_owned()],
        Behaviour::Status { .. } | Behaviour::Slow { .. } => Vec::new(),
    }
}

/// `/api/chat` streamed: one JSON object a line, the last with `done: true`.
fn ollama_lines(behaviour: &Behaviour, model: &str) -> Vec<String> {
    let line = |value: Value| format!("{value}\n");
    let text = |t: &str| line(ollama_line(model, json!({"role": "assistant", "content": t}), None));
    match behaviour {
        Behaviour::Reply { text: answer, prompt_tokens, completion_tokens } => {
            let mut out: Vec<String> = words(answer).iter().map(|w| text(w)).collect();
            let end = ollama_line(
                model,
                json!({"role": "assistant", "content": ""}),
                Some((*prompt_tokens, *completion_tokens)),
            );
            out.push(line(end));
            out
        }
        // a tool call arrives whole in one line, then the final one
        Behaviour::ToolCall { .. } => {
            let call = ollama_line(model, whole(Wire::Ollama, behaviour, model)["message"].clone(), None);
            let end = ollama_line(model, json!({"role": "assistant", "content": ""}), Some((20, 7)));
            vec![line(call), line(end)]
        }
        Behaviour::ErrorAfterFirstChunk => {
            vec![text("Partial"), line(json!({"error": "an error was encountered while running the model"}))]
        }
        Behaviour::CutMidway => vec![text("Partial")],
        Behaviour::MalformedJson => vec!["{\"model\": \"m\", \"message\": {\n".to_owned()],
        Behaviour::Status { .. } | Behaviour::Slow { .. } => Vec::new(),
    }
}

/// `/v2/chat` streamed: typed events named in `event:` and `type`, complete at
/// `message-end` (finish reason and usage).
fn cohere_events(behaviour: &Behaviour) -> Vec<String> {
    let event = |data: Value| format!("event: {}\ndata: {data}\n\n", data["type"].as_str().unwrap_or_default());
    let start = event(json!({"type": "message-start", "id": "fake-chat",
        "delta": {"message": {"role": "assistant", "content": [], "tool_plan": "", "tool_calls": [], "citations": []}}}));
    let content_start = event(
        json!({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
    );
    let delta =
        |t: &str| event(json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": t}}}}));
    let end = |reason: &str, (prompt, output): (u64, u64)| {
        event(json!({"type": "message-end", "delta": {"finish_reason": reason, "usage": cohere_usage(prompt, output)}}))
    };
    let mut out = vec![start];
    match behaviour {
        Behaviour::Reply { text, prompt_tokens, completion_tokens } => {
            out.push(content_start);
            out.extend(words(text).iter().map(|w| delta(w)));
            out.push(event(json!({"type": "content-end", "index": 0})));
            out.push(end("COMPLETE", (*prompt_tokens, *completion_tokens)));
        }
        Behaviour::ToolCall { id, name, arguments } => {
            out.push(event(
                json!({"type": "tool-plan-delta", "delta": {"message": {"tool_plan": "I will look it up."}}}),
            ));
            out.push(event(json!({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {
                "id": id, "type": "function", "function": {"name": name, "arguments": ""}}}}})));
            for piece in thirds(arguments) {
                out.push(event(json!({"type": "tool-call-delta", "index": 0,
                    "delta": {"message": {"tool_calls": {"function": {"arguments": piece}}}}})));
            }
            out.push(event(json!({"type": "tool-call-end", "index": 0})));
            out.push(end("TOOL_CALL", (20, 7)));
        }
        Behaviour::ErrorAfterFirstChunk => {
            out.extend([content_start, delta("Partial")]);
            out.push(event(json!({"type": "message-end", "delta": {"finish_reason": "ERROR",
                "error": "internal server error"}})));
        }
        Behaviour::CutMidway => out.extend([content_start, delta("Partial")]),
        Behaviour::MalformedJson => {
            return vec!["event: message-start\ndata: {\"type\": \"message-start\", \n\n".to_owned()];
        }
        Behaviour::Status { .. } | Behaviour::Slow { .. } => {}
    }
    out
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
