//! What the original system's clients send, and the errors a new user meets first:
//!
//! - a taken port: `hx up` names the listener, the address and the variable that moves it;
//! - `hx` with no server, a URL that is not a Helix gateway, no key or a refused key says
//!   which, and what to run or set;
//! - an empty body on every action route (a POST whose body is optional, taken from the
//!   served OpenAPI document) answers as `{}` does, with or without a JSON content type;
//! - an unknown field in the body of every operation of our own routes (a table generated
//!   from the served OpenAPI document; the OpenAI- and Anthropic-compatible `/v1/...`
//!   routes follow those APIs) is a 422 `unknown_field` naming it, also when the body has
//!   something else wrong that serde would meet first;
//! - the original's field names: a scheduler task's `depends_on` is stored and orders the
//!   waves, a scheduler workflow's `deadline` and `budget` are kept and enforced.

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use helix_testkit::llm::{FakeLlm, Wire, quick_retries};
use helix_testkit::{Backend, TestEnv, TestHelix};
use hx::fleet::Role;
use reqwest::Method;
use serde_json::{Map, Value, json};

use crate::support::{code, read};
use crate::workflows::wait_for;

crate::on_both_backends!(original_field_names_are_taken_and_the_limits_hold);

const HX: &str = env!("CARGO_BIN_EXE_hx");

/// `hx up` where a port it needs is taken: it exits at once, and its error names which
/// listener, the address, and the variable that moves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_names_its_listener_address_and_variable() -> anyhow::Result<()> {
    let cases = [
        ("HELIX_GATEWAY_ADDR", "REST gateway"),
        ("HELIX_GRPC_ADDR", "gRPC listener"),
        ("HELIX_METRICS_ADDR", "metrics/admin listener"),
    ];
    for (variable, listener) in cases {
        let env = TestEnv::new(Backend::Embedded).await?;
        // the port another program holds
        let held = std::net::TcpListener::bind("127.0.0.1:0")?;
        let addr = held.local_addr()?.to_string();
        let mut command = tokio::process::Command::new(HX);
        command
            .arg("up")
            .envs(env.process_env())
            .env("HELIX_GRPC_ADDR", "127.0.0.1:0")
            .env("HELIX_GATEWAY_ADDR", "127.0.0.1:0")
            .env("HELIX_METRICS_ADDR", "127.0.0.1:0")
            .env(variable, &addr)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let output = tokio::time::timeout(Duration::from_secs(60), command.output()).await??;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{variable}: hx up started on a taken port: {stderr}");
        let message = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
        for wanted in [listener, addr.as_str(), variable, "in use"] {
            assert!(message.contains(wanted), "{variable}: the error lacks `{wanted}`: {stderr}");
        }
        drop(held);
    }
    Ok(())
}

/// `hx` against no server, a server that is not a Helix gateway, without a key and with
/// a key the gateway refuses: each error says which, and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hx_says_what_is_wrong_with_the_server_or_the_key() -> anyhow::Result<()> {
    let helix = TestHelix::start(Backend::Embedded).await?;
    let not_helix = helix.node.as_ref().expect("running").metrics_url();
    let nobody = {
        let free = std::net::TcpListener::bind("127.0.0.1:0")?;
        format!("http://{}", free.local_addr()?)
    };
    let no_home = tempfile::tempdir()?;
    let cases: [(&str, &str, Option<&str>, &[&str]); 4] = [
        ("nothing listens", &nobody, None, &["cannot reach the gateway", "nothing answers", "hx up", "HELIX_SERVER"]),
        ("not a gateway", &not_helix, None, &["not as a Helix gateway does", "HELIX_SERVER", "9470"]),
        ("no key", &helix.base_url, None, &["no API key", "HELIX_API_KEY", "--api-key", "admin.key"]),
        (
            "a refused key",
            &helix.base_url,
            Some("hx_not_a_key"),
            &["the gateway refused the key", "HELIX_API_KEY", "--api-key", "admin.key"],
        ),
    ];
    for (what, server, key, said) in cases {
        let mut command = tokio::process::Command::new(HX);
        command
            .args(["recall", "anything", "--server", server])
            .env("HELIX_HOME", no_home.path())
            .env_remove("HELIX_API_KEY");
        if let Some(key) = key {
            command.args(["--api-key", key]);
        }
        let output = tokio::time::timeout(Duration::from_secs(60), command.output()).await??;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{what}: {stderr}");
        for words in said {
            assert!(stderr.contains(words), "{what}: the error does not say `{words}`: {stderr}");
        }
    }
    helix.stop().await;
    Ok(())
}

