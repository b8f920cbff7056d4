//! Who may call what: API keys and their format, the scope table checked on every route
//! (the auth matrix, generated from the served OpenAPI document), namespaces, per-key
//! request limits, pairing, revocation across replicas, and no secret in any log.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use helix_gateway::scopes::{self, Access, Grants, Scope};
use helix_gateway::{Malformed, check_format, generate_key};
use helix_testkit::{Backend, TestEnv, TestHelix};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{code, read};

#[test]
fn key_format_and_scope_grants() {
    for _ in 0..200 {
        let key = generate_key();
        assert_eq!(check_format(&key), Ok(()), "{key}");
        assert_eq!(key.len(), 41);
        // any one character changed breaks the checksum
        let mut altered = key.clone().into_bytes();
        altered[7] = if altered[7] == b'a' { b'b' } else { b'a' };
        assert_eq!(check_format(std::str::from_utf8(&altered).unwrap()), Err(Malformed::Checksum));
    }
    for malformed in ["", "hx_", "hx_short", "sk-abc", "hx_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!", &"hx_a".repeat(20)]
    {
        assert_eq!(check_format(malformed), Err(Malformed::Shape), "{malformed:?}");
    }

    let cases: &[(&[&str], Scope, bool)] = &[
        (&["admin"], Scope::JobsWrite, true),
        (&["read"], Scope::NodesRead, true),
        (&["read"], Scope::NodesWrite, false),
        (&["read"], Scope::LlmCall, false),
        (&["read"], Scope::Admin, false),
        (&["write"], Scope::LlmCall, true),
        (&["write"], Scope::Admin, false),
        (&["nodes:write"], Scope::NodesRead, true),
        (&["nodes:read"], Scope::NodesWrite, false),
        (&["workflows:run"], Scope::WorkflowsRead, true),
        (&["workflows:run"], Scope::WorkflowsWrite, false),
        (&["llm:call"], Scope::LlmRead, true),
        (&["llm:read"], Scope::LlmCall, false),
        // secrets:read is never implied: only a key that names it carries it
        (&["admin"], Scope::SecretsRead, false),
        (&["read"], Scope::SecretsRead, false),
        (&["write"], Scope::SecretsRead, false),
        (&["secrets:read"], Scope::SecretsRead, true),
        (&["secrets:read"], Scope::Admin, false),
        (&["admin", "secrets:read"], Scope::SecretsRead, true),
    ];
    for (names, scope, allowed) in cases {
        assert_eq!(Grants::parse(names).unwrap().allows(*scope), *allowed, "{names:?} → {scope}");
    }
    assert!(Grants::parse(&["nodes:delete"]).unwrap_err().contains("unknown scope"));
    assert!(Grants::parse(&["admin"]).unwrap().covers(&Grants::parse(&["write"]).unwrap()));
    assert!(!Grants::parse(&["read"]).unwrap().covers(&Grants::parse(&["nodes:write"]).unwrap()));
    // an admin may hand out secrets:read (the server's allow_reveal is the boundary,
    // docs/decisions/0010); nobody else may
    assert!(Grants::parse(&["admin"]).unwrap().covers(&Grants::parse(&["admin", "secrets:read"]).unwrap()));
    assert!(!Grants::parse(&["write"]).unwrap().covers(&Grants::parse(&["secrets:read"]).unwrap()));
    let mut seen = std::collections::HashSet::new();
    for (method, path, _) in scopes::ROUTES {
        assert!(seen.insert((method, path)), "{method} {path} is in the scope table twice");
    }
}

/// A new key through the API: (id, secret).
async fn issue(helix: &TestHelix, body: Value) -> anyhow::Result<(String, String)> {
    let (status, issued) = read(helix.api(Method::POST, "/api/v1/keys").json(&body).send().await?).await;
    anyhow::ensure!(status == 201, "POST /api/v1/keys {body}: {status} {issued}");
    Ok((issued["key"]["id"].as_str().unwrap().to_owned(), issued["secret"].as_str().unwrap().to_owned()))
}

