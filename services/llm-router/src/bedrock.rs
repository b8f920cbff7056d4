//! AWS Bedrock's Converse API (`POST {base}/model/{modelId}/converse`, streamed by
//! `/converse-stream` in AWS's binary event-stream encoding), signed with SigV4
//! (`sigv4`) or, with a Bedrock API key, a bearer token: OpenAI-shaped calls
//! translated to content blocks and back.
//!
//! Differences bridged here: system messages go to the top-level `system`; a tool
//! result is a `toolResult` block in a user message; consecutive messages of one role
//! are merged (the API wants them alternating); images must be bytes (a data URL),
//! a URL Bedrock cannot fetch is left out; there is no JSON mode, so `response_format`
//! becomes an instruction in the system prompt; `inputTokens` excludes cache reads and
//! writes, which are added back so that prompt tokens mean the same everywhere. A
//! stream is complete at `messageStop`; its usage follows in `metadata`.
//!
//! Embeddings are not Converse calls: they are `InvokeModel` (`POST .../invoke`) in the
//! model family's own body. Titan Text Embeddings take one text a call and report its
//! tokens in the body; Cohere Embed takes up to 96 texts a call, and Bedrock reports
//! the tokens in a response header.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::sigv4::uri_encode;
use crate::sse::SseEvent;
use crate::types::{
    ChatRequest, Completion, Delta, FailureKind, FinishReason, Message, Role, ToolCall, UpstreamError, Usage, data_url,
    one_per_input, push_turn,
};

/// The service name Bedrock's runtime is signed for.
pub const SERVICE: &str = "bedrock";
pub const EVENT_STREAM: &str = "application/vnd.amazon.eventstream";

/// The path of `converse` or `converse-stream` on `model` (an id or an ARN, encoded
/// whole so that its `:` and `/` stay inside one segment).
pub fn path(model: &str, stream: bool) -> Result<String, UpstreamError> {
    if model.is_empty() {
        return Err(UpstreamError::new(FailureKind::BadRequest, "a Bedrock call needs a model id"));
    }
    let action = if stream { "converse-stream" } else { "converse" };
    Ok(format!("/model/{}/{action}", uri_encode(model)))
}

/// The embedding models Bedrock serves, by the body their `InvokeModel` wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmbedFamily {
    /// `amazon.titan-embed-text-v1`, `-v2:0`: `{"inputText"}`, one text a call
    Titan,
    /// `cohere.embed-english-v3`, `-multilingual-v3`, `-v4:0`: `{"texts": [...]}`
    Cohere,
}

/// Texts one Cohere Embed call takes at most.
pub const COHERE_TEXTS_PER_CALL: usize = 96;
/// The header in which Bedrock reports an `InvokeModel` call's input tokens.
pub const INPUT_TOKENS_HEADER: &str = "x-amzn-bedrock-input-token-count";

/// The family of an embedding model id (a cross-region profile such as
/// `us.cohere.embed-v4:0` included); a model that is neither is not an embedding model.
pub fn embed_family(model: &str) -> Result<EmbedFamily, UpstreamError> {
    if model.contains("titan-embed") {
        Ok(EmbedFamily::Titan)
    } else if model.contains("cohere.embed") {
        Ok(EmbedFamily::Cohere)
    } else {
        Err(UpstreamError::new(
            FailureKind::BadRequest,
            format!("{model} is not a Bedrock embedding model (amazon.titan-embed-*, cohere.embed-*)"),
        ))
    }
}

/// The path of `InvokeModel` on `model`.
pub fn invoke_path(model: &str) -> Result<String, UpstreamError> {
    if model.is_empty() {
        return Err(UpstreamError::new(FailureKind::BadRequest, "a Bedrock call needs a model id"));
    }
    Ok(format!("/model/{}/invoke", uri_encode(model)))
}

/// Titan's body for one text. `dimensions` is V2's (256, 512 or 1024); V1 takes none.
pub fn titan_body(text: &str, dimensions: Option<u32>) -> Value {
    let mut body = json!({"inputText": text});
    if let Some(dimensions) = dimensions {
        body["dimensions"] = dimensions.into();
        body["normalize"] = true.into();
    }
    body
}

/// Titan's answer: the vector and the tokens of its text.
pub fn parse_titan(body: &[u8]) -> Result<(Vec<f32>, Option<u64>), UpstreamError> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Answer {
        embedding: Vec<f32>,
        input_text_token_count: Option<u64>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::malformed(format!("an embeddings answer that does not parse: {e}")))?;
    Ok((answer.embedding, answer.input_text_token_count))
}

