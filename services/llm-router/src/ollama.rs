//! Ollama's native API (`POST {base}/api/chat`, `POST {base}/api/embed`; no key unless
//! a proxy in front wants a bearer token): OpenAI-shaped calls translated and back.
//!
//! Differences bridged here: images are base64 strings in `images` (a URL the server
//! cannot fetch is left out); a tool call's arguments are an object, and a tool result
//! names its function in `tool_name` (looked up from the assistant's call); sampling
//! goes in `options` (`num_predict` is max_tokens); JSON mode is `format: "json"`, a
//! schema is `format` itself; there is no tool_choice: `none` sends no tools. Streams
//! are newline-delimited JSON (one object per line), complete at the line with
//! `done: true`, which carries `done_reason` and the token counts.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::sse::SseEvent;
use crate::types::{
    ChatRequest, Completion, Delta, EmbeddingAnswer, FinishReason, Message, Role, ToolCall, UpstreamError, Usage,
    data_url, made_up_call_id, one_per_input,
};

pub const CHAT_PATH: &str = "/api/chat";
pub const EMBED_PATH: &str = "/api/embed";

pub fn request_body(model: &str, request: &ChatRequest, stream: bool) -> Value {
    let messages: Vec<Value> = request.messages.iter().map(|m| message(request, m)).collect();
    let mut body = Map::new();
    body.insert("model".into(), model.into());
    body.insert("messages".into(), messages.into());
    // Ollama streams unless told not to
    body.insert("stream".into(), stream.into());
    let options = request.sampling(["num_predict", "temperature", "top_p", "stop"]);
    if !options.is_empty() {
        body.insert("options".into(), Value::Object(options));
    }
    if let Some(format) = &request.response_format
        && format["type"] != "text"
    {
        let schema = &format["json_schema"]["schema"];
        body.insert("format".into(), if schema.is_object() { schema.clone() } else { "json".into() });
    }
    let tools_off = request.tool_choice.as_ref().is_some_and(|c| c == "none");
    if !request.tools.is_empty() && !tools_off {
        body.insert("tools".into(), crate::openai::function_tools(&request.tools));
    }
    Value::Object(body)
}

fn message(request: &ChatRequest, m: &Message) -> Value {
    let mut out = json!({"role": m.role.as_str(), "content": m.plain_text()});
    let images: Vec<&str> = m
        .parts
        .iter()
        .flatten()
        .filter(|p| p["type"] == "image_url")
        .filter_map(|p| p["image_url"]["url"].as_str().or_else(|| p["image_url"].as_str()))
        .filter_map(|url| data_url(url).map(|(_, data)| data))
        .collect();
    if !images.is_empty() {
        out["images"] = images.into();
    }
    if !m.tool_calls.is_empty() {
        let calls =
            m.tool_calls.iter().map(|c| json!({"function": {"name": c.name, "arguments": c.arguments_object()}}));
        out["tool_calls"] = calls.collect();
    }
    if m.role == Role::Tool
        && let Some(name) = m.tool_call_id.as_deref().and_then(|id| request.tool_name_of(id)).or(m.name.as_deref())
    {
        out["tool_name"] = name.into();
    }
    out
}

#[derive(Deserialize)]
struct Response {
    message: Option<WireMessage>,
    #[serde(default)]
    done: bool,
    done_reason: Option<String>,
    prompt_eval_count: Option<u64>,
    eval_count: Option<u64>,
    error: Option<Value>,
}

#[derive(Deserialize, Default)]
struct WireMessage {
    #[serde(default)]
    content: String,
    #[serde(default)]
    tool_calls: Vec<Value>,
}

impl Response {
    fn usage(&self) -> Option<Usage> {
        (self.prompt_eval_count.is_some() || self.eval_count.is_some()).then(|| Usage {
            prompt_tokens: self.prompt_eval_count.unwrap_or(0),
            completion_tokens: self.eval_count.unwrap_or(0),
            ..Usage::default()
        })
    }

    fn finish(&self, called_tools: bool) -> FinishReason {
        match self.done_reason.as_deref() {
            Some("length") => FinishReason::Length,
            _ if called_tools => FinishReason::ToolCalls,
            _ => FinishReason::Stop,
        }
    }
}

/// A tool call as Ollama gives it: `{"function": {"name", "arguments": {...}}}`, whole,
/// and without an id on most versions, so one is made up.
fn tool_call(call: &Value) -> ToolCall {
    let function = &call["function"];
    ToolCall {
        id: call["id"].as_str().map_or_else(made_up_call_id, str::to_owned),
        name: function["name"].as_str().unwrap_or_default().to_owned(),
        arguments: match &function["arguments"] {
            Value::String(text) => text.clone(),
            Value::Object(_) => function["arguments"].to_string(),
            _ => "{}".to_owned(),
        },
    }
}

