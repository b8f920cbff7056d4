//! The audit log: mutating calls and refused credentials recorded with who, what, on
//! which resource, the outcome, from where; reads not recorded; `/api/v1/audit/query`
//! filters and pages; retention deletes old entries; no secret ever lands in it.

use chrono::SecondsFormat;
use helix_runtime::db::Database;
use helix_testkit::{Backend, TestEnv, TestHelix};
use hx::fleet::Role;
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};
use sqlx::Row;

use crate::support::{code, read};

crate::on_both_backends!(mutations_and_refusals_are_recorded_without_secrets);

/// A request with a request id and user agent of the test's choosing, and `key` (none:
/// no credential at all).
fn call(helix: &TestHelix, method: Method, path: &str, key: Option<&str>, request_id: &str) -> RequestBuilder {
    let request = helix
        .http
        .request(method, helix.url(path))
        .header("x-request-id", request_id)
        .header("user-agent", "audit-e2e/1.0");
    match key {
        Some(key) => request.bearer_auth(key),
        None => request,
    }
}

/// The entries of the log once every one of `request_ids` has been written (the writer
/// commits in batches off the request path, every 100 ms).
async fn wait_for(helix: &TestHelix, request_ids: &[&str]) -> anyhow::Result<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let (status, page) = read(helix.api(Method::GET, "/api/v1/audit/query?limit=1000").send().await?).await;
        anyhow::ensure!(status == 200, "{page}");
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        if request_ids.iter().all(|id| entries.iter().any(|e| e["request_id"] == *id)) {
            return Ok(entries);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not all of {request_ids:?} were recorded: {entries:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A key with only `scopes`, made through the keys API.
async fn scoped_key(helix: &TestHelix, scopes: &[&str], request_id: &str) -> anyhow::Result<(String, String)> {
    let body = json!({"name": "audit reader", "scopes": scopes});
    let (status, issued) = read(
        call(helix, Method::POST, "/api/v1/keys", Some(&helix.env.admin_key), request_id).json(&body).send().await?,
    )
    .await;
    anyhow::ensure!(status == 201, "{issued}");
    Ok((
        issued["key"]["id"].as_str().unwrap_or_default().to_owned(),
        issued["secret"].as_str().unwrap_or_default().to_owned(),
    ))
}

/// Every text of every row, as one string to search for secrets.
async fn table_text(helix: &TestHelix) -> anyhow::Result<String> {
    let db = Database::connect(&helix.env.config, "gateway").await?;
    let rows = sqlx::query(
        "SELECT id, actor, action, resource_type, resource_id, client_ip, user_agent, request_id FROM audit_log",
    )
    .fetch_all(&db.pool)
    .await?;
    let mut text = String::new();
    for row in &rows {
        for column in 0..row.len() {
            text.push_str(&row.try_get::<Option<String>, _>(column)?.unwrap_or_default());
            text.push('\n');
        }
    }
    db.pool.close().await;
    Ok(text)
}

async fn mutations_and_refusals_are_recorded_without_secrets(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let admin = helix.env.admin_key.clone();
    let query_secret = format!("querysecret{}", uuid::Uuid::now_v7().simple());
    let body_secret = format!("bodysecret{}", uuid::Uuid::now_v7().simple());

    let (status, node) = read(
        call(&helix, Method::POST, &format!("/api/v1/nodes?code={query_secret}"), Some(&admin), "a-create")
            .json(&json!({"content": body_secret}))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, 201, "{node}");
    let id = node["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/nodes/{id}");
    let update = json!({"version": node["version"], "content": format!("{body_secret} again")});
    let (status, body) =
        read(call(&helix, Method::PUT, &path, Some(&admin), "a-update").json(&update).send().await?).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = read(call(&helix, Method::GET, &path, Some(&admin), "a-read").send().await?).await;
    assert_eq!(status, 200);
    let (status, _) = read(call(&helix, Method::DELETE, &path, Some(&admin), "a-delete").send().await?).await;
    assert_eq!(status, 204);
    let bad_key = "hx_this_key_was_never_issued_0123456789";
    let (status, _) = read(call(&helix, Method::DELETE, &path, Some(bad_key), "a-bad-key").send().await?).await;
    assert_eq!(status, 401);
    let (status, _) = read(call(&helix, Method::GET, "/api/v1/nodes", None, "a-no-key").send().await?).await;
    assert_eq!(status, 401, "a refused read is recorded too");
    let (reader_id, reader) = scoped_key(&helix, &["nodes:read"], "a-key-create").await?;
    let (status, body) =
        read(call(&helix, Method::GET, "/api/v1/audit/query", Some(&reader), "a-forbidden").send().await?).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "the audit log is for admin keys only: {body}");
    // pairing: the code travels in a body, which is never recorded; a wrong code is refused anonymously
    let (status, pairing) = read(
        call(&helix, Method::POST, "/api/v1/pair/initiate", Some(&admin), "a-pair").json(&json!({})).send().await?,
    )
    .await;
    assert_eq!(status, 201, "{pairing}");
    let pair_code = pairing["code"].as_str().unwrap().to_owned();
    let (status, paired) = read(
        call(&helix, Method::POST, "/api/v1/pair/confirm", None, "a-pair-confirm")
            .json(&json!({"code": pair_code, "device_name": "laptop"}))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, 201, "{paired}");
    let long_agent = "x".repeat(2000);
    let (status, _) = read(
        helix
            .http
            .post(helix.url("/api/v1/pair/confirm"))
            .header("x-request-id", "a-pair-wrong")
            .header("user-agent", &long_agent)
            .json(&json!({"code": "BCDF-GHJK"}))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, 403);

    let recorded = [
        "a-create",
        "a-update",
        "a-delete",
        "a-bad-key",
        "a-no-key",
        "a-key-create",
        "a-forbidden",
        "a-pair",
        "a-pair-confirm",
        "a-pair-wrong",
    ];
    let entries = wait_for(&helix, &recorded).await?;
    let node_id = Some(id.as_str());
    // (request id, actor, action, resource type, resource id, status)
    type Entry<'a> = (&'a str, &'a str, &'a str, Option<&'a str>, Option<&'a str>, u16);
    let expected: [Entry; 10] = [
        ("a-create", "admin", "POST /api/v1/nodes", Some("nodes"), None, 201),
        ("a-update", "admin", "PUT /api/v1/nodes/{id}", Some("nodes"), node_id, 200),
        ("a-delete", "admin", "DELETE /api/v1/nodes/{id}", Some("nodes"), node_id, 204),
        ("a-bad-key", "anonymous", "DELETE /api/v1/nodes/{id}", Some("nodes"), node_id, 401),
        ("a-no-key", "anonymous", "GET /api/v1/nodes", Some("nodes"), None, 401),
        ("a-key-create", "admin", "POST /api/v1/keys", Some("keys"), None, 201),
        ("a-forbidden", reader_id.as_str(), "GET /api/v1/audit/query", Some("audit.query"), None, 403),
        ("a-pair", "admin", "POST /api/v1/pair/initiate", Some("pair.initiate"), None, 201),
        ("a-pair-confirm", "anonymous", "POST /api/v1/pair/confirm", Some("pair.confirm"), None, 201),
        ("a-pair-wrong", "anonymous", "POST /api/v1/pair/confirm", Some("pair.confirm"), None, 403),
    ];
    for (request_id, actor, action, resource_type, resource_id, status) in expected {
        let entry = entries.iter().find(|e| e["request_id"] == request_id).unwrap();
        let seen = (
            entry["actor"].as_str(),
            entry["action"].as_str(),
            entry["resource_type"].as_str(),
            entry["resource_id"].as_str(),
            entry["status"].as_u64(),
            entry["client_ip"].as_str(),
        );
        let wanted =
            (Some(actor), Some(action), resource_type, resource_id, Some(u64::from(status)), Some("127.0.0.1"));
        assert_eq!(seen, wanted, "{request_id}: {entry}");
        let agent = if request_id == "a-pair-wrong" { &long_agent[..256] } else { "audit-e2e/1.0" };
        assert_eq!(entry["user_agent"], agent, "{request_id}: the user agent, cut to 256 bytes");
        assert!(uuid::Uuid::parse_str(entry["id"].as_str().unwrap())?.get_version_num() == 7, "{entry}");
    }
    assert!(!entries.iter().any(|e| e["request_id"] == "a-read"), "a read is not recorded");
    assert_eq!(entries.len(), recorded.len(), "exactly the calls above: {entries:?}");

    // what is still queued when the gateway stops is written before it ends
    let (status, _) = read(call(&helix, Method::DELETE, &path, Some(&admin), "a-last").send().await?).await;
    assert_eq!(status, 404);
    let mut helix = helix;
    if let Some(node) = helix.node.take() {
        node.stop().await;
    }
    let text = table_text(&helix).await?;
    assert!(text.contains("a-last"), "the entry queued at shutdown was lost");
    let paired_token = paired["token"].as_str().unwrap();
    for secret in
        [admin.as_str(), &query_secret, &body_secret, &reader, &pair_code, &pair_code.replace('-', ""), paired_token]
    {
        assert!(!text.contains(secret), "the audit log holds a secret: {secret}");
    }
    assert!(!text.contains("code="), "no query string is recorded");
    Ok(())
}

