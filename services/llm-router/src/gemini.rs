//! Google's Gemini API (`POST {base}/v1beta/models/{model}:generateContent`, streamed
//! by `:streamGenerateContent?alt=sse`, embeddings by `:batchEmbedContents`; the key
//! in `x-goog-api-key`): OpenAI-shaped calls translated to contents and parts and back.
//!
//! Differences bridged here: system messages go to `systemInstruction`; the assistant
//! is the role `model`; a tool result is a `functionResponse` part that names the
//! function (looked up from the assistant's call with that id) and carries an object;
//! consecutive messages of one role are merged (parallel calls are answered in one
//! content); JSON mode is `responseMimeType: application/json`, a schema goes to
//! `responseJsonSchema`; tool calls come whole (never in fragments) and without an id
//! on older models, so one is made up; the stream has no end marker of its own: it is
//! complete once a candidate carried its `finishReason`.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::sse::SseEvent;
use crate::types::{
    ChatRequest, Completion, Delta, EmbeddingAnswer, FailureKind, FinishReason, MADE_UP_CALL_ID, Message, Role,
    ToolCall, UpstreamError, Usage, data_url, made_up_call_id, one_per_input, push_turn,
};

/// The URL of `action` (`generateContent`, `streamGenerateContent?alt=sse`,
/// `batchEmbedContents`) on `model`. A model name that would leave the models path is
/// refused, so the key never goes to another route.
pub fn url(base: &str, model: &str, action: &str) -> Result<String, UpstreamError> {
    let model = model.strip_prefix("models/").unwrap_or(model);
    if model.is_empty() || model.contains(['/', '?', '#', ':', '%']) {
        return Err(UpstreamError::new(FailureKind::BadRequest, format!("{model:?} is not a Gemini model name")));
    }
    Ok(format!("{base}/v1beta/models/{model}:{action}"))
}

pub const GENERATE: &str = "generateContent";
pub const STREAM: &str = "streamGenerateContent?alt=sse";
pub const EMBED: &str = "batchEmbedContents";
pub const KEY_HEADER: &str = "x-goog-api-key";

pub fn request_body(request: &ChatRequest) -> Value {
    let system: Vec<Value> =
        request.messages.iter().filter(|m| m.role == Role::System).map(|m| json!({"text": m.plain_text()})).collect();
    let mut contents: Vec<(&str, Vec<Value>)> = Vec::new();
    for m in request.messages.iter().filter(|m| m.role != Role::System) {
        let (role, parts) = match m.role {
            Role::Tool => {
                let id = m.tool_call_id.as_deref().unwrap_or_default();
                let name = request.tool_name_of(id).or(m.name.as_deref()).unwrap_or(id);
                let text = m.plain_text();
                // the API wants an object: a JSON object answer as it is, anything else as `output`
                let response = serde_json::from_str::<Value>(&text)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({"output": text}));
                let mut call = json!({"name": name, "response": response});
                if !id.is_empty() && !id.starts_with(MADE_UP_CALL_ID) {
                    call["id"] = id.into();
                }
                ("user", vec![json!({"functionResponse": call})])
            }
            Role::Assistant => {
                let mut parts = parts(m);
                for call in &m.tool_calls {
                    let mut function_call = json!({"name": call.name, "args": call.arguments_object()});
                    // an id Gemini gave goes back; one made up here never existed there
                    if !call.id.starts_with(MADE_UP_CALL_ID) {
                        function_call["id"] = call.id.clone().into();
                    }
                    parts.push(json!({"functionCall": function_call}));
                }
                ("model", parts)
            }
            _ => ("user", parts(m)),
        };
        push_turn(&mut contents, role, parts);
    }
    let mut body = Map::new();
    let contents = contents.into_iter().map(|(role, parts)| json!({"role": role, "parts": parts}));
    body.insert("contents".into(), contents.collect());
    if !system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let mut config = request.sampling(["maxOutputTokens", "temperature", "topP", "stopSequences"]);
    if let Some(format) = &request.response_format
        && format["type"] != "text"
    {
        config.insert("responseMimeType".into(), "application/json".into());
        let schema = &format["json_schema"]["schema"];
        if schema.is_object() {
            config.insert("responseJsonSchema".into(), schema.clone());
        }
    }
    if !config.is_empty() {
        body.insert("generationConfig".into(), Value::Object(config));
    }
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|t| {
                let mut declaration = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    declaration["description"] = d.clone().into();
                }
                declaration
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
    }
    if let Some(config) = request.tool_choice.as_ref().and_then(tool_config) {
        body.insert("toolConfig".into(), config);
    }
    Value::Object(body)
}