pub fn parse_response(body: &[u8]) -> Result<Completion, UpstreamError> {
    let response: Response =
        serde_json::from_slice(body).map_err(|e| UpstreamError::malformed(format!("unreadable answer: {e}")))?;
    if let Some(error) = &response.error {
        return Err(error_of(error));
    }
    if !response.done {
        return Err(UpstreamError::malformed("the answer is not done"));
    }
    let usage = response.usage();
    let message = response.message.as_ref();
    let tool_calls: Vec<ToolCall> = message.map(|m| m.tool_calls.iter().map(tool_call).collect()).unwrap_or_default();
    Ok(Completion {
        content: message.map(|m| m.content.clone()).unwrap_or_default(),
        finish_reason: response.finish(!tool_calls.is_empty()),
        tool_calls,
        usage,
    })
}

/// Reads the stream's lines (each handed over as the data of an event); complete at
/// `done: true`. An `{"error": "..."}` line fails the stream.
#[derive(Default)]
pub struct StreamDecoder {
    pub done: bool,
    tool_calls: u32,
}

impl StreamDecoder {
    pub fn decode(&mut self, line: SseEvent, out: &mut Vec<Delta>) -> Result<(), UpstreamError> {
        let data = line.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        let chunk: Response =
            serde_json::from_str(data).map_err(|e| UpstreamError::malformed(format!("unreadable stream line: {e}")))?;
        if let Some(error) = &chunk.error {
            return Err(error_of(error));
        }
        if let Some(message) = &chunk.message {
            if !message.content.is_empty() {
                out.push(Delta::Text(message.content.clone()));
            }
            for call in &message.tool_calls {
                out.push(Delta::whole_tool_call(self.tool_calls, tool_call(call)));
                self.tool_calls += 1;
            }
        }
        if chunk.done {
            self.done = true;
            out.push(Delta::Finish(chunk.finish(self.tool_calls > 0)));
            out.extend(chunk.usage().map(Delta::Usage));
        }
        Ok(())
    }
}

/// `{"error": "..."}`: Ollama names no class, so one in a 200 body or a stream is the
/// server's.
fn error_of(error: &Value) -> UpstreamError {
    let message = crate::openai::error_message(&json!({"error": error}));
    UpstreamError { status: None, ..UpstreamError::from_status(500, message, None) }
}

pub fn embeddings_body(model: &str, inputs: &[String], dimensions: Option<u32>) -> Value {
    let mut body = json!({"model": model, "input": inputs});
    if let Some(dimensions) = dimensions {
        body["dimensions"] = dimensions.into();
    }
    body
}

