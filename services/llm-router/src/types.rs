//! The router's own shapes of a chat call, between the gRPC wire and each provider's
//! wire. They follow OpenAI's chat model (roles, function tools, tool-call deltas),
//! which every adapter translates to and from.

use std::time::Duration;

use serde_json::{Map, Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "system" | "developer" => Some(Self::System),
            "user" => Some(Self::User),
            "assistant" => Some(Self::Assistant),
            "tool" => Some(Self::Tool),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// the arguments as the model wrote them: JSON text
    pub arguments: String,
}

impl ToolCall {
    /// The arguments as an object, for wires that carry them as one (`{}` when the
    /// model wrote something else).
    pub fn arguments_object(&self) -> Value {
        serde_json::from_str::<Value>(&self.arguments).ok().filter(Value::is_object).unwrap_or_else(|| json!({}))
    }
}

#[derive(Debug, Clone)]
pub struct Message {
    pub role: Role,
    pub content: String,
    /// OpenAI content parts (`text`, `image_url`); when set, they are the content
    pub parts: Option<Vec<Value>>,
    pub name: Option<String>,
    pub tool_call_id: Option<String>,
    pub tool_calls: Vec<ToolCall>,
}

impl Message {
    pub fn text(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), parts: None, name: None, tool_call_id: None, tool_calls: Vec::new() }
    }

    /// The text alone: the content, or the text parts joined by newlines.
    pub fn plain_text(&self) -> String {
        match &self.parts {
            Some(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect::<Vec<_>>().join("\n"),
            None => self.content.clone(),
        }
    }

    /// The text of the message, parts included, for token estimates.
    pub fn text_len(&self) -> usize {
        let parts: usize = self.parts.iter().flatten().filter_map(|p| p["text"].as_str()).map(str::len).sum();
        self.content.len() + parts + self.tool_calls.iter().map(|c| c.name.len() + c.arguments.len()).sum::<usize>()
    }
}

/// The prefix of the tool call ids the router makes up for wires whose calls come
/// without one (Gemini's older models, Ollama).
pub const MADE_UP_CALL_ID: &str = "call_hx_";

/// A made-up tool call id: unique, so that a later turn's calls never share an id with
/// an earlier one's (the way back finds a call's function by its id).
pub fn made_up_call_id() -> String {
    format!("{MADE_UP_CALL_ID}{}", uuid::Uuid::now_v7().simple())
}

/// Appends one message's blocks to the turns of a wire that wants roles alternating
/// (Anthropic, Gemini, Bedrock): to the last turn when it has the same role.
pub fn push_turn<R: PartialEq>(turns: &mut Vec<(R, Vec<Value>)>, role: R, blocks: Vec<Value>) {
    match turns.last_mut() {
        Some((last, existing)) if *last == role => existing.extend(blocks),
        _ => turns.push((role, blocks)),
    }
}

/// Embeddings as a wire answered them, in input order: one per input, else the
/// answer is unreadable.
/// An embeddings answer: one vector per input, in order, and the input tokens the
/// provider reported (none when it reports none).
pub type EmbeddingAnswer = (Vec<Vec<f32>>, Option<u64>);

pub fn one_per_input(vectors: Vec<Vec<f32>>, inputs: usize) -> Result<Vec<Vec<f32>>, UpstreamError> {
    if vectors.len() != inputs {
        return Err(UpstreamError::malformed(format!("{} embeddings for {inputs} inputs", vectors.len())));
    }
    Ok(vectors)
}

/// `data:<media type>;base64,<data>` as its media type and data.
pub fn data_url(url: &str) -> Option<(&str, &str)> {
    url.strip_prefix("data:")?.split_once(";base64,")
}

/// A function the model may call.
#[derive(Debug, Clone)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON Schema of the arguments
    pub parameters: Value,
}

#[derive(Debug, Clone, Default)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub stop: Vec<String>,
    pub tools: Vec<Tool>,
    /// OpenAI's `tool_choice`: `"auto"`, `"none"`, `"required"` or `{"type":"function",...}`
    pub tool_choice: Option<Value>,
    /// OpenAI's `response_format`: `{"type":"json_object"}` or a JSON schema
    pub response_format: Option<Value>,
}

impl ChatRequest {
    /// The sampling settings the caller set (max_tokens, temperature, top_p, stop),
    /// under the names a wire gives them, in that order.
    pub fn sampling(&self, [max_tokens, temperature, top_p, stop]: [&str; 4]) -> Map<String, Value> {
        let mut out = Map::new();
        if let Some(n) = self.max_tokens {
            out.insert(max_tokens.into(), n.into());
        }
        if let Some(t) = self.temperature {
            out.insert(temperature.into(), t.into());
        }
        if let Some(p) = self.top_p {
            out.insert(top_p.into(), p.into());
        }
        if !self.stop.is_empty() {
            out.insert(stop.into(), self.stop.clone().into());
        }
        out
    }