/// The served OpenAPI document, its operations as (method, path, operation).
async fn operations(helix: &TestHelix) -> anyhow::Result<(Value, Vec<(Method, String, Value)>)> {
    let (status, doc) = read(helix.api(Method::GET, "/api/v1/openapi.json").send().await?).await;
    anyhow::ensure!(status == 200, "openapi.json: {status}");
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().into_iter().flatten() {
        for (method, operation) in item.as_object().into_iter().flatten() {
            let Ok(method) = method.to_ascii_uppercase().parse::<Method>() else { continue };
            if matches!(method, Method::GET | Method::POST | Method::PUT | Method::DELETE | Method::PATCH) {
                ops.push((method, path.clone(), operation.clone()));
            }
        }
    }
    Ok((doc, ops))
}

/// `#/components/schemas/X` resolved (once per level), and `allOf`/`oneOf`/`anyOf` by
/// their first branch that is not `null`.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    let mut schema = schema;
    for _ in 0..8 {
        if let Some(name) = schema["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/")) {
            schema = &doc["components"]["schemas"][name];
        } else if let Some(first) = ["allOf", "oneOf", "anyOf"]
            .iter()
            .find_map(|k| schema[*k].as_array())
            .and_then(|branches| branches.iter().find(|b| b["type"] != "null"))
        {
            schema = first;
        } else {
            break;
        }
    }
    schema
}

/// The schema's type, the first that is not `null`.
fn kind(schema: &Value) -> &str {
    match &schema["type"] {
        Value::String(t) => t,
        Value::Array(types) => types.iter().filter_map(Value::as_str).find(|t| *t != "null").unwrap_or(""),
        _ => "",
    }
}

/// A value the schema takes, small: required properties only.
fn example(doc: &Value, schema: &Value, depth: usize) -> Value {
    let schema = resolve(doc, schema);
    if let Some(first) = schema["enum"].as_array().and_then(|e| e.iter().find(|v| !v.is_null())) {
        return first.clone();
    }
    match kind(schema) {
        "string" => match schema["format"].as_str() {
            Some("uuid") => json!(uuid::Uuid::now_v7().to_string()),
            Some("date-time") => json!("2030-01-01T00:00:00Z"),
            _ => json!("x"),
        },
        "integer" | "number" => json!(1),
        "boolean" => json!(false),
        "array" => json!([]),
        _ if depth > 4 => json!({}),
        _ => {
            let mut object = Map::new();
            for name in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
                object.insert(name.to_owned(), example(doc, &schema["properties"][name], depth + 1));
            }
            Value::Object(object)
        }
    }
}

/// A value of another type than the schema's, that serde refuses before it sees a field
/// after it (an object never: its own fields would be judged instead).
fn wrong(doc: &Value, schema: &Value) -> Value {
    match kind(resolve(doc, schema)) {
        "array" | "object" => json!("not this"),
        _ => json!([["not this"]]),
    }
}

/// The JSON body schema of an operation, if it takes one.
fn body_schema(operation: &Value) -> Option<&Value> {
    operation["requestBody"]["content"]["application/json"]["schema"]
        .as_object()
        .map(|_| &operation["requestBody"]["content"]["application/json"]["schema"])
}

/// The OpenAI- and Anthropic-compatible routes: their clients send fields we may not know.
fn follows_another_api(path: &str) -> bool {
    path.starts_with("/v1/")
}

/// The path with each parameter given a value of its declared type.
fn concrete(path: &str, operation: &Value) -> String {
    let mut path = path.to_owned();
    for p in operation["parameters"].as_array().into_iter().flatten().filter(|p| p["in"] == "path") {
        let name = p["name"].as_str().unwrap_or_default();
        let value = match p["schema"]["format"].as_str() {
            Some("uuid") => uuid::Uuid::now_v7().to_string(),
            _ => "x".to_owned(),
        };
        path = path.replace(&format!("{{{name}}}"), &value);
    }
    path
}

