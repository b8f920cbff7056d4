//! The llm-router behind the gateway's OpenAI- and Anthropic-compatible doors, against
//! fake providers speaking the real wire formats (`helix_testkit::llm`): translation
//! both ways, streams, fallbacks, the fault matrix, the circuit breaker and the budget.

use std::time::{Duration, Instant};

use helix_runtime::HelixConfig;
use helix_runtime::config::LlmAlias;
use helix_testkit::llm::{Behaviour, FAKE_EMBEDDING_DIM, FakeLlm, Wire, fake_vector, quick_retries};
use helix_testkit::{Backend, TestEnv, TestHelix};
use hx::fleet::Role;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::read;

crate::on_both_backends!(
    translation_both_ways_and_streams,
    native_adapters_translate_both_ways,
    budget_reject_calls_no_provider,
    budget_holds_under_50_concurrent_calls,
    embeddings_wire_errors_and_the_shared_budget,
    rate_limits_refuse_before_the_provider,
    analytics_from_the_usage_records,
    per_key_budgets_hold_on_every_endpoint
);

/// A Helix whose providers are fakes, configured by `configure` before it starts.
async fn start(backend: Backend, configure: impl FnOnce(&mut HelixConfig)) -> anyhow::Result<TestHelix> {
    let mut env = TestEnv::new(backend).await?;
    quick_retries(&mut env.config);
    configure(&mut env.config);
    let node = env.start(&Role::ALL).await?;
    let base_url = node.gateway_url().expect("gateway role runs");
    Ok(TestHelix { env, node: Some(node), base_url, http: reqwest::Client::new() })
}

fn alias(targets: &[&str]) -> LlmAlias {
    LlmAlias {
        policy: "fallback".to_owned(),
        targets: targets.iter().map(|t| (*t).to_owned()).collect(),
        weights: vec![],
    }
}

async fn chat(helix: &TestHelix, body: Value) -> anyhow::Result<reqwest::Response> {
    Ok(helix.api(Method::POST, "/v1/chat/completions").json(&body).send().await?)
}

/// One server-sent event: its `event:` name (empty for OpenAI's) and data.
#[derive(Debug)]
struct Sse {
    event: String,
    data: String,
}

async fn sse(response: reqwest::Response) -> anyhow::Result<Vec<Sse>> {
    let text = response.text().await?;
    let mut events = Vec::new();
    for block in text.split("\n\n").filter(|b| !b.trim().is_empty()) {
        let mut event = Sse { event: String::new(), data: String::new() };
        for line in block.lines() {
            if let Some(v) = line.strip_prefix("event:") {
                event.event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data:") {
                event.data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        events.push(event);
    }
    Ok(events)
}

/// What an OpenAI stream says: the text, the tool calls' (name, arguments), whether
/// it ended with `[DONE]`, the error chunk if any, the usage chunk if any.
#[derive(Debug, Default)]
struct OpenAiStream {
    text: String,
    tools: Vec<(String, String)>,
    done: bool,
    error: Option<Value>,
    usage: Option<Value>,
    finish: Option<String>,
}

fn read_openai_stream(events: &[Sse]) -> OpenAiStream {
    let mut out = OpenAiStream::default();
    for event in events {
        assert!(!out.done, "nothing follows [DONE]: {events:?}");
        if event.data == "[DONE]" {
            out.done = true;
            continue;
        }
        let chunk: Value = serde_json::from_str(&event.data).expect("every data line is JSON");
        if chunk.get("error").is_some() {
            out.error = Some(chunk);
            continue;
        }
        assert_eq!(chunk["object"], "chat.completion.chunk", "{chunk}");
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            assert_eq!(chunk["choices"], json!([]), "usage comes in a chunk of its own");
            out.usage = Some(usage.clone());
        }
        let Some(choice) = chunk["choices"].get(0) else { continue };
        if let Some(text) = choice["delta"]["content"].as_str() {
            out.text.push_str(text);
        }
        for call in choice["delta"]["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"].as_u64().unwrap() as usize;
            if out.tools.len() <= index {
                out.tools.resize(index + 1, (String::new(), String::new()));
            }
            if let Some(name) = call["function"]["name"].as_str() {
                out.tools[index].0.push_str(name);
            }
            out.tools[index].1.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
        if let Some(finish) = choice["finish_reason"].as_str() {
            out.finish = Some(finish.to_owned());
        }
    }
    out
}

const WEATHER_TOOL: &str = "get_weather";
const WEATHER_ARGS: &str = r#"{"city":"Paris","unit":"celsius"}"#;

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": WEATHER_TOOL, "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
}

