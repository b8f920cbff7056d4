//! What steps do, and the quality gates their outputs pass. An action gets its
//! interpolated `config` and returns a JSON output, or an error text that fails the
//! attempt. Actions that reach other services go through their gRPC contracts.
//!
//! - `wait` `{ms | seconds}` → `{"waited_ms"}`
//! - `set` `{value}` → the value (or the whole config): data for later steps
//! - `http` `{url, method?, headers?, body?}` → `{"status", "body"}`; a 4xx/5xx fails;
//!   under the outbound policy (`helix_runtime::outbound`), body read up to 10 MiB
//! - `store` `{title?, content, kind?, namespace?, tags?, metadata?}` → the created node
//! - `search` `{query, mode?, limit?, namespaces?}` → `{"hits": [{id, title, score}], "total"}`
//! - `job` `{kind, payload?, queue?, max_attempts?}` → the job's result once it completed;
//!   enqueued with a key of (execution, step, iteration), so a resumed step waits for
//!   the job enqueued before rather than enqueueing another
//! - `llm.generate` `{prompt, system?, model?, max_tokens?}` → `{"content", "model", "provider", "usage"}`;
//!   in a run with a budget, capped at what the run has left (`engine::Spend`)
//! - `notify` `{channel?, message}` → recorded in the execution's progress log (the
//!   notifications service is not built yet, so nothing is delivered)
//! - `workflow` `{workflow_id, variables?}` → the sub-execution's results (keyed like `job`)

use std::sync::Arc;
use std::time::Duration;

use helix_proto::v1 as pb;
use helix_proto::v1::jobs_service_client::JobsServiceClient;
use helix_proto::v1::llm_router_service_client::LlmRouterServiceClient;
use helix_proto::v1::search_service_client::SearchServiceClient;
use helix_proto::v1::storage_service_client::StorageServiceClient;
use helix_runtime::outbound::{self, OutboundError};
use serde_json::{Map, Value, json};

use crate::definition::Gate;
use crate::engine::{Engine, Spend};
use crate::expr;
use crate::scheduler::usd;

/// Where an action runs: for idempotency keys and logs.
pub struct Site<'a> {
    pub execution_id: uuid::Uuid,
    pub step_id: &'a str,
    pub iteration: u32,
}

type Outcome = Result<Value, String>;

fn status(e: tonic::Status) -> String {
    helix_core::Error::from(e).message().to_owned()
}

fn str_of<'a>(config: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    config.get(key).and_then(Value::as_str)
}

fn required<'a>(config: &'a Map<String, Value>, key: &str) -> Result<&'a str, String> {
    str_of(config, key).filter(|s| !s.is_empty()).ok_or_else(|| format!("config.{key} is required"))
}

pub async fn run(engine: &Arc<Engine>, action: &str, config: Map<String, Value>, site: &Site<'_>) -> Outcome {
    match action {
        "wait" => {
            let ms = config
                .get("ms")
                .and_then(Value::as_u64)
                .or_else(|| config.get("seconds").and_then(Value::as_f64).map(|s| (s * 1000.0) as u64))
                .ok_or("config.ms or config.seconds is required")?;
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok(json!({"waited_ms": ms}))
        }
        "set" => Ok(config.get("value").cloned().unwrap_or(Value::Object(config))),
        "http" => http(engine, &config).await,
        "store" => store(engine, &config).await,
        "search" => search(engine, &config).await,
        "job" => job(engine, &config, site).await,
        "llm.generate" => generate(engine, &config, engine.spend(site.execution_id).as_deref()).await,
        "notify" => {
            let message = required(&config, "message")?.to_owned();
            let channel = str_of(&config, "channel").unwrap_or("log").to_owned();
            engine.log(site.execution_id, site.step_id, &format!("notify {channel}: {message}")).await;
            Ok(json!({"channel": channel, "message": message, "delivered": false}))
        }
        "workflow" => {
            let id = required(&config, "workflow_id")?;
            let variables = match config.get("variables") {
                Some(Value::Object(v)) => v.clone(),
                None => Map::new(),
                Some(_) => return Err("config.variables must be an object".into()),
            };
            let key = format!("wf:{}:{}:{}", site.execution_id, site.step_id, site.iteration);
            engine.run_child(id, variables, &site.execution_id.to_string(), &key).await
        }
        other => Err(format!("unknown action {other}")),
    }
}

