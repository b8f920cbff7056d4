//! The DAG scheduler's free-standing tasks and templates through the gateway: a task
//! graph driven by hand (ready → run → complete makes dependants ready; fail cancels
//! everything downstream), waves and stats, cycles and unknown dependencies refused,
//! a task completed or run by exactly one of several concurrent callers; the built-in
//! templates listed, previewed, instantiated and run to completion by the engine.

use helix_testkit::{Backend, TestHelix};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{code, read};
use crate::workflows::wait_for;

crate::on_both_backends!(
    tasks_are_driven_through_their_lifecycle,
    concurrent_callers_change_a_task_once,
    templates_are_previewed_instantiated_and_run,
);

/// Every field of `expected` is in `actual` with the same value (objects recursively,
/// arrays item by item).
fn contains(actual: &Value, expected: &Value) -> bool {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => e.iter().all(|(k, v)| a.get(k).is_some_and(|a| contains(a, v))),
        (Value::Array(a), Value::Array(e)) => a.len() == e.len() && a.iter().zip(e).all(|(a, e)| contains(a, e)),
        _ => actual == expected,
    }
}

/// One call of a table: what is sent, the status and the part of the answer expected.
struct Call(Method, &'static str, Value, u16, Value);

async fn check(helix: &TestHelix, calls: &[Call]) -> anyhow::Result<()> {
    for Call(method, path, body, status, expected) in calls {
        let mut request = helix.api(method.clone(), path);
        if !body.is_null() {
            request = request.json(body);
        }
        let (got, answer) = read(request.send().await?).await;
        anyhow::ensure!(got == *status, "{method} {path} {body}: {got} {answer:#}");
        anyhow::ensure!(contains(&answer, expected), "{method} {path} {body}: {answer:#} lacks {expected:#}");
    }
    Ok(())
}

fn error(code: &str) -> Value {
    json!({"error": {"code": code}})
}

async fn tasks_are_driven_through_their_lifecycle(backend: Backend) -> anyhow::Result<()> {
    use Method as M;
    let helix = TestHelix::start(backend).await?;
    let add =
        |task: Value, status: u16, expected: Value| Call(M::POST, "/api/v1/scheduler/tasks", task, status, expected);
    let get = |path: &'static str, expected: Value| Call(M::GET, path, Value::Null, 200, expected);
    let waves = json!({"waves": [
        {"index": 0, "task_ids": ["index", "fetch"]}, {"index": 1, "task_ids": ["parse", "rank"]},
        {"index": 2, "task_ids": ["report"]}, {"index": 3, "task_ids": ["cleanup"]}]});
    check(
        &helix,
        &[
            // fetch → parse ─┐
            // index → rank ──┴→ report → cleanup
            add(json!({"task_id": "fetch", "dependencies": [], "priority": 1}), 201, json!({"state": "ready"})),
            add(json!({"task_id": "index", "priority": 5}), 201, json!({"state": "ready"})),
            add(json!({"task_id": "parse", "dependencies": ["fetch"]}), 201, json!({"state": "pending"})),
            add(json!({"task_id": "rank", "dependencies": ["index"]}), 201, json!({"state": "pending"})),
            add(json!({"task_id": "report", "dependencies": ["parse", "rank"]}), 201, json!({"state": "pending"})),
            add(json!({"task_id": "cleanup", "dependencies": ["report"], "payload": {"keep": 3}}), 201,
                json!({"state": "pending", "payload": {"keep": 3}})),
            add(json!({"task_id": "ghost", "dependencies": ["nope"]}), 400, error("unknown_dependency")),
            // re-declaring fetch after report closes a loop: refused, named, nothing changed
            add(json!({"task_id": "fetch", "dependencies": ["report"]}), 400,
                json!({"error": {"code": "task_cycle", "message": "dependency cycle: fetch -> report -> parse -> fetch"}})),
            add(json!({"task_id": "self", "dependencies": ["self"]}), 400,
                json!({"error": {"code": "task_cycle", "message": "dependency cycle: self -> self"}})),
            Call(M::GET, "/api/v1/scheduler/tasks/self", Value::Null, 404, error("not_found")),
            add(json!({"task_id": "a b"}), 400, error("invalid_task_id")),
            add(json!({"priority": 1}), 422, error("invalid_body")),
            get("/api/v1/scheduler/tasks/fetch", json!({"state": "ready", "dependencies": [], "dependents": ["parse"]})),
            get("/api/v1/scheduler/tasks/waves", waves.clone()),
            get("/api/scheduler/waves", waves),
            get("/api/v1/scheduler/tasks/ready", json!({"task_ids": ["index", "fetch"]})),
            get("/api/v1/scheduler/stats", json!({"total_tasks": 6, "ready": 2, "pending": 4, "waves": 4})),
            Call(M::POST, "/api/v1/scheduler/tasks/parse/run", Value::Null, 409, error("invalid_task_state")),
            Call(M::POST, "/api/v1/scheduler/tasks/fetch/run", json!({"worker": "w1"}), 200,
                json!({"state": "running", "worker": "w1", "attempts": 1})),
            Call(M::POST, "/api/v1/scheduler/tasks/fetch/run", Value::Null, 409, error("invalid_task_state")),
            add(json!({"task_id": "fetch", "priority": 9}), 409, error("task_started")),
            get("/api/v1/scheduler/tasks/ready", json!({"task_ids": ["index"]})),
            Call(M::POST, "/api/v1/scheduler/tasks/fetch/complete", json!({"output": {"pages": 12}}), 200,
                json!({"newly_ready": ["parse"], "task": {"state": "completed", "output": {"pages": 12}}})),
            Call(M::POST, "/api/v1/scheduler/tasks/fetch/complete", Value::Null, 409, error("invalid_task_state")),
            Call(M::POST, "/api/v1/scheduler/tasks/fetch/fail", Value::Null, 409, error("invalid_task_state")),
            // a ready task may be completed without a separate run
            Call(M::POST, "/api/v1/scheduler/tasks/index/complete", Value::Null, 200, json!({"newly_ready": ["rank"]})),
            Call(M::POST, "/api/v1/scheduler/tasks/parse/run", Value::Null, 200, json!({"state": "running"})),
            Call(M::POST, "/api/v1/scheduler/tasks/parse/fail", json!({"error": "bad html"}), 200,
                json!({"cancelled_downstream": ["cleanup", "report"], "task": {"state": "failed", "error": "bad html"}})),
            get("/api/v1/scheduler/tasks/report", json!({"state": "cancelled"})),
            Call(M::POST, "/api/v1/scheduler/tasks/report/run", Value::Null, 409, error("invalid_task_state")),
            Call(M::POST, "/api/v1/scheduler/tasks/rank/complete", Value::Null, 200, json!({"newly_ready": []})),
            get("/api/v1/scheduler/tasks/ready", json!({"task_ids": []})),
            get("/api/scheduler/stats", json!({"total_tasks": 6, "pending": 0, "ready": 0, "running": 0,
                "completed": 3, "failed": 1, "cancelled": 2})),
            Call(M::GET, "/api/v1/scheduler/tasks/nope", Value::Null, 404, error("not_found")),
            Call(M::POST, "/api/v1/scheduler/tasks/nope/complete", Value::Null, 404, error("not_found")),
            Call(M::POST, "/api/v1/scheduler/tasks/rank/complete", json!({"outcome": 1}), 422, error("unknown_field")),
        ],
    )
    .await?;
    helix.stop().await;
    Ok(())
}

/// Many callers at once: of eight runs of a ready task one wins; of eight completes of
/// each of two running tasks one per task wins; their common dependant is reported
/// newly ready exactly once.
async fn concurrent_callers_change_a_task_once(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let tasks = [
        json!({"task_id": "left"}),
        json!({"task_id": "right"}),
        json!({"task_id": "join", "dependencies": ["left", "right"]}),
    ];
    for task in tasks {
        let (status, body) = read(helix.api(Method::POST, "/api/v1/scheduler/tasks").json(&task).send().await?).await;
        assert_eq!(status, 201, "{body}");
    }
    let race = |paths: Vec<String>| {
        futures::future::try_join_all(paths.into_iter().map(|path| {
            let request = helix.api(Method::POST, &path).send();
            async move { anyhow::Ok((path, read(request.await?).await)) }
        }))
    };
    let runs = race(vec!["/api/v1/scheduler/tasks/left/run".to_owned(); 8]).await?;
    let won = runs.iter().filter(|(_, (s, _))| *s == 200).count();
    let lost = runs.iter().filter(|(_, (s, b))| *s == 409 && code(b) == "invalid_task_state").count();
    assert_eq!((won, lost), (1, 7), "{runs:#?}");
    let (status, body) = read(helix.api(Method::POST, "/api/v1/scheduler/tasks/right/run").send().await?).await;
    assert_eq!(status, 200, "{body}");

    let paths = (0..16).map(|i| format!("/api/v1/scheduler/tasks/{}/complete", ["left", "right"][i % 2])).collect();
    let completes = race(paths).await?;
    for task in ["left", "right"] {
        let mine: Vec<_> = completes.iter().filter(|(p, _)| p.contains(&format!("/{task}/"))).collect();
        let won = mine.iter().filter(|(_, (s, _))| *s == 200).count();
        let lost = mine.iter().filter(|(_, (s, b))| *s == 409 && code(b) == "invalid_task_state").count();
        assert_eq!((won, lost), (1, 7), "{task}: {mine:#?}");
    }
    let reported: Vec<&Value> =
        completes.iter().filter_map(|(_, (s, b))| (*s == 200).then_some(&b["newly_ready"])).collect();
    let joins = reported.iter().filter(|r| **r == &json!(["join"])).count();
    assert_eq!(joins, 1, "join is newly ready once: {reported:?}");
    let (_, join) = read(helix.api(Method::GET, "/api/v1/scheduler/tasks/join").send().await?).await;
    assert_eq!(join["state"], "ready", "{join}");
    helix.stop().await;
    Ok(())
}

async fn templates_are_previewed_instantiated_and_run(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let (status, list) = read(helix.api(Method::GET, "/api/v1/scheduler/templates").send().await?).await;
    assert_eq!(status, 200, "{list}");
    let names: Vec<&str> =
        list["templates"].as_array().into_iter().flatten().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, ["research_pipeline", "etl", "review_chain"], "{list:#}");
    let (status, alias) = read(helix.api(Method::GET, "/api/scheduler/templates").send().await?).await;
    assert_eq!((status, alias), (200, list));

    // (template, parameters, waves, critical path, its estimate, a bound payload)
    let table = [
        (
            "research_pipeline",
            json!({"topic": "tides"}),
            json!([["gather_sources"], ["analyze_sources", "extract_claims"], ["synthesize"], ["report"]]),
            json!(["gather_sources", "analyze_sources", "synthesize", "report"]),
            240,
            ("gather_sources", json!({"topic": "tides", "max_sources": 10})),
        ),
        (
            "etl",
            json!({"source": "s3://logs", "destination": "warehouse"}),
            json!([["extract"], ["validate", "transform"], ["load"], ["verify"]]),
            json!(["extract", "transform", "load", "verify"]),
            80,
            ("load", json!({"destination": "warehouse"})),
        ),
        (
            "review_chain",
            json!({"subject": "the RFC"}),
            json!([["draft"], ["technical_review", "style_review"], ["revise"], ["approve"]]),
            json!(["draft", "technical_review", "revise", "approve"]),
            80,
            ("draft", json!({"subject": "the RFC"})),
        ),
    ];
    for (template, parameters, waves, critical_path, secs, (task, payload)) in table {
        let path = format!("/api/v1/scheduler/templates/{template}/preview");
        let (status, plan) =
            read(helix.api(Method::POST, &path).json(&json!({"parameters": parameters})).send().await?).await;
        assert_eq!(status, 200, "{template}: {plan}");
        let got: Vec<&Value> = plan["waves"].as_array().into_iter().flatten().map(|w| &w["task_ids"]).collect();
        assert_eq!(json!(got), waves, "{template}: {plan:#}");
        assert_eq!(
            (&plan["critical_path"], &plan["estimated_duration_secs"]),
            (&critical_path, &json!(secs)),
            "{template}"
        );

        let name = format!("{template}-run");
        let path = format!("/api/v1/scheduler/templates/{template}/instantiate");
        let body = json!({"name": name, "parameters": parameters});
        let (status, saved) = read(helix.api(Method::POST, &path).json(&body).send().await?).await;
        assert_eq!(status, 201, "{template}: {saved}");
        let bound = saved["tasks"].as_array().and_then(|t| t.iter().find(|t| t["task_id"] == task));
        assert_eq!(bound.map(|t| &t["payload"]), Some(&payload), "{template}: {saved:#}");
        let (status, again) = read(helix.api(Method::POST, &path).json(&body).send().await?).await;
        assert_eq!((status, code(&again)), (409, "already_exists"), "{template}: {again}");

        let (status, run) =
            read(helix.api(Method::POST, &format!("/api/v1/scheduler/workflows/{name}/run")).send().await?).await;
        assert_eq!(status, 202, "{template}: {run}");
        let done = wait_for(&helix, run["id"].as_str().unwrap(), "an end", |e| {
            matches!(e["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))
        })
        .await?;
        assert_eq!(done["state"], "succeeded", "{template}: {done:#}");
    }

    // what a template refuses: (template, body, status, code)
    let refused = [
        ("research_pipeline", json!({}), 400, "missing_parameter"),
        ("research_pipeline", json!({"parameters": {"topic": "x", "colour": 1}}), 400, "unknown_parameter"),
        ("etl", json!({"parameters": 7}), 422, "invalid_body"),
        ("nope", json!({}), 404, "not_found"),
    ];
    for (template, body, status, expected) in refused {
        for action in ["preview", "instantiate"] {
            let path = format!("/api/scheduler/templates/{template}/{action}");
            let (got, answer) = read(helix.api(Method::POST, &path).json(&body).send().await?).await;
            assert_eq!((got, code(&answer)), (status, expected), "{action} {template} {body}: {answer}");
        }
    }
    // the CLI over the same routes
    let (ok, out) = crate::workflows::hx(&helix, &["workflow", "templates"]).await?;
    assert!(ok && out.contains("review_chain") && out.contains("topic") && out.contains("required"), "{out}");
    let args = ["workflow", "instantiate", "etl", "--name", "cli-etl", "--params", r#"{"source": "a.csv"}"#];
    let (ok, out) = crate::workflows::hx(&helix, &args).await?;
    assert!(ok && out.contains("cli-etl stored from etl: 5 tasks"), "{out}");
    let (ok, out) = crate::workflows::hx(&helix, &["workflow", "instantiate", "etl"]).await?;
    assert!(!ok && out.contains("missing_parameter"), "{out}");
    helix.stop().await;
    Ok(())
}