crate::on_both_backends!(query_filters_and_pages);

async fn query_filters_and_pages(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let admin = helix.env.admin_key.clone();
    let (reader_id, reader) = scoped_key(&helix, &["nodes:read"], "f0").await?;
    let (status, node) = read(
        call(&helix, Method::POST, "/api/v1/nodes", Some(&admin), "f1").json(&json!({"content": "one"})).send().await?,
    )
    .await;
    assert_eq!(status, 201, "{node}");
    let id = node["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/nodes/{id}");
    let update = json!({"version": node["version"], "content": "two"});
    assert_eq!(call(&helix, Method::PUT, &path, Some(&admin), "f2").json(&update).send().await?.status(), 200);
    let middle = chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    let response = call(&helix, Method::POST, "/api/v1/nodes", Some("hx_wrong"), "f3").json(&json!({"content": "x"}));
    assert_eq!(response.send().await?.status(), 401);
    assert_eq!(call(&helix, Method::DELETE, &path, Some(&admin), "f4").send().await?.status(), 204);
    assert_eq!(call(&helix, Method::GET, "/api/v1/audit/query", Some(&reader), "f5").send().await?.status(), 403);
    assert_eq!(call(&helix, Method::DELETE, &path, Some(&admin), "f6").send().await?.status(), 404);
    let all = ["f6", "f5", "f4", "f3", "f2", "f1", "f0"];
    wait_for(&helix, &all).await?;

    let node_resource = format!("nodes/{id}");
    let since_middle = [("since", middle.as_str())];
    let until_middle = [("until", middle.as_str())];
    type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let table: Vec<Case> = vec![
        (vec![], all.to_vec()),
        (vec![("actor", "admin")], vec!["f6", "f4", "f2", "f1", "f0"]),
        (vec![("actor", "anonymous")], vec!["f3"]),
        (vec![("actor", reader_id.as_str())], vec!["f5"]),
        (vec![("action", "DELETE /api/v1/nodes/{id}")], vec!["f6", "f4"]),
        (vec![("action", "DELETE *")], vec!["f6", "f4"]),
        (vec![("action", "POST *")], vec!["f3", "f1", "f0"]),
        (vec![("action", "POST /api/v1/nodes")], vec!["f3", "f1"]),
        (vec![("action", "POST /api/v1/node")], vec![]),
        (vec![("action", "*")], all.to_vec()),
        (vec![("resource", "nodes")], vec!["f6", "f4", "f3", "f2", "f1"]),
        (vec![("resource", node_resource.as_str())], vec!["f6", "f4", "f2"]),
        (vec![("resource", "keys")], vec!["f0"]),
        (vec![("outcome", "success")], vec!["f4", "f2", "f1", "f0"]),
        (vec![("outcome", "denied")], vec!["f5", "f3"]),
        (vec![("outcome", "error")], vec!["f6"]),
        (vec![("outcome", "404")], vec!["f6"]),
        (since_middle.to_vec(), vec!["f6", "f5", "f4", "f3"]),
        (until_middle.to_vec(), vec!["f2", "f1", "f0"]),
        (vec![("since", middle.as_str()), ("outcome", "success"), ("actor", "admin")], vec!["f4"]),
    ];
    for (filters, expected) in &table {
        check(&helix, filters, Ok(expected)).await?;
    }
    for (filters, error) in [
        (vec![("limit", "0")], "invalid_limit"),
        (vec![("limit", "1001")], "invalid_limit"),
        (vec![("outcome", "teapot")], "invalid_outcome"),
        (vec![("outcome", "999")], "invalid_outcome"),
        (vec![("since", "yesterday")], "invalid_time"),
        (vec![("cursor", "not-an-id")], "invalid_cursor"),
    ] {
        check(&helix, &filters, Err(error)).await?;
    }

    // cursor paging, two at a time, gives the whole log newest first, and then stops
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10 {
        let mut query = vec![("limit", "2".to_owned())];
        query.extend(cursor.iter().map(|c| ("cursor", c.clone())));
        let (status, page) = read(helix.api(Method::GET, "/api/v1/audit/query").query(&query).send().await?).await;
        assert_eq!(status, 200, "{page}");
        let entries = page["entries"].as_array().unwrap();
        assert!(entries.len() <= 2, "{page}");
        paged.extend(entries.iter().map(|e| e["request_id"].as_str().unwrap_or_default().to_owned()));
        cursor = page["next_cursor"].as_str().map(str::to_owned);
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(paged, all, "pages of two");
    helix.stop().await;
    Ok(())
}

/// Queries the log with `filters`: the request ids it lists, newest first, or the error code.
async fn check(helix: &TestHelix, filters: &[(&str, &str)], expected: Result<&Vec<&str>, &str>) -> anyhow::Result<()> {
    let (status, page) = read(helix.api(Method::GET, "/api/v1/audit/query").query(filters).send().await?).await;
    match expected {
        Ok(ids) => {
            assert_eq!(status, 200, "{filters:?}: {page}");
            let seen: Vec<&str> = page["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["request_id"].as_str().unwrap_or_default())
                .collect();
            assert_eq!(&seen, ids, "{filters:?}");
        }
        Err(error) => assert_eq!((status, code(&page)), (400, error), "{filters:?}: {page}"),
    }
    Ok(())
}

crate::on_both_backends!(retention_deletes_old_entries);

/// Entries older than the retention go: at the gateway's start (its retention task's
/// first round) and whenever `prune` runs, in batches.
async fn retention_deletes_old_entries(backend: Backend) -> anyhow::Result<()> {
    let mut env = TestEnv::new(backend).await?;
    env.config.gateway.audit_retention_days = 30;
    helix_gateway::migrate(&env.config).await?;
    let db = Database::connect(&env.config, "gateway").await?;
    let now = chrono::Utc::now();
    let days_ago = |days: i64| (now - chrono::Duration::days(days)).timestamp_micros();
    // (request id, age in days): 2,500 entries of 40 days take three of the task's batches
    let mut rows: Vec<(String, i64)> = (0..2500).map(|i| (format!("old-{i}"), days_ago(40))).collect();
    rows.extend([("recent-10".to_owned(), days_ago(10)), ("recent-1".to_owned(), days_ago(1))]);
    for chunk in rows.chunks(500) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                format!("({}, 'admin', 'POST /api/v1/nodes', 201)", helix_runtime::db::parameters(db.backend, i * 3, 3))
            })
            .collect();
        let sql =
            format!("INSERT INTO audit_log (id, at, request_id, actor, action, status) VALUES {}", values.join(", "));
        let mut query = sqlx::query(&sql);
        for (request_id, at) in chunk {
            query = query.bind(uuid::Uuid::now_v7().to_string()).bind(*at).bind(request_id.clone());
        }
        query.execute(&db.pool).await?;
    }

    let node = env.start(&[Role::Gateway]).await?;
    let url = node.gateway_url().unwrap();
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let kept = loop {
        let (status, page) =
            read(http.get(format!("{url}/api/v1/audit/query?limit=1000")).bearer_auth(&env.admin_key).send().await?)
                .await;
        assert_eq!(status, 200, "{page}");
        let ids: Vec<String> = page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["request_id"].as_str().unwrap_or_default().to_owned())
            .collect();
        if ids.len() <= 2 {
            break ids;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the old entries stayed: {} left", ids.len());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(kept, ["recent-1", "recent-10"], "what is younger than 30 days stays");
    node.stop().await;

    // a shorter retention, run by hand as the hourly round would
    assert_eq!(helix_gateway::prune_audit_log(&db, 5).await?, 1, "the entry of 10 days goes");
    assert_eq!(helix_gateway::prune_audit_log(&db, 5).await?, 0, "nothing more is that old");
    assert_eq!(helix_gateway::prune_audit_log(&db, 0).await?, 1, "retention 0: everything recorded before now");
    db.pool.close().await;
    Ok(())
}