/// Cohere Embed's body on Bedrock (no `model`: it is in the path). The texts are
/// documents to search, as OpenAI's embeddings make no such distinction.
pub fn cohere_body(texts: &[String], dimensions: Option<u32>) -> Value {
    let mut body = json!({
        "texts": texts, "input_type": "search_document", "truncate": "END", "embedding_types": ["float"],
    });
    if let Some(dimensions) = dimensions {
        body["output_dimension"] = dimensions.into();
    }
    body
}

/// Cohere Embed's answer: `embeddings` a list of vectors, or by type with
/// `embedding_types` (`{"float": [...]}`).
pub fn parse_cohere(body: &[u8], inputs: usize) -> Result<Vec<Vec<f32>>, UpstreamError> {
    #[derive(Deserialize)]
    struct Answer {
        embeddings: Embeddings,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Embeddings {
        Floats(Vec<Vec<f32>>),
        ByType { float: Vec<Vec<f32>> },
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::malformed(format!("an embeddings answer that does not parse: {e}")))?;
    let vectors = match answer.embeddings {
        Embeddings::Floats(vectors) | Embeddings::ByType { float: vectors } => vectors,
    };
    one_per_input(vectors, inputs)
}

pub fn request_body(request: &ChatRequest) -> Value {
    let mut system: Vec<Value> =
        request.messages.iter().filter(|m| m.role == Role::System).map(|m| json!({"text": m.plain_text()})).collect();
    system.extend(request.json_instruction().map(|text| json!({"text": text})));
    let mut messages: Vec<(Role, Vec<Value>)> = Vec::new();
    for m in request.messages.iter().filter(|m| m.role != Role::System) {
        let (role, blocks) = match m.role {
            Role::Tool => (
                Role::User,
                vec![json!({"toolResult": {"toolUseId": m.tool_call_id.clone().unwrap_or_default(),
                    "content": [{"text": m.plain_text()}], "status": "success"}})],
            ),
            Role::Assistant => {
                let mut blocks = content_blocks(m);
                for call in &m.tool_calls {
                    let input = call.arguments_object();
                    blocks.push(json!({"toolUse": {"toolUseId": call.id, "name": call.name, "input": input}}));
                }
                (Role::Assistant, blocks)
            }
            _ => (Role::User, content_blocks(m)),
        };
        push_turn(&mut messages, role, blocks);
    }
    let mut body = Map::new();
    let messages = messages.into_iter().map(|(role, blocks)| json!({"role": role.as_str(), "content": blocks}));
    body.insert("messages".into(), messages.collect());
    if !system.is_empty() {
        body.insert("system".into(), system.into());
    }
    let config = request.sampling(["maxTokens", "temperature", "topP", "stopSequences"]);
    if !config.is_empty() {
        body.insert("inferenceConfig".into(), Value::Object(config));
    }
    if !request.tools.is_empty() {
        let tools: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                let mut spec = json!({"name": t.name, "inputSchema": {"json": t.parameters}});
                if let Some(d) = &t.description {
                    spec["description"] = d.clone().into();
                }
                json!({"toolSpec": spec})
            })
            .collect();
        let mut tool_config = json!({"tools": tools});
        // "none" has no counterpart: the model may still call (auto)
        let choice = match request.tool_choice.as_ref() {
            Some(Value::String(c)) if c == "required" => Some(json!({"any": {}})),
            Some(Value::String(c)) if c == "auto" => Some(json!({"auto": {}})),
            Some(choice) => choice["function"]["name"].as_str().map(|name| json!({"tool": {"name": name}})),
            None => None,
        };
        if let Some(choice) = choice {
            tool_config["toolChoice"] = choice;
        }
        body.insert("toolConfig".into(), tool_config);
    }
    Value::Object(body)
}

/// OpenAI content as Converse blocks: text (never empty: Bedrock refuses blank
/// text), and images given as data URLs.
fn content_blocks(m: &Message) -> Vec<Value> {
    let Some(parts) = &m.parts else {
        return if m.content.is_empty() { Vec::new() } else { vec![json!({"text": m.content})] };
    };
    parts
        .iter()
        .filter_map(|part| match part["type"].as_str() {
            Some("text") => part["text"].as_str().filter(|t| !t.is_empty()).map(|t| json!({"text": t})),
            Some("image_url") => {
                let url = part["image_url"]["url"].as_str().or_else(|| part["image_url"].as_str())?;
                let (media_type, data) = data_url(url)?;
                let format = media_type.strip_prefix("image/")?.replace("jpg", "jpeg");
                Some(json!({"image": {"format": format, "source": {"bytes": data}}}))
            }
            _ => None,
        })
        .collect()
}