/// Every operation of ours with a JSON body, two bodies each: one the route would take
/// plus `zz_unknown`, and one whose known fields are all of the wrong type plus
/// `zz_unknown` (serde meets them first: `zz_unknown` sorts last). Both are 422
/// `unknown_field` naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_field_in_any_body_of_ours_is_refused_naming_it() -> anyhow::Result<()> {
    let helix = TestHelix::start(Backend::Embedded).await?;
    let (doc, ops) = operations(&helix).await?;
    let mut checked = BTreeSet::new();
    for (method, path, operation) in &ops {
        let Some(schema) = body_schema(operation) else { continue };
        if follows_another_api(path) {
            continue;
        }
        let fine = example(&doc, schema, 0);
        let Value::Object(fine) = fine else { panic!("{method} {path}: its body is not an object") };
        let resolved = resolve(&doc, schema);
        let mut broken = Map::new();
        let names: Vec<&str> = match resolved["required"].as_array() {
            Some(required) if !required.is_empty() => required.iter().filter_map(Value::as_str).collect(),
            _ => resolved["properties"].as_object().into_iter().flatten().map(|(k, _)| k.as_str()).take(1).collect(),
        };
        for name in names {
            broken.insert(name.to_owned(), wrong(&doc, &resolved["properties"][name]));
        }
        for (what, mut body) in [("a body it takes", fine), ("a body of wrong types", broken)] {
            body.insert("zz_unknown".into(), json!(1));
            let request = helix.api(method.clone(), &concrete(path, operation)).json(&body);
            let (status, answer) = read(request.send().await?).await;
            let message = answer["error"]["message"].as_str().unwrap_or_default();
            assert_eq!(
                (status, code(&answer)),
                (422, "unknown_field"),
                "{method} {path} with {what}: {}: {answer}",
                Value::Object(body.clone())
            );
            assert!(message.contains("zz_unknown"), "{method} {path} with {what}: the message names it: {answer}");
        }
        checked.insert(format!("{method} {path}"));
    }
    // the table is the document's: a route of ours that takes a body is never left out
    for route in ["POST /api/v1/nodes", "PUT /api/v1/nodes/{id}", "POST /api/v1/scheduler/tasks", "POST /api/generate"]
    {
        assert!(checked.contains(route), "{route} was not checked: {checked:?}");
    }
    assert!(checked.len() >= 30, "only {} operations with a body: {checked:?}", checked.len());
    println!("unknown fields refused on {} operations: {checked:?}", checked.len());
    // the OpenAI-compatible routes keep taking fields they do not know (here: answered
    // by the router, which has no provider: not a 422)
    let (status, answer) = read(
        helix
            .api(Method::POST, "/v1/chat/completions")
            .json(&json!({"model": "x/y", "messages": [{"role": "user", "content": "hi"}], "zz_unknown": 1}))
            .send()
            .await?,
    )
    .await;
    assert_ne!(status, 422, "{answer}");
    helix.stop().await;
    Ok(())
}

/// Fresh things for an action route to act on: each call a new one, so each way of
/// sending the body meets the same state.
struct Subjects<'a> {
    helix: &'a TestHelix,
    n: AtomicUsize,
}