async fn translation_both_ways_and_streams(backend: Backend) -> anyhow::Result<()> {
    let openai = FakeLlm::start().await?;
    let anthropic = FakeLlm::start().await?;
    let helix = start(backend, |config| {
        openai.serve_as(config, "openai", Wire::OpenAi);
        anthropic.serve_as(config, "anthropic", Wire::Anthropic);
    })
    .await?;

    // OpenAI in, OpenAI out
    let response = chat(
        &helix,
        json!({"model": "openai/gpt-4o-mini",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}),
    )
    .await?;
    let overhead = response.headers().get("x-helix-router-overhead-us").map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(response.headers()["x-helix-provider"], "openai");
    let (status, body) = read(response).await;
    assert_eq!(status, 200, "{body}");
    assert!(overhead.expect("the overhead header").parse::<u64>().is_ok());
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], "Hello from the fake");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        (body["usage"]["prompt_tokens"].as_u64(), body["usage"]["completion_tokens"].as_u64()),
        (Some(11), Some(4))
    );
    let sent = &openai.received()[0];
    assert_eq!(sent.key.as_deref(), Some("sk-test-openai"));
    assert_eq!(sent.body["model"], "gpt-4o-mini");
    assert_eq!(sent.body["messages"][0], json!({"role": "system", "content": "Be brief."}));

    // OpenAI in, Anthropic out: system on top, max_tokens filled in, tools as input_schema
    anthropic.script([Behaviour::ToolCall {
        id: "toolu_1".into(),
        name: WEATHER_TOOL.into(),
        arguments: WEATHER_ARGS.into(),
    }]);
    let (status, body) = read(
        chat(
            &helix,
            json!({"model": "anthropic/claude-haiku-4-5", "tools": tools(), "tool_choice": "required",
            "messages": [{"role": "system", "content": "Use tools."}, {"role": "user", "content": "Weather?"}]}),
        )
        .await?,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let message = &body["choices"][0]["message"];
    assert_eq!(message["content"], Value::Null, "{body}");
    assert_eq!(message["tool_calls"][0]["id"], "toolu_1");
    assert_eq!(message["tool_calls"][0]["function"]["name"], WEATHER_TOOL);
    let args: Value = serde_json::from_str(message["tool_calls"][0]["function"]["arguments"].as_str().unwrap())?;
    assert_eq!(args, serde_json::from_str::<Value>(WEATHER_ARGS)?);
    assert_eq!(body["choices"][0]["finish_reason"], "tool_calls");
    let sent = &anthropic.received()[0];
    assert_eq!(sent.key.as_deref(), Some("sk-test-anthropic"));
    assert_eq!(sent.body["system"], "Use tools.");
    assert_eq!(sent.body["max_tokens"], 4096);
    assert_eq!(sent.body["messages"], json!([{"role": "user", "content": [{"type": "text", "text": "Weather?"}]}]));
    assert_eq!(sent.body["tools"][0]["name"], WEATHER_TOOL);
    assert_eq!(sent.body["tools"][0]["input_schema"]["required"], json!(["city"]));
    assert_eq!(sent.body["tool_choice"], json!({"type": "any"}));

    // the tool's answer goes back as a tool_result block
    let (status, body) = read(
        chat(
            &helix,
            json!({"model": "anthropic/claude-haiku-4-5", "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "toolu_1", "type": "function",
                "function": {"name": WEATHER_TOOL, "arguments": WEATHER_ARGS}}]},
            {"role": "tool", "tool_call_id": "toolu_1", "content": "18 C"}]}),
        )
        .await?,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sent = &anthropic.received()[1].body["messages"];
    assert_eq!(sent[1]["content"][0]["type"], "tool_use");
    assert_eq!(sent[1]["content"][0]["input"]["city"], "Paris");
    assert_eq!(
        sent[2],
        json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "18 C"}]})
    );

    // Anthropic in, OpenAI out
    let response = helix
        .http
        .post(helix.url("/v1/messages"))
        .header("x-api-key", &helix.env.admin_key)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "openai/gpt-4o-mini", "max_tokens": 100, "system": "Be brief.",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]}))
        .send()
        .await?;
    let (status, body) = read(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["type"], "message");
    assert_eq!(body["content"], json!([{"type": "text", "text": "Hello from the fake"}]));
    assert_eq!(body["stop_reason"], "end_turn");
    assert_eq!(body["usage"]["input_tokens"], 11);
    let sent = &openai.received()[1].body;
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    );
    assert_eq!(sent["max_tokens"], 100);

    // OpenAI stream over Anthropic, text, with usage
    let response = chat(
        &helix,
        json!({"model": "anthropic/claude-haiku-4-5", "stream": true,
        "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await?;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"].to_str()?.starts_with("text/event-stream"));
    assert!(response.headers().contains_key("x-helix-router-overhead-us"));
    let stream = read_openai_stream(&sse(response).await?);
    assert_eq!(stream.text, "Hello from the fake");
    assert!(stream.done && stream.error.is_none(), "{stream:?}");
    assert_eq!(stream.finish.as_deref(), Some("stop"));
    assert_eq!(
        stream.usage.as_ref().map(|u| (u["prompt_tokens"].clone(), u["completion_tokens"].clone())),
        Some((json!(11), json!(4)))
    );

    // OpenAI stream of tool-call deltas over Anthropic's input_json_delta
    anthropic.script([Behaviour::ToolCall {
        id: "toolu_2".into(),
        name: WEATHER_TOOL.into(),
        arguments: WEATHER_ARGS.into(),
    }]);
    let response = chat(
        &helix,
        json!({"model": "anthropic/claude-haiku-4-5", "stream": true, "tools": tools(),
        "messages": [{"role": "user", "content": "Weather?"}]}),
    )
    .await?;
    let stream = read_openai_stream(&sse(response).await?);
    assert_eq!(stream.tools, vec![(WEATHER_TOOL.to_owned(), WEATHER_ARGS.to_owned())], "{stream:?}");
    assert_eq!(stream.finish.as_deref(), Some("tool_calls"));
    assert!(stream.done && stream.usage.is_none(), "usage only when asked for");

    // Anthropic stream over OpenAI, text then a tool call
    openai.script([Behaviour::ToolCall {
        id: "call_9".into(),
        name: WEATHER_TOOL.into(),
        arguments: WEATHER_ARGS.into(),
    }]);
    let response = helix
        .api(Method::POST, "/v1/messages")
        .json(&json!({"model": "openai/gpt-4o-mini", "max_tokens": 50, "stream": true, "tools": [
            {"name": WEATHER_TOOL, "input_schema": {"type": "object"}}],
            "messages": [{"role": "user", "content": "Weather?"}]}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let events = sse(response).await?;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(&names[names.len() - 2..], &["message_delta", "message_stop"], "{names:?}");
    let mut arguments = String::new();
    for event in &events {
        let data: Value = serde_json::from_str(&event.data)?;
        assert_eq!(data["type"], event.event.as_str(), "event name and type agree");
        if data["type"] == "content_block_start" {
            assert_eq!(data["content_block"]["type"], "tool_use");
            assert_eq!(data["content_block"]["id"], "call_9");
        }
        if data["delta"]["type"] == "input_json_delta" {
            arguments.push_str(data["delta"]["partial_json"].as_str().unwrap());
        }
        if data["type"] == "message_delta" {
            assert_eq!(data["delta"]["stop_reason"], "tool_use");
        }
    }
    assert_eq!(arguments, WEATHER_ARGS);

    let (status, models) = read(helix.api(Method::GET, "/v1/models").send().await?).await;
    assert_eq!(status, 200);
    assert_eq!(models["object"], "list");
    let ids: Vec<&str> = models["data"].as_array().unwrap().iter().filter_map(|m| m["id"].as_str()).collect();
    assert!(ids.contains(&"openai/gpt-4o-mini") && ids.contains(&"anthropic/claude-haiku-4-5"), "{ids:?}");

    // the spend of those calls is settled and shown
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, budget) = read(helix.api(Method::GET, "/api/budget").send().await?).await;
        assert_eq!(status, 200, "{budget}");
        assert_eq!((budget["daily_limit_usd"].as_f64(), budget["action"].as_str()), (Some(100.0), Some("downgrade")));
        if budget["history"][0]["requests"].as_u64() == Some(7) {
            assert!(budget["spent_today_usd"].as_f64().unwrap() > 0.0, "{budget}");
            let providers: Vec<&str> =
                budget["providers"].as_array().unwrap().iter().filter_map(|p| p["provider"].as_str()).collect();
            assert_eq!(providers, ["anthropic", "openai"]);
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "calls not settled: {budget}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    helix.stop().await;
    Ok(())
}

/// A native adapter and what its wire must receive for the same OpenAI-shaped calls:
/// (JSON pointer into the body the fake got, the value there) per call.
struct Native {
    wire: Wire,
    provider: &'static str,
    model: &'static str,
    /// none: the wire has no embeddings
    embedding_model: Option<&'static str>,
    /// a dimension the embedding model accepts (Titan's are 256, 512 or 1024)
    embedding_dim: u32,
    /// the route of a whole answer and of a stream
    paths: [&'static str; 2],
    /// prompt tokens of the fake's plain reply as the wire reports them
    prompt_tokens: u64,
    /// a system message, a user message and max_tokens 50
    plain: Vec<(&'static str, Value)>,
    /// the weather tool with tool_choice "required"
    tools: Vec<(&'static str, Value)>,
    /// the tool call answered (the call's id is `{id}`), JSON mode
    answered: Vec<(&'static str, Value)>,
}

fn natives() -> Vec<Native> {
    let paris = json!("Paris");
    vec![
        Native {
            wire: Wire::Gemini,
            provider: "google",
            model: "gemini-2.5-flash",
            embedding_model: Some("gemini-embedding-001"),
            embedding_dim: 4,
            paths: [
                "/v1beta/models/gemini-2.5-flash:generateContent",
                "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            ],
            prompt_tokens: 11,
            plain: vec![
                ("/systemInstruction", json!({"parts": [{"text": "Be brief."}]})),
                ("/contents", json!([{"role": "user", "parts": [{"text": "Hi"}]}])),
                ("/generationConfig/maxOutputTokens", json!(50)),
            ],
            tools: vec![
                ("/tools/0/functionDeclarations/0/name", json!(WEATHER_TOOL)),
                ("/tools/0/functionDeclarations/0/parameters/required", json!(["city"])),
                ("/toolConfig/functionCallingConfig/mode", json!("ANY")),
            ],
            answered: vec![
                ("/contents/1/role", json!("model")),
                ("/contents/1/parts/0/functionCall/args/city", paris.clone()),
                ("/contents/2/parts/0/functionResponse/name", json!(WEATHER_TOOL)),
                ("/contents/2/parts/0/functionResponse/response", json!({"output": "18 C"})),
                ("/generationConfig/responseMimeType", json!("application/json")),
            ],
        },
        Native {
            wire: Wire::Ollama,
            provider: "ollama",
            model: "llama3.2",
            embedding_model: Some("nomic-embed-text"),
            embedding_dim: 4,
            paths: ["/api/chat", "/api/chat"],
            prompt_tokens: 11,
            plain: vec![
                ("/messages/0", json!({"role": "system", "content": "Be brief."})),
                ("/options/num_predict", json!(50)),
                ("/stream", json!(false)),
            ],
            tools: vec![("/tools/0/function/name", json!(WEATHER_TOOL))],
            answered: vec![
                ("/messages/1/tool_calls/0/function/arguments/city", paris.clone()),
                ("/messages/2/role", json!("tool")),
                ("/messages/2/tool_name", json!(WEATHER_TOOL)),
                ("/format", json!("json")),
            ],
        },
        Native {
            wire: Wire::Cohere,
            provider: "cohere",
            model: "command-r-plus",
            embedding_model: Some("embed-v4.0"),
            embedding_dim: 4,
            paths: ["/v2/chat", "/v2/chat"],
            // the tokens the model saw (Cohere adds its preamble), not the billed units
            prompt_tokens: 71,
            plain: vec![
                ("/messages/0", json!({"role": "system", "content": "Be brief."})),
                ("/max_tokens", json!(50)),
                ("/model", json!("command-r-plus")),
            ],
            tools: vec![("/tools/0/function/name", json!(WEATHER_TOOL)), ("/tool_choice", json!("REQUIRED"))],
            answered: vec![
                ("/messages/1/tool_calls/0/function/arguments", json!(WEATHER_ARGS)),
                ("/messages/2/tool_call_id", json!("{id}")),
                ("/response_format", json!({"type": "json_object"})),
            ],
        },
        Native {
            wire: Wire::Bedrock,
            provider: "bedrock",
            model: "anthropic.claude-3-5-haiku-20241022-v1:0",
            // one InvokeModel call a text
            embedding_model: Some("amazon.titan-embed-text-v2:0"),
            embedding_dim: 256,
            paths: [
                "/model/anthropic.claude-3-5-haiku-20241022-v1:0/converse",
                "/model/anthropic.claude-3-5-haiku-20241022-v1:0/converse-stream",
            ],
            prompt_tokens: 11,
            plain: vec![
                ("/system", json!([{"text": "Be brief."}])),
                ("/messages", json!([{"role": "user", "content": [{"text": "Hi"}]}])),
                ("/inferenceConfig/maxTokens", json!(50)),
            ],
            tools: vec![
                ("/toolConfig/tools/0/toolSpec/name", json!(WEATHER_TOOL)),
                ("/toolConfig/tools/0/toolSpec/inputSchema/json/required", json!(["city"])),
                ("/toolConfig/toolChoice", json!({"any": {}})),
            ],
            answered: vec![
                ("/messages/1/content/0/toolUse/input/city", paris),
                ("/messages/2/content/0/toolResult/toolUseId", json!("{id}")),
                ("/messages/2/content/0/toolResult/content", json!([{"text": "18 C"}])),
                ("/system/0/text", json!("Answer with one JSON object only, no other text.")),
            ],
        },
    ]
}

/// Gemini, Ollama, Cohere and Bedrock behind the OpenAI door: the same calls as OpenAI clients
/// send them become each native wire's request, and its answers, streams (text and
/// tool calls), usage and embeddings come back in OpenAI's shape.
async fn native_adapters_translate_both_ways(backend: Backend) -> anyhow::Result<()> {
    let natives = natives();
    let mut fakes = Vec::new();
    for _ in &natives {
        fakes.push(FakeLlm::start().await?);
    }
    let helix = start(backend, |config| {
        for (native, fake) in natives.iter().zip(&fakes) {
            fake.serve_as(config, native.provider, native.wire);
        }
    })
    .await?;
    let check = |name: &str, sent: &Value, expected: &[(&str, Value)], id: &str| {
        for (pointer, value) in expected {
            let value = if *value == json!("{id}") { json!(id) } else { value.clone() };
            assert_eq!(sent.pointer(pointer), Some(&value), "{name} {pointer}: {sent}");
        }
    };
    for (native, fake) in natives.iter().zip(&fakes) {
        let name = native.provider;
        let model = format!("{}/{}", native.provider, native.model);

        // a whole answer
        let (status, body) = read(
            chat(
                &helix,
                json!({"model": model, "max_tokens": 50,
                "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}),
            )
            .await?,
        )
        .await;
        assert_eq!(status, 200, "{name}: {body}");
        assert_eq!(body["choices"][0]["message"]["content"], "Hello from the fake", "{name}");
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{name}");
        assert_eq!(
            (body["usage"]["prompt_tokens"].as_u64(), body["usage"]["completion_tokens"].as_u64()),
            (Some(native.prompt_tokens), Some(4)),
            "{name}: {body}"
        );
        let sent = fake.received().pop().unwrap();
        assert_eq!(
            (sent.path.as_str(), sent.key.as_deref()),
            (native.paths[0], Some(format!("sk-test-{name}").as_str()))
        );
        check(name, &sent.body, &native.plain, "");

        // a tool call, forced
        fake.script([Behaviour::ToolCall {
            id: "call_w1".into(),
            name: WEATHER_TOOL.into(),
            arguments: WEATHER_ARGS.into(),
        }]);
        let (status, body) = read(
            chat(
                &helix,
                json!({"model": model, "tools": tools(), "tool_choice": "required",
                "messages": [{"role": "user", "content": "Weather?"}]}),
            )
            .await?,
        )
        .await;
        assert_eq!(status, 200, "{name}: {body}");
        let call = &body["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["function"]["name"], WEATHER_TOOL, "{name}: {body}");
        let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap())?;
        assert_eq!(args, serde_json::from_str::<Value>(WEATHER_ARGS)?, "{name}");
        assert_eq!(body["choices"][0]["finish_reason"], "tool_calls", "{name}");
        let id = call["id"].as_str().filter(|id| !id.is_empty()).expect("a tool call id").to_owned();
        check(name, &fake.received().pop().unwrap().body, &native.tools, &id);

        // the tool's answer goes back, in JSON mode
        let (status, body) = read(
            chat(
                &helix,
                json!({"model": model, "response_format": {"type": "json_object"}, "messages": [
                {"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": id, "type": "function",
                    "function": {"name": WEATHER_TOOL, "arguments": WEATHER_ARGS}}]},
                {"role": "tool", "tool_call_id": id, "content": "18 C"}]}),
            )
            .await?,
        )
        .await;
        assert_eq!(status, 200, "{name}: {body}");
        check(name, &fake.received().pop().unwrap().body, &native.answered, &id);

        // a stream of text, with usage
        let response = chat(
            &helix,
            json!({"model": model, "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await?;
        assert_eq!(response.status(), 200, "{name}");
        let stream = read_openai_stream(&sse(response).await?);
        assert_eq!(stream.text, "Hello from the fake", "{name}: {stream:?}");
        assert!(stream.done && stream.error.is_none(), "{name}: {stream:?}");
        assert_eq!(stream.finish.as_deref(), Some("stop"), "{name}");
        assert_eq!(
            stream.usage.as_ref().map(|u| (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64())),
            Some((Some(native.prompt_tokens), Some(4))),
            "{name}: {stream:?}"
        );
        assert_eq!(fake.received().pop().unwrap().path, native.paths[1], "{name}");

        // a stream of tool-call deltas
        fake.script([Behaviour::ToolCall {
            id: "call_w2".into(),
            name: WEATHER_TOOL.into(),
            arguments: WEATHER_ARGS.into(),
        }]);
        let response = chat(
            &helix,
            json!({"model": model, "stream": true, "tools": tools(), "messages": [{"role": "user", "content": "Weather?"}]}),
        )
        .await?;
        let stream = read_openai_stream(&sse(response).await?);
        assert_eq!(stream.tools.len(), 1, "{name}: {stream:?}");
        assert_eq!(stream.tools[0].0, WEATHER_TOOL, "{name}");
        assert_eq!(serde_json::from_str::<Value>(&stream.tools[0].1)?, serde_json::from_str::<Value>(WEATHER_ARGS)?);
        assert_eq!(stream.finish.as_deref(), Some("tool_calls"), "{name}");
        assert!(stream.done && stream.error.is_none(), "{name}: {stream:?}");

        // embeddings on the provider's own route
        if let Some(embedding_model) = native.embedding_model {
            let texts = ["one", "two words"];
            let model = format!("{}/{embedding_model}", native.provider);
            let dim = native.embedding_dim;
            let (status, body) =
                read(embed(&helix, json!({"model": model, "input": texts, "dimensions": dim})).await?).await;
            assert_eq!(status, 200, "{name}: {body}");
            for (i, text) in texts.iter().enumerate() {
                let expected = fake_vector(text, dim as usize);
                assert!(close(&floats(&body["data"][i]["embedding"]), &expected), "{name} {text}: {body}");
            }
            if native.wire != Wire::Gemini {
                // Gemini's embeddings report no tokens; the others' fakes count a word each
                assert_eq!(body["usage"]["prompt_tokens"], 3, "{name}: {body}");
            }
            assert_eq!(fake.received().last().map(|r| r.wire), Some(native.wire));
        }

        // every call settled under its provider
        let calls = 5 + u64::from(native.embedding_model.is_some());
        let usage = settled(&helix, &format!("?provider={name}"), calls).await?;
        assert!(usage["records"].as_array().unwrap().iter().all(|r| r["outcome"] == "ok"), "{name}: {usage}");
    }
    helix.stop().await;
    Ok(())
}

/// What a cell of the fault matrix must end with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// 200 with the whole answer from the primary, after `n` requests to it
    Retried(usize),
    /// 200 with the whole answer from the backup
    FellBack,
    /// the stream started, then ended with an error event and no end marker
    VisibleError,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_matrix() -> anyhow::Result<()> {
    // every adapter: (its wire, the catalogue provider speaking it, a priced model there)
    let adapters = [
        (Wire::OpenAi, "openai", "gpt-4o-mini"),
        (Wire::Anthropic, "anthropic", "claude-haiku-4-5"),
        (Wire::Gemini, "google", "gemini-2.5-flash"),
        (Wire::Ollama, "ollama", "llama3.2"),
        (Wire::Cohere, "cohere", "command-r-plus"),
        (Wire::Bedrock, "bedrock", "anthropic.claude-3-5-haiku-20241022-v1:0"),
    ];
    let mut primaries = Vec::new();
    for _ in adapters {
        primaries.push(FakeLlm::start().await?);
    }
    let backup = FakeLlm::start().await?;
    backup.set_default(Behaviour::reply("Backup answer here"));
    let helix = start(Backend::Embedded, |config| {
        config.llm.attempt_timeout_ms = 500;
        // the breaker must not open during the matrix
        config.llm.breaker_failures = 1000;
        for ((wire, provider, model), fake) in adapters.iter().zip(&primaries) {
            fake.serve_as(config, provider, *wire);
            let chain = alias(&[&format!("{provider}/{model}"), "mistral/mistral-small-latest"]);
            config.llm.aliases.insert(format!("chain-{provider}"), chain);
        }
        backup.serve_as(config, "mistral", Wire::OpenAi);
    })
    .await?;
    let reply = || Behaviour::reply("Primary answer here");
    let always = |b: Behaviour| vec![b.clone(), b.clone(), b];
    // (name, script of the primary, expected without and with streaming)
    let cells: Vec<(&str, Vec<Behaviour>, Expect, Expect)> = vec![
        ("500 always", always(Behaviour::status(500)), Expect::FellBack, Expect::FellBack),
        ("500 once", vec![Behaviour::status(500), reply()], Expect::Retried(2), Expect::Retried(2)),
        ("529 once", vec![Behaviour::status(529), reply()], Expect::Retried(2), Expect::Retried(2)),
        (
            "429 with Retry-After",
            vec![Behaviour::Status { code: 429, retry_after: Some(1) }, reply()],
            Expect::Retried(2),
            Expect::Retried(2),
        ),
        (
            "slow first byte",
            vec![Behaviour::Slow { delay: Duration::from_millis(1500), then: Box::new(reply()) }, reply()],
            Expect::Retried(2),
            Expect::Retried(2),
        ),
        (
            "error after the first chunk",
            vec![Behaviour::ErrorAfterFirstChunk, reply()],
            Expect::Retried(2),
            Expect::VisibleError,
        ),
        ("stream cut without end marker", vec![Behaviour::CutMidway], Expect::FellBack, Expect::VisibleError),
        ("malformed JSON", vec![Behaviour::MalformedJson], Expect::FellBack, Expect::FellBack),
        ("400 is the caller's", vec![Behaviour::status(400)], Expect::Retried(0), Expect::Retried(0)),
    ];
    for ((wire, provider, _), primary) in adapters.iter().zip(&primaries) {
        let model = format!("chain-{provider}");
        for (name, script, whole, streamed) in &cells {
            for (stream, expect) in [(false, *whole), (true, *streamed)] {
                let cell = format!("{wire:?} {name} stream={stream}");
                primary.script(script.clone());
                let (before, backup_before) = (primary.count(), backup.count());
                let started = Instant::now();
                let response = chat(
                    &helix,
                    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": "Hi"}]}),
                )
                .await?;
                let status = response.status().as_u16();
                let (text, complete, error) = if stream && status == 200 {
                    let s = read_openai_stream(&sse(response).await?);
                    (s.text, s.done, s.error)
                } else {
                    let (_, body) = read(response).await;
                    let complete = status == 200;
                    let text = body["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned();
                    (text, complete, (!complete).then_some(body))
                };
                let (to_primary, to_backup) = (primary.count() - before, backup.count() - backup_before);
                match expect {
                    Expect::Retried(0) => {
                        assert_eq!(status, 400, "{cell}: {error:?}");
                        assert_eq!(error.unwrap()["error"]["code"], "provider_rejected_request", "{cell}");
                        assert_eq!((to_primary, to_backup), (1, 0), "{cell}: no retry, no fallback");
                    }
                    Expect::Retried(n) => {
                        assert_eq!(
                            (status, text.as_str(), complete),
                            (200, "Primary answer here", true),
                            "{cell}: {error:?}"
                        );
                        assert_eq!((to_primary, to_backup), (n, 0), "{cell}");
                    }
                    Expect::FellBack => {
                        assert_eq!(
                            (status, text.as_str(), complete),
                            (200, "Backup answer here", true),
                            "{cell}: {error:?}"
                        );
                        assert_eq!(to_backup, 1, "{cell}");
                    }
                    Expect::VisibleError => {
                        assert_eq!(status, 200, "{cell}");
                        assert_eq!(text, "Partial", "{cell}: what came before the failure reached the client");
                        assert!(!complete, "{cell}: a cut stream must not end with [DONE]");
                        let error = error.unwrap_or_else(|| panic!("{cell}: no error event"));
                        assert_eq!(error["error"]["code"], "stream_interrupted", "{cell}");
                        assert_eq!(to_backup, 0, "{cell}: after the first token there is no fallback");
                    }
                }
                if *name == "429 with Retry-After" {
                    assert!(started.elapsed() >= Duration::from_secs(1), "{cell}: Retry-After honoured");
                }
                // what a cell left unused must not leak into the next one
                primary.clear_script();
            }
        }
    }
    helix.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_skips_a_failing_provider() -> anyhow::Result<()> {
    let primary = FakeLlm::start().await?;
    let backup = FakeLlm::start().await?;
    primary.set_default(Behaviour::status(503));
    let helix = start(Backend::Embedded, |config| {
        config.llm.max_retries = 0;
        config.llm.breaker_failures = 2;
        config.llm.breaker_cooldown_ms = 600;
        primary.serve_as(config, "openai", Wire::OpenAi);
        backup.serve_as(config, "mistral", Wire::OpenAi);
        config.llm.aliases.insert("chain".into(), alias(&["openai/gpt-4o-mini", "mistral/mistral-small-latest"]));
    })
    .await?;
    let call = || chat(&helix, json!({"model": "chain", "messages": [{"role": "user", "content": "Hi"}]}));
    for _ in 0..4 {
        let (status, body) = read(call().await?).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!((primary.count(), backup.count()), (2, 4), "open after two failures: calls go straight to the backup");
    tokio::time::sleep(Duration::from_millis(700)).await;
    primary.set_default(Behaviour::reply("Recovered"));
    let (_, body) = read(call().await?).await;
    assert_eq!(body["choices"][0]["message"]["content"], "Recovered", "after the cooldown one probe goes through");
    let (_, body) = read(call().await?).await;
    assert_eq!(body["choices"][0]["message"]["content"], "Recovered", "and its success closes the circuit");
    assert_eq!(primary.count(), 4);
    helix.stop().await;
    Ok(())
}

async fn budget_reject_calls_no_provider(backend: Backend) -> anyhow::Result<()> {
    let fake = FakeLlm::start().await?;
    let helix = start(backend, |config| {
        config.llm.daily_budget_usd = 0.0;
        config.llm.budget_action = "reject".into();
        fake.serve_as(config, "openai", Wire::OpenAi);
    })
    .await?;
    for stream in [false, true] {
        let (status, body) = read(
            chat(
                &helix,
                json!({"model": "openai/gpt-4o-mini", "stream": stream,
                "messages": [{"role": "user", "content": "Hi"}]}),
            )
            .await?,
        )
        .await;
        assert_eq!(status, 402, "{body}");
        assert_eq!(body["error"]["code"], "budget_exceeded");
        assert_eq!(body["error"]["type"], "insufficient_quota");
        assert!(body["error"]["message"].as_str().unwrap().contains("budget"), "{body}");
    }
    let (status, body) = read(
        helix
            .api(Method::POST, "/v1/messages")
            .json(&json!({"model": "openai/gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!((body["type"].as_str(), body["error"]["code"].as_str()), (Some("error"), Some("budget_exceeded")));
    let (status, body) = read(
        helix
            .api(Method::POST, "/api/generate")
            .json(&json!({"prompt": "Hi", "model": "openai/gpt-4o-mini"}))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(body["error"]["code"], "budget_exceeded");
    assert_eq!(fake.count(), 0, "the provider saw no request");
    helix.stop().await;
    Ok(())
}

/// 50 calls at once against a cap that holds a few: reject mode never overspends and
/// refused calls reach no provider; downgrade mode moves calls to cheaper models.
async fn budget_holds_under_50_concurrent_calls(backend: Backend) -> anyhow::Result<()> {
    for action in ["reject", "downgrade"] {
        let fake = FakeLlm::start().await?;
        // slow answers keep reservations overlapping
        fake.set_default(Behaviour::Slow {
            delay: Duration::from_millis(150),
            then: Box::new(Behaviour::reply("ok then")),
        });
        // gpt-4o with max_tokens 1000 reserves ~0.01 USD: three fit under 0.03 at once
        let cap = 0.03;
        let helix = start(backend, |config| {
            config.llm.daily_budget_usd = cap;
            config.llm.budget_action = action.into();
            fake.serve_as(config, "openai", Wire::OpenAi);
        })
        .await?;
        let calls = (0..50).map(|_| {
            let request = chat(
                &helix,
                json!({"model": "openai/gpt-4o", "max_tokens": 1000,
                "messages": [{"role": "user", "content": "Hi"}]}),
            );
            async move {
                let response = request.await?;
                let model = response.headers().get("x-helix-model").map(|v| v.to_str().unwrap_or_default().to_owned());
                let (status, body) = read(response).await;
                anyhow::Ok((status, model, body))
            }
        });
        let results = futures::future::try_join_all(calls).await?;
        let ok: Vec<_> = results.iter().filter(|(s, _, _)| *s == 200).collect();
        let refused = results.iter().filter(|(s, _, _)| *s == 402).count();
        assert_eq!(ok.len() + refused, 50, "{action}: only answers and refusals: {results:?}");
        assert!(!ok.is_empty(), "{action}: nothing answered");
        if action == "reject" {
            // two reservations fit at once and each call takes 150 ms: most of 50 cannot
            assert!(refused > 0, "{action}: {} answered, none refused", ok.len());
        }
        assert_eq!(fake.count(), ok.len(), "{action}: refused calls reached no provider");
        let downgraded = ok.iter().filter(|(_, model, _)| model.as_deref() != Some("gpt-4o")).count();
        match action {
            "reject" => assert_eq!(downgraded, 0),
            _ => assert!(downgraded > 0, "downgrade moves calls to cheaper models"),
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let budget = loop {
            let (_, budget) = read(helix.api(Method::GET, "/api/budget").send().await?).await;
            if budget["history"][0]["requests"].as_u64() == Some(ok.len() as u64) {
                break budget;
            }
            anyhow::ensure!(Instant::now() < deadline, "calls not settled: {budget}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let spent = budget["spent_today_usd"].as_f64().unwrap();
        assert!(spent > 0.0 && spent <= cap, "{action}: spent {spent} of {cap}");
        helix.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_llm_input_is_a_clear_4xx() -> anyhow::Result<()> {
    let fake = FakeLlm::start().await?;
    let helix = start(Backend::Embedded, |config| fake.serve_as(config, "openai", Wire::OpenAi)).await?;
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"model": "openai/gpt-4o-mini"}), 422, "invalid_body"),
        (json!({"model": "openai/gpt-4o-mini", "messages": []}), 400, "empty_messages"),
        (json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "wizard", "content": "x"}]}), 400, "invalid_role"),
        (
            json!({"model": "openai/not-a-priced-model", "messages": [{"role": "user", "content": "x"}]}),
            400,
            "unpriced_model",
        ),
        (
            json!({"model": "openai/gpt-4o-mini", "temperature": 7, "messages": [{"role": "user", "content": "x"}]}),
            400,
            "invalid_temperature",
        ),
        (
            json!({"model": "openai/gpt-4o-mini", "tools": [{"type": "function"}], "messages": [{"role": "user", "content": "x"}]}),
            400,
            "invalid_tools",
        ),
    ];
    for (body, status, code) in cases {
        let (got, answer) = read(chat(&helix, body.clone()).await?).await;
        assert_eq!((got, answer["error"]["code"].as_str()), (status, Some(code)), "{body}: {answer}");
        assert!(answer["error"]["message"].is_string() && answer["error"]["type"].is_string(), "{answer}");
    }
    let (status, answer) = read(
        helix
            .api(Method::POST, "/v1/chat/completions")
            .header("content-type", "application/json")
            .body("{nope")
            .send()
            .await?,
    )
    .await;
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("malformed_json")));
    let (status, _) = read(helix.http.post(helix.url("/v1/chat/completions")).json(&json!({})).send().await?).await;
    assert_eq!(status, 401);
    let (status, answer) = read(
        helix
            .api(Method::POST, "/v1/messages")
            .json(&json!({"model": "openai/gpt-4o-mini", "messages": []}))
            .send()
            .await?,
    )
    .await;
    assert_eq!((status, answer["type"].as_str()), (422, Some("error")), "{answer}");
    assert_eq!(fake.count(), 0, "nothing bad reached the provider");
    helix.stop().await;
    Ok(())
}

/// The official OpenAI and Anthropic Python clients work unchanged against the gateway
/// (`clients/sdk_check.py`; `make venv` installs them into `.venv`, or set
/// `HELIX_TEST_PYTHON` to a Python that has them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_python_clients_work_unchanged() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("HELIX_TEST_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("../.venv/bin/python"));
    anyhow::ensure!(python.exists(), "{} is missing: run `make venv`", python.display());
    let openai = FakeLlm::start().await?;
    let anthropic = FakeLlm::start().await?;
    anthropic.set_default(Behaviour::ToolCall {
        id: "toolu_1".into(),
        name: WEATHER_TOOL.into(),
        arguments: WEATHER_ARGS.into(),
    });
    let broken = FakeLlm::start().await?;
    broken.set_default(Behaviour::ErrorAfterFirstChunk);
    let helix = start(Backend::Embedded, |config| {
        openai.serve_as(config, "openai", Wire::OpenAi);
        anthropic.serve_as(config, "anthropic", Wire::Anthropic);
        broken.serve_as(config, "mistral", Wire::OpenAi);
    })
    .await?;
    let output = tokio::process::Command::new(&python)
        .arg(root.join("tests/e2e/clients/sdk_check.py"))
        .env("HELIX_URL", &helix.base_url)
        .env("HELIX_KEY", &helix.env.admin_key)
        .output()
        .await?;
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && stdout.trim() == "ok", "sdk_check.py failed:\n{stdout}\n{stderr}");
    helix.stop().await;
    Ok(())
}

/// `hx chat` as a user drives it: questions on stdin, answers streamed to stdout, the
/// history sent along, `/model` switching mid-conversation; and the one-shot form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hx_chat_streams_keeps_history_and_switches_model() -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let openai = FakeLlm::start().await?;
    let anthropic = FakeLlm::start().await?;
    anthropic.set_default(Behaviour::reply("Claude here"));
    let helix = start(Backend::Embedded, |config| {
        openai.serve_as(config, "openai", Wire::OpenAi);
        anthropic.serve_as(config, "anthropic", Wire::Anthropic);
    })
    .await?;
    let hx = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_hx"));
        command
            .arg("chat")
            .args(args)
            .args(["--server", &helix.base_url, "--api-key", &helix.env.admin_key])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        command
    };
    let mut child = hx(&["-m", "openai/gpt-4o-mini"]).spawn()?;
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"Hi\n/model anthropic/claude-haiku-4-5\nAnd you?\n/exit\n").await?;
    drop(stdin);
    let output = child.wait_with_output().await?;
    let stdout = String::from_utf8(output.stdout)?;
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout, "Hello from the fake\nmodel: anthropic/claude-haiku-4-5\nClaude here\n");
    let sent = &anthropic.received()[0].body["messages"];
    assert_eq!(
        sent,
        &json!([{"role": "user", "content": [{"type": "text", "text": "Hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello from the fake"}]},
            {"role": "user", "content": [{"type": "text", "text": "And you?"}]}]),
        "the conversation so far goes with the question"
    );

    let output = hx(&["-m", "openai/gpt-4o-mini", "One", "shot"]).output().await?;
    assert_eq!(String::from_utf8(output.stdout)?, "Hello from the fake\n");
    assert_eq!(openai.received()[1].body["messages"], json!([{"role": "user", "content": "One shot"}]));
    let output = hx(&["-m", "openai/unpriced-model", "Hi"]).output().await?;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unpriced_model"), "{output:?}");
    helix.stop().await;
    Ok(())
}

async fn embed(helix: &TestHelix, body: Value) -> anyhow::Result<reqwest::Response> {
    Ok(helix.api(Method::POST, "/v1/embeddings").json(&body).send().await?)
}

/// Waits until the usage records hold `n` calls (settling happens after the answer).
async fn settled(helix: &TestHelix, query: &str, n: u64) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = read(helix.api(Method::GET, &format!("/api/v1/llm/usage{query}")).send().await?).await;
        anyhow::ensure!(status == 200, "usage: {status} {body}");
        if body["requests"].as_u64() == Some(n) {
            return Ok(body);
        }
        anyhow::ensure!(Instant::now() < deadline, "{n} calls not settled: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn floats(value: &Value) -> Vec<f32> {
    value.as_array().expect("an array of floats").iter().map(|v| v.as_f64().unwrap() as f32).collect()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-6)
}

/// `/v1/embeddings` in OpenAI's wire format both ways (string or array input, float or
/// base64 out, dimensions, usage), its 4xx, the provider's errors, and one budget with
/// chat: a budget spent through chat refuses embeddings without calling the provider.
async fn embeddings_wire_errors_and_the_shared_budget(backend: Backend) -> anyhow::Result<()> {
    let fake = FakeLlm::start().await?;
    let helix = start(backend, |config| {
        config.llm.daily_budget_usd = 0.001;
        config.llm.budget_action = "reject".into();
        config.llm.max_retries = 0;
        fake.serve_as(config, "openai", Wire::OpenAi);
    })
    .await?;

    let response =
        embed(&helix, json!({"model": "openai/text-embedding-3-small", "input": "hello embedded world"})).await?;
    assert!(response.headers().contains_key("x-helix-router-overhead-us"), "{:?}", response.headers());
    let (status, body) = read(response).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["object"].as_str(), body["model"].as_str()),
        (Some("list"), Some("openai/text-embedding-3-small"))
    );
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!((body["data"][0]["object"].as_str(), body["data"][0]["index"].as_u64()), (Some("embedding"), Some(0)));
    let vector = floats(&body["data"][0]["embedding"]);
    assert!(close(&vector, &fake_vector("hello embedded world", FAKE_EMBEDDING_DIM)), "{vector:?}");
    assert_eq!(body["usage"], json!({"prompt_tokens": 3, "total_tokens": 3}));
    let sent = fake.received().pop().unwrap();
    assert_eq!(sent.path, "/v1/embeddings");
    assert_eq!(sent.key.as_deref(), Some("sk-test-openai"));
    assert_eq!(sent.body["input"], json!(["hello embedded world"]));

    // an array, base64, dimensions, and the configured model when none is named
    let texts = ["one", "two words", "three more words"];
    let (status, body) =
        read(embed(&helix, json!({"input": texts, "encoding_format": "base64", "dimensions": 4})).await?).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["model"], "openai/text-embedding-3-small");
    for (i, text) in texts.iter().enumerate() {
        let item = &body["data"][i];
        assert_eq!(item["index"].as_u64(), Some(i as u64));
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, item["embedding"].as_str().unwrap())?;
        let vector: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        assert!(close(&vector, &fake_vector(text, 4)), "{text}: {vector:?}");
    }
    assert_eq!(body["usage"]["prompt_tokens"], 6);
    let sent = fake.received().pop().unwrap();
    assert_eq!((sent.body["dimensions"].as_u64(), sent.body["encoding_format"].as_str()), (Some(4), Some("float")));

    // bad input is a 400 in OpenAI's shape, and reaches no provider
    let before = fake.count();
    for (input, code) in [
        (json!({"input": 42}), "invalid_input"),
        (json!({"input": [[1, 2, 3]]}), "unsupported_input"),
        (json!({"input": ["fine", 7]}), "invalid_input"),
        (json!({"input": "x", "encoding_format": "int8"}), "invalid_encoding_format"),
        (json!({"input": ""}), "empty_input"),
        (json!({"input": []}), "empty_input"),
        (json!({"input": "x", "dimensions": 0}), "invalid_dimensions"),
    ] {
        let (status, body) = read(embed(&helix, input.clone()).await?).await;
        assert_eq!((status, body["error"]["code"].as_str()), (400, Some(code)), "{input}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
    }
    let (status, body) = read(embed(&helix, json!({"model": "openai/text-embedding-3-small"})).await?).await;
    assert_eq!((status, body["error"]["code"].as_str()), (422, Some("invalid_body")), "{body}");
    assert_eq!(fake.count(), before, "refused before any provider");

    // the provider's own errors: a 400 is the caller's, a 404 (a chat model) is no answer
    fake.script([Behaviour::status(400)]);
    let (status, body) = read(embed(&helix, json!({"input": "x"})).await?).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("provider_rejected_request")), "{body}");
    let (status, body) = read(embed(&helix, json!({"model": "openai/gpt-4o-mini", "input": "x"})).await?).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("no_provider_available")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("does not exist"), "{body}");

    // the embeddings are in the usage records, as kind embed
    let usage = settled(&helix, "?model=text-embedding-3-small", 2).await?;
    assert!(
        usage["records"].as_array().unwrap().iter().all(|r| r["kind"] == "embed" && r["outcome"] == "ok"),
        "{usage}"
    );
    assert_eq!(usage["total"]["prompt_tokens"], 9);

    // a chat answer dearer than the cap spends it (its reservation fitted) ...
    fake.script([Behaviour::Reply { text: "long".into(), prompt_tokens: 11, completion_tokens: 5000 }]);
    let (status, body) = read(
        chat(
            &helix,
            json!({"model": "openai/gpt-4o-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await?,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    settled(&helix, "?model=gpt-4o-mini", 1).await?;
    // ... and then embeddings are refused too, without a call
    let before = fake.count();
    let (status, body) = read(embed(&helix, json!({"input": "after the budget"})).await?).await;
    assert_eq!(status, 402, "{body}");
    assert_eq!(
        (body["error"]["code"].as_str(), body["error"]["type"].as_str()),
        (Some("budget_exceeded"), Some("insufficient_quota"))
    );
    assert_eq!(fake.count(), before, "the provider saw no embeddings request");
    helix.stop().await;
    Ok(())
}

async fn rate_limits(helix: &TestHelix, provider: &str) -> anyhow::Result<Value> {
    let (status, body) = read(helix.api(Method::GET, "/api/v1/rate-limits").send().await?).await;
    anyhow::ensure!(status == 200, "{body}");
    let found = body["providers"].as_array().unwrap().iter().find(|p| p["provider"] == provider).cloned();
    found.ok_or_else(|| anyhow::anyhow!("no {provider} in {body}"))
}

/// A provider's request limit is enforced before the call: with 2 per minute the third
/// call is a 429 with Retry-After and the provider saw two; the limit is changed at run
/// time and kept across a restart; the configuration gives the defaults.
async fn rate_limits_refuse_before_the_provider(backend: Backend) -> anyhow::Result<()> {
    let fake = FakeLlm::start().await?;
    let mut helix = start(backend, |config| {
        fake.serve_as(config, "openai", Wire::OpenAi);
        config.llm.providers.get_mut("openai").unwrap().requests_per_hour = Some(100);
    })
    .await?;
    let openai = rate_limits(&helix, "openai").await?;
    assert_eq!(
        (openai["requests_per_minute"].as_u64(), openai["requests_per_hour"].as_u64(), openai["source"].as_str()),
        (Some(0), Some(100), Some("config")),
        "{openai}"
    );
    assert_eq!(rate_limits(&helix, "mistral").await?["requests_available"], Value::Null, "no limit");

    let (status, body) = read(
        helix
            .api(Method::PUT, "/api/v1/rate-limits")
            .json(&json!({"provider": "openai", "requests_per_minute": 2}))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let openai = rate_limits(&helix, "openai").await?;
    assert_eq!(
        (openai["requests_per_minute"].as_u64(), openai["source"].as_str(), openai["requests_available"].as_u64()),
        (Some(2), Some("api"), Some(2)),
        "{openai}"
    );
    let ask = || chat(&helix, json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}));
    for _ in 0..2 {
        let (status, body) = read(ask().await?).await;
        assert_eq!(status, 200, "{body}");
    }
    let response = ask().await?;
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
    let (status, body) = read(response).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        (body["error"]["code"].as_str(), body["error"]["type"].as_str()),
        (Some("rate_limited"), Some("rate_limit_error"))
    );
    assert!(retry_after.is_some_and(|s| (1..=30).contains(&s)), "Retry-After {retry_after:?}");
    // one bucket per provider, whatever the endpoint
    let (status, body) = read(embed(&helix, json!({"input": "x"})).await?).await;
    assert_eq!((status, body["error"]["code"].as_str()), (429, Some("rate_limited")), "{body}");
    assert_eq!(fake.count(), 2, "the provider saw two calls");

    for (input, expected) in [
        (json!({"provider": "nobody", "requests_per_minute": 1}), (404, "not_found")),
        (json!({"provider": "openai", "per_minute": 1}), (422, "unknown_field")),
        (json!({"provider": "openai", "burst": 5}), (400, "invalid_rate_limit")),
    ] {
        let (status, body) = read(helix.api(Method::PUT, "/api/v1/rate-limits").json(&input).send().await?).await;
        assert_eq!((status, crate::support::code(&body)), expected, "{input}: {body}");
    }

    // kept in the router's database: a restart keeps the limit set through the API
    helix.restart().await?;
    let openai = rate_limits(&helix, "openai").await?;
    assert_eq!((openai["requests_per_minute"].as_u64(), openai["source"].as_str()), (Some(2), Some("api")), "{openai}");
    helix.stop().await;
    Ok(())
}

/// The usage records answer by key, provider, model and day; the dashboard, trends,
/// provider performance and token usage are sums over them.
async fn analytics_from_the_usage_records(backend: Backend) -> anyhow::Result<()> {
    let fake = FakeLlm::start().await?;
    let helix = start(backend, |config| {
        fake.serve_as(config, "openai", Wire::OpenAi);
        fake.serve_as(config, "anthropic", Wire::Anthropic);
    })
    .await?;
    let user = json!([{"role": "user", "content": "Hi"}]);
    for _ in 0..3 {
        let (status, body) = read(chat(&helix, json!({"model": "openai/gpt-4o-mini", "messages": user})).await?).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) =
        read(chat(&helix, json!({"model": "anthropic/claude-3-5-haiku-latest", "messages": user})).await?).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = read(embed(&helix, json!({"input": "a b c d"})).await?).await;
    assert_eq!(status, 200, "{body}");
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let all = settled(&helix, &format!("?day={today}"), 5).await?;
    // "Hello from the fake": 11 prompt and 4 completion tokens a chat; 4 for the embedding
    assert_eq!(
        (all["total"]["prompt_tokens"].as_u64(), all["total"]["completion_tokens"].as_u64()),
        (Some(48), Some(16)),
        "{all}"
    );
    let usage = |q: &str| {
        let url = format!("/api/v1/llm/usage{q}");
        let request = helix.api(Method::GET, &url);
        async move { read(request.send().await.unwrap()).await }
    };
    let (_, mini) = usage("?provider=openai&model=gpt-4o-mini").await;
    assert_eq!(mini["requests"], 3, "{mini}");
    assert!(mini["records"].as_array().unwrap().iter().all(|r| r["api_key_id"] == "admin" && r["kind"] == "chat"));
    assert_eq!(usage("?key=admin").await.1["requests"], 5);
    assert_eq!(usage("?key=nobody").await.1["requests"], 0);
    assert_eq!(usage("?day=2001-01-01").await.1["requests"], 0);
    assert_eq!(usage("?limit=2").await.1["records"].as_array().unwrap().len(), 2);
    let (status, body) = usage("?day=yesterday").await;
    assert_eq!((status, crate::support::code(&body)), (400, "invalid_day"), "{body}");

    let get = |path: &str| {
        let request = helix.api(Method::GET, path);
        async move { read(request.send().await.unwrap()).await }
    };
    let (status, dashboard) = get("/api/analytics/dashboard").await;
    assert_eq!(status, 200, "{dashboard}");
    assert_eq!((dashboard["requests"].as_u64(), dashboard["errors"].as_u64()), (Some(5), Some(0)), "{dashboard}");
    assert_eq!(dashboard["usage"]["total_tokens"], 64);
    assert!(dashboard["usage"]["cost_usd"].as_f64().unwrap() > 0.0);
    assert_eq!(
        (dashboard["top_models"][0]["model"].as_str(), dashboard["top_models"][0]["requests"].as_u64()),
        (Some("gpt-4o-mini"), Some(3))
    );
    assert!(dashboard["budget"]["daily_limit_usd"].is_number());

    let (status, trends) = get("/api/analytics/trends?granularity=hour").await;
    assert_eq!(status, 200, "{trends}");
    let buckets = trends["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 7 * 24, "every hour of the week, empty ones too");
    assert_eq!(buckets.iter().map(|b| b["requests"].as_u64().unwrap()).sum::<u64>(), 5);
    assert_eq!(buckets.last().unwrap()["usage"]["total_tokens"], 64, "{trends}");
    let (_, openai_days) = get("/api/analytics/trends?provider=anthropic").await;
    assert_eq!(openai_days["buckets"].as_array().unwrap().len(), 7);
    assert_eq!(openai_days["buckets"][6]["requests"], 1, "{openai_days}");
    let (status, body) = get("/api/analytics/trends?granularity=minute").await;
    assert_eq!((status, crate::support::code(&body)), (400, "invalid_granularity"));

    let (status, providers) = get("/api/analytics/providers").await;
    assert_eq!(status, 200, "{providers}");
    let by_name = |name: &str| {
        providers["providers"].as_array().unwrap().iter().find(|p| p["provider"] == name).cloned().unwrap()
    };
    assert_eq!(
        (by_name("openai")["requests"].as_u64(), by_name("openai")["success_rate"].as_f64()),
        (Some(4), Some(1.0))
    );
    assert_eq!(by_name("anthropic")["usage"]["total_tokens"], 15);
    assert!(by_name("openai")["last_used_at"].is_string());

    let (status, tokens) = get("/api/analytics/token-usage?group_by=provider").await;
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(
        (tokens["rows"][0]["key"].as_str(), tokens["rows"][0]["usage"]["total_tokens"].as_u64()),
        (Some("openai"), Some(49))
    );
    let shares: f64 = tokens["rows"].as_array().unwrap().iter().map(|r| r["share"].as_f64().unwrap()).sum();
    assert!((shares - 1.0).abs() < 1e-9, "{tokens}");
    let (_, page) = get("/api/analytics/token-usage?group_by=model&limit=1").await;
    assert_eq!(page["rows"].as_array().unwrap().len(), 1);
    let (_, rest) = get(&format!(
        "/api/analytics/token-usage?group_by=model&limit=5&cursor={}",
        page["next_cursor"].as_str().unwrap()
    ))
    .await;
    assert_eq!(rest["rows"].as_array().unwrap().len(), 2, "{rest}");
    for (path, code) in [
        ("/api/analytics/token-usage?group_by=colour", "invalid_group_by"),
        ("/api/analytics/dashboard?start=yesterday", "invalid_time"),
        ("/api/analytics/providers?start=2030-01-02T00:00:00Z&end=2030-01-01T00:00:00Z", "invalid_range"),
    ] {
        let (status, body) = get(path).await;
        assert_eq!((status, crate::support::code(&body)), (400, code), "{path}: {body}");
    }
    helix.stop().await;
    Ok(())
}

/// Two API keys: one at its own daily cap is refused on chat, messages, generate and
/// embeddings (no provider call), while the other and the global budget go on.
async fn per_key_budgets_hold_on_every_endpoint(backend: Backend) -> anyhow::Result<()> {
    let fake = FakeLlm::start().await?;
    let mut helix = start(backend, |config| {
        config.llm.budget_action = "reject".into();
        config.llm.key_budgets.insert("bob".into(), 50.0);
        fake.serve_as(config, "openai", Wire::OpenAi);
    })
    .await?;
    let alice = helix.create_api_key("alice").await?;
    let bob = helix.create_api_key("bob").await?;
    let (status, body) = read(
        helix
            .api(Method::PUT, "/api/v1/llm/budget")
            .json(&json!({"keys": [{"api_key_id": "alice", "daily_limit_usd": 0.001}]}))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let keys: Vec<(String, f64)> = body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["api_key_id"].as_str().unwrap().to_owned(), k["daily_limit_usd"].as_f64().unwrap()))
        .collect();
    assert_eq!(keys, [("alice".to_owned(), 0.001), ("bob".to_owned(), 50.0)]);

    let as_key =
        |key: &str, path: &str, body: Value| helix.http.post(helix.url(path)).bearer_auth(key).json(&body).send();
    let hi = json!({"model": "openai/gpt-4o-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "Hi"}]});
    // alice's first answer costs more than her cap (its reservation fitted)
    fake.script([Behaviour::Reply { text: "long".into(), prompt_tokens: 11, completion_tokens: 5000 }]);
    let (status, body) = read(as_key(&alice, "/v1/chat/completions", hi.clone()).await?).await;
    assert_eq!(status, 200, "{body}");
    settled(&helix, "?key=alice", 1).await?;

    let before = fake.count();
    let refused = [
        ("/v1/chat/completions", hi.clone()),
        (
            "/v1/messages",
            json!({"model": "openai/gpt-4o-mini", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}),
        ),
        ("/api/generate", json!({"prompt": "Hi", "model": "openai/gpt-4o-mini", "max_tokens": 10})),
        ("/v1/embeddings", json!({"input": "Hi"})),
    ];
    for (path, input) in refused {
        let (status, body) = read(as_key(&alice, path, input).await?).await;
        assert_eq!(status, 402, "{path}: {body}");
        assert_eq!(body["error"]["code"], "budget_exceeded", "{path}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("API key"), "{path}: {body}");
    }
    assert_eq!(fake.count(), before, "no provider call for a key over its cap");
    // the refusals are in alice's usage records, by kind, and on the dashboard
    let records = settled(&helix, "?key=alice", 5).await?;
    let mut refused: Vec<(String, String)> = records["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["outcome"] == "budget")
        .map(|r| (r["kind"].as_str().unwrap().to_owned(), r["usage"]["cost_usd"].to_string()))
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        [("chat", "0.0"), ("chat", "0.0"), ("chat", "0.0"), ("embed", "0.0")]
            .map(|(k, c)| (k.to_owned(), c.to_owned()))
    );
    let (_, dashboard) = read(helix.api(Method::GET, "/api/analytics/dashboard").send().await?).await;
    assert_eq!(
        (dashboard["budget_rejections"].as_u64(), dashboard["errors"].as_u64()),
        (Some(4), Some(0)),
        "{dashboard}"
    );

    // bob and the admin key are not held back by alice's cap
    for key in [&bob, &helix.env.admin_key] {
        let (status, body) = read(as_key(key, "/v1/chat/completions", hi.clone()).await?).await;
        assert_eq!(status, 200, "{body}");
    }
    settled(&helix, "?key=bob", 1).await?;
    let (_, budget) = read(helix.api(Method::GET, "/api/v1/llm/budget").send().await?).await;
    let key = |id: &str| budget["keys"].as_array().unwrap().iter().find(|k| k["api_key_id"] == id).cloned().unwrap();
    assert_eq!(
        (key("alice")["exceeded"].as_bool(), key("alice")["requests_today"].as_u64()),
        (Some(true), Some(1)),
        "{budget}"
    );
    assert_eq!(
        (key("bob")["exceeded"].as_bool(), key("bob")["requests_today"].as_u64()),
        (Some(false), Some(1)),
        "{budget}"
    );

    // removing alice's cap lets her through again
    let (status, _) = read(
        helix
            .api(Method::PUT, "/api/v1/llm/budget")
            .json(&json!({"keys": [{"api_key_id": "alice", "daily_limit_usd": null}]}))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = read(as_key(&alice, "/v1/embeddings", json!({"input": "Hi"})).await?).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = read(
        helix.api(Method::PUT, "/api/v1/llm/budget").json(&json!({"keys": [{"daily_limit_usd": 1.0}]})).send().await?,
    )
    .await;
    assert_eq!(status, 422, "{body}");

    // a global cap set through the API is stored: a replica started later (here, this
    // one restarted) holds it over its configuration's 100 USD
    let (status, body) = read(
        helix
            .api(Method::PUT, "/api/v1/llm/budget")
            .json(&json!({"daily_limit_usd": 0.0, "action": "reject"}))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    helix.restart().await?;
    let (_, budget) = read(helix.api(Method::GET, "/api/budget").send().await?).await;
    assert_eq!(
        (budget["daily_limit_usd"].as_f64(), budget["action"].as_str()),
        (Some(0.0), Some("reject")),
        "{budget}"
    );
    let before = fake.count();
    let call = helix.http.post(helix.url("/v1/chat/completions")).bearer_auth(&bob).json(&hi);
    let (status, body) = read(call.send().await?).await;
    assert_eq!((status, body["error"]["code"].as_str()), (402, Some("budget_exceeded")), "{body}");
    assert_eq!(fake.count(), before);
    helix.stop().await;
    Ok(())
}