fn tool_config(choice: &Value) -> Option<Value> {
    let config = match choice.as_str() {
        Some("auto") => json!({"mode": "AUTO"}),
        Some("required") => json!({"mode": "ANY"}),
        Some("none") => json!({"mode": "NONE"}),
        Some(_) => return None,
        None => json!({"mode": "ANY", "allowedFunctionNames": [choice["function"]["name"].as_str()?]}),
    };
    Some(json!({"functionCallingConfig": config}))
}

/// OpenAI content (a string or parts) as Gemini parts; images inline (base64) or by URI.
fn parts(m: &Message) -> Vec<Value> {
    let Some(parts) = &m.parts else {
        return if m.content.is_empty() { Vec::new() } else { vec![json!({"text": m.content})] };
    };
    parts
        .iter()
        .filter_map(|part| match part["type"].as_str() {
            Some("text") => Some(json!({"text": part["text"]})),
            Some("image_url") => {
                let url = part["image_url"]["url"].as_str().or_else(|| part["image_url"].as_str())?;
                Some(match data_url(url) {
                    Some((mime, data)) => json!({"inlineData": {"mimeType": mime, "data": data}}),
                    None => json!({"fileData": {"fileUri": url}}),
                })
            }
            _ => None,
        })
        .collect()
}

pub fn finish_reason(text: &str) -> FinishReason {
    match text {
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        _ => FinishReason::Stop,
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct WireUsage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
}

impl From<WireUsage> for Usage {
    /// Thinking tokens are billed as output but not counted in `candidatesTokenCount`.
    fn from(u: WireUsage) -> Self {
        Usage {
            prompt_tokens: u.prompt_token_count,
            completion_tokens: u.candidates_token_count + u.thoughts_token_count,
            cached_prompt_tokens: u.cached_content_token_count,
            reasoning_tokens: u.thoughts_token_count,
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Response {
    #[serde(default)]
    candidates: Vec<Candidate>,
    usage_metadata: Option<WireUsage>,
    prompt_feedback: Option<Value>,
    error: Option<Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Value>,
}

/// A part that is the model's thinking, shown to no one.
fn is_thought(part: &Value) -> bool {
    part["thought"] == true
}

pub fn parse_response(body: &[u8]) -> Result<Completion, UpstreamError> {
    let response: Response =
        serde_json::from_slice(body).map_err(|e| UpstreamError::malformed(format!("unreadable answer: {e}")))?;
    if let Some(error) = &response.error {
        return Err(error_of(error));
    }
    let usage = response.usage_metadata.map(Usage::from);
    let Some(candidate) = response.candidates.into_iter().next() else {
        // a prompt blocked before generation has no candidates, only its feedback
        if response.prompt_feedback.is_some_and(|f| f["blockReason"].is_string()) {
            return Ok(Completion {
                content: String::new(),
                tool_calls: Vec::new(),
                finish_reason: FinishReason::ContentFilter,
                usage,
            });
        }
        return Err(UpstreamError::malformed("the answer has no candidates"));
    };
    let mut content = String::new();
    let mut tool_calls = Vec::new();
    for part in candidate.content.map(|c| c.parts).unwrap_or_default().iter().filter(|p| !is_thought(p)) {
        if let Some(text) = part["text"].as_str() {
            content.push_str(text);
        } else if let Some(call) = part.get("functionCall") {
            tool_calls.push(tool_call(call));
        }
    }
    let finish = match candidate.finish_reason.as_deref() {
        Some("STOP") | None if !tool_calls.is_empty() => FinishReason::ToolCalls,
        Some(reason) => finish_reason(reason),
        None => FinishReason::Stop,
    };
    Ok(Completion { content, tool_calls, finish_reason: finish, usage })
}

/// A `functionCall` part as a tool call; older models give no id, so one is made up
/// (the way back looks the function's name up by it).
fn tool_call(call: &Value) -> ToolCall {
    ToolCall {
        id: call["id"].as_str().map_or_else(made_up_call_id, str::to_owned),
        name: call["name"].as_str().unwrap_or_default().to_owned(),
        arguments: if call["args"].is_object() { call["args"].to_string() } else { "{}".to_owned() },
    }
}

/// Reads `alt=sse` chunks, each a whole `GenerateContentResponse` holding the next
/// piece. Complete once a candidate gave its `finishReason`; usage is cumulative, so
/// the last one counts.
#[derive(Default)]
pub struct StreamDecoder {
    pub done: bool,
    tool_calls: u32,
    usage: Option<Usage>,
}

impl StreamDecoder {
    pub fn decode(&mut self, event: SseEvent, out: &mut Vec<Delta>) -> Result<(), UpstreamError> {
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        let chunk: Response = serde_json::from_str(data)
            .map_err(|e| UpstreamError::malformed(format!("unreadable stream chunk: {e}")))?;
        if let Some(error) = &chunk.error {
            return Err(error_of(error));
        }
        if let Some(usage) = chunk.usage_metadata {
            self.usage = Some(usage.into());
        }
        let mut finish = None;
        for candidate in chunk.candidates {
            let parts = candidate.content.map(|c| c.parts).unwrap_or_default();
            for part in parts.iter().filter(|p| !is_thought(p)) {
                if let Some(text) = part["text"].as_str().filter(|t| !t.is_empty()) {
                    out.push(Delta::Text(text.to_owned()));
                } else if let Some(call) = part.get("functionCall") {
                    out.push(Delta::whole_tool_call(self.tool_calls, tool_call(call)));
                    self.tool_calls += 1;
                }
            }
            if let Some(reason) = candidate.finish_reason {
                finish = Some(match reason.as_str() {
                    "STOP" if self.tool_calls > 0 => FinishReason::ToolCalls,
                    other => finish_reason(other),
                });
            }
        }
        if chunk.prompt_feedback.is_some_and(|f| f["blockReason"].is_string()) {
            finish = Some(FinishReason::ContentFilter);
        }
        if let Some(reason) = finish {
            self.done = true;
            out.push(Delta::Finish(reason));
        }
        // after the finish (which brings the final counts), every later count replaces it
        if self.done
            && let Some(usage) = self.usage
        {
            out.push(Delta::Usage(usage));
        }
        Ok(())
    }
}

/// `{"error": {"code": 429, "message", "status": "RESOURCE_EXHAUSTED"}}`, as a body or
/// inside a stream.
fn error_of(error: &Value) -> UpstreamError {
    let message = crate::openai::error_message(&json!({"error": error}));
    let status = error["code"].as_u64().and_then(|c| u16::try_from(c).ok()).filter(|c| *c >= 400);
    let status = status.unwrap_or(match error["status"].as_str() {
        Some("RESOURCE_EXHAUSTED") => 429,
        Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION") => 400,
        Some("UNAUTHENTICATED") => 401,
        Some("PERMISSION_DENIED") => 403,
        Some("NOT_FOUND") => 404,
        Some("DEADLINE_EXCEEDED") => 504,
        Some("UNAVAILABLE") => 503,
        _ => 500,
    });
    UpstreamError::from_status(status, message, None)
}

pub fn embeddings_body(model: &str, inputs: &[String], dimensions: Option<u32>) -> Value {
    let model = format!("models/{}", model.strip_prefix("models/").unwrap_or(model));
    let requests: Vec<Value> = inputs
        .iter()
        .map(|text| {
            let mut request = json!({"model": model, "content": {"parts": [{"text": text}]}});
            if let Some(dimensions) = dimensions {
                request["outputDimensionality"] = dimensions.into();
            }
            request
        })
        .collect();
    json!({"requests": requests})
}

/// `{"embeddings": [{"values": [...]}]}`, in input order; Gemini reports no tokens.
pub fn parse_embeddings(body: &[u8], inputs: usize) -> Result<EmbeddingAnswer, UpstreamError> {
    #[derive(Deserialize)]
    struct Answer {
        #[serde(default)]
        embeddings: Vec<Embedding>,
        error: Option<Value>,
    }
    #[derive(Deserialize)]
    struct Embedding {
        values: Vec<f32>,
    }
    let answer: Answer = serde_json::from_slice(body)
        .map_err(|e| UpstreamError::malformed(format!("an embeddings answer that does not parse: {e}")))?;
    if let Some(error) = &answer.error {
        return Err(error_of(error));
    }
    Ok((one_per_input(answer.embeddings.into_iter().map(|e| e.values).collect(), inputs)?, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Tool;

    fn user(text: &str) -> Message {
        Message::text(Role::User, text)
    }

    /// (what the caller sends, the part of the Gemini body it must become)
    #[test]
    fn requests_translate_to_contents_and_config() {
        let weather = Tool {
            name: "get_weather".into(),
            description: Some("Weather".into()),
            parameters: json!({"type": "object"}),
        };
        let call =
            ToolCall { id: "call_0".into(), name: "get_weather".into(), arguments: r#"{"city":"Paris"}"#.into() };
        let cases: Vec<(&str, ChatRequest, &str, Value)> = vec![
            (
                "system to systemInstruction, user text to parts",
                ChatRequest {
                    messages: vec![Message::text(Role::System, "Be brief."), user("Hi")],
                    ..Default::default()
                },
                "",
                json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
                    "systemInstruction": {"parts": [{"text": "Be brief."}]}}),
            ),
            (
                "generation config",
                ChatRequest {
                    messages: vec![user("Hi")],
                    max_tokens: Some(50),
                    temperature: Some(0.5),
                    top_p: Some(0.9),
                    stop: vec!["END".into()],
                    ..Default::default()
                },
                "/generationConfig",
                json!({"maxOutputTokens": 50, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]}),
            ),
            (
                "JSON mode",
                ChatRequest {
                    messages: vec![user("Hi")],
                    response_format: Some(json!({"type": "json_object"})),
                    ..Default::default()
                },
                "/generationConfig",
                json!({"responseMimeType": "application/json"}),
            ),
            (
                "a JSON schema",
                ChatRequest {
                    messages: vec![user("Hi")],
                    response_format: Some(
                        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}),
                    ),
                    ..Default::default()
                },
                "/generationConfig",
                json!({"responseMimeType": "application/json", "responseJsonSchema": {"type": "object"}}),
            ),
            (
                "tools and a forced function",
                ChatRequest {
                    messages: vec![user("Hi")],
                    tools: vec![weather],
                    tool_choice: Some(json!({"type": "function", "function": {"name": "get_weather"}})),
                    ..Default::default()
                },
                "",
                json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
                    "tools": [{"functionDeclarations": [{"name": "get_weather", "description": "Weather",
                        "parameters": {"type": "object"}}]}],
                    "toolConfig": {"functionCallingConfig": {"mode": "ANY",
                        "allowedFunctionNames": ["get_weather"]}}}),
            ),
            (
                "a call and its answer: model functionCall, user functionResponse named by the call",
                ChatRequest {
                    messages: vec![
                        user("Weather?"),
                        Message { tool_calls: vec![call], ..Message::text(Role::Assistant, "") },
                        Message { tool_call_id: Some("call_0".into()), ..Message::text(Role::Tool, "18 C") },
                        Message { tool_call_id: Some("call_0".into()), ..Message::text(Role::Tool, r#"{"temp":18}"#) },
                    ],
                    ..Default::default()
                },
                "/contents",
                json!([
                    {"role": "user", "parts": [{"text": "Weather?"}]},
                    {"role": "model", "parts": [{"functionCall": {"id": "call_0", "name": "get_weather",
                        "args": {"city": "Paris"}}}]},
                    {"role": "user", "parts": [
                        {"functionResponse": {"id": "call_0", "name": "get_weather", "response": {"output": "18 C"}}},
                        {"functionResponse": {"id": "call_0", "name": "get_weather", "response": {"temp": 18}}}]},
                ]),
            ),
            (
                "images inline or by URI",
                ChatRequest {
                    messages: vec![Message {
                        parts: Some(vec![
                            json!({"type": "text", "text": "What is it?"}),
                            json!({"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBO"}}),
                            json!({"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}}),
                        ]),
                        ..user("")
                    }],
                    ..Default::default()
                },
                "/contents/0/parts",
                json!([{"text": "What is it?"}, {"inlineData": {"mimeType": "image/png", "data": "iVBO"}},
                    {"fileData": {"fileUri": "https://x.test/a.jpg"}}]),
            ),
        ];
        for (name, request, pointer, expected) in cases {
            let body = request_body(&request);
            assert_eq!(body.pointer(pointer), Some(&expected), "{name}: {body}");
        }
    }

    #[test]
    fn model_names_stay_in_the_models_path() {
        assert_eq!(
            url("http://g", "models/gemini-2.5-flash", GENERATE).unwrap(),
            "http://g/v1beta/models/gemini-2.5-flash:generateContent"
        );
        for bad in ["", "../files", "a?key=x", "a#b", "a:streamGenerateContent"] {
            assert_eq!(url("http://g", bad, GENERATE).unwrap_err().kind, FailureKind::BadRequest, "{bad}");
        }
    }

    #[test]
    fn answers_translate_back() {
        /// usage as (prompt, completion, cached, reasoning)
        type Counts = Option<(u64, u64, u64, u64)>;
        // (body, content, tool calls, finish, usage)
        let cases: Vec<(Value, &str, usize, FinishReason, Counts)> = vec![
            (
                json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}, {"text": "lo"}]},
                    "finishReason": "STOP"}],
                    "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2, "totalTokenCount": 7}}),
                "Hello",
                0,
                FinishReason::Stop,
                Some((5, 2, 0, 0)),
            ),
            (
                json!({"candidates": [{"content": {"parts": [{"text": "plan", "thought": true},
                    {"functionCall": {"name": "f", "args": {"a": 1}}}]}, "finishReason": "STOP"}],
                    "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": 3, "thoughtsTokenCount": 4,
                        "cachedContentTokenCount": 2}}),
                "",
                1,
                FinishReason::ToolCalls,
                Some((9, 7, 2, 4)),
            ),
            (
                json!({"candidates": [{"content": {"parts": [{"text": "cut"}]}, "finishReason": "MAX_TOKENS"}]}),
                "cut",
                0,
                FinishReason::Length,
                None,
            ),
            (json!({"candidates": [{"finishReason": "SAFETY"}]}), "", 0, FinishReason::ContentFilter, None),
            (
                json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 3}}),
                "",
                0,
                FinishReason::ContentFilter,
                Some((3, 0, 0, 0)),
            ),
        ];
        for (body, content, calls, finish, usage) in cases {
            let completion = parse_response(body.to_string().as_bytes()).unwrap();
            let got = completion
                .usage
                .map(|u| (u.prompt_tokens, u.completion_tokens, u.cached_prompt_tokens, u.reasoning_tokens));
            assert_eq!(
                (completion.content.as_str(), completion.tool_calls.len(), completion.finish_reason, got),
                (content, calls, finish, usage),
                "{body}"
            );
        }
        let call = &parse_response(
            br#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{"a":1}}}]}}]}"#,
        )
        .unwrap()
        .tool_calls[0];
        assert_eq!((call.name.as_str(), call.arguments.as_str()), ("f", r#"{"a":1}"#));
        assert!(call.id.starts_with(MADE_UP_CALL_ID), "{call:?}");
        // a made-up id never goes to Gemini
        let request = ChatRequest {
            messages: vec![
                Message { tool_calls: vec![call.clone()], ..Message::text(Role::Assistant, "") },
                Message { tool_call_id: Some(call.id.clone()), ..Message::text(Role::Tool, "ok") },
            ],
            ..Default::default()
        };
        assert_eq!(
            request_body(&request)["contents"],
            json!([{"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]},
                {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": {"output": "ok"}}}]}])
        );
    }

    #[test]
    fn errors_keep_their_class() {
        let cases = [
            (
                json!({"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}),
                FailureKind::RateLimited,
            ),
            (json!({"error": {"code": 503, "message": "overloaded", "status": "UNAVAILABLE"}}), FailureKind::Server),
            (json!({"error": {"message": "bad", "status": "INVALID_ARGUMENT"}}), FailureKind::BadRequest),
        ];
        for (body, kind) in cases {
            let error = parse_response(body.to_string().as_bytes()).unwrap_err();
            assert_eq!(error.kind, kind, "{body}");
            let mut decoder = StreamDecoder::default();
            let event = SseEvent { event: String::new(), data: body.to_string() };
            assert_eq!(decoder.decode(event, &mut Vec::new()).unwrap_err().kind, kind, "{body} in a stream");
        }
        assert_eq!(parse_response(b"{\"candidates\": [").unwrap_err().kind, FailureKind::Malformed);
    }

    #[test]
    fn a_stream_is_done_at_its_finish_reason() {
        let chunks = [
            json!({"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}],
                "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 1}}),
            json!({"candidates": [{"content": {"parts": [{"functionCall": {"id": "c1", "name": "f", "args": {}}}]}}]}),
            json!({"candidates": [{"content": {"parts": [{"text": "lo"}]}, "finishReason": "STOP"}],
                "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2}}),
        ];
        let mut decoder = StreamDecoder::default();
        let mut out = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            assert!(!decoder.done, "not done before chunk {i}");
            decoder.decode(SseEvent { event: String::new(), data: chunk.to_string() }, &mut out).unwrap();
        }
        assert!(decoder.done);
        let usage = Usage { prompt_tokens: 5, completion_tokens: 2, ..Usage::default() };
        assert_eq!(
            out,
            vec![
                Delta::Text("Hel".into()),
                Delta::ToolCall { index: 0, id: Some("c1".into()), name: Some("f".into()), arguments: "{}".into() },
                Delta::Text("lo".into()),
                Delta::Finish(FinishReason::ToolCalls),
                Delta::Usage(usage),
            ]
        );
    }

    #[test]
    fn embeddings_both_ways() {
        let body = embeddings_body("gemini-embedding-001", &["a".into(), "b".into()], Some(4));
        assert_eq!(
            body["requests"][1],
            json!({"model": "models/gemini-embedding-001", "content": {"parts": [{"text": "b"}]},
                "outputDimensionality": 4})
        );
        let (vectors, tokens) =
            parse_embeddings(br#"{"embeddings": [{"values": [0.5, 1]}, {"values": [2]}]}"#, 2).unwrap();
        assert_eq!((vectors, tokens), (vec![vec![0.5, 1.0], vec![2.0]], None));
        assert_eq!(
            parse_embeddings(br#"{"embeddings": [{"values": [1]}]}"#, 2).unwrap_err().kind,
            FailureKind::Malformed
        );
    }
}
