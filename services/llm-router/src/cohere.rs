//! Cohere's v2 API (`POST {base}/v2/chat`, `POST {base}/v2/embed`, bearer key):
//! OpenAI-shaped calls translated and back.
//!
//! Its messages are close to OpenAI's (system/user/assistant/tool, `tool_calls` with
//! JSON-text arguments, `tool_call_id`); the differences bridged here: `top_p` is `p`,
//! `stop` is `stop_sequences`, tool_choice is `REQUIRED` or `NONE` (no forced single
//! function: that becomes `REQUIRED`), JSON mode is `response_format: json_object`
//! with an optional `json_schema`; the answer's content is a list of blocks; usage
//! comes as `tokens` (what the model saw) and `billed_units`. Streams are typed
//! events (message-start, content-delta, tool-call-start/-delta/-end, message-end with
//! the finish reason and usage), complete at `message-end`.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::sse::SseEvent;
use crate::types::{
    ChatRequest, Completion, Delta, EmbeddingAnswer, FinishReason, Message, Role, UpstreamError, Usage, one_per_input,
};

pub const CHAT_PATH: &str = "/v2/chat";
pub const EMBED_PATH: &str = "/v2/embed";

pub fn request_body(model: &str, request: &ChatRequest, stream: bool) -> Value {
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("messages".into(), request.messages.iter().map(message).collect());
    body.extend(request.sampling(["max_tokens", "temperature", "p", "stop_sequences"]));
    if !request.tools.is_empty() {
        body.insert("tools".into(), crate::openai::function_tools(&request.tools));
        let choice = match request.tool_choice.as_ref() {
            Some(Value::String(c)) if c == "required" => Some("REQUIRED"),
            Some(Value::String(c)) if c == "none" => Some("NONE"),
            Some(Value::Object(_)) => Some("REQUIRED"),
            _ => None,
        };
        if let Some(choice) = choice {
            body.insert("tool_choice".into(), choice.into());
        }
    }
    if let Some(format) = &request.response_format
        && format["type"] != "text"
    {
        let schema = &format["json_schema"]["schema"];
        body.insert(
            "response_format".into(),
            if schema.is_object() {
                json!({"type": "json_object", "json_schema": schema})
            } else {
                json!({"type": "json_object"})
            },
        );
    }
    if stream {
        body.insert("stream".into(), true.into());
    }
    Value::Object(body)
}

fn message(m: &Message) -> Value {
    let mut out = json!({"role": m.role.as_str()});
    // user messages keep their parts (text and image_url, as OpenAI shapes them)
    out["content"] = match (&m.parts, m.role) {
        (Some(parts), Role::User) => parts
            .iter()
            .filter(|p| matches!(p["type"].as_str(), Some("text" | "image_url")))
            .cloned()
            .collect::<Vec<_>>()
            .into(),
        _ => m.plain_text().into(),
    };
    if !m.tool_calls.is_empty() {
        // an assistant turn that only calls tools has no content
        if m.plain_text().is_empty() {
            out.as_object_mut().map(|o| o.remove("content"));
        }
        out["tool_calls"] = crate::openai::tool_calls_json(&m.tool_calls);
    }
    if let Some(id) = &m.tool_call_id {
        out["tool_call_id"] = id.clone().into();
    }
    out
}

pub fn finish_reason(text: &str) -> FinishReason {
    match text {
        "MAX_TOKENS" => FinishReason::Length,
        "TOOL_CALL" => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    }
}

/// `ERROR` and `TIMEOUT` end an answer that is not whole: a failure, not a finish.
fn failed(reason: &str, detail: Option<&str>) -> Option<UpstreamError> {
    let status = match reason {
        "ERROR" => 500,
        "TIMEOUT" => 504,
        _ => return None,
    };
    let message = detail.unwrap_or("the generation failed").chars().take(500).collect();
    Some(UpstreamError { status: None, ..UpstreamError::from_status(status, message, None) })
}

#[derive(Deserialize, Default)]
struct Tokens {
    input_tokens: Option<f64>,
    output_tokens: Option<f64>,
}

