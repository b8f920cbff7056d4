//! Anthropic's Messages API (`POST {base}/v1/messages`, `anthropic-version: 2023-06-01`):
//! OpenAI-shaped calls translated to content blocks and back, streamed events included.
//!
//! Differences bridged here: system messages go to the top-level `system`; a tool
//! result is a `tool_result` block in a user message; consecutive messages of one role
//! are merged (the API wants them alternating); `max_tokens` is required (4096 when
//! the caller set none); there is no JSON mode, so `response_format` becomes an
//! instruction in the system prompt; `input_tokens` excludes cached tokens, which are
//! added back so that prompt tokens mean the same for every provider.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::sse::SseEvent;
use crate::types::{
    ChatRequest, Completion, Delta, FinishReason, Message, Role, ToolCall, UpstreamError, Usage, data_url, push_turn,
};

pub const PATH: &str = "/v1/messages";
pub const VERSION: &str = "2023-06-01";
/// What `max_tokens` is when the caller set none: the API requires it.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

pub fn request_body(model: &str, request: &ChatRequest, stream: bool) -> Value {
    let mut system: Vec<String> =
        request.messages.iter().filter(|m| m.role == Role::System).map(Message::plain_text).collect();
    system.extend(request.json_instruction());
    let mut messages: Vec<(Role, Vec<Value>)> = Vec::new();
    for m in request.messages.iter().filter(|m| m.role != Role::System) {
        let (role, blocks) = match m.role {
            Role::Tool => (
                Role::User,
                vec![json!({"type": "tool_result", "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                    "content": m.plain_text()})],
            ),
            Role::Assistant => {
                let mut blocks = content_blocks(m);
                for call in &m.tool_calls {
                    let input = call.arguments_object();
                    blocks.push(json!({"type": "tool_use", "id": call.id, "name": call.name, "input": input}));
                }
                (Role::Assistant, blocks)
            }
            _ => (Role::User, content_blocks(m)),
        };
        push_turn(&mut messages, role, blocks);
    }
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("max_tokens".into(), request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS).into());
    if !system.is_empty() {
        body.insert("system".into(), system.join("\n\n").into());
    }
    let messages = messages.into_iter().map(|(role, blocks)| json!({"role": role.as_str(), "content": blocks}));
    body.insert("messages".into(), messages.collect());
    body.extend(request.sampling(["max_tokens", "temperature", "top_p", "stop_sequences"]));
    if !request.tools.is_empty() {
        let tools = request.tools.iter().map(|t| {
            let mut tool = json!({"name": t.name, "input_schema": t.parameters});
            if let Some(d) = &t.description {
                tool["description"] = d.clone().into();
            }
            tool
        });
        body.insert("tools".into(), tools.collect());
    }
    if let Some(choice) = request.tool_choice.as_ref().and_then(tool_choice) {
        body.insert("tool_choice".into(), choice);
    }
    if stream {
        body.insert("stream".into(), true.into());
    }
    Value::Object(body)
}

fn tool_choice(choice: &Value) -> Option<Value> {
    match choice.as_str() {
        Some("auto") => Some(json!({"type": "auto"})),
        Some("required") => Some(json!({"type": "any"})),
        Some("none") => Some(json!({"type": "none"})),
        Some(_) => None,
        None => choice["function"]["name"].as_str().map(|name| json!({"type": "tool", "name": name})),
    }
}

/// OpenAI content (a string or parts) as Anthropic blocks; images as base64 or URL sources.
fn content_blocks(m: &Message) -> Vec<Value> {
    let Some(parts) = &m.parts else {
        return if m.content.is_empty() { Vec::new() } else { vec![json!({"type": "text", "text": m.content})] };
    };
    parts
        .iter()
        .filter_map(|part| match part["type"].as_str() {
            Some("text") => Some(json!({"type": "text", "text": part["text"]})),
            Some("image_url") => {
                let url = part["image_url"]["url"].as_str().or_else(|| part["image_url"].as_str())?;
                let source = match data_url(url) {
                    Some((media_type, data)) => json!({"type": "base64", "media_type": media_type, "data": data}),
                    None => json!({"type": "url", "url": url}),
                };
                Some(json!({"type": "image", "source": source}))
            }
            _ => None,
        })
        .collect()
}

pub fn finish_reason(text: &str) -> FinishReason {
    match text {
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "refusal" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

impl WireUsage {
    fn prompt(&self) -> (u64, u64) {
        let cached = self.cache_read_input_tokens.unwrap_or(0);
        (self.input_tokens + cached + self.cache_creation_input_tokens.unwrap_or(0), cached)
    }
}

#[derive(Deserialize)]
struct Response {
    #[serde(default)]
    content: Vec<Value>,
    stop_reason: Option<String>,
    #[serde(default)]
    usage: WireUsage,
}

pub fn parse_response(body: &[u8]) -> Result<Completion, UpstreamError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| UpstreamError::malformed(format!("unreadable message: {e}")))?;
    if value["type"] == "error" {
        return Err(stream_error(&value));
    }
    let response: Response =
        serde_json::from_value(value).map_err(|e| UpstreamError::malformed(format!("unreadable message: {e}")))?;
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    for block in &response.content {
        match block["type"].as_str() {
            Some("text") => content.push_str(block["text"].as_str().unwrap_or_default()),
            Some("tool_use") => tool_calls.push(ToolCall {
                id: block["id"].as_str().unwrap_or_default().to_owned(),
                name: block["name"].as_str().unwrap_or_default().to_owned(),
                arguments: block["input"].to_string(),
            }),
            _ => {}
        }
    }
    let (prompt_tokens, cached) = response.usage.prompt();
    Ok(Completion {
        content,
        tool_calls,
        finish_reason: response.stop_reason.as_deref().map_or(FinishReason::Stop, finish_reason),
        usage: Some(Usage {
            prompt_tokens,
            completion_tokens: response.usage.output_tokens,
            cached_prompt_tokens: cached,
            reasoning_tokens: 0,
        }),
    })
}

/// Follows the event stream: message_start, content blocks (text, tool_use with
/// input_json_delta fragments), message_delta (stop reason, output tokens),
/// message_stop. An `error` event fails the stream.
#[derive(Default)]
pub struct StreamDecoder {
    pub done: bool,
    usage: Usage,
    /// content block index → tool call index (tool calls are numbered from 0)
    tools: HashMap<u64, u32>,
}

impl StreamDecoder {
    pub fn decode(&mut self, event: SseEvent, out: &mut Vec<Delta>) -> Result<(), UpstreamError> {
        if event.data.trim().is_empty() {
            return Ok(());
        }
        let value: Value = serde_json::from_str(&event.data)
            .map_err(|e| UpstreamError::malformed(format!("unreadable stream event: {e}")))?;
        let kind = value["type"].as_str().unwrap_or(event.event.as_str());
        match kind {
            "message_start" => {
                let usage: WireUsage = serde_json::from_value(value["message"]["usage"].clone()).unwrap_or_default();
                let (prompt, cached) = usage.prompt();
                self.usage.prompt_tokens = prompt;
                self.usage.cached_prompt_tokens = cached;
                self.usage.completion_tokens = usage.output_tokens;
            }
            "content_block_start" => {
                let block = &value["content_block"];
                match block["type"].as_str() {
                    Some("tool_use") => {
                        let index = self.tools.len() as u32;
                        self.tools.insert(value["index"].as_u64().unwrap_or(0), index);
                        out.push(Delta::ToolCall {
                            index,
                            id: block["id"].as_str().map(str::to_owned),
                            name: block["name"].as_str().map(str::to_owned),
                            arguments: String::new(),
                        });
                    }
                    Some("text") => {
                        if let Some(text) = block["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(Delta::Text(text.to_owned()));
                        }
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let delta = &value["delta"];
                match delta["type"].as_str() {
                    Some("text_delta") => {
                        if let Some(text) = delta["text"].as_str().filter(|t| !t.is_empty()) {
                            out.push(Delta::Text(text.to_owned()));
                        }
                    }
                    Some("input_json_delta") => {
                        let block = value["index"].as_u64().unwrap_or(0);
                        let index = *self
                            .tools
                            .get(&block)
                            .ok_or_else(|| UpstreamError::malformed("input_json_delta for a block that is no tool"))?;
                        let arguments = delta["partial_json"].as_str().unwrap_or_default().to_owned();
                        out.push(Delta::ToolCall { index, id: None, name: None, arguments });
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                if let Some(reason) = value["delta"]["stop_reason"].as_str() {
                    out.push(Delta::Finish(finish_reason(reason)));
                }
                if let Some(tokens) = value["usage"]["output_tokens"].as_u64() {
                    self.usage.completion_tokens = tokens;
                }
            }
            "message_stop" => {
                self.done = true;
                out.push(Delta::Usage(self.usage));
            }
            "error" => return Err(stream_error(&value)),
            _ => {} // ping, content_block_stop, and event types added later
        }
        Ok(())
    }
}

/// `{"type": "error", "error": {"type": "overloaded_error", "message"}}`
fn stream_error(value: &Value) -> UpstreamError {
    let message = crate::openai::error_message(value);
    let status = match value["error"]["type"].as_str() {
        Some("rate_limit_error") => 429,
        Some("overloaded_error") => 529,
        Some("invalid_request_error") => 400,
        Some("authentication_error") => 401,
        Some("permission_error") => 403,
        Some("not_found_error") => 404,
        Some("request_too_large") => 413,
        _ => 500,
    };
    UpstreamError::from_status(status, message, None)
}