pub fn finish_reason(text: &str) -> FinishReason {
    match text {
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "guardrail_intervened" | "content_filtered" => FinishReason::ContentFilter,
        _ => FinishReason::Stop,
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_write_input_tokens: u64,
}

impl From<WireUsage> for Usage {
    fn from(u: WireUsage) -> Self {
        Usage {
            prompt_tokens: u.input_tokens + u.cache_read_input_tokens + u.cache_write_input_tokens,
            completion_tokens: u.output_tokens,
            cached_prompt_tokens: u.cache_read_input_tokens,
            reasoning_tokens: 0,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    output: Option<Value>,
    stop_reason: Option<String>,
    usage: Option<WireUsage>,
}

pub fn parse_response(body: &[u8]) -> Result<Completion, UpstreamError> {
    let response: Response =
        serde_json::from_slice(body).map_err(|e| UpstreamError::malformed(format!("unreadable answer: {e}")))?;
    let output = response.output.ok_or_else(|| UpstreamError::malformed("the answer has no output"))?;
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    for block in output["message"]["content"].as_array().into_iter().flatten() {
        if let Some(text) = block["text"].as_str() {
            content.push_str(text);
        } else if let Some(call) = block.get("toolUse") {
            tool_calls.push(ToolCall {
                id: call["toolUseId"].as_str().unwrap_or_default().to_owned(),
                name: call["name"].as_str().unwrap_or_default().to_owned(),
                arguments: call["input"].to_string(),
            });
        }
    }
    Ok(Completion {
        content,
        tool_calls,
        finish_reason: response.stop_reason.as_deref().map_or(FinishReason::Stop, finish_reason),
        usage: response.usage.map(Usage::from),
    })
}

/// Follows the stream's events (named by their `:event-type` header): content blocks
/// (text, toolUse with input fragments), messageStop (the stop reason: complete),
/// metadata (usage). An exception event fails the stream.
#[derive(Default)]
pub struct StreamDecoder {
    pub done: bool,
    /// content block index → tool call index (tool calls are numbered from 0)
    tools: HashMap<u64, u32>,
}

impl StreamDecoder {
    pub fn decode(&mut self, event: SseEvent, out: &mut Vec<Delta>) -> Result<(), UpstreamError> {
        if let Some(kind) = event.event.strip_prefix(EXCEPTION) {
            return Err(exception(kind, &event.data));
        }
        let value: Value = serde_json::from_str(&event.data)
            .map_err(|e| UpstreamError::malformed(format!("unreadable stream event: {e}")))?;
        let block = value["contentBlockIndex"].as_u64().unwrap_or(0);
        match event.event.as_str() {
            "contentBlockStart" => {
                if let Some(call) = value["start"].get("toolUse") {
                    let index = self.tools.len() as u32;
                    self.tools.insert(block, index);
                    out.push(Delta::ToolCall {
                        index,
                        id: call["toolUseId"].as_str().map(str::to_owned),
                        name: call["name"].as_str().map(str::to_owned),
                        arguments: String::new(),
                    });
                }
            }
            "contentBlockDelta" => {
                let delta = &value["delta"];
                if let Some(text) = delta["text"].as_str().filter(|t| !t.is_empty()) {
                    out.push(Delta::Text(text.to_owned()));
                } else if let Some(input) = delta["toolUse"]["input"].as_str() {
                    let index = *self
                        .tools
                        .get(&block)
                        .ok_or_else(|| UpstreamError::malformed("a toolUse delta for a block that is no tool"))?;
                    out.push(Delta::ToolCall { index, id: None, name: None, arguments: input.to_owned() });
                }
            }
            "messageStop" => {
                self.done = true;
                out.push(Delta::Finish(value["stopReason"].as_str().map_or(FinishReason::Stop, finish_reason)));
            }
            "metadata" => {
                let usage: WireUsage = serde_json::from_value(value["usage"].clone()).unwrap_or_default();
                out.push(Delta::Usage(usage.into()));
            }
            _ => {} // messageStart, contentBlockStop, and event types added later
        }
        Ok(())
    }
}

/// The event name an exception message is handed over under, its type after it.
const EXCEPTION: &str = "exception:";

/// An exception in the stream (`throttlingException`, `modelStreamErrorException`, ...)
/// with its `{"message"}` payload, classed as its documented HTTP status.
fn exception(kind: &str, payload: &str) -> UpstreamError {
    let message = serde_json::from_str::<Value>(payload)
        .map(|v| crate::openai::error_message(&v))
        .unwrap_or_else(|_| payload.chars().take(500).collect());
    let status = match kind {
        "throttlingException" => 429,
        "validationException" => 400,
        "serviceUnavailableException" => 503,
        "modelStreamErrorException" => 424,
        _ => 500,
    };
    UpstreamError::from_status(status, format!("{kind}: {message}"), None)
}

/// AWS's event-stream encoding (`application/vnd.amazon.eventstream`): messages of
/// a 12-byte prelude (total length, headers length, the prelude's CRC32), headers,
/// a payload and the message's CRC32, all big-endian. Each message is handed over as
/// an event named by its `:event-type` header, or `exception:<type>` for exceptions.
#[derive(Default)]
pub struct EventStreamDecoder {
    buffer: Vec<u8>,
}

/// No Converse event comes near this; more is a broken or hostile stream.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

impl EventStreamDecoder {
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while self.buffer.len() - start >= 12 {
            let frame = &self.buffer[start..];
            let total = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
            let headers_len = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
            if crc32fast::hash(&frame[..8]).to_be_bytes() != frame[8..12] {
                return Err("an event-stream prelude fails its checksum".to_owned());
            }
            if total < 16 + headers_len || total > MAX_MESSAGE {
                return Err(format!("an event-stream message of impossible length {total}"));
            }
            if frame.len() < total {
                break;
            }
            if crc32fast::hash(&frame[..total - 4]).to_be_bytes() != frame[total - 4..total] {
                return Err("an event-stream message fails its checksum".to_owned());
            }
            let headers = headers(&frame[12..12 + headers_len])?;
            let payload = std::str::from_utf8(&frame[12 + headers_len..total - 4])
                .map_err(|_| "an event-stream payload is not UTF-8".to_owned())?;
            let header = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
            let event = match header(":message-type") {
                Some("exception") => format!("{EXCEPTION}{}", header(":exception-type").unwrap_or("exception")),
                Some("error") => {
                    let code = header(":error-code").unwrap_or("error");
                    let message = header(":error-message").unwrap_or_default();
                    events.push(SseEvent {
                        event: format!("{EXCEPTION}{code}"),
                        data: json!({"message": message}).to_string(),
                    });
                    start += total;
                    continue;
                }
                _ => header(":event-type").unwrap_or_default().to_owned(),
            };
            events.push(SseEvent { event, data: payload.to_owned() });
            start += total;
        }
        self.buffer.drain(..start);
        Ok(events)
    }
}

/// The headers of one message: (name, value) for string values; other types skipped.
fn headers(mut bytes: &[u8]) -> Result<Vec<(&str, String)>, String> {
    let broken = || "broken event-stream headers".to_owned();
    let mut out = Vec::new();
    while let [name_len, rest @ ..] = bytes {
        let name_len = *name_len as usize;
        let name = std::str::from_utf8(rest.get(..name_len).ok_or_else(broken)?).map_err(|_| broken())?;
        let rest = &rest[name_len..];
        let (&kind, rest) = rest.split_first().ok_or_else(broken)?;
        // value lengths by type: bool true/false, byte, short, int, long, bytes, string,
        // timestamp, uuid
        let (value_len, skip) = match kind {
            0 | 1 => (0, 0),
            2 => (1, 0),
            3 => (2, 0),
            4 => (4, 0),
            5 | 8 => (8, 0),
            6 | 7 => {
                let len = rest.get(..2).ok_or_else(broken)?;
                (u16::from_be_bytes([len[0], len[1]]) as usize, 2)
            }
            9 => (16, 0),
            _ => return Err(broken()),
        };
        let value = rest.get(skip..skip + value_len).ok_or_else(broken)?;
        if kind == 7 {
            out.push((name, String::from_utf8_lossy(value).into_owned()));
        }
        bytes = &rest[skip + value_len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Tool;

    /// One event-stream message with string headers, as AWS frames it.
    fn frame(headers: &[(&str, &str)], payload: &str) -> Vec<u8> {
        let mut head = Vec::new();
        for (name, value) in headers {
            head.push(name.len() as u8);
            head.extend_from_slice(name.as_bytes());
            head.push(7);
            head.extend_from_slice(&(value.len() as u16).to_be_bytes());
            head.extend_from_slice(value.as_bytes());
        }
        let total = (16 + head.len() + payload.len()) as u32;
        let mut out = total.to_be_bytes().to_vec();
        out.extend_from_slice(&(head.len() as u32).to_be_bytes());
        out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(payload.as_bytes());
        out.extend_from_slice(&crc32fast::hash(&out).to_be_bytes());
        out
    }

    fn event(name: &str, payload: Value) -> Vec<u8> {
        frame(
            &[(":event-type", name), (":message-type", "event"), (":content-type", "application/json")],
            &payload.to_string(),
        )
    }

    #[test]
    fn requests_translate() {
        let call = ToolCall { id: "t1".into(), name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() };
        let tool = Tool { name: "get_weather".into(), description: None, parameters: json!({"type": "object"}) };
        let request = ChatRequest {
            messages: vec![
                Message::text(Role::System, "Be brief."),
                Message {
                    parts: Some(vec![
                        json!({"type": "text", "text": "Weather?"}),
                        json!({"type": "image_url", "image_url": {"url": "data:image/jpg;base64,/9j"}}),
                        json!({"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}),
                    ]),
                    ..Message::text(Role::User, "")
                },
                Message { tool_calls: vec![call], ..Message::text(Role::Assistant, "") },
                Message { tool_call_id: Some("t1".into()), ..Message::text(Role::Tool, "18 C") },
            ],
            max_tokens: Some(64),
            stop: vec!["END".into()],
            tools: vec![tool],
            tool_choice: Some(json!({"type": "function", "function": {"name": "get_weather"}})),
            response_format: Some(json!({"type": "json_object"})),
            ..Default::default()
        };
        let body = request_body(&request);
        let expected = json!({
            "system": [{"text": "Be brief."}, {"text": "Answer with one JSON object only, no other text."}],
            "messages": [
                {"role": "user", "content": [{"text": "Weather?"},
                    {"image": {"format": "jpeg", "source": {"bytes": "/9j"}}}]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "get_weather",
                    "input": {"city": "Paris"}}}]},
                {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "18 C"}],
                    "status": "success"}}]},
            ],
            "inferenceConfig": {"maxTokens": 64, "stopSequences": ["END"]},
            "toolConfig": {"tools": [{"toolSpec": {"name": "get_weather", "inputSchema": {"json": {"type": "object"}}}}],
                "toolChoice": {"tool": {"name": "get_weather"}}},
        });
        assert_eq!(body, expected);
        assert_eq!(
            path("anthropic.claude-3-5-haiku-20241022-v1:0", true).unwrap(),
            "/model/anthropic.claude-3-5-haiku-20241022-v1%3A0/converse-stream"
        );
    }

    #[test]
    fn answers_translate_back() {
        let answer = parse_response(
            br#"{"output":{"message":{"role":"assistant","content":[{"text":"Let me see."},
            {"toolUse":{"toolUseId":"t1","name":"f","input":{"a":1}}}]}},"stopReason":"tool_use",
            "usage":{"inputTokens":10,"outputTokens":5,"totalTokens":15,"cacheReadInputTokens":4},
            "metrics":{"latencyMs":100}}"#,
        )
        .unwrap();
        assert_eq!(answer.content, "Let me see.");
        assert_eq!(
            answer.tool_calls,
            vec![ToolCall { id: "t1".into(), name: "f".into(), arguments: r#"{"a":1}"#.into() }]
        );
        assert_eq!(answer.finish_reason, FinishReason::ToolCalls);
        let usage = answer.usage.unwrap();
        assert_eq!((usage.prompt_tokens, usage.cached_prompt_tokens, usage.completion_tokens), (14, 4, 5));
        assert_eq!(finish_reason("guardrail_intervened"), FinishReason::ContentFilter);
    }

    #[test]
    fn event_streams_split_anywhere_and_decode() {
        let mut bytes = event("messageStart", json!({"role": "assistant"}));
        bytes.extend(event("contentBlockDelta", json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}})));
        bytes.extend(event(
            "contentBlockStart",
            json!({"contentBlockIndex": 1,
            "start": {"toolUse": {"toolUseId": "t1", "name": "f"}}}),
        ));
        bytes
            .extend(event("contentBlockDelta", json!({"contentBlockIndex": 1, "delta": {"toolUse": {"input": "{}"}}})));
        bytes.extend(event("messageStop", json!({"stopReason": "tool_use"})));
        bytes.extend(event(
            "metadata",
            json!({"usage": {"inputTokens": 3, "outputTokens": 2, "totalTokens": 5},
            "metrics": {"latencyMs": 1}}),
        ));
        for split in [0, 1, 11, 12, 40, bytes.len() / 2, bytes.len() - 1] {
            let mut framing = EventStreamDecoder::default();
            let mut events = framing.feed(&bytes[..split]).unwrap();
            events.extend(framing.feed(&bytes[split..]).unwrap());
            let mut decoder = StreamDecoder::default();
            let mut out = Vec::new();
            for event in events {
                decoder.decode(event, &mut out).unwrap();
            }
            assert!(decoder.done, "split at {split}");
            assert_eq!(
                out,
                vec![
                    Delta::Text("Hi".into()),
                    Delta::ToolCall {
                        index: 0,
                        id: Some("t1".into()),
                        name: Some("f".into()),
                        arguments: String::new()
                    },
                    Delta::ToolCall { index: 0, id: None, name: None, arguments: "{}".into() },
                    Delta::Finish(FinishReason::ToolCalls),
                    Delta::Usage(Usage { prompt_tokens: 3, completion_tokens: 2, ..Usage::default() }),
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn embeddings_are_invoke_calls_in_the_family_body() {
        let titan = "amazon.titan-embed-text-v2:0";
        assert_eq!(embed_family(titan).unwrap(), EmbedFamily::Titan);
        assert_eq!(embed_family("us.cohere.embed-v4:0").unwrap(), EmbedFamily::Cohere);
        assert_eq!(embed_family("anthropic.claude-3-5-haiku-20241022-v1:0").unwrap_err().kind, FailureKind::BadRequest);
        assert_eq!(invoke_path(titan).unwrap(), "/model/amazon.titan-embed-text-v2%3A0/invoke");
        assert_eq!(titan_body("hi", None), json!({"inputText": "hi"}));
        assert_eq!(titan_body("hi", Some(256)), json!({"inputText": "hi", "dimensions": 256, "normalize": true}));
        let texts = vec!["a".to_owned(), "b c".to_owned()];
        assert_eq!(cohere_body(&texts, None)["texts"], json!(["a", "b c"]));
        assert_eq!(cohere_body(&texts, Some(512))["output_dimension"], 512);

        let answer =
            br#"{"embedding": [0.5, -0.5], "inputTextTokenCount": 3, "embeddingsByType": {"float": [0.5, -0.5]}}"#;
        assert_eq!(parse_titan(answer).unwrap(), (vec![0.5, -0.5], Some(3)));
        let floats = br#"{"id": "x", "embeddings": [[1.0], [2.0]], "texts": ["a", "b c"], "response_type": "embeddings_floats"}"#;
        assert_eq!(parse_cohere(floats, 2).unwrap(), vec![vec![1.0], vec![2.0]]);
        let by_type = br#"{"id": "x", "embeddings": {"float": [[1.0], [2.0]]}, "response_type": "embeddings_by_type"}"#;
        assert_eq!(parse_cohere(by_type, 2).unwrap(), vec![vec![1.0], vec![2.0]]);
        assert_eq!(parse_cohere(floats, 3).unwrap_err().kind, FailureKind::Malformed);
        assert_eq!(parse_titan(b"{\"embedding\": [").unwrap_err().kind, FailureKind::Malformed);
    }

    #[test]
    fn exceptions_and_broken_frames_fail() {
        let throttled = frame(
            &[(":message-type", "exception"), (":exception-type", "throttlingException")],
            r#"{"message":"Too many requests"}"#,
        );
        let events = EventStreamDecoder::default().feed(&throttled).unwrap();
        let error = StreamDecoder::default().decode(events[0].clone(), &mut Vec::new()).unwrap_err();
        assert_eq!((error.kind, error.status), (FailureKind::RateLimited, Some(429)));
        assert!(error.message.contains("Too many requests"), "{error}");

        let mut corrupt = event("messageStop", json!({"stopReason": "end_turn"}));
        let last = corrupt.len() - 6;
        corrupt[last] ^= 1;
        assert!(EventStreamDecoder::default().feed(&corrupt).unwrap_err().contains("checksum"));
        let mut prelude = corrupt.clone();
        prelude[9] ^= 1;
        assert!(EventStreamDecoder::default().feed(&prelude).unwrap_err().contains("prelude"));
    }
}