#[derive(Deserialize, Default)]
struct WireUsage {
    #[serde(default)]
    billed_units: Tokens,
    #[serde(default)]
    tokens: Tokens,
}

impl From<WireUsage> for Usage {
    /// The tokens the model saw when given, else the billed units (both may be floats).
    fn from(u: WireUsage) -> Self {
        let count = |seen: Option<f64>, billed: Option<f64>| seen.or(billed).unwrap_or(0.0).max(0.0).round() as u64;
        Usage {
            prompt_tokens: count(u.tokens.input_tokens, u.billed_units.input_tokens),
            completion_tokens: count(u.tokens.output_tokens, u.billed_units.output_tokens),
            ..Usage::default()
        }
    }
}

#[derive(Deserialize)]
struct Response {
    finish_reason: Option<String>,
    message: Option<WireMessage>,
    usage: Option<WireUsage>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    content: Vec<Value>,
    #[serde(default)]
    tool_calls: Vec<Value>,
}

pub fn parse_response(body: &[u8]) -> Result<Completion, UpstreamError> {
    let response: Response =
        serde_json::from_slice(body).map_err(|e| UpstreamError::malformed(format!("unreadable answer: {e}")))?;
    let reason = response.finish_reason.ok_or_else(|| UpstreamError::malformed("the answer has no finish_reason"))?;
    if let Some(error) = failed(&reason, None) {
        return Err(error);
    }
    let message = response.message.ok_or_else(|| UpstreamError::malformed("the answer has no message"))?;
    let content = message.content.iter().filter(|b| b["type"] == "text").filter_map(|b| b["text"].as_str()).collect();
    let tool_calls = message
        .tool_calls
        .iter()
        .map(|c| crate::types::ToolCall {
            id: c["id"].as_str().unwrap_or_default().to_owned(),
            name: c["function"]["name"].as_str().unwrap_or_default().to_owned(),
            arguments: c["function"]["arguments"].as_str().unwrap_or("{}").to_owned(),
        })
        .collect();
    Ok(Completion {
        content,
        tool_calls,
        finish_reason: finish_reason(&reason),
        usage: response.usage.map(Usage::from),
    })
}

/// Follows the typed events; complete at `message-end`. Tool calls are numbered by
/// the event's `index` among tool calls, as OpenAI numbers them.
#[derive(Default)]
pub struct StreamDecoder {
    pub done: bool,
}

impl StreamDecoder {
    pub fn decode(&mut self, event: SseEvent, out: &mut Vec<Delta>) -> Result<(), UpstreamError> {
        if event.data.trim().is_empty() {
            return Ok(());
        }
        let value: Value = serde_json::from_str(&event.data)
            .map_err(|e| UpstreamError::malformed(format!("unreadable stream event: {e}")))?;
        let message = &value["delta"]["message"];
        let index = value["index"].as_u64().unwrap_or(0) as u32;
        match value["type"].as_str().unwrap_or(event.event.as_str()) {
            "content-delta" => {
                if let Some(text) = message["content"]["text"].as_str().filter(|t| !t.is_empty()) {
                    out.push(Delta::Text(text.to_owned()));
                }
            }
            "tool-call-start" => {
                let call = &message["tool_calls"];
                out.push(Delta::ToolCall {
                    index,
                    id: call["id"].as_str().map(str::to_owned),
                    name: call["function"]["name"].as_str().map(str::to_owned),
                    arguments: call["function"]["arguments"].as_str().unwrap_or_default().to_owned(),
                });
            }
            "tool-call-delta" => {
                let arguments = message["tool_calls"]["function"]["arguments"].as_str().unwrap_or_default();
                out.push(Delta::ToolCall { index, id: None, name: None, arguments: arguments.to_owned() });
            }
            "message-end" => {
                let delta = &value["delta"];
                let reason = delta["finish_reason"].as_str().unwrap_or("COMPLETE");
                if let Some(error) = failed(reason, delta["error"].as_str()) {
                    return Err(error);
                }
                self.done = true;
                out.push(Delta::Finish(finish_reason(reason)));
                let usage: Option<WireUsage> = serde_json::from_value(delta["usage"].clone()).ok();
                out.extend(usage.map(|u| Delta::Usage(u.into())));
            }
            // message-start, content-start/-end, tool-plan-delta, tool-call-end, citations
            _ => {}
        }
        Ok(())
    }
}

