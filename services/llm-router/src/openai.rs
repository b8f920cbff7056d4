//! OpenAI's chat completions wire (`POST {base}/chat/completions`), which OpenAI and
//! most other providers speak: requests, whole answers, streamed chunks and errors.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::sse::SseEvent;
use crate::types::{
    ChatRequest, Completion, Delta, EmbeddingAnswer, FinishReason, Message, Role, Tool, ToolCall, UpstreamError, Usage,
};

pub const PATH: &str = "/chat/completions";

pub fn request_body(model: &str, request: &ChatRequest, stream: bool) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("messages".into(), request.messages.iter().map(message).collect());
    body.extend(request.sampling(["max_tokens", "temperature", "top_p", "stop"]));
    if !request.tools.is_empty() {
        body.insert("tools".into(), function_tools(&request.tools));
    }
    if let Some(choice) = &request.tool_choice {
        body.insert("tool_choice".into(), choice.clone());
    }
    if let Some(format) = &request.response_format {
        body.insert("response_format".into(), format.clone());
    }
    if stream {
        body.insert("stream".into(), true.into());
        // without it the stream carries no token counts, and cost could not be settled
        body.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Value::Object(body)
}

fn message(m: &Message) -> Value {
    let mut out = Map::new();
    out.insert("role".into(), m.role.as_str().into());
    let content = match &m.parts {
        Some(parts) => Value::Array(parts.clone()),
        None if m.content.is_empty() && !m.tool_calls.is_empty() => Value::Null,
        None => m.content.clone().into(),
    };
    out.insert("content".into(), content);
    if let Some(name) = &m.name
        && m.role != Role::Tool
    {
        out.insert("name".into(), name.clone().into());
    }
    if let Some(id) = &m.tool_call_id {
        out.insert("tool_call_id".into(), id.clone().into());
    }
    if !m.tool_calls.is_empty() {
        out.insert("tool_calls".into(), tool_calls_json(&m.tool_calls));
    }
    Value::Object(out)
}

/// Tools as OpenAI's `{"type": "function", "function": {...}}`, which Ollama and
/// Cohere take too.
pub fn function_tools(tools: &[Tool]) -> Value {
    tools
        .iter()
        .map(|t| {
            let mut function = json!({"name": t.name, "parameters": t.parameters});
            if let Some(d) = &t.description {
                function["description"] = d.clone().into();
            }
            json!({"type": "function", "function": function})
        })
        .collect()
}

pub fn tool_calls_json(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .map(|c| json!({"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}))
        .collect()
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<WireMessage>,
    delta: Option<WireMessage>,
    finish_reason: Option<String>,
}

#[derive(Deserialize, Default)]
struct WireMessage {
    content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<WireToolCall>>,
}

#[derive(Deserialize)]
struct WireToolCall {
    #[serde(default)]
    index: Option<u32>,
    id: Option<String>,
    function: Option<WireFunction>,
}

#[derive(Deserialize)]
struct WireFunction {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    prompt_tokens_details: Option<PromptDetails>,
    completion_tokens_details: Option<CompletionDetails>,
}

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_prompt_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0),
            reasoning_tokens: u.completion_tokens_details.and_then(|d| d.reasoning_tokens).unwrap_or(0),
        }
    }
}