async fn http(engine: &Engine, config: &Map<String, Value>) -> Outcome {
    let url = required(config, "url")?;
    let method = str_of(config, "method").unwrap_or("GET").to_ascii_uppercase();
    let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|_| format!("method {method} is not valid"))?;
    let mut request = engine.http.request(method, url).map_err(|e| format!("http: {e}"))?;
    if let Some(Value::Object(headers)) = config.get("headers") {
        for (name, value) in headers {
            request = request.header(name, value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string()));
        }
    }
    if let Some(body) = config.get("body") {
        request = request.json(body);
    }
    let response = request.send().await.map_err(|e| format!("http: {}", OutboundError::from(e)))?;
    let code = response.status().as_u16();
    let text = outbound::read_capped(response, outbound::MAX_BODY).await.map_err(|e| format!("http: {e}"))?;
    let text = String::from_utf8_lossy(&text).into_owned();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    if code >= 400 {
        return Err(format!("http: status {code}"));
    }
    Ok(json!({"status": code, "body": body}))
}

async fn store(engine: &Engine, config: &Map<String, Value>) -> Outcome {
    let content = str_of(config, "content").unwrap_or_default().to_owned();
    let tags = match config.get("tags") {
        Some(Value::Array(tags)) => {
            tags.iter().map(|t| t.as_str().map(str::to_owned).unwrap_or_else(|| t.to_string())).collect()
        }
        _ => Vec::new(),
    };
    let draft = pb::NodeDraft {
        namespace: str_of(config, "namespace").map(str::to_owned),
        kind: str_of(config, "kind").map(str::to_owned),
        title: str_of(config, "title").map(str::to_owned),
        content,
        tags,
        metadata_json: config.get("metadata").map(Value::to_string),
        source: Some(str_of(config, "source").unwrap_or("workflow").to_owned()),
        importance: config.get("importance").and_then(Value::as_f64),
    };
    let mut client = StorageServiceClient::new(engine.channels.storage.clone());
    let node = client.create_node(pb::CreateNodeRequest { node: Some(draft) }).await.map_err(status)?.into_inner();
    Ok(json!({
        "id": node.id, "namespace": node.namespace, "kind": node.kind, "title": node.title,
        "content": node.content, "tags": node.tags, "version": node.version,
    }))
}

async fn search(engine: &Engine, config: &Map<String, Value>) -> Outcome {
    let query = required(config, "query")?.to_owned();
    let namespaces = match config.get("namespaces") {
        Some(Value::Array(n)) => n.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        _ => Vec::new(),
    };
    let request = pb::SearchRequest {
        query,
        mode: str_of(config, "mode").unwrap_or_default().to_owned(),
        namespaces,
        page: Some(pb::PageRequest {
            limit: config.get("limit").and_then(Value::as_u64).unwrap_or(10) as u32,
            cursor: String::new(),
        }),
        ..Default::default()
    };
    let mut client = SearchServiceClient::new(engine.channels.search.clone());
    let found = client.search(request).await.map_err(status)?.into_inner();
    let hits: Vec<Value> = found.hits.iter().map(|h| json!({"id": h.id, "title": h.title, "score": h.score})).collect();
    Ok(json!({"hits": hits, "total": found.total_hits}))
}