/// A key stored directly with an expiry in the past (the API refuses to make one).
async fn expired_key(helix: &TestHelix) -> anyhow::Result<String> {
    use sha2::Digest;
    let key = generate_key();
    let db = helix_runtime::db::Database::connect(&helix.env.config, "gateway").await?;
    sqlx::query(
        "INSERT INTO api_keys (id, name, key_hash, scopes, created_at, expires_at) VALUES ($1, 'old', $2, 'admin', 1, 2)",
    )
    .bind(uuid::Uuid::now_v7().to_string())
    .bind(hex::encode(sha2::Sha256::digest(key.as_bytes())))
    .execute(&db.pool)
    .await?;
    db.pool.close().await;
    Ok(key)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Unauthenticated,
    Forbidden,
    /// past the key check: anything but 401, 403 and a server error
    Through,
}

/// Every operation of the served OpenAPI document × every kind of credential → the
/// status the scope table predicts. An operation missing from the table fails here.
async fn auth_matrix(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let (_, doc) = read(helix.api(Method::GET, "/api/v1/openapi.json").send().await?).await;
    let mut right = BTreeMap::new();
    let mut limited = BTreeMap::new();
    for scope in Scope::ALL {
        right.insert(
            scope,
            issue(&helix, json!({"name": format!("right {scope}"), "scopes": [scope.as_str()]})).await?.1,
        );
        let other = json!({"name": format!("other {scope}"), "scopes": [scope.as_str()], "namespaces": ["elsewhere"]});
        limited.insert(scope, issue(&helix, other).await?.1);
    }
    let nodes_reader = right[&Scope::NodesRead].clone();
    let jobs_reader = right[&Scope::JobsRead].clone();
    let (revoked_id, revoked) = issue(&helix, json!({"name": "revoked", "scopes": ["admin"]})).await?;
    let (status, _) = read(helix.api(Method::DELETE, &format!("/api/v1/keys/{revoked_id}")).send().await?).await;
    assert_eq!(status, 204);
    let expired = expired_key(&helix).await?;
    let mut bad_checksum = generate_key().into_bytes();
    bad_checksum[5] = if bad_checksum[5] == b'x' { b'y' } else { b'x' };
    let bad_checksum = String::from_utf8(bad_checksum)?;
    let unknown = generate_key();

    // every documented operation, and every route of the table (a route missing from the
    // document is probed too, and reported)
    let mut failures = Vec::new();
    let mut operations: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            operations.push((method.to_uppercase(), path.clone()));
        }
    }
    for (method, path, _) in scopes::ROUTES {
        if doc["paths"][*path][method.to_lowercase()].is_null() {
            failures.push(format!("{method} {path}: in the scope table but not in the OpenAPI document"));
            operations.push(((*method).to_owned(), (*path).to_owned()));
        }
    }
    let probed = operations.len();
    for (method, path) in operations {
        let method = Method::from_bytes(method.as_bytes())?;
        let path = &path;
        let Some(access) = scopes::access(&method, path) else {
            failures.push(format!("{method} {path}: in the OpenAPI document but not in the scope table"));
            continue;
        };
        let concrete = path
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{name}", "matrix-probe")
            .replace("{key}", "MATRIX_PROBE");
        let (wrong, right_key, other) = match access {
            Access::Public => (None, None, None),
            Access::Authenticated => (None, Some(nodes_reader.clone()), Some(limited[&Scope::NodesRead].clone())),
            Access::Scoped(scope) => {
                let wrong = if scope == Scope::NodesRead { &jobs_reader } else { &nodes_reader };
                (Some(wrong.clone()), Some(right[&scope].clone()), Some(limited[&scope].clone()))
            }
        };
        let guarded = access != Access::Public;
        let denied = |expect| if guarded { expect } else { Expect::Through };
        let mut cases: Vec<(&str, Option<String>, Expect)> = vec![
            ("no key", None, denied(Expect::Unauthenticated)),
            ("malformed", Some("not-a-key".into()), denied(Expect::Unauthenticated)),
            ("bad checksum", Some(bad_checksum.clone()), denied(Expect::Unauthenticated)),
            ("unknown", Some(unknown.clone()), denied(Expect::Unauthenticated)),
            ("revoked", Some(revoked.clone()), denied(Expect::Unauthenticated)),
            ("expired", Some(expired.clone()), denied(Expect::Unauthenticated)),
        ];
        if let Some(wrong) = wrong {
            cases.push(("wrong scope", Some(wrong), Expect::Forbidden));
        }
        if let Some(key) = right_key {
            cases.push(("right scope", Some(key), Expect::Through));
        }
        if let Some(key) = other {
            cases.push(("other namespace", Some(key), Expect::Through));
        }
        for (case, key, expect) in cases {
            let mut request = helix.http.request(method.clone(), helix.url(&concrete)).timeout(Duration::from_secs(30));
            if let Some(key) = &key {
                request = request.bearer_auth(key);
            }
            if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
                request = request.json(&json!({}));
            }
            let response = request.send().await?;
            let status = response.status().as_u16();
            let held = match expect {
                Expect::Unauthenticated => status == 401,
                Expect::Forbidden => status == 403,
                // a namespace-limited key may be refused a whole-graph read (403),
                // never asked for credentials again
                Expect::Through if case == "other namespace" => status != 401 && status < 500,
                Expect::Through => status != 401 && status != 403 && status < 500,
            };
            if !held {
                let body = response.text().await.unwrap_or_default();
                failures.push(format!("{method} {path} [{case}]: expected {expect:?}, got {status} {body}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} of the matrix failed:\n{}", failures.len(), failures.join("\n"));
    assert!(probed >= scopes::ROUTES.len(), "only {probed} operations probed");
    helix.stop().await;
    Ok(())
}

crate::on_both_backends!(auth_matrix, keys_are_issued_listed_rotated_and_revoked, namespaces_and_request_limits);

async fn keys_are_issued_listed_rotated_and_revoked(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let (status, issued) = read(
        helix
            .api(Method::POST, "/api/v1/keys")
            .json(&json!({"name": "ci", "scopes": ["nodes:write", "read"], "requests_per_minute": 600}))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    let secret = issued["secret"].as_str().unwrap().to_owned();
    let id = issued["key"]["id"].as_str().unwrap().to_owned();
    assert_eq!(check_format(&secret), Ok(()));
    assert!(secret.starts_with(issued["key"]["prefix"].as_str().unwrap()));
    assert_eq!(issued["key"]["scopes"], json!(["nodes:write", "read"]));
    assert_eq!(issued["key"]["origin"], "api");
    assert_eq!(issued["key"]["created_by"], "admin");

    let as_key = |key: &str, method: Method, path: &str| helix.http.request(method, helix.url(path)).bearer_auth(key);
    let (status, _) = read(as_key(&secret, Method::GET, "/api/v1/nodes").send().await?).await;
    assert_eq!(status, 200);
    // the header Anthropic's clients send works the same
    let response = helix.http.get(helix.url("/api/v1/nodes")).header("x-api-key", &secret).send().await?;
    assert_eq!(response.status(), 200);

    // the last use is written in batches (every 5 s), never once per request
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let (_, key) = read(helix.api(Method::GET, &format!("/api/v1/keys/{id}")).send().await?).await;
        if key["last_used_at"].is_string() {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "last_used_at never written: {key}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let (status, list) = read(helix.api(Method::GET, "/api/v1/keys").send().await?).await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = list["keys"].as_array().unwrap().iter().map(|k| k["id"].as_str().unwrap()).collect();
    assert!(listed.contains(&id.as_str()) && listed.contains(&"admin"), "{list}");
    assert!(!list.to_string().contains(&secret), "a list never carries a secret");
    let (status, one) = read(helix.api(Method::GET, &format!("/api/v1/keys/{id}")).send().await?).await;
    assert_eq!((status, one["requests_per_minute"].as_u64()), (200, Some(600)));

    // refused inputs, each with its code
    let refused = [
        (json!({"name": "x", "scopes": []}), 400, "invalid_scopes"),
        (json!({"name": "x", "scopes": ["nodes:delete"]}), 400, "invalid_scopes"),
        (json!({"name": "\u{1}\u{2}", "scopes": ["read"]}), 400, "invalid_name"),
        (json!({"name": "x", "scopes": ["read"], "expires_at": "2001-01-01T00:00:00Z"}), 400, "invalid_expires_at"),
        (json!({"name": "x", "scopes": ["read"], "requests_per_minute": 0}), 400, "invalid_rate_limit"),
        (json!({"name": "x", "scopes": ["read"], "namespaces": ["bad ns"]}), 400, "invalid_namespace"),
        (json!({"name": "x", "scopes": ["read"], "colour": "red"}), 422, "unknown_field"),
    ];
    for (body, status, expected) in refused {
        let (got, answer) = read(helix.api(Method::POST, "/api/v1/keys").json(&body).send().await?).await;
        assert_eq!((got, code(&answer)), (status, expected), "{body}: {answer}");
    }
    // a key cannot hand out what it lacks, nor manage keys without admin
    let (status, _) = read(
        as_key(&secret, Method::POST, "/api/v1/keys").json(&json!({"name": "y", "scopes": ["read"]})).send().await?,
    )
    .await;
    assert_eq!(status, 403);

    // a key's daily LLM budget is the router's cap for that key
    let (budgeted, _) = issue(&helix, json!({"name": "b", "scopes": ["llm:call"], "daily_budget_usd": 5.0})).await?;
    let (status, budget) = read(helix.api(Method::GET, "/api/v1/llm/budget").send().await?).await;
    assert_eq!(status, 200, "{budget}");
    let caps: Vec<(&str, f64)> = budget["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["api_key_id"].as_str().unwrap(), k["daily_limit_usd"].as_f64().unwrap()))
        .collect();
    assert!(caps.contains(&(budgeted.as_str(), 5.0)), "{budget}");

    let (status, rotated) = read(helix.api(Method::POST, &format!("/api/v1/keys/{id}/rotate")).send().await?).await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_eq!(rotated["key"]["scopes"], json!(["nodes:write", "read"]));
    let (status, body) = read(as_key(&secret, Method::GET, "/api/v1/nodes").send().await?).await;
    assert_eq!((status, code(&body)), (401, "unauthenticated"), "the old secret stops at once");
    assert_eq!(as_key(&new_secret, Method::GET, "/api/v1/nodes").send().await?.status(), 200);

    let (status, _) = read(helix.api(Method::DELETE, &format!("/api/v1/keys/{id}")).send().await?).await;
    assert_eq!(status, 204);
    assert_eq!(as_key(&new_secret, Method::GET, "/api/v1/nodes").send().await?.status(), 401);
    let (status, body) = read(helix.api(Method::DELETE, "/api/v1/keys/admin").send().await?).await;
    assert_eq!((status, code(&body)), (409, "admin_key"), "{body}");
    let (status, _) =
        read(helix.api(Method::DELETE, &format!("/api/v1/keys/{}", uuid::Uuid::now_v7())).send().await?).await;
    assert_eq!(status, 404);
    helix.stop().await;
    Ok(())
}

async fn namespaces_and_request_limits(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let (_, team) = issue(&helix, json!({"name": "team a", "scopes": ["write"], "namespaces": ["team-a"]})).await?;
    let as_team = |method: Method, path: &str| helix.http.request(method, helix.url(path)).bearer_auth(&team);
    let mut ids = BTreeMap::new();
    for ns in ["team-a", "team-b"] {
        let node = json!({"namespace": ns, "title": format!("{ns} plan"), "content": "the quarterly zeppelin plan"});
        let (status, created) = read(helix.api(Method::POST, "/api/v1/nodes").json(&node).send().await?).await;
        assert_eq!(status, 201, "{created}");
        ids.insert(ns, created["id"].as_str().unwrap().to_owned());
    }
    let edge = json!({"source_id": ids["team-a"], "target_id": ids["team-b"], "relation": "mentions"});
    let (status, body) = read(helix.api(Method::POST, "/api/v1/graph/edges").json(&edge).send().await?).await;
    assert_eq!(status, 201, "{body}");

    // reads: the other namespace's node does not exist for this key
    let (status, list) = read(as_team(Method::GET, "/api/v1/nodes").send().await?).await;
    assert_eq!(status, 200);
    let namespaces: Vec<&str> =
        list["nodes"].as_array().unwrap().iter().map(|n| n["namespace"].as_str().unwrap()).collect();
    assert_eq!(namespaces, ["team-a"], "{list}");
    let (status, _) = read(as_team(Method::GET, &format!("/api/v1/nodes/{}", ids["team-b"])).send().await?).await;
    assert_eq!(status, 404);
    let (status, _) = read(as_team(Method::DELETE, &format!("/api/v1/nodes/{}", ids["team-b"])).send().await?).await;
    assert_eq!(status, 404);
    let (status, body) = read(as_team(Method::GET, "/api/v1/nodes?namespace=team-b").send().await?).await;
    assert_eq!((status, code(&body)), (403, "namespace_forbidden"));
    // writes land in the key's namespace, never another
    let (status, created) =
        read(as_team(Method::POST, "/api/v1/nodes").json(&json!({"content": "mine"})).send().await?).await;
    assert_eq!((status, created["namespace"].as_str()), (201, Some("team-a")), "{created}");
    let foreign = json!({"namespace": "team-b", "content": "theirs"});
    let (status, _) = read(as_team(Method::POST, "/api/v1/nodes").json(&foreign).send().await?).await;
    assert_eq!(status, 403);
    // search: words of both nodes, hits of its own namespace only
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, all) = read(helix.api(Method::GET, "/api/v1/search?q=zeppelin&mode=fulltext").send().await?).await;
        assert_eq!(status, 200, "{all}");
        if all["results"].as_array().unwrap().len() >= 2 {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "both nodes never became searchable: {all}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, found) = read(as_team(Method::GET, "/api/v1/search?q=zeppelin&mode=fulltext").send().await?).await;
    assert_eq!(status, 200);
    let found: Vec<&str> =
        found["results"].as_array().unwrap().iter().map(|r| r["node"]["namespace"].as_str().unwrap()).collect();
    assert_eq!(found, ["team-a"]);
    // graph walks drop the other namespace's vertices and the edges to them
    let (status, walk) =
        read(as_team(Method::GET, &format!("/api/v1/graph/{}?depth=2", ids["team-a"])).send().await?).await;
    assert_eq!(status, 200, "{walk}");
    assert!(!walk.to_string().contains(&ids["team-b"]), "{walk}");
    let (status, walk) =
        read(helix.api(Method::GET, &format!("/api/v1/graph/{}?depth=2", ids["team-a"])).send().await?).await;
    assert!(status == 200 && walk.to_string().contains(&ids["team-b"]), "the admin sees both: {walk}");
    for path in ["/api/v1/graph/export", "/api/v1/graph/stats", "/api/v1/graph/edges"] {
        let (status, body) = read(as_team(Method::GET, path).send().await?).await;
        assert_eq!((status, code(&body)), (403, "namespace_limited"), "{path}");
    }

    // a key's own request limit: its bucket holds 2, the third request waits
    let (_, slow) = issue(&helix, json!({"name": "slow", "scopes": ["read"], "requests_per_minute": 2})).await?;
    for expected in [200, 200, 429] {
        let response = helix.http.get(helix.url("/api/v1/nodes")).bearer_auth(&slow).send().await?;
        let headers = response.headers().clone();
        let (status, body) = read(response).await;
        assert_eq!(status, expected, "{body}");
        assert_eq!(headers["ratelimit-limit"], "2");
        if status == 429 {
            assert_eq!(code(&body), "rate_limited");
            assert!(headers["retry-after"].to_str()?.parse::<u64>()? >= 1);
            assert_eq!(headers["ratelimit-remaining"], "0");
        }
    }
    helix.stop().await;
    Ok(())
}

crate::on_both_backends!(pairing_survives_brute_force);

async fn pairing_survives_brute_force(backend: Backend) -> anyhow::Result<()> {
    let helix = TestHelix::start(backend).await?;
    let initiate = |body: Value| helix.api(Method::POST, "/api/v1/pair/initiate").json(&body).send();
    let confirm = |code: &str| {
        helix.http.post(helix.url("/api/v1/pair/confirm")).json(&json!({"code": code, "device_name": "laptop"})).send()
    };
    let (status, pairing) =
        read(initiate(json!({"scopes": ["nodes:read", "search:read"], "ttl_secs": 120})).await?).await;
    assert_eq!(status, 201, "{pairing}");
    let code_shown = pairing["code"].as_str().unwrap().to_owned();
    assert_eq!(code_shown.len(), 9);
    assert_eq!(&code_shown[4..5], "-");
    assert!(code_shown.chars().filter(|c| *c != '-').all(|c| "BCDFGHJKLMNPQRSTVWXZ".contains(c)), "{code_shown}");
    // five wrong guesses burn the code: the sixth fails although it is right
    for guess in ["BBBB-BBBB", "CCCC-CCCC", "DDDD-DDDD", "FFFF-FFFF", "GGGG-GGGG"] {
        let guess = if guess == code_shown { "HHHH-HHHH" } else { guess };
        let (status, body) = read(confirm(guess).await?).await;
        assert_eq!((status, code(&body)), (403, "invalid_pairing_code"), "{body}");
    }
    let (status, body) = read(confirm(&code_shown).await?).await;
    assert_eq!((status, code(&body)), (403, "invalid_pairing_code"), "the 6th guess, right, still fails: {body}");

    // a fresh code works once, in any case and spacing, with exactly the chosen scopes
    let (_, pairing) = read(initiate(json!({"scopes": ["nodes:read"], "namespaces": ["home"]})).await?).await;
    let fresh = pairing["code"].as_str().unwrap().to_lowercase().replace('-', " ");
    let (status, paired) = read(confirm(&fresh).await?).await;
    assert_eq!(status, 201, "{paired}");
    assert_eq!(paired["scopes"], json!(["nodes:read"]));
    assert_eq!(paired["namespaces"], json!(["home"]));
    let token = paired["token"].as_str().unwrap().to_owned();
    assert_eq!(check_format(&token), Ok(()));
    let (status, key) =
        read(helix.api(Method::GET, &format!("/api/v1/keys/{}", paired["key_id"].as_str().unwrap())).send().await?)
            .await;
    assert_eq!((status, key["origin"].as_str(), key["name"].as_str()), (200, Some("pairing"), Some("laptop")));
    let as_device = |method: Method, path: &str| helix.http.request(method, helix.url(path)).bearer_auth(&token);
    assert_eq!(as_device(Method::GET, "/api/v1/nodes").send().await?.status(), 200);
    let (status, _) = read(as_device(Method::POST, "/api/v1/nodes").json(&json!({"content": "x"})).send().await?).await;
    assert_eq!(status, 403, "the paired key has only nodes:read");
    let (status, _) = read(confirm(&fresh).await?).await;
    assert_eq!(status, 403, "a used code fails");

    // an expired code fails (its expiry moved into the past, not waited for)
    let (_, pairing) = read(initiate(json!({"ttl_secs": 60})).await?).await;
    let db = helix_runtime::db::Database::connect(&helix.env.config, "gateway").await?;
    sqlx::query("UPDATE pairings SET expires_at = 1 WHERE id = $1")
        .bind(pairing["pairing_id"].as_str().unwrap())
        .execute(&db.pool)
        .await?;
    db.pool.close().await;
    let (status, _) = read(confirm(pairing["code"].as_str().unwrap()).await?).await;
    assert_eq!(status, 403, "an expired code fails");

    // initiation is admin's; bad settings are refused
    let (status, _) = read(as_device(Method::POST, "/api/v1/pair/initiate").json(&json!({})).send().await?).await;
    assert_eq!(status, 403);
    for (body, expected) in [(json!({"ttl_secs": 601}), "invalid_ttl"), (json!({"scopes": ["root"]}), "invalid_scopes")]
    {
        let (status, answer) = read(initiate(body).await?).await;
        assert_eq!((status, code(&answer)), (400, expected), "{answer}");
    }
    // one address may try ten times a minute: this test used nine
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(read(confirm("ZZZZ-ZZZZ").await?).await.0);
    }
    assert_eq!(statuses, [403, 429, 429], "per-address throttle");
    helix.stop().await;
    Ok(())
}

/// Two gateway replicas on one PostgreSQL and NATS — this test's node and an `hx serve
/// gateway` process of its own: a key revoked through one stops working on the other
/// within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_reaches_another_replica_within_a_second() -> anyhow::Result<()> {
    let helix = TestHelix::start(Backend::Fleet).await?;
    let services = helix.node.as_ref().unwrap().grpc_url();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let other = format!("http://127.0.0.1:{port}");
    let mut replica = tokio::process::Command::new(env!("CARGO_BIN_EXE_hx"))
        .args(["serve", "gateway"])
        .envs(helix.env.process_env())
        .env("HELIX_GATEWAY_ADDR", format!("127.0.0.1:{port}"))
        .env("HELIX_GRPC_ADDR", "127.0.0.1:0")
        .envs(
            ["STORAGE", "SEARCH", "GRAPH", "LLM_ROUTER", "ORCHESTRATOR", "JOBS", "NOTIFICATIONS"]
                .map(|service| (format!("HELIX_{service}_URL"), services.clone())),
        )
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let (id, key) = issue(&helix, json!({"name": "roaming", "scopes": ["read"]})).await?;
    let on_other = || helix.http.get(format!("{other}/api/v1/nodes")).bearer_auth(&key).send();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match on_other().await {
            Ok(response) if response.status() == 200 => break,
            Ok(response) => anyhow::bail!("the other replica answered {}", response.status()),
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(error) => anyhow::bail!("the other replica never came up: {error}"),
        }
    }
    // the other replica knows the key now, and caches it
    let revoked_at = Instant::now();
    let (status, _) = read(helix.api(Method::DELETE, &format!("/api/v1/keys/{id}")).send().await?).await;
    assert_eq!(status, 204);
    loop {
        if on_other().await?.status() == 401 {
            break;
        }
        anyhow::ensure!(revoked_at.elapsed() < Duration::from_secs(1), "the other replica still accepts the key");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = revoked_at.elapsed();
    assert!(took < Duration::from_secs(1), "revocation took {took:?}");
    replica.kill().await?;
    helix.stop().await;
    Ok(())
}

/// A Helix process at its most verbose, handed canary secrets every way a client can —
/// and credentials in its vault, used for a provider call, written and revealed through
/// `/api/v1/secrets`: none of them appears in anything it wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_log() -> anyhow::Result<()> {
    let env = TestEnv::new(Backend::Embedded).await?;
    let admin = generate_key();
    let provider = format!("sk-canary{}", uuid::Uuid::now_v7().simple());
    // in the vault only: a provider key the router sends, and a name of the operator's
    let vaulted_provider = format!("sk-ant-vaultcanary{}", uuid::Uuid::now_v7().simple());
    let vaulted_other = format!("vaultcanary{}", uuid::Uuid::now_v7().simple());
    let vault = helix_vault::Vault::open(&env.home(), &Default::default())?;
    vault.set("ANTHROPIC_API_KEY", vaulted_provider.as_str().into())?;
    vault.set("TEAM_TOKEN", vaulted_other.as_str().into())?;
    drop(vault);
    let put_through_api = format!("putcanary{}", uuid::Uuid::now_v7().simple());
    let out = env.home().join("hx.out");
    let err = env.home().join("hx.err");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_hx"))
        .arg("up")
        .envs(env.process_env().into_iter().filter(|(k, _)| *k != "HELIX_ADMIN_KEY" && *k != "HELIX_LOG"))
        .env("HELIX_ADMIN_KEY", &admin)
        .env("HELIX_LOG", "debug")
        .env("OPENAI_API_KEY", &provider)
        .env("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
        .env("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
        .env("HELIX_VAULT_ALLOW_REVEAL", "true")
        .env_remove("ANTHROPIC_API_KEY")
        .env("HELIX_GRPC_ADDR", "127.0.0.1:0")
        .env("HELIX_GATEWAY_ADDR", "127.0.0.1:0")
        .stdout(std::fs::File::create(&out)?)
        .stderr(std::fs::File::create(&err)?)
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        let printed = std::fs::read_to_string(&out)?;
        if let Some(rest) = printed.lines().find_map(|l| l.strip_prefix("helix is up: REST ")) {
            break rest.split(',').next().unwrap().to_owned();
        }
        anyhow::ensure!(Instant::now() < deadline, "hx up did not come up: {printed}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let http = reqwest::Client::new();
    let call = |method: Method, path: &str, key: &str| http.request(method, format!("{url}{path}")).bearer_auth(key);
    let (status, issued) =
        read(call(Method::POST, "/api/v1/keys", &admin).json(&json!({"name": "c", "scopes": ["admin"]})).send().await?)
            .await;
    assert_eq!(status, 201, "{issued}");
    let created = issued["secret"].as_str().unwrap().to_owned();
    let (_, pairing) = read(call(Method::POST, "/api/v1/pair/initiate", &created).json(&json!({})).send().await?).await;
    let code = pairing["code"].as_str().unwrap().to_owned();
    let (status, paired) =
        read(http.post(format!("{url}/api/v1/pair/confirm")).json(&json!({"code": code})).send().await?).await;
    assert_eq!(status, 201, "{paired}");
    let token = paired["token"].as_str().unwrap().to_owned();
    // the secrets where logs like to catch them: headers, query strings, failing calls
    call(Method::GET, &format!("/api/v1/nodes?cursor={created}"), &token).send().await?;
    http.get(format!("{url}/api/v1/nodes")).header("x-api-key", &created).send().await?;
    call(Method::POST, "/v1/chat/completions", &created)
        .json(&json!({"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    // the vault's provider key is sent (to a port where nothing listens)
    call(Method::POST, "/v1/chat/completions", &created)
        .json(&json!({"model": "anthropic/claude-haiku-4-5", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await?;
    // the vault through the API: a write, a list, and reveals by a key allowed them
    let (status, _) = read(
        call(Method::PUT, "/api/v1/secrets/WRITTEN_TOKEN", &created)
            .json(&json!({"value": put_through_api}))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, 200);
    let (status, issued) = read(
        call(Method::POST, "/api/v1/keys", &admin)
            .json(&json!({"name": "r", "scopes": ["admin", "secrets:read"]}))
            .send()
            .await?,
    )
    .await;
    assert_eq!(status, 201, "{issued}");
    let revealer = issued["secret"].as_str().unwrap().to_owned();
    for (name, value) in
        [("ANTHROPIC_API_KEY", &vaulted_provider), ("TEAM_TOKEN", &vaulted_other), ("WRITTEN_TOKEN", &put_through_api)]
    {
        let path = format!("/api/v1/secrets/{name}?reveal=true");
        let (status, revealed) = read(call(Method::GET, &path, &revealer).send().await?).await;
        assert_eq!((status, revealed["value"].as_str()), (200, Some(value.as_str())), "{revealed}");
    }
    call(Method::GET, "/api/v1/secrets/status", &created).send().await?;
    let mut wrong = created.clone().into_bytes();
    wrong[4] = if wrong[4] == b'a' { b'b' } else { b'a' };
    call(Method::GET, "/api/v1/nodes", std::str::from_utf8(&wrong)?).send().await?;
    let pid = child.id().unwrap().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status()?;
    tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;

    let mut logs = std::fs::read_to_string(&out)? + &std::fs::read_to_string(&err)?;
    for entry in std::fs::read_dir(env.home())? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "log") {
            logs += &std::fs::read_to_string(path)?;
        }
    }
    assert!(logs.lines().count() > 20, "the process logged little at debug: {logs}");
    let fleet_token = env.config.grpc.token.as_ref().map(|t| t.expose().to_owned()).unwrap_or_default();
    assert!(!fleet_token.is_empty());
    let canaries = [
        ("admin key", admin.as_str()),
        ("created key", &created),
        ("pairing code", &code),
        ("paired token", &token),
        ("provider key", &provider),
        ("fleet token", &fleet_token),
        ("vault's provider key", &vaulted_provider),
        ("vault's other secret", &vaulted_other),
        ("secret written through the API", &put_through_api),
        ("key allowed to reveal", &revealer),
    ];
    for (what, secret) in canaries {
        assert!(!logs.contains(secret), "the {what} appears in the logs");
        let bare = secret.replace('-', "");
        assert!(!logs.contains(&bare), "the {what} appears in the logs");
    }
    Ok(())
}
