//! `helix.node.*` events: one per committed write, none for a refused one, and exactly
//! once even when the storage service dies between commit and publish.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use helix_events::{Delivery, Subscription};
use helix_proto::v1 as pb;
use helix_proto::v1::storage_service_client::StorageServiceClient;
use helix_runtime::grpc::GrpcChannel;
use helix_testkit::{Backend, TestEnv, TestHelix};
use reqwest::Method;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::support::read;

crate::on_both_backends!(events_follow_commits_only);

async fn next_event(events: &mut Subscription, within: Duration) -> Option<Delivery> {
    let delivery = tokio::time::timeout(within, events.next()).await.ok()??;
    let delivery = delivery.expect("a delivery");
    Some(delivery)
}

async fn events_follow_commits_only(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let bus = match backend {
        Backend::Embedded => helix.node.as_ref().unwrap().bus(),
        Backend::Fleet => helix.env.bus().await?,
    };
    let mut events = bus.subscribe("helix.node.*", "e2e-observer").await?;

    let (_, node) = read(helix.api(Method::POST, "/api/v1/nodes").json(&json!({"content": "one"})).send().await?).await;
    let id = node["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/nodes/{id}");
    // refused writes: they must announce nothing
    helix.api(Method::PUT, &path).json(&json!({"version": 7, "content": "stale"})).send().await?;
    helix
        .api(Method::POST, "/api/v1/nodes/bulk")
        .json(&json!({"nodes": [{"content": "a"}, {"content": ""}]}))
        .send()
        .await?;
    helix.api(Method::PUT, &path).json(&json!({"version": 1, "content": "two"})).send().await?;
    helix.api(Method::DELETE, &path).send().await?;

    let mut seen = Vec::new();
    while seen.len() < 3 {
        let delivery = next_event(&mut events, Duration::from_secs(20)).await.expect("an event per committed write");
        let e = &delivery.envelope;
        assert_eq!((e.spec_version, e.source.as_str()), (1, "storage"));
        assert_eq!(e.payload["id"], json!(id));
        seen.push((e.r#type.clone(), e.payload["version"].as_i64().unwrap(), e.payload["content"].clone()));
        delivery.ack().await?;
    }
    assert_eq!(
        seen,
        [
            ("helix.node.created".to_owned(), 1, json!("one")),
            ("helix.node.updated".to_owned(), 2, json!("two")),
            ("helix.node.deleted".to_owned(), 2, json!(null)),
        ]
    );
    assert!(next_event(&mut events, Duration::from_millis(500)).await.is_none(), "no event for a refused write");
    helix.stop().await;
    Ok(())
}

/// `hx serve storage` as a child process on a fixed port, so it can be killed and restarted.
async fn spawn_storage(env: &TestEnv, port: u16) -> anyhow::Result<(Child, StorageServiceClient<GrpcChannel>)> {
    let child = Command::new(env!("CARGO_BIN_EXE_hx"))
        .args(["serve", "storage"])
        .envs(env.process_env())
        .env("HELIX_GRPC_ADDR", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let url = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) = env.grpc(&url).await {
            let client = StorageServiceClient::new(channel);
            return Ok((child, client));
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "storage did not come up on {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Writes while the storage process is killed (SIGKILL) twice: the subscriber sees each
/// committed write exactly once — nothing lost from the outbox, nothing published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_across_storage_crashes() -> anyhow::Result<()> {
    let env = TestEnv::new(Backend::Fleet).await?;
    let bus = env.bus().await?;
    let mut events = bus.subscribe("helix.node.*", "e2e-exactly-once").await?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let (mut child, mut client) = spawn_storage(&env, port).await?;

    let mut expected: Vec<(String, String, i64)> = Vec::new();
    for round in 0..3 {
        for i in 0..15 {
            let draft = pb::NodeDraft { content: format!("round {round} node {i}"), ..Default::default() };
            let node = client.create_node(pb::CreateNodeRequest { node: Some(draft) }).await?.into_inner();
            expected.push(("helix.node.created".into(), node.id.clone(), 1));
            if i % 3 == 0 {
                let draft = pb::NodeDraft { content: format!("round {round} node {i} v2"), ..Default::default() };
                let request = pb::UpdateNodeRequest { id: node.id.clone(), expected_version: 1, node: Some(draft) };
                client.update_node(request).await?;
                expected.push(("helix.node.updated".into(), node.id.clone(), 2));
            }
            if i % 5 == 0 {
                client.delete_node(pb::DeleteNodeRequest { id: node.id.clone(), expected_version: 0 }).await?;
                expected.push(("helix.node.deleted".into(), node.id.clone(), if i % 3 == 0 { 2 } else { 1 }));
            }
        }
        if round < 2 {
            // right after commits: the relay is publishing, or has not yet
            child.start_kill()?;
            child.wait().await?;
            (child, client) = spawn_storage(&env, port).await?;
        }
    }

    let mut counts: HashMap<(String, String, i64), usize> = HashMap::new();
    let mut received = 0;
    while received < expected.len() {
        let Some(delivery) = next_event(&mut events, Duration::from_secs(30)).await else {
            anyhow::bail!("only {received} of {} events arrived", expected.len());
        };
        let e = &delivery.envelope;
        let key =
            (e.r#type.clone(), e.payload["id"].as_str().unwrap().to_owned(), e.payload["version"].as_i64().unwrap());
        *counts.entry(key).or_default() += 1;
        received += 1;
        delivery.ack().await?;
    }
    // anything still on its way would be a duplicate
    assert!(next_event(&mut events, Duration::from_secs(2)).await.is_none(), "an event arrived twice");
    for key in &expected {
        assert_eq!(counts.get(key), Some(&1), "{key:?}");
    }
    assert_eq!(counts.len(), expected.len());
    child.start_kill()?;
    Ok(())
}
