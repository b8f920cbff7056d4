//! The node lifecycle through the gateway: REST → gRPC → storage → database.

use helix_testkit::{Backend, TestHelix};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{code, read};

crate::on_both_backends!(lifecycle_survives_restart, list_filters_and_pages, bulk_create_is_all_or_nothing);

async fn lifecycle_survives_restart(backend: Backend) -> anyhow::Result<()> {
    let mut helix = TestHelix::start(backend).await?;
    let input = json!({
        "namespace": "research", "kind": "fact", "title": "Rust", "content": "Rust has no garbage collector",
        "tags": ["lang", "rust"], "metadata": {"stars": 5, "nested": {"ok": true}}, "source": "notes", "importance": 0.8
    });
    let (status, created) = read(helix.api(Method::POST, "/api/v1/nodes").json(&input).send().await?).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&id)?.get_version_num(), 7);
    for field in ["namespace", "kind", "title", "content", "tags", "metadata", "source", "importance"] {
        assert_eq!(created[field], input[field], "{field}");
    }
    assert_eq!(created["version"], 1);

    let (status, got) = read(helix.api(Method::GET, &format!("/api/v1/nodes/{id}")).send().await?).await;
    assert_eq!((status, &got), (200, &created));

    let (status, page) = read(helix.api(Method::GET, "/api/v1/nodes?namespace=research").send().await?).await;
    assert_eq!(status, 200);
    assert_eq!(page["nodes"], json!([created]));

    let update = json!({ "version": 1, "content": "Rust has no GC", "tags": ["rust"], "namespace": "research" });
    let (status, updated) =
        read(helix.api(Method::PUT, &format!("/api/v1/nodes/{id}")).json(&update).send().await?).await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!((updated["version"].as_i64(), updated["content"].as_str()), (Some(2), Some("Rust has no GC")));
    assert_eq!(updated["created_at"], created["created_at"]);
    assert_eq!(updated["tags"], json!(["rust"]));

    let (status, stale) =
        read(helix.api(Method::PUT, &format!("/api/v1/nodes/{id}")).json(&update).send().await?).await;
    assert_eq!((status, code(&stale)), (409, "version_conflict"));

    let (status, _) = read(helix.api(Method::DELETE, &format!("/api/v1/nodes/{id}")).send().await?).await;
    assert_eq!(status, 204);
    let (status, gone) = read(helix.api(Method::GET, &format!("/api/v1/nodes/{id}")).send().await?).await;
    assert_eq!((status, code(&gone)), (404, "not_found"));

    let (_, kept) =
        read(helix.api(Method::POST, "/api/v1/nodes").json(&json!({"content": "kept"})).send().await?).await;
    helix.restart().await?;
    let (status, after) =
        read(helix.api(Method::GET, &format!("/api/v1/nodes/{}", kept["id"].as_str().unwrap())).send().await?).await;
    assert_eq!((status, &after), (200, &kept));
    helix.stop().await;
    Ok(())
}