/// `{"embeddings": [[...]], "prompt_eval_count": n}`, in input order.
pub fn parse_embeddings(body: &[u8], inputs: usize) -> Result<EmbeddingAnswer, UpstreamError> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        embeddings: Vec<Vec<f32>>,
        prompt_eval_count: Option<u64>,
        error: Option<Value>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::malformed(format!("an embeddings answer that does not parse: {e}")))?;
    if let Some(error) = &answer.error {
        return Err(error_of(error));
    }
    Ok((one_per_input(answer.embeddings, inputs)?, answer.prompt_eval_count))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FailureKind, Tool};

    #[test]
    fn requests_translate() {
        let call =
            ToolCall { id: "call_0".into(), name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() };
        let tool = Tool { name: "get_weather".into(), description: None, parameters: json!({"type": "object"}) };
        // (case, request, JSON pointer into the body, expected value there)
        let cases: Vec<(&str, ChatRequest, &str, Value)> = vec![
            (
                "options",
                ChatRequest {
                    messages: vec![Message::text(Role::User, "Hi")],
                    max_tokens: Some(20),
                    temperature: Some(0.25),
                    stop: vec!["END".into()],
                    ..Default::default()
                },
                "/options",
                json!({"num_predict": 20, "temperature": 0.25, "stop": ["END"]}),
            ),
            (
                "JSON mode",
                ChatRequest {
                    messages: vec![Message::text(Role::User, "Hi")],
                    response_format: Some(json!({"type": "json_object"})),
                    ..Default::default()
                },
                "/format",
                json!("json"),
            ),
            (
                "a schema is the format",
                ChatRequest {
                    messages: vec![Message::text(Role::User, "Hi")],
                    response_format: Some(
                        json!({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}),
                    ),
                    ..Default::default()
                },
                "/format",
                json!({"type": "object"}),
            ),
            (
                "tools",
                ChatRequest { messages: vec![], tools: vec![tool.clone()], ..Default::default() },
                "/tools",
                json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]),
            ),
            (
                "tool_choice none sends no tools",
                ChatRequest {
                    messages: vec![],
                    tools: vec![tool],
                    tool_choice: Some(json!("none")),
                    ..Default::default()
                },
                "/tools",
                Value::Null,
            ),
            (
                "a call with object arguments, its answer named",
                ChatRequest {
                    messages: vec![
                        Message { tool_calls: vec![call], ..Message::text(Role::Assistant, "") },
                        Message { tool_call_id: Some("call_0".into()), ..Message::text(Role::Tool, "18 C") },
                    ],
                    ..Default::default()
                },
                "/messages",
                json!([
                    {"role": "assistant", "content": "",
                        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                    {"role": "tool", "content": "18 C", "tool_name": "get_weather"},
                ]),
            ),
            (
                "images as base64",
                ChatRequest {
                    messages: vec![Message {
                        parts: Some(vec![
                            json!({"type": "text", "text": "What?"}),
                            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}),
                        ]),
                        ..Message::text(Role::User, "")
                    }],
                    ..Default::default()
                },
                "/messages/0",
                json!({"role": "user", "content": "What?", "images": ["iVBO"]}),
            ),
        ];
        for (name, request, pointer, expected) in cases {
            let body = request_body("llama3.2", &request, false);
            assert_eq!(body.pointer(pointer).unwrap_or(&Value::Null), &expected, "{name}: {body}");
            assert_eq!(body["stream"], false, "{name}");
        }
    }

    #[test]
    fn answers_and_streams_translate_back() {
        let whole = parse_response(
            br#"{"model":"m","message":{"role":"assistant","content":"",
            "tool_calls":[{"function":{"name":"f","arguments":{"a":1}}}]},
            "done":true,"done_reason":"stop","prompt_eval_count":7,"eval_count":3}"#,
        )
        .unwrap();
        assert_eq!(whole.finish_reason, FinishReason::ToolCalls);
        let call = &whole.tool_calls[0];
        assert_eq!((whole.tool_calls.len(), call.name.as_str(), call.arguments.as_str()), (1, "f", r#"{"a":1}"#));
        assert!(call.id.starts_with(crate::types::MADE_UP_CALL_ID), "an id is made up: {call:?}");
        assert_eq!(whole.usage.map(|u| (u.prompt_tokens, u.completion_tokens)), Some((7, 3)));
        let cut = parse_response(br#"{"message":{"content":"Hi"},"done":true,"done_reason":"length"}"#).unwrap();
        assert_eq!((cut.content.as_str(), cut.finish_reason, cut.usage), ("Hi", FinishReason::Length, None));

        let lines = [
            r#"{"message":{"role":"assistant","content":"Hel"},"done":false}"#,
            r#"{"message":{"role":"assistant","content":"lo"},"done":false}"#,
            r#"{"message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","prompt_eval_count":4,"eval_count":2}"#,
        ];
        let mut decoder = StreamDecoder::default();
        let mut out = Vec::new();
        for line in lines {
            assert!(!decoder.done);
            decoder.decode(SseEvent { event: String::new(), data: line.into() }, &mut out).unwrap();
        }
        assert!(decoder.done);
        assert_eq!(
            out,
            vec![
                Delta::Text("Hel".into()),
                Delta::Text("lo".into()),
                Delta::Finish(FinishReason::Stop),
                Delta::Usage(Usage { prompt_tokens: 4, completion_tokens: 2, ..Usage::default() }),
            ]
        );
        let error = StreamDecoder::default()
            .decode(SseEvent { event: String::new(), data: r#"{"error":"model crashed"}"#.into() }, &mut out)
            .unwrap_err();
        assert_eq!((error.kind, error.message.as_str()), (FailureKind::Server, "model crashed"));
    }

    #[test]
    fn embeddings_both_ways() {
        assert_eq!(
            embeddings_body("all-minilm", &["a".into()], Some(3)),
            json!({"model": "all-minilm", "input": ["a"], "dimensions": 3})
        );
        let parsed = parse_embeddings(br#"{"model":"m","embeddings":[[0.5],[1]],"prompt_eval_count":2}"#, 2).unwrap();
        assert_eq!(parsed, (vec![vec![0.5], vec![1.0]], Some(2)));
        assert_eq!(parse_embeddings(br#"{"error":"not found"}"#, 1).unwrap_err().kind, FailureKind::Server);
    }
}
