//! The workflow engine through the gateway: a workflow with parallel branches, a
//! for_each loop and quality gates runs to completion; the whole Helix restarted while
//! it runs resumes it without running finished steps again; cancel stops a running
//! execution within 2 s; `hx up` killed with SIGKILL mid-run resumes it once restarted
//! (after the dead owner's lease lapses); bad definitions are refused with their reason; every example
//! in examples/workflows validates and the offline ones run.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use helix_testkit::{Backend, TestEnv, TestHelix};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{code, read};

crate::on_both_backends!(
    runs_resumes_after_restart_and_cancels,
    a_killed_orchestrator_resumes_after_its_lease_lapses,
    refuses_bad_definitions_and_runs_the_examples,
    jobs_sub_workflows_http_and_the_cli,
    cancel_reaches_running_sub_workflows,
    http_steps_reach_public_or_allowed_hosts_only,
);

const DEMO: &str = r#"
name = "resume-demo"
[variables]
tag = "t"
topics = ["alpha", "beta", "gamma"]
pause_ms = 3000

[[steps]]
id = "seed"
action = "store"
config = { title = "seed {{var.tag}}", content = "the seed", tags = ["{{var.tag}}"] }

[[steps]]
id = "left"
action = "set"
depends_on = ["seed"]
config = { value = { score = 0.9, from = "{{result.seed.id}}" } }
gate = { kind = "threshold", field = "score", min = 0.5 }

[[steps]]
id = "right"
action = "store"
depends_on = ["seed"]
parallel_group = "branches"
for_each = "{{var.topics}}"
config = { title = "{{loop.item}} {{var.tag}}", content = "topic {{loop.index}}", tags = ["{{var.tag}}"] }
gate = { kind = "json_schema", schema = { type = "array", minItems = 3, items = { type = "object", required = ["id", "title"] } } }

[[steps]]
id = "pause"
action = "wait"
depends_on = ["left", "right"]
config = { ms = "{{var.pause_ms}}" }

[[steps]]
id = "report"
action = "set"
depends_on = ["pause", "left", "right"]
config = { value = { summary = "done {{result.left.from}}", second = "{{result.right.1.title}}" } }
gate = { kind = "regex", field = "summary", pattern = "^done [0-9a-f-]{36}$" }
"#;

async fn execution(helix: &TestHelix, id: &str) -> anyhow::Result<Value> {
    let (status, body) =
        read(helix.api(Method::GET, &format!("/api/v1/workflows/executions/{id}")).send().await?).await;
    anyhow::ensure!(status == 200, "{status} {body}");
    Ok(body)
}