pub fn finish_reason(text: &str) -> FinishReason {
    match text {
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

pub fn parse_response(body: &[u8]) -> Result<Completion, UpstreamError> {
    if let Some(error) = embedded_error(body) {
        return Err(error);
    }
    let response: Response =
        serde_json::from_slice(body).map_err(|e| UpstreamError::malformed(format!("unreadable completion: {e}")))?;
    let choice =
        response.choices.into_iter().next().ok_or_else(|| UpstreamError::malformed("the completion has no choices"))?;
    let message = choice.message.unwrap_or_default();
    let tool_calls: Vec<ToolCall> = message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .map(|c| {
            let function = c.function.unwrap_or(WireFunction { name: None, arguments: None });
            ToolCall {
                id: c.id.unwrap_or_default(),
                name: function.name.unwrap_or_default(),
                arguments: function.arguments.unwrap_or_default(),
            }
        })
        .collect();
    let finish = match choice.finish_reason.as_deref() {
        Some(reason) => finish_reason(reason),
        None if !tool_calls.is_empty() => FinishReason::ToolCalls,
        None => FinishReason::Stop,
    };
    Ok(Completion {
        content: message.content.unwrap_or_default(),
        tool_calls,
        finish_reason: finish,
        usage: response.usage.map(Usage::from),
    })
}

/// Reads the streamed chunks; the stream is complete at `data: [DONE]`.
#[derive(Default)]
pub struct StreamDecoder {
    pub done: bool,
}

impl StreamDecoder {
    pub fn decode(&mut self, event: SseEvent, out: &mut Vec<Delta>) -> Result<(), UpstreamError> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        if let Some(error) = embedded_error(data.as_bytes()) {
            return Err(error);
        }
        let chunk: Response = serde_json::from_str(data)
            .map_err(|e| UpstreamError::malformed(format!("unreadable stream chunk: {e}")))?;
        for choice in chunk.choices {
            if let Some(delta) = choice.delta {
                if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                    out.push(Delta::Text(text));
                }
                for (position, call) in delta.tool_calls.unwrap_or_default().into_iter().enumerate() {
                    let function = call.function.unwrap_or(WireFunction { name: None, arguments: None });
                    out.push(Delta::ToolCall {
                        index: call.index.unwrap_or(position as u32),
                        id: call.id,
                        name: function.name,
                        arguments: function.arguments.unwrap_or_default(),
                    });
                }
            }
            if let Some(reason) = choice.finish_reason {
                out.push(Delta::Finish(finish_reason(&reason)));
            }
        }
        if let Some(usage) = chunk.usage {
            out.push(Delta::Usage(usage.into()));
        }
        Ok(())
    }
}

/// `{"error": {...}}` in place of an answer, as OpenAI-compatible APIs send it in a 200
/// body or inside a stream.
fn embedded_error(body: &[u8]) -> Option<UpstreamError> {
    #[derive(Deserialize)]
    struct Envelope {
        error: Value,
    }
    let envelope: Envelope = serde_json::from_slice(body).ok()?;
    if envelope.error.is_null() {
        return None;
    }
    let status = envelope.error["code"].as_u64().and_then(|c| u16::try_from(c).ok()).filter(|c| *c >= 400);
    let message = error_message(&envelope.error);
    Some(match status {
        Some(status) => UpstreamError::from_status(status, message, None),
        None => UpstreamError { status: None, ..UpstreamError::from_status(500, message, None) },
    })
}

/// The message of an error body: `{"error": {"message"}}`, `{"error": "..."}`,
/// `{"message"}` or the text itself.
pub fn error_message(value: &Value) -> String {
    let text = value["error"]["message"]
        .as_str()
        .or_else(|| value["message"].as_str())
        .or_else(|| value["error"].as_str())
        .or_else(|| value.as_str());
    match text {
        Some(text) => text.chars().take(500).collect(),
        None => value.to_string().chars().take(500).collect(),
    }
}

/// OpenAI's embeddings route, after the base URL.
pub const EMBEDDINGS_PATH: &str = "/embeddings";

pub fn embeddings_body(model: &str, inputs: &[String], dimensions: Option<u32>) -> Value {
    let mut body = serde_json::json!({"model": model, "input": inputs, "encoding_format": "float"});
    if let Some(dimensions) = dimensions {
        body["dimensions"] = dimensions.into();
    }
    body
}

/// An embeddings answer: one vector per input in input order, and the prompt tokens
/// the provider reports (`None` when it reports none).
pub fn parse_embeddings(body: &[u8], inputs: usize) -> Result<EmbeddingAnswer, UpstreamError> {
    #[derive(Deserialize)]
    struct Answer {
        data: Vec<Item>,
        usage: Option<EmbedUsage>,
    }
    #[derive(Deserialize)]
    struct Item {
        index: usize,
        embedding: Vec<f32>,
    }
    #[derive(Deserialize)]
    struct EmbedUsage {
        prompt_tokens: u64,
    }
    if let Some(error) = embedded_error(body) {
        return Err(error);
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::malformed(format!("an embeddings answer that does not parse: {e}")))?;
    let mut vectors = vec![None; inputs];
    for item in answer.data {
        match vectors.get_mut(item.index) {
            Some(slot @ None) => *slot = Some(item.embedding),
            _ => return Err(UpstreamError::malformed(format!("embedding index {} is out of place", item.index))),
        }
    }
    let vectors = vectors
        .into_iter()
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| UpstreamError::malformed("the answer misses some inputs' embeddings"))?;
    Ok((vectors, answer.usage.map(|u| u.prompt_tokens)))
}