async fn job(engine: &Engine, config: &Map<String, Value>, site: &Site<'_>) -> Outcome {
    let request = pb::EnqueueJobRequest {
        kind: required(config, "kind")?.to_owned(),
        queue: str_of(config, "queue").unwrap_or_default().to_owned(),
        payload_json: config.get("payload").map(Value::to_string).unwrap_or_default(),
        max_attempts: config.get("max_attempts").and_then(Value::as_u64).map(|n| n as u32),
        idempotency_key: format!("wf:{}:{}:{}", site.execution_id, site.step_id, site.iteration),
        ..Default::default()
    };
    let mut client = JobsServiceClient::new(engine.channels.jobs.clone());
    let job = client.enqueue_job(request).await.map_err(status)?.into_inner();
    loop {
        let now = client.get_job(pb::GetJobRequest { id: job.id.clone() }).await.map_err(status)?.into_inner();
        match now.state.as_str() {
            "completed" => return Ok(serde_json::from_str(&now.result_json).unwrap_or(Value::Null)),
            "dead" => return Err(format!("job {} failed: {}", now.id, now.last_error)),
            "cancelled" => return Err(format!("job {} was cancelled", now.id)),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// One LLM call; with a run's `spend`, capped at what it has left and counted.
async fn generate(engine: &Engine, config: &Map<String, Value>, spend: Option<&Spend>) -> Outcome {
    let request = pb::GenerateRequest {
        prompt: required(config, "prompt")?.to_owned(),
        system: str_of(config, "system").unwrap_or_default().to_owned(),
        model: str_of(config, "model").unwrap_or_default().to_owned(),
        max_tokens: config.get("max_tokens").and_then(Value::as_u64).map(|n| n as u32),
        max_cost_usd: spend.map(Spend::left),
        ..Default::default()
    };
    let mut client = LlmRouterServiceClient::new(engine.channels.llm.clone());
    let answer = match client.generate(request).await {
        Ok(answer) => answer.into_inner(),
        Err(e) => {
            let error = helix_core::Error::from(e);
            return Err(match spend {
                Some(spend) if error.kind() == helix_core::ErrorKind::BudgetExceeded => format!(
                    "the run's budget of {} ({} left) cannot cover this LLM call ({})",
                    usd(spend.budget),
                    usd(spend.left()),
                    error.message()
                ),
                _ => error.message().to_owned(),
            });
        }
    };
    let usage = answer.usage.unwrap_or_default();
    if let Some(spend) = spend {
        spend.add(usage.cost_usd);
    }
    Ok(json!({
        "content": answer.content, "model": answer.model, "provider": answer.provider,
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "cost_usd": usage.cost_usd},
    }))
}

/// A gate's verdict: passed, the score when it measured one, and why.
pub struct Verdict {
    pub passed: bool,
    pub score: Option<f64>,
    pub detail: String,
}

fn field<'a>(output: &'a Value, path: &str) -> &'a Value {
    if path.is_empty() {
        return output;
    }
    let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
    expr::walk(output, &segments)
}

pub async fn check_gate(
    engine: &Engine,
    gate: &Gate,
    output: &Value,
    criteria: Option<&str>,
    spend: Option<&Spend>,
) -> Result<Verdict, String> {
    Ok(match gate {
        Gate::JsonSchema { field: path, schema } => match schema_errors(field(output, path), schema, "$") {
            None => Verdict { passed: true, score: None, detail: "matches the schema".into() },
            Some(why) => Verdict { passed: false, score: None, detail: why },
        },
        Gate::Regex { field: path, pattern } => {
            let re = regex::Regex::new(pattern).map_err(|e| e.to_string())?;
            let value = field(output, path);
            let text = value.as_str().map(str::to_owned).unwrap_or_else(|| value.to_string());
            let passed = re.is_match(&text);
            Verdict {
                passed,
                score: None,
                detail: format!("`{text}` {} /{pattern}/", if passed { "matches" } else { "does not match" }),
            }
        }
        Gate::Threshold { field: path, min, max } => {
            let value = field(output, path);
            let n = value.as_f64().or_else(|| value.as_str().and_then(|s| s.parse().ok()));
            match n {
                None => Verdict { passed: false, score: None, detail: format!("{path} is not a number") },
                Some(n) => {
                    let passed = min.is_none_or(|m| n >= m) && max.is_none_or(|m| n <= m);
                    Verdict { passed, score: Some(n), detail: format!("{path} = {n}") }
                }
            }
        }
        Gate::LlmJudge { threshold, model, .. } => {
            let prompt = format!(
                "Score how well this output meets the criteria, from 0.0 (not at all) to 1.0 (fully). \
                 Answer with the number only.\nCriteria: {}\nOutput:\n{}",
                criteria.unwrap_or_default(),
                output
            );
            let mut config = Map::new();
            config.insert("prompt".into(), Value::String(prompt));
            config.insert("model".into(), Value::String(model.clone()));
            config.insert("max_tokens".into(), json!(16));
            let answer = generate(engine, &config, spend).await?;
            let text = answer["content"].as_str().unwrap_or_default().trim().to_owned();
            let score: f64 = text
                .split(|c: char| !(c.is_ascii_digit() || c == '.'))
                .find_map(|t| t.parse().ok())
                .ok_or_else(|| format!("the judge answered `{text}`, not a score"))?;
            Verdict {
                passed: score >= *threshold,
                score: Some(score),
                detail: format!("judged {score} (threshold {threshold})"),
            }
        }
    })
}