async fn list_filters_and_pages(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let mut ids = Vec::new();
    for i in 0..7 {
        let body = json!({
            "content": format!("node {i}"), "namespace": if i % 2 == 0 { "even" } else { "odd" },
            "kind": if i < 3 { "fact" } else { "note" }, "tags": if i % 3 == 0 { vec!["three"] } else { vec![] },
        });
        let (status, node) = read(helix.api(Method::POST, "/api/v1/nodes").json(&body).send().await?).await;
        assert_eq!(status, 201);
        ids.push(node["id"].as_str().unwrap().to_owned());
    }
    let newest_first = |picked: &[usize]| -> Vec<String> { picked.iter().rev().map(|&i| ids[i].clone()).collect() };
    let cases: &[(&str, Vec<String>)] = &[
        ("", newest_first(&[0, 1, 2, 3, 4, 5, 6])),
        ("namespace=even", newest_first(&[0, 2, 4, 6])),
        ("kind=fact", newest_first(&[0, 1, 2])),
        ("tag=three", newest_first(&[0, 3, 6])),
        ("namespace=odd&kind=note", newest_first(&[3, 5])),
        ("namespace=nobody", vec![]),
    ];
    for (query, expected) in cases {
        let (status, page) = read(helix.api(Method::GET, &format!("/api/v1/nodes?{query}")).send().await?).await;
        assert_eq!(status, 200);
        let got: Vec<String> =
            page["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_owned()).collect();
        assert_eq!(&got, expected, "{query}");
        assert_eq!(page["next_cursor"], Value::Null, "{query}");
    }

    // pages of 3 walk every node once, newest first
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/nodes?limit=3&cursor={c}"),
            None => "/api/v1/nodes?limit=3".to_owned(),
        };
        let (status, page) = read(helix.api(Method::GET, &path).send().await?).await;
        assert_eq!(status, 200);
        seen.extend(page["nodes"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, newest_first(&[0, 1, 2, 3, 4, 5, 6]));
    helix.stop().await;
    Ok(())
}

async fn bulk_create_is_all_or_nothing(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let nodes: Vec<Value> = (0..25).map(|i| json!({"content": format!("bulk {i}"), "tags": ["bulk"]})).collect();
    let (status, created) =
        read(helix.api(Method::POST, "/api/v1/nodes/bulk").json(&json!({"nodes": nodes})).send().await?).await;
    assert_eq!(status, 201, "{created}");
    let ids: Vec<&str> = created["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(ids.len(), 25);
    for (i, node) in created["nodes"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            (node["id"].as_str().unwrap(), node["content"].as_str().unwrap()),
            (ids[i], format!("bulk {i}").as_str())
        );
    }

    let mut broken: Vec<Value> = (0..5).map(|i| json!({"content": format!("never {i}")})).collect();
    broken.push(json!({"content": "bad", "importance": 7}));
    let (status, error) =
        read(helix.api(Method::POST, "/api/v1/nodes/bulk").json(&json!({"nodes": broken})).send().await?).await;
    assert_eq!((status, code(&error)), (400, "invalid_importance"));
    assert!(error["error"]["message"].as_str().unwrap().starts_with("nodes[5]"), "{error}");
    let (_, page) = read(helix.api(Method::GET, "/api/v1/nodes?limit=1000").send().await?).await;
    assert_eq!(page["nodes"].as_array().unwrap().len(), 25, "a failed bulk request stored nothing");
    helix.stop().await;
    Ok(())
}

crate::on_both_backends!(gateway_and_storage_in_separate_nodes);

/// The gateway in one node, the other services in another: the calls cross real gRPC
/// over TCP, as in the fleet.
async fn gateway_and_storage_in_separate_nodes(backend: Backend) -> anyhow::Result<()> {
    use hx::fleet::Role;
    let mut env = helix_testkit::TestEnv::new(backend).await?;
    let backends: Vec<Role> = Role::ALL.into_iter().filter(|r| *r != Role::Gateway).collect();
    let services = env.start(&backends).await?;
    let url = services.grpc_url();
    let e = &mut env.config.endpoints;
    for endpoint in [
        &mut e.storage,
        &mut e.search,
        &mut e.graph,
        &mut e.llm_router,
        &mut e.orchestrator,
        &mut e.jobs,
        &mut e.notifications,
    ] {
        *endpoint = url.clone();
    }
    let gateway = env.start(&[Role::Gateway]).await?;
    let base = gateway.gateway_url().unwrap();
    let http = reqwest::Client::new();
    let (status, created) = read(
        http.post(format!("{base}/api/v1/nodes"))
            .bearer_auth(&env.admin_key)
            .json(&json!({"content": "far away"}))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, got) = read(
        http.get(format!("{base}/api/v1/nodes/{}", created["id"].as_str().unwrap()))
            .bearer_auth(&env.admin_key)
            .send()
            .await?,
    )
    .await;
    assert_eq!((status, &got), (200, &created));
    let (status, missing) = read(
        http.get(format!("{base}/api/v1/nodes/{}", uuid::Uuid::now_v7())).bearer_auth(&env.admin_key).send().await?,
    )
    .await;
    assert_eq!((status, code(&missing)), (404, "not_found"), "error codes cross the network");
    let (status, health) = read(http.get(format!("{base}/health")).send().await?).await;
    assert_eq!(status, 200, "{health}");
    gateway.stop().await;
    services.stop().await;
    Ok(())
}