pub(crate) async fn wait_for(
    helix: &TestHelix,
    id: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let e = execution(helix, id).await?;
        if done(&e) {
            return Ok(e);
        }
        anyhow::ensure!(Instant::now() < deadline, "execution {id} never got to {what}: {e:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn step<'a>(e: &'a Value, id: &str) -> &'a Value {
    e["steps"].as_array().and_then(|s| s.iter().find(|s| s["step_id"] == id)).unwrap_or(&Value::Null)
}

async fn start(helix: &TestHelix, workflow: &str, variables: Value) -> anyhow::Result<String> {
    let (status, run) = read(
        helix
            .api(Method::POST, &format!("/api/v1/workflows/{workflow}/execute"))
            .json(&json!({"variables": variables}))
            .send()
            .await?,
    )
    .await;
    anyhow::ensure!(status == 202, "{status} {run}");
    Ok(run["id"].as_str().unwrap_or_default().to_owned())
}

async fn runs_resumes_after_restart_and_cancels(backend: Backend) -> anyhow::Result<()> {
    let mut helix = TestHelix::start(backend).await?;
    let (status, workflow) =
        read(helix.api(Method::POST, "/api/v1/workflows").json(&json!({"definition": DEMO})).send().await?).await;
    assert_eq!(status, 201, "{workflow}");
    assert_eq!(workflow["waves"], json!([["seed"], ["left", "right"], ["pause"], ["report"]]));
    let workflow_id = workflow["id"].as_str().unwrap().to_owned();

    // run; restart the whole Helix while `pause` waits, after seed/left/right finished
    let tag = format!("wf-{}", uuid::Uuid::now_v7().simple());
    let id = start(&helix, &workflow_id, json!({"tag": tag})).await?;
    let before = wait_for(&helix, &id, "pause running", |e| step(e, "pause")["state"] == "running").await?;
    for finished in ["seed", "left", "right"] {
        assert_eq!(step(&before, finished)["state"], "succeeded", "{before:#}");
    }
    helix.restart().await?;
    let done =
        wait_for(&helix, &id, "an end", |e| matches!(e["state"].as_str(), Some("succeeded" | "failed" | "cancelled")))
            .await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    // finished steps ran once; the interrupted one ran again
    for (finished, attempts) in [("seed", 1), ("left", 1), ("right", 1), ("pause", 2), ("report", 1)] {
        assert_eq!(step(&done, finished)["attempt"], attempts, "{finished}: {done:#}");
    }
    let results = &done["results"];
    assert_eq!(results["right"].as_array().map(Vec::len), Some(3), "{results:#}");
    assert_eq!(results["right"][1]["title"], format!("beta {tag}"));
    assert_eq!(results["report"]["second"], format!("beta {tag}"));
    assert_eq!(results["report"]["summary"], format!("done {}", results["seed"]["id"].as_str().unwrap()));
    assert_eq!(results["left"]["score"], 0.9);
    // the store steps wrote 1 + 3 nodes, not more: nothing finished ran twice
    let (status, nodes) =
        read(helix.api(Method::GET, &format!("/api/v1/nodes?tag={tag}&limit=100")).send().await?).await;
    assert_eq!(status, 200, "{nodes}");
    let mut titles: Vec<String> =
        nodes["nodes"].as_array().unwrap().iter().map(|n| n["title"].as_str().unwrap().to_owned()).collect();
    titles.sort();
    assert_eq!(titles, [format!("alpha {tag}"), format!("beta {tag}"), format!("gamma {tag}"), format!("seed {tag}")]);

    // the progress stream replays from the start and ends after the terminal event
    let response = helix.api(Method::GET, &format!("/api/scheduler/executions/{id}/progress")).send().await?;
    assert_eq!(response.status().as_u16(), 200);
    let stream = tokio::time::timeout(Duration::from_secs(10), response.text()).await??;
    let events: Vec<Value> =
        stream.lines().filter_map(|l| l.strip_prefix("data: ")).map(|d| serde_json::from_str(d).unwrap()).collect();
    let kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    for kind in ["created", "started", "step_completed", "resumed", "succeeded"] {
        assert!(kinds.contains(&kind), "{kind} missing from {kinds:?}");
    }
    assert_eq!(kinds.last(), Some(&"succeeded"));
    let sequences: Vec<u64> = events.iter().map(|e| e["sequence"].as_u64().unwrap()).collect();
    assert_eq!(sequences, (1..=sequences.len() as u64).collect::<Vec<_>>());

    // cancel stops a running execution within 2 s; what had not run never does
    let id = start(&helix, &workflow_id, json!({"tag": format!("{tag}-c"), "pause_ms": 60000})).await?;
    wait_for(&helix, &id, "pause running", |e| step(e, "pause")["state"] == "running").await?;
    let asked = Instant::now();
    let (status, cancelled) = read(
        helix.api(Method::POST, &format!("/api/v1/workflows/executions/{id}/cancel")).json(&json!({})).send().await?,
    )
    .await;
    assert_eq!(status, 200, "{cancelled}");
    let ended = wait_for(&helix, &id, "cancelled", |e| e["state"] == "cancelled").await?;
    assert!(asked.elapsed() < Duration::from_secs(2), "cancel took {:?}", asked.elapsed());
    assert_eq!(step(&ended, "pause")["state"], "cancelled", "{ended:#}");
    assert_eq!(step(&ended, "report")["attempt"], 0, "{ended:#}");
    let (status, again) =
        read(helix.api(Method::POST, &format!("/api/v1/workflows/executions/{id}/cancel")).send().await?).await;
    assert_eq!((status, code(&again)), (409, "not_cancellable"));
    // the scheduler family lists the same executions
    let (status, listed) =
        read(helix.api(Method::GET, "/api/scheduler/executions?state=cancelled").send().await?).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["executions"][0]["id"], json!(id));

    // a gate that keeps failing fails the step after its attempts, and the execution
    let failing = r#"{"name": "gated", "steps": [
        {"id": "low", "action": "set", "retry": {"attempts": 2, "backoff_ms": 10},
         "config": {"value": {"score": 0.1}}, "gate": {"kind": "threshold", "field": "score", "min": 0.5}},
        {"id": "after", "action": "set", "depends_on": ["low"]}]}"#;
    let (status, gated) =
        read(helix.api(Method::POST, "/api/v1/workflows").json(&json!({"definition": failing})).send().await?).await;
    assert_eq!(status, 201, "{gated}");
    let id = start(&helix, gated["id"].as_str().unwrap(), json!({})).await?;
    let failed =
        wait_for(&helix, &id, "an end", |e| matches!(e["state"].as_str(), Some("succeeded" | "failed"))).await?;
    assert_eq!(failed["state"], "failed", "{failed:#}");
    assert!(failed["error"].as_str().unwrap().contains("quality gate failed"), "{failed:#}");
    assert_eq!(step(&failed, "low")["attempt"], 2);
    assert_eq!(step(&failed, "after")["attempt"], 0);
    helix.stop().await;
    Ok(())
}