impl Subjects<'_> {
    fn unique(&self, what: &str) -> String {
        format!("{what}-{}-{}", self.n.fetch_add(1, Ordering::Relaxed), uuid::Uuid::now_v7().simple())
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, answer) = read(self.helix.api(Method::POST, path).json(&body).send().await?).await;
        anyhow::ensure!((200..300).contains(&status), "setup POST {path} {body}: {status} {answer}");
        Ok(answer)
    }

    /// A job that waits an hour to run.
    async fn job(&self) -> anyhow::Result<String> {
        let job = self.post("/api/v1/jobs", json!({"kind": "echo", "delay_secs": 3600})).await?;
        Ok(job["id"].as_str().unwrap_or_default().to_owned())
    }

    async fn workflow(&self, wait_ms: u64) -> anyhow::Result<String> {
        let definition =
            json!({"name": self.unique("wf"), "steps": [{"id": "w", "action": "wait", "config": {"ms": wait_ms}}]});
        let wf = self.post("/api/v1/workflows", json!({"definition": definition})).await?;
        Ok(wf["id"].as_str().unwrap_or_default().to_owned())
    }

    async fn scheduler_workflow(&self) -> anyhow::Result<String> {
        let name = self.unique("sw");
        let tasks = json!([{"task_id": "a", "estimated_duration_secs": 1}]);
        self.post("/api/v1/scheduler/workflows", json!({"name": name, "tasks": tasks})).await?;
        Ok(name)
    }

    async fn task(&self) -> anyhow::Result<String> {
        let id = self.unique("t");
        self.post("/api/v1/scheduler/tasks", json!({"task_id": id})).await?;
        Ok(id)
    }

    /// The route's path with its parameters bound to a fresh subject.
    async fn path(&self, template: &str) -> anyhow::Result<String> {
        let bind = |id: String| template.replace("{id}", &id).replace("{name}", &id);
        Ok(match template {
            t if !t.contains('{') => t.to_owned(),
            "/api/v1/jobs/{id}/cancel" => bind(self.job().await?),
            "/api/v1/jobs/{id}/retry" => {
                let id = self.job().await?;
                self.post(&format!("/api/v1/jobs/{id}/cancel"), json!({})).await?;
                bind(id)
            }
            "/api/v1/jobs/schedules/{id}/trigger" => {
                let body = json!({"name": self.unique("s"), "interval_secs": 3600, "kind": "echo"});
                bind(self.post("/api/v1/jobs/schedules", body).await?["id"].as_str().unwrap_or_default().to_owned())
            }
            "/api/v1/keys/{id}/rotate" => {
                let key = self.post("/api/v1/keys", json!({"name": self.unique("k"), "scopes": ["read"]})).await?;
                bind(key["key"]["id"].as_str().unwrap_or_default().to_owned())
            }
            "/api/v1/workflows/{id}/execute" => bind(self.workflow(1).await?),
            "/api/v1/workflows/executions/{id}/cancel" | "/api/scheduler/executions/{id}/cancel" => {
                let wf = self.workflow(60_000).await?;
                let run = self.post(&format!("/api/v1/workflows/{wf}/execute"), json!({})).await?;
                bind(run["id"].as_str().unwrap_or_default().to_owned())
            }
            t if t.contains("/scheduler/workflows/{name}/") => bind(self.scheduler_workflow().await?),
            t if t.contains("/scheduler/templates/{name}/") => bind("etl".to_owned()),
            t if t.starts_with("/api/v1/scheduler/tasks/{id}/") => bind(self.task().await?),
            other => anyhow::bail!("no subject for the action route {other}: add one"),
        })
    }
}

/// What must be the same whichever way the body was sent: the status, the error code,
/// the answer's fields and the states it reports.
fn view(status: u16, answer: &Value) -> Value {
    match answer {
        Value::Object(fields) => json!({
            "status": status,
            "code": answer["error"]["code"],
            "fields": fields.keys().collect::<Vec<_>>(),
            "state": answer["state"],
            "task_state": answer["task"]["state"],
            "scopes": answer["scopes"],
        }),
        // an event stream: its text
        other => json!({"status": status, "body": other}),
    }
}

