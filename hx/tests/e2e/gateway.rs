//! What the gateway does around the API: health, readiness, request ids, OpenAPI.

use helix_testkit::{Backend, TestEnv, TestHelix};
use hx::fleet::Role;
use reqwest::Method;

use crate::support::read;

crate::on_both_backends!(health_ready_request_id_and_openapi);

async fn health_ready_request_id_and_openapi(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let (status, health) = read(helix.http.get(helix.url("/health")).send().await?).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["status"], "ok");
    for dependency in ["storage", "search", "graph", "llm-router", "orchestrator", "jobs", "notifications", "database"]
    {
        assert_eq!(health["checks"][dependency], "ok", "{dependency}: {health}");
    }
    let (status, ready) = read(helix.http.get(helix.url("/ready")).send().await?).await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")));

    let response = helix.api(Method::GET, "/api/v1/nodes").header("x-request-id", "trace-me-42").send().await?;
    assert_eq!(response.headers()["x-request-id"], "trace-me-42");
    let response = helix.http.get(helix.url("/api/v1/nodes/x")).send().await?;
    assert_eq!(response.status(), 401);
    assert!(!response.headers()["x-request-id"].is_empty(), "a request id is made when none is sent");

    let (status, _) = read(helix.http.get(helix.url("/api/v1/openapi.json")).send().await?).await;
    assert_eq!(status, 401, "the OpenAPI document is an /api route too");
    let (status, doc) = read(helix.api(Method::GET, "/api/v1/openapi.json").send().await?).await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    for path in ["/api/v1/nodes", "/api/v1/nodes/{id}", "/api/v1/nodes/bulk", "/api/v1/recall", "/health", "/ready"] {
        assert!(doc["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
    assert!(doc["components"]["schemas"]["NodeBody"].is_object());
    helix.stop().await;
    Ok(())
}

/// With storage unreachable, /health answers 503 and names it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_the_failing_dependency() -> anyhow::Result<()> {
    let mut env = TestEnv::new(Backend::Embedded).await?;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    env.config.endpoints.storage = format!("http://{dead}");
    let others: Vec<Role> = Role::ALL.into_iter().filter(|r| *r != Role::Storage).collect();
    let node = env.start(&others).await?;
    let (status, health) = read(reqwest::get(format!("{}/health", node.gateway_url().unwrap())).await?).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health["status"], "degraded");
    assert_eq!(health["failing"], serde_json::json!(["storage"]));
    assert_eq!(health["checks"]["search"], "ok");
    node.stop().await;
    Ok(())
}

crate::on_both_backends!(tower_and_board_show_recent_activity);

async fn tower_and_board_show_recent_activity(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let (status, _) = read(helix.http.get(helix.url("/tower")).send().await?).await;
    assert_eq!(status, 401, "events carry content: the tower needs a key");
    let (_, node) =
        read(helix.api(Method::POST, "/api/v1/nodes").json(&serde_json::json!({"content": "watched"})).send().await?)
            .await;
    let id = node["id"].clone();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let tower = loop {
        let (status, tower) = read(helix.api(Method::GET, "/tower?limit=10").send().await?).await;
        assert_eq!(status, 200, "{tower}");
        if tower["events"].as_array().is_some_and(|e| !e.is_empty()) {
            break tower;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the tower never showed the event");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let event = &tower["events"][0];
    assert_eq!(
        (event["type"].as_str(), &event["payload"]["id"], event["source"].as_str()),
        (Some("helix.node.created"), &id, Some("storage"))
    );

    let (status, board) = read(helix.api(Method::GET, "/api/board").send().await?).await;
    assert_eq!(status, 200, "{board}");
    assert_eq!(board["status"], "ok");
    assert_eq!(board["services"]["storage"], "ok");
    assert!(board["events_seen"].as_u64() >= Some(1));
    assert_eq!(board["events_by_type"]["helix.node.created"], 1);
    assert_eq!(board["recent"][0]["payload"]["id"], id);
    helix.stop().await;
    Ok(())
}