async fn refuses_bad_definitions_and_runs_the_examples(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let post = |definition: &str| helix.api(Method::POST, "/api/v1/workflows").json(&json!({"definition": definition}));
    let step = |extra: &str| format!("name = \"x\"\n[[steps]]\nid = \"a\"\naction = \"set\"\n{extra}\n");
    let cycle = "name = \"x\"\n[[steps]]\nid = \"a\"\naction = \"set\"\ndepends_on = [\"b\"]\n\
                 [[steps]]\nid = \"b\"\naction = \"set\"\ndepends_on = [\"a\"]\n";
    let cases = [
        (post(cycle), 400, "workflow_cycle", "a -> b -> a"),
        (post(&step("depends_on = [\"ghost\"]")), 400, "unknown_step", "ghost"),
        (post(&step("config = { v = \"{{result.ghost.x}}\" }")), 400, "unknown_reference", "ghost"),
        (post(&step("config = { v = \"{{var.nope}}\" }")), 400, "unknown_variable", "var.nope"),
        (post(&step("config = { v = \"{{var.x\" }")), 400, "invalid_interpolation", "step `a`"),
        (post(&step("when = \"==\"")), 400, "invalid_condition", "step `a`"),
        (post("name = ["), 400, "invalid_definition", "toml"),
        (post("{\"name\": 1}"), 400, "invalid_definition", "json"),
        (
            helix.api(Method::POST, "/api/v1/workflows").json(&json!({"definition": 3})),
            400,
            "invalid_definition",
            "TOML",
        ),
        (
            helix.api(Method::POST, "/api/v1/workflows").json(&json!({"definition": "x", "format": "yaml"})),
            400,
            "invalid_format",
            "yaml",
        ),
        (helix.api(Method::POST, "/api/v1/workflows").json(&json!({"nope": 1})), 422, "unknown_field", "`nope`"),
        (helix.api(Method::GET, "/api/v1/workflows/nope"), 400, "invalid_id", "nope"),
        (helix.api(Method::GET, &format!("/api/v1/workflows/{}", uuid::Uuid::now_v7())), 404, "not_found", ""),
        (helix.api(Method::POST, &format!("/api/v1/workflows/{}/execute", uuid::Uuid::now_v7())), 404, "not_found", ""),
        (
            helix.api(Method::GET, &format!("/api/v1/workflows/executions/{}", uuid::Uuid::now_v7())),
            404,
            "not_found",
            "",
        ),
        (helix.api(Method::GET, "/api/v1/workflows/executions?state=nope"), 400, "invalid_state", "nope"),
    ];
    for (request, status, expected, needle) in cases {
        let (got, body) = read(request.send().await?).await;
        assert_eq!((got, code(&body)), (status, expected), "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(needle), "`{message}` lacks `{needle}`");
    }

    // every example validates; the offline ones run to success
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/workflows");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?.map(|e| e.map(|e| e.path())).collect::<Result<_, _>>()?;
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    let mut ran = 0;
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let format = if file.extension().is_some_and(|e| e == "json") { "json" } else { "toml" };
        let body = json!({"format": format, "definition": text});
        let (status, plan) =
            read(helix.api(Method::POST, "/api/v1/workflows/validate").json(&body).send().await?).await;
        assert_eq!(status, 200, "{}: {plan}", file.display());
        assert_eq!(plan["id"], "", "validate stores nothing");
        if !plan["tags"].as_array().unwrap().contains(&json!("offline")) {
            continue;
        }
        let (status, workflow) = read(helix.api(Method::POST, "/api/v1/workflows").json(&body).send().await?).await;
        assert_eq!(status, 201, "{workflow}");
        let id = start(&helix, workflow["id"].as_str().unwrap(), json!({})).await?;
        let done = wait_for(&helix, &id, "an end", |e| {
            matches!(e["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))
        })
        .await?;
        assert_eq!(done["state"], "succeeded", "{}: {done:#}", file.display());
        ran += 1;
    }
    assert!(ran >= 3, "only {ran} examples ran");
    let (_, listed) = read(helix.api(Method::GET, "/api/v1/workflows").send().await?).await;
    assert_eq!(listed["workflows"].as_array().map(Vec::len), Some(ran));

    // read, replace (optimistic concurrency), delete
    let id = listed["workflows"][0]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/workflows/{id}");
    let (status, got) = read(helix.api(Method::GET, &path).send().await?).await;
    assert_eq!((status, &got["version"]), (200, &json!(1)), "{got}");
    let replacement = "name = \"renamed\"\n[[steps]]\nid = \"only\"\naction = \"wait\"\nconfig = { ms = 1 }\n";
    let put = |version: i64| {
        helix.api(Method::PUT, &path).json(&json!({"definition": replacement, "expected_version": version}))
    };
    let (status, stale) = read(put(7).send().await?).await;
    assert_eq!((status, code(&stale)), (409, "version_conflict"), "{stale}");
    let (status, replaced) = read(put(1).send().await?).await;
    assert_eq!((status, &replaced["version"], &replaced["name"]), (200, &json!(2), &json!("renamed")), "{replaced}");
    assert_eq!(replaced["waves"], json!([["only"]]));
    let (status, refused) = read(helix.api(Method::PUT, &path).json(&json!({"definition": cycle})).send().await?).await;
    assert_eq!((status, code(&refused)), (400, "workflow_cycle"), "{refused}");
    let (status, _) = read(helix.api(Method::DELETE, &path).send().await?).await;
    assert_eq!(status, 204);
    let (status, gone) = read(helix.api(Method::GET, &path).send().await?).await;
    assert_eq!((status, code(&gone)), (404, "not_found"), "{gone}");
    helix.stop().await;
    Ok(())
}

const HX: &str = env!("CARGO_BIN_EXE_hx");

async fn helix_with(
    backend: Backend,
    configure: impl FnOnce(&mut helix_runtime::HelixConfig),
) -> anyhow::Result<TestHelix> {
    let mut env = TestEnv::new(backend).await?;
    configure(&mut env.config);
    let node = env.start(&hx::fleet::Role::ALL).await?;
    let base_url = node.gateway_url().context("gateway role runs")?;
    Ok(TestHelix { env, node: Some(node), base_url, http: reqwest::Client::new() })
}

/// `http` steps keep to the outbound policy: an internal address fails the step with
/// its class (never the target's body), an allowed host:port works.
async fn http_steps_reach_public_or_allowed_hosts_only(backend: Backend) -> anyhow::Result<()> {
    use crate::jobs::{http_answer, http_target};
    let allowed = http_target(|path| match path {
        "/to-metadata" => http_answer("302 Found", "location: http://169.254.169.254/latest/meta-data/\r\n", ""),
        _ => http_answer("200 OK", "", "fine"),
    })
    .await?;
    let helix = helix_with(backend, |config| config.outbound.allowed_hosts = vec![allowed.to_string()]).await?;
    let gateway_port = reqwest::Url::parse(&helix.base_url)?.port().context("gateway port")?;
    let step = json!({"id": "get", "action": "http", "config": {"url": "{{var.url}}"}});
    let definition = json!({"name": "fetch", "variables": {"url": ""}, "steps": [step]});
    let (status, workflow) =
        read(helix.api(Method::POST, "/api/v1/workflows").json(&json!({"definition": definition})).send().await?).await;
    assert_eq!(status, 201, "{workflow}");
    let workflow = workflow["id"].as_str().unwrap().to_owned();
    // (url, Ok(body) or Err(a part of the reason))
    let cases: Vec<(String, Result<&str, &str>)> = vec![
        (format!("http://{allowed}/"), Ok("fine")),
        (helix.url("/health"), Err("127.0.0.1 is a loopback address")),
        (format!("http://localhost:{gateway_port}/health"), Err("localhost resolves to")),
        (format!("http://[::1]:{gateway_port}/health"), Err("::1 is a loopback address")),
        ("http://169.254.169.254/latest/meta-data/".into(), Err("169.254.169.254 is a link-local address")),
        ("http://192.168.1.1/".into(), Err("a private network address")),
        (format!("http://{allowed}/to-metadata"), Err("169.254.169.254 is a link-local address")),
    ];
    for (url, expected) in cases {
        let id = start(&helix, &workflow, json!({"url": url})).await?;
        let done =
            wait_for(&helix, &id, "an end", |e| matches!(e["state"].as_str(), Some("succeeded" | "failed"))).await?;
        match expected {
            Ok(body) => {
                assert_eq!(
                    (&done["state"], &done["results"]["get"]["body"]),
                    (&json!("succeeded"), &json!(body)),
                    "{url}: {done:#}"
                )
            }
            Err(reason) => {
                let error = done["error"].as_str().unwrap_or_default();
                assert_eq!(done["state"], "failed", "{url}: {done:#}");
                assert!(error.contains(reason) && error.contains("refused"), "{url}: {error}");
            }
        }
    }
    helix.stop().await;
    Ok(())
}

pub(crate) async fn hx(helix: &TestHelix, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let output = tokio::process::Command::new(HX)
        .args(args)
        .args(["--server", &helix.base_url, "--api-key", &helix.env.admin_key])
        .output()
        .await?;
    let text = String::from_utf8(output.stdout)? + &String::from_utf8(output.stderr)?;
    Ok((output.status.success(), text))
}

/// Steps that reach other services: a job on the jobs service (its built-in worker), a
/// sub-workflow, an HTTP call; and `hx workflow` run --wait, ls, show, cancel.
async fn jobs_sub_workflows_http_and_the_cli(backend: Backend) -> anyhow::Result<()> {
    // the http step calls this Helix's own /health, on loopback: allowed by name
    let helix = helix_with(backend, |config| config.outbound.allowed_hosts = vec!["127.0.0.1".into()]).await?;
    let child = r#"{"name": "child", "variables": {"n": 1},
        "steps": [{"id": "double", "action": "set", "config": {"value": {"twice": "{{var.n}}{{var.n}}"}}}]}"#;
    let (status, child) =
        read(helix.api(Method::POST, "/api/v1/workflows").json(&json!({"definition": child})).send().await?).await;
    assert_eq!(status, 201, "{child}");
    let parent = json!({
        "name": "parent",
        "variables": {"child": child["id"], "health": helix.url("/health")},
        "steps": [
            {"id": "echo", "action": "job", "config": {"kind": "echo", "payload": {"said": "hi"}}},
            {"id": "sub", "action": "workflow", "config": {"workflow_id": "{{var.child}}", "variables": {"n": 7}}},
            {"id": "health", "action": "http", "config": {"url": "{{var.health}}"}},
            {"id": "join", "action": "set", "depends_on": ["echo", "sub", "health"],
             "config": {"value": {"said": "{{result.echo.said}}", "twice": "{{result.sub.double.twice}}", "status": "{{result.health.status}}"}}}
        ]
    });
    let (status, parent) =
        read(helix.api(Method::POST, "/api/v1/workflows").json(&json!({"definition": parent})).send().await?).await;
    assert_eq!(status, 201, "{parent}");
    let id = start(&helix, parent["id"].as_str().unwrap(), json!({})).await?;
    let done = wait_for(&helix, &id, "an end", |e| matches!(e["state"].as_str(), Some("succeeded" | "failed"))).await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["results"]["join"], json!({"said": "hi", "twice": "77", "status": 200}), "{done:#}");
    // the sub-workflow is an execution of its own, started by the parent
    let (_, children) = read(
        helix
            .api(Method::GET, &format!("/api/v1/workflows/executions?workflow_id={}", child["id"].as_str().unwrap()))
            .send()
            .await?,
    )
    .await;
    assert_eq!(children["executions"][0]["triggered_by"], json!(id), "{children:#}");

    // a scheduler task graph: previewed (waves by priority, critical path) and run by the engine
    let graph = json!({"name": "nightly", "tasks": [
        {"task_id": "fetch", "priority": 1, "estimated_duration_secs": 10, "payload": {"score": 0.9},
         "quality_gates": [{"name": "good", "kind": "min_score", "threshold": 0.5}]},
        {"task_id": "index", "priority": 5, "estimated_duration_secs": 2, "assignee": "echo", "payload": {"n": 1}},
        {"task_id": "report", "dependencies": ["fetch", "index"], "estimated_duration_secs": 1,
         "assignee": "wait", "payload": {"ms": 5}}
    ]});
    let (status, saved) = read(helix.api(Method::POST, "/api/v1/scheduler/workflows").json(&graph).send().await?).await;
    assert_eq!(status, 201, "{saved}");
    let (status, again) = read(helix.api(Method::POST, "/api/scheduler/workflows").json(&graph).send().await?).await;
    assert_eq!((status, code(&again)), (409, "already_exists"), "{again}");
    let cyclic = json!({"name": "loop", "tasks": [{"task_id": "a", "dependencies": ["b"]}, {"task_id": "b", "dependencies": ["a"]}]});
    let (status, refused) =
        read(helix.api(Method::POST, "/api/v1/scheduler/workflows").json(&cyclic).send().await?).await;
    assert_eq!((status, code(&refused)), (400, "workflow_cycle"), "{refused}");
    let (status, plan) = read(helix.api(Method::POST, "/api/scheduler/workflows/nightly/preview").send().await?).await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(plan["waves"][0]["task_ids"], json!(["index", "fetch"]));
    assert_eq!((&plan["critical_path"], &plan["estimated_duration_secs"]), (&json!(["fetch", "report"]), &json!(11)));
    let (status, run) = read(helix.api(Method::POST, "/api/scheduler/workflows/nightly/run").send().await?).await;
    assert_eq!(status, 202, "{run}");
    let done = wait_for(&helix, run["id"].as_str().unwrap(), "an end", |e| {
        matches!(e["state"].as_str(), Some("succeeded" | "failed"))
    })
    .await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(done["results"]["index"], json!({"n": 1}), "the echo job's result");
    let (status, _) = read(helix.api(Method::DELETE, "/api/v1/scheduler/workflows/nightly").send().await?).await;
    assert_eq!(status, 204);
    let (status, gone) = read(helix.api(Method::POST, "/api/scheduler/workflows/nightly/preview").send().await?).await;
    assert_eq!((status, code(&gone)), (404, "not_found"), "{gone}");

    // the CLI: run --wait prints the steps and exits 0; ls and show find it; cancel stops one
    let hello = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/workflows/hello.toml");
    let (ok, out) = hx(&helix, &["workflow", "run", hello.to_str().unwrap(), "--wait"]).await?;
    assert!(ok, "{out}");
    assert!(out.contains("succeeded") && out.contains("shout") && out.contains("skipped"), "{out}");
    let (ok, out) = hx(&helix, &["workflow", "ls", "--state", "succeeded"]).await?;
    assert!(ok && out.contains("hello") && out.contains("parent"), "{out}");
    let (ok, out) = hx(&helix, &["workflow", "show", &id]).await?;
    assert!(ok && out.contains("join") && out.contains("succeeded"), "{out}");
    let (ok, out) = hx(&helix, &["workflow", "validate", hello.to_str().unwrap()]).await?;
    assert!(ok && out.contains("wave 0: greet, pause"), "{out}");
    let slow = json!({"name": "slow", "steps": [{"id": "nap", "action": "wait", "config": {"ms": 60000}}]});
    let (_, slow) =
        read(helix.api(Method::POST, "/api/v1/workflows").json(&json!({"definition": slow})).send().await?).await;
    let napping = start(&helix, slow["id"].as_str().unwrap(), json!({})).await?;
    wait_for(&helix, &napping, "nap running", |e| step(e, "nap")["state"] == "running").await?;
    let (ok, out) = hx(&helix, &["workflow", "cancel", &napping]).await?;
    assert!(ok && out.contains("cancelled"), "{out}");
    let (ok, out) = hx(&helix, &["workflow", "show", "nope"]).await?;
    assert!(!ok && out.contains("invalid_id"), "{out}");
    helix.stop().await;
    Ok(())
}