/// Every POST of the document whose body is optional (none, or one with no required
/// field) and that acts on something: sent `{}`, an empty body with
/// `Content-Type: application/json`, and an empty body with no content type, each to a
/// fresh subject, it answers the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_body_on_every_action_route_is_an_empty_object() -> anyhow::Result<()> {
    let helix = TestHelix::start(Backend::Embedded).await?;
    let (doc, ops) = operations(&helix).await?;
    let subjects = Subjects { helix: &helix, n: AtomicUsize::new(0) };
    let mut checked = BTreeSet::new();
    for (method, path, operation) in &ops {
        if *method != Method::POST || follows_another_api(path) {
            continue;
        }
        let optional = match body_schema(operation) {
            None => true,
            Some(schema) => resolve(&doc, schema)["required"].as_array().is_none_or(Vec::is_empty),
        };
        if !optional {
            continue;
        }
        let mut answers = Vec::new();
        for (how, content_type, body) in [
            ("{}", Some("application/json"), "{}"),
            ("an empty JSON body", Some("application/json"), ""),
            ("an empty body without a content type", None, ""),
        ] {
            let concrete = subjects.path(path).await?;
            let mut request = helix.api(Method::POST, &concrete).body(body);
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let (status, answer) = read(request.send().await?).await;
            assert_ne!(code(&answer), "malformed_json", "POST {path} with {how}: {answer}");
            answers.push((how, view(status, &answer)));
        }
        for (how, answer) in &answers[1..] {
            assert_eq!(answer, &answers[0].1, "POST {path}: {how} answers otherwise than {{}}");
        }
        checked.insert(format!("{path} {}", answers[0].1));
    }
    println!(
        "empty bodies answered as {{}} on {} routes:\n{}",
        checked.len(),
        checked.iter().cloned().collect::<Vec<_>>().join("\n")
    );
    let checked: BTreeSet<String> =
        checked.iter().map(|c| c.split(' ').next().unwrap_or_default().to_owned()).collect();
    // the action routes the original clients sent empty bodies to are among them
    for route in [
        "/api/v1/jobs/{id}/retry",
        "/api/v1/jobs/{id}/cancel",
        "/api/v1/jobs/purge",
        "/api/v1/scheduler/tasks/{id}/run",
        "/api/v1/scheduler/tasks/{id}/complete",
        "/api/v1/scheduler/tasks/{id}/fail",
        "/api/v1/workflows/executions/{id}/cancel",
        "/api/scheduler/executions/{id}/cancel",
        "/api/v1/scheduler/templates/{name}/preview",
        "/api/scheduler/templates/{name}/preview",
        "/api/v1/workflows/{id}/execute",
        "/api/scheduler/workflows/{name}/run",
    ] {
        assert!(checked.contains(route), "{route} was not checked: {checked:?}");
    }
    helix.stop().await;
    Ok(())
}

/// Runs a scheduler workflow and waits for its execution to end.
async fn run_to_end(helix: &TestHelix, name: &str) -> anyhow::Result<Value> {
    let (status, run) =
        read(helix.api(Method::POST, &format!("/api/v1/scheduler/workflows/{name}/run")).send().await?).await;
    anyhow::ensure!(status == 202, "run {name}: {status} {run}");
    let id = run["id"].as_str().unwrap_or_default().to_owned();
    wait_for(helix, &id, "its end", |e| matches!(e["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))).await
}

fn step_state<'a>(execution: &'a Value, id: &str) -> &'a str {
    execution["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step_id"] == id))
        .and_then(|s| s["state"].as_str())
        .unwrap_or("<none>")
}