/// The first way `value` breaks `schema`, within the documented subset.
pub fn schema_errors(value: &Value, schema: &Value, at: &str) -> Option<String> {
    let Value::Object(schema) = schema else { return None };
    if let Some(kind) = schema.get("type").and_then(Value::as_str) {
        let ok = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "number" => value.is_number(),
            "integer" => value.is_i64() || value.is_u64(),
            "boolean" => value.is_boolean(),
            "null" => value.is_null(),
            _ => true,
        };
        if !ok {
            return Some(format!("{at} is not of type {kind}"));
        }
    }
    if let Some(Value::Array(options)) = schema.get("enum")
        && !options.contains(value)
    {
        return Some(format!("{at} is not one of the enum values"));
    }
    let number = |key: &str| schema.get(key).and_then(Value::as_f64);
    if let Some(n) = value.as_f64()
        && (number("minimum").is_some_and(|m| n < m) || number("maximum").is_some_and(|m| n > m))
    {
        return Some(format!("{at} = {n} is out of range"));
    }
    if let Some(len) = value.as_str().map(|s| s.chars().count() as f64)
        && (number("minLength").is_some_and(|m| len < m) || number("maxLength").is_some_and(|m| len > m))
    {
        return Some(format!("{at} has the wrong length"));
    }
    if let Value::Array(items) = value {
        let len = items.len() as f64;
        if number("minItems").is_some_and(|m| len < m) || number("maxItems").is_some_and(|m| len > m) {
            return Some(format!("{at} has {} items", items.len()));
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                if let Some(why) = schema_errors(item, item_schema, &format!("{at}[{i}]")) {
                    return Some(why);
                }
            }
        }
    }
    if let Value::Object(map) = value {
        if let Some(Value::Array(required)) = schema.get("required") {
            for name in required.iter().filter_map(Value::as_str) {
                if !map.contains_key(name) {
                    return Some(format!("{at}.{name} is required"));
                }
            }
        }
        if let Some(Value::Object(properties)) = schema.get("properties") {
            for (name, property) in properties {
                if let Some(v) = map.get(name)
                    && let Some(why) = schema_errors(v, property, &format!("{at}.{name}"))
                {
                    return Some(why);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::schema_errors;

    #[test]
    fn schema_subset() {
        let schema = json!({
            "type": "object", "required": ["title", "n"],
            "properties": {
                "title": {"type": "string", "minLength": 2},
                "n": {"type": "integer", "minimum": 1, "maximum": 5},
                "tags": {"type": "array", "minItems": 1, "items": {"enum": ["a", "b"]}}
            }
        });
        let cases = [
            (json!({"title": "ok", "n": 3, "tags": ["a"]}), None),
            (json!({"title": "ok"}), Some("$.n is required")),
            (json!({"title": "x", "n": 3}), Some("$.title has the wrong length")),
            (json!({"title": "ok", "n": 9}), Some("$.n = 9 is out of range")),
            (json!({"title": "ok", "n": 1.5}), Some("$.n is not of type integer")),
            (json!({"title": "ok", "n": 1, "tags": ["c"]}), Some("$.tags[0] is not one of the enum values")),
            (json!({"title": "ok", "n": 1, "tags": []}), Some("$.tags has 0 items")),
            (json!([1]), Some("$ is not of type object")),
        ];
        for (value, expected) in cases {
            assert_eq!(schema_errors(&value, &schema, "$").as_deref(), expected, "{value}");
        }
    }
}