/// Embeddings of documents (v3 models and later want an `input_type`), as floats.
pub fn embeddings_body(model: &str, inputs: &[String], dimensions: Option<u32>) -> Value {
    let mut body = json!({"model": model, "texts": inputs, "input_type": "search_document",
        "embedding_types": ["float"]});
    if let Some(dimensions) = dimensions {
        body["output_dimension"] = dimensions.into();
    }
    body
}

/// `{"embeddings": {"float": [[...]]}, "meta": {"billed_units": {"input_tokens"}}}`
pub fn parse_embeddings(body: &[u8], inputs: usize) -> Result<EmbeddingAnswer, UpstreamError> {
    #[derive(Deserialize)]
    struct Answer {
        embeddings: Embeddings,
        meta: Option<Value>,
    }
    #[derive(Deserialize)]
    struct Embeddings {
        float: Vec<Vec<f32>>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::malformed(format!("an embeddings answer that does not parse: {e}")))?;
    let tokens =
        answer.meta.and_then(|m| m["billed_units"]["input_tokens"].as_f64()).map(|t| t.max(0.0).round() as u64);
    Ok((one_per_input(answer.embeddings.float, inputs)?, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FailureKind, Tool, ToolCall};

    #[test]
    fn requests_translate() {
        let tool = Tool { name: "get_weather".into(), description: None, parameters: json!({"type": "object"}) };
        let call = ToolCall { id: "c1".into(), name: "get_weather".into(), arguments: "{}".into() };
        let hi = || vec![Message::text(Role::User, "Hi")];
        // (case, request, JSON pointer into the body, expected value there)
        let cases: Vec<(&str, ChatRequest, &str, Value)> = vec![
            (
                "sampling names",
                ChatRequest { messages: hi(), top_p: Some(0.5), stop: vec!["X".into()], ..Default::default() },
                "/p",
                json!(0.5),
            ),
            (
                "stop sequences",
                ChatRequest { messages: hi(), stop: vec!["X".into()], ..Default::default() },
                "/stop_sequences",
                json!(["X"]),
            ),
            (
                "required tools",
                ChatRequest {
                    messages: hi(),
                    tools: vec![tool.clone()],
                    tool_choice: Some(json!("required")),
                    ..Default::default()
                },
                "/tool_choice",
                json!("REQUIRED"),
            ),
            (
                "tools as functions",
                ChatRequest { messages: hi(), tools: vec![tool], ..Default::default() },
                "/tools/0",
                json!({"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}),
            ),
            (
                "JSON mode with a schema",
                ChatRequest {
                    messages: hi(),
                    response_format: Some(
                        json!({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}),
                    ),
                    ..Default::default()
                },
                "/response_format",
                json!({"type": "json_object", "json_schema": {"type": "object"}}),
            ),
            (
                "a call and its answer",
                ChatRequest {
                    messages: vec![
                        Message { tool_calls: vec![call], ..Message::text(Role::Assistant, "") },
                        Message { tool_call_id: Some("c1".into()), ..Message::text(Role::Tool, "18 C") },
                    ],
                    ..Default::default()
                },
                "/messages",
                json!([
                    {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"}}]},
                    {"role": "tool", "content": "18 C", "tool_call_id": "c1"},
                ]),
            ),
        ];
        for (name, request, pointer, expected) in cases {
            let body = request_body("command-r-plus", &request, true);
            assert_eq!(body.pointer(pointer), Some(&expected), "{name}: {body}");
            assert_eq!(body["stream"], true);
        }
    }

    #[test]
    fn answers_translate_back() {
        let answer = parse_response(
            br#"{"id":"x","finish_reason":"TOOL_CALL","message":{"role":"assistant","tool_plan":"I will",
            "tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
            "usage":{"billed_units":{"input_tokens":5,"output_tokens":2},"tokens":{"input_tokens":70,"output_tokens":2}}}"#,
        )
        .unwrap();
        assert_eq!(answer.finish_reason, FinishReason::ToolCalls);
        assert_eq!(
            answer.tool_calls[0],
            ToolCall { id: "c1".into(), name: "f".into(), arguments: r#"{"a":1}"#.into() }
        );
        assert_eq!(answer.usage.map(|u| (u.prompt_tokens, u.completion_tokens)), Some((70, 2)));
        let text = parse_response(
            br#"{"finish_reason":"MAX_TOKENS","message":{"content":[{"type":"text","text":"Hi"}]},
            "usage":{"billed_units":{"input_tokens":3,"output_tokens":1}}}"#,
        )
        .unwrap();
        assert_eq!((text.content.as_str(), text.finish_reason), ("Hi", FinishReason::Length));
        assert_eq!(text.usage.map(|u| (u.prompt_tokens, u.completion_tokens)), Some((3, 1)));
        let failed = parse_response(br#"{"finish_reason":"ERROR","message":{"content":[]}}"#).unwrap_err();
        assert_eq!(failed.kind, FailureKind::Server);
    }

    #[test]
    fn a_stream_of_typed_events() {
        let events = [
            json!({"type": "message-start", "id": "x", "delta": {"message": {"role": "assistant"}}}),
            json!({"type": "content-start", "index": 0, "delta": {"message": {"content": {"type": "text", "text": ""}}}}),
            json!({"type": "content-delta", "index": 0, "delta": {"message": {"content": {"text": "Hi"}}}}),
            json!({"type": "content-end", "index": 0}),
            json!({"type": "tool-call-start", "index": 0, "delta": {"message": {"tool_calls": {"id": "c1",
                "type": "function", "function": {"name": "f", "arguments": ""}}}}}),
            json!({"type": "tool-call-delta", "index": 0, "delta": {"message": {"tool_calls":
                {"function": {"arguments": "{}"}}}}}),
            json!({"type": "tool-call-end", "index": 0}),
            json!({"type": "message-end", "delta": {"finish_reason": "TOOL_CALL",
                "usage": {"billed_units": {"input_tokens": 4, "output_tokens": 2},
                    "tokens": {"input_tokens": 4, "output_tokens": 2}}}}),
        ];
        let mut decoder = StreamDecoder::default();
        let mut out = Vec::new();
        for event in &events {
            assert!(!decoder.done);
            let name = event["type"].as_str().unwrap().to_owned();
            decoder.decode(SseEvent { event: name, data: event.to_string() }, &mut out).unwrap();
        }
        assert!(decoder.done);
        assert_eq!(
            out,
            vec![
                Delta::Text("Hi".into()),
                Delta::ToolCall { index: 0, id: Some("c1".into()), name: Some("f".into()), arguments: String::new() },
                Delta::ToolCall { index: 0, id: None, name: None, arguments: "{}".into() },
                Delta::Finish(FinishReason::ToolCalls),
                Delta::Usage(Usage { prompt_tokens: 4, completion_tokens: 2, ..Usage::default() }),
            ]
        );
        let end = json!({"type": "message-end", "delta": {"finish_reason": "ERROR", "error": "internal"}});
        let error = StreamDecoder::default()
            .decode(SseEvent { event: String::new(), data: end.to_string() }, &mut out)
            .unwrap_err();
        assert_eq!((error.kind, error.message.as_str()), (FailureKind::Server, "internal"));
    }

    #[test]
    fn embeddings_both_ways() {
        assert_eq!(
            embeddings_body("embed-v4.0", &["a".into()], None),
            json!({"model": "embed-v4.0", "texts": ["a"], "input_type": "search_document", "embedding_types": ["float"]})
        );
        let parsed = parse_embeddings(
            br#"{"id":"x","embeddings":{"float":[[0.5]]},"meta":{"billed_units":{"input_tokens":1}}}"#,
            1,
        )
        .unwrap();
        assert_eq!(parsed, (vec![vec![0.5]], Some(1)));
    }
}