async fn original_field_names_are_taken_and_the_limits_hold(backend: Backend) -> anyhow::Result<()> {
    let mut env = TestEnv::new(backend).await?;
    quick_retries(&mut env.config);
    let fake = FakeLlm::start().await?;
    fake.serve_as(&mut env.config, "openai", Wire::OpenAi);
    let node = env.start(&Role::ALL).await?;
    let base_url = node.gateway_url().expect("gateway role runs");
    let helix = TestHelix { env, node: Some(node), base_url, http: reqwest::Client::new() };
    let send = async |method: Method, path: &str, body: Value| -> anyhow::Result<(u16, Value)> {
        Ok(read(helix.api(method, path).json(&body).send().await?).await)
    };

    // a free-standing task's `depends_on` is its dependencies: stored, and the waves follow
    for task in [json!({"task_id": "first"}), json!({"task_id": "then", "depends_on": ["first"]})] {
        let (status, answer) = send(Method::POST, "/api/v1/scheduler/tasks", task).await?;
        assert_eq!(status, 201, "{answer}");
    }
    let (_, then) = send(Method::GET, "/api/v1/scheduler/tasks/then", Value::Null).await?;
    assert_eq!((then["dependencies"].clone(), then["state"].clone()), (json!(["first"]), json!("pending")), "{then}");
    let (_, waves) = send(Method::GET, "/api/v1/scheduler/tasks/waves", Value::Null).await?;
    let waves: Vec<Value> = waves["waves"].as_array().unwrap().iter().map(|w| w["task_ids"].clone()).collect();
    assert_eq!(waves, vec![json!(["first"]), json!(["then"])]);

    // a scheduler workflow with the original's names: depends_on, deadline, budget
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let tasks = json!([
        {"task_id": "a", "estimated_duration_secs": 10, "estimated_cost_usd": 0.25},
        {"task_id": "b", "depends_on": ["a"], "estimated_duration_secs": 10, "estimated_cost_usd": 0.5},
    ]);
    let body = json!({"name": "limits", "tasks": tasks, "deadline": later, "budget": 0.5});
    let (status, saved) = send(Method::POST, "/api/v1/scheduler/workflows", body).await?;
    assert_eq!(status, 201, "{saved}");
    assert_eq!((saved["budget_usd"].clone(), saved["tasks"][1]["dependencies"].clone()), (json!(0.5), json!(["a"])));
    assert_eq!(
        saved["deadline"].as_str().map(|d| d.parse::<chrono::DateTime<chrono::Utc>>().ok()),
        Some(later.parse().ok())
    );
    let (_, preview) = send(Method::POST, "/api/v1/scheduler/workflows/limits/preview", Value::Null).await?;
    assert_eq!(preview["waves"].as_array().map(Vec::len), Some(2), "{preview}");
    assert_eq!(
        (preview["fits_deadline"].clone(), preview["fits_budget"].clone(), preview["estimated_cost_usd"].clone()),
        (json!(true), json!(false), json!(0.75)),
        "{preview}"
    );
    assert!(preview["warnings"].to_string().contains("over the budget"), "{preview}");

    // each limit, run: (name, deadline from now in seconds, budget, tasks, state, what the error says,
    // the steps' end states)
    let generate = json!({"prompt": "Hi", "model": "openai/gpt-4o-mini", "max_tokens": 16});
    type Case = (
        &'static str,
        Option<i64>,
        Option<f64>,
        Value,
        &'static str,
        &'static [&'static str],
        &'static [(&'static str, &'static str)],
    );
    let cases: [Case; 5] = [
        (
            "deadline-passes",
            Some(2),
            None,
            json!([{"task_id": "slow", "assignee": "wait", "payload": {"seconds": 30}},
                   {"task_id": "after", "depends_on": ["slow"]}]),
            "failed",
            &["deadline", "slow (running)", "after (pending)"],
            &[("slow", "cancelled"), ("after", "cancelled")],
        ),
        (
            "deadline-passed",
            Some(-1),
            None,
            json!([{"task_id": "never"}]),
            "failed",
            &["deadline", "never (pending)"],
            &[("never", "cancelled")],
        ),
        (
            "budget-spent",
            None,
            Some(0.0),
            json!([{"task_id": "ask", "assignee": "llm.generate", "payload": generate}]),
            "failed",
            &["budget of $0.00 is spent ($0.00 on LLM calls)", "ask"],
            &[("ask", "cancelled")],
        ),
        (
            "budget-too-small",
            None,
            Some(0.0000001),
            json!([{"task_id": "ask", "assignee": "llm.generate", "payload": generate},
                   {"task_id": "after", "depends_on": ["ask"]}]),
            "failed",
            &["budget of $0.0000001", "cannot cover this LLM call", "cost cap", "nothing was sent"],
            &[("ask", "failed"), ("after", "cancelled")],
        ),
        (
            "budget-enough",
            Some(600),
            Some(1.0),
            json!([{"task_id": "ask", "assignee": "llm.generate", "payload": generate},
                   {"task_id": "after", "depends_on": ["ask"]}]),
            "succeeded",
            &[],
            &[("ask", "succeeded"), ("after", "succeeded")],
        ),
    ];
    for (name, deadline, budget, tasks, state, said, steps) in cases {
        let mut body = json!({"name": name, "tasks": tasks});
        if let Some(secs) = deadline {
            body["deadline"] = json!(chrono::Utc::now() + chrono::Duration::seconds(secs));
        }
        if let Some(budget) = budget {
            body["budget"] = json!(budget);
        }
        let (status, saved) = send(Method::POST, "/api/v1/scheduler/workflows", body).await?;
        assert_eq!(status, 201, "{name}: {saved}");
        let started = std::time::Instant::now();
        let execution = run_to_end(&helix, name).await?;
        let error = execution["error"].as_str().unwrap_or_default();
        println!("{name}: {} {error}", execution["state"]);
        assert_eq!(execution["state"], state, "{name}: {execution:#}");
        for words in said {
            assert!(error.contains(words), "{name}: the error does not say `{words}`: {error}");
        }
        for (step, end) in steps {
            assert_eq!(step_state(&execution, step), *end, "{name}: step {step}: {execution:#}");
        }
        if name == "deadline-passes" {
            assert!(started.elapsed() < Duration::from_secs(20), "{name}: the run outlived its deadline");
        }
    }
    helix.stop().await;
    Ok(())
}