    /// For wires without a JSON mode: what the system prompt says instead of
    /// `response_format` (a JSON object, or one matching the schema).
    pub fn json_instruction(&self) -> Option<String> {
        let format = self.response_format.as_ref().filter(|f| f["type"] != "text")?;
        let schema = &format["json_schema"]["schema"];
        Some(if schema.is_object() {
            format!("Answer with one JSON object only, matching this JSON Schema: {schema}")
        } else {
            "Answer with one JSON object only, no other text.".to_owned()
        })
    }

    /// The function an earlier assistant message called with `id`: wires that answer
    /// a call by its function's name (Gemini, Ollama) need it.
    pub fn tool_name_of(&self, id: &str) -> Option<&str> {
        self.messages.iter().flat_map(|m| &m.tool_calls).find(|c| c.id == id).map(|c| c.name.as_str())
    }

    /// A rough upper bound of the prompt's tokens, for reserving budget before the
    /// provider counts them: ~4 bytes a token for English, so bytes/3 over-estimates.
    pub fn prompt_token_estimate(&self) -> u64 {
        let bytes: usize = self.messages.iter().map(Message::text_len).sum::<usize>()
            + self.tools.iter().map(|t| t.name.len() + t.parameters.to_string().len()).sum::<usize>();
        (bytes as u64).div_ceil(3) + 4 * self.messages.len() as u64 + 16
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// of the prompt tokens, those read from the provider's cache
    pub cached_prompt_tokens: u64,
    /// of the completion tokens, those spent reasoning
    pub reasoning_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Stop,
    Length,
    ToolCalls,
    ContentFilter,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
            Self::ContentFilter => "content_filter",
        }
    }
}

/// A whole answer.
#[derive(Debug, Clone)]
pub struct Completion {
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: FinishReason,
    pub usage: Option<Usage>,
}

/// One piece of a streamed answer, in the order the provider sent them.
#[derive(Debug, Clone, PartialEq)]
pub enum Delta {
    Text(String),
    /// a fragment of the tool call at `index`: its id and name come with the first one
    ToolCall {
        index: u32,
        id: Option<String>,
        name: Option<String>,
        arguments: String,
    },
    Finish(FinishReason),
    Usage(Usage),
}

impl Delta {
    /// A tool call that arrives whole (Gemini, Ollama), as the one fragment at `index`.
    pub fn whole_tool_call(index: u32, call: ToolCall) -> Self {
        Delta::ToolCall { index, id: Some(call.id), name: Some(call.name), arguments: call.arguments }
    }

    /// Whether the client sees something of the answer in it: after the first such
    /// delta a failed stream can no longer fall back.
    pub fn is_content(&self) -> bool {
        matches!(self, Delta::Text(_) | Delta::ToolCall { .. })
    }
}

/// Why an attempt at a provider failed, and so what the router does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// 429: retried after Retry-After (or backoff), then the next provider
    RateLimited,
    /// 5xx (529 included): retried, then the next provider
    Server,
    /// no response head or first chunk in time: retried, then the next provider
    Timeout,
    /// the connection failed: retried, then the next provider
    Connect,
    /// an answer we could not read, or a stream cut before its end: next provider
    Malformed,
    /// 401/403: the key is wrong; next provider
    Auth,
    /// 404: the model or route does not exist there; next provider
    NotFound,
    /// 400/413/422: the request itself is wrong; answered to the caller, no fallback
    BadRequest,
    /// the provider's protocol has no adapter yet; next provider
    Unsupported,
}

#[derive(Debug, Clone)]
pub struct UpstreamError {
    pub kind: FailureKind,
    pub status: Option<u16>,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl UpstreamError {
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self { kind, status: None, message: message.into(), retry_after: None }
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(FailureKind::Malformed, message)
    }

    /// From an HTTP error status and the provider's message.
    pub fn from_status(status: u16, message: String, retry_after: Option<Duration>) -> Self {
        let kind = match status {
            429 => FailureKind::RateLimited,
            401 | 403 => FailureKind::Auth,
            404 => FailureKind::NotFound,
            400 | 413 | 422 => FailureKind::BadRequest,
            408 => FailureKind::Timeout,
            _ => FailureKind::Server,
        };
        Self { kind, status: Some(status), message, retry_after }
    }

    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            FailureKind::RateLimited | FailureKind::Server | FailureKind::Timeout | FailureKind::Connect
        )
    }

    /// Failures that say the provider is unwell, as the circuit breaker counts them.
    pub fn is_health_failure(&self) -> bool {
        matches!(self.kind, FailureKind::Server | FailureKind::Timeout | FailureKind::Connect | FailureKind::Malformed)
    }

    /// `ok, error, timeout, rate_limited` of ProviderAttempt.outcome
    pub fn outcome(&self) -> &'static str {
        match self.kind {
            FailureKind::RateLimited => "rate_limited",
            FailureKind::Timeout => "timeout",
            _ => "error",
        }
    }
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => write!(f, "HTTP {status}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}