/// `hx up` in its own process, SIGKILLed while `pause` waits (no shutdown, the lease
/// left held by a dead owner), then started again on the same data: the new process
/// claims the run once the lease lapses and finishes it, finished steps not run again.
async fn a_killed_orchestrator_resumes_after_its_lease_lapses(backend: Backend) -> anyhow::Result<()> {
    let env = TestEnv::new(backend).await?;
    let mut first = crate::cli::hx_up(&env).await?;
    let key = first.printed_key.clone().context("the first start prints the admin key")?;
    let http = reqwest::Client::new();
    let call = |url: &str, method: Method, path: &str| http.request(method, format!("{url}{path}")).bearer_auth(&key);
    let (status, workflow) =
        read(call(&first.url, Method::POST, "/api/v1/workflows").json(&json!({"definition": DEMO})).send().await?)
            .await;
    assert_eq!(status, 201, "{workflow}");
    let tag = format!("kill-{}", uuid::Uuid::now_v7().simple());
    let path = format!("/api/v1/workflows/{}/execute", workflow["id"].as_str().unwrap());
    let (status, run) =
        read(call(&first.url, Method::POST, &path).json(&json!({"variables": {"tag": tag}})).send().await?).await;
    assert_eq!(status, 202, "{run}");
    let execution = format!("/api/v1/workflows/executions/{}", run["id"].as_str().unwrap());
    let wait_for = |url: String, what: &'static str, done: fn(&Value) -> bool| {
        let request = call(&url, Method::GET, &execution);
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let (status, e) = read(request.try_clone().unwrap().send().await?).await;
                anyhow::ensure!(status == 200, "{status} {e}");
                if done(&e) {
                    return anyhow::Ok(e);
                }
                anyhow::ensure!(Instant::now() < deadline, "the execution never got to {what}: {e:#}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    wait_for(first.url.clone(), "pause running", |e| step(e, "pause")["state"] == "running").await?;

    first.child.start_kill()?;
    first.child.wait().await?;
    let second = crate::cli::hx_up(&env).await?;
    let done = wait_for(second.url.clone(), "an end", |e| {
        matches!(e["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))
    })
    .await?;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    for (finished, attempts) in [("seed", 1), ("left", 1), ("right", 1), ("pause", 2), ("report", 1)] {
        assert_eq!(step(&done, finished)["attempt"], attempts, "{finished}: {done:#}");
    }
    let (status, nodes) =
        read(call(&second.url, Method::GET, &format!("/api/v1/nodes?tag={tag}&limit=100")).send().await?).await;
    assert_eq!(status, 200, "{nodes}");
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(4), "seed + 3 topics, none twice: {nodes:#}");
    crate::cli::terminate(second).await
}

/// A cancel reaches down a chain of sub-workflows: parent → middle → a leaf waiting a
/// minute; cancelling the parent ends all three, the leaf's wait cut short.
async fn cancel_reaches_running_sub_workflows(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let mut workflow_id = json!(null);
    for (name, step) in [
        ("leaf", json!({"id": "nap", "action": "wait", "config": {"ms": 60000}})),
        ("middle", json!({"id": "sub", "action": "workflow", "config": {"workflow_id": "{{var.below}}"}})),
        ("parent", json!({"id": "sub", "action": "workflow", "config": {"workflow_id": "{{var.below}}"}})),
    ] {
        let definition = json!({"name": name, "variables": {"below": workflow_id}, "steps": [step]});
        let (status, saved) =
            read(helix.api(Method::POST, "/api/v1/workflows").json(&json!({"definition": definition})).send().await?)
                .await;
        assert_eq!(status, 201, "{name}: {saved}");
        workflow_id = saved["id"].clone();
    }
    let parent = start(&helix, workflow_id.as_str().unwrap(), json!({})).await?;
    // the running executions below the parent, found by who triggered them
    let mut chain = vec![parent.clone()];
    let deadline = Instant::now() + Duration::from_secs(30);
    while chain.len() < 3 {
        let (_, listed) =
            read(helix.api(Method::GET, "/api/v1/workflows/executions?state=running").send().await?).await;
        let below =
            listed["executions"].as_array().into_iter().flatten().find(|e| e["triggered_by"] == json!(chain.last()));
        match below {
            Some(e) => chain.push(e["id"].as_str().unwrap_or_default().to_owned()),
            None => {
                anyhow::ensure!(Instant::now() < deadline, "the chain never got to run: {chain:?} {listed:#}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    wait_for(&helix, &chain[2], "nap running", |e| step(e, "nap")["state"] == "running").await?;
    let asked = Instant::now();
    let (status, cancelled) =
        read(helix.api(Method::POST, &format!("/api/v1/workflows/executions/{parent}/cancel")).send().await?).await;
    assert_eq!(status, 200, "{cancelled}");
    for id in &chain {
        let ended = wait_for(&helix, id, "an end", |e| {
            matches!(e["state"].as_str(), Some("succeeded" | "failed" | "cancelled"))
        })
        .await?;
        assert_eq!(ended["state"], "cancelled", "{ended:#}");
    }
    assert!(asked.elapsed() < Duration::from_secs(5), "the chain took {:?} to stop", asked.elapsed());
    helix.stop().await;
    Ok(())
}
